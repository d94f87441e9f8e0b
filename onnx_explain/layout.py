"""Image layout at the edges: the model's own layout outside, the channel-first view inside.

A model reads images in its layout (``'NCHW'``, ``'NHWC'``, ``'NHW'``: see
:func:`onnx_explain.signature.image_layout`). The metrics and heatmaps work on one view, channels on
axis 1 of a batch (``(B, C, H, W)``; grayscale ``NHW`` gets a channel axis of 1), so a pixel, a region or
a per-channel value means the same thing whatever the model's layout. These helpers move an array
between the two; they act on the *trailing* sample axes, so ``(B, *S)`` and ``(B, n, *S)`` arrays both
work, and they accept numpy arrays and torch tensors alike.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LAYOUTS", "channel_axis", "from_channels_first", "modality", "to_channels_first"]

#: layout -> channel axis of a batch in that layout (None: no channel axis)
LAYOUTS = {"NCHW": 1, "NHWC": 3, "NHW": None}


def channel_axis(layout: str | None, default: int | None = 1) -> int | None:
    """The channel axis of a batch in ``layout``; ``default`` for a tensor that is not an image
    (``None`` layout): axis 1, the ONNX convention, unless told otherwise."""
    if layout is None:
        return default
    if layout not in LAYOUTS:
        from .errors import OptionError

        raise OptionError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    return LAYOUTS[layout]


def _is_torch(a) -> bool:
    return type(a).__module__.startswith("torch")


def to_channels_first(a, layout: str | None):
    """``a`` (trailing axes in ``layout``) with its trailing axes as ``(C, H, W)``: NHWC moves the last
    axis three places left, NHW gains a channel axis of 1; NCHW and non-images are returned as they are."""
    if layout == "NHWC":
        return a.movedim(-1, -3) if _is_torch(a) else np.moveaxis(a, -1, -3)
    if layout == "NHW":
        return a.unsqueeze(-3) if _is_torch(a) else np.expand_dims(a, -3)
    return a


def from_channels_first(a, layout: str | None):
    """The inverse of :func:`to_channels_first` (a contiguous copy when axes move, for onnxruntime)."""
    if layout == "NHWC":
        return (
            a.movedim(-3, -1).contiguous() if _is_torch(a) else np.ascontiguousarray(np.moveaxis(a, -3, -1))
        )
    if layout == "NHW":
        return a.squeeze(-3) if _is_torch(a) else a[..., 0, :, :]
    return a


def modality(layout: str | None, dtype=None) -> str:
    """What an input is, for choosing methods and metrics: ``'image'`` (any image layout), ``'tokens'``
    (integer ids) or ``'table'`` (any other float tensor)."""
    if layout is not None:
        return "image"
    if dtype is not None and np.dtype(dtype).kind in "iu":
        return "tokens"
    return "table"
