"""Gradient CAMs at a layer of the converted graph equal pytorch-grad-cam on the torch source of the exported
model: Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM, at the default layer and at a named one, per
sample targets, NCHW and NHWC inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import onnx_explain as oe
from onnx_explain.layers import default_layer, layer_candidates

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

REFERENCES = {"gradcam": GradCAM, "gradcam_pp": GradCAMPlusPlus, "xgradcam": XGradCAM, "hirescam": HiResCAM,
              "layercam": LayerCAM}  # fmt: skip
TARGETS = [1, 5, 7]


class NHWC(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(3, 3, 64, 64)
    path = tmp_path_factory.mktemp("cam") / "r18.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "b"}})  # fmt: skip
    return net, x, oe.load(path)


def _reference(cls, net, layer, x):
    with cls(model=net, target_layers=[layer]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in TARGETS])


@pytest.mark.parametrize("method", list(REFERENCES))
def test_cams_equal_pytorch_grad_cam(method, resnet):
    net, x, model = resnet
    e = oe.explain(model, x.numpy(), method, target=TARGETS)
    ref = _reference(REFERENCES[method], net, net.layer4[-1], x)
    np.testing.assert_allclose(e.extras["cam"], ref, atol=1e-5)
    assert "/layer4/layer4.1/relu_1/Relu_output_0" in e.extras["layer"]  # the map the pooling reads
    np.testing.assert_allclose(e.attribution, np.broadcast_to(e.extras["cam"][:, None], x.shape), atol=0)
    assert e.extras["cam_raw"].shape == (3, 2, 2)


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_named_layer(method, resnet):
    """layer3's output, named by its ONNX tensor, and by its node: pytorch-grad-cam at net.layer3[-1]."""
    net, x, model = resnet
    ref = _reference(REFERENCES[method], net, net.layer3[-1], x)
    for name in ("/layer3/layer3.1/relu_1/Relu_output_0", "/layer3/layer3.1/relu_1/Relu"):
        e = oe.explain(model, x.numpy(), method, target=TARGETS, layer=name)
        np.testing.assert_allclose(e.extras["cam"], ref, atol=1e-5)


def test_nhwc_input(resnet, tmp_path):
    """The same network fed channels-last: the map is the same and sits on the last axis."""
    net, x, _ = resnet
    xs = x.permute(0, 2, 3, 1).contiguous()
    path = tmp_path / "nhwc.onnx"
    torch.onnx.export(NHWC(net), (xs,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "b"}})  # fmt: skip
    e = oe.explain(oe.load(path), xs.numpy(), "gradcam", target=TARGETS)
    ref = _reference(GradCAM, net, net.layer4[-1], x)
    np.testing.assert_allclose(e.extras["cam"], ref, atol=1e-5)
    np.testing.assert_allclose(e.attribution[..., 0], ref, atol=1e-5)


def test_layers_listed_and_bad_layer(resnet, tmp_path):
    from click.testing import CliRunner

    from onnx_explain.cli import main

    _, x, model = resnet
    cands = layer_candidates(model.proto)
    assert default_layer(model.proto)["tensor"] == "/layer4/layer4.1/relu_1/Relu_output_0"
    assert all(len(c["shape"]) == 4 for c in cands) and len(cands) > 20
    with pytest.raises(oe.OptionError, match="is not a spatial feature map"):
        oe.explain(model, x.numpy()[:1], "gradcam", layer="nope")
    path = tmp_path / "m.onnx"
    import onnx

    onnx.save(model.proto, path)
    r = CliRunner().invoke(main, ["info", str(path), "--layers"])
    assert (
        r.exit_code == 0
        and "/layer4/layer4.1/relu_1/Relu_output_0  <- /layer4/layer4.1/relu_1/Relu, Relu, [?, 512, 2, 2]  <- default for CAMs"
        in r.output
    )
    np.save(tmp_path / "x.npy", x.numpy()[:1])
    r = CliRunner().invoke(
        main,
        [
            "explain",
            str(path),
            str(tmp_path / "x.npy"),
            "-m",
            "gradcam",
            "--layer",
            "nope",
            "-o",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 2 and "is not a spatial feature map" in r.output
    assert not (tmp_path / "o").exists()


def test_eigencam_and_scorecam_on_onnxruntime(resnet):
    """Eigen-CAM (class-independent; numpy's SVD sign, as the reference) and Score-CAM (256 masked inputs per
    image through onnxruntime) at layer3 equal pytorch-grad-cam's."""
    from pytorch_grad_cam import EigenCAM, ScoreCAM

    net, x, model = resnet
    x = x[:2]
    e = oe.explain(model, x.numpy(), "eigencam")
    with EigenCAM(model=net, target_layers=[net.layer4[-1]]) as cam:
        ref = cam(input_tensor=x, targets=None)
    np.testing.assert_allclose(e.extras["cam"], ref, atol=1e-5)
    layer = "/layer3/layer3.1/relu_1/Relu_output_0"
    e = oe.explain(model, x.numpy(), "scorecam", target=TARGETS[:2], layer=layer, batch_size=64)
    with ScoreCAM(model=net, target_layers=[net.layer3[-1]]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in TARGETS[:2]])
    np.testing.assert_allclose(e.extras["cam"], ref, atol=1e-5)
    assert layer in e.extras["layer"]


def test_ablationcam(resnet):
    """Every channel of layer3 ablated in turn on the converted graph (batches of ablated copies)."""
    from pytorch_grad_cam import AblationCAM

    net, x, model = resnet
    x = x[:2]
    e = oe.explain(model, x.numpy(), "ablationcam", target=TARGETS[:2], layer="/layer3/layer3.1/relu_1/Relu",
                   batch_size=48)  # fmt: skip
    with AblationCAM(model=net, target_layers=[net.layer3[-1]]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in TARGETS[:2]])
    np.testing.assert_allclose(e.extras["cam"], ref, atol=1e-5)


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """A timm ViT (patch grid 4x4, one class token, 2 blocks, random weights) exported to ONNX."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2, num_classes=10
    ).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("vit") / "vit.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "b"}})  # fmt: skip
    return net, x, oe.load(path)


VIT_NORM1 = "/blocks/blocks.1/norm1/LayerNormalization_output_0"


def _vit_reshape(t):
    return t[:, 1:, :].reshape(t.size(0), 4, 4, t.size(2)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("method", ["gradcam", "layercam", "hirescam", "eigencam", "scorecam"])
def test_vision_transformer_token_grid_equals_pytorch_grad_cam_with_its_reshape_transform(method, vit):
    """A ViT's tokens (B, 1 + 4², D) at the last block's norm1 read as a (D, 4, 4) map, the class token
    dropped: pytorch-grad-cam's documented ViT reshape_transform; the gradient CAMs on the converted graph,
    Eigen-CAM and Score-CAM on onnxruntime."""
    from pytorch_grad_cam import EigenCAM, ScoreCAM

    net, x, model = vit
    e = oe.explain(model, x.numpy(), method, target=[3, 8], layer=VIT_NORM1, batch_size=64)
    reference = {**REFERENCES, "eigencam": EigenCAM, "scorecam": ScoreCAM}[method]
    with reference(model=net, target_layers=[net.blocks[-1].norm1], reshape_transform=_vit_reshape) as cam:
        targets = None if method == "eigencam" else [ClassifierOutputTarget(c) for c in (3, 8)]
        ref = cam(input_tensor=x, targets=targets)
    np.testing.assert_allclose(e.extras["cam"], ref, atol=1e-5)
    assert e.extras["cam_raw"].shape == (2, 4, 4) and VIT_NORM1 in e.extras["layer"]
    from onnx_explain.layers import token_layers

    assert {c["tensor"]: c["tokens"] for c in token_layers(model.proto)}[VIT_NORM1] == (1, 4)  # info --layers


def test_ablationcam_refuses_a_token_tensor_in_one_line(vit):
    _, x, model = vit
    with pytest.raises(oe.OptionError, match="token tensor"):
        oe.explain(model, x.numpy(), "ablationcam", target=[3, 8], layer=VIT_NORM1)


class Segmenter(torch.nn.Module):
    """A small fully convolutional segmenter: (B, 3, 24, 24) -> (B, 4, 24, 24) class maps."""

    def __init__(self):
        super().__init__()
        c = torch.nn.Conv2d
        self.down = torch.nn.Sequential(c(3, 8, 3, padding=1), torch.nn.ReLU(), c(8, 16, 3, stride=2, padding=1),
                                        torch.nn.ReLU())  # fmt: skip
        self.head = c(16, 4, 1)

    def forward(self, x):
        return torch.nn.functional.interpolate(self.head(self.down(x)), scale_factor=2, mode="bilinear")


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_cams_of_a_segmenter_mask_target_equal_pytorch_grad_cam(method, tmp_path):
    """A mask target (Σ over the mask's pixels of one class map) through a CAM, against pytorch-grad-cam's
    SemanticSegmentationTarget on the torch source."""
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    torch.manual_seed(0)
    net = Segmenter().eval()
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "seg.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "b"}})  # fmt: skip
    mask = np.zeros((24, 24), bool)
    mask[4:14, 8:20] = True
    e = oe.explain(oe.load(path), x.numpy(), method, target={"mask": mask, "class": 2},
                   layer="/down/down.3/Relu_output_0")  # fmt: skip
    with REFERENCES[method](model=net, target_layers=[net.down]) as cam:
        ref = cam(input_tensor=x, targets=[SemanticSegmentationTarget(2, mask.astype(np.float32))] * 2)
    np.testing.assert_allclose(e.extras["cam"], ref, atol=1e-5)
    assert e.extras["cam_raw"].shape == (2, 12, 12)


class _ConvDetector(torch.nn.Module):
    """A 16×16 image, a conv stem to an (8, 4, 4) feature map, a 1×1 head giving two class scores per
    cell; cell j's box is the cell itself (fixed), YOLO's raw layout (B, 4 + C, A)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4),
                                        torch.nn.Conv2d(8, 8, 1), torch.nn.ReLU())  # fmt: skip
        self.head = torch.nn.Conv2d(8, 2, 1)
        centres = (torch.arange(4.0) * 4 + 2).repeat_interleave(4), (torch.arange(4.0) * 4 + 2).repeat(4)
        self.register_buffer(
            "boxes", torch.stack([centres[1], centres[0], torch.full((16,), 4.0), torch.full((16,), 4.0)])
        )

    def forward(self, x):
        cls = torch.sigmoid(self.head(self.stem(x))).flatten(2)  # (B, 2, 16)
        return torch.cat([self.boxes.expand(x.shape[0], 4, 16), cls], dim=1)


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_cams_of_a_detector_box_target_equal_pytorch_grad_cam(method, tmp_path):
    """A box target explains the D-RISE similarity of the reference box with the matched proposal (IoU ·
    cosine of the class vectors · objectness); here the box is anchor 6's own cell, so the similarity is
    the cosine of class 1's one-hot with anchor 6's scores, which pytorch-grad-cam takes as its target
    callable on each sample's output."""
    src = _ConvDetector().eval()
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    path = tmp_path / "det.onnx"
    torch.onnx.export(src, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "b"}})  # fmt: skip
    model = oe.load(path)
    layer = "/stem/stem.4/Relu_output_0"
    e = oe.explain(model, x.numpy(), method, target={"box": [8.0, 4.0, 12.0, 8.0], "class": 1}, layer=layer,
                   output="output")  # fmt: skip
    np.testing.assert_array_equal(e.extras["matched_proposal"], [6, 6])

    def similarity(o):  # one sample's (4 + C, A) output
        p = o[4:, 6]
        return p[1] / p.norm()

    with REFERENCES[method](model=src, target_layers=[src.stem[4]]) as cam:
        ref = cam(input_tensor=x, targets=[similarity, similarity])
    np.testing.assert_allclose(e.extras["cam"], ref, atol=1e-5)
    assert np.ptp(ref) > 0.5  # a map, not a constant


class _Twin(torch.nn.Module):
    """A small CNN whose 4×4 feature map is (B, C, h, w), or with ``channels_last`` the same values laid
    out (B, h, w, C) between two permutes, as Swin stages and Keras exports hold them."""

    def __init__(self, channels_last: bool):
        super().__init__()
        torch.manual_seed(5)
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4)
        )
        self.fc = torch.nn.Linear(6, 4)
        self.channels_last = channels_last

    def forward(self, x):
        a = self.stem(x)
        if self.channels_last:
            a = torch.relu(a.permute(0, 2, 3, 1))  # the layer: (B, h, w, C)
            return self.fc(a.mean((1, 2)))
        return self.fc(torch.relu(a).mean((2, 3)))


@pytest.mark.parametrize(
    "method", ["gradcam", "layercam", "eigencam", "scorecam", "ablationcam", "reciprocam"]
)
def test_reshape_nhwc_reads_a_channels_last_map_as_its_nchw_twin(method, tmp_path):
    """Every CAM at a (B, h, w, C) layer with ``reshape='nhwc'`` gives the map of the same network whose
    layer is (B, C, h, w): the reshape only changes how the layer is read (and how the head is fed)."""
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    maps = {}
    for last in (False, True):
        path = tmp_path / f"t{int(last)}.onnx"
        torch.onnx.export(_Twin(last).eval(), (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "b"}})  # fmt: skip
        model = oe.load(path)
        relu = [n for n in model.proto.graph.node if n.op_type == "Relu"][-1].output[0]
        opts = {"reshape": "nhwc"} if last else {}
        maps[last] = oe.explain(model, x.numpy(), method, target=[1, 3], layer=relu, **opts).extras["cam"]
    np.testing.assert_allclose(maps[True], maps[False], atol=1e-5)
    assert np.ptp(maps[False]) > 0.5
    if method == "gradcam":  # the command line's --reshape
        from click.testing import CliRunner

        from onnx_explain.cli import main

        np.save(tmp_path / "x.npy", x.numpy())
        args = ["explain", str(path), str(tmp_path / "x.npy"), "-m", method, "--layer", relu, "--target", "1"]
        r = CliRunner().invoke(main, [*args, "--reshape", "nhwc", "-o", str(tmp_path / "o")])
        assert r.exit_code == 0, r.output
        want = oe.explain(model, x.numpy(), method, target=1, layer=relu, reshape="nhwc").attribution[0]
        np.testing.assert_allclose(np.load(tmp_path / "o" / "x_000.npz")["attribution"], want, atol=1e-6)
        r = CliRunner().invoke(main, [*args, "--reshape", "1:2", "-o", str(tmp_path / "bad")])
        assert r.exit_code == 2 and "reshape must be" in r.output and not (tmp_path / "bad").exists()


def test_reshape_a_non_square_token_grid(tmp_path):
    """A ViT on a 64×32 image has 4×2 patches: tokens (B, 1 + 8, D), which a square reading would take
    for 3×3 patches and no class token. 'auto' takes the grid from the image (16-pixel patches: 4×2 and one
    more token), as reshape='1:4x2' does; both equal pytorch-grad-cam with that transform."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=(64, 32), depth=2, num_classes=10
    ).eval()
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "vit.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "b"}})  # fmt: skip
    model = oe.load(path)
    auto = oe.explain(model, x.numpy(), "gradcam", target=[3, 8], layer=VIT_NORM1)
    e = oe.explain(model, x.numpy(), "gradcam", target=[3, 8], layer=VIT_NORM1, reshape="1:4x2")
    np.testing.assert_array_equal(auto.extras["cam_raw"], e.extras["cam_raw"])

    def reshape(t):
        return t[:, 1:, :].reshape(t.size(0), 4, 2, t.size(2)).permute(0, 3, 1, 2)

    with GradCAM(model=net, target_layers=[net.blocks[-1].norm1], reshape_transform=reshape) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in (3, 8)])
    np.testing.assert_allclose(e.extras["cam"], ref, atol=1e-5)
    assert e.extras["cam_raw"].shape == (2, 4, 2)
    r = oe.explain(model, x.numpy(), "reciprocam", target=[3, 8], layer=VIT_NORM1, reshape="1:4x2")
    assert r.extras["cam_raw"].shape == (2, 4, 2) and r.extras["passes"] == 16
    with pytest.raises(oe.OptionError, match="needs \\(B, 10, D\\)"):
        oe.explain(model, x.numpy(), "gradcam", target=[3, 8], layer=VIT_NORM1, reshape="2:4x2")
    with pytest.raises(oe.OptionError, match="reshape must be"):
        oe.explain(model, x.numpy(), "gradcam", target=[3, 8], layer=VIT_NORM1, reshape="4x2")


@pytest.mark.parametrize("method", ["eigencam", "scorecam", "reciprocam", "ablationcam"])
def test_onnxruntime_cams_read_the_score_from_the_pass_that_reads_the_layer(method, monkeypatch):
    """The explained score comes from the onnxruntime pass that reads the layer (the layer and the output
    of one session): it equals the model's prediction, and no whole-model forward runs besides (Score-CAM's
    masked inputs excepted)."""
    from pathlib import Path

    from onnx_explain.runtime import Runner

    root = Path(__file__).parent.parent / "models"
    model, x = oe.load(root / "digits.onnx"), np.load(root / "samples" / "digits.npy")[:3]
    want = model.predict(x)[np.arange(3), [1, 2, 3]]
    calls = []
    original = Runner.run
    monkeypatch.setattr(
        Runner, "run", lambda self, *a, **k: calls.append(len(a[1])) or original(self, *a, **k)
    )
    e = oe.explain(model, x, method, target=[1, 2, 3])
    np.testing.assert_allclose(np.asarray(e.score), want, rtol=1e-6)
    assert sum(calls) == (3 * 32 if method == "scorecam" else 0), calls  # digits' layer has 32 channels
