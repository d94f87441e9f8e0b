"""Results in notebooks: Explanation.heatmap / plot / _repr_html_ draw what the command line draws."""

from __future__ import annotations

import base64
import io
import re

import matplotlib
import numpy as np
from conftest import ROOT
from PIL import Image

import onnx_explain as oe
from onnx_explain.heatmap import colorize, heat_map

matplotlib.use("Agg")


def test_heatmap_plot_and_html_show_the_command_lines_map():
    model = oe.load(ROOT / "models" / "digits.onnx")
    x = np.load(ROOT / "models" / "samples" / "digits.npy")[:3]
    e = oe.explain(model, x, "gradient_x_input", target="top:2")
    assert e.layout == model.layout
    h = e.heatmap(1, k=1)
    np.testing.assert_array_equal(h, heat_map(e.attribution[1, 1], model.layout, "sum", "signed", 99.0))
    fig = e.plot(x, index=1)
    shown = fig.axes[1].images[0].get_array()
    np.testing.assert_array_equal(np.asarray(shown), e.heatmap(1))
    assert fig.axes[0].images[0].get_array().shape[:2] == h.shape  # the input beside its map
    page = e._repr_html_()
    pngs = re.findall(r"base64,([A-Za-z0-9+/=]+)", page)
    assert len(pngs) == 3
    with Image.open(io.BytesIO(base64.b64decode(pngs[2]))) as im:
        img = np.asarray(im.convert("RGB"))
    k = img.shape[0] // h.shape[0]
    np.testing.assert_array_equal(img[::k, ::k], colorize(e.heatmap(2), "signed"))


def test_one_dimensional_attributions_are_bars():
    e = oe.Explanation(np.array([[0.5, -1.0, 2.0]]), np.array([1]), np.array([0.3]), "gradient")
    fig = e.plot()
    heights = [p.get_height() for p in fig.axes[0].patches]
    np.testing.assert_allclose(heights, [0.5, -1.0, 2.0])
    page = e._repr_html_()
    assert page.count("<span title=") == 3 and "title='-1'" in page
