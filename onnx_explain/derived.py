"""One cache of what is derived from an object, kept on the object itself.

LRP graphs and the default composite of a converted model, the embedding cut of a token model, a layer's
modified weights, the consumers of an ONNX graph's values: each is computed once and kept in the
:func:`derived` dict of the object it comes from (the converted model, the layer, the graph), so it lives
exactly as long as that object, under keys its user chooses. A copy of the owner (``copy.deepcopy``, as LRP's
canonizer makes, or pickling) starts with an empty cache: nothing derived from the original is carried over
to an object that may then change.
"""

from __future__ import annotations

ATTR = "_onnx_explain_derived"


class _Derived(dict):
    """A dict that copies and pickles as an empty one."""

    def __copy__(self):
        return _Derived()

    def __deepcopy__(self, memo):
        return _Derived()

    def __reduce__(self):
        return (_Derived, ())


def derived(owner) -> dict:
    """The dict of objects derived from ``owner``, created on first use and kept on ``owner``."""
    cache = vars(owner).get(ATTR)
    if cache is None:
        cache = _Derived()
        object.__setattr__(owner, ATTR, cache)  # not a torch submodule, buffer or parameter
    return cache
