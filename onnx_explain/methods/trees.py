"""TreeSHAP read from the graph: exact Shapley values of a tree ensemble's margin (:mod:`onnx_explain.tabular`)."""

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
)
def treeshap(scorer, x, target, generator, background=None, feature_perturbation="interventional"):
    """Shapley values of the margin (the trees' scores before ``post_transform``) of the explained class:
    Σφ + ``extras['expected_value']`` = ``score``, exactly. ``feature_perturbation`` is shap's:
    ``'interventional'`` (features outside a coalition take the values of ``background`` rows, averaged
    over them) or ``'path_dependent'`` (Lundberg's Algorithm 2, with the cover of each node counted on
    ``background``, as ONNX trees store none). ``background``: rows (an array, a ``.csv``/``.npy``/``.npz``
    path or a list of them); default, interventional only: the explained rows themselves."""
    from ..tabular import tree_view
    from ..tabular.data import read_table
    from ..tabular.treeshap import MODES

    model = getattr(scorer, "model", None)
    if model is None:
        raise OnnxExplainError("treeshap reads the trees of an ONNX file: it needs an onnx_explain.Model")
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
    if background is None:
        if feature_perturbation == "path_dependent":
            raise OptionError(
                "path_dependent TreeSHAP needs background data to count node covers (ONNX trees store no "
                "sample counts): give background=... (--background FILE), e.g. the training rows"
            )
        bg, where = xs, f"the {len(xs)} explained rows"
    else:
        bg = read_table(background, model.input.name)
        where = f"{len(bg)} rows" + (f" of {background}" if isinstance(background, str) else "")
    if bg.ndim != 2 or bg.shape[1] != xs.shape[1]:
        raise OptionError(f"background rows have shape {bg.shape[1:]}; the explained rows {xs.shape[1:]}")
    cols = view.columns(xs)
    _check_output(scorer, view, xs[:CHECKED_ROWS], cols[:CHECKED_ROWS], target[:CHECKED_ROWS])
    outputs = scorer.classes(target).cpu().numpy()
    phi, expected, margin = view.engine(bg, feature_perturbation).shap_values(cols, outputs)
    t = view.trees
    post = "binary scores" if t.post == "BINARY" else f"post_transform {t.post}"
    return torch.from_numpy(phi.astype(np.float64)).to(x.dtype), {
        "score": torch.from_numpy(margin).to(x.dtype),
        "expected_value": expected,
        "space": f"margin: the trees' scores before {post} (node {view.node.name!r})",
        "background": where,
        "trees": view.describe(),
    }


def _check_output(scorer, view, xs, cols, keys) -> None:
    """The explained output must be what the trees compute (their scores, maybe renamed or cast): checked
    on the first rows of every call, so a graph that changes the scores after the trees cannot pass."""
    out = scorer.scores(torch.from_numpy(xs), keys).cpu().numpy().astype(np.float64)
    ours = view.trees.predict(cols)
    name = scorer.name
    if out.shape != ours.shape:
        raise OnnxExplainError(
            f"the explained output {name!r} has {out.shape[1]} value(s) per row; the trees of node "
            f"{view.node.name!r} ({view.node.op_type}) compute {ours.shape[1]}: explain their scores output"
        )
    err = np.abs(out - ours).max() if len(out) else 0.0
    if not err <= 1e-4 * max(1.0, float(np.abs(ours).max(initial=0.0))):
        raise OnnxExplainError(
            f"the explained output {name!r} differs from the scores of the trees of node {view.node.name!r} "
            f"({view.node.op_type}) by {err:.3g} on these rows: it is not the trees' output"
        )
