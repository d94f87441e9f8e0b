"""Whole torchvision architectures (random weights), exported with the legacy and the dynamo exporter:
each converts, matches onnxruntime and the original model, and has the original model's input gradient.
Plus exports with a fixed batch of 1 (the batch baked into Reshape constants) run on batches of 3."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_gradients_match, export, input_gradient

import onnx_explain as oe

torchvision = pytest.importorskip("torchvision")

# smallest input each architecture takes (vgg11's legacy export needs the 7x7 adaptive pool to be exact)
ARCHS = {
    "resnet18": 64,
    "vgg11": 224,
    "mobilenet_v3_small": 64,
    "densenet121": 64,
    "efficientnet_b0": 64,
    "convnext_tiny": 64,
    "vit_b_16": 32,
    "swin_t": 64,
}


def _build(name: str, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {"image_size": size} if name == "vit_b_16" else {}
    model = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    if name == "vit_b_16":  # torchvision zero-initialises the head: the output would be constant
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def _check(model, path, x: torch.Tensor) -> oe.Model:
    m = oe.load(path)
    conv = m.torch_module(probe=x.numpy())
    with torch.no_grad():
        want = model(x).numpy()
        scale = np.abs(want).max()
        np.testing.assert_allclose(m.predict(x.numpy()), want, rtol=1e-4, atol=1e-4 * scale)
        np.testing.assert_allclose(conv(x).numpy(), m.predict(x.numpy()), rtol=1e-4, atol=1e-4 * scale)
    target = torch.from_numpy(want.argmax(1))
    assert_gradients_match(
        input_gradient(conv, x, target), input_gradient(model, x, target), rel=1e-4, cos=0.9999
    )
    return m


def _slow_unless(*fast):
    """Parameters of a sweep: those in ``fast`` run by default, the others are marked ``slow`` (CI runs both)."""
    return lambda names: [n if n in fast else pytest.param(n, marks=pytest.mark.slow) for n in names]


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", _slow_unless("resnet18")(list(ARCHS)))
def test_torchvision_dynamic_batch(name, exporter, tmp_path):
    size = ARCHS[name]
    model = _build(name, size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    path = export(model, x, tmp_path / f"{name}.onnx", exporter)
    m = _check(model, path, x)
    assert m.batch_mode == "dynamic"


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", _slow_unless("resnet18")(["resnet18", "vit_b_16", "swin_t"]))
def test_torchvision_fixed_batch_one(name, exporter, tmp_path):
    size = ARCHS[name]
    model = _build(name, size)
    x1 = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    path = export(model, x1, tmp_path / f"{name}_b1.onnx", exporter, dynamic=False)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    m = _check(model, path, x)
    assert m.input.shape[0] == 1
    assert m.batch_mode in ("freed", "chunked")
    # results do not depend on how the batch is chunked
    np.testing.assert_allclose(
        m.predict(x.numpy(), batch_size=1), m.predict(x.numpy(), batch_size=3), rtol=1e-5, atol=1e-6
    )
