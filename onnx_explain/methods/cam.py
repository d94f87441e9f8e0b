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

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import OnnxExplainError, OptionError
from ..layers import token_grid
from .base import register_method

CAMS = ("gradcam", "gradcam_pp", "xgradcam", "hirescam", "layercam")


def layer_module(module: torch.nn.Module, layer: str) -> torch.nn.Module:
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


def reshape_spec(reshape) -> tuple:
    """A CAM's ``reshape`` option as ``("auto",)``, ``("nhwc",)`` or ``("tokens", extra, h, w)``:
    ``"auto"`` reads a rank-4 layer as ``(B, C, h, w)`` and a square token grid ``(B, extra + side², D)``
    (up to 8 leading class/register tokens) as ``(B, D, side, side)``; ``"nhwc"`` reads a rank-4 layer as
    ``(B, h, w, C)`` (a Swin stage, a Keras export); ``"E:HxW"`` (``"1:14x28"``) reads tokens ``(B, E +
    H·W, D)`` as an ``H × W`` grid after ``E`` leading tokens (a ViT on a non-square image)."""
    if reshape is None or reshape == "auto":
        return ("auto",)
    if reshape == "nhwc":
        return ("nhwc",)
    text = str(reshape)
    try:
        extra, grid = text.split(":")
        h, w = grid.lower().split("x")
        spec = ("tokens", int(extra), int(h), int(w))
    except ValueError:
        spec = None
    if spec is None or min(spec[1:]) < 0 or min(spec[2:]) < 1:
        raise OptionError(f"reshape must be 'auto', 'nhwc' or 'EXTRA:HxW' (e.g. '1:14x28'), not {reshape!r}")
    return spec


def _image_grid(tokens: int, size) -> tuple | None:
    """``(extra, h, w)``: the patch grid of ``tokens`` tokens for an input of spatial ``size``, the largest
    patch dividing both sides with ``h·w`` patches and at most 8 other tokens (a 64×32 image with 9
    tokens: 16-pixel patches, 4×2 and a class token); None when no patch size fits."""
    if size is None:
        return None
    H, W = (int(v) for v in size)
    for p in range(min(H, W), 0, -1):
        if H % p == 0 and W % p == 0 and 0 <= tokens - (H // p) * (W // p) <= 8 and (H // p) * (W // p) >= 4:
            return tokens - (H // p) * (W // p), H // p, W // p
    return None


def _grid_of(shape, spec: tuple, name: str, size=None) -> tuple | None:
    """``(extra, h, w)`` of a token tensor of ``shape`` read by ``spec``; None for a map read as is.
    ``auto`` takes the grid from the input's spatial ``size`` when one fits (:func:`_image_grid`: a
    non-square image's patches), else a square grid."""
    if spec[0] == "tokens":
        if len(shape) != 3 or shape[1] != spec[1] + spec[2] * spec[3]:
            raise OptionError(
                f"layer {name!r} has shape {tuple(shape)}: reshape {spec[1]}:{spec[2]}x{spec[3]} needs (B, "
                f"{spec[1] + spec[2] * spec[3]}, D)"
            )
        return spec[1:]
    if len(shape) == 4:
        return None
    grid = None
    if len(shape) == 3 and spec[0] == "auto":
        found = _image_grid(shape[1], size)
        square = token_grid(tuple(shape))
        grid = found or (square and (square[0], square[1], square[1]))
    if grid is None:
        raise OptionError(
            f"layer {name!r} is not a feature map (B, C, h, w) or a square token grid (B, T, D): shape "
            f"{tuple(shape)}; give its grid with reshape='EXTRA:HxW' (or 'nhwc' for a channels-last map)"
        )
    return grid


def _as_map(t: torch.Tensor, spec: tuple = ("auto",), name: str = "", size=None) -> torch.Tensor:
    """A vision transformer's tokens ``(B, T, D)`` as a map ``(B, D, h, w)``: the leading class and
    register tokens dropped, the patch tokens in row-major grid order (pytorch-grad-cam's ViT
    ``reshape_transform``); a map ``(B, C, h, w)`` as it is, ``(B, h, w, C)`` permuted with ``nhwc``."""
    if t.dim() == 4:
        return t.permute(0, 3, 1, 2) if spec[0] == "nhwc" else t
    extra, h, w = _grid_of(tuple(t.shape), spec, name, size)
    return t[:, extra:].reshape(len(t), h, w, t.shape[-1]).permute(0, 3, 1, 2)


def _post(raw: torch.Tensor, size, relu: bool = True) -> torch.Tensor:
    """pytorch-grad-cam's post-processing of raw maps ``(R, h, w)``: ReLU, scale, resize, scale."""
    m = _scale(raw.clamp_min(0) if relu else raw)
    m = F.interpolate(m[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return _scale(m.clamp_min(0))


def _scale(m: torch.Tensor) -> torch.Tensor:
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / (1e-7 + m.amax(dim=(1, 2), keepdim=True))


def spatial_size(x: torch.Tensor, layout: str | None) -> tuple[int, int]:
    if layout == "NHWC":
        return x.shape[1], x.shape[2]
    if layout == "NHW":
        return x.shape[1], x.shape[2]
    if x.dim() == 4:
        return x.shape[2], x.shape[3]
    raise OnnxExplainError(f"CAMs explain images (B, C, H, W): got an input of shape {tuple(x.shape)}")


def cam_on_input(cam: torch.Tensor, x: torch.Tensor, layout: str | None) -> torch.Tensor:
    """The map ``(R, H, W)`` on every channel of ``x``'s layout."""
    if layout == "NHWC":
        return cam[..., None].expand_as(x)
    if layout == "NHW" or x.dim() == 3:
        return cam
    return cam[:, None].expand_as(x)


def _cam(kind: str, scorer, x, target, layer, reshape="auto"):
    spec = reshape_spec(reshape)
    if layer is None:
        raise OptionError(f"{kind} needs a layer (an ONNX tensor or node name; onnx_explain.Model picks one)")
    mod = layer_module(scorer.module, layer)
    size = spatial_size(x, scorer.layout)
    store: dict = {}

    def hook(_m, _inp, out):
        if not isinstance(out, torch.Tensor):
            raise OptionError(f"layer {layer!r} computes several tensors: name one of the maps after it")
        _grid_of(tuple(out.shape), spec, layer, size)  # a map or a token grid, else one line
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
        a = _as_map(store.pop("a").detach(), spec, layer, size)
        raw = _map(kind, a.to(torch.float32), _as_map(g, spec, layer, size).to(torch.float32))
        raws.append(raw)
        cams.append(_post(raw, size))
        scores.append(sel.detach())
    cam = torch.cat(cams)
    return cam_on_input(cam, x, scorer.layout).to(x.dtype), {
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
    def cam(scorer, x, target, generator, layer=None, reshape="auto"):
        """The map of this CAM at ``layer`` (resolved from the ONNX graph by :func:`onnx_explain.explain`:
        a tensor or node name, default the last feature map before the classifier's pooling), read as a
        map by ``reshape`` (:func:`reshape_spec`)."""
        return _cam(kind, scorer, x, target, layer, reshape)

    cam.__name__ = kind
    register_method(kind, _DESCRIPTIONS[kind], sign="abs", modalities=("image",), cost="forward+backward")(
        cam
    )


for _kind in CAMS:
    _register(_kind)


# ------------------------------------------------------------------------------------ on onnxruntime
def layer_activations(model, tensor: str, x: np.ndarray, companions: dict | None = None,
                      batch_size: int = 64) -> np.ndarray:  # fmt: skip
    """The values of the ONNX ``tensor`` for inputs ``x`` (batch first, with their batch-first
    ``companions``), from onnxruntime (:meth:`onnx_explain.runtime.Runtime.layer`: the model's device,
    threads and weights), ``batch_size`` rows per run: no torch conversion needed."""
    run = model.runtime.layer(tensor)
    outs = []
    for i in range(0, len(x), batch_size):
        comp = {k: np.asarray(v)[i : i + batch_size] for k, v in (companions or {}).items()}
        outs.append(run(x[i : i + batch_size], comp)[0])
    return np.concatenate(outs)


def _layer_and_score(scorer, model, tensor: str, xs: np.ndarray, target) -> tuple[np.ndarray, torch.Tensor]:
    """The layer's activations and the explained score of every row, from one onnxruntime pass (the
    layer and the scorer's output as outputs of one session): no second forward for the score."""
    run = model.runtime.layer(tensor, scorer.name)
    acts, scores = [], []
    for i in range(0, len(xs), scorer.batch_size):
        rows = xs[i : i + scorer.batch_size]
        comp = {k: np.asarray(v)[i : i + scorer.batch_size] for k, v in scorer.companions.items()}
        a, out = run(rows, comp)
        scorer.out_shape = tuple(out.shape[1:])  # a box or mask target reads the rows in this shape
        flat = torch.from_numpy(np.ascontiguousarray(out.reshape(len(rows), -1))).to(torch.float64)
        acts.append(a)
        scores.append(scorer.select(flat, target[i : i + scorer.batch_size]))
    return np.concatenate(acts), torch.cat(scores)


def _grid(a: np.ndarray, chosen: dict, spec: tuple = ("auto",), size=None) -> np.ndarray:
    """A layer's activations as maps ``(B, C, h, w)`` (:func:`_as_map`, in numpy)."""
    if a.ndim == 4:
        return np.ascontiguousarray(a.transpose(0, 3, 1, 2)) if spec[0] == "nhwc" else a
    extra, h, w = _grid_of(a.shape, spec, chosen["tensor"], size)
    return np.ascontiguousarray(a[:, extra:].reshape(len(a), h, w, a.shape[-1]).transpose(0, 3, 1, 2))


def _runtime_layer(scorer, layer):
    from ..layers import resolve_layer

    model = getattr(scorer, "model", None)
    if model is None:
        raise OnnxExplainError("this CAM reads a layer on onnxruntime: it needs an onnx_explain.Model")
    return model, resolve_layer(model.proto, layer)


@register_method(
    "eigencam",
    "Eigen-CAM at a layer, on onnxruntime: the activations projected on their first principal direction "
    "(Muhammad & Yeasin 2020); class-independent",
    sign="abs",
    modalities=("image",),
    backend="onnxruntime",
    cost="1 forward pass (onnxruntime)",
)
def eigencam(scorer, x, target, generator, layer=None, reshape="auto"):
    """Per image, the (h·w, C) activations centred per channel and projected on their first right singular
    vector (numpy's SVD in float32, whose sign pytorch-grad-cam takes too), then post-processed as every
    CAM. The explained class does not enter."""
    model, chosen = _runtime_layer(scorer, layer)
    xs = x.detach().cpu().numpy().astype(np.dtype(model.input.dtype), copy=False)
    spec = reshape_spec(reshape)
    acts, score = _layer_and_score(scorer, model, chosen["tensor"], xs, target)
    a = np.nan_to_num(_grid(acts, chosen, spec, spatial_size(x, scorer.layout)).astype(np.float32))
    raw = []
    for act in a:
        flat = act.reshape(act.shape[0], -1).T
        flat = flat - flat.mean(axis=0)
        # the reduced SVD: the first right singular vector is the full one's (LAPACK's, sign included),
        # without the (h·w)² and C² matrices nothing reads
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        raw.append((flat @ vt[0, :]).reshape(act.shape[1:]))
    raw = torch.from_numpy(np.float32(raw))
    cam = _post(raw, spatial_size(x, scorer.layout))
    return cam_on_input(cam, x, scorer.layout).to(x.dtype), {
        "cam": cam.numpy(), "cam_raw": raw.numpy(), "layer": _describe(chosen), "score": score,
    }  # fmt: skip


@register_method(
    "scorecam",
    "Score-CAM at a layer, on onnxruntime: channel weights = softmax of the scores of the input masked "
    "by each upsampled channel (Wang 2020)",
    sign="abs",
    modalities=("image",),
    backend="onnxruntime",
    cost="1 + channels forward passes (onnxruntime)",
)
def scorecam(scorer, x, target, generator, layer=None, reshape="auto"):
    """Each channel of the layer, upsampled to the input (bilinear, corners aligned) and scaled to [0, 1]
    (``(A − min) / (max − min + 1e-8)``: a constant channel masks everything out), masks the input; the
    softmax over channels of the explained score of those inputs weighs the channels (pytorch-grad-cam's
    ``ScoreCAM``). The masked inputs run through onnxruntime ``batch_size`` at a time."""
    model, chosen = _runtime_layer(scorer, layer)
    xs = x.detach().cpu().numpy().astype(np.dtype(model.input.dtype), copy=False)
    size = spatial_size(x, scorer.layout)
    acts, score = _layer_and_score(scorer, model, chosen["tensor"], xs, target)
    a = torch.from_numpy(_grid(acts, chosen, reshape_spec(reshape), size))
    a = a.to(torch.float32)
    raws = []
    for b in range(len(x)):
        up = F.interpolate(a[b : b + 1], size=tuple(size), mode="bilinear", align_corners=True)[
            0
        ]  # (C, H, W)
        lo = up.reshape(len(up), -1).amin(1)[:, None, None]
        hi = up.reshape(len(up), -1).amax(1)[:, None, None]
        up = (up - lo) / (hi - lo + 1e-8)
        masks = up[:, None] if scorer.layout != "NHWC" else up[..., None]
        if scorer.layout == "NHW":
            masks = up
        rows = x[b : b + 1] * masks.to(x.dtype)  # (C, *S)
        keys = target[b : b + 1].repeat(len(rows))
        weights = torch.softmax(scorer.score(rows, keys).to(torch.float32), dim=0)
        raws.append((weights[:, None, None] * a[b]).sum(0))
    raw = torch.stack(raws)
    cam = _post(raw, size)
    return cam_on_input(cam, x, scorer.layout).to(x.dtype), {
        "cam": cam.numpy(), "cam_raw": raw.numpy(), "layer": _describe(chosen), "score": score,
    }  # fmt: skip


def mosaic_kernels(h: int, w: int, gaussian: bool = True) -> np.ndarray:
    """Recipro-CAM's spatial masks ``(h·w, h, w)``, one per location in row-major order: 1 at the location,
    or the 3×3 Gaussian ``[[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16`` centred on it (cut at the borders)."""
    k = np.zeros((h * w, h + 2, w + 2), np.float32)  # one cell of margin on each side, cut off below
    g = (
        np.float32([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
        if gaussian
        else np.float32([[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    )
    for i in range(h):
        for j in range(w):
            k[i * w + j, i : i + 3, j : j + 3] = g
    return k[:, 1:-1, 1:-1]


@register_method(
    "reciprocam",
    "Recipro-CAM at a layer, on onnxruntime: per location of the feature map, the head's class probability "
    "for the map kept there alone (a 3x3 Gaussian around it by default) (Byun & Lee 2022)",
    sign="abs",
    modalities=("image",),
    backend="onnxruntime",
    cost="1 forward + h*w head passes (onnxruntime)",
)
def reciprocam(scorer, x, target, generator, layer=None, gaussian: bool = True, softmax: bool | None = None,
               reshape="auto"):  # fmt: skip
    """Recipro-CAM: the layer's activations ``A`` (``C × h × w``) from onnxruntime; for every location
    ``(i, j)`` the map ``A[:, i, j] ⊗ K_ij`` (``K_ij`` the location's mask, :func:`mosaic_kernels`) runs
    through the graph after the layer (cut there: :meth:`onnx_explain.runtime.Runtime.head`), ``batch_size``
    maps per onnxruntime call; the explained class's softmax probability of each is the map's value at
    ``(i, j)``. Then scaled to [0, 1] (``(m − min) / (max − min)``), resized bilinearly to the input and
    scaled again (no ReLU: probabilities are positive). ``softmax`` (default: for a classifier's logits,
    not for an output that already is probabilities or for a box or mask target) turns the head's output
    into probabilities first; ``gaussian=False`` keeps the location alone (the first version of the paper).
    At a vision transformer's token tensor (ViT Recipro-CAM, Byun & Lee 2024) each patch token is scaled
    by its own place's mask value, the class/register tokens kept as they are (OpenVINO XAI's
    ``ViTReciproCAM`` with ``cls_token=True``). Works on graphs that do not convert to torch."""
    spec = reshape_spec(reshape)
    model, chosen, xs, a, run, score = _split_at(scorer, x, target, layer, spec)
    tokens = a.ndim == 3
    size = spatial_size(x, scorer.layout)
    _, C, h, w = _grid(a[:0], chosen, spec, size).shape
    kernels = mosaic_kernels(h, w, gaussian).astype(a.dtype)
    extra = _grid_of(a.shape, spec, chosen["tensor"], size)[0] if tokens else 0
    raws = []
    for b in range(len(a)):
        keys = target[b : b + 1]
        if tokens:  # ViT Recipro-CAM: every patch token scaled by the mask at its place, the others kept

            def masked(k0, k1, t=a[b]):
                patches = t[None, extra:] * kernels[k0:k1].reshape(k1 - k0, h * w, 1)
                return np.concatenate(
                    [np.broadcast_to(t[None, :extra], (k1 - k0, extra, C)), patches], axis=1
                )

        elif spec[0] == "nhwc":  # a channels-last map: the same mosaic, laid out as the head reads it
            centres = a[b].reshape(h * w, C)

            def masked(k0, k1, centres=centres):
                return kernels[k0:k1, :, :, None] * centres[k0:k1, None, None, :]

        else:
            centres = a[b].reshape(C, h * w).T  # (h·w, C): the feature vector of every location

            def masked(k0, k1, centres=centres):
                return centres[k0:k1, :, None, None] * kernels[k0:k1, None]

        out = _head_rows(scorer, run, h * w, masked, xs, b)
        one_element = scorer.target is None or scorer._classes is not None
        probs = (scorer.name == model.space_name("logit") and one_element) if softmax is None else softmax
        if probs:
            out = torch.softmax(out, dim=1)
        raws.append(scorer.select(out, keys.repeat(h * w)).reshape(h, w))
    raw = torch.stack(raws).to(torch.float32)
    cam = _post(raw, spatial_size(x, scorer.layout), relu=False)
    return cam_on_input(cam, x, scorer.layout).to(x.dtype), {
        "cam": cam.numpy(), "cam_raw": raw.numpy(), "layer": _describe(chosen), "passes": len(a) * h * w,
        "score": score,
    }  # fmt: skip


def _split_at(scorer, x, target, layer, spec: tuple = ("auto",)):
    """``(model, chosen layer, x as the model's dtype, the layer's activations (B, C, h, w), the head's
    runner, the explained scores)``: a gradient-free CAM's view of the graph cut at the layer (the
    activations and the scores from one onnxruntime pass)."""
    model, chosen = _runtime_layer(scorer, layer)
    tensor = chosen["tensor"]
    xs = x.detach().cpu().numpy().astype(np.dtype(model.input.dtype), copy=False)
    a, score = _layer_and_score(scorer, model, tensor, xs, target)
    _grid(a[:0], chosen, spec, spatial_size(x, scorer.layout))  # a feature map or a token grid, else one line
    return model, chosen, xs, a, model.runtime.head(tensor, scorer.name), score


def _head_rows(scorer, run, n_maps: int, make, xs: np.ndarray, b: int) -> torch.Tensor:
    """The head's flattened output for ``n_maps`` modified maps of image ``b``, ``make(k0, k1)`` building
    maps ``k0 … k1 − 1`` (so memory follows ``batch_size``, the maps per onnxruntime call); the image's own
    input and companions go beside them for a head that still reads them."""
    outs = []
    for k0 in range(0, n_maps, scorer.batch_size):
        chunk = make(k0, min(n_maps, k0 + scorer.batch_size))
        n = len(chunk)
        rows = np.broadcast_to(xs[b : b + 1], (n, *xs.shape[1:]))
        comp = {k: np.broadcast_to(v[b : b + 1], (n, *v.shape[1:])) for k, v in scorer.companions.items()}
        out = run(np.ascontiguousarray(chunk), rows, comp)
        scorer.out_shape = tuple(out.shape[1:])  # a box or mask target reads the rows in this shape
        outs.append(torch.from_numpy(np.ascontiguousarray(out.reshape(n, -1))))
    return torch.cat(outs).to(torch.float64)


@register_method(
    "ablationcam",
    "Ablation-CAM at a layer, on onnxruntime: channel weights = the relative drop of the score when the "
    "channel is ablated (Desai & Ramaswamy 2020)",
    sign="abs",
    modalities=("image",),
    backend="onnxruntime",
    cost="1 forward + channels head passes (onnxruntime)",
)
def ablationcam(scorer, x, target, generator, layer=None, reshape="auto"):
    """Each channel of ``layer`` ablated in turn (set to 0 when the map's minimum is 0, as after a ReLU,
    else to its minimum − 1e7, pytorch-grad-cam's value for its first ablated copy); the weights
    ``(y − y_k) / y`` of the explained score ``y``. The ablated maps run through the graph after the layer
    alone (:meth:`onnx_explain.runtime.Runtime.head`), ``batch_size`` per onnxruntime call: no torch
    conversion, and the layers before it run once per image. Post-processed as every CAM."""
    spec = reshape_spec(reshape)
    model, chosen, xs, a, run, score = _split_at(scorer, x, target, layer, spec)
    if a.ndim != 4:
        raise OptionError(
            f"ablationcam ablates the channels of a feature map (B, C, h, w); {chosen['tensor']!r} is a "
            "transformer's token tensor: use gradcam, scorecam, eigencam or reciprocam there"
        )
    nhwc = spec[0] == "nhwc"
    maps = _grid(a, chosen, spec, spatial_size(x, scorer.layout))  # (B, C, h, w)
    raws, scores = [], []
    for b in range(len(a)):
        keys = target[b : b + 1]
        act = maps[b]  # (C, h, w)
        y = score[b]  # the model's own score, from the pass that read the layer
        # pytorch-grad-cam's ablation: 0 when the map's minimum is 0 (after a ReLU), else min − 1e7
        value = 0.0 if float(act.min()) == 0 else float(act.min()) - 1e7

        def ablated(k0, k1, act=act, value=value):
            copies = np.repeat(act[None], k1 - k0, axis=0)
            copies[np.arange(k1 - k0), np.arange(k0, k1)] = value
            return copies.transpose(0, 2, 3, 1) if nhwc else copies  # as the head reads the layer

        ys = scorer.select(_head_rows(scorer, run, len(act), ablated, xs, b), keys.repeat(len(act)))
        w = (y - ys) / y
        raws.append((w[:, None, None] * torch.from_numpy(act.astype(np.float64))).sum(0).to(torch.float32))
        scores.append(y)
    raw = torch.stack(raws)
    cam = _post(raw, spatial_size(x, scorer.layout))
    return cam_on_input(cam, x, scorer.layout).to(x.dtype), {
        "cam": cam.numpy(), "cam_raw": raw.numpy(), "score": torch.stack(scores), "layer": _describe(chosen),
        "passes": len(a) * maps.shape[1],
    }  # fmt: skip


def _describe(chosen: dict) -> str:
    return f"{chosen['tensor']} (node {chosen['node']!r}, {chosen['op']}, shape {chosen['shape']})"
