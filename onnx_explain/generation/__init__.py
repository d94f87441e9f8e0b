"""Generative models in ONNX: generate on onnxruntime with the KV cache, attribute what was generated
(docs/methods.md §2.11).

- :func:`load_generative`: a model folder (Optimum, onnxruntime-genai, transformers.js) or a decoder file;
- :func:`generate`: greedy or sampled generation with the graph's cache;
- :func:`explain_generation`: each generated token (or a span, or a contrast) attributed to the prompt and
  the tokens before it, one teacher-forced forward and a batched backward per block of targets.
"""

from __future__ import annotations

from ..lazy import lazy_exports

# torch-free (onnxruntime): imported here; ``generate`` must name the function, not its module
from .generate import Sampling, generate
from .model import GenerativeModel, load_generative

__all__ = [
    "GENERATION_METHODS",
    "GenerationExplanation",
    "GenerativeModel",
    "Sampling",
    "explain_generation",
    "generate",
    "load_generative",
]

#: imported on first use (they need torch), so that reading a folder's layout (``info``) does not import it
_LAZY = {
    "GENERATION_METHODS": ".methods",
    "GenerationExplanation": ".explain",
    "explain_generation": ".explain",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
