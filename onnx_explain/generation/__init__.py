"""Generative models in ONNX: generate on onnxruntime with the KV cache, attribute what was generated
(docs/methods.md §2.11).

- :func:`load_generative`: a model folder (Optimum, onnxruntime-genai, transformers.js) or a decoder file;
- :func:`generate`: greedy or sampled generation with the graph's cache;
- :func:`explain_generation`: each generated token (or a span, or a contrast) attributed to the prompt and
  the tokens before it, one teacher-forced forward and a batched backward per block of targets.
"""

from __future__ import annotations

from .explain import GenerationExplanation, explain_generation
from .generate import Sampling, generate
from .methods import GENERATION_METHODS
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
