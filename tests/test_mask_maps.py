"""Mask targets on outputs as real segmenters and text detectors give them (issue 22 §3): a one-channel
sigmoid map (DB text detection) without a class, a map without a channel axis, and a channels-last
(B, H, W, C) output next to its (B, C, H, W) twin."""

from __future__ import annotations

import numpy as np
import torch
from click.testing import CliRunner
from conftest import make_model, save, vinfo
from onnx import helper, numpy_helper
from PIL import Image

import onnx_explain as oe
from onnx_explain.cli import main

RNG = np.random.default_rng(0)
W3 = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)  # Conv 2 -> 3 channels, 3x3, padding 1


def _seg(tmp_path, layout: str, sigmoid_map: bool = False):
    w = W3[:1] if sigmoid_map else W3
    last = "y" if layout == "NCHW" else "p"  # NCHW: the graph ends in its Conv or Sigmoid
    nodes = [helper.make_node("Conv", ["x", "w"], ["y" if layout == "NCHW" and not sigmoid_map else "c"],
                              pads=[1, 1, 1, 1])]  # fmt: skip
    out = "c"
    if sigmoid_map:
        nodes.append(helper.make_node("Sigmoid", ["c"], [last]))
        out = "p"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [out], ["y"], perm=[0, 2, 3, 1]))
    elif layout == "NHW":
        nodes.append(helper.make_node("Squeeze", [out, "ax"], ["y"]))
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1], np.int64), "ax")]
    model = make_model(nodes, [vinfo("x", ["N", 2, 6, 8])], [vinfo("y", None)], inits, opset=17)
    return save(model, tmp_path / f"seg_{layout}_{int(sigmoid_map)}.onnx")


def _conv_grad(x, mask, channel, n_out, sigmoid=False):
    xt = torch.from_numpy(x).requires_grad_(True)
    c = torch.nn.functional.conv2d(xt, torch.from_numpy(W3[:n_out]), padding=1)
    c = torch.sigmoid(c) if sigmoid else c
    (c[:, channel] * torch.from_numpy(mask.astype(np.float32))).sum().backward()
    return xt.grad.numpy()


def test_channels_last_segmenter_equals_its_channels_first_twin(tmp_path):
    x = RNG.standard_normal((2, 2, 6, 8)).astype(np.float32)
    mask = np.zeros((6, 8), bool)
    mask[1:4, 2:6] = True
    a = oe.explain(oe.load(_seg(tmp_path, "NCHW")), x, "gradient", target={"mask": mask, "class": 2})
    b = oe.explain(oe.load(_seg(tmp_path, "NHWC")), x, "gradient", target={"mask": mask, "class": 2})
    np.testing.assert_allclose(b.attribution, a.attribution, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a.attribution, _conv_grad(x, mask, 2, 3), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.score, a.score, rtol=1e-6)


def test_one_channel_sigmoid_map_takes_a_mask_without_a_class(tmp_path):
    x = RNG.standard_normal((2, 2, 6, 8)).astype(np.float32)
    mask = np.zeros((6, 8), np.uint8)
    mask[2:5, 1:7] = 255
    png = tmp_path / "mask.png"
    Image.fromarray(mask).save(png)
    for layout in ("NCHW", "NHW"):
        # NCHW ends in the Sigmoid: its logit map is explained; NHW squeezes after it: the map itself
        want = _conv_grad(x, mask > 0, 0, 1, sigmoid=layout == "NHW")
        path = _seg(tmp_path, layout, sigmoid_map=True)
        e = oe.explain(oe.load(path), x, "gradient", target={"mask": mask > 0})
        np.testing.assert_allclose(e.attribution, want, rtol=1e-5, atol=1e-6)
        npy = tmp_path / "x.npy"
        np.save(npy, x)
        out = tmp_path / f"out_{layout}"
        r = CliRunner().invoke(main, ["explain", str(path), str(npy), "-m", "gradient", "--target", f"mask:{png}",
                                      "--out", str(out), "--heatmaps", "none"])  # fmt: skip
        assert r.exit_code == 0, r.output
        with np.load(out / "x_001.npz") as z:
            np.testing.assert_allclose(z["attribution"], want[1], rtol=1e-5, atol=1e-6)


def test_lrp_takes_mask_and_sum_targets(tmp_path):
    # a linear graph: LRP-0 is gradient x input, for a mask of the map and for a sum over positions alike
    x = RNG.standard_normal((2, 2, 6, 8)).astype(np.float32)
    mask = np.zeros((6, 8), bool)
    mask[1:5, 2:7] = True
    m = oe.load(_seg(tmp_path, "NCHW"))
    target = {"mask": mask, "class": 1}
    lrp = oe.explain(m, x, "lrp", target=target, rules={"Conv": "epsilon0"})
    gxi = oe.explain(m, x, "gradient_x_input", target=target)
    np.testing.assert_allclose(lrp.attribution, gxi.attribution, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(lrp.score, gxi.score, rtol=1e-6)
    np.testing.assert_allclose(lrp.attribution.reshape(2, -1).sum(1), lrp.score, rtol=1e-4)  # conservation
    nhwc = oe.load(_seg(tmp_path, "NHWC"))  # (B, H, W, C): 'all' positions of row 2, class 1
    t = (2, "all", 1)
    lrp = oe.explain(nhwc, x, "lrp", target=t, rules={"Conv": "epsilon0"})
    gxi = oe.explain(nhwc, x, "gradient_x_input", target=t)
    np.testing.assert_allclose(lrp.attribution, gxi.attribution, rtol=1e-4, atol=1e-6)
