"""Layer attribution on the converted graph equals Captum's layer methods on the torch source of the export:
LayerGradientXActivation, LayerIntegratedGradients and LayerConductance, at a block's output and at a block's
skip path (its main path reads the input itself), per-sample targets, chunked rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import onnx_explain as oe

captum_attr = pytest.importorskip("captum.attr")

TARGETS = [1, 5, 7]
LAYERS = {  # ONNX tensor -> the torch module whose output it is
    "/layer3/layer3.1/relu_1/Relu_output_0": lambda net: net.layer3,
    # the skip path of a block (BatchNorm folded into the Conv): the block's main path reads the input itself
    "/layer3/layer3.0/downsample/downsample.0/Conv_output_0": lambda net: net.layer3[0].downsample,
}


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("layer") / "r18.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "b"}})  # fmt: skip
    return net, x, oe.load(path)


def _close(got, want):
    want = want.detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert np.abs(want).max() > 0


@pytest.mark.parametrize("tensor", list(LAYERS))
def test_layer_methods_equal_captum(resnet, tensor):
    net, x, model = resnet
    layer = LAYERS[tensor](net)
    t = torch.tensor(TARGETS)
    e = oe.explain(
        model, x.numpy(), "layer_gradient_x_activation", target=TARGETS, layer=tensor, batch_size=2
    )
    _close(
        e.extras["layer_attribution"], captum_attr.LayerGradientXActivation(net, layer).attribute(x, target=t)
    )
    assert tensor in e.extras["layer"]
    # the input-shaped attribution: the channel sum resized to the input, on every channel
    la = torch.as_tensor(e.extras["layer_attribution"]).sum(1, keepdim=True)
    up = torch.nn.functional.interpolate(la, size=(48, 48), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(e.attribution, up.expand(-1, 3, -1, -1).numpy(), rtol=1e-5, atol=1e-6)

    e = oe.explain(model, x.numpy(), "layer_integrated_gradients", target=TARGETS, layer=tensor, n_steps=8,
                   batch_size=5)  # fmt: skip
    ref = captum_attr.LayerIntegratedGradients(net, layer).attribute(x, target=t, n_steps=8)
    _close(e.extras["layer_attribution"], ref)
    # completeness in the layer's space: Σ attribution = y(A) − y(A'), up to the quadrature's error
    scale = np.abs(e.score).max()
    assert np.abs(e.extras["delta"]).max() < 0.05 * scale

    e = oe.explain(
        model, x.numpy(), "layer_conductance", target=TARGETS, layer=tensor, n_steps=8, batch_size=4
    )
    ref = captum_attr.LayerConductance(net, layer).attribute(x, target=t, n_steps=8)
    _close(e.extras["layer_attribution"], ref)


def test_a_layer_is_needed_and_must_be_a_feature_map(resnet):
    _, x, model = resnet
    e = oe.explain(model, x[:1].numpy(), "layer_gradient_x_activation", target=[1])  # the default layer
    assert "/layer4/layer4.1/relu_1/Relu_output_0" in e.extras["layer"]
    with pytest.raises(oe.OptionError, match="not a spatial feature map"):
        oe.explain(model, x[:1].numpy(), "layer_conductance", target=[1], layer="/fc/Gemm_output_0")
