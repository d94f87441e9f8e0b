"""Perturbation (black-box) attribution on onnxruntime: occlusion, feature ablation, RISE, KernelSHAP,
LIME and Shapley value sampling (docs/methods.md §2.8).

These methods need only ``f_c`` of perturbed inputs, so they run on the ONNX file itself through a
:class:`~onnx_explain.methods.base.RuntimeScorer` (one cached onnxruntime session), also where the graph
does not convert to torch. Perturbed rows are built chunk by chunk, ``batch_size`` rows per onnxruntime
call, so memory depends on ``batch_size`` and never on the number of perturbations.

Randomness: every explained unit draws from its own copy of the call's generator (seeded by ``seed``),
so a sample's result is the one it gets alone, whatever ``batch_size`` and whatever other samples are in
the batch. The draws follow Captum's order (``randperm`` per permutation, ``multinomial`` + ``randn``
per KernelSHAP sample, ``bernoulli`` per LIME sample), so ``torch.manual_seed(seed)`` before Captum
on one sample gives Captum the same perturbations.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..baselines import make_baseline
from ..errors import OptionError
from ..features import make_groups
from .base import register_method

__all__ = ["draw_rise", "occlusion_windows", "rise_masks"]


# ------------------------------------------------------------------------------------------ plumbing
def _unit_generator(generator: torch.Generator) -> torch.Generator:
    """A fresh copy of the call's generator: each unit starts from the same seeded state."""
    g = torch.Generator(device="cpu")
    g.set_state(generator.get_state())
    return g


def _baselines(x: torch.Tensor, baseline, scorer, generator) -> torch.Tensor:
    """The baseline of each unit ``(B, *S)`` (:func:`onnx_explain.baselines.make_baseline`), made per
    unit from its own copy of the generator, so a random baseline does not depend on the other samples;
    an array with one baseline per unit is taken as it is."""
    ax = scorer.channel_axis
    arr = None if baseline is None or isinstance(baseline, (str, tuple)) else np.asarray(baseline)
    if arr is not None and arr.ndim == x.dim() and arr.shape[0] == len(x) > 1:
        return make_baseline(x, baseline, None, channel_axis=ax).to(x.dtype)
    return torch.cat(
        [
            make_baseline(x[u : u + 1], baseline, _unit_generator(generator), channel_axis=ax)
            for u in range(len(x))
        ]
    ).to(x.dtype)


def _keep(scorer, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor | None:
    """For token ids: False at positions the sample's attention mask leaves out (never perturbed, and
    attributed exactly 0, as the gradient methods do); None for other inputs."""
    if x.dtype.is_floating_point or not getattr(scorer, "companions", None):
        return None
    for name, v in scorer.companions.items():
        v = np.asarray(v)
        if "mask" in name.lower() and v.shape[1:] == tuple(x.shape[1:]):
            owner = scorer.samples(keys).cpu().numpy()
            return torch.from_numpy(v[owner] != 0)
    return None


def _score_stream(scorer, keys: torch.Tensor, counts: list[int], make_rows: Callable) -> list[torch.Tensor]:
    """``f`` of ``counts[u]`` perturbed rows of every unit ``u``, in float64.

    ``make_rows(u, start, stop)`` builds rows ``[start, stop)`` of unit ``u``. Rows of consecutive units
    share onnxruntime calls of exactly ``scorer.batch_size`` rows, and only one call's rows exist at a time.
    """
    bs = scorer.batch_size
    out = [torch.empty(n, dtype=torch.float64) for n in counts]
    pending: list[tuple[int, int, int]] = []

    def flush():
        rows = torch.cat([make_rows(u, a, b) for u, a, b in pending])
        rkeys = torch.cat([keys[u : u + 1].expand(b - a) for u, a, b in pending])
        scores = scorer.score(rows, rkeys).to(torch.float64)
        i = 0
        for u, a, b in pending:
            out[u][a:b] = scores[i : i + b - a]
            i += b - a
        pending.clear()

    size = 0
    for u, n in enumerate(counts):
        a = 0
        while a < n:
            b = min(n, a + bs - size)
            pending.append((u, a, b))
            size += b - a
            a = b
            if size == bs:
                flush()
                size = 0
    if pending:
        flush()
    return out


def _fx(scorer, x, keys) -> torch.Tensor:
    return scorer.score(x, keys).to(torch.float64)


def _check_n(value, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise OptionError(f"{name} must be an integer of at least {low}, not {value!r}")
    return int(value)


def _groups(feature_groups, x, scorer, keys):
    ids, counts = make_groups(feature_groups, x, scorer.layout, _keep(scorer, x, keys))
    return ids, counts


def _spread(values: list[torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Group values ``values[u]`` ``(M_u,)`` written to every element of their group; 0 outside groups."""
    out = torch.zeros(ids.shape, dtype=torch.float64)
    for u, v in enumerate(values):
        inside = ids[u] >= 0
        out[u][inside] = v[ids[u][inside]]
    return out


def _compose(x_u: torch.Tensor, base_u: torch.Tensor, on: torch.Tensor, ids_u: torch.Tensor) -> torch.Tensor:
    """Rows ``(R, *S)`` from binary group vectors ``on`` ``(R, M)``: elements of groups that are on keep
    x, the others take the baseline; elements outside every group always keep x."""
    on = torch.cat([on.bool(), torch.ones(len(on), 1, dtype=torch.bool)], 1)  # id -1 -> the last column
    sel = on[:, ids_u.reshape(-1)].reshape(len(on), *ids_u.shape)
    return torch.where(sel, x_u, base_u)


# ------------------------------------------------------------------------------------------ occlusion
def _shape_option(value, x: torch.Tensor, name: str, channel_axis) -> tuple[int, ...] | None:
    """A window or strides in the input's own layout: one int per non-batch axis; for images also
    (h, w), which covers all channels; an int for every axis."""
    if value is None:
        return None
    S = tuple(x.shape[1:])
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.replace("x", ",").split(",")]
        except ValueError:
            raise OptionError(f"{name} must be integers, one per input axis, not {value!r}") from None
    if isinstance(value, (int, np.integer)):
        value = (int(value),) * len(S)
    value = tuple(int(v) for v in value)
    if len(value) == 2 and len(S) == 3 and channel_axis in (1, 3):
        c = S[channel_axis - 1]
        value = (c, *value) if channel_axis == 1 else (*value, c)
    if len(value) != len(S):
        raise OptionError(f"{name} {value} needs one size per input axis of {S}")
    if any(v < 1 for v in value):
        raise OptionError(f"{name} {value}: every size must be at least 1")
    return value


def occlusion_windows(shape, window, strides) -> list[tuple[slice, ...]]:
    """The windows of Captum's ``Occlusion`` over a sample of ``shape``: starts ``k·s`` for
    ``k = 0 .. ceil((D − w)/s)`` on every axis, the last window cropped at the border; the first axis
    varies fastest, as in Captum."""
    starts = [
        [k * s for k in range(math.ceil((d - w) / s) + 1)]
        for d, w, s in zip(shape, window, strides, strict=True)
    ]
    out = []
    for flat in range(math.prod(len(st) for st in starts)):
        idx, rem = [], flat
        for st in starts:
            idx.append(st[rem % len(st)])
            rem //= len(st)
        out.append(tuple(slice(a, min(a + w, d)) for a, w, d in zip(idx, window, shape, strict=True)))
    return out


def _default_window(x: torch.Tensor, channel_axis, layout=None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Images: all channels × an eighth of height and width, strides half of that; other inputs: one
    element, stride 1 (a sliding feature ablation)."""
    S = tuple(x.shape[1:])
    if len(S) == 2 and layout == "NHW":
        w = tuple(max(1, math.ceil(d / 8)) for d in S)
        return w, tuple(max(1, v // 2) for v in w)
    if len(S) == 3 and channel_axis in (1, 3):
        spatial = [0, 1] if channel_axis == 3 else [1, 2]
        w = [max(1, math.ceil(S[i] / 8)) if i in spatial else S[i] for i in range(3)]
        s = [max(1, w[i] // 2) if i in spatial else S[i] for i in range(3)]
        return tuple(w), tuple(s)
    return (1,) * len(S), (1,) * len(S)


@register_method(
    "occlusion",
    "sliding-window occlusion on onnxruntime (Zeiler & Fergus; Captum Occlusion semantics)",
    backend="onnxruntime",
    overview={},
    cost="1 + #windows forward passes (onnxruntime)",
    modalities=("image", "table", "tokens"),
)
def occlusion(scorer, x, target, generator, window=None, strides=None, baseline="zero"):
    """Each element gets the mean of ``f_c(x) − f_c(x with the window ← baseline)`` over the windows
    covering it (Captum ``Occlusion``). ``window`` and ``strides`` are in the input's own layout, one size
    per non-batch axis (channels included), or ``(h, w)`` for images (all channels), or ``'3,16,16'``;
    default: all channels × an eighth of the image; for other inputs one element. ``strides`` default:
    half the window on each axis (at least 1; Captum's default is 1). Token ids at positions the
    attention mask leaves out get 0.
    """
    S = tuple(x.shape[1:])
    ax = scorer.channel_axis if x.dim() == 4 else None
    w = _shape_option(window, x, "window", ax)
    s = _shape_option(strides, x, "strides", ax)
    dw, ds = _default_window(x, ax, scorer.layout)
    if w is None:
        w, s = (dw, ds) if s is None else (dw, s)
    elif s is None:
        s = tuple(max(1, v // 2) for v in w)
    if any(v > d for v, d in zip(w, S, strict=True)):
        raise OptionError(f"window {w} is larger than the input {S}")
    if any(st > v and d > v for st, v, d in zip(s, w, S, strict=True)):
        raise OptionError(f"strides {s} must not exceed the window {w}")
    wins = occlusion_windows(S, w, s)
    base = _baselines(x, baseline, scorer, generator).to(x.dtype)
    fx = _fx(scorer, x, target)

    def make_rows(u, a, b):
        rows = x[u].expand(b - a, *S).clone()
        for r, sl in enumerate(wins[a:b]):
            rows[(r, *sl)] = base[u][sl]
        return rows

    scores = _score_stream(scorer, target, [len(wins)] * len(x), make_rows)
    total = torch.zeros(x.shape, dtype=torch.float64)
    count = torch.zeros(S, dtype=torch.float64)
    for sl in wins:
        count[sl] += 1
    for u in range(len(x)):
        diff = fx[u] - scores[u]
        for j, sl in enumerate(wins):
            total[(u, *sl)] += diff[j]
    attribution = total / count
    keep = _keep(scorer, x, target)
    if keep is not None:
        attribution = attribution * keep
    return attribution, {"score": fx, "n_evaluations": 1 + len(wins), "window": w, "strides": s}


# ------------------------------------------------------------------------------------------ groups
@register_method(
    "feature_ablation",
    "each feature group replaced by the baseline, one at a time, on onnxruntime (Captum FeatureAblation)",
    backend="onnxruntime",
    cost="1 + #groups forward passes (onnxruntime)",
)
def feature_ablation(scorer, x, target, generator, feature_groups="elements", baseline="zero"):
    """Every element of a group gets ``f_c(x) − f_c(x with the group ← baseline)`` (Captum
    ``FeatureAblation`` with ``feature_mask``). ``feature_groups``: a spec (``'slic:100'``, ``'grid:8'``,
    ``'tokens'``, ``'columns'``, ``'elements'``) or an integer mask (:mod:`onnx_explain.features`)."""
    ids, counts = _groups(feature_groups, x, scorer, target)
    base = _baselines(x, baseline, scorer, generator).to(x.dtype)
    fx = _fx(scorer, x, target)

    def make_rows(u, a, b):
        on = torch.ones(b - a, counts[u], dtype=torch.bool)
        on[torch.arange(b - a), torch.arange(a, b)] = False
        return _compose(x[u], base[u], on, ids[u])

    scores = _score_stream(scorer, target, counts, make_rows)
    attribution = _spread([fx[u] - scores[u] for u in range(len(x))], ids)
    return attribution, _group_extras(fx, ids, counts, [1 + c for c in counts])


def _group_extras(fx, ids, counts, evaluations) -> dict:
    return {
        "score": fx,
        "feature_groups": ids.to(torch.int32),
        "n_groups": torch.tensor(counts),
        "n_evaluations": torch.tensor(evaluations),
    }


@register_method(
    "shapley_sampling",
    "Shapley values by permutation sampling on onnxruntime (Captum ShapleyValueSampling)",
    stochastic=True,
    backend="onnxruntime",
    cost="1 + n_samples × #groups forward passes (onnxruntime)",
)
def shapley_sampling(scorer, x, target, generator, feature_groups=None, n_samples=25, baseline="zero"):
    """Groups are switched from the baseline to x in ``n_samples`` random orders; each gets the mean of
    its marginal differences of ``f_c``. Efficiency ``Σφ = f_c(x) − f_c(baseline)`` holds exactly for any
    ``n_samples``. ``feature_groups`` default: ``'slic:100'`` for images, ``'tokens'`` for token ids,
    ``'columns'`` otherwise."""
    n = _check_n(n_samples, "n_samples")
    ids, counts = _groups(_default_groups(feature_groups, x, scorer), x, scorer, target)
    base = _baselines(x, baseline, scorer, generator).to(x.dtype)
    # the permutations of each unit, drawn as Captum does (torch.randperm per sample)
    perms = []
    for u in range(len(x)):
        g = _unit_generator(generator)
        perms.append(torch.stack([torch.randperm(counts[u], generator=g) for _ in range(n)])
                     if counts[u] else torch.zeros(n, 0, dtype=torch.long))  # fmt: skip
    ranks = [torch.argsort(p, dim=1) for p in perms]  # rank[p, g]: the step at which g is switched on
    fb = scorer.score(base, target).to(torch.float64)

    def make_rows(u, a, b):
        r = torch.arange(a, b)
        on = ranks[u][r // counts[u]] <= (r % counts[u])[:, None]
        return _compose(x[u], base[u], on, ids[u])

    scores = _score_stream(scorer, target, [n * c for c in counts], make_rows)
    phis = []
    for u in range(len(x)):
        M = counts[u]
        s = scores[u].reshape(n, M)
        prev = torch.cat([fb[u].expand(n, 1), s[:, :-1]], 1)
        marginal = torch.zeros(n, M, dtype=torch.float64)
        marginal.scatter_(1, perms[u], s - prev)
        phis.append(marginal.mean(0))
    attribution = _spread(phis, ids)
    # the last step of every permutation is x itself (elements outside groups always keep x)
    fx = torch.stack([scores[u][counts[u] - 1] if counts[u] else fb[u] for u in range(len(x))])
    extras = _group_extras(fx, ids, counts, [1 + n * c for c in counts])
    extras["baseline_score"] = fb
    return attribution, extras


def _default_groups(spec, x: torch.Tensor, scorer):
    """The grouping of the sampling methods when none is given: superpixels for images, positions for
    token ids, columns for tables (one group per scalar would need thousands of samples on images)."""
    if spec is not None:
        return spec
    if not x.dtype.is_floating_point:
        return "tokens"
    if scorer.layout is not None or x.dim() == 4:
        return "slic:100"
    return "columns"


def _kernel_shap_samples(M: int, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Captum's KernelShap samples ``(n, M)`` and weights: all ones and all zeros first (weight 1e6),
    then ``k`` drawn ∝ ``(M−1)/(k(M−k))`` and the top ``k`` of a normal vector switched on (weight 1)."""
    z = torch.zeros(n, M, dtype=torch.long)
    z[0] = 1
    w = torch.ones(n, dtype=torch.float64)
    w[: min(n, 2)] = 1e6
    if M < 2:  # no random samples to draw: the caller solves one player exactly
        return z, w
    k = torch.arange(M, dtype=torch.float)
    probs = torch.tensor(M - 1) / (k * (M - k))
    probs[0] = 0.0
    probs = probs / probs.sum(-1, keepdim=True)  # as torch.distributions.Categorical normalises
    for i in range(2, n):
        sel = int(torch.multinomial(probs.reshape(1, -1), 1, True, generator=g).T.reshape(()))
        vals = torch.randn(1, M, generator=g)
        threshold = torch.kthvalue(vals, M - sel).values.item()
        z[i] = (vals > threshold).long()[0]
    return z, w


def _weighted_lstsq(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least squares with an intercept (scikit-learn ``LinearRegression`` with
    ``sample_weight``: centre by the weighted means, scale rows by √w, minimum-norm lstsq), float64."""
    X, y, w = X.astype(np.float64), y.astype(np.float64), w.astype(np.float64)
    xm = np.average(X, axis=0, weights=w)
    ym = np.average(y, weights=w)
    sw = np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq((X - xm) * sw, (y - ym) * sw[:, 0], rcond=None)
    return coef


@register_method(
    "kernel_shap",
    "KernelSHAP on feature groups on onnxruntime (Shapley kernel sampling, weighted least squares; Captum KernelShap)",
    stochastic=True,
    backend="onnxruntime",
    cost="n_samples forward passes (onnxruntime)",
)
def kernel_shap(scorer, x, target, generator, feature_groups=None, n_samples=25, baseline="zero"):
    """Captum's ``KernelShap``: the all-on and all-off samples with weight 10⁶, then ``n_samples − 2``
    samples whose size follows the Shapley kernel; a weighted linear regression of ``f_c`` on the binary
    samples gives φ (efficiency ``Σφ ≈ f_c(x) − f_c(baseline)`` through the two heavy samples).
    ``feature_groups`` default as for ``shapley_sampling``.

    The regression is solved in float64, Captum's in float32: with few samples per group the system is
    stiff (condition number ~10⁵ at 89 groups and 100 samples), and Captum's values then move by up to
    ~10⁻¹ of the largest; with its fit in float64 Captum gives ours (docs/methods.md §2.8)."""
    n = _check_n(n_samples, "n_samples", 2)
    ids, counts = _groups(_default_groups(feature_groups, x, scorer), x, scorer, target)
    base = _baselines(x, baseline, scorer, generator).to(x.dtype)
    draws = [_kernel_shap_samples(max(counts[u], 1), n, _unit_generator(generator)) for u in range(len(x))]

    def make_rows(u, a, b):
        return _compose(x[u], base[u], draws[u][0][a:b, : counts[u]], ids[u])

    scores = _score_stream(scorer, target, [n] * len(x), make_rows)
    phis = []
    for u in range(len(x)):
        z, w = draws[u]
        if counts[u] == 1:  # one player: φ = f(x) − f(b), exactly (Captum's kernel is undefined there)
            phis.append((scores[u][0] - scores[u][1]).reshape(1))
        elif counts[u] == 0:
            phis.append(torch.zeros(0, dtype=torch.float64))
        else:
            phis.append(torch.from_numpy(_weighted_lstsq(z.numpy(), scores[u].numpy(), w.numpy())))
    attribution = _spread(phis, ids)
    fx = torch.stack([s[0] for s in scores])
    return attribution, _group_extras(fx, ids, counts, [n] * len(x))


@register_method(
    "lime",
    "LIME on feature groups on onnxruntime (Captum Lime: Bernoulli samples, exponential cosine kernel, Lasso)",
    stochastic=True,
    backend="onnxruntime",
    cost="n_samples forward passes (onnxruntime)",
)
def lime(scorer, x, target, generator, feature_groups=None, n_samples=25, baseline="zero",
         interpretable_model="lasso", alpha=0.01, kernel_width=1.0):  # fmt: skip
    """Captum's ``Lime``: ``n_samples`` Bernoulli(½) group vectors; weights ``exp(−d²/(2·width²))`` with
    ``d`` the cosine distance between the flattened input and the perturbed input; a weighted
    ``interpretable_model`` fit with intercept: ``'lasso'`` (scikit-learn ``Lasso(alpha)``, Captum's
    default, needs scikit-learn) or ``'linear'`` (least squares, exact on linear models).
    ``feature_groups`` default as for ``shapley_sampling``."""
    n = _check_n(n_samples, "n_samples")
    if interpretable_model not in ("lasso", "linear"):
        raise OptionError(f"interpretable_model must be 'lasso' or 'linear', not {interpretable_model!r}")
    if not float(kernel_width) > 0:
        raise OptionError(f"kernel_width must be positive, not {kernel_width!r}")
    if interpretable_model == "lasso":
        try:
            from sklearn.linear_model import Lasso
        except ImportError:
            raise OptionError(
                "lime's interpretable_model='lasso' needs scikit-learn (pip install scikit-learn); "
                "interpretable_model='linear' does not"
            ) from None
    ids, counts = _groups(_default_groups(feature_groups, x, scorer), x, scorer, target)
    base = _baselines(x, baseline, scorer, generator).to(x.dtype)
    draws = []
    for u in range(len(x)):
        g = _unit_generator(generator)
        probs = torch.ones(1, counts[u]) * 0.5
        draws.append(torch.cat([torch.bernoulli(probs, generator=g).long() for _ in range(n)]))
    weights = [torch.empty(n, dtype=torch.float32) for _ in range(len(x))]

    def make_rows(u, a, b):
        rows = _compose(x[u], base[u], draws[u][a:b], ids[u])
        # Captum's default kernel: cosine distance of the flattened inputs, in float32
        cos = torch.nn.functional.cosine_similarity(
            x[u].reshape(1, -1).float(), rows.reshape(b - a, -1).float(), dim=1
        )
        weights[u][a:b] = torch.exp(-((1 - cos) ** 2) / (2 * float(kernel_width) ** 2))
        return rows

    scores = _score_stream(scorer, target, [n] * len(x), make_rows)
    phis = []
    for u in range(len(x)):
        Z = draws[u].numpy().astype(np.float32)
        y = scores[u].numpy().astype(np.float32)
        w = weights[u].numpy()
        if counts[u] == 0:
            phis.append(torch.zeros(0, dtype=torch.float64))
        elif interpretable_model == "lasso":
            fit = Lasso(alpha=float(alpha)).fit(Z, y, sample_weight=w)
            phis.append(torch.from_numpy(np.asarray(fit.coef_, dtype=np.float64).reshape(-1)))
        else:
            phis.append(torch.from_numpy(_weighted_lstsq(Z, y, w)))
    attribution = _spread(phis, ids)
    extras = _group_extras(None, ids, counts, [n] * len(x))
    extras.pop("score")
    return attribution, extras


# ------------------------------------------------------------------------------------------ RISE
def _spatial(x: torch.Tensor, layout) -> tuple[tuple[int, int], Callable]:
    """(H, W) of an image batch and a function broadcasting masks ``(R, H, W)`` against its rows."""
    if layout is None:
        layout = {4: "NCHW", 3: "NHW"}.get(x.dim())
    if layout is None or x.dim() != (3 if layout == "NHW" else 4):
        raise OptionError(f"rise needs image input (B, C, H, W) in some layout, got shape {tuple(x.shape)}")
    if layout == "NCHW":
        return tuple(x.shape[2:]), lambda m: m[:, None]
    if layout == "NHWC":
        return tuple(x.shape[1:3]), lambda m: m[..., None]
    return tuple(x.shape[1:]), lambda m: m


def _upsampling(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` weights of linear interpolation with half-pixel centres and mirror borders
    (``d c b | a b c d``): scikit-image ``resize(order=1, mode='reflect', anti_aliasing=False)``."""
    c = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5
    lo = torch.floor(c)
    frac = c - lo
    lo = lo.long()
    A = torch.zeros(n_out, n_in, dtype=torch.float64)
    for idx, wt in ((lo, 1 - frac), (lo + 1, frac)):
        if n_in > 1:  # mirror at the borders
            period = 2 * (n_in - 1)
            idx = idx.remainder(period)
            idx = torch.where(idx > n_in - 1, period - idx, idx)
        else:
            idx = torch.zeros_like(idx)
        A.index_put_((torch.arange(n_out), idx), wt, accumulate=True)
    return A


def rise_masks(grid: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """RISE's masks ``(N, H, W)`` from binary grids ``(N, s, s)`` and shifts ``(N, 2)``: the grid
    upsampled linearly to ``(s+1)·ceil(H/s)`` × ``(s+1)·ceil(W/s)`` (scikit-image ``resize(order=1,
    mode='reflect', anti_aliasing=False)``, as RISE and DIANNA do), then cropped at the shift (Petsiuk
    2018; ``eclique/RISE``)."""
    s_h, s_w = grid.shape[1], grid.shape[2]
    H, W = size
    ch, cw = math.ceil(H / s_h), math.ceil(W / s_w)
    # only the rows and columns of the upsampled grid that the crop keeps: (n, H, s) @ (n, s, s) @ (n, s, W)
    rows = _upsampling(s_h, (s_h + 1) * ch)[shifts[:, 0, None] + torch.arange(H)]
    cols = _upsampling(s_w, (s_w + 1) * cw)[shifts[:, 1, None] + torch.arange(W)]
    return rows @ grid.to(torch.float64) @ cols.transpose(1, 2)


def draw_rise(n: int, s: int, p_keep: float, size: tuple[int, int], generator: torch.Generator):
    """The random part of ``n`` RISE masks, drawn up front (a few bytes per mask): Bernoulli(``p_keep``)
    grids ``(n, s, s)`` and shifts ``(n, 2)`` in ``[0, ceil(H/s)) × [0, ceil(W/s))``; the masks themselves
    are made chunk by chunk (:func:`rise_masks`)."""
    H, W = size
    grid = (torch.rand(n, s, s, generator=generator, dtype=torch.float64) < p_keep).to(torch.float64)
    shifts = torch.stack(
        [torch.randint(0, math.ceil(H / s), (n,), generator=generator),
         torch.randint(0, math.ceil(W / s), (n,), generator=generator)], 1,
    )  # fmt: skip
    return grid, shifts


@register_method(
    "rise",
    "RISE: random low-resolution masks, saliency = score-weighted mean mask, on onnxruntime (Petsiuk 2018)",
    stochastic=True,
    backend="onnxruntime",
    output="output",
    modalities=("image",),
    cost="n_masks forward passes (onnxruntime)",
)
def rise(scorer, x, target, generator, n_masks=1000, p_keep=0.5, mask_resolution=8, baseline="zero",
         masks=None):  # fmt: skip
    """``S = Σ_i f_c(x ⊙ M_i + b ⊙ (1 − M_i)) M_i / (N · p_keep)`` over ``n_masks`` masks: Bernoulli(``p_keep``)
    grids of ``mask_resolution``² cells, upsampled bilinearly with a random shift of up to one cell
    (:func:`rise_masks`). The baseline ``b`` defaults to 0 (RISE's ``x ⊙ M``); ``masks`` ``(N, H, W)``
    injects given masks (e.g. DIANNA's ``RISEImage.masks``). Every channel gets the pixel's value.
    Explains the model's output as is by default (``output='output'``: probabilities for a model that
    ends in Softmax, as RISE and DIANNA do)."""
    sal, _, N, p, bcast = _rise_sums(
        scorer, x, target, generator, n_masks, p_keep, mask_resolution, baseline, masks
    )
    attribution = torch.broadcast_to(bcast(sal / (N * p)), x.shape).to(torch.float64)
    return attribution, {"n_evaluations": N, "p_keep": p}


def _rise_sums(scorer, x, target, generator, n_masks, p_keep, mask_resolution, baseline, masks):
    """RISE's sums: ``Σ_i f(x_i) M_i`` per sample, ``Σ_i M_i``, N, p_keep and the mask broadcaster."""
    if not (isinstance(p_keep, (int, float, np.floating)) and 0 < float(p_keep) <= 1):
        raise OptionError(f"p_keep must be in (0, 1], not {p_keep!r}")
    p = float(p_keep)
    (H, W), bcast = _spatial(x, scorer.layout)
    if masks is not None:
        given = torch.as_tensor(np.asarray(masks), dtype=torch.float64)
        given = given.reshape(given.shape[0], H, W) if given.numel() == given.shape[0] * H * W else None
        if given is None:
            raise OptionError(f"masks must have shape (N, {H}, {W}), got {np.shape(masks)}")
        N = given.shape[0]

        def masks_of(a, b):
            return given[a:b]
    else:
        N = _check_n(n_masks, "n_masks")
        s = _check_n(mask_resolution, "mask_resolution")
        if s > min(H, W):
            raise OptionError(f"mask_resolution {s} is finer than the image ({H}x{W})")
        grid, shifts = draw_rise(N, s, p, (H, W), _unit_generator(generator))

        def masks_of(a, b):
            return rise_masks(grid[a:b], shifts[a:b], (H, W))

    base = _baselines(x, baseline, scorer, generator).to(x.dtype)
    zero_base = not bool(base.any())

    def make_rows(u, a, b):
        m = bcast(masks_of(a, b)).to(x.dtype)
        return x[u] * m if zero_base else x[u] * m + base[u] * (1 - m)

    scores = _score_stream(scorer, target, [N] * len(x), make_rows)
    sal = torch.zeros(len(x), H, W, dtype=torch.float64)
    mask_sum = torch.zeros(H, W, dtype=torch.float64)
    step = max(1, scorer.batch_size)
    for a in range(0, N, step):  # the weighted sum, masks rebuilt chunk by chunk
        m = masks_of(a, min(N, a + step))
        mask_sum += m.sum(0)
        for u in range(len(x)):
            sal[u] += torch.einsum("n,nhw->hw", scores[u][a : a + len(m)], m)
    return sal, mask_sum, N, p, bcast


@register_method(
    "drise",
    "D-RISE: RISE's masks scored by a detector box's D-RISE similarity (Petsiuk 2021), on onnxruntime",
    stochastic=True,
    backend="onnxruntime",
    output="output",
    modalities=("image",),
    cost="n_masks forward passes (onnxruntime)",
)
def drise(scorer, x, target, generator, n_masks=1000, p_keep=0.5, mask_resolution=8, baseline="zero",
          masks=None):  # fmt: skip
    """D-RISE for a box target (``target={'box': [x1, y1, x2, y2], 'class': c}`` or ``{'detection': k}``,
    docs/methods.md §1.6): each masked input is scored by the box's D-RISE similarity with its proposals,
    and the saliency is ``Σ_i s_i M_i / Σ_i M_i`` per pixel, scaled by its largest magnitude and clipped to
    [−1, 1] (METHODS §1.6, xaitk's ``DRISEScoring``). Masks, ``p_keep`` and ``baseline`` as :func:`rise`."""
    resolved = getattr(scorer, "target", None)
    if resolved is None or resolved.kind != "box":
        raise OptionError(
            "drise explains a detector box: give target={'box': [x1, y1, x2, y2], 'class': c} or {'detection': k}"
        )
    sal, mask_sum, N, p, bcast = _rise_sums(scorer, x, target, generator, n_masks, p_keep, mask_resolution,
                                            baseline, masks)  # fmt: skip
    sal = torch.where(mask_sum > 0, sal / mask_sum.clamp_min(1e-12), torch.zeros_like(sal))
    top = sal.reshape(len(sal), -1).abs().amax(1).clamp_min(1e-12).reshape(-1, 1, 1)
    sal = (sal / top).clamp(-1, 1)
    attribution = torch.broadcast_to(bcast(sal), x.shape).to(torch.float64)
    return attribution, {"n_evaluations": N, "p_keep": p}
