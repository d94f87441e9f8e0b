"""``onnx_explain.evaluate``: one call for every registered metric.

Image layout is settled here, once: the metrics work on a channel-first view (``(B, C, H, W)``), so an
NHWC or NHW model's input, attributions and input-shaped options are moved to that view on the way in,
and every batch of perturbed rows is moved back to the model's layout on the way to the model
(:class:`onnx_explain.metrics.Predictor`, ``layout=``). A pixel, a region, a random subset and a tie in
a ranking are then the same thing for the same network in either layout: the scores are identical.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from .errors import InputDataError, OnnxExplainError, OptionError
from .layout import LAYOUTS, from_channels_first, to_channels_first
from .metrics import METRICS, Predictor
from .metrics.base import MetricSpec

__all__ = ["evaluate", "make_explainer"]


def make_explainer(model, method: str, output: str | None = None, batch_size: int = 64, **options):
    """``explainer(x, target, seed) -> attribution`` running :func:`onnx_explain.explain`."""
    from .explainer import explain

    def explainer(x, target, seed, companions=None):
        if companions:  # sample-major rows: row r belongs to sample r // (rows per sample)
            per = len(x) // len(next(iter(companions.values())))
            owner = np.arange(len(x)) // per
            x = {model.input.name: x, **{k: v[owner] for k, v in companions.items()}}
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
    layout: str | None = None,
    **options,
) -> dict:
    """Evaluate attributions of ``model`` at ``x`` with a registered ``metric``.

    Parameters
    ----------
    model : Model, path or callable
        An :class:`onnx_explain.Model` (run on onnxruntime), a path to load, or ``f(ndarray) -> scores``;
        None for metrics that need no model (``total_variation``, ``localisation``).
    x : array_like or dict of str to array_like
        The inputs, batch first, in the model's layout; or a dict of arrays named after the model's
        inputs with per-sample values of the others (as :func:`onnx_explain.explain`). Only the explained
        input is perturbed; every perturbed row runs with its sample's other inputs.
    attributions : array_like
        One attribution per input (x's shape, or channel-aggregated ``(B, H, W)``).
    metric : str
        One of :data:`onnx_explain.METRICS`.
    target : None, int or sequence
        Class per sample; default: the model's prediction.
    output : {'logit', 'prob', 'output'}, optional
        Score space; default: the metric's own (``'prob'`` for deletion/insertion as RISE, else ``'logit'``).
    batch_size : int
        Rows per model call: memory depends on it, results do not.
    seed : int
        Randomness (random orders, subsets, noise).
    explainer : callable or str, optional
        For metrics that re-explain inputs (``max_sensitivity``, ``rank_consistency``): a function
        ``(x, target, seed) -> attribution`` or a method name of :func:`onnx_explain.explain`, with
        ``explainer_options``. It sees inputs in the model's layout.
    layout : {'NCHW', 'NHWC', 'NHW'}, optional
        The image layout of ``x``; default: the Model's own (:attr:`onnx_explain.Model.layout`), and
        channels on axis 1 for a plain callable. Metrics work channel-first; see the module docstring.
    **options
        The metric's own options. Arrays laid out like the input (explicit baselines, perturbations) are
        given in the model's layout; explicit unit indices (``subsets``) and ``aupc``'s ``candidates``
        refer to the channel-first view.

    Returns
    -------
    dict
        ``metric``, ``higher_is_better``, ``score`` (the name of the per-sample summary), ``scores``
        (per sample), ``mean`` (NaN-aware), ``target``, ``model_calls``, and the metric's own results
        (``curve``, ``auc``, ``aopc`` ...).
    """
    spec = _metric(metric)
    spec.check_options(options)
    from .detectors import prepare_box_target

    model, target = prepare_box_target(model, target)  # a (boxes, scores) pair or an NMS graph, for a box
    model, x, companions = _model_and_input(model, x, spec)
    layout = _layout(model, x, layout)
    attributions = _attributions(attributions, x, spec)
    given_output = output
    output = output or spec.output
    predictor = None
    if model is not None:
        predictor = Predictor(model, output, batch_size, layout=layout, companions=companions)
    t, scalar = _targets(model, predictor, x, target)
    if scalar is not None:  # a box, mask, sum or callable target: each row scores its target's scalar
        if output == "prob" and given_output is None:
            output = predictor.output = "output"  # probabilities of a box or a mask mean nothing
        elif output == "prob":
            raise OptionError(
                f"output='prob' has no meaning for a {scalar.kind} target: use 'output' or 'logit'"
            )
        predictor.scalar = scalar
    kwargs = {
        k: _option_to_channels_first(v, x, layout) if k in spec.input_options else v
        for k, v in options.items()
    }
    if spec.takes_seed:
        kwargs["seed"] = seed
    if spec.needs_explainer:
        kwargs["explainer"] = _explainer(
            spec, explainer, explainer_options, model, batch_size, layout, companions
        )
    x_cf = to_channels_first(x, layout)
    a_cf = attributions
    if attributions is not None and attributions.ndim == x.ndim:
        a_cf = to_channels_first(attributions, layout)
    res = spec.fn(predictor, x_cf, a_cf, t, np.random.default_rng(seed), **kwargs)
    if (
        scalar is not None
        and scalar.kind == "mask"
        and "region" in _parameters(spec)
        and "region" not in kwargs
    ):
        # a segmentation mask target: the same curve with only the mask's pixels, then only the others
        # replaced (METHODS §3.10), when the output's pixels are the input's
        mask = scalar.info["mask"]
        if mask.shape[1:] == x_cf.shape[-2:]:
            for where, region in (("inside", mask), ("outside", ~mask)):
                part = spec.fn(predictor, x_cf, a_cf, t, np.random.default_rng(seed), **kwargs, region=region)
                res[f"{spec.score}_{where}"], res[f"curve_{where}"] = part[spec.score], part["curve"]
    return _result(spec, res, options, t, output, predictor)


def _parameters(spec: MetricSpec) -> set:
    import inspect

    return set(inspect.signature(spec.fn).parameters)


def _metric(metric: str) -> MetricSpec:
    if metric not in METRICS:
        raise OnnxExplainError(f"unknown metric {metric!r}; choose one of {', '.join(sorted(METRICS))}")
    return METRICS[metric]


def _model_and_input(model, x, spec: MetricSpec):
    from .model import Model, load

    if isinstance(model, (str, os.PathLike)):
        model = load(model)
    if model is None and spec.needs_model:
        raise OnnxExplainError(f"metric {spec.name!r} scores perturbed inputs: it needs a model")
    if isinstance(model, Model):
        return (model, *model.split_inputs(x))
    if isinstance(x, dict):
        raise InputDataError("a dict of inputs needs an onnx_explain.Model")
    return model, np.asarray(x), {}


def _layout(model, x: np.ndarray, layout: str | None) -> str | None:
    """The layout to move from: only NHWC and NHW move (NCHW already is the metrics' view)."""
    from .model import Model

    if layout is None and isinstance(model, Model):
        layout = model.layout
    if layout is not None and layout not in LAYOUTS:
        raise OptionError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if (layout == "NHWC" and x.ndim == 4) or (layout == "NHW" and x.ndim == 3):
        return layout
    return None


def _attributions(attributions, x: np.ndarray, spec: MetricSpec):
    if attributions is None:
        if not spec.needs_explainer:
            raise InputDataError(f"metric {spec.name!r} needs attributions")
        return None
    attributions = np.asarray(attributions)
    if len(attributions) != len(x):
        raise InputDataError(f"{len(attributions)} attributions for {len(x)} inputs")
    return attributions


def _targets(model, predictor, x: np.ndarray, target):
    """``(t, scalar)``: the explained element per sample as a flat index into the flattened output row (a
    class, given or predicted, or an element target), with ``scalar`` None; or, for a target that is not
    one element (a box, a mask, a sum, a callable: docs/methods.md §1.6), the resolved target as
    ``scalar`` and ``t`` all zero — the predictor then returns each row's scalar as its only column."""
    from .model import Model
    from .target_spec import class_indices, is_class_list

    if predictor is None:
        t = (
            np.zeros(len(x), np.int64)
            if target is None
            else np.broadcast_to(np.asarray(target, np.int64), (len(x),))
        )
        return t.copy(), None
    shape = model.output.shape if isinstance(model, Model) else None
    fixed = shape is not None and len(shape) >= 2 and all(isinstance(d, int) for d in shape[1:])
    seen = {}

    def outputs():  # before any softmax (Predictor.rows never applies one), in the output's own shape
        if "out" not in seen:
            seen["out"] = np.asarray(predictor.rows(to_channels_first(x, predictor.layout)), np.float64)
        return seen["out"]

    # a symbolic axis (a tagger's tokens): the shape of the rows themselves, so that an element, a sum over
    # an axis or an embedding pooled over tokens is read as explain reads it
    out_shape = tuple(shape[1:]) if fixed else tuple(outputs().shape[1:])
    if is_class_list(target) and sum(d != 1 for d in out_shape) <= 1:
        # classes of one score vector (what an explain folder stores): no outputs to read, no torch
        return class_indices(target, len(x), int(np.prod(out_shape, dtype=np.int64))), None
    if isinstance(target, np.ndarray) and target.ndim == 1 and len(out_shape) == 1:
        target = [int(t) for t in target]
    import torch

    from .targets import resolve

    resolved = resolve(
        target, out_shape, len(x), lambda: torch.from_numpy(outputs()).reshape(len(x), *out_shape)
    )
    if resolved.k is not None:
        raise InputDataError(f"the metrics score one target per sample, not {target!r}")
    if resolved.one_element:
        return resolved.index.cpu().numpy().astype(np.int64), None
    return np.zeros(len(x), np.int64), resolved


def _option_to_channels_first(value, x: np.ndarray, layout: str | None):
    """An input-shaped option (an array whose trailing axes are one sample of x, or a tuple of them)
    moved to the channel-first view; anything else as it is."""
    if layout is None:
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_option_to_channels_first(v, x, layout) for v in value)
    if isinstance(value, np.ndarray) or type(value).__module__.startswith("torch"):
        arr = np.asarray(value)
        sample = x.shape[1:]
        if arr.ndim >= len(sample) and arr.shape[arr.ndim - len(sample) :] == sample:
            return to_channels_first(arr, layout)
    return value


def _explainer(spec: MetricSpec, explainer, explainer_options, model, batch_size: int, layout, companions):
    """The metric's explainer, speaking the channel-first view to the metric and the model's layout to
    the method; a method name re-explains each row with its sample's companion inputs."""
    if explainer is None:
        raise OnnxExplainError(f"metric {spec.name!r} re-explains perturbed inputs: pass explainer=")
    if isinstance(explainer, str):
        named = make_explainer(model, explainer, batch_size=batch_size, **(explainer_options or {}))
        explainer = named if not companions else lambda x, t, s: named(x, t, s, companions)
    if layout is None:
        return explainer
    inner = explainer

    def channels_first(x, target, seed):
        a = np.asarray(inner(from_channels_first(x, layout), target, seed))
        return to_channels_first(a, layout) if a.ndim == x.ndim - (layout == "NHW") else a

    return channels_first


def _result(spec: MetricSpec, res: dict, options: dict, t, output: str, predictor) -> dict:
    per_sample = np.asarray(res[spec.score], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = float(np.nanmean(per_sample)) if np.isfinite(per_sample).any() else float("nan")
    return {
        "metric": spec.name,
        "higher_is_better": spec.better(options),
        "score": spec.score,
        "scores": per_sample,
        "mean": mean,
        "target": t,
        "output": output,
        "model_calls": predictor.calls if predictor is not None else 0,
        **res,
    }
