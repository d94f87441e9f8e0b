"""Converters this package adds to, or fixes in, onnx2torch. Importing this package registers them.

One module per op family, as in onnx2torch; every converter goes through
:func:`onnx_explain.convert.registry.converter`.
"""

from . import (  # noqa: F401  (registration)
    activations,
    contrib,
    control,
    functional,
    indexing,
    logic,
    ml,
    norm,
    pad,
    pooling,
    quant,
    recurrent,
    reduce,
    shapes,
    tensor,
    versions,
)
