"""Baselines: the reference input of Integrated Gradients and the replacement values of the masking
metrics, with one meaning per name (docs/methods.md §1.5, §2.3).

A baseline is given as

- a registered name (:data:`BASELINES`): ``'zero'``, ``'uniform'``, ``'uniform_range'``, ``'blur'``,
  ``'quantus_black'``, ``'quantus_white'``, ``'quantus_mean'``;
- ``('uniform', low, high)``: the uniform baseline on other bounds;
- a number: that constant everywhere;
- per-channel values, a sequence of length C: one constant per channel, along the model's channel axis
  (axis 1 for NCHW, axis 3 for NHWC);
- an array broadcastable to the input.

The same call serves numpy arrays (the metrics, with a ``numpy.random.Generator``) and torch tensors
(Integrated Gradients, with a ``torch.Generator``), and returns the kind it was given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import OptionError
from .layout import from_channels_first, to_channels_first

__all__ = [
    "BASELINES",
    "BaselineSpec",
    "along_channels",
    "blur",
    "gaussian_kernel",
    "make_baseline",
    "make_baselines",
]


@dataclass(frozen=True)
class BaselineSpec:
    """A named baseline: ``fn(x, rng, channel_axis) -> array of x's shape``.

    Attributes
    ----------
    random : bool
        Each call draws new values (Integrated Gradients averages ``n_baselines`` draws of it).
    images_only : bool
        Defined for image batches only (``(B, C, H, W)`` in some layout).
    """

    name: str
    fn: Callable
    description: str
    random: bool = False
    images_only: bool = False


#: name -> BaselineSpec
BASELINES: dict[str, BaselineSpec] = {}


def register_baseline(name: str, description: str, random: bool = False, images_only: bool = False):
    """Register ``fn(x, rng, channel_axis) -> baseline`` under ``name`` (refused twice)."""

    def deco(fn):
        if name in BASELINES:
            raise ValueError(f"baseline {name!r} is registered twice")
        BASELINES[name] = BaselineSpec(name, fn, description, random, images_only)
        return fn

    return deco


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _per_sample(v, x):
    """A per-sample vector ``(B,)`` reshaped to broadcast against ``x``."""
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def _uniform(x, rng, low, high):
    if _is_torch(x):
        import torch

        # one draw shared by every sample: a sample's baseline does not depend on the batch it is in
        u = torch.rand((1, *x.shape[1:]), generator=rng, dtype=x.dtype, device=x.device)
        return low + (high - low) * u.expand(x.shape)
    return rng.uniform(low, high, size=x.shape).astype(x.dtype)


@register_baseline("zero", "the constant 0 in model-input space (the mean colour of normalised images)")
def _zero(x, rng, channel_axis):
    if _is_torch(x):
        import torch

        return torch.zeros_like(x)
    return np.zeros_like(x)


@register_baseline(
    "uniform", "i.i.d. U[0, 1) per element; ('uniform', low, high) for other bounds", random=True
)
def _uniform_01(x, rng, channel_axis):
    return _uniform(x, rng, 0.0, 1.0)


@register_baseline("uniform_range", "i.i.d. U[min, max) per element, min and max of each sample", random=True)
def _uniform_range(x, rng, channel_axis):
    if _is_torch(x):
        flat = x.reshape(len(x), -1)
        return _uniform(x, rng, _per_sample(flat.amin(1), x), _per_sample(flat.amax(1), x))
    flat = x.reshape(len(x), -1).astype(np.float64)
    lo, hi = _per_sample(flat.min(1), x), _per_sample(flat.max(1), x)
    return (lo + (hi - lo) * rng.random(x.shape)).astype(x.dtype)


@register_baseline("blur", "RISE's substrate: each channel blurred by an 11x11, sigma 5 Gaussian, zero padding",
                   images_only=True)  # fmt: skip
def _blur(x, rng, channel_axis):
    layout = {3: "NHWC", None: "NHW" if x.ndim == 3 else None}.get(channel_axis)
    if _is_torch(x):
        return from_channels_first(blur(to_channels_first(x, layout)), layout)
    import torch

    cf = torch.from_numpy(np.ascontiguousarray(to_channels_first(x, layout), dtype=np.float64))
    return from_channels_first(blur(cf).numpy(), layout).astype(x.dtype)


def _sample_stat(reduce_np: str, reduce_torch: str):
    def fn(x, rng, channel_axis):
        flat = x.reshape(len(x), -1)
        if _is_torch(x):
            v = getattr(flat, reduce_torch)(1)
            return _per_sample(v, x).expand(x.shape).clone()
        v = getattr(np, reduce_np)(flat, axis=1)
        return np.broadcast_to(_per_sample(v, x), x.shape).astype(x.dtype).copy()

    return fn


register_baseline("quantus_black", "the minimum of each sample (Quantus 'black')")(
    _sample_stat("min", "amin")
)
register_baseline("quantus_white", "the maximum of each sample (Quantus 'white')")(
    _sample_stat("max", "amax")
)
register_baseline("quantus_mean", "the mean of each sample (Quantus 'mean'; the masking curves refill it "
                  "from the array as perturbed so far)")(_sample_stat("mean", "mean"))  # fmt: skip


def gaussian_kernel(klen: int = 11, nsig: float = 5.0) -> np.ndarray:
    """RISE's ``gkern``: ``scipy.ndimage.gaussian_filter`` of a centred delta (sums to 1)."""
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1
    return gaussian_filter(delta, nsig)


def blur(x, klen: int = 11, nsig: float = 5.0):
    """Per-channel Gaussian blur of a channel-first batch ``(B, C, H, W)`` (torch) with zero padding."""
    import torch

    if x.dim() != 4:
        raise OptionError(f"the blur baseline needs image input (B, C, H, W), got shape {tuple(x.shape)}")
    k = torch.as_tensor(gaussian_kernel(klen, nsig), dtype=x.dtype, device=x.device)
    c = x.shape[1]
    weight = k.expand(c, 1, klen, klen).contiguous()
    return torch.nn.functional.conv2d(x, weight, padding=klen // 2, groups=c)


def _default_rng(x):
    if _is_torch(x):
        import torch

        g = torch.Generator(device=x.device)
        g.manual_seed(0)
        return g
    return np.random.default_rng(0)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _constant(x, value, channel_axis):
    """A number, per-channel values or an array, broadcast to x."""
    torch_x = _is_torch(x)
    if torch_x:
        import torch
    if _is_number(value):
        return torch.full_like(x, float(value)) if torch_x else np.full_like(x, float(value))
    try:
        b = np.asarray(value, dtype=None if torch_x else x.dtype)
        if torch_x:
            b = torch.as_tensor(b, dtype=x.dtype, device=x.device)
    except (TypeError, ValueError):
        raise OptionError(f"baseline {value!r} is not a name, a number or an array") from None
    b = along_channels(b, x, channel_axis)
    try:
        return torch.broadcast_to(b, x.shape).clone() if torch_x else np.broadcast_to(b, x.shape).copy()
    except (RuntimeError, ValueError):
        raise OptionError(
            f"baseline of shape {tuple(b.shape)} does not broadcast to the input {tuple(x.shape)}"
        ) from None


def along_channels(values, x, channel_axis: int | None):
    """Per-channel ``values`` (1-D, length C) reshaped to broadcast along ``x``'s channel axis
    (``(1, C, 1, 1)`` for NCHW, ``(1, 1, 1, C)`` for NHWC); anything else is returned as it is. For
    per-channel bounds and constants (numpy or torch)."""
    if channel_axis is None or values.ndim != 1 or x.ndim <= 2 or values.shape[0] != x.shape[channel_axis]:
        return values
    shape = [1] * x.ndim
    shape[channel_axis] = values.shape[0]
    return values.reshape(shape)


def _is_uniform_tuple(baseline) -> bool:
    return isinstance(baseline, tuple) and len(baseline) == 3 and baseline[0] == "uniform"


def make_baseline(x, baseline="zero", rng=None, *, channel_axis: int | None = 1):
    """One baseline of ``x``'s shape and kind (numpy array or torch tensor).

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        The batch, batch first, in the model's layout.
    baseline : str, tuple, number, sequence or array
        See the module docstring; ``None`` is ``'zero'``.
    rng : numpy.random.Generator or torch.Generator, optional
        For the random baselines (default: seeded with 0).
    channel_axis : int or None
        Where per-channel values go (1 for NCHW, 3 for NHWC; None: no channel axis).

    Raises
    ------
    OptionError
        An unknown name, or values that do not broadcast to ``x``.
    """
    if baseline is None:
        baseline = "zero"
    if _is_uniform_tuple(baseline):
        return _uniform(
            x, rng if rng is not None else _default_rng(x), float(baseline[1]), float(baseline[2])
        )
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise OptionError(
                f"unknown baseline {baseline!r}: one of {', '.join(BASELINES)}, a number, per-channel values "
                "or an array"
            )
        spec = BASELINES[baseline]
        return spec.fn(x, rng if rng is not None or not spec.random else _default_rng(x), channel_axis)
    return _constant(x, baseline, channel_axis)


def make_baselines(x, baseline="zero", rng=None, n_draws: int = 1, *, channel_axis: int | None = 1) -> list:
    """The baselines that Integrated Gradients averages over: ``n_draws`` draws of a random baseline, one
    of any other; a list of baselines (names, numbers, arrays) gives all of them. A list of numbers is
    per-channel values, not a list of constants."""
    if (
        isinstance(baseline, (list, tuple))
        and baseline
        and not _is_uniform_tuple(baseline)
        and not all(_is_number(v) for v in baseline)
    ):
        return [
            b for item in baseline for b in make_baselines(x, item, rng, n_draws, channel_axis=channel_axis)
        ]
    random = _is_uniform_tuple(baseline) or (
        isinstance(baseline, str) and baseline in BASELINES and BASELINES[baseline].random
    )
    return [
        make_baseline(x, baseline, rng, channel_axis=channel_axis)
        for _ in range(int(n_draws) if random else 1)
    ]


def describe() -> str:
    """One line for help texts: the names and the other forms."""
    return ", ".join(BASELINES) + ", ('uniform', low, high), a number, per-channel values or an array"
