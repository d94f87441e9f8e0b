"""Feature groups (onnx_explain.features): specs, masks and layouts mean the same thing everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onnx_explain.errors import OptionError
from onnx_explain.features import GROUPS, make_groups

segmentation = pytest.importorskip("skimage.segmentation")


@pytest.fixture
def images():
    return np.random.default_rng(0).normal(size=(2, 3, 12, 10)).astype(np.float32)


def test_grid_cells_cover_all_channels_in_either_layout(images):
    ids, counts = make_groups("grid:3x2", images, "NCHW")
    assert counts == [6, 6]
    r, c = np.arange(12) * 3 // 12, np.arange(10) * 2 // 10
    want = r[:, None] * 2 + c[None, :]
    assert (ids.numpy() == want).all()  # every sample, every channel
    nhwc, _ = make_groups("grid:3x2", images.transpose(0, 2, 3, 1), "NHWC")
    assert (nhwc.numpy() == ids.numpy().transpose(0, 2, 3, 1)).all()


@pytest.mark.parametrize(
    ("spec", "call"),
    [("slic:15", lambda im: segmentation.slic(im, n_segments=15, compactness=10, start_label=0, channel_axis=-1)),
     ("felzenszwalb", lambda im: segmentation.felzenszwalb(im, scale=1, sigma=0.8, min_size=20, channel_axis=-1)),
     ("quickshift", lambda im: segmentation.quickshift(im, ratio=1.0, kernel_size=5, max_dist=10))],
)  # fmt: skip
def test_superpixels_are_scikit_image_on_each_scaled_image(images, spec, call):
    ids, counts = make_groups(spec, images, "NCHW")
    for b in range(2):
        im = images[b].transpose(1, 2, 0).astype(np.float64)
        want = call((im - im.min()) / (im.max() - im.min()))
        _, want = np.unique(want, return_inverse=True)
        assert (ids[b].numpy() == want.reshape(12, 10)).all()
        assert counts[b] == want.max() + 1


def test_masks_broadcast_relabel_and_keep_negative_ids():
    x = torch.zeros(2, 3, 4)
    mask = np.array([[5, 5, 9, -1]])  # one mask for every sample and row; id gaps are closed
    ids, counts = make_groups(mask, x)
    assert counts == [2, 2]
    assert (ids.numpy() == np.array([0, 0, 1, -1])).all()
    per_sample, counts = make_groups(np.arange(24).reshape(2, 3, 4) % 5, x)
    assert counts == [5, 5] and per_sample.shape == (2, 3, 4)
    with pytest.raises(OptionError, match="feature_groups"):
        make_groups(np.zeros((3, 5), int), x)
    with pytest.raises(OptionError, match="feature_groups"):
        make_groups(np.zeros((4, 3, 4), int), x)


def test_tokens_columns_and_kept_positions():
    ids = np.array([[101, 7, 8, 102, 0], [101, 9, 102, 0, 0]])
    keep = ids != 0
    groups, counts = make_groups("tokens:101,102", ids, keep=keep)
    assert counts == [2, 1]
    assert (groups.numpy() == np.array([[-1, 0, 1, -1, -1], [-1, 0, -1, -1, -1]])).all()
    cols, counts = make_groups("columns", np.zeros((3, 2, 4)))
    assert counts == [4, 4, 4] and (cols.numpy() == np.arange(4)).all()


@pytest.mark.parametrize("spec", ["superpixels", "grid:0", "slic:x", "tokens:a"])
def test_bad_specs_are_one_line_option_errors(images, spec):
    x = images if not spec.startswith("tokens") else np.zeros((2, 5), np.int64)
    with pytest.raises(OptionError, match="feature_groups") as info:
        make_groups(spec, x, "NCHW" if x.ndim == 4 else None)
    assert "\n" not in str(info.value)


def test_image_specs_refuse_tables():
    assert GROUPS["grid"].images_only
    with pytest.raises(OptionError, match="image"):
        make_groups("grid:2", np.zeros((2, 6)))
