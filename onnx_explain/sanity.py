"""Sanity checks for explanations (Adebayo et al., NeurIPS 2018): model parameter randomisation (MPRT) on
the converted graph. An explanation that still looks the same once the model's top layers are random does
not explain the model.

Layers are the converted graph's modules with parameters to reset (``reset_parameters``: convolutions,
linear layers, normalisations), in graph order. *Cascading* randomisation resets them from the output side
down, cumulatively; *independent* resets one layer at a time on the trained model; *bottom_up* cascades
from the input side. Each reset draws its weights from the module's own initialiser under
``torch.manual_seed(seed + 1)``, Quantus' convention, so the same source network randomised by Quantus'
``MPRT`` gets the same weights, layer by layer. After each step the method explains the same inputs and
targets again; the similarity is the Spearman rank correlation of the absolute attributions, per sample
(Quantus' default: ``abs=True``; its max-normalisation does not change ranks).

A method *passes* when the mean similarity once the top ``check_layers`` layers are randomised (cascading)
is below ``threshold`` (0.5 by default: Adebayo et al.'s gradient maps fall well below it within the top
few layers; a method that ignores the model stays at 1).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from .errors import OnnxExplainError, OptionError

__all__ = ["ORDERS", "randomisation_layers", "sanity_check"]

ORDERS = ("cascading", "independent", "bottom_up")


def randomisation_layers(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """``(name, module)`` of every submodule that can reset its parameters, in graph order; the name is the
    ONNX node's where the module was converted from one."""
    from .convert.driver import NODE_ATTR

    out = []
    for path, m in module.named_modules():
        if (
            m is module
            or not hasattr(m, "reset_parameters")
            or not any(True for _ in m.parameters(recurse=False))
        ):
            continue
        tag = getattr(m, NODE_ATTR, None)
        out.append((tag[0] if tag else path, m))
    return out


def _spearman_abs(a: np.ndarray, b: np.ndarray, ranks_a: np.ndarray | None = None) -> np.ndarray:
    """Per-row Spearman correlation of |a| and |b| (average ranks for ties, as scipy); NaN for a constant
    row. ``ranks_a``: |a|'s ranks when already known."""
    from .stats import average_ranks, row_correlation

    ra = average_ranks(np.abs(a.reshape(len(a), -1))) if ranks_a is None else ranks_a
    return row_correlation(ra, average_ranks(np.abs(b.reshape(len(b), -1))))


def sanity_check(
    model,
    x,
    method: str = "gradient",
    target=None,
    *,
    order: str = "cascading",
    layers: int | None = None,
    seed: int = 42,
    threshold: float = 0.5,
    check_layers: int = 3,
    batch_size: int = 64,
    **options,
) -> dict:
    """Model parameter randomisation test of ``method`` on ``model`` at inputs ``x``.

    Parameters
    ----------
    model : Model or path
        The model; its converted graph is randomised (a copy: the model is untouched).
    x : array_like
        Inputs of the explained input (one input models; batch first).
    method : str
        A registered method that runs on the converted graph (gradient, LRP, CAMs ...).
    target : optional
        As :func:`onnx_explain.explain` takes it; default the predicted class of the trained model, kept
        for every randomised model.
    order : {'cascading', 'independent', 'bottom_up'}
    layers : int, optional
        Randomise at most this many layers (from the order's start): the cost is one explanation per layer.
    seed : int
        Each reset runs under ``torch.manual_seed(seed + 1)`` (Quantus).
    threshold, check_layers : float, int
        The pass criterion (module docstring).
    **options
        The method's options.

    Returns
    -------
    dict
        ``layers`` (names, in randomisation order), ``similarity`` ``(steps, samples)``, ``mean`` per step,
        ``original`` (the trained model's attribution), ``passed`` (cascading only; None otherwise) and
        the settings.
    """
    from .explainer import _out_shape, _run, converted, explain
    from .methods import METHODS
    from .methods.base import make_generator
    from .model import Model, load

    if order not in ORDERS:
        raise OptionError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    if method not in METHODS or METHODS[method].backend != "torch":
        raise OptionError(
            f"sanity_check randomises the converted graph: {method!r} must be a method that runs on it"
        )
    if not isinstance(model, Model):
        model = load(model)
    if target is not None and not isinstance(target, (int, np.integer, str, list, tuple, np.ndarray)):
        raise OptionError("sanity_check explains classes: give target as a class, one per sample, or None")
    if isinstance(x, dict):
        raise OnnxExplainError(
            "sanity_check explains models of one input (the others fixed with fixed_inputs=)"
        )
    x = np.asarray(x)
    first = explain(model, x, method, target, batch_size=batch_size, seed=0, **options)
    targets = first.target
    module = converted(model, "cpu", METHODS[method].output, (x, {}))
    rand = copy.deepcopy(module)
    steps = randomisation_layers(rand)
    if not steps:
        raise OnnxExplainError("the converted graph has no layer with parameters to randomise")
    if order == "cascading":
        steps = steps[::-1]
    if layers is not None:
        steps = steps[: max(int(layers), 0)]
    original_state = copy.deepcopy(rand.state_dict()) if order == "independent" else None
    spec = METHODS[method]
    opts = spec.check_options(options)
    xt = torch.from_numpy(np.ascontiguousarray(x))
    if xt.dtype not in (torch.float32, torch.float64):
        xt = xt.float()
    out_shape = _out_shape(model, spec.output)
    from .stats import average_ranks

    ranks0 = average_ranks(np.abs(first.attribution.reshape(len(x), -1)))  # the trained model's, once
    names, sims = [], []
    for name, m in steps:
        if order == "independent":
            rand.load_state_dict(original_state)
        torch.manual_seed(seed + 1)
        m.reset_parameters()
        # the explanation of the same targets, straight through the method (the output's shape is known:
        # no extra forward pass to learn it)
        attribution = _run(
            rand, xt, {}, spec, targets, batch_size, model.layout, make_generator(0), opts, out_shape
        )[0]
        names.append(name)
        sims.append(_spearman_abs(first.attribution, attribution.detach().cpu().numpy(), ranks0))
    sims = np.asarray(sims)
    means = np.nanmean(sims, axis=1) if sims.size else np.zeros(0)
    passed = None
    if order == "cascading" and len(means):
        k = min(check_layers, len(means)) - 1
        passed = bool(means[k] < threshold)
    return {
        "method": method, "order": order, "seed": seed, "layers": names, "similarity": sims,
        "mean": means, "original": first.attribution, "target": targets, "passed": passed,
        "threshold": threshold, "check_layers": check_layers,
    }  # fmt: skip
