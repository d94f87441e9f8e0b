"""Layer attribution at a feature map of the converted graph (Captum's layer methods; docs/methods.md §2.10):
layer gradient × activation, layer Integrated Gradients and layer conductance.

``A`` is the layer's output ``(C, h, w)`` per image (the layer named by its ONNX tensor or node, as for the
CAMs), ``y`` the explained score:

- ``layer_gradient_x_activation``: ``A ⊙ ∂y/∂A``;
- ``layer_integrated_gradients``: ``(A − A') ⊙ Σ_k w_k ∂y/∂A |_{A' + α_k (A − A')}``, ``A'`` the layer's
  output for the baseline input; the interpolated maps replace the layer's output while the rest of the
  graph reads the input itself (Captum's ``LayerIntegratedGradients``);
- ``layer_conductance``: ``Σ_k ∂y/∂A(x_k) ⊙ (A(x_{k+1}) − A(x_k))`` over inputs ``x_k = x' + α_k (x − x')``
  at the quadrature's ``n_steps + 1`` nodes (Captum's ``LayerConductance``).

The layer-shaped attribution ``(B, C, h, w)`` is ``extras["layer_attribution"]``; the attribution returned
for the input is its sum over channels, resized to the input bilinearly (half-pixel centres) and put on
every channel, so heatmaps and metrics work as for every method. Every step runs batched, ``batch_size``
rows (sample × step) per forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import OptionError
from .base import register_method
from .cam import cam_on_input, layer_module, spatial_size
from .integrated_gradients import make_baselines, quadrature


class _Tap:
    """A forward hook on the layer: records its output (with a gradient) or replaces it by ``self.put``."""

    def __init__(self, module, layer: str):
        self.layer, self.put, self.got = layer, None, None
        self.handle = module.register_forward_hook(self)

    def __call__(self, _m, _inp, out):
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise OptionError(f"layer {self.layer!r} is not one feature map (B, C, h, w)")
        if self.put is not None:
            return self.put
        if not out.requires_grad and torch.is_grad_enabled():
            out = out.detach().requires_grad_(True)
        self.got = out
        return out

    def close(self):
        self.handle.remove()


def _needs_layer(name: str, layer):
    if layer is None:
        raise OptionError(
            f"{name} needs a layer (an ONNX tensor or node name; onnx_explain.explain picks one)"
        )


def _grad_and_act(scorer, tap: _Tap, rows, keys, put=None):
    """``(∂y/∂A, A, y)`` for one chunk of rows; ``put`` replaces the layer's output (made a leaf)."""
    with torch.enable_grad():
        if put is not None:
            tap.put = put.detach().requires_grad_(True)
        sel = scorer.select(scorer.forward(rows, keys), keys)
        a = tap.put if put is not None else tap.got
        (g,) = torch.autograd.grad(sel.sum(), a, allow_unused=True)
    tap.put, tap.got = None, None
    return (torch.zeros_like(a) if g is None else g).detach(), a.detach(), sel.detach()


def _activations(scorer, tap: _Tap, x, target):
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), scorer.batch_size):
            scorer.forward(x[i : i + scorer.batch_size], target[i : i + scorer.batch_size])
            outs.append(tap.got.detach())
            tap.got = None
    return torch.cat(outs)


def _on_image(la: torch.Tensor, x: torch.Tensor, layout) -> torch.Tensor:
    """The channel sum of a layer attribution, resized to the input and put on its every channel."""
    m = la.sum(1, keepdim=True).to(torch.float32)
    m = F.interpolate(m, size=tuple(spatial_size(x, layout)), mode="bilinear", align_corners=False)[:, 0]
    return cam_on_input(m, x, layout).to(x.dtype)


def _result(la: torch.Tensor, x, layout, **extras):
    return _on_image(la, x, layout), {"layer_attribution": la.to(torch.float32).cpu().numpy(), **extras}


@register_method(
    "layer_gradient_x_activation",
    "layer gradient x activation: A ⊙ ∂y/∂A at a feature map (Captum's LayerGradientXActivation)",
    modalities=("image",),
    cost="forward+backward",
)
def layer_gradient_x_activation(scorer, x, target, generator=None, layer=None):
    """``A ⊙ ∂y/∂A`` at ``layer``; ``extras['layer_attribution']`` is ``(B, C, h, w)``."""
    _needs_layer("layer_gradient_x_activation", layer)
    tap = _Tap(layer_module(scorer.module, layer), layer)
    parts = []
    try:
        for i in range(0, len(x), scorer.batch_size):
            g, a, _ = _grad_and_act(
                scorer, tap, x[i : i + scorer.batch_size], target[i : i + scorer.batch_size]
            )
            parts.append(g.to(torch.float64) * a.to(torch.float64))
    finally:
        tap.close()
    return _result(torch.cat(parts), x, scorer.layout)


@register_method(
    "layer_integrated_gradients",
    "layer Integrated Gradients: (A − A') ⊙ ∫ ∂y/∂A along the straight path of the layer's maps from the "
    "baseline's (Captum's LayerIntegratedGradients)",
    modalities=("image",),
    cost="n_steps × forward+backward",
)
def layer_integrated_gradients(scorer, x, target, generator=None, layer=None, baseline="zero",
                               n_steps: int = 50, quadrature_method: str = "gausslegendre"):  # fmt: skip
    """Integrated Gradients in the space of the layer's maps; ``extras['delta']`` is the completeness error
    ``Σ attribution − (y(A) − y(A'))`` per sample (the rest of the graph reading the input itself)."""
    _needs_layer("layer_integrated_gradients", layer)
    alphas, weights = quadrature(quadrature_method, int(n_steps))
    x0 = make_baselines(x, baseline, generator, 1, scorer.channel_axis)
    if len(x0) != 1:
        raise OptionError("layer_integrated_gradients takes one baseline")
    x0 = x0[0]
    B, n = len(x), len(alphas)
    tap = _Tap(layer_module(scorer.module, layer), layer)
    try:
        a, a0 = _activations(scorer, tap, x, target), _activations(scorer, tap, x0, target)
        diff = a - a0
        al = torch.as_tensor(alphas, dtype=a.dtype, device=a.device)
        wt = torch.as_tensor(weights, dtype=torch.float64, device=a.device)
        acc = torch.zeros(a.shape, dtype=torch.float64, device=a.device)
        for start in range(0, B * n, scorer.batch_size):
            r = torch.arange(start, min(B * n, start + scorer.batch_size), device=a.device)
            owner, step = r // n, r % n
            put = a0[owner] + al[step].reshape(-1, 1, 1, 1) * diff[owner]
            g, _, _ = _grad_and_act(scorer, tap, x[owner], target[owner], put)
            acc.index_add_(0, owner, g.to(torch.float64) * wt[step].reshape(-1, 1, 1, 1))
        ends = []
        with torch.no_grad():
            for put in (a, a0):  # y with the layer's maps of the input and of the baseline
                parts = []
                for i in range(0, B, scorer.batch_size):
                    keys = target[i : i + scorer.batch_size]
                    tap.put = put[i : i + scorer.batch_size]
                    parts.append(scorer.select(scorer.forward(x[i : i + scorer.batch_size], keys), keys))
                tap.put = None
                ends.append(torch.cat(parts).to(torch.float64))
    finally:
        tap.close()
    la = diff.to(torch.float64) * acc
    delta = la.reshape(B, -1).sum(1) - (ends[0] - ends[1])
    return _result(la, x, scorer.layout, delta=delta)


@register_method(
    "layer_conductance",
    "layer conductance: Σ_k ∂y/∂A(x_k) ⊙ (A(x_{k+1}) − A(x_k)) along the input's straight path from the "
    "baseline (Captum's LayerConductance)",
    modalities=("image",),
    cost="(n_steps + 1) × forward+backward",
)
def layer_conductance(scorer, x, target, generator=None, layer=None, baseline="zero", n_steps: int = 50,
                      quadrature_method: str = "gausslegendre"):  # fmt: skip
    """Conductance of the layer's units: the total gradient through them along the input's path, as
    Captum computes it (the layer's gradient at each of the quadrature's ``n_steps + 1`` nodes times the
    change of the layer's output to the next node; the quadrature weights do not enter)."""
    _needs_layer("layer_conductance", layer)
    alphas, _ = quadrature(quadrature_method, int(n_steps) + 1)
    x0 = make_baselines(x, baseline, generator, 1, scorer.channel_axis)
    if len(x0) != 1:
        raise OptionError("layer_conductance takes one baseline")
    x0 = x0[0]
    B, n = len(x), len(alphas)
    al = torch.as_tensor(alphas, dtype=x.dtype, device=x.device)
    diff = x - x0
    tap = _Tap(layer_module(scorer.module, layer), layer)
    acc, prev = (
        None,
        None,
    )  # prev: (owner, g, a) of the last row of the previous chunk (rows are sample-major)
    try:
        for start in range(0, B * n, scorer.batch_size):
            r = torch.arange(start, min(B * n, start + scorer.batch_size), device=x.device)
            owner, step = r // n, r % n
            rows = x0[owner] + al[step].reshape(-1, *([1] * (x.dim() - 1))) * diff[owner]
            g, a, _ = _grad_and_act(scorer, tap, rows, target[owner])
            g, a = g.to(torch.float64), a.to(torch.float64)
            if acc is None:
                acc = torch.zeros((B, *a.shape[1:]), dtype=torch.float64, device=a.device)
            if prev is not None:  # the step pair across the chunk boundary
                owner = torch.cat([prev[0], owner])
                g, a = torch.cat([prev[1], g]), torch.cat([prev[2], a])
            same = owner[1:] == owner[:-1]  # consecutive steps of one sample
            terms = g[:-1][same] * (a[1:][same] - a[:-1][same])
            acc.index_add_(0, owner[:-1][same], terms)
            prev = (owner[-1:], g[-1:], a[-1:])
    finally:
        tap.close()
    return _result(acc, x, scorer.layout)
