"""Neuron and channel targets: the explained scalar is a unit, or a channel's sum, of a feature map of the
converted graph. Gradient and Integrated Gradients equal Captum's ``NeuronGradient`` and
``NeuronIntegratedGradients`` on the torch source of the export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import onnx_explain as oe

captum_attr = pytest.importorskip("captum.attr")
TENSOR = "/layer2/layer2.1/relu_1/Relu_output_0"


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("neuron") / "r18.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "b"}})  # fmt: skip
    return net, x, oe.load(path)


def _close(got, want):
    want = want.detach().numpy()
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_a_unit_and_a_channel_equal_captums_neuron_methods(resnet):
    net, x, model = resnet
    e = oe.explain(model, x.numpy(), "gradient", target={"neuron": (TENSOR, (7, 2, 3))})
    _close(e.attribution, captum_attr.NeuronGradient(net, net.layer2).attribute(x, neuron_selector=(7, 2, 3)))
    assert "unit (7, 2, 3)" in e.extras["target_layer"]
    act = {}
    handle = net.layer2.register_forward_hook(lambda _m, _i, o: act.update(a=o.detach()))
    net(x)
    handle.remove()
    np.testing.assert_allclose(e.score, act["a"][:, 7, 2, 3].numpy(), rtol=1e-4, atol=1e-6)

    channel = oe.explain(model, x.numpy(), "gradient", target={"neuron": (TENSOR, 5)})
    ref = captum_attr.NeuronGradient(net, net.layer2).attribute(
        x, neuron_selector=lambda out: out[:, 5].sum((1, 2))
    )
    _close(channel.attribution, ref)

    ig = oe.explain(
        model, x.numpy(), "integrated_gradients", target={"neuron": (TENSOR, (7, 2, 3))}, n_steps=8
    )
    ref = captum_attr.NeuronIntegratedGradients(net, net.layer2).attribute(
        x, neuron_selector=(7, 2, 3), n_steps=8
    )
    _close(ig.attribution, ref)


def test_bad_neuron_targets_are_option_errors(resnet):
    _, x, model = resnet
    for target, match in [
        ({"neuron": (TENSOR, 999)}, "is not a channel"),
        ({"neuron": (TENSOR, (1, 50, 0))}, "is not a channel"),
        ({"neuron": TENSOR}, "a neuron target is"),
        ({"neuron": ("nope", 1)}, "not a spatial feature map"),
    ]:
        with pytest.raises(oe.OptionError, match=match):
            oe.explain(model, x.numpy(), "gradient", target=target)
    with pytest.raises(oe.OptionError, match="conditions="):
        oe.explain(model, x.numpy(), "lrp", target={"neuron": (TENSOR, 1)})
    with pytest.raises(oe.OptionError, match="gradient method"):
        oe.explain(model, x.numpy(), "occlusion", target={"neuron": (TENSOR, 1)})
