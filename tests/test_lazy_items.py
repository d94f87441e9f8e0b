"""The lazy listing the Ray engine ships to its read stage: descriptions without pixels that read back as
the eager listing reads the same files, and a file changed after listing fails only its own items."""

from __future__ import annotations

import pickle

import numpy as np
from conftest import ROOT
from PIL import Image

import onnx_explain as oe
from onnx_explain.app.io import Preprocess, load_item, read_items, shippable


def test_descriptions_carry_no_pixels_and_read_back_as_the_eager_listing(tmp_path):
    model = oe.load(ROOT / "models" / "digits.onnx")
    spec = model.input
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(5, *spec.shape[1:])).astype(np.float32)  # 5 rows of 4 KB
    np.save(tmp_path / "many.npy", rows)
    np.save(tmp_path / "one.npy", rows[0])  # one item: the whole array
    np.savez(tmp_path / "pair.npz", a=rows[:2], b=rows[2:3])
    Image.fromarray((rng.random((40, 40)) * 255).astype(np.uint8)).save(tmp_path / "picture.png")
    prep = Preprocess.from_model(spec)
    eager = read_items([tmp_path], prep, spec)
    lazy = read_items([tmp_path], prep, spec, lazy=True)
    assert [it.name for it in lazy] == [it.name for it in eager]
    assert len(eager) == 5 + 1 + 3 + 1 and not any(it.error for it in eager)
    blobs = [pickle.dumps(shippable(it)) for it in lazy]
    for it, blob in zip(lazy, blobs, strict=True):
        if it.source.endswith((".npy", ".png")):
            assert len(blob) < 600, it.name  # a name and a row number, not 4 KB of values
    for e, blob in zip(eager, blobs, strict=True):
        got = load_item(pickle.loads(blob), prep)
        assert got.error is None and type(got.x) is np.ndarray
        np.testing.assert_array_equal(got.x, e.x)
        if e.image is not None:
            np.testing.assert_array_equal(got.image, e.image)

    # the file changes after the listing: its items fail with the file named, the others read
    np.save(tmp_path / "many.npy", rows[:2])
    (tmp_path / "one.npy").unlink()
    got = [load_item(pickle.loads(b), prep) for b in blobs]
    errors = {it.name: it.error for it in got if it.error}
    assert sorted(errors) == ["many_002", "many_003", "many_004", "one"]
    assert all(
        err.startswith(str(tmp_path / ("one.npy" if n == "one" else "many.npy"))) for n, err in errors.items()
    )
    np.testing.assert_array_equal(got[0].x, rows[0])
