"""``explain --engine ray``: the batch run of :func:`onnx_explain.app.batch.explain_files` on a Ray cluster
(``pip install 'onnx-explain[ray]'``), for datasets beyond one machine.

The driver lists the items exactly as the local engine does (:func:`~onnx_explain.app.io.read_items`,
lazily: no pixel is read), skips those an earlier run finished (``resume``) and hands their descriptions
(file, row, name: :func:`~onnx_explain.app.io.shippable`) to a Ray Data pipeline of two stages:

1. **read** (:func:`read_stage`, Ray tasks, ``compute=ray.data.TaskPoolStrategy(size=readers)``): each
   item read and decoded as the local engine reads it (images decoded and preprocessed, ``.npy`` rows read
   from the file, texts as they are), so decoding runs beside the explaining, not inside it;
2. **explain** (``compute=ray.data.ActorPoolStrategy(size=workers)``): :class:`RayWorker` actors, each of
   which loads and converts the model once, pins torch and onnxruntime to its ``num_cpus`` threads,
   explains the items of a call (``group`` of them; a shard's worth with ``parquet``) ``group`` at a time
   with the local engine's code and returns one record per item.

Results therefore equal the local engine's for the same seed (a sample's result does not depend on its
batch, docs/methods.md §1.2), up to float rounding.

Outputs are idempotent, so a run that dies is resumed by running it again with ``resume``:

* ``files``: each worker writes its items' files atomically (the output folder must be visible to every
  node: a shared file system); the driver alone appends the manifest line of an item once its record
  comes back, once per item, so a task that Ray retries after a worker died rewrites identical files and
  records nothing twice;
* ``parquet``: each worker call takes up to a shard's worth of items (:func:`~onnx_explain.app.shards.rows_per_call`)
  and writes their rows as a shard itself (:func:`~onnx_explain.app.shards.write_worker_shards`); only
  item names, shard names and failures come back to the driver, which writes ``_failures.jsonl``.

``evaluate --engine ray`` (:func:`evaluate_ray`) scores groups of items of an output folder on
:class:`RayEvaluator` actors (onnxruntime only), for the metrics that draw no random numbers, whose
per-item scores do not depend on the grouping.

Ray restarts a dead actor and retries its task (Ray Data's defaults for actor pools); an error inside a
task is not retried: per-item errors are caught in the worker and reported like the local engine's.
"""

from __future__ import annotations

import os
import pickle
import socket
import time
import warnings
from pathlib import Path

import numpy as np

from ..errors import OnnxExplainError
from .io import Preprocess, load_item, read_items, shippable
from .job import CollectSink, EvaluateJob, ExplainJob, Run, make_sink, one_line
from .results import attribution_names


def require_ray():
    """The ``ray`` module with Ray Data, or a one-line error naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise OnnxExplainError(
            "--engine ray needs Ray Data: pip install 'onnx-explain[ray]' (or pip install 'ray[data]')"
        ) from None
    return ray


def connect(address: str | None = None, quiet: bool = True) -> bool:
    """Join the Ray cluster at ``address`` (``None``: ``RAY_ADDRESS`` or a new local instance), unless
    this process already joined one. Returns whether it joined (then :func:`explain_ray` leaves it)."""
    ray = require_ray()
    if address and address != "auto":
        _probe(address)
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=not quiet, logging_level="ERROR")
    except Exception as exc:  # noqa: BLE001 - ConnectionError, ValueError, Ray's own: one line, exit 2
        where = f"at {address}" if address else "(local)"
        raise OnnxExplainError(f"cannot reach the Ray cluster {where}: {one_line(exc)}") from None
    return True


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast on an address nobody listens at (``ray.init`` itself retries for minutes)."""
    import socket

    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise OnnxExplainError(f"--address takes HOST:PORT or ray://HOST:PORT, not {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise OnnxExplainError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or type(exc).__name__}"
        ) from None


def read_stage(batch: dict, prep: Preprocess) -> dict:
    """The read stage (a Ray task): every item of each row's ``items`` (a pickled list of descriptions,
    one worker call's worth) read and decoded with :func:`~onnx_explain.app.io.load_item`; an unreadable
    one carries its error, as locally."""
    out = np.empty(len(batch["items"]), dtype=object)  # bytes as objects, not a fixed-width array
    out[:] = [pickle.dumps([load_item(it, prep) for it in pickle.loads(b)]) for b in batch["items"]]
    return {"k": batch["k"], "items": out}


class RayWorker:
    """A Ray Data actor: the model loaded (and converted, for torch methods) once, then ``group`` items
    per call (read by :func:`read_stage`) explained and written as the local engine would. Returns
    ``{"record": [pickled record]}``, one per item of the batch, in the batch's order."""

    config: dict = {}  # set on the subclass that a run makes (see _execute)

    def __init__(self, config: dict | None = None):
        born = time.time()  # wall clock: comparable with the driver's and the other workers' on one machine
        config = self.config if config is None else config
        threads = max(1, int(config["threads"]))
        # pinned before onnxruntime and torch start their pools: N workers on N cores, not N × N threads
        os.environ["ONNX_EXPLAIN_THREADS"] = str(threads)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
        import torch

        torch.set_num_threads(threads)
        from ..model import load
        from ..runtime import resolve_device

        self.config = config
        torch_device, ort_device = resolve_device(config["device"])
        self.model = load(config["model"], device=ort_device, **config["load"])
        self.job = config["job"].on_device(torch_device)
        if self.job.spec.backend == "torch":  # converted once per actor, not per batch
            from ..explainer import converted

            converted(self.model, torch_device, self.job.output)
        self.prep = Preprocess.from_model(self.model.input, config["preprocess"])
        self.encoder = self.job.encoder(self.model)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.setup = (born, time.time())  # imports, load, conversion and its parity check

    def __call__(self, batch: dict) -> dict:
        start = time.time()
        records = []
        for first, blob in zip(batch["k"], batch["items"], strict=True):  # one row per call, as the run asks
            records += self._explain(int(first), pickle.loads(blob))
        out = np.empty(len(records), dtype=object)  # bytes as objects, not a fixed-width array
        out[:] = [pickle.dumps(r) for r in records]
        timing = np.empty(len(records), dtype=object)  # the call's, on its first row (columns share a length)
        if len(records):
            timing[0] = {
                "worker": self.worker,
                "setup": self.setup,
                "call": (start, time.time()),
                "items": len(records),
            }
        return {"record": out, "timing": timing}

    def _explain(self, first: int, chunk: list) -> list[dict]:
        """The records of ``chunk``, the items at positions ``first``, ``first + 1`` ... of the run."""
        run = Run(Path(self.config["out_dir"]), self.model, self.prep.layout, writers=0, sink=CollectSink())
        run.encoder = self.encoder
        try:
            good = run.readable(chunk)
            step = self.config.get("group") or len(good) or 1  # a parquet call can hold a shard's worth
            for i in range(0, len(good), step):
                run.explain_chunk(good[i : i + step], self.job)
        finally:
            run.close()
        records = run.sink.records
        if self.config.get("shards"):  # --format parquet: this worker writes its rows, the driver gets names
            from .shards import write_worker_shards

            positions = {it.name: first + i for i, it in enumerate(chunk)}
            records = write_worker_shards(
                self.config["out_dir"], self.config["shards"]["run"], records, positions
            )
        return records


def explain_ray(
    model,
    inputs,
    out_dir,
    method: str = "smoothgrad",
    target=None,
    *,
    load_options: dict | None = None,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: int = 1,
    gpus_per_worker: float = 0,
    readers: int | None = None,
    device: str = "cpu",
    resume: bool = False,
    preprocess: dict | None = None,
    quiet: bool = True,
    group: int = 16,
    shard_rows: int | None = None,
    worker_cls=None,
    driver_model=None,
    **options,
) -> dict:
    """Explain every item of ``inputs`` into ``out_dir`` on Ray; outputs, ``resume`` and the returned
    summary are those of :func:`~onnx_explain.app.batch.explain_files` (same arguments: what each item gets,
    ``output``, ``batch_size``, ``seed``, ``heatmap``, ``heatmaps``, ``compress``, ``format``, ``tokenizer``,
    ``max_length`` and the method's options, goes through ``options`` into the one
    :class:`~onnx_explain.app.job.ExplainJob` the workers execute).

    Parameters
    ----------
    model : str or os.PathLike
        The ``.onnx`` file (a path: every worker loads it; on a cluster it must be readable on each node).
    load_options : dict, optional
        Keyword arguments of :func:`onnx_explain.load` besides ``device`` (``input``, ``output``,
        ``allow_nonfinite``).
    address : str, optional
        The Ray cluster (``ray://host:10001`` or ``host:6379``); default ``RAY_ADDRESS`` or a new local
        instance. A process that already called ``ray.init`` keeps its cluster.
    workers : int, optional
        Actors in the pool (default: the cluster's CPUs / ``cpus_per_worker``, or its GPUs /
        ``gpus_per_worker`` when GPUs are asked for).
    cpus_per_worker : int
        CPUs each actor reserves; torch and onnxruntime use that many threads.
    gpus_per_worker : float
        GPUs each actor reserves (with ``device='cuda'``).
    readers : int, optional
        Read tasks running at once (default: one per worker). They reserve no CPU: decoding is light next
        to explaining, and a reservation could leave none for them once the workers hold every CPU.
    device : {'cpu', 'cuda', 'auto'}
        Resolved on each worker (the driver needs no GPU).
    worker_cls : type, optional
        A subclass of :class:`RayWorker` (tests inject failures with it).
    driver_model : Model, optional
        ``model`` already loaded here (on the CPU), to list the items with; loaded when not given.

    Returns
    -------
    dict
        ``{'ok', 'failed', 'skipped', 'failures', 'workers'}``: ``workers`` lists each actor's set-up
        seconds, busy seconds (inside its calls), items and the wall-clock bounds of its calls
        (:func:`worker_times`).
    """
    from ..model import load

    job = ExplainJob.make(method, target, **options)  # each worker picks its device
    tokenizer, format = job.tokenizer, job.writing.format  # noqa: A001 - the CLI's --format
    if (workers is not None and workers < 1) or (readers is not None and readers < 1) or cpus_per_worker < 1 \
            or gpus_per_worker < 0:  # fmt: skip
        raise OnnxExplainError(
            "--workers, --readers and --cpus-per-worker must be at least 1, --gpus-per-worker at least 0"
        )
    ray = require_ray()
    out_dir = Path(out_dir)
    load_options = dict(load_options or {})
    # the driver lists items; workers load their own copy
    m = driver_model if driver_model is not None else load(model, device="cpu", **load_options)
    prep = Preprocess.from_model(m.input, preprocess)
    items = read_items(
        inputs, prep, m.input, [i.name for i in m.inputs], texts=tokenizer is not None, lazy=True,
        batch_first=m.signature.to_batch_first,
    )  # fmt: skip
    per_call = max(1, group)
    if format == "parquet":  # the workers write the shards (see onnx_explain.app.shards)
        from .shards import SHARD_ROWS, WorkerShardSink, rows_per_call

        sink = WorkerShardSink(out_dir, shard_rows or SHARD_ROWS)
        per_call = rows_per_call(shard_rows or SHARD_ROWS, m.input.shape)
    else:
        sink = make_sink(format, out_dir, shard_rows)
    run = Run(out_dir, m, prep.layout, writers=0, sink=sink)
    todo = run.pending(items, resume)
    config = {
        "model": str(Path(model).resolve()),
        "load": load_options,
        "device": device,
        "job": job,
        "preprocess": preprocess,
        "out_dir": str(out_dir.resolve()),
        "threads": cpus_per_worker,
        "shards": {"run": sink.next_shard} if format == "parquet" else None,
        "group": max(1, group),
    }
    joined = False
    try:
        for it in todo:
            if it.error:
                run.fail(it, it.error)
        good = [shippable(it) for it in todo if not it.error]
        if good:
            joined = connect(address, quiet)
            _execute(ray, run, good, prep, config, worker_cls or RayWorker, workers, readers, cpus_per_worker,
                     gpus_per_worker, per_call, quiet)  # fmt: skip
    finally:
        run.close()
        if joined:
            ray.shutdown()
    out_dir.mkdir(parents=True, exist_ok=True)
    return run.summary


def _quiet_data(ray, quiet: bool) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the same shards, manifest and report order as locally
    ctx.enable_progress_bars = not quiet
    if quiet:  # Ray Data announces every execution (and that progress bars are off) on stderr
        import logging

        logging.getLogger("ray.data").setLevel(logging.ERROR)


def _pool_size(ray, workers: int | None, cpus: float, gpus: float) -> int:
    """The actors to start: ``workers``, or as many as the cluster holds; refused when they cannot fit."""
    res = ray.cluster_resources()
    have = {"CPU": res.get("CPU", 0), "GPU": res.get("GPU", 0)}
    if workers is None:
        workers = max(1, int(have["GPU"] // gpus) if gpus else int(have["CPU"] // cpus))
    for kind, each in (("CPU", cpus), ("GPU", gpus)):
        # an actor pool that cannot be placed waits forever: say so instead (the cluster as it is now)
        if each and workers * each > have[kind]:
            flag = "--cpus-per-worker" if kind == "CPU" else "--gpus-per-worker"
            raise OnnxExplainError(
                f"{workers} worker(s) × {flag} {each:g} need {workers * each:g} {kind}s; the Ray cluster has "
                f"{have[kind]:g} (lower --workers or {flag})"
            )
    return workers


def _reraise(exc: BaseException):
    """A pipeline's error as one line (a RayTaskError carries the worker's exception as its cause)."""
    if isinstance(exc, OnnxExplainError):
        raise exc
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, OnnxExplainError):
        raise cause from None
    raise OnnxExplainError(f"the Ray run failed: {type(cause).__name__}: {one_line(cause)}") from None


def _execute(ray, run, good, prep, config, worker_cls, workers, readers, cpus, gpus, per_call, quiet):
    """Run the pipeline and record what comes back (each item once, in input order): ``per_call`` items
    per read task and per worker call (which explains them ``config['group']`` at a time)."""
    _quiet_data(ray, quiet)
    workers = _pool_size(ray, workers, cpus, gpus)
    # a row per worker call (``per_call`` items: a shard with --format parquet), a block per row, so that the
    # calls, and the shards, are the same however Ray bundles blocks and whenever it retries a call
    calls = [good[i : i + per_call] for i in range(0, len(good), per_call)]
    workers = min(workers, len(calls))  # an actor without a call would load and convert the model for nothing
    ds = ray.data.from_items(
        [{"k": i * per_call, "items": pickle.dumps(c)} for i, c in enumerate(calls)],
        override_num_blocks=len(calls),
    )
    ds = ds.map_batches(
        read_stage,
        fn_kwargs={"prep": prep},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=readers or workers),
        num_cpus=0,
    )
    # the configuration travels inside the class, not as constructor arguments: Ray keeps those in the object
    # store, and an actor restarted after its worker died could not be rebuilt once they are gone
    bound = type(worker_cls.__name__, (worker_cls,), {"config": config, "__module__": worker_cls.__module__})
    ds = ds.map_batches(
        bound,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus,
        num_gpus=gpus or None,
    )
    seen: set[str] = set()
    calls_timed: list[dict] = []
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            calls_timed += [t for t in batch.get("timing", ()) if t]
            for blob in batch["record"]:
                rec = pickle.loads(blob)
                if rec["item"] in seen:  # defensive: a record is kept once even if a batch came back twice
                    continue
                seen.add(rec["item"])
                run._record(rec)
                if rec.get("status") == "error":
                    run.summary["failed"] += 1
                    run.summary["failures"].append(rec["error"])
                else:
                    run.summary["ok"] += 1
    except Exception as exc:  # noqa: BLE001 - one line, see _reraise
        _reraise(exc)
    run.summary["workers"] = worker_times(calls_timed)


def worker_times(calls: list[dict]) -> list[dict]:
    """Per worker (actor), from its calls' timings: ``setup_s`` (imports, load, conversion), ``busy_s``
    (the time inside its calls: reading excluded, writing included), ``items``, and ``first``/``last``, the
    wall-clock bounds of its calls (``time.time()``). What a worker spent waiting for input is neither."""
    out = {}
    for t in calls:
        w = out.setdefault(t["worker"], {"worker": t["worker"], "setup_s": t["setup"][1] - t["setup"][0],
                                         "busy_s": 0.0, "items": 0, "first": t["call"][0], "last": t["call"][1]})  # fmt: skip
        w["busy_s"] += t["call"][1] - t["call"][0]
        w["items"] += t["items"]
        w["first"], w["last"] = min(w["first"], t["call"][0]), max(w["last"], t["call"][1])
    return sorted(out.values(), key=lambda w: w["first"])


class RayEvaluator:
    """A Ray Data actor of ``evaluate --engine ray``: the model loaded once (onnxruntime only), then the
    metrics of a group of items per call. Returns one pickled ``{"names", "results"}`` per call."""

    config: dict = {}  # set on the subclass that a run makes (see evaluate_ray)

    def __init__(self, config: dict | None = None):
        config = self.config if config is None else config
        os.environ["ONNX_EXPLAIN_THREADS"] = str(max(1, int(config["threads"])))
        from ..model import load
        from ..runtime import resolve_device

        self.config = config
        self.model = load(config["model"], device=resolve_device(config["device"])[1], **config["load"])

    def __call__(self, batch: dict) -> dict:
        job = self.config["job"]
        wanted = [self.config["names"][int(i)] for i in batch["i"]]
        names, scored = job.score(self.model, self.config["att_dir"], wanted=wanted)
        results = {}
        for metric, r in scored.items():
            results[metric] = {k: r[k] for k in ("metric", "higher_is_better", "score", "output", "scores")}
            if "curve" in r:
                results[metric]["curve"] = np.asarray(r["curve"])
        out = np.empty(1, dtype=object)
        out[0] = pickle.dumps({"names": names, "results": results})
        return {"record": out}


def evaluate_ray(att_dir, job: EvaluateJob, *, model, load_options: dict | None = None, address=None,
                 workers: int | None = None, cpus_per_worker: int = 1, device: str = "cpu", sources=None,
                 group: int = 256, quiet: bool = True, worker_cls=None) -> tuple[list[str], dict]:  # fmt: skip
    """Score the items of an ``explain`` output folder with ``job``'s metrics on Ray actors, ``group`` items
    per call (behind ``evaluate --engine ray`` and :func:`~onnx_explain.app.batch.evaluate_dir`).

    Only metrics that draw no random numbers run here (:meth:`EvaluateJob.check_groupable`): their
    per-item scores do not depend on how the items are grouped, so they equal the local evaluation's.

    Returns
    -------
    (list of str, dict)
        The items in order and, per metric, ``metric``, ``higher_is_better``, ``score``, ``output``,
        ``scores``, ``mean`` (NaN-aware) and ``curve`` when the metric draws one.
    """
    job.check_groupable()
    names = attribution_names(att_dir, sources)
    if not names:
        raise OnnxExplainError(f"{att_dir}: no finished items (from 'onnx-explain explain')")
    ray = require_ray()
    config = {"model": str(Path(model).resolve()), "load": dict(load_options or {}), "device": device,
              "threads": cpus_per_worker, "names": names, "att_dir": str(Path(att_dir).resolve()), "job": job}  # fmt: skip
    joined = connect(address, quiet)
    try:
        _quiet_data(ray, quiet)
        workers = _pool_size(ray, workers, cpus_per_worker, 0)
        cls = worker_cls or RayEvaluator
        bound = type(cls.__name__, (cls,), {"config": config, "__module__": cls.__module__})
        ds = ray.data.from_items([{"i": k} for k in range(len(names))]).map_batches(
            bound, batch_size=max(1, group), batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus_per_worker,
        )  # fmt: skip
        got: list[str] = []
        parts: dict[str, list[dict]] = {m: [] for m in job.metrics}
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for blob in batch["record"]:
                    rec = pickle.loads(blob)
                    got += rec["names"]
                    for m in job.metrics:
                        parts[m].append(rec["results"][m])
        except Exception as exc:  # noqa: BLE001 - a RayTaskError carries the worker's exception as its cause
            _reraise(exc)
    finally:
        if joined:
            ray.shutdown()
    results = {}
    for m in job.metrics:
        first = parts[m][0]
        scores = np.concatenate([np.asarray(p["scores"], dtype=np.float64) for p in parts[m]])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")
        results[m] = {**{k: first[k] for k in ("metric", "higher_is_better", "score", "output")}, "scores": scores,
                      "mean": mean}  # fmt: skip
        if "curve" in first:
            results[m]["curve"] = np.concatenate([p["curve"] for p in parts[m]])
    return got, results
