"""The command line: help everywhere, a lazy import, exact outputs, one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import ROOT, make_model, save, vinfo
from onnx import helper

from onnx_explain.cli import COMMANDS, main

DIGITS = ROOT / "models" / "digits.onnx"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_every_command_has_help_with_an_example():
    assert run("--help").exit_code == 0
    for name in COMMANDS:
        res = run(name, "--help")
        assert res.exit_code == 0, name
        assert "Example" in res.output, name


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom onnx_explain.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False False"


def test_info_without_conversion_does_not_import_torch():
    """`info --no-convert` reads the graph and runs nothing on torch: neither torch nor onnx2torch is
    imported (they cost seconds of start-up)."""
    code = (
        "import sys\nfrom onnx_explain.cli import main\n"
        f"try:\n    main(['info', {str(ROOT / 'models' / 'digits.onnx')!r}, '--no-convert'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'onnx2torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False False", out.stdout + out.stderr


def test_evaluate_of_class_targets_does_not_import_torch(tmp_path):
    """`evaluate` on an explain folder (class targets) runs on onnxruntime alone: no torch import, and the
    same scores as the in-process evaluation."""
    import onnx_explain as oe
    from onnx_explain.app.batch import evaluate_dir, explain_files

    model = ROOT / "models" / "digits.onnx"
    explain_files(oe.load(model), [ROOT / "models" / "samples" / "digits.npy"], tmp_path / "g", "gradient")
    report = tmp_path / "eval.json"
    code = (
        "import sys\nfrom onnx_explain.cli import main\n"
        f"try:\n    main(['evaluate', {str(model)!r}, '-a', {str(tmp_path / 'g')!r}, '--metric', 'deletion', "
        f"'--out', {str(report)!r}])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'onnx2torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False False", out.stdout + out.stderr
    want = evaluate_dir(oe.load(model), tmp_path / "g", ["deletion"])["metrics"]["deletion"]["per_item"]
    assert json.loads(report.read_text())["metrics"]["deletion"]["per_item"] == want


def _quickstart() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.search(r"## Quickstart\s+```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()


def test_ci_runs_the_readme_quickstart_verbatim_then_ruff():
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [ln for ln in lines if ln and not ln.startswith("#")]
    quickstart = _quickstart()
    start = commands.index(quickstart[0])
    assert commands[start:] == [*quickstart, "pytest -q -m slow", "ruff check .", "ruff format --check ."]


def test_readme_main_job_command(tmp_path):
    block = _quickstart()
    assert len(block) == 2, "the quickstart holds exactly two commands"
    main_job = block[0].split("&&", 1)[1].strip()
    assert main_job == "onnx-explain demo"
    out = subprocess.run(main_job.split(), capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "onnx-explain-demo" / "report.json").read_text())
    assert set(report["methods"]) == {"gradient", "smoothgrad", "integrated_gradients", "lrp"}
    for method, scores in report["methods"].items():
        assert set(scores) == {"pixel_flipping", "deletion", "insertion", "total_variation"}
        assert all(np.isfinite(v["mean"]) for v in scores.values()), method
        assert len(list((tmp_path / "onnx-explain-demo" / method).glob("*.npz"))) == 8
    assert "heatmaps, curves and report -> onnx-explain-demo/" in out.stdout


def test_demo_runs_from_an_installed_wheel_in_any_folder(tmp_path):
    # a real install (a wheel, not the editable checkout), then `demo` in an empty folder far from the
    # repository: the model and samples must come from the package data
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "onnx_explain", src / "onnx_explain", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [
        *pip,
        "wheel",
        str(src),
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-w",
        str(tmp_path / "dist"),
    ]
    subprocess.run(build, check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("onnx_explain-*.whl")
    assert {"onnx_explain/data/digits.onnx", "onnx_explain/data/digits.npy"} <= set(
        zipfile.ZipFile(wheel).namelist()
    )
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True,
                   capture_output=True)  # fmt: skip
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # the installed copy shadows the editable checkout
    out = subprocess.run([sys.executable, "-m", "onnx_explain", "demo", "--quiet"], cwd=work, env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = (site / "onnx_explain" / "data").resolve()
    assert out.stdout.splitlines()[0] == f"onnx-explain demo: {data / 'digits.onnx'} on {data / 'digits.npy'}"
    demo = work / "onnx-explain-demo"
    report = json.loads((demo / "report.json").read_text())
    x = np.load(ROOT / "models" / "samples" / "digits.npy")
    for method in ("gradient", "smoothgrad", "integrated_gradients", "lrp"):
        files = sorted((demo / method).glob("*.npz"))
        assert len(files) == len(x), method
        for i, f in enumerate(files):  # the explained inputs are the bundled samples
            np.testing.assert_array_equal(np.load(f)["input"], x[i])
        evaluation = json.loads((demo / method / "evaluation.json").read_text())["metrics"]
        for metric, summary in report["methods"][method].items():
            per_item = list(evaluation[metric]["per_item"].values())
            assert len(per_item) == len(x) and np.isfinite(per_item).all()
            assert summary["mean"] == pytest.approx(np.mean(per_item))
        row = next(ln for ln in out.stdout.splitlines() if ln.startswith(method + " "))
        assert [float(v) for v in row.split()[1:]] == pytest.approx(
            [
                report["methods"][method][k]["mean"]
                for k in ("pixel_flipping", "deletion", "insertion", "total_variation")
            ],
            abs=5e-5,
        )


def test_info_text():
    res = run("info", DIGITS)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == f"model     {DIGITS}"
    assert "  image: tensor float32 [batch, 1, 32, 32]  <- explained" in lines
    assert "  logits: tensor float32 [batch, 10]  <- explained" in lines
    assert any(ln.startswith("torch:    converted in") and ln.endswith("-> OK") for ln in lines)


def test_info_json_matches_the_model():
    res = run("info", DIGITS, "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    proto = onnx.load(DIGITS)
    assert d["nodes"] == len(proto.graph.node)
    assert sum(d["ops"].values()) == len(proto.graph.node)
    assert d["conversion"]["ok"] is True
    assert d["conversion"]["parity"]["passed"] is True
    assert d["conversion"]["parity"]["batch"] == 2
    assert d["conversion"]["batch_mode"] == "dynamic"


def test_info_no_convert_runs_no_conversion(monkeypatch):
    from onnx_explain.convert import driver

    looked_up = []  # ONNX op types the torch conversion asked onnx2torch a converter for
    real = driver.get_converter

    def counting(*args, **kwargs):
        looked_up.append(kwargs.get("operation_type"))
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "get_converter", counting)
    res = run("info", DIGITS, "--json", "--no-convert")
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert "conversion" not in d and d["nodes"] == len(onnx.load(DIGITS).graph.node)
    text = run("info", DIGITS, "--no-convert")
    assert text.exit_code == 0 and not any(ln.startswith("torch:") for ln in text.output.splitlines())
    assert looked_up == []
    # control: the same probe sees the conversion when it does run
    d = json.loads(run("info", DIGITS, "--json").output)
    assert d["conversion"]["ok"] is True
    assert {"Conv", "Gemm", "Relu", "MaxPool"} <= set(looked_up)


@pytest.mark.parametrize("content", [b"", b"garbage" * 50, None], ids=["empty", "garbage", "truncated"])
def test_bad_model_one_line_exit_2(tmp_path, content):
    p = tmp_path / "bad.onnx"
    if content is None:
        p.write_bytes(DIGITS.read_bytes()[:5000])  # truncated
    else:
        p.write_bytes(content)
    out = subprocess.run(
        [sys.executable, "-m", "onnx_explain", "info", str(p)], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"error: {p}: ")
    assert "Traceback" not in out.stderr


def test_missing_model_and_unconvertible_node(tmp_path):
    res = run("info", tmp_path / "none.onnx")
    assert res.exit_code == 2
    assert res.output.strip() == f"error: {tmp_path / 'none.onnx'}: file not found"
    model = make_model(
        [helper.make_node("Det", ["x"], ["y"], name="d")], [vinfo("x", ["N", 3, 3])], [vinfo("y", ["N"])]
    )
    p = save(model, tmp_path / "det.onnx")
    res = run("info", p)
    assert res.exit_code == 2
    assert res.output.strip().endswith("error: " + f"{p}: node 'd' (Det) has no torch converter at opset 20 "
                                       "(onnx-explain: see onnx_explain/convert/ops to add one)")  # fmt: skip


SAMPLES = ROOT / "models" / "samples"


def test_explain_writes_npz_heatmaps_and_manifest_equal_to_the_library(tmp_path):
    from PIL import Image

    import onnx_explain as oe

    out = tmp_path / "sg"
    res = run("explain", DIGITS, SAMPLES / "digit_0_label8.png", SAMPLES / "digit_1_label6.png", "--method", "smoothgrad",
              "--samples", "6", "--sigma", "0.2", "--seed", "3", "--out", out, "--quiet")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"2 explained, 0 skipped, 0 failed -> {out}"
    model = oe.load(DIGITS)
    for name in ("digit_0_label8", "digit_1_label6"):
        with np.load(out / f"{name}.npz") as z:
            assert set(z.files) >= {"attribution", "target", "score", "input", "method", "options"}
            assert z["attribution"].shape == (1, 32, 32) and z["attribution"].dtype == np.float32
            assert str(z["method"]) == "smoothgrad"
            assert json.loads(str(z["options"]))["n_samples"] == 6
            lib = oe.explain(model, z["input"][None], "smoothgrad", n_samples=6, sigma=0.2, seed=3)
            # the same draws: equal up to float rounding (the CLI explains both items in one batch)
            np.testing.assert_allclose(z["attribution"], lib.attribution[0], rtol=1e-4, atol=1e-7)
            assert int(z["target"]) == int(lib.target[0])
        with Image.open(out / f"{name}.png") as im:
            assert im.size == (32, 32)  # the heatmap has the input's size
        assert (out / f"{name}_panel.png").stat().st_size > 0
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["item"] for r in lines] == ["digit_0_label8", "digit_1_label6"]
    assert all(r["status"] == "ok" and r["npz"] == f"{r['item']}.npz" for r in lines)
    assert [r["target"] for r in lines] == [8, 6]


def _expected_input(png, size, channels, mean, std, crop=False, bgr=False):
    """The model input of an image file, computed here from its pixels: grey by the ITU-R 601-2 luma in
    integer arithmetic (PIL's 'L'), PIL's bilinear resize to HxW (or of the shorter side to fit, then the
    centre cut out), scaled to [0, 1], normalised per channel, channels first."""
    from PIL import Image

    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB")).astype(np.int64)
    if channels == 1:
        pix = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    else:
        pix = rgb
    img = Image.fromarray(pix.astype(np.uint8))
    h, w = size
    if crop:
        s = max(h / img.height, w / img.width)
        big = np.asarray(
            img.resize((max(w, round(img.width * s)), max(h, round(img.height * s))), Image.BILINEAR)
        )
        top, left = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
        arr = big[top : top + h, left : left + w]
    else:
        arr = np.asarray(img.resize((w, h), Image.BILINEAR))
    arr = arr.astype(np.float64).reshape(h, w, channels)
    if bgr:
        arr = arr[..., ::-1]
    return ((arr / 255 - np.asarray(mean)) / np.asarray(std)).transpose(2, 0, 1)


@pytest.mark.parametrize(
    ("model", "flags", "expect"),
    [("digits", [], {"channels": 1, "mean": [0.0], "std": [1.0]}),
     ("shapes", ["--mean", "0.5,0.4,0.3", "--std", "0.2,0.25,0.3"], {"channels": 3, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}),
     ("shapes", ["--bgr", "--crop", "--mean", "0.1,0.2,0.3", "--std", "0.5,0.5,0.5"],
      {"channels": 3, "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5], "crop": True, "bgr": True})],
    ids=["grey-from-rgb", "rgb-normalised", "bgr-center-crop"],
)  # fmt: skip
def test_explain_preprocesses_images_as_documented(tmp_path, model, flags, expect):
    from PIL import Image

    # a 48x40 colour image: the size, colour mode and channel order all differ from the 32x32 model input
    png = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(png)
    out = tmp_path / "out"
    res = run("explain", ROOT / "models" / f"{model}.onnx", png, "-m", "gradient", "--out", out, "-q", *flags)
    assert res.exit_code == 0, res.output
    with np.load(out / "photo.npz") as z:
        got = z["input"]
    want = _expected_input(png, (32, 32), **expect)
    assert got.shape == want.shape == (expect["channels"], 32, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_explain_resume_skips_finished_items(tmp_path):
    out = tmp_path / "g"
    assert run("explain", DIGITS, SAMPLES / "digits.npy", "-m", "gradient", "--out", out, "-q").exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    assert len(before) == 8
    res = run("explain", DIGITS, SAMPLES / "digits.npy", "-m", "gradient", "--out", out, "-q", "--resume")
    assert res.output.strip() == f"0 explained, 8 skipped, 0 failed -> {out}"
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")} == before


def test_a_corrupt_input_is_reported_and_the_others_finish(tmp_path):
    import shutil

    folder = tmp_path / "in"
    folder.mkdir()
    for p in list(SAMPLES.glob("digit_*.png"))[:3]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "o"
    res = run("explain", DIGITS, folder, "-m", "gradient_x_input", "--out", out, "-q")
    assert res.exit_code == 1
    assert "3 explained, 0 skipped, 1 failed" in res.output
    assert f"error: {folder / 'broken.png'}:" in res.output
    records = {
        json.loads(line)["item"]: json.loads(line)
        for line in (out / "manifest.jsonl").read_text().splitlines()
    }
    assert records["broken"]["status"] == "error"
    assert sum(r["status"] == "ok" for r in records.values()) == 3
    assert len(list(out.glob("*.npz"))) == 3 and not list(out.glob("*.tmp"))


def test_explain_bad_model_leaves_nothing_on_disk(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk" * 10)
    out = tmp_path / "never"
    res = run("explain", bad, SAMPLES / "digits.npy", "--out", out)
    assert res.exit_code == 2
    assert res.output.strip().startswith(f"error: {bad}: not an ONNX")
    assert not out.exists()


def test_explain_flags_must_fit_the_method(tmp_path):
    res = run(
        "explain", DIGITS, SAMPLES / "digits.npy", "-m", "gradient", "--sigma", "0.3", "--out", tmp_path / "x"
    )
    assert res.exit_code == 2
    assert "--sigma does not apply to method 'gradient'" in res.output


def test_explain_lrp_rules_from_the_command_line(tmp_path):
    out = tmp_path / "lrp"
    res = run("explain", DIGITS, SAMPLES / "digits.npy", "-m", "lrp", "--composite", "epsilon_gamma_box", "--low", "0",
              "--high", "1", "--rule", "Gemm=epsilon:0.01", "--out", out, "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    import onnx_explain as oe

    with np.load(out / "digits_000.npz") as z:
        lib = oe.explain(oe.load(DIGITS), z["input"][None], "lrp", composite="epsilon_gamma_box", low=0.0, high=1.0,
                         rules={"Gemm": "epsilon:0.01"})  # fmt: skip
        # the command batches deterministic methods over items: equal up to float32 summation order
        np.testing.assert_allclose(
            z["attribution"], lib.attribution[0], rtol=1e-4, atol=1e-6 * np.abs(lib.attribution).max()
        )


def test_evaluate_writes_the_library_scores(tmp_path):
    import onnx_explain as oe

    att = tmp_path / "ig"
    assert (
        run(
            "explain",
            DIGITS,
            SAMPLES / "digits.npy",
            "-m",
            "integrated_gradients",
            "--steps",
            "8",
            "--out",
            att,
            "-q",
        ).exit_code
        == 0
    )
    report = tmp_path / "r.json"
    res = run("evaluate", DIGITS, "-a", att, "--metric", "pixel_flipping", "--metric", "deletion", "--out", report,
              "--plots", tmp_path / "plots", "--option", "n_steps=16")  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads(report.read_text())
    assert list(d["metrics"]) == ["pixel_flipping", "deletion"]
    x = np.stack([np.load(att / f"digits_{i:03d}.npz")["input"] for i in range(8)])
    a = np.stack([np.load(att / f"digits_{i:03d}.npz")["attribution"] for i in range(8)])
    t = np.array([int(np.load(att / f"digits_{i:03d}.npz")["target"]) for i in range(8)])
    lib = oe.evaluate(oe.load(DIGITS), x, a, "deletion", target=t, n_steps=16)
    np.testing.assert_allclose(
        [d["metrics"]["deletion"]["per_item"][f"digits_{i:03d}"] for i in range(8)], lib["scores"]
    )
    assert d["metrics"]["deletion"]["higher_is_better"] is False
    assert (tmp_path / "plots" / "pixel_flipping.png").exists() and (
        tmp_path / "plots" / "deletion.png"
    ).exists()
    csv = tmp_path / "r.csv"
    assert run("evaluate", DIGITS, "-a", att, "--metric", "deletion", "--out", csv).exit_code == 0
    rows = csv.read_text().splitlines()
    assert rows[0] == "item,metric,score" and len(rows) == 9


def test_evaluate_missing_folder(tmp_path):
    res = run("evaluate", DIGITS, "-a", tmp_path / "nope", "--metric", "deletion")
    assert res.exit_code == 2
    assert (
        res.output.strip()
        == f"error: {tmp_path / 'nope'}: no such folder (the --out of 'onnx-explain explain')"
    )


NET_PY = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


def broken():
    return 42
"""


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("dynamic", [True, False])
def test_export_a_factory_and_verify(tmp_path, exporter, dynamic):
    import onnx_explain as oe

    (tmp_path / "net.py").write_text(NET_PY)
    out = tmp_path / "net.onnx"
    flag = "--dynamic-batch" if dynamic else "--no-dynamic-batch"
    res = run(
        "export",
        f"{tmp_path / 'net.py'}:build",
        "--input-shape",
        "1,1,8,8",
        "--exporter",
        exporter,
        flag,
        "--out",
        out,
        "--json",
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["max_abs_ort_vs_source"] < 1e-5 and report["parity"]["passed"]
    assert (
        report["max_rel_ort_vs_source"] < 1e-5
        and report["parity"]["rel_spread"] < report["parity"]["spread_tol"]
    )
    m = oe.load(out)
    assert isinstance(m.input.shape[0], str) == dynamic
    import importlib.util

    spec = importlib.util.spec_from_file_location("net", tmp_path / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    import torch

    np.testing.assert_allclose(
        m.predict(x), mod.build()(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5
    )


def test_export_torchscript_and_errors(tmp_path):
    import torch

    (tmp_path / "net.py").write_text(NET_PY)
    import importlib.util

    spec = importlib.util.spec_from_file_location("net", tmp_path / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.jit.script(mod.build()).save(str(tmp_path / "net.pt"))
    assert (
        run(
            "export",
            tmp_path / "net.pt",
            "--input-shape",
            "1,1,8,8",
            "--exporter",
            "legacy",
            "--out",
            tmp_path / "ts.onnx",
        ).exit_code
        == 0
    )
    res = run(
        "export", f"{tmp_path / 'net.py'}:broken", "--input-shape", "1,1,8,8", "--out", tmp_path / "b.onnx"
    )
    assert res.exit_code == 2 and "returned int, not a torch.nn.Module" in res.output
    assert not (tmp_path / "b.onnx").exists()
    res = run("export", f"{tmp_path / 'net.py'}:build", "--out", tmp_path / "c.onnx")
    assert res.exit_code == 2 and "--input-shape is needed" in res.output


def test_export_sklearn_pickle_without_zipmap(tmp_path):
    import pickle

    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    import onnx_explain as oe

    x, y = load_iris(return_X_y=True)
    est = LogisticRegression(max_iter=500).fit(x, y)
    (tmp_path / "clf.pkl").write_bytes(pickle.dumps(est))
    res = run("export", tmp_path / "clf.pkl", "--out", tmp_path / "clf.onnx")
    assert res.exit_code == 0, res.output
    m = oe.load(tmp_path / "clf.onnx")
    assert all(o.kind == "tensor" for o in m.outputs)  # probabilities as a tensor, no ZipMap
    np.testing.assert_allclose(
        m.predict(x[:5].astype(np.float32)), est.predict_proba(x[:5]), rtol=1e-4, atol=1e-5
    )


def test_export_keras_without_tensorflow_says_so(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("tensorflow is installed here: the missing-extra message cannot be shown")
    (tmp_path / "m.keras").write_bytes(b"x")
    res = run("export", tmp_path / "m.keras", "--out", tmp_path / "k.onnx")
    assert res.exit_code == 2
    assert (
        res.output.strip()
        == "error: exporting Keras models needs the 'keras' extra: pip install 'onnx-explain[keras]'"
    )


def test_audit_report(tmp_path):
    import hashlib

    out = tmp_path / "audit"
    res = run("audit", DIGITS, SAMPLES / "digits.npy", "--out", out, "--method", "gradient", "--method", "lrp",
              "--metric", "deletion", "--metric", "pixel_flipping")  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads((out / "report.json").read_text())
    assert d["sha256"] == hashlib.sha256(DIGITS.read_bytes()).hexdigest()
    assert d["conversion"]["parity"]["passed"] is True
    assert d["lrp_coverage"]["ok"] is True
    assert set(d["scores"]) == {"deletion", "pixel_flipping"}
    assert set(d["scores"]["deletion"]) == {"gradient", "lrp"}
    assert len(d["scores"]["deletion"]["lrp"]["per_item"]) == 8
    page = (out / "report.html").read_text()
    assert d["sha256"] in page and page.count("data:image/png;base64,") >= 4  # 2 heatmap panels + 2 curves


def test_audit_reports_missing_lrp_coverage_and_goes_on(tmp_path):
    import torch
    from conftest import export as export_model
    from torch import nn

    class Ratio(nn.Module):  # Div of two activations: no LRP role (a SiLU-style gate now has one)
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x) / (torch.relu(self.fc(x)) + 1.0)

    torch.manual_seed(0)
    path = export_model(Ratio().eval(), torch.randn(2, 4), tmp_path / "g.onnx", "legacy")
    np.save(tmp_path / "rows.npy", np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32))
    res = run("audit", path, tmp_path / "rows.npy", "--out", tmp_path / "a", "--metric", "faithfulness_correlation",
              "--preprocess-option", "size=null")  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "a" / "report.json").read_text())
    assert d["lrp_coverage"]["ok"] is False and "(Div)" in d["lrp_coverage"]["error"]
    assert set(d["scores"]["faithfulness_correlation"]) == {"gradient", "smoothgrad", "integrated_gradients"}


def test_explain_csv_rows_of_a_tabular_model(tmp_path):
    import onnx_explain as oe

    wine = ROOT / "models" / "wine.onnx"
    out = tmp_path / "wine"
    res = run(
        "explain",
        wine,
        SAMPLES / "wine.csv",
        "-m",
        "integrated_gradients",
        "--baseline",
        "zero",
        "--out",
        out,
        "-q",
    )
    assert res.exit_code == 0, res.output
    rows = np.loadtxt(SAMPLES / "wine.csv", delimiter=",", skiprows=1, dtype=np.float32)
    with np.load(out / "wine_row0003.npz") as z:
        np.testing.assert_allclose(z["input"], rows[3], rtol=1e-6)
        assert z["attribution"].shape == (13,)
        lib = oe.explain(oe.load(wine), rows[3:4], "integrated_gradients", baseline="zero")
        np.testing.assert_allclose(
            z["attribution"], lib.attribution[0], rtol=1e-4, atol=1e-6 * np.abs(lib.attribution).max()
        )
    assert len(list(out.glob("*_bars.png"))) == 8


def test_explain_top_k_writes_one_map_per_class(tmp_path):
    out = tmp_path / "top"
    res = run(
        "explain",
        DIGITS,
        SAMPLES / "digit_3_label5.png",
        "-m",
        "gradient",
        "--target",
        "top:3",
        "--out",
        out,
        "-q",
    )
    assert res.exit_code == 0, res.output
    with np.load(out / "digit_3_label5.npz") as z:
        assert z["attribution"].shape == (3, 1, 32, 32) and z["target"].shape == (3,)
        assert int(z["target"][0]) == 5  # the model's top class is the label
    rec = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert rec["png"] == [f"digit_3_label5_top{i}.png" for i in (1, 2, 3)] and len(rec["score"]) == 3
    assert all((out / p).exists() for p in rec["png"])


def test_evaluate_top_k_attributions_scores_the_top_class(tmp_path):
    att = tmp_path / "top"
    assert (
        run(
            "explain", DIGITS, SAMPLES / "digits.npy", "-m", "gradient", "-t", "top:2", "--out", att, "-q"
        ).exit_code
        == 0
    )
    d = json.loads(run("evaluate", DIGITS, "-a", att, "--metric", "deletion", "--json").output)
    ref = tmp_path / "top1"
    assert run("explain", DIGITS, SAMPLES / "digits.npy", "-m", "gradient", "--out", ref, "-q").exit_code == 0
    d1 = json.loads(run("evaluate", DIGITS, "-a", ref, "--metric", "deletion", "--json").output)
    np.testing.assert_allclose(
        list(d["metrics"]["deletion"]["per_item"].values()),
        list(d1["metrics"]["deletion"]["per_item"].values()),
        rtol=1e-6,
    )
