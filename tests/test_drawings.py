"""What a heatmap explains, drawn on it (issue 14 §3): a box target's explained box and the proposal it
matched, a mask target's outline — in the command line's Pillow panels and on matplotlib axes.

Oracle: the geometry of the box and the mask at the panel's magnification, computed here from their
coordinates (a box [x1, y1, x2, y2] magnified k times covers pixels k·x1 … k·x2 − 1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import export

import onnx_explain as oe
from onnx_explain.app import viz
from onnx_explain.heatmap import SHAPE_COLOURS, colorize, plot_shapes, target_shapes


class _GridDetector(torch.nn.Module):
    """A 16×16 image, 16 anchors whose boxes are their own 4×4 cells, class scores from their own cell
    (anchors on the last axis: (B, 4+2, 16), cx cy w h)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.head = torch.nn.Conv2d(1, 2, 1)
        centres = (torch.arange(4.0) * 4 + 2).repeat_interleave(4), (torch.arange(4.0) * 4 + 2).repeat(4)
        self.register_buffer(
            "boxes", torch.stack([centres[1], centres[0], torch.full((16,), 4.0), torch.full((16,), 4.0)])
        )

    def forward(self, x):
        cls = torch.sigmoid(self.head(torch.nn.functional.avg_pool2d(x, 4))).flatten(2)
        return torch.cat([self.boxes.expand(x.shape[0], 4, 16), cls], dim=1)


class _FCN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def _heat_tile(panel, h, k, tiles=1):
    """The heatmap tile of a panel (the last of ``tiles``), and the tile as it would be without shapes."""
    a = np.asarray(panel)
    H, W = h.shape[0] * k, h.shape[1] * k
    x0 = viz._PAD + (tiles - 1) * (W + viz._PAD)
    tile = a[viz._PAD + viz._TITLE : viz._PAD + viz._TITLE + H, x0 : x0 + W]
    plain = np.kron(colorize(h, "signed"), np.ones((k, k, 1), np.uint8))
    return tile, plain


def _outline(top, left, bottom, right, shape):
    m = np.zeros(shape, bool)
    m[top, left : right + 1] = m[bottom, left : right + 1] = True
    m[top : bottom + 1, left] = m[top : bottom + 1, right] = True
    return m


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    x = np.random.default_rng(6).standard_normal((2, 1, 16, 16)).astype(np.float32)
    path = export(
        _GridDetector().eval(), torch.from_numpy(x), tmp_path_factory.mktemp("det") / "d.onnx", "legacy"
    )
    return oe.load(path), x


def test_a_panel_draws_the_explained_box_and_its_matched_proposal_at_their_edges(detector):
    model, x = detector
    ref = [9.0, 5.0, 13.0, 9.0]  # overlaps cell 6 ([8, 4, 12, 8]) most: that anchor is matched
    e = oe.explain(model, x, "gradient", target={"box": ref, "class": 1}, output="output")
    np.testing.assert_array_equal(e.extras["matched_box"], [[8, 4, 12, 8]] * 2)
    h = e.heatmap(1)
    shapes = target_shapes(e.extras, 1)
    assert [n for n, _ in shapes] == ["matched", "reference"]
    k = viz.PANEL_PIXELS // 16  # 16: tiles are magnified by a whole factor
    for image, tiles in ((None, 1), (np.zeros((16, 16), np.uint8), 2)):
        panel = viz.panel_image(image, h, "signed", "t", shapes=shapes)
        tile, plain = _heat_tile(panel, h, k, tiles)
        reference = _outline(5 * k, 9 * k, 9 * k - 1, 13 * k - 1, tile.shape[:2])
        matched = _outline(4 * k, 8 * k, 8 * k - 1, 12 * k - 1, tile.shape[:2]) & ~reference  # drawn under it
        assert (tile[reference] == SHAPE_COLOURS["reference"]).all()
        assert (tile[matched] == SHAPE_COLOURS["matched"]).all()
        rest = ~(reference | matched)
        np.testing.assert_array_equal(tile[rest], plain[rest])  # nothing else changes
        legend = np.asarray(panel)[-viz._LEGEND :]
        for name in ("reference", "matched"):  # a swatch per drawn kind under the tiles
            assert (legend == SHAPE_COLOURS[name]).all(-1).any()
    bare = viz.panel_image(None, h, "signed", "t")
    assert bare.height == panel.height - viz._LEGEND
    assert target_shapes({"target_kind": "class"}, 0) == []


def test_a_mask_target_is_outlined_on_its_boundary(tmp_path):
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    model = oe.load(export(_FCN().eval(), torch.from_numpy(x), tmp_path / "fcn.onnx", "legacy"))
    mask = np.zeros((8, 8), bool)
    mask[2:5, 3:7] = True
    mask[4, 1:3] = True  # an L: the outline has an inner corner
    e = oe.explain(model, x, "gradient", target={"mask": mask, "class": 2}, output="output")
    h = e.heatmap(0)
    k = viz.PANEL_PIXELS // 8
    tile, plain = _heat_tile(viz.panel_image(None, h, "signed", "t", shapes=target_shapes(e.extras, 0)), h, k)
    big = np.kron(mask, np.ones((k, k), bool))
    # the boundary of the magnified mask: its pixels with a 4-neighbour outside it (not the image's border)
    outside = np.pad(~big, 1, constant_values=False)
    edge = big & (outside[:-2, 1:-1] | outside[2:, 1:-1] | outside[1:-1, :-2] | outside[1:-1, 2:])
    green = (tile == SHAPE_COLOURS["mask"]).all(-1)
    np.testing.assert_array_equal(green, edge)
    np.testing.assert_array_equal(tile[~edge], plain[~edge])


def test_matplotlib_draws_the_same_shapes(detector):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    model, x = detector
    e = oe.explain(model, x, "gradient", target={"box": [9.0, 5.0, 13.0, 9.0], "class": 1}, output="output")
    fig, ax = plt.subplots()
    ax.imshow(e.heatmap(0), cmap="bwr", vmin=-1, vmax=1)
    plot_shapes(ax, target_shapes(e.extras, 0))
    rects = {p.get_label(): p for p in ax.patches if isinstance(p, Rectangle)}
    # imshow centres pixel j at j: box [x1, x2) spans x1 - 0.5 … x2 - 0.5
    assert rects["explained box"].get_xy() == (8.5, 4.5) and rects["explained box"].get_width() == 4
    assert rects["matched proposal"].get_xy() == (7.5, 3.5)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"explained box", "matched proposal"}
    mask = np.zeros((16, 16), bool)
    mask[3:9, 5:12] = True
    mask[3:5, 5:7] = False
    fig2, ax2 = plt.subplots()
    ax2.imshow(np.zeros((16, 16)))
    plot_shapes(ax2, [("mask", mask)])
    verts = np.concatenate([p.vertices for c in ax2.collections for p in c.get_paths()])
    assert len(verts) > 8
    m = mask.astype(float)  # the outline passes where the mask, bilinearly interpolated, is 0.5
    x0, y0 = np.floor(verts[:, 0]).astype(int), np.floor(verts[:, 1]).astype(int)
    fx, fy = verts[:, 0] - x0, verts[:, 1] - y0
    x1, y1 = np.minimum(x0 + 1, 15), np.minimum(y0 + 1, 15)
    v = (m[y0, x0] * (1 - fx) * (1 - fy) + m[y0, x1] * fx * (1 - fy) + m[y1, x0] * (1 - fx) * fy
         + m[y1, x1] * fx * fy)  # fmt: skip
    np.testing.assert_allclose(v, 0.5, atol=1e-9)
    plt.close(fig)
    plt.close(fig2)
