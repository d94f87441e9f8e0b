"""Feature groups: which input elements a perturbation method switches on and off together.

Every black-box method that takes ``feature_groups`` (feature ablation, Shapley sampling, KernelSHAP,
LIME) reads it here, so a spec means the same thing everywhere. A spec is

- a registered name with an optional argument after a colon (:data:`GROUPS`): ``'slic:100'``,
  ``'quickshift'``, ``'felzenszwalb:1'`` (scikit-image superpixels of each image), ``'grid:8'`` or
  ``'grid:4x6'`` (equal cells over height and width), ``'tokens'`` (one group per position; ids after
  the colon, ``'tokens:0,101,102'``, are never perturbed), ``'columns'`` (one group per index of the
  last axis: the columns of a table), ``'elements'`` (one group per scalar, Captum's default);
- an integer array: one group id per element, of the sample's shape ``S``, broadcastable to it (Captum's
  ``feature_mask``, e.g. ``(1, H, W)`` for all channels of a pixel together), or ``(B, *S)`` with one
  mask per sample. Negative ids mark elements that are never perturbed.

The result is a long tensor ``(B, *S)`` of group ids ``0 .. M_b − 1`` per sample (relabelled in order, so
gaps in the ids do not make empty groups) and ``-1`` where an element is never perturbed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .errors import OptionError
from .layout import to_channels_first

__all__ = ["GROUPS", "GroupSpec", "describe", "make_groups", "register_groups"]


@dataclass(frozen=True)
class GroupSpec:
    """A named way to group features: ``fn(x, layout, arg) -> ids``.

    ``x`` is the batch as a numpy array ``(B, *S)`` in the model's layout, ``arg`` the text after the
    colon (None without one); ``ids`` are integer group ids broadcastable to ``x`` (``-1``: never
    perturbed).
    """

    name: str
    fn: Callable
    description: str
    images_only: bool = False


#: name -> GroupSpec
GROUPS: dict[str, GroupSpec] = {}


def register_groups(name: str, description: str, images_only: bool = False):
    """Register ``fn(x, layout, arg) -> ids`` under ``name`` (refused twice)."""

    def deco(fn):
        if name in GROUPS:
            raise ValueError(f"feature groups {name!r} are registered twice")
        GROUPS[name] = GroupSpec(name, fn, description, images_only)
        return fn

    return deco


def describe() -> str:
    """One line for help texts."""
    return ", ".join(f"{n}" for n in GROUPS) + " (e.g. 'slic:100', 'grid:8') or an integer mask array"


# ---------------------------------------------------------------------------------------------- images
def _image_view(x: np.ndarray, layout: str | None) -> tuple[np.ndarray, str]:
    """(the batch as ``(B, C, H, W)``, the layout used). A 4-D batch without a layout is read as NCHW, a
    3-D one as NHW (the ONNX conventions)."""
    if layout is None:
        layout = {4: "NCHW", 3: "NHW"}.get(x.ndim)
    if layout is None or x.ndim != {"NCHW": 4, "NHWC": 4, "NHW": 3}[layout]:
        raise OptionError(f"feature_groups: superpixels and grids need image input, got shape {x.shape}")
    return to_channels_first(x, layout), layout


def _broadcast_spatial(labels: np.ndarray, layout: str) -> np.ndarray:
    """Per-sample spatial labels ``(B, H, W)`` shaped to broadcast against the batch in ``layout``."""
    return {"NCHW": labels[:, None], "NHWC": labels[..., None], "NHW": labels}[layout]


def _for_skimage(img: np.ndarray) -> tuple[np.ndarray, int | None]:
    """One image ``(C, H, W)`` as scikit-image reads it: channels last, scaled to [0, 1] (normalised
    inputs are not colours; superpixels depend only on relative values), grey images as 2-D."""
    img = img.astype(np.float64)
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    if img.shape[0] == 1:
        return img[0], None
    return np.moveaxis(img, 0, -1), -1


def _int_arg(arg: str | None, name: str, default):
    if arg is None or arg == "":
        return default
    try:
        v = float(arg)
    except ValueError:
        raise OptionError(f"feature_groups {name!r}: {arg!r} is not a number") from None
    if v <= 0:
        raise OptionError(f"feature_groups {name!r}: the argument must be positive, not {arg!r}")
    return v


def _superpixels(x, layout, segment) -> np.ndarray:
    cf, layout = _image_view(x, layout)
    labels = np.stack([segment(*_for_skimage(img)) for img in cf])
    return _broadcast_spatial(labels, layout)


@register_groups("slic", "scikit-image SLIC superpixels: 'slic:N' about N segments (default 100), "
                 "compactness 10", images_only=True)  # fmt: skip
def _slic(x, layout, arg):
    from skimage.segmentation import slic

    n = int(_int_arg(arg, "slic", 100))
    return _superpixels(
        x, layout,
        lambda img, ch: slic(img, n_segments=n, compactness=10, start_label=0, channel_axis=ch,
                             convert2lab=None if ch is not None and img.shape[-1] == 3 else False),
    )  # fmt: skip


@register_groups("quickshift", "scikit-image quickshift superpixels: 'quickshift:K' kernel size K "
                 "(default 5), ratio 1, max_dist 10", images_only=True)  # fmt: skip
def _quickshift(x, layout, arg):
    from skimage.segmentation import quickshift

    k = _int_arg(arg, "quickshift", 5)

    def segment(img, ch):
        if ch is None:  # quickshift needs channels: a grey image is three equal ones
            img = np.repeat(img[..., None], 3, axis=-1)
        return quickshift(img, ratio=1.0, kernel_size=k, max_dist=10, convert2lab=img.shape[-1] == 3)

    return _superpixels(x, layout, segment)


@register_groups("felzenszwalb", "scikit-image Felzenszwalb segments: 'felzenszwalb:S' scale S "
                 "(default 1), sigma 0.8, min_size 20", images_only=True)  # fmt: skip
def _felzenszwalb(x, layout, arg):
    from skimage.segmentation import felzenszwalb

    scale = _int_arg(arg, "felzenszwalb", 1.0)
    return _superpixels(
        x, layout, lambda img, ch: felzenszwalb(img, scale=scale, sigma=0.8, min_size=20, channel_axis=ch)
    )


@register_groups("grid", "equal cells over height and width: 'grid:K' (K x K, default 8) or 'grid:RxC'",
                 images_only=True)  # fmt: skip
def _grid(x, layout, arg):
    cf, layout = _image_view(x, layout)
    H, W = cf.shape[-2:]
    try:
        parts = [int(p) for p in (arg or "8").lower().split("x")]
    except ValueError:
        raise OptionError(f"feature_groups 'grid': {arg!r} is not K or RxC") from None
    rows, cols = (parts[0], parts[0]) if len(parts) == 1 else parts[:2]
    if len(parts) > 2 or not (1 <= rows <= H and 1 <= cols <= W):
        raise OptionError(f"feature_groups 'grid:{arg}': between 1x1 and {H}x{W} cells")
    r = np.arange(H) * rows // H  # an even split: cell sizes differ by at most one pixel
    c = np.arange(W) * cols // W
    labels = (r[:, None] * cols + c[None, :])[None].repeat(len(cf), 0)
    return _broadcast_spatial(labels, layout)


# ---------------------------------------------------------------------------------------------- others
@register_groups("tokens", "one group per token position; 'tokens:0,101,102' never perturbs those ids")
def _tokens(x, layout, arg):
    if x.ndim != 2:
        raise OptionError(f"feature_groups 'tokens' needs token ids (B, L), got shape {x.shape}")
    ids = np.broadcast_to(np.arange(x.shape[1]), x.shape).copy()
    if arg:
        try:
            fixed = [int(v) for v in arg.split(",") if v.strip()]
        except ValueError:
            raise OptionError(f"feature_groups 'tokens:{arg}': give ids separated by commas") from None
        ids[np.isin(x, fixed)] = -1
    return ids


@register_groups("columns", "one group per index of the last axis (the columns of a table)")
def _columns(x, layout, arg):
    return np.arange(x.shape[-1]).reshape((1,) * (x.ndim - 1) + (-1,))


@register_groups("elements", "one group per scalar of the input (Captum's default)")
def _elements(x, layout, arg):
    return np.arange(int(np.prod(x.shape[1:]))).reshape((1, *x.shape[1:]))


# ---------------------------------------------------------------------------------------------- entry
def _from_array(mask, shape: tuple) -> np.ndarray:
    m = np.asarray(mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask)
    if m.dtype.kind not in "iub":
        raise OptionError(f"feature_groups: a mask must hold integer group ids, not {m.dtype}")
    B, S = shape[0], shape[1:]
    if m.ndim == len(shape) and m.shape[0] not in (1, B):
        raise OptionError(f"feature_groups: a mask of shape {m.shape} has {m.shape[0]} samples for {B}")
    if m.ndim > len(shape):
        raise OptionError(f"feature_groups: a mask of shape {m.shape} does not fit the input {shape}")
    try:
        return np.broadcast_to(m if m.ndim == len(shape) else m.reshape((1,) * (len(shape) - m.ndim) + m.shape),
                               (B, *S)).astype(np.int64)  # fmt: skip
    except ValueError:
        raise OptionError(
            f"feature_groups: a mask of shape {m.shape} does not broadcast to the input {shape}"
        ) from None


def make_groups(spec, x, layout: str | None = None, keep=None) -> tuple[torch.Tensor, list[int]]:
    """Group ids of every element of the batch ``x``.

    Parameters
    ----------
    spec : str or array_like
        A spec (``'slic:100'``, ``'grid:8'``, ``'tokens'``, ``'columns'``, ``'elements'`` ...) or an
        integer mask (see the module docstring).
    x : torch.Tensor or numpy.ndarray
        The batch ``(B, *S)`` in the model's layout.
    layout : {'NCHW', 'NHWC', 'NHW'}, optional
        The image layout (superpixels and grids work on height and width, all channels together).
    keep : array_like of bool, optional
        ``(B, *S)``: False where an element must never be perturbed (positions an attention mask leaves
        out); they get id ``-1``.

    Returns
    -------
    ids : torch.Tensor
        long ``(B, *S)``: ``0 .. M_b − 1`` per sample, ``-1`` for elements never perturbed.
    counts : list of int
        ``M_b``, the number of groups of each sample.

    Raises
    ------
    OptionError
        An unknown spec, a bad argument, a mask of the wrong shape, or a spec for another kind of input.
    """
    xn = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    shape = xn.shape
    if isinstance(spec, str):
        name, _, arg = spec.partition(":")
        name = name.strip().lower()
        if name not in GROUPS:
            raise OptionError(f"unknown feature_groups {spec!r}: one of {describe()}")
        raw = GROUPS[name].fn(xn, layout, arg.strip() or None)
        ids = np.broadcast_to(raw, shape).astype(np.int64)
    elif spec is None:
        raise OptionError("feature_groups: give a spec such as 'slic:100' or an integer mask")
    else:
        ids = _from_array(spec, shape)
    if keep is not None:
        ids = np.where(np.broadcast_to(np.asarray(keep, dtype=bool), shape), ids, -1)
    out = np.full(shape, -1, dtype=np.int64)
    counts = []
    for b in range(shape[0]):
        valid = ids[b] >= 0
        uniq, inverse = np.unique(ids[b][valid], return_inverse=True)
        out[b][valid] = inverse.reshape(-1)
        counts.append(len(uniq))
    return torch.from_numpy(out), counts
