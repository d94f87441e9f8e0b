"""The command line: help everywhere, a lazy import, exact outputs, one-line errors with exit status 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys

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


def test_readme_main_job_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart\s+```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(block) == 2, "the quickstart holds exactly two commands"
    main_job = block[0].split("&&", 1)[1].strip()
    assert main_job == "onnx-explain info models/digits.onnx"
    out = subprocess.run(main_job.split(), capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "-> OK" in out.stdout


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


def test_info_no_convert_skips_torch():
    d = json.loads(run("info", DIGITS, "--json", "--no-convert").output)
    assert "conversion" not in d


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
