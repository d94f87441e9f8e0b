"""Exact Shapley values of tabular models read from the graph (:mod:`onnx_explain.tabular`): TreeSHAP for
tree ensembles, the closed form for linear models. Both explain the margin (the scores before
``post_transform``) and run on no torch graph."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import OnnxExplainError, OptionError
from .base import register_method

#: rows of the explained output compared with the trees' own prediction on each call
CHECKED_ROWS = 256


@register_method(
    "treeshap",
    "exact TreeSHAP of the graph's tree ensemble, in margin space (Lundberg 2020: interventional or path-dependent)",
    backend="onnxruntime",
    modalities=("table",),
    cost="no model pass: a table per path once, then one gather per row and path",
    estimator="trees",
)
def treeshap(scorer, x, target, generator, background=None, feature_perturbation="interventional"):
    """Shapley values of the margin (the trees' scores before ``post_transform``) of the explained class:
    Σφ + ``extras['expected_value']`` = ``score``, exactly. ``feature_perturbation`` is shap's:
    ``'interventional'`` (features outside a coalition take the values of ``background`` rows, averaged
    over them) or ``'path_dependent'`` (Lundberg's Algorithm 2, with the cover of each node counted on
    ``background``, as ONNX trees store none). ``background``: rows (an array, a ``.csv``/``.npy``/``.npz``
    path or a list of them); default, interventional only: the explained rows themselves."""
    from ..tabular import tree_view
    from ..tabular.treeshap import MODES

    model = _model_of(scorer, "treeshap")
    if feature_perturbation not in MODES:
        raise OptionError(
            f"feature_perturbation must be one of {', '.join(MODES)}, not {feature_perturbation!r}"
        )
    view = tree_view(model)
    if view is None:
        raise OnnxExplainError(
            f"{model.source}: no tree ensemble in the graph (treeshap explains TreeEnsembleClassifier, "
            "TreeEnsembleRegressor and TreeEnsemble models)"
        )
    xs = x.detach().cpu().numpy()
    bg, where = _background(model, xs, background, feature_perturbation == "path_dependent")
    cols = view.columns(xs)
    note = _check_output(
        scorer, view, view.trees.predict, xs[:CHECKED_ROWS], cols[:CHECKED_ROWS], target[:CHECKED_ROWS]
    )
    outputs = scorer.classes(target).cpu().numpy()
    phi, expected, margin = view.engine(bg, feature_perturbation).shap_values(cols, outputs)
    t = view.trees
    post = "binary scores" if t.post == "BINARY" else f"post_transform {t.post}"
    return torch.from_numpy(phi.astype(np.float64)).to(x.dtype), {
        "score": torch.from_numpy(margin).to(x.dtype),
        "expected_value": expected,
        "space": f"margin: the trees' scores before {post} (node {view.node.name!r})"
        + (f"; {note}" if note else ""),
        "background": where,
        "trees": view.describe(),
    }


def _background(model, xs, background, required: bool) -> tuple[np.ndarray, str]:
    """The background rows and how to name them (default: the explained rows)."""
    from ..tabular.data import read_table

    if background is None:
        if required:
            raise OptionError(
                "path_dependent TreeSHAP needs background data to count node covers (ONNX trees store no "
                "sample counts): give background=... (--background FILE), e.g. the training rows"
            )
        return xs, f"the {len(xs)} explained rows"
    bg = read_table(background, model.input.name)
    if bg.ndim != 2 or bg.shape[1] != xs.shape[1]:
        raise OptionError(f"background rows have shape {bg.shape[1:]}; the explained rows {xs.shape[1:]}")
    return bg, f"{len(bg)} rows" + (f" of {background}" if isinstance(background, str) else "")


@register_method(
    "linear_shap",
    "exact SHAP of a linear model's margin (LinearClassifier/LinearRegressor): w ⊙ (x − mean of the background)",
    backend="onnxruntime",
    modalities=("table",),
    cost="no model pass: one product per row",
    estimator="linear",
)
def linear_shap(scorer, x, target, generator, background=None):
    """Interventional Shapley values of the margin ``x Wᵀ + b`` of the explained class, features
    independent: ``φ_i = W_ci (x_i − E[background_i])`` (shap's ``LinearExplainer`` with an independent
    masker), after the per-column steps before the node; Σφ + ``extras['expected_value']`` = ``score``.
    ``background`` as for :func:`treeshap` (default: the explained rows)."""
    from ..tabular import linear_view

    model = _model_of(scorer, "linear_shap")
    view = linear_view(model)
    if view is None:
        raise OnnxExplainError(
            f"{model.source}: no LinearClassifier or LinearRegressor in the graph (linear_shap explains those)"
        )
    xs = x.detach().cpu().numpy()
    bg, where = _background(model, xs, background, False)
    cols = view.columns(xs)
    note = _check_output(
        scorer, view, view.linear.predict, xs[:CHECKED_ROWS], cols[:CHECKED_ROWS], target[:CHECKED_ROWS]
    )
    c = scorer.classes(target).cpu().numpy()
    lin = view.linear
    phi, expected = lin.shap_values(cols, view.columns(bg), c)
    return torch.from_numpy(phi).to(x.dtype), {
        "score": torch.from_numpy(phi.sum(1) + expected).to(x.dtype),
        "expected_value": expected,
        "space": f"margin: the linear scores before post_transform {lin.post} (node {view.node.name!r})"
        + (f"; {note}" if note else ""),
        "background": where,
        "model": view.describe(),
    }


def _model_of(scorer, name: str):
    model = getattr(scorer, "model", None)
    if model is None:
        raise OnnxExplainError(f"{name} reads the estimator of an ONNX file: it needs an onnx_explain.Model")
    return model


def _check_output(scorer, view, predict, xs, cols, keys) -> str | None:
    """The explained output must be what the node computes (its scores, maybe renamed, cast or normalised
    per row): checked on the first rows of every call, so a graph that changes the scores after the node
    cannot pass. Returns a note on normalisers after the node."""
    from ..tabular.scores import check_same_scores

    out = scorer.scores(torch.from_numpy(xs), keys).cpu().numpy().astype(np.float64)
    return check_same_scores(out, predict(cols), scorer.name, view.node, scorer.model.proto)
