"""The command line at the library's speed (issue 16 §1): heatmaps through colour lookup tables and Pillow
(pixels checked against matplotlib's colour maps), the bounded writer pool (order, completeness, bounds,
per-item errors, kill -9 and resume), ``--heatmaps`` and one conversion per run."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import ROOT, export
from PIL import Image

import onnx_explain as oe
from onnx_explain.app import batch, job, viz
from onnx_explain.app.io import JsonlAppender, read_manifest
from onnx_explain.cli import main

DIGITS = ROOT / "models" / "digits.onnx"
SAMPLES = ROOT / "models" / "samples"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _mpl_rgb(v: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    """What ``imshow(v, cmap, vmin, vmax)`` paints, as uint8 RGB: matplotlib's own normalisation and colour
    map (the reference the lookup tables must reproduce)."""
    from matplotlib import cm, colors

    sm = cm.ScalarMappable(norm=colors.Normalize(vmin=vmin, vmax=vmax), cmap=cmap)
    return (sm.to_rgba(v)[..., :3] * 255).round().astype(np.uint8)


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _find(panel: np.ndarray, tile: np.ndarray) -> list[tuple[int, int]]:
    """Every (row, column) where ``tile`` appears pixel for pixel in ``panel``."""
    th, tw = tile.shape[:2]
    hits = []
    for y in range(panel.shape[0] - th + 1):
        rows = np.lib.stride_tricks.sliding_window_view(panel[y], (tw, 3))[:, 0]  # (W - tw + 1, tw, 3)
        for x in np.flatnonzero((rows == tile[0]).all(axis=(1, 2))):
            if (panel[y : y + th, x : x + tw] == tile).all():
                hits.append((y, int(x)))
    return hits


# --- colours ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bwr", "inferno"])
def test_the_lookup_tables_are_matplotlibs_colour_maps(name):
    from matplotlib import colormaps

    cmap = colormaps[name]
    want = (cmap(np.arange(256))[:, :3] * 255).round().astype(np.uint8)
    lut = viz.colormap_lut(name)
    assert lut.shape == (257, 3) and lut.dtype == np.uint8
    np.testing.assert_array_equal(lut[:256], want)
    np.testing.assert_array_equal(lut[256], (np.asarray(cmap.get_bad()[:3]) * 255).round())


@pytest.mark.parametrize(("sign", "cmap", "vmin"), [("signed", "bwr", -1.0), ("abs", "inferno", 0.0)])
def test_colorize_paints_what_imshow_paints(sign, cmap, vmin):
    rng = np.random.default_rng(0)
    edges = vmin + (1 - vmin) * np.arange(257) / 256  # every bin boundary of the 256 colours
    h = np.concatenate([rng.uniform(vmin, 1, 5000), edges, np.nextafter(edges, -9), np.nextafter(edges, 9),
                        [vmin - 0.5, 1.5, -np.inf, np.inf, np.nan]])  # fmt: skip
    np.testing.assert_array_equal(viz.colorize(h, sign), _mpl_rgb(h, cmap, vmin, 1.0))
    # 2-D maps keep their shape; the ends and (signed) the centre are the colour map's
    grid = viz.colorize(h[:4096].reshape(64, 64), sign)
    assert grid.shape == (64, 64, 3)
    lo, hi = viz.colorize(np.array([vmin, 1.0]), sign)
    if sign == "signed":
        assert lo.tolist() == [0, 0, 255] and hi.tolist() == [255, 0, 0]  # pure blue, pure red
        centre = viz.colorize(np.zeros(1), sign)[0]
        assert centre.tolist() == _mpl_rgb(np.array([0.5]), cmap, 0, 1)[0].tolist()
        assert centre.min() >= 254  # white: a zero attribution is not coloured
    else:
        assert lo.tolist() == [0, 0, 4] and hi.tolist() == [252, 255, 164]  # inferno's black and pale yellow


def _expected_map(attribution: np.ndarray, sign: str, percentile: float = 99.0) -> np.ndarray:
    """The documented normalisation, computed here: channel sum, |.| for 'abs', divided by the percentile
    of |a|, clipped to the colour map's range; then painted by matplotlib."""
    a = attribution.astype(np.float64).sum(0)
    if sign == "abs":
        a = np.abs(a)
    cap = np.percentile(np.abs(a), percentile)
    lo = -1.0 if sign == "signed" else 0.0
    return _mpl_rgb(np.clip(a / cap, lo, 1), "bwr" if sign == "signed" else "inferno", lo, 1.0)


@pytest.mark.parametrize(
    ("method", "sign", "flags"),
    [("gradient_x_input", "signed", []), ("gradient", "abs", []), ("gradient_x_input", "signed", ["--percentile", "80"])],
    ids=["signed", "abs", "percentile-80"],
)  # fmt: skip
def test_heatmap_pngs_are_the_colour_map_of_the_normalised_attribution(tmp_path, method, sign, flags):
    out = tmp_path / "o"
    res = run("explain", DIGITS, SAMPLES / "digits.npy", "-m", method, "--out", out, "-q", *flags)
    assert res.exit_code == 0, res.output
    percentile = float(flags[1]) if flags else 99.0
    for name in ("digits_000", "digits_005"):
        with np.load(out / f"{name}.npz") as z:
            a = z["attribution"]
        png = _png(out / f"{name}.png")
        assert png.shape == (32, 32, 3)
        np.testing.assert_array_equal(png, _expected_map(a, sign, percentile))
        if sign == "signed":  # the background (x = 0) has x * grad = 0: drawn in the centre colour, white
            zero = a[0] == 0
            assert zero.sum() > 100
            assert (png[zero] == viz.colorize(np.zeros(1))[0]).all() and png[zero].min() >= 254


def test_the_panel_shows_the_input_the_map_and_its_colour_bar(tmp_path):
    out = tmp_path / "o"
    res = run("explain", DIGITS, SAMPLES / "digits.npy", "-m", "gradient_x_input", "--out", out, "-q")
    assert res.exit_code == 0, res.output
    with np.load(out / "digits_002.npz") as z:
        a, x = z["attribution"], z["input"][0].astype(np.float64)
    panel = _png(out / "digits_002_panel.png")
    k = 8  # 32 px inputs are magnified to 256 px, each pixel an 8x8 square
    grey = ((x - x.min()) / (x.max() - x.min()) * 255).round().astype(np.uint8)
    shown = np.kron(np.repeat(grey[..., None], 3, -1), np.ones((k, k, 1), dtype=np.uint8))
    heat = np.kron(_expected_map(a, "signed"), np.ones((k, k, 1), dtype=np.uint8))
    ((yi, xi),), ((yh, xh),) = _find(panel, shown), _find(panel, heat)  # each exactly once
    assert yi == yh and xh >= xi + 32 * k  # side by side, the input first
    # the colour bar right of the map, as high, framed: columns running through bwr from +1 (top) to -1
    index = {tuple(c): i for i, c in enumerate(viz.colormap_lut("bwr")[:256].tolist())}
    bars = []
    for col in range(xh + 32 * k, panel.shape[1]):
        idx = [index.get(tuple(p)) for p in panel[yh + 1 : yh + 32 * k - 1, col].tolist()]
        if None not in idx:
            bars.append(idx)
    assert len(bars) >= 8, "no colour bar"
    assert all(np.all(np.diff(b) <= 0) and b[0] >= 253 and b[-1] <= 2 for b in bars)
    assert set(map(tuple, bars)) == {tuple(bars[0])}  # every column of the bar alike
    # title band above the tiles: dark text pixels ("input", "gradient_x_input, class N")
    assert (panel[:yh].min(-1) < 100).sum() > 50


def test_overlay_blends_the_map_over_the_input():
    rng = np.random.default_rng(1)
    h = rng.uniform(-1, 1, (20, 30))
    img = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    alone = np.asarray(viz.panel_image(None, h, "signed", "t"))
    over = np.asarray(viz.panel_image(img, h, "signed", "t", overlay=True))
    assert over.shape == alone.shape  # one tile, no input beside it
    k = viz.PANEL_PIXELS // 30
    tile = np.kron(viz.colorize(h), np.ones((k, k, 1), dtype=np.uint8))
    ((y, x),) = _find(alone, tile)
    want = 0.4 * np.kron(np.repeat(img[..., None], 3, -1), np.ones((k, k, 1))) + 0.6 * tile
    got = over[y : y + 20 * k, x : x + 30 * k].astype(np.float64)
    assert np.abs(got - want).max() < 1 + 1e-9  # Pillow rounds down


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 4, 3), (5, 6, 4), (9, 2, 1)])
@pytest.mark.parametrize("up", [False, True])
def test_png_bytes_decode_to_the_array(shape, up):
    a = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    a[1:] = a[:1] if up and len(a) > 1 else a[1:]  # repeated rows: what Up is for
    with Image.open(io.BytesIO(viz.png_bytes(a, up=up))) as im:
        got = np.asarray(im)
    np.testing.assert_array_equal(got, a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a)
    with pytest.raises(ValueError, match="cannot write"):
        viz.png_bytes(np.zeros((2, 2, 2), dtype=np.uint8))


# --- --heatmaps and --compress ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "suffixes"),
    [("panel", {".npz", ".png", "_panel.png"}), ("map", {".npz", ".png"}), ("none", {".npz"})],
)
def test_heatmaps_option_writes_exactly_these_files(tmp_path, mode, suffixes):
    out = tmp_path / mode
    res = run(
        "explain", DIGITS, SAMPLES / "digits.npy", "-m", "gradient", "--heatmaps", mode, "--out", out, "-q"
    )
    assert res.exit_code == 0, res.output
    names = [f"digits_{i:03d}" for i in range(8)]
    assert {p.name for p in out.iterdir()} == {"manifest.jsonl"} | {n + s for n in names for s in suffixes}
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["item"] for r in records] == names
    assert all(r.get("png") == (None if mode == "none" else f"{r['item']}.png") for r in records)
    with np.load(out / "digits_004.npz") as z:  # the attribution does not depend on the images
        lib = oe.explain(oe.load(DIGITS), z["input"][None], "gradient")
        np.testing.assert_allclose(z["attribution"], lib.attribution[0], rtol=1e-5, atol=1e-7)


def test_heatmaps_none_skips_bar_charts_and_a_bad_value_is_a_usage_error(tmp_path):
    out = tmp_path / "wine"
    res = run("explain", ROOT / "models" / "wine.onnx", SAMPLES / "wine.csv", "-m", "gradient", "--heatmaps", "none",
              "--out", out, "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert not list(out.glob("*.png")) and len(list(out.glob("*.npz"))) == 8
    res = run("explain", DIGITS, SAMPLES / "digits.npy", "--heatmaps", "all", "--out", tmp_path / "x")
    assert res.exit_code == 2 and "'all' is not one of 'panel', 'map', 'none'" in res.output
    assert not (tmp_path / "x").exists()
    with pytest.raises(oe.OnnxExplainError, match="heatmaps must be one of panel, map, none"):
        batch.explain_files(
            oe.load(DIGITS), [SAMPLES / "digits.npy"], tmp_path / "y", "gradient", heatmaps="all"
        )
    assert not (tmp_path / "y").exists()


def test_compress_deflates_the_npz_and_keeps_its_content(tmp_path):
    for flags, kind in (([], zipfile.ZIP_STORED), (["--compress"], zipfile.ZIP_DEFLATED)):
        out = tmp_path / str(kind)
        res = run("explain", DIGITS, SAMPLES / "digits.npy", "-m", "gradient", "--heatmaps", "none", "--out", out,
                  "-q", *flags)  # fmt: skip
        assert res.exit_code == 0, res.output
        with zipfile.ZipFile(out / "digits_001.npz") as zf:
            assert {i.compress_type for i in zf.infolist()} == {kind}
    with np.load(tmp_path / "0" / "digits_001.npz") as a, np.load(tmp_path / "8" / "digits_001.npz") as b:
        assert set(a.files) == set(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


# --- the writer pool --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    m = oe.load(DIGITS)
    m.torch_module(space="logit")
    return m


def _many(tmp_path, n: int) -> tuple:
    x = np.load(SAMPLES / "digits.npy")
    rng = np.random.default_rng(0)
    xs = (np.concatenate([x] * (n // len(x) + 1))[:n] + rng.normal(0, 0.05, (n, *x.shape[1:]))).astype(
        np.float32
    )
    path = tmp_path / "many.npy"
    np.save(path, xs)
    return path, xs


def test_a_line_is_appended_only_once_its_files_are_complete(digits, tmp_path, monkeypatch):
    original = JsonlAppender.append
    checked = []

    def append(self, record):
        if record["status"] == "ok":  # at this moment every file of the item must be whole
            out = self.path.parent
            with np.load(out / record["npz"]) as z:
                assert z["attribution"].shape == (1, 32, 32)
            for suffix in (".png", "_panel.png"):
                with Image.open(out / f"{record['item']}{suffix}") as im:
                    im.load()
            checked.append(record["item"])
        original(self, record)

    def slow_panel(*args, **kwargs):  # the panel, written last, lags: the line must wait for it
        time.sleep(0.01)
        return panel(*args, **kwargs)

    panel = viz.save_panel
    monkeypatch.setattr(JsonlAppender, "append", append)
    monkeypatch.setattr(viz, "save_panel", slow_panel)
    path, _ = _many(tmp_path, 40)
    summary = batch.explain_files(digits, [path], tmp_path / "o", "gradient", writers=3, group=4)
    assert summary["ok"] == 40 and summary["failed"] == 0
    assert checked == [f"many_{i:03d}" for i in range(40)]  # every item, in input order


def test_the_pool_overlaps_compute_and_writing_and_stays_bounded(digits, tmp_path, monkeypatch):
    import onnx_explain.explainer as explainer

    computed, recorded, lags = [0], [0], []
    lock = threading.Lock()
    explain, write, append = explainer.explain, job._write_item, JsonlAppender.append

    def counting_explain(model, x, *args, **kwargs):
        e = explain(model, x, *args, **kwargs)
        with lock:
            computed[0] += len(x)
            lags.append(computed[0] - recorded[0])  # computed, not yet recorded
        return e

    def slow_write(*args):
        time.sleep(0.02)
        return write(*args)

    def counting_append(self, record):
        append(self, record)
        with lock:
            recorded[0] += 1

    monkeypatch.setattr(explainer, "explain", counting_explain)
    monkeypatch.setattr(job, "_write_item", slow_write)
    monkeypatch.setattr(JsonlAppender, "append", counting_append)
    path, _ = _many(tmp_path, 96)
    group, writers = 4, 2
    summary = batch.explain_files(digits, [path], tmp_path / "o", "gradient", writers=writers, group=group)
    # the pool's bound (2 groups or 4 per writer) plus the group being computed; writing lags behind
    bound = max(2 * group, 4 * writers) + group
    assert max(lags) <= bound and max(lags) > group, lags
    # drained before returning: every item recorded, every file in place, no temporary file left
    assert summary["ok"] == recorded[0] == 96
    out = tmp_path / "o"
    assert len(read_manifest(out / "manifest.jsonl")) == 96 and len(list(out.glob("*.npz"))) == 96
    assert not list(out.glob(".*.tmp")) and not any(
        t.name.startswith("onnx-explain-writer") for t in threading.enumerate()
    )


def test_a_writer_error_is_that_items_failure_and_resume_redoes_it(digits, tmp_path, monkeypatch):
    panel = viz.save_panel

    def failing_panel(path, *args, **kwargs):
        if path.name == "many_005_panel.png":
            raise OSError(28, "No space left on device")
        return panel(path, *args, **kwargs)

    monkeypatch.setattr(viz, "save_panel", failing_panel)
    path, _ = _many(tmp_path, 12)
    out = tmp_path / "o"
    summary = batch.explain_files(digits, [path], out, "gradient", writers=2, group=4)
    assert (summary["ok"], summary["failed"]) == (11, 1)
    assert summary["failures"] == [f"{path}: writing many_005 failed: [Errno 28] No space left on device"]
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["item"] for r in lines] == [f"many_{i:03d}" for i in range(12)]
    assert [r["status"] for r in lines].count("error") == 1 and lines[5]["status"] == "error"
    monkeypatch.setattr(viz, "save_panel", panel)
    again = batch.explain_files(digits, [path], out, "gradient", resume=True)
    assert (again["ok"], again["skipped"], again["failed"]) == (1, 11, 0)
    assert read_manifest(out / "manifest.jsonl")["many_005"]["status"] == "ok"
    assert (out / "many_005_panel.png").exists()


def test_the_command_reports_a_writer_error_per_item(tmp_path, monkeypatch):
    heat = viz.save_heatmap

    def failing(path, *args, **kwargs):
        if path.name == "digits_003.png":
            raise PermissionError(13, "Permission denied", str(path))
        return heat(path, *args, **kwargs)

    monkeypatch.setattr(viz, "save_heatmap", failing)
    out = tmp_path / "o"
    res = run("explain", DIGITS, SAMPLES / "digits.npy", "-m", "gradient", "--out", out, "-q")
    assert res.exit_code == 1
    assert "7 explained, 0 skipped, 1 failed" in res.output
    assert (
        f"error: {SAMPLES / 'digits.npy'}: writing digits_003 failed: [Errno 13] Permission denied"
        in res.output
    )


def test_a_torn_manifest_line_does_not_swallow_the_next_record(tmp_path):
    m = tmp_path / "manifest.jsonl"
    m.write_text(json.dumps({"item": "a", "status": "ok"}) + "\n" + '{"item": "b", "sta')  # killed mid-line
    log = JsonlAppender(m)
    log.append({"item": "b", "status": "ok"})
    log.close()
    assert read_manifest(m) == {"a": {"item": "a", "status": "ok"}, "b": {"item": "b", "status": "ok"}}


def test_kill_9_mid_run_then_resume_finishes_every_item_exactly(tmp_path):
    path, xs = _many(tmp_path, 160)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "onnx_explain", "explain", str(DIGITS), str(path), "-m", "smoothgrad", "--samples",
           "8", "--out", str(out), "-q"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and manifest.read_bytes().count(b"\n") >= 10:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()
    before = {n: r for n, r in read_manifest(manifest).items() if r.get("status") == "ok"}
    assert 10 <= len(before) < 160
    for name in before:  # a recorded item is whole
        with np.load(out / f"{name}.npz") as z:
            assert z["attribution"].shape == (1, 32, 32)
        for suffix in (".png", "_panel.png"):
            with Image.open(out / f"{name}{suffix}") as im:
                im.load()
    stamps = {n: os.stat(out / f"{n}.npz").st_mtime_ns for n in before}
    res = run("explain", DIGITS, path, "-m", "smoothgrad", "--samples", "8", "--out", out, "-q", "--resume")
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"{160 - len(before)} explained, {len(before)} skipped, 0 failed -> {out}"
    final = read_manifest(manifest)
    assert len(final) == 160 and all(r["status"] == "ok" for r in final.values())
    assert {n: os.stat(out / f"{n}.npz").st_mtime_ns for n in before} == stamps  # not redone
    assert not list(out.glob(".*.tmp"))
    model = oe.load(DIGITS)
    for i in (0, len(before) - 1, len(before), 159):  # before and after the kill: as the library explains it
        with np.load(out / f"many_{i:03d}.npz") as z:
            lib = oe.explain(model, xs[i : i + 1], "smoothgrad", n_samples=8, seed=0)
            np.testing.assert_allclose(z["attribution"], lib.attribution[0], rtol=1e-4, atol=1e-7)  # grouped


# --- start-up ---------------------------------------------------------------------------------------------


class _SoftmaxNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return torch.softmax(self.fc(torch.relu(self.conv(x)).flatten(1)), 1)


def test_a_run_converts_the_model_once_in_the_space_it_explains(tmp_path, monkeypatch):
    import onnx_explain.convert.checked as checked

    path = export(_SoftmaxNet(), torch.randn(2, 1, 8, 8), tmp_path / "soft.onnx", "legacy")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(5, 1, 8, 8)).astype(np.float32))
    spaces = []
    convert = checked.convert_checked

    def counting(proto, signature, runner, space, *args, **kwargs):
        spaces.append(space)
        return convert(proto, signature, runner, space, *args, **kwargs)

    monkeypatch.setattr(checked, "convert_checked", counting)
    for flags, space in (([], "logit"), (["--output", "output"], "output")):
        spaces.clear()
        res = run(
            "explain", path, tmp_path / "x.npy", "-m", "gradient", "--out", tmp_path / space, "-q", *flags
        )
        assert res.exit_code == 0, res.output
        assert spaces == [space]  # the parity gate runs before anything is written, and only once
