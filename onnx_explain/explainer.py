"""``onnx_explain.explain``: one call for every registered attribution method."""

from __future__ import annotations

import os

import numpy as np
import torch

from .errors import InputDataError, OnnxExplainError
from .methods import METHODS, Explanation, Scorer
from .methods.base import make_generator

__all__ = ["explain", "resolve_targets"]


def resolve_targets(target, scores: torch.Tensor) -> tuple[torch.Tensor, int | None]:
    """Targets per sample from ``target`` and the scores ``(B, C)``.

    ``None`` or ``'predicted'``: the top-1 class; an int (or its string): that class for every sample;
    a sequence of B ints: one per sample; ``'top:K'``: the K best classes, returned as ``(B, K)`` with K.
    """
    B, C = scores.shape
    if target is None or (isinstance(target, str) and target == "predicted"):
        return scores.argmax(1), None
    if isinstance(target, str) and target.startswith("top:"):
        k = int(target[4:])
        if not 1 <= k <= C:
            raise InputDataError(f"target {target!r}: K must be between 1 and the {C} classes")
        return scores.topk(k, dim=1).indices, k
    if isinstance(target, str):
        try:
            target = int(target)
        except ValueError:
            raise InputDataError(
                f"target must be 'predicted', 'top:K', a class index or one per sample, not {target!r}"
            ) from None
    t = torch.as_tensor(np.asarray(target), dtype=torch.long, device=scores.device)
    if t.dim() == 0:
        t = t.expand(B).clone()
    if t.shape != (B,):
        raise InputDataError(f"{t.numel()} targets given for {B} samples")
    if (t < 0).any() or (t >= C).any():
        raise InputDataError(f"target class out of range: the output has {C} classes")
    return t, None


def _out_dtype(a: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """float32, except for float64 inputs (a float64 torch module), which keep their precision."""
    return a.detach().cpu().numpy().astype(np.float64 if x.dtype == torch.float64 else np.float32)


def _to_numpy(v):
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return v


def explain(
    model,
    x,
    method: str = "smoothgrad",
    target=None,
    *,
    output: str | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    seed=None,
    layout: str | None = None,
    **options,
) -> Explanation:
    """Explain ``model`` at the inputs ``x`` with a registered attribution ``method``.

    Parameters
    ----------
    model : Model, path or torch.nn.Module
        An :class:`onnx_explain.Model` (or a path to load), or a torch module mapping ``x`` to scores.
    x : array_like
        A batch, batch first, of the model's input dtype and layout.
    method : str
        One of :data:`onnx_explain.METHODS` (``gradient``, ``gradient_x_input``, ``smoothgrad``,
        ``integrated_gradients``, ``smoothtaylor``, ``smoothtaylor_adaptive`` ...).
    target : None, 'predicted', int, sequence of int, or 'top:K'
        The class explained per sample (default: the predicted one). ``'top:K'`` explains the K best
        classes: the attribution then has shape ``(B, K, *S)``.
    output : {'logit', 'output'}, optional
        Explain the logits before a final Softmax/LogSoftmax or the model's output as is; default: the
        method's own (:attr:`MethodSpec.output`, the logits for every built-in method).
    batch_size : int
        Rows (noisy copies, integration steps ...) per forward/backward pass: memory depends on it, the
        result does not.
    device : str
        torch device (``'cpu'``, ``'cuda'``).
    seed : int or torch.Generator, optional
        Randomness of stochastic methods (default seed 0: reproducible).
    layout : {'NCHW', 'NHWC', 'NHW'}, optional
        The image layout of ``x`` (where per-channel baselines go); default: the Model's own, and
        channels on axis 1 for a torch module.
    **options
        The method's own options (``sigma``, ``n_samples``, ``reduce``, ``base``, ``n_steps``,
        ``quadrature_method``, ``baseline``, ``n_roots``, ``perturbations``, ``roots`` ...). An option the
        method does not take raises :class:`~onnx_explain.options.UnknownOptionError`.

    Returns
    -------
    Explanation
        ``attribution`` (float32, x's shape; float64 for float64 input to a torch module), ``target``,
        ``score`` (f_c(x)), ``method``, ``options`` and ``extras`` (``delta`` of IG, ``sigma`` ...; for
        integer inputs ``embedding_attribution``, the attribution at the embedding, whose sum over the
        embedding axes is ``attribution``).
    """
    if method not in METHODS:
        raise OnnxExplainError(f"unknown method {method!r}; choose one of {', '.join(sorted(METHODS))}")
    spec = METHODS[method]
    opts = spec.check_options(options)
    output = output or spec.output
    model, module, x_np, layout = _resolve_model(model, x, output, device, layout)
    generator = make_generator(seed, device)
    xt = torch.from_numpy(np.ascontiguousarray(x_np)).to(device)
    if x_np.dtype.kind in "iu":
        return _explain_integer(module, xt, spec, target, batch_size, generator, opts)
    if xt.dtype not in (torch.float32, torch.float64):
        xt = xt.float()
    scorer = Scorer(module, batch_size, layout)
    scores, targets, k = _targets(scorer, xt, target, model.n_classes(output) if _is_model(model) else None)
    rows = xt if k is None else xt.repeat_interleave(k, 0)
    with torch.no_grad():
        attribution, extras = spec.fn(scorer, rows, targets.reshape(-1), generator, **opts)
    score = _explained_score(scorer, xt, scores, targets, extras)
    if k is not None:
        attribution = attribution.reshape(len(xt), k, *xt.shape[1:])
    return Explanation(
        attribution=_out_dtype(attribution, xt),
        target=targets.cpu().numpy(),
        score=score.detach().cpu().numpy(),
        method=method,
        options=opts,
        extras={key: _to_numpy(v) for key, v in extras.items() if key != "score"},
    )


def _is_model(model) -> bool:
    from .model import Model

    return isinstance(model, Model)


def _resolve_model(model, x, output: str, device: str, layout: str | None):
    """(model, torch module, validated x, image layout) for a Model, a path or a torch module."""
    from .model import load

    if isinstance(model, (str, os.PathLike)):
        model = load(model)
    if _is_model(model):
        return (
            model,
            model.torch_module(device=device, space=output),
            model.validate_input(x),
            layout or model.layout,
        )
    return model, model, np.asarray(x), layout


def _targets(scorer: Scorer, xt: torch.Tensor, target, n_classes: int | None):
    """(scores or None, targets, K of 'top:K' or None). A given class needs no forward pass when the
    number of classes is known: the method reports f_c where it can."""
    explicit = not (
        target is None or (isinstance(target, str) and (target == "predicted" or target.startswith("top:")))
    )
    if explicit and n_classes is not None:
        targets, k = resolve_targets(target, torch.zeros(len(xt), n_classes, device=xt.device))
        return None, targets, k
    scores = scorer.scores(xt)
    targets, k = resolve_targets(target, scores)
    return scores, targets, k


def _explained_score(scorer: Scorer, xt: torch.Tensor, scores, targets: torch.Tensor, extras: dict):
    """f_c(x) per explained (sample, class): from the method's extras when it reported them, else from
    the scores (computed now if the targets needed none)."""
    reported = extras.get("score")
    if scores is None and isinstance(reported, torch.Tensor) and reported.shape == (len(xt),):
        return reported.to(xt.dtype)
    scores = scorer.scores(xt) if scores is None else scores
    return scores.gather(1, targets.reshape(len(xt), -1)).reshape(targets.shape)


def _explain_integer(module, xt, spec, target, batch_size, generator, opts) -> Explanation:
    from .convert.wrapper import ConvertedModel
    from .methods.embedding import embedding_views

    if not isinstance(module, ConvertedModel):
        raise OnnxExplainError(
            "integer inputs are explained through an onnx_explain.Model (the embedding is cut from its graph)"
        )
    e, make_view, frontier = embedding_views(module, xt)
    full, targets, scores, extras_all = [], [], [], []
    for b in range(len(xt)):
        scorer = Scorer(make_view(b), batch_size)
        eb = e[b : b + 1]
        sc = scorer.scores(eb)
        tb, k = resolve_targets(
            target if np.ndim(target) == 0 or isinstance(target, str) else [np.asarray(target)[b]], sc
        )
        rows = eb if k is None else eb.repeat_interleave(k, 0)
        with torch.no_grad():
            attribution, extras = spec.fn(scorer, rows, tb.reshape(-1), generator, **opts)
        full.append(attribution if k is None else attribution.reshape(1, k, *eb.shape[1:]))
        targets.append(tb)
        scores.append(sc.gather(1, tb.reshape(1, -1)).reshape(tb.shape))
        extras_all.append(extras)
    full_t = torch.cat(full)
    lead = xt.dim() + (1 if full_t.dim() > e.dim() else 0)
    per_position = full_t.sum(dim=tuple(range(lead, full_t.dim()))) if full_t.dim() > lead else full_t
    extras = {"embedding_attribution": full_t.cpu().numpy().astype(np.float32), "embedding_node": frontier}
    for key in extras_all[0]:
        if key != "score" and isinstance(extras_all[0][key], torch.Tensor):
            extras[key] = torch.cat([ex[key].reshape(-1) for ex in extras_all]).cpu().numpy()
    return Explanation(
        attribution=per_position.cpu().numpy().astype(np.float32),
        target=torch.cat(targets).cpu().numpy(),
        score=torch.cat(scores).cpu().numpy(),
        method=spec.name,
        options=opts,
        extras=extras,
    )
