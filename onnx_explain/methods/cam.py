"""Gradient class activation maps at a layer of the converted graph: Grad-CAM, Grad-CAM++, XGrad-CAM,
HiResCAM, LayerCAM (docs/methods.md §2.10; pytorch-grad-cam's definitions and post-processing).

With ``A`` the activations of the chosen layer ``(C, h, w)`` and ``g = ∂y_t/∂A``, each method builds a map
``(h, w)``; the map is then post-processed as pytorch-grad-cam does: ReLU, scaled per image to [0, 1]
(``(m − min) / (max − min + 1e-7)``), resized to the input bilinearly (half-pixel centres, as OpenCV's
``INTER_LINEAR``), and scaled again. The attribution is that map on every channel of the input;
``extras['cam']`` is the map and ``extras['cam_raw']`` the map before post-processing (its magnitudes compare
across classes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import OnnxExplainError, OptionError
from .base import register_method

CAMS = ("gradcam", "gradcam_pp", "xgradcam", "hirescam", "layercam")


def _layer_module(module: torch.nn.Module, layer: str) -> torch.nn.Module:
    """The submodule that computes ``layer``: the module converted from the ONNX node of that name, or a
    torch submodule path."""
    from ..convert.driver import NODE_ATTR

    for m in module.modules():
        tag = getattr(m, NODE_ATTR, None)
        if tag is not None and tag[0] == layer:
            return m
    try:
        return module.get_submodule(layer)
    except AttributeError:
        raise OptionError(
            f"layer {layer!r}: no module of the converted graph computes it (a node converted to a function "
            "cannot be hooked; name the node after it)"
        ) from None


def _map(kind: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The raw map ``(R, h, w)`` of ``kind`` from activations and gradients ``(R, C, h, w)``."""
    if kind == "gradcam":
        w = g.mean(dim=(2, 3))
    elif kind == "gradcam_pp":
        g2 = g * g
        g3 = g2 * g
        s = a.sum(dim=(2, 3))[:, :, None, None]
        aij = g2 / (2 * g2 + s * g3 + 1e-6)
        aij = torch.where(g != 0, aij, torch.zeros_like(aij))
        w = (g.clamp_min(0) * aij).sum(dim=(2, 3))
    elif kind == "xgradcam":
        s = a.sum(dim=(2, 3))[:, :, None, None]
        w = (g * a / (s + 1e-7)).sum(dim=(2, 3))
    elif kind == "hirescam":
        return (g * a).sum(1)
    elif kind == "layercam":
        return (g.clamp_min(0) * a).sum(1)
    else:
        raise OptionError(f"unknown CAM {kind!r}")
    return (w[:, :, None, None] * a).sum(1)


def _scale(m: torch.Tensor) -> torch.Tensor:
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / (1e-7 + m.amax(dim=(1, 2), keepdim=True))


def _spatial(x: torch.Tensor, layout: str | None) -> tuple[int, int]:
    if layout == "NHWC":
        return x.shape[1], x.shape[2]
    if layout == "NHW":
        return x.shape[1], x.shape[2]
    if x.dim() == 4:
        return x.shape[2], x.shape[3]
    raise OnnxExplainError(f"CAMs explain images (B, C, H, W): got an input of shape {tuple(x.shape)}")


def _on_input(cam: torch.Tensor, x: torch.Tensor, layout: str | None) -> torch.Tensor:
    """The map ``(R, H, W)`` on every channel of ``x``'s layout."""
    if layout == "NHWC":
        return cam[..., None].expand_as(x)
    if layout == "NHW" or x.dim() == 3:
        return cam
    return cam[:, None].expand_as(x)


def _cam(kind: str, scorer, x, target, layer):
    if layer is None:
        raise OptionError(f"{kind} needs a layer (an ONNX tensor or node name; onnx_explain.Model picks one)")
    mod = _layer_module(scorer.module, layer)
    size = _spatial(x, scorer.layout)
    store: dict = {}

    def hook(_m, _inp, out):
        if not isinstance(out, torch.Tensor):
            raise OptionError(f"layer {layer!r} computes several tensors: name one of the maps after it")
        if out.dim() != 4:
            raise OptionError(f"layer {layer!r} is not a feature map (B, C, h, w): shape {tuple(out.shape)}")
        if not out.requires_grad:
            out = out.detach().requires_grad_(True)
        store["a"] = out
        return out

    raws, cams, scores = [], [], []
    for i in range(0, len(x), scorer.batch_size):
        rows, keys = x[i : i + scorer.batch_size], target[i : i + scorer.batch_size]
        handle = mod.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                sel = scorer.select(scorer.forward(rows, keys), keys)
                (g,) = torch.autograd.grad(sel.sum(), store["a"])
        finally:
            handle.remove()
        a = store.pop("a").detach()
        raw = _map(kind, a.to(torch.float32), g.to(torch.float32))
        m = _scale(raw.clamp_min(0))
        m = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        raws.append(raw)
        cams.append(_scale(m.clamp_min(0)))
        scores.append(sel.detach())
    cam = torch.cat(cams)
    return _on_input(cam, x, scorer.layout).to(x.dtype), {
        "cam": cam.cpu().numpy(),
        "cam_raw": torch.cat(raws).cpu().numpy(),
        "score": torch.cat(scores),
    }


_DESCRIPTIONS = {
    "gradcam": "Grad-CAM at a layer: ReLU(Σ_k mean(∂y/∂A_k) A_k), upsampled (Selvaraju 2017)",
    "gradcam_pp": "Grad-CAM++ at a layer: higher-order weights of the positive gradients (Chattopadhay 2018)",
    "xgradcam": "XGrad-CAM at a layer: weights Σ(g·A)/ΣA (Fu 2020)",
    "hirescam": "HiResCAM at a layer: Σ_k g_k ⊙ A_k (Draelos 2020)",
    "layercam": "LayerCAM at a layer: Σ_k ReLU(g_k) ⊙ A_k (Jiang 2021)",
}


def _register(kind: str) -> None:
    def cam(scorer, x, target, generator, layer=None):
        """The map of this CAM at ``layer`` (resolved from the ONNX graph by :func:`onnx_explain.explain`:
        a tensor or node name, default the last feature map before the classifier's pooling)."""
        return _cam(kind, scorer, x, target, layer)

    cam.__name__ = kind
    register_method(kind, _DESCRIPTIONS[kind], sign="abs", modalities=("image",), cost="forward+backward")(
        cam
    )


for _kind in CAMS:
    _register(_kind)
