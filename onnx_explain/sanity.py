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

Two repairs of the test (Hedström et al. 2023, "Sanity Checks Revisited"), as Quantus has them:

- ``variant="smooth"`` (Quantus' ``SmoothMPRT``): every explanation, of the trained and of each randomised
  model, is the mean over ``nr_samples`` noisy copies of the input, ``x + ε`` with
  ``ε ~ N(0, (noise_magnitude · (max x − min x))²)`` per sample and the last copy noise-free. It removes
  the shattered-gradient noise that makes a trained model's gradient look random already. The noise is
  drawn once (``noise_seed``) and shared by every model compared, so only the weights differ.
- ``variant="efficient"`` (``EfficientMPRT``): no similarity measure and no layer curve: every layer is
  randomised, and the score is the relative rise of the explanation's discrete entropy
  ``(H(a_random) − H(a)) / H(a)`` (histogram of ``n_bins`` equal bins over the sample's attribution,
  natural log). An explanation of a random model should look like noise, so the score should be
  positive; a model-blind method scores exactly 0, and so does a model that was random already. It
  passes when the mean score is above ``threshold`` (0 by default: the explanation must get more
  complex when the model is destroyed).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from .errors import OnnxExplainError, OptionError

__all__ = ["ORDERS", "VARIANTS", "discrete_entropy", "randomisation_layers", "sanity_check"]

ORDERS = ("cascading", "independent", "bottom_up")
VARIANTS = ("mprt", "smooth", "efficient")
_THRESHOLD = {"mprt": 0.5, "smooth": 0.5, "efficient": 0.0}


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


def discrete_entropy(a: np.ndarray, n_bins: int = 100) -> np.ndarray:
    """Per-row entropy (natural log) of the histogram of ``n_bins`` equal bins spanning the row's range:
    Quantus' ``discrete_entropy`` (``np.histogram`` then ``scipy.stats.entropy``) for a batch."""
    from scipy.stats import entropy

    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    # one histogram per row, as numpy bins it (its edge corrections included): a row's bins are its own
    return np.array([entropy(np.histogram(row, bins=n_bins)[0]) for row in a])


def sanity_check(
    model,
    x,
    method: str = "gradient",
    target=None,
    *,
    variant: str = "mprt",
    order: str = "cascading",
    layers: int | None = None,
    seed: int = 42,
    threshold: float | None = None,
    check_layers: int = 3,
    nr_samples: int = 50,
    noise_magnitude: float = 0.1,
    noise_seed: int = 0,
    n_bins: int = 100,
    batch_size: int = 64,
    **options,
) -> dict:
    """Model parameter randomisation test of ``method`` on ``model`` at inputs ``x``.

    Parameters
    ----------
    model : Model or path
        The model; its converted graph is randomised (a copy: the model is untouched).
    x : array_like or dict
        A batch of the explained input (batch first), or a dict of arrays named after the model's inputs
        with per-sample values of the others (a recurrent state ...), as :func:`onnx_explain.explain`
        takes it; every randomised model sees each sample's own values.
    method : str
        A registered method that runs on the converted graph (gradient, LRP, CAMs ...).
    target : optional
        As :func:`onnx_explain.explain` takes it; default the predicted class of the trained model, kept
        for every randomised model.
    variant : {'mprt', 'smooth', 'efficient'}
        The test (module docstring): Quantus' ``MPRT``, ``SmoothMPRT`` or ``EfficientMPRT``.
    order : {'cascading', 'independent', 'bottom_up'}
        The randomisation order (``mprt`` and ``smooth``; ``efficient`` randomises every layer).
    layers : int, optional
        Randomise at most this many layers (from the order's start): the cost is one explanation per layer
        (``nr_samples`` with ``smooth``).
    seed : int
        Each reset runs under ``torch.manual_seed(seed + 1)`` (Quantus).
    threshold : float, optional
        The pass criterion (module docstring); default 0.5 for ``mprt`` and ``smooth``, 0 for
        ``efficient``.
    check_layers : int
        Cascading: the verdict reads the similarity once this many top layers are random.
    nr_samples, noise_magnitude, noise_seed : int, float, int
        ``smooth``: noisy copies per explanation (the last one noise-free), the noise's standard deviation
        relative to each sample's value range, and the seed of the noise.
    n_bins : int
        ``efficient``: the histogram's bins.
    batch_size : int
        Rows per forward/backward pass.
    **options
        The method's options.

    Returns
    -------
    dict
        ``layers`` (names, in randomisation order), ``similarity`` ``(steps, samples)`` (``efficient``: the
        score, one step), ``mean`` per step, ``original`` (the trained model's attribution), ``passed``
        (cascading or ``efficient``; None otherwise) and the settings; ``efficient`` adds ``entropy``
        ``(2, samples)``: the trained and the random model's.
    """
    from .explainer import MethodCall, converted, declared_row_shape, explain, run_method, to_device
    from .methods import METHODS
    from .methods.base import make_generator
    from .model import Model, load
    from .stats import average_ranks

    if variant not in VARIANTS:
        raise OptionError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    if order not in ORDERS:
        raise OptionError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    if variant == "smooth" and (int(nr_samples) < 1 or not noise_magnitude >= 0):
        raise OptionError("smooth: nr_samples must be at least 1 and noise_magnitude not negative")
    if variant == "efficient" and int(n_bins) < 1:
        raise OptionError("efficient: n_bins must be at least 1")
    if method not in METHODS or METHODS[method].backend != "torch":
        raise OptionError(
            f"sanity_check randomises the converted graph: {method!r} must be a method that runs on it"
        )
    if not isinstance(model, Model):
        model = load(model)
    if target is not None and not isinstance(target, (int, np.integer, str, list, tuple, np.ndarray)):
        raise OptionError("sanity_check explains classes: give target as a class, one per sample, or None")
    threshold = _THRESHOLD[variant] if threshold is None else float(threshold)
    first = explain(model, x, method, target, batch_size=batch_size, seed=0, **options)
    targets = first.target
    x, companions = model.split_inputs(x) if isinstance(x, dict) else (np.asarray(x), {})
    module = converted(model, "cpu", METHODS[method].output, (x, companions))
    comp = {k: to_device(v, "cpu") for k, v in companions.items()}  # per sample, batch first
    rand = copy.deepcopy(module)
    steps = randomisation_layers(rand)
    if not steps:
        raise OnnxExplainError("the converted graph has no layer with parameters to randomise")
    if order == "cascading" or variant == "efficient":
        steps = steps[::-1]
    if layers is not None:
        steps = steps[: max(int(layers), 0)]
    original_state = copy.deepcopy(rand.state_dict()) if order == "independent" else None
    spec = METHODS[method]
    opts = spec.check_options(options)
    if "layer" in spec.options:  # a CAM: the layer the explanation itself used (named, or the default)
        from .layers import resolve_layer

        opts = {**opts, "layer": resolve_layer(model.proto, opts.get("layer"))["node"]}
    out_shape = declared_row_shape(model, spec.output)
    rows = [np.ascontiguousarray(x)]
    if variant == "smooth":  # the noisy copies, drawn once for every model compared (the last: none)
        axes = tuple(range(1, x.ndim))
        std = noise_magnitude * (x.max(axis=axes, keepdims=True) - x.min(axis=axes, keepdims=True))
        rng = np.random.default_rng(noise_seed)
        noisy = [x + rng.standard_normal(x.shape) * std for _ in range(int(nr_samples) - 1)]
        rows = [np.ascontiguousarray(r, dtype=x.dtype) for r in noisy] + rows

    def attribute(net) -> np.ndarray:
        """The method's attribution by ``net`` (``smooth``: the mean over the noisy copies, as many copies
        per pass as ``batch_size`` holds)."""
        per = max(1, batch_size // max(len(x), 1))
        total = None
        for i in range(0, len(rows), per):
            block = np.concatenate(rows[i : i + per])
            xt = torch.from_numpy(block)
            if xt.dtype not in (torch.float32, torch.float64):
                xt = xt.float()
            copies = len(block) // len(x)
            tt = np.tile(np.asarray(targets), copies) if len(rows) > 1 else targets
            cb = {k: torch.cat([v] * copies) for k, v in comp.items()} if copies > 1 else comp
            a = run_method(
                net,
                xt,
                cb,
                MethodCall(spec, opts, tt, batch_size, model.layout, make_generator(0), out_shape),
            )[0]
            a = a.detach().cpu().numpy()
            if len(rows) == 1:  # one explanation: as the method gives it (ranking float32 is faster)
                return a
            a = a.astype(np.float64).reshape(-1, *x.shape)
            total = a.sum(axis=0) if total is None else total + a.sum(axis=0)
        return total / len(rows)

    original = first.attribution if variant == "mprt" else attribute(module)
    ranks0 = average_ranks(np.abs(original.reshape(len(x), -1)))  # the trained model's, once
    names, sims = [], []
    for name, m in steps:
        if order == "independent" and variant != "efficient":
            rand.load_state_dict(original_state)
        torch.manual_seed(seed + 1)
        m.reset_parameters()
        names.append(name)
        if variant == "efficient":  # one explanation, once every layer is random
            continue
        # the explanation of the same targets, straight through the method (the output's shape is known:
        # no extra forward pass to learn it)
        sims.append(_spearman_abs(original, attribute(rand), ranks0))
    extra = {}
    if variant == "efficient":
        h = np.stack([discrete_entropy(original, n_bins), discrete_entropy(attribute(rand), n_bins)])
        with np.errstate(divide="ignore", invalid="ignore"):
            sims = [(h[1] - h[0]) / h[0]]
        extra = {"entropy": h, "n_bins": n_bins}
    elif variant == "smooth":
        extra = {"nr_samples": nr_samples, "noise_magnitude": noise_magnitude, "noise_seed": noise_seed}
    sims = np.asarray(sims)
    means = np.nanmean(sims, axis=1) if sims.size else np.zeros(0)
    passed = None
    if variant == "efficient" and len(means):
        passed = bool(means[0] > threshold)
    elif order == "cascading" and len(means):
        k = min(check_layers, len(means)) - 1
        passed = bool(means[k] < threshold)
    return {
        "method": method, "variant": variant, "order": order, "seed": seed, "layers": names,
        "similarity": sims, "mean": means, "original": original, "target": targets, "passed": passed,
        "threshold": threshold, "check_layers": check_layers, **extra,
    }  # fmt: skip
