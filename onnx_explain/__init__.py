"""onnx-explain: explain ONNX models with gradients and LRP, evaluate explanations on onnxruntime.

The public API is imported lazily, so ``import onnx_explain`` (and the CLI's ``--help``) does not pay
for importing torch.
"""

from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

__all__ = [
    "ConversionError",
    "DeviceError",
    "ExportError",
    "InputDataError",
    "InputFileError",
    "InputSpecError",
    "LRPCoverageError",
    "Model",
    "ModelLoadError",
    "ModelRunError",
    "OnnxExplainError",
    "OptionError",
    "ParityError",
    "UnknownOptionError",
    "METHODS",
    "AuditReport",
    "audit",
    "Explanation",
    "METRICS",
    "evaluate",
    "explain",
    "explain_generation",
    "explain_table",
    "explain_text",
    "load_generative",
    "load",
    "sanity_check",
    "compare",
    "concept_examples",
]

_LAZY = {
    "load": "onnx_explain.model",
    "audit": "onnx_explain.app.audit",
    "AuditReport": "onnx_explain.report",
    "explain": "onnx_explain.explainer",
    "explain_text": "onnx_explain.explainer",
    "explain_table": "onnx_explain.tabular.table",
    "explain_generation": "onnx_explain.generation",
    "load_generative": "onnx_explain.generation",
    "sanity_check": "onnx_explain.sanity",
    "compare": "onnx_explain.drift",
    "concept_examples": "onnx_explain.concepts",
    "evaluate": "onnx_explain.evaluation",
    "METRICS": "onnx_explain.metrics",
    "METHODS": "onnx_explain.methods",
    "Explanation": "onnx_explain.methods",
    "Model": "onnx_explain.model",
    "OnnxExplainError": "onnx_explain.errors",
    "ModelLoadError": "onnx_explain.errors",
    "InputSpecError": "onnx_explain.errors",
    "InputDataError": "onnx_explain.errors",
    "ConversionError": "onnx_explain.errors",
    "ParityError": "onnx_explain.errors",
    "DeviceError": "onnx_explain.errors",
    "ExportError": "onnx_explain.errors",
    "InputFileError": "onnx_explain.errors",
    "LRPCoverageError": "onnx_explain.errors",
    "ModelRunError": "onnx_explain.errors",
    "OptionError": "onnx_explain.errors",
    "UnknownOptionError": "onnx_explain.errors",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
