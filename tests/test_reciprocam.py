"""Recipro-CAM on onnxruntime equals the published algorithm (Byun & Lee 2022, written here as the authors'
reference code does it: a loop over locations, each masked feature map through the torch head, the softmax
probability of the class), with and without the Gaussian mosaic; the graph after the layer is cut out of
the ONNX file, including heads that still read the model's input around the layer and files whose batch is
fixed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import export
from torch import nn

import onnx_explain as oe
from onnx_explain.layers import head_graph
from onnx_explain.methods.cam import mosaic_kernels

GAUSS = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=torch.float64) / 16


class Net(nn.Module):
    """A stem to a 6x6 map, then a head; with ``around``, the head also reads the input (a pooled shortcut)."""

    def __init__(self, around: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2, padding=1),
                                  nn.ReLU())  # fmt: skip
        self.fc = nn.Linear(12, 7)
        self.short = nn.Linear(3, 7) if around else None

    def head(self, a, x):
        out = self.fc(a.mean((2, 3)))
        return out if self.short is None else out + self.short(x.mean((2, 3)))

    def forward(self, x):
        return self.head(self.stem(x), x)


@torch.no_grad()
def _reference(net: Net, x: torch.Tensor, cls: int, gaussian: bool) -> np.ndarray:
    """The algorithm as published: for each location (i, j) a zero map holding A[:, i, j] there (times the
    3x3 Gaussian around it, cut at the borders), through the head; softmax probability of ``cls``."""
    import copy

    net = copy.deepcopy(net).double()
    x = x.double()[None]
    a = net.stem(x)[0]
    C, h, w = a.shape
    cam = torch.zeros(h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            m = torch.zeros(C, h, w, dtype=torch.float64)
            if gaussian:
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        if 0 <= i + di < h and 0 <= j + dj < w:
                            m[:, i + di, j + dj] = a[:, i, j] * GAUSS[di + 1, dj + 1]
            else:
                m[:, i, j] = a[:, i, j]
            cam[i, j] = torch.softmax(net.head(m[None], x), dim=1)[0, cls]
    return cam.numpy()


def _post(cam: np.ndarray, size) -> np.ndarray:
    def scale(m):
        m = m - m.min()
        return m / (1e-7 + m.max())

    up = F.interpolate(
        torch.as_tensor(scale(cam))[None, None], size=size, mode="bilinear", align_corners=False
    )
    return scale(up[0, 0].numpy())


LAYER = "/stem/stem.3/Relu_output_0"


@pytest.mark.parametrize("around", [False, True], ids=["head", "head-reads-input"])
@pytest.mark.parametrize("gaussian", [True, False], ids=["gaussian", "location"])
def test_reciprocam_equals_the_published_algorithm(around, gaussian, tmp_path):
    torch.manual_seed(0)
    net = Net(around).eval()
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    model = oe.load(export(net, x, tmp_path / "n.onnx", "legacy"))
    targets = [1, 4, 6]
    e = oe.explain(
        model, x.numpy(), "reciprocam", target=targets, layer=LAYER, gaussian=gaussian, batch_size=10
    )
    assert LAYER in e.extras["layer"] and e.extras["passes"] == 3 * 36
    for b, c in enumerate(targets):
        ref = _reference(net, x[b], c, gaussian)
        np.testing.assert_allclose(e.extras["cam_raw"][b], ref, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(e.extras["cam"][b], _post(ref, (12, 12)), atol=1e-4)
    np.testing.assert_allclose(e.attribution, np.broadcast_to(e.extras["cam"][:, None], x.shape), atol=0)


def test_reciprocam_on_a_file_with_its_batch_fixed(tmp_path):
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    model = oe.load(export(net, x, tmp_path / "fixed.onnx", "legacy", dynamic=False))
    e = oe.explain(model, x.numpy(), "reciprocam", target=[3], layer=LAYER)
    np.testing.assert_allclose(e.extras["cam_raw"][0], _reference(net, x[0], 3, True), rtol=1e-4, atol=1e-7)


def test_mosaic_kernels_are_the_papers_masks():
    k = mosaic_kernels(3, 4, gaussian=True)
    assert k.shape == (12, 3, 4)
    np.testing.assert_allclose(
        k[5], [[1 / 16, 1 / 8, 1 / 16, 0], [1 / 8, 1 / 4, 1 / 8, 0], [1 / 16, 1 / 8, 1 / 16, 0]]
    )
    np.testing.assert_allclose(k[0][:2, :2], [[1 / 4, 1 / 8], [1 / 8, 1 / 16]])  # cut at the corner
    np.testing.assert_array_equal(mosaic_kernels(3, 4, gaussian=False).reshape(12, 12), np.eye(12))


def test_head_graph_needs_a_computed_tensor_of_its_own(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 12, 12)
    model = oe.load(export(Net().eval(), x, tmp_path / "n.onnx", "legacy"))
    with pytest.raises(oe.OptionError, match="not computed by a node"):
        head_graph(model.proto, "x", ["logits"])
    head = head_graph(model.proto, LAYER, [model.proto.graph.output[0].name])
    assert [i.name for i in head.graph.input] == [LAYER]  # the head reads the layer alone
    assert all(n.op_type != "Conv" for n in head.graph.node)


@pytest.mark.parametrize("gaussian", [True, False])
def test_vit_reciprocam_equals_the_published_algorithm(gaussian, tmp_path):
    """ViT Recipro-CAM (Byun & Lee 2024; OpenVINO XAI's ``ViTReciproCAM``, ``cls_token=True``): at a token
    tensor, per patch location the patch tokens are scaled by that location's mask at their own places and
    the class token is kept; the class's softmax probability of each such token set, through the rest of
    the network, is the map. Written here on the timm source (float64, a forward hook replacing the last
    block's norm1 output) and compared with ours on the exported file."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2, num_classes=10
    ).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    path = export(net, x, tmp_path / "vit.onnx", "legacy")
    layer = "/blocks/blocks.1/norm1/LayerNormalization_output_0"
    e = oe.explain(oe.load(path), x.numpy(), "reciprocam", target=[3, 8], layer=layer, gaussian=gaussian,
                   batch_size=7)  # fmt: skip
    net = net.double()
    masks = torch.from_numpy(mosaic_kernels(4, 4, gaussian)).double().reshape(16, 16, 1)
    for b, c in enumerate((3, 8)):
        state = {}

        def hook(module, args, out, state=state):
            if "mosaic" not in state:
                return out
            tokens = out.expand(16, -1, -1)
            return torch.cat([tokens[:, :1], tokens[:, 1:] * masks], dim=1)  # class token kept

        handle = net.blocks[-1].norm1.register_forward_hook(hook)
        try:
            state["mosaic"] = True
            with torch.no_grad():
                probs = torch.softmax(net(x[b : b + 1].double()), dim=1)[:, c]
        finally:
            handle.remove()
        np.testing.assert_allclose(e.extras["cam_raw"][b].reshape(-1), probs.numpy(), rtol=1e-4, atol=1e-7)
    assert e.extras["passes"] == 2 * 16
