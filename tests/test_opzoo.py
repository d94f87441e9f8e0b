"""An op zoo of small torch modules exported with both exporters: each converts, matches onnxruntime,
has the original module's input gradient, and passes a finite-difference check on the converted graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_gradients_match, export
from torch import nn

import onnx_explain as oe


class Lambda(nn.Module):
    def __init__(self, fn, **modules):
        super().__init__()
        self.fn = fn
        for k, v in modules.items():
            self.add_module(k, v)

    def forward(self, x):
        return self.fn(self, x)


def _img(c=4, h=6, w=6):
    return (2, c, h, w)


class EmbeddingThroughClamp(nn.Module):
    """Token ids derived from the input, clamped into the table, embedded, mixed with the input."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 5)
        self.w = nn.Parameter(torch.randn(5))

    def forward(self, x):
        ids = torch.clamp((x * 3).floor().long(), 0, 9)
        return (self.emb(ids) + x.unsqueeze(-1) * self.w).sum(-1)


ZOO = {
    "groupnorm": (lambda: nn.Sequential(nn.Conv2d(4, 6, 3), nn.GroupNorm(3, 6)), _img()),
    "instancenorm": (lambda: nn.Sequential(nn.Conv2d(4, 4, 1), nn.InstanceNorm2d(4, affine=True)), _img()),
    "interp-nearest": (lambda: Lambda(lambda s, x: F.interpolate(x, scale_factor=2, mode="nearest")), _img()),
    "interp-bilinear": (lambda: Lambda(lambda s, x: F.interpolate(x, size=(9, 11), mode="bilinear", align_corners=False)), _img()),
    "chunk-split": (lambda: Lambda(lambda s, x: torch.cat([a * (i + 1) for i, a in enumerate(x.chunk(2, 1))] + list(x.split([1, 3], 1))[::-1], 1)), _img()),
    "amax-max-min": (lambda: Lambda(lambda s, x: x.amax(dim=1, keepdim=True) + x.max(dim=2, keepdim=True).values - x.min(dim=-1, keepdim=True).values), _img()),
    "activations": (lambda: nn.Sequential(nn.SiLU(), nn.Linear(6, 6), nn.LeakyReLU(0.1), nn.Linear(6, 6), nn.ELU(),
                                          nn.Linear(6, 6), nn.Softplus(), nn.Linear(6, 6), nn.Hardswish(), nn.Linear(6, 6), nn.Mish()), (3, 6)),
    "multihead-attention": (lambda: Lambda(lambda s, x: s.mha(x, x, x, need_weights=False)[0], mha=nn.MultiheadAttention(8, 2, batch_first=True)), (2, 5, 8)),
    "embedding-clamp": (EmbeddingThroughClamp, (2, 7)),
    "reflect-pad": (lambda: nn.Sequential(nn.ReflectionPad2d((1, 2, 2, 1)), nn.Conv2d(4, 3, 3)), _img()),
    "conv-transpose": (lambda: nn.Sequential(nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1), nn.ReLU()), _img()),
    "adaptive-avg-pool": (lambda: nn.Sequential(nn.Conv2d(4, 4, 1), nn.AdaptiveAvgPool2d((3, 2))), _img()),
    "cumsum-where-clamp": (lambda: Lambda(lambda s, x: torch.where(x > 0, torch.cumsum(x, 1), torch.clamp(x, -0.5, 0.7) * 2)), (2, 8)),
    "topk-einsum-logsoftmax": (lambda: Lambda(lambda s, x: torch.log_softmax(torch.einsum("bij,kj->bik", x.topk(3, dim=1).values, s.w.weight), -1), w=nn.Linear(4, 5)), (2, 6, 4)),
    "layernorm-gelu-erf": (lambda: nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU()), (3, 4, 6)),
    "layernorm-gelu-tanh": (lambda: nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(approximate="tanh")), (3, 4, 6)),
}  # fmt: skip


def _input(name, shape):
    g = torch.Generator().manual_seed(1)
    if name == "embedding-clamp":  # keep x*3 away from integer boundaries so FD steps do not switch ids
        return (torch.randint(0, 12, shape, generator=g) + 0.5).float() / 3
    return torch.randn(shape, generator=g)


def _fd_check(module, x: torch.Tensor, n_dirs: int = 3) -> None:
    """Directional central differences of a random projection of the output, in float64 when the graph
    allows it (else float32 with a larger step)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        out = module(x)
    v = torch.randn(out.shape, generator=g, dtype=torch.float64)
    try:
        m64, x64 = module.double(), x.double()
        m64(x64)
        eps, tol = 1e-6, 1e-5
    except RuntimeError:
        m64, x64 = module.float(), x.float()
        eps, tol = 1e-2, 2e-2

    def f(z):
        return (m64(z).to(torch.float64) * v).sum()

    xg = x64.clone().requires_grad_(True)
    f(xg).backward()
    grad = xg.grad.to(torch.float64)
    for _ in range(n_dirs):
        d = torch.randn(x64.shape, generator=g, dtype=torch.float64).to(x64.dtype)
        with torch.no_grad():
            fd = (f(x64 + eps * d) - f(x64 - eps * d)) / (2 * eps)
        an = (grad * d.to(torch.float64)).sum()
        assert abs(fd - an) <= tol * max(1.0, abs(an)), f"finite difference {fd:.6g} vs autograd {an:.6g}"
    module.float()


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", list(ZOO))
def test_opzoo(name, exporter, tmp_path):
    torch.manual_seed(0)
    make, shape = ZOO[name]
    module = make().eval()
    x = _input(name, shape)
    path = export(module, x, tmp_path / f"{name}.onnx", exporter)
    m = oe.load(path)
    conv = m.torch_module(probe=x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(m.predict(x.numpy()), module(x).numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(conv(x).numpy(), module(x).numpy(), rtol=1e-4, atol=1e-5)

    def grad(mod):
        z = x.clone().requires_grad_(True)
        out = mod(z)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        return z.grad.numpy()

    assert_gradients_match(grad(conv), grad(module), rel=1e-4, cos=0.9999)
    _fd_check(conv, x)
