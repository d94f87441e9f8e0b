"""The ``ai.onnx.ml`` ops skl2onnx emits for classifiers: LinearClassifier, Normalizer, Scaler,
ArrayFeatureExtractor. Semantics follow onnxruntime's kernels (the tests compare against it).

Label outputs (class ids) are computed as int64 class indices mapped to the integer labels; string
labels cannot live in torch, so those graphs give the class index. Labels are never explained: the
model layer chooses the score tensor.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import converter
from ._common import result, unsupported

ML = "ai.onnx.ml"


def _post_transform(scores: torch.Tensor, how: str) -> torch.Tensor:
    if how == "NONE":
        return scores
    if how == "SOFTMAX":
        return torch.softmax(scores, dim=-1)
    if how == "LOGISTIC":
        return torch.sigmoid(scores)
    if how == "SOFTMAX_ZERO":
        # softmax over the non-zero entries; zeros stay zero (onnxruntime's definition)
        mask = scores != 0
        e = torch.where(mask, torch.exp(scores - scores.amax(dim=-1, keepdim=True)), torch.zeros_like(scores))
        return e / e.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
    if how == "PROBIT":
        return torch.special.ndtri(scores)
    raise ValueError(how)


class OnnxLinearClassifier(nn.Module):
    """scores = post(X Wᵀ + b); labels = argmax. Binary models with one coefficient row give two
    score columns as onnxruntime does: ``[-s, s]`` (or ``[1-p, p]`` after LOGISTIC)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, labels: torch.Tensor, post: str, n_out: int):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.register_buffer("labels", labels)
        self.post = post
        self.n_out = n_out

    @property
    def binary(self) -> bool:
        """One coefficient row for two classes: the scores are ``[-s, s]`` (``[1-p, p]``) of one margin."""
        return self.weight.shape[0] == 1 and self.labels.numel() == 2

    def margins(self, x: torch.Tensor) -> torch.Tensor:
        """``X Wᵀ + b``: the scores before the post transform."""
        weight = self.weight
        if weight.shape[1] != x.shape[1]:
            # onnxruntime takes the feature count from the input and reads the first classes x features
            # coefficients, row-major, whatever their number (onnxruntime's own datasets/logreg_iris.onnx
            # declares 2 features and carries 4 per class): the same rows, for the same scores
            weight = weight.reshape(-1)[: weight.shape[0] * x.shape[1]].reshape(weight.shape[0], x.shape[1])
        return x.to(weight.dtype) @ weight.T + self.bias

    def scores(self, margins: torch.Tensor) -> torch.Tensor:
        """The score output of ``margins`` (the post transform; a binary model's two columns)."""
        if self.binary:
            s = margins[:, :1]
            if self.post == "LOGISTIC":
                p = torch.sigmoid(s)
                return torch.cat([1 - p, p], dim=1)
            if self.post == "NONE":
                return torch.cat([-s, s], dim=1)
            raise NotImplementedError(f"binary LinearClassifier with post_transform={self.post}")
        return _post_transform(margins, self.post)

    def forward(self, x: torch.Tensor):
        margins = self.margins(x)
        scores = self.scores(margins)
        label_idx = (margins[:, 0] > 0).long() if self.binary else scores.argmax(dim=1)
        labels = self.labels[label_idx]
        return (labels, scores) if self.n_out == 2 else labels


@converter("LinearClassifier", 1, domain=ML)
def _linear_classifier(node, graph):
    a = node.attributes
    if "classlabels_strings" in a:
        labels = torch.arange(len(a["classlabels_strings"]))
    elif "classlabels_ints" in a:
        labels = torch.tensor(a["classlabels_ints"], dtype=torch.int64)
    else:
        raise unsupported(node, "a classifier without class labels")
    intercepts = torch.tensor(a.get("intercepts", []), dtype=torch.float32)
    coef = torch.tensor(a["coefficients"], dtype=torch.float32)
    n_rows = max(1, intercepts.numel() or (1 if labels.numel() == 2 else labels.numel()))
    weight = coef.reshape(n_rows, -1)
    bias = intercepts if intercepts.numel() else torch.zeros(n_rows)
    return result(
        OnnxLinearClassifier(weight, bias, labels, a.get("post_transform", "NONE"), len(node.output_values)),
        node,
    )


class OnnxNormalizer(nn.Module):
    """Row-wise MAX, L1 or L2 normalisation (a zero row stays zero)."""

    def __init__(self, norm: str):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.norm == "MAX":
            d = x.amax(dim=-1, keepdim=True)
        elif self.norm == "L1":
            d = x.abs().sum(dim=-1, keepdim=True)
        else:
            d = torch.sqrt((x * x).sum(dim=-1, keepdim=True))
        return torch.where(d == 0, x, x / torch.where(d == 0, torch.ones_like(d), d))


@converter("Normalizer", 1, domain=ML)
def _normalizer(node, graph):
    norm = node.attributes.get("norm", "MAX")
    if norm not in ("MAX", "L1", "L2"):
        raise unsupported(node, f"norm={norm!r}")
    return result(OnnxNormalizer(norm), node)


class OnnxArrayFeatureExtractor(nn.Module):
    """Select entries of the last axis of X by (flattened) indices."""

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        idx = indices.reshape(-1).long()
        if x.dim() == 1:
            return x[idx].reshape(1, -1)
        return x.index_select(-1, idx)


@converter("ArrayFeatureExtractor", 1, domain=ML)
def _array_feature_extractor(node, graph):
    return result(OnnxArrayFeatureExtractor(), node)


class OnnxScaler(nn.Module):
    """(X - offset) * scale, as float (StandardScaler, MinMaxScaler ...)."""

    def __init__(self, offset: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("offset", offset)
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float32) - self.offset) * self.scale


@converter("Scaler", 1, domain=ML)
def _scaler(node, graph):
    offset = torch.tensor(node.attributes.get("offset", [0.0]), dtype=torch.float32)
    scale = torch.tensor(node.attributes.get("scale", [1.0]), dtype=torch.float32)
    return result(OnnxScaler(offset, scale), node)
