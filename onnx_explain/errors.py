"""Exceptions of onnx-explain.

Every error the package raises on bad input is an :class:`OnnxExplainError`: its message is one line
that says what is wrong and where (file, ONNX node name, op type), so the CLI can print it as is and
exit with status 2, with no traceback.
"""

from __future__ import annotations


class OnnxExplainError(Exception):
    """Base class of every error onnx-explain raises on bad input or an unsupported model."""

    exit_code = 2


class ModelLoadError(OnnxExplainError):
    """The file is missing, not ONNX, truncated, invalid, or refers to external data outside its folder."""


class InputSpecError(OnnxExplainError):
    """The model's inputs or outputs cannot be used as asked (several inputs, no usable output, dtype)."""


class ConversionError(OnnxExplainError):
    """The ONNX graph could not be converted to torch (no converter, or a converter failed)."""


class ParityError(OnnxExplainError):
    """The converted torch graph does not compute what onnxruntime computes, beyond the tolerance."""


class InputDataError(OnnxExplainError):
    """An array given to the model has the wrong shape or dtype."""


class DeviceError(OnnxExplainError):
    """The device asked for (``cuda``) is not available."""


def node_label(name: str, op_type: str, domain: str = "") -> str:
    """Format an ONNX node for an error message: ``node '/layer1/Add' (Add)``."""
    op = f"{domain}.{op_type}" if domain and domain != "ai.onnx" else op_type
    return f"node {name!r} ({op})" if name else f"an unnamed {op} node"
