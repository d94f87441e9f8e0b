"""``explain --format parquet``: the rows equal the per-item files, shards are complete or absent, and
``--resume`` after a killed run writes every item exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ROOT

from onnx_explain.app.io import read_manifest
from onnx_explain.cli import main

pq = pytest.importorskip("pyarrow.parquet")

from onnx_explain.app.shards import FAILURES, read_shards, shard_paths  # noqa: E402 - needs pyarrow

DIGITS = ROOT / "models" / "digits.onnx"
SAMPLES = ROOT / "models" / "samples"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _many(tmp_path, n: int):
    x = np.load(SAMPLES / "digits.npy")
    rng = np.random.default_rng(1)
    xs = np.concatenate([x] * (n // len(x) + 1))[:n] + rng.normal(0, 0.05, (n, *x.shape[1:]))
    path = tmp_path / "many.npy"
    np.save(path, xs.astype(np.float32))
    return path


def test_parquet_rows_equal_the_files_of_the_same_job(tmp_path):
    inputs = [SAMPLES / "digits.npy", SAMPLES / "digit_0_label8.png", SAMPLES / "digit_1_label6.png"]
    job = ["-m", "smoothgrad", "--samples", "4", "--seed", "5", "-q", "--heatmaps", "none"]
    res = run("explain", DIGITS, *inputs, *job, "--out", tmp_path / "f")
    assert res.exit_code == 0, res.output
    res = run(
        "explain", DIGITS, *inputs, *job, "--out", tmp_path / "p", "--format", "parquet", "--shard-rows", "4"
    )
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"10 explained, 0 skipped, 0 failed -> {tmp_path / 'p'}"
    assert [p.name for p in shard_paths(tmp_path / "p")] == ["part-00000.parquet", "part-00001.parquet",
                                                           "part-00002.parquet"]  # fmt: skip
    assert not list((tmp_path / "p").glob("*.npz")) and not (tmp_path / "p" / "manifest.jsonl").exists()
    rows = read_shards(tmp_path / "p")
    manifest = read_manifest(tmp_path / "f" / "manifest.jsonl")
    assert [r["item"] for r in rows] == list(manifest)  # input order, the same ids
    for r in rows:
        assert r["source"] == manifest[r["item"]]["source"] and r["method"] == "smoothgrad"
        assert r["requested_target"] == "predicted"
        with np.load(tmp_path / "f" / f"{r['item']}.npz") as z:
            # the same computation written two ways: bit for bit
            np.testing.assert_array_equal(r["attribution"], z["attribution"])
            assert r["attribution"].dtype == z["attribution"].dtype == np.float32
            np.testing.assert_array_equal(r["input"], z["input"])
            assert r["target"] == z["target"].tolist() == manifest[r["item"]]["target"]
            np.testing.assert_array_equal(r["score"], np.atleast_1d(z["score"]))
            assert r["options"] == json.loads(str(z["options"]))
            extras = {k[len("extra_") :]: z[k].tolist() for k in z.files if k.startswith("extra_")}
            assert r["extras"] == extras
    # pyarrow reads the folder as one dataset (the hidden temporaries and _failures.jsonl are skipped)
    import pyarrow.dataset as ds

    assert ds.dataset(tmp_path / "p", format="parquet").count_rows() == 10
    # and `evaluate` scores the shards as it scores the files
    reports = []
    for d in ("f", "p"):
        res = run(
            "evaluate",
            DIGITS,
            "-a",
            tmp_path / d,
            "--metric",
            "deletion",
            "--metric",
            "total_variation",
            "--json",
        )
        assert res.exit_code == 0, res.output
        reports.append(json.loads(res.output)["metrics"])
    assert reports[0]["deletion"]["per_item"] == reports[1]["deletion"]["per_item"]
    assert len(reports[1]["total_variation"]["per_item"]) == 10
    assert reports[0]["total_variation"]["per_item"] == reports[1]["total_variation"]["per_item"]


_KILL_IN_SECOND_SHARD = textwrap.dedent(
    """
    import os, signal, sys
    import pyarrow.parquet as pq
    real = pq.write_table
    calls = []

    def dying(table, where, **kw):  # the second shard: half its bytes reach the disk, then kill -9
        calls.append(where)
        if len(calls) == 2:
            real(table, where, **kw)
            data = open(where, "rb").read()
            open(where, "wb").write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return real(table, where, **kw)

    pq.write_table = dying
    from onnx_explain.cli import main
    main(sys.argv[1:])
    """
)


def test_a_writer_killed_mid_shard_leaves_no_partial_shard_and_resume_writes_each_item_once(tmp_path):
    path = _many(tmp_path, 30)
    out = tmp_path / "o"
    job = [str(DIGITS), str(path), "-m", "gradient", "--out", str(out), "-q", "--format", "parquet",
           "--shard-rows", "8"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", _KILL_IN_SECOND_SHARD, "explain", *job], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert [p.name for p in shard_paths(out)] == ["part-00000.parquet"]  # the half-written one is not there
    assert len(list(out.glob(".part-00001.parquet.*.tmp"))) == 1  # it was a hidden temporary
    first = pq.read_table(out / "part-00000.parquet")
    assert first.num_rows == 8
    stamp = os.stat(out / "part-00000.parquet").st_mtime_ns

    res = run("explain", *job)  # without --resume: refused, nothing touched
    assert res.exit_code == 2 and "use --resume" in res.output
    res = run("explain", *job, "--resume")
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"22 explained, 8 skipped, 0 failed -> {out}"
    assert os.stat(out / "part-00000.parquet").st_mtime_ns == stamp  # not rewritten
    assert not list(out.glob(".*.tmp"))
    rows = read_shards(out)
    names = [r["item"] for r in rows]
    assert sorted(names) == [f"many_{i:03d}" for i in range(30)] and len(set(names)) == 30  # each once
    assert [p.name for p in shard_paths(out)] == [f"part-{i:05d}.parquet" for i in range(4)]
    res = run("explain", *job, "--resume")
    assert res.output.strip() == f"0 explained, 30 skipped, 0 failed -> {out}"
    assert len(shard_paths(out)) == 4

    import onnx_explain as oe

    xs = np.load(path)
    lib = oe.explain(oe.load(DIGITS), xs, "gradient")  # before and after the kill: as the library explains it
    got = {r["item"]: r["attribution"] for r in rows}
    np.testing.assert_allclose(np.stack([got[f"many_{i:03d}"] for i in range(30)]), lib.attribution, rtol=1e-5,
                               atol=1e-7)  # fmt: skip


def test_failures_go_to_their_own_file_and_are_retried_on_resume(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not a png")
    np.save(folder / "ok.npy", np.load(SAMPLES / "digits.npy")[:2])
    out = tmp_path / "o"
    res = run("explain", DIGITS, folder, "-m", "gradient", "--out", out, "-q", "--format", "parquet")
    assert res.exit_code == 1 and "2 explained, 0 skipped, 1 failed" in res.output
    failures = [json.loads(line) for line in (out / FAILURES).read_text().splitlines()]
    assert [(f["item"], f["status"]) for f in failures] == [("broken", "error")]
    assert [r["item"] for r in read_shards(out)] == ["ok_000", "ok_001"]
    res = run(
        "explain", DIGITS, folder, "-m", "gradient", "--out", out, "-q", "--format", "parquet", "--resume"
    )
    assert "0 explained, 2 skipped, 1 failed" in res.output


def test_parquet_without_pyarrow_is_one_line(tmp_path, monkeypatch):
    for mod in ("pyarrow", "pyarrow.parquet"):
        monkeypatch.setitem(sys.modules, mod, None)  # import raises ImportError
    out = tmp_path / "o"
    res = run(
        "explain", DIGITS, SAMPLES / "digits.npy", "-m", "gradient", "--out", out, "--format", "parquet"
    )
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "error: --format parquet needs pyarrow: pip install pyarrow (or pip install 'onnx-explain[ray]')"
    ]
    assert not out.exists()


def test_a_worker_call_becomes_shards_named_by_run_and_position_cut_at_the_byte_bound(tmp_path):
    from onnx_explain.app.shards import rows_per_call, write_worker_shards

    # a call holds at most shard_rows items and about 256 MB of inputs and attributions
    assert rows_per_call(10_000, (None, 1, 32, 32)) == 10_000
    assert rows_per_call(10_000, (None, 3, 224, 224)) == 256 * 2**20 // (2 * 3 * 224 * 224 * 4) == 222
    assert rows_per_call(10_000, ("batch", "seq")) == 10_000 and rows_per_call(5, (None, 10**9)) == 1

    def row(name):
        return {"item": name, "source": "s", "attribution": np.full((4, 4), float(name[1:]), np.float32),
                "input": np.zeros((4, 4), np.float32)}  # fmt: skip

    names = [f"i{k}" for k in range(7)]
    records = [row(n) for n in names[:3]] + [{"item": "i3", "status": "error", "error": "bad"}]
    records += [row(n) for n in names[4:]]
    positions = {n: 40 + k for k, n in enumerate(names)}
    # 128 bytes per row: a shard is cut once it holds 300 bytes, i.e. after 3 rows
    back = write_worker_shards(tmp_path, 2, records, positions, shard_bytes=300)
    assert [p.name for p in shard_paths(tmp_path)] == [
        "part-00002-000000040.parquet",
        "part-00002-000000044.parquet",
    ]
    assert [r["item"] for r in back] == names  # the call's order, the failure in its place
    assert back[3] == records[3] and all(
        set(r) == {"item", "status", "shard"} for i, r in enumerate(back) if i != 3
    )
    assert [r["shard"] for r in back if r["status"] == "ok"] == ["part-00002-000000040.parquet"] * 3 + [
        "part-00002-000000044.parquet"
    ] * 3
    rows = read_shards(tmp_path)
    assert [r["item"] for r in rows] == [n for n in names if n != "i3"]
    assert all(float(r["attribution"][0, 0]) == float(r["item"][1:]) for r in rows)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
