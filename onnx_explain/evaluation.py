"""``onnx_explain.evaluate``: one call for every registered metric."""

from __future__ import annotations

import inspect
import os
import warnings

import numpy as np

from .errors import InputDataError, OnnxExplainError
from .metrics import METRICS, Predictor

__all__ = ["evaluate", "make_explainer"]

_PROB_DEFAULT = {"deletion", "insertion"}


def make_explainer(model, method: str, output: str = "logit", batch_size: int = 64, **options):
    """``explainer(x, target, seed) -> attribution`` running :func:`onnx_explain.explain`."""
    from .explainer import explain

    def explainer(x, target, seed):
        return explain(model, x, method, target=np.asarray(target), output=output, batch_size=batch_size,
                       seed=seed, **options).attribution  # fmt: skip

    return explainer


def evaluate(
    model,
    x,
    attributions=None,
    metric: str = "pixel_flipping",
    target=None,
    *,
    output: str | None = None,
    batch_size: int = 64,
    seed: int = 0,
    explainer=None,
    explainer_options: dict | None = None,
    **options,
) -> dict:
    """Evaluate attributions of ``model`` at ``x`` with a registered ``metric``.

    Parameters
    ----------
    model : Model, path or callable
        An :class:`onnx_explain.Model` (run on onnxruntime), a path to load, or ``f(ndarray) -> scores``;
        None for metrics that need no model (``total_variation``).
    x : array_like
        The inputs, batch first.
    attributions : array_like
        One attribution per input (x's shape, or channel-aggregated ``(B, H, W)``).
    metric : str
        One of :data:`onnx_explain.METRICS`.
    target : None, int or sequence
        Class per sample; default: the model's prediction.
    output : {'logit', 'prob', 'output'}, optional
        Score space; default ``'prob'`` for deletion/insertion (RISE) and ``'logit'`` otherwise.
    batch_size : int
        Rows per model call: memory depends on it, results do not.
    seed : int
        Randomness (random orders, subsets, noise).
    explainer : callable or str, optional
        For metrics that re-explain inputs (``max_sensitivity``, ``rank_consistency``): a function
        ``(x, target, seed) -> attribution`` or a method name of :func:`onnx_explain.explain`, with
        ``explainer_options``.
    **options
        The metric's own options.

    Returns
    -------
    dict
        ``metric``, ``higher_is_better``, ``score`` (the name of the per-sample summary), ``scores``
        (per sample), ``mean`` (NaN-aware), ``target``, ``model_calls``, and the metric's own results
        (``curve``, ``auc``, ``aopc`` ...).
    """
    from .model import Model, load

    if metric not in METRICS:
        raise OnnxExplainError(f"unknown metric {metric!r}; choose one of {', '.join(sorted(METRICS))}")
    spec = METRICS[metric]
    params = inspect.signature(spec.fn).parameters
    unknown = set(options) - set(params)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)} for metric {metric!r}")
    if isinstance(model, (str, os.PathLike)):
        model = load(model)
    x = model.validate_input(x) if isinstance(model, Model) else np.asarray(x)
    output = output or ("prob" if metric in _PROB_DEFAULT else "logit")
    predictor = Predictor(model, output, batch_size) if model is not None else None
    if attributions is not None:
        attributions = np.asarray(attributions)
        if len(attributions) != len(x):
            raise InputDataError(f"{len(attributions)} attributions for {len(x)} inputs")
    elif not spec.needs_explainer:
        raise InputDataError(f"metric {metric!r} needs attributions")
    n_classes = model.n_classes() if isinstance(model, Model) else None
    if predictor is not None and (target is None or n_classes is None):
        scores = predictor(x)
        n_classes = scores.shape[1]
    if target is None:
        t = scores.argmax(1) if predictor is not None else np.zeros(len(x), dtype=np.int64)
    else:
        t = np.broadcast_to(np.asarray(target, dtype=np.int64), (len(x),)).copy()
        if n_classes is not None and ((t < 0).any() or (t >= n_classes).any()):
            raise InputDataError(f"target class out of range: the output has {n_classes} classes")
    kwargs = dict(options)
    if "seed" in params:
        kwargs["seed"] = seed
    if spec.needs_explainer:
        if explainer is None:
            raise OnnxExplainError(f"metric {metric!r} re-explains perturbed inputs: pass explainer=")
        if isinstance(explainer, str):
            explainer = make_explainer(model, explainer, batch_size=batch_size, **(explainer_options or {}))
        kwargs["explainer"] = explainer
    rng = np.random.default_rng(seed)
    res = spec.fn(predictor, x, attributions, t, rng, **kwargs)
    per_sample = np.asarray(res[spec.score], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = float(np.nanmean(per_sample)) if np.isfinite(per_sample).any() else float("nan")
    return {
        "metric": metric,
        "higher_is_better": spec.better(options),
        "score": spec.score,
        "scores": per_sample,
        "mean": mean,
        "target": t,
        "output": output,
        "model_calls": predictor.calls if predictor is not None else 0,
        **res,
    }
