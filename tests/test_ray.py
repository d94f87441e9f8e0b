"""``explain --engine ray`` on a local Ray instance: the local engine's results for the same seed, a worker
that dies mid-run is replaced and its batch retried with every item recorded exactly once, resume, and
one-line errors."""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ROOT

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from onnx_explain.app.ray_engine import RayWorker, explain_ray  # noqa: E402 - needs ray

DIGITS = ROOT / "models" / "digits.onnx"
SAMPLES = ROOT / "models" / "samples"
JOB = {"method": "smoothgrad", "n_samples": 4, "sigma": 0.2, "seed": 7, "heatmaps": "none"}


def run(*args):
    from onnx_explain.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


class _DiesOnceAfterWriting(RayWorker):
    """The first batch of the run writes its items' files, then its worker process dies before handing the
    records back (a kill -9 mid-run): Ray starts a new actor and retries the batch."""

    def __call__(self, batch):
        out = super().__call__(batch)
        try:
            os.close(os.open(Path(self.config["out_dir"]).parent / "died", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return out
        os._exit(1)


class _TakesOnlyReadItems(RayWorker):
    """Fails the run if an item reaches the explaining actor undecoded: reading is the read stage's job."""

    def __call__(self, batch):
        for blob in batch["items"]:
            for it in pickle.loads(blob):
                decoded = type(it.x) is np.ndarray and (it.kind != "image" or it.image is not None)
                assert it.error is not None or decoded, f"{it.name} reached the worker unread"
        return super().__call__(batch)


@pytest.fixture(scope="module")
def local_ray():
    # test classes travel to the workers by value (the tests folder is not importable there)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """40 items explained by the local engine."""
    import onnx_explain as oe
    from onnx_explain.app.batch import explain_files

    d = tmp_path_factory.mktemp("ref")
    x = np.load(SAMPLES / "digits.npy")
    xs = np.concatenate([x] * 5) + np.random.default_rng(2).normal(0, 0.05, (40, *x.shape[1:]))
    np.save(d / "many.npy", xs.astype(np.float32))
    job = dict(JOB)
    summary = explain_files(
        oe.load(DIGITS), [d / "many.npy"], d / "local", job.pop("method"), group=16, **job
    )
    assert summary["ok"] == 40
    return d


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow  # a worker killed mid-run: Ray restarts actors (30 s)
def test_ray_equals_local_and_a_dead_worker_loses_and_repeats_nothing(local_ray, reference, tmp_path):
    out = tmp_path / "ray"
    job = dict(JOB)
    summary = explain_ray(DIGITS, [reference / "many.npy"], out, job.pop("method"), workers=2, group=6,
                          worker_cls=_DiesOnceAfterWriting, **job)  # fmt: skip
    assert (tmp_path / "died").exists()  # a worker did die
    assert (summary["ok"], summary["failed"]) == (40, 0)
    local = _lines(reference / "local" / "manifest.jsonl")
    got = _lines(out / "manifest.jsonl")
    assert [r["item"] for r in got] == [r["item"] for r in local]  # each item exactly once, in input order
    assert [r["target"] for r in got] == [r["target"] for r in local]
    assert not list(out.glob(".*.tmp"))
    for r in local:
        with np.load(reference / "local" / r["npz"]) as a, np.load(out / r["npz"]) as b:
            np.testing.assert_array_equal(b["input"], a["input"])
            # SmoothGrad's draws are per sample: batches of 6 on Ray equal batches of 16 here up to rounding
            np.testing.assert_allclose(b["attribution"], a["attribution"], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(b["score"], a["score"], rtol=1e-6)
    res = explain_ray(DIGITS, [reference / "many.npy"], out, JOB["method"], resume=True,
                      **{k: v for k, v in JOB.items() if k != "method"})  # fmt: skip
    assert (res["ok"], res["skipped"]) == (0, 40)
    assert len(_lines(out / "manifest.jsonl")) == 40


def test_ray_from_the_command_line_writes_the_local_rows_as_parquet(local_ray, reference, tmp_path):
    import pyarrow.parquet as pq

    import onnx_explain as oe
    from onnx_explain.app.io import Preprocess, read_items
    from onnx_explain.app.shards import FAILURES, read_shards

    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a png")  # found unreadable by the worker that decodes it
    out = tmp_path / "p"
    res = run("explain", DIGITS, reference / "many.npy", bad, "--engine", "ray", "--workers", "1", "-m", "smoothgrad",
              "--samples", "4", "--sigma", "0.2", "--seed", "7", "--heatmaps", "none", "--format", "parquet",
              "--shard-rows", "16", "--out", out, "-q")  # fmt: skip
    assert res.exit_code == 1, res.output
    model = oe.load(DIGITS)
    (local_error,) = [it.error for it in read_items([bad], Preprocess.from_model(model.input), model.input)]
    assert res.output.splitlines()[0] == f"40 explained, 0 skipped, 1 failed -> {out}"
    assert f"error: {local_error}" in res.output.splitlines()  # reported as the local engine reports it
    assert [json.loads(line)["item"] for line in (out / FAILURES).read_text().splitlines()] == ["broken"]
    rows = read_shards(out)
    assert [pq.read_table(p).num_rows for p in sorted(out.glob("part-*.parquet"))] == [16, 16, 8]
    local = _lines(reference / "local" / "manifest.jsonl")
    assert [r["item"] for r in rows] == [r["item"] for r in local]
    for r in rows:
        with np.load(reference / "local" / f"{r['item']}.npz") as a:
            np.testing.assert_allclose(r["attribution"], a["attribution"], rtol=1e-5, atol=1e-7)
            assert r["target"] == a["target"].tolist()


def test_images_and_rows_are_read_by_the_read_stage_and_equal_the_local_engine(
    local_ray, reference, tmp_path
):
    from PIL import Image

    import onnx_explain as oe
    from onnx_explain.app.batch import explain_files

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for k in range(5):
        Image.fromarray((rng.random((40, 40)) * 255).astype(np.uint8)).save(folder / f"p{k}.png")
    inputs = [folder, reference / "many.npy"]
    local = explain_files(oe.load(DIGITS), inputs, tmp_path / "local", "gradient", heatmaps="none")
    res = explain_ray(DIGITS, inputs, tmp_path / "ray", "gradient", workers=1, readers=2, group=4,
                      heatmaps="none", worker_cls=_TakesOnlyReadItems)  # fmt: skip
    assert (res["ok"], res["failed"]) == (local["ok"], 0) == (45, 0)
    (worker,) = res["workers"]  # one actor: its set-up, and its busy time inside its calls, within them
    assert (
        worker["items"] == 45
        and worker["setup_s"] > 0
        and 0 < worker["busy_s"] <= worker["last"] - worker["first"] + 1e-6
    )
    want = _lines(tmp_path / "local" / "manifest.jsonl")
    assert [r["item"] for r in _lines(tmp_path / "ray" / "manifest.jsonl")] == [r["item"] for r in want]
    for r in want:
        with np.load(tmp_path / "local" / r["npz"]) as a, np.load(tmp_path / "ray" / r["npz"]) as b:
            np.testing.assert_array_equal(b["input"], a["input"])
            np.testing.assert_allclose(b["attribution"], a["attribution"], rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # a worker killed mid-run: Ray restarts actors (30 s)
def test_parquet_on_ray_is_written_by_the_workers_each_item_once(local_ray, reference, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from onnx_explain.app import shards

    def items_of(path):
        return pq.read_table(path, columns=["item"]).column("item").to_pylist()

    came_back = []
    record = shards.WorkerShardSink.record
    monkeypatch.setattr(
        shards.WorkerShardSink, "record", lambda self, rec: (came_back.append(rec), record(self, rec))
    )
    out = tmp_path / "p"
    job = dict(JOB)
    method = job.pop("method")
    res = explain_ray(DIGITS, [reference / "many.npy"], out, method, workers=2, format="parquet", shard_rows=16,
                      worker_cls=_DiesOnceAfterWriting, **job)  # fmt: skip
    assert (tmp_path / "died").exists()  # a worker died after writing its shard; its call was retried
    assert (res["ok"], res["failed"]) == (40, 0)
    assert len(came_back) == 40 and not any(isinstance(v, np.ndarray) for r in came_back for v in r.values())
    local = _lines(reference / "local" / "manifest.jsonl")
    paths = shards.shard_paths(out)
    counts = [len(items_of(p)) for p in paths]
    assert max(counts) <= 16 and sum(counts) == 40
    # part-<run>-<position of its first item>: the positions follow from the rows before
    assert [p.name for p in paths] == [f"part-00000-{sum(counts[:i]):09d}.parquet" for i in range(len(paths))]
    rows = shards.read_shards(out)
    assert [r["item"] for r in rows] == [r["item"] for r in local]  # each item once, in input order
    for r in rows:
        with np.load(reference / "local" / f"{r['item']}.npz") as a:
            np.testing.assert_allclose(r["attribution"], a["attribution"], rtol=1e-5, atol=1e-7)
    lost = items_of(paths[1])
    paths[1].unlink()  # as if that shard had never been renamed into place
    res = explain_ray(DIGITS, [reference / "many.npy"], out, method, resume=True, format="parquet",
                      shard_rows=16, **job)  # fmt: skip
    assert (res["ok"], res["skipped"]) == (len(lost), 40 - len(lost))
    assert [p.name for p in shards.shard_paths(out)][-1] == "part-00001-000000000.parquet"  # the next run
    assert sorted(r["item"] for r in shards.read_shards(out)) == sorted(r["item"] for r in local)
    # the worker-written shards evaluate, on Ray too, as the local per-item files do
    import onnx_explain as oe
    from onnx_explain.app.batch import evaluate_dir

    model = oe.load(DIGITS)
    want = evaluate_dir(model, reference / "local", ["deletion"])["metrics"]["deletion"]["per_item"]
    for how in (None, {"model": DIGITS, "workers": 1, "group": 16}):
        got = evaluate_dir(model, out, ["deletion"], ray=how)["metrics"]["deletion"]["per_item"]
        assert sorted(got) == sorted(want)
        np.testing.assert_allclose([got[n] for n in want], list(want.values()), rtol=1e-4, atol=1e-6)


def test_evaluate_on_ray_equals_the_local_report(local_ray, reference):
    import onnx_explain as oe
    from onnx_explain.app.batch import evaluate_dir

    model = oe.load(DIGITS)
    metrics = ["deletion", "pixel_flipping", "total_variation"]
    local = evaluate_dir(model, reference / "local", metrics)
    # groups of 16: 3 calls, in input order
    on_ray = evaluate_dir(
        model, reference / "local", metrics, ray={"model": DIGITS, "workers": 1, "group": 16}
    )
    assert on_ray["items"] == local["items"] and len(local["items"]) == 40
    for m in metrics:
        a, b = local["metrics"][m], on_ray["metrics"][m]
        assert list(b["per_item"]) == list(a["per_item"])
        np.testing.assert_allclose(
            list(b["per_item"].values()), list(a["per_item"].values()), rtol=1e-6, atol=1e-9
        )
        np.testing.assert_allclose(b["mean"], a["mean"], rtol=1e-6)
        assert (b["higher_is_better"], b["score"]) == (a["higher_is_better"], a["score"])
        if "curves" in a:
            for n in a["curves"]:
                np.testing.assert_allclose(b["curves"][n], a["curves"][n], rtol=1e-6, atol=1e-9)
    res = run("evaluate", DIGITS, "-a", reference / "local", "--metric", "infidelity", "--engine", "ray")
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "error: --engine ray evaluates metrics without random draws or an explainer; 'infidelity' has them "
        "(its scores would depend on the grouping): evaluate it with --engine local"
    ]


def test_a_pool_the_cluster_cannot_place_is_refused_not_waited_for(local_ray, tmp_path):
    from onnx_explain.errors import OnnxExplainError

    x = [SAMPLES / "digits.npy"]
    with pytest.raises(
        OnnxExplainError, match=r"^1 worker\(s\) × --gpus-per-worker 1 need 1 GPUs; the Ray cluster has 0 "
    ):
        explain_ray(DIGITS, x, tmp_path / "g", "gradient", workers=1, gpus_per_worker=1, device="cuda")
    with pytest.raises(
        OnnxExplainError, match=r"^3 worker\(s\) × --cpus-per-worker 1 need 3 CPUs; the Ray cluster has 2 "
    ):
        explain_ray(DIGITS, x, tmp_path / "c", "gradient", workers=3)
    assert not (tmp_path / "g").exists() and not (tmp_path / "c").exists()  # nothing written


def test_engine_errors_are_one_line(tmp_path, monkeypatch):
    x = SAMPLES / "digits.npy"
    res = run("explain", DIGITS, x, "-m", "gradient", "--out", tmp_path / "a", "--workers", "2")
    assert res.exit_code == 2 and "need --engine ray" in res.output
    res = run(
        "explain",
        DIGITS,
        x,
        "-m",
        "gradient",
        "--out",
        tmp_path / "b",
        "--engine",
        "ray",
        "--address",
        "127.0.0.1:1",
    )  # fmt: skip  (nothing listens on port 1: refused at once)
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [
        "error: cannot reach the Ray cluster at 127.0.0.1:1: Connection refused"
    ]
    assert not (tmp_path / "b").exists()
    monkeypatch.setitem(sys.modules, "ray", None)
    res = run("explain", DIGITS, x, "-m", "gradient", "--out", tmp_path / "c", "--engine", "ray")
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "error: --engine ray needs Ray Data: pip install 'onnx-explain[ray]' (or pip install 'ray[data]')"
    ]
    assert not (tmp_path / "c").exists()
