"""Exceptions of onnx-explain: the one error contract.

Every error a user can cause (a bad file, model, array, option or command line) is an
:class:`OnnxExplainError`. Its message is one line that says what is wrong and where (file, item,
option, ONNX node name and op type), so the CLI prints it as is and exits with :attr:`exit_code`, with no
traceback. Errors that are also plain Python errors keep that base too (``OptionError`` is a
``ValueError``), so ``except ValueError`` in callers' code keeps working.
"""

from __future__ import annotations

import re

__all__ = [
    "ConversionError",
    "DeviceError",
    "ExportError",
    "InputDataError",
    "InputFileError",
    "InputSpecError",
    "LRPCoverageError",
    "MemoryBudgetError",
    "ModelLoadError",
    "ModelRunError",
    "OnnxExplainError",
    "OptionError",
    "ParityError",
    "UnknownOptionError",
    "node_label",
    "ort_error",
]


class OnnxExplainError(Exception):
    """Base class of every error onnx-explain raises on bad input or an unsupported model.

    Its text is always one line: line breaks that reach it (a name read from a damaged file, a message of
    another library) are folded into spaces.
    """

    exit_code = 2

    def __str__(self) -> str:
        text = super().__str__()
        lines = text.splitlines()
        return text if len(lines) <= 1 else " ".join(part.strip() for part in lines if part.strip())


class ModelLoadError(OnnxExplainError):
    """The file is missing, not ONNX, truncated, invalid, or refers to external data outside its folder."""


class ModelRunError(OnnxExplainError):
    """onnxruntime refused the model (session creation) or failed while running it; names the file and,
    where onnxruntime says it, the node."""


class InputSpecError(OnnxExplainError):
    """The model's inputs or outputs cannot be used as asked (several inputs, no usable output, dtype)."""


class ConversionError(OnnxExplainError):
    """The ONNX graph could not be converted to torch (no converter, or a converter failed)."""


class ParityError(OnnxExplainError):
    """The converted torch graph does not compute what onnxruntime computes, or parity cannot be certified."""


class InputDataError(OnnxExplainError):
    """An array given to the model has the wrong shape, dtype or non-finite values."""


class InputFileError(InputDataError):
    """An input file (image, array, CSV, attribution folder) is missing or cannot be read."""


class OptionError(OnnxExplainError, ValueError):
    """An option of a method, metric, composite, rule or command is unknown or has a bad value."""


class UnknownOptionError(OptionError, TypeError):
    """An option key that the method, metric, composite or command does not take (named, with the close
    match and every accepted key). Also a ``TypeError``, what Python raises for an unexpected keyword."""


class DeviceError(OnnxExplainError):
    """The device asked for (``cuda``) is not available."""


class MemoryBudgetError(OnnxExplainError):
    """A job cannot fit the memory budget (``max_memory`` / ``--max-memory``) even one row at a time."""


class ExportError(OnnxExplainError):
    """The source model could not be loaded, exported or verified."""


class LRPCoverageError(OnnxExplainError):
    """A node carries relevance and has no LRP rule (or an override does not fit it)."""


def node_label(name: str, op_type: str, domain: str = "") -> str:
    """Format an ONNX node for an error message: ``node '/layer1/Add' (Add)``."""
    op = f"{domain}.{op_type}" if domain and domain != "ai.onnx" else op_type
    return f"node {name!r} ({op})" if name else f"an unnamed {op} node"


_ORT_NODE = re.compile(r"running (\S+) node\. Name:'([^']*)'")
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_ORT_SOURCE = re.compile(r"/\S+\.(?:cc|h|cpp):\d+\s+(?:[\w:<>*&, ]+\([^)]*\)\s*(?:const\s*)?)?")


def ort_error(exc: BaseException, source: str, doing: str) -> ModelRunError:
    """A :class:`ModelRunError` for onnxruntime's own exception ``exc`` (``InvalidArgument``, ``Fail``,
    ``RuntimeException`` ...): one line with the file, what was being done, and the node when
    onnxruntime names it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    where = ""
    m = _ORT_NODE.search(text)
    if m:
        where = f" at {node_label(m.group(2), m.group(1))}"
        text = text.split("Status Message:", 1)[-1].strip() or text
    text = _ORT_SOURCE.sub("", _ORT_PREFIX.sub("", text)).strip() or text
    if len(text) > 300:
        text = text[:297] + "..."
    return ModelRunError(f"{source}: onnxruntime failed to {doing}{where}: {text}")
