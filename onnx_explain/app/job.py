"""A batch run's per-item work, the same for both engines: the method checked once, items grouped by input
shape and explained, each item's files (or Parquet row) written by a bounded pool of writer threads, and the
sink that records finished items (the manifest, Parquet shards, or the list a Ray worker hands back).

The local engine (:func:`onnx_explain.app.batch.explain_files`) and the Ray engine
(:mod:`onnx_explain.app.ray_engine`) only schedule a :class:`Run` over their items, so their results cannot
differ."""

from __future__ import annotations

import json
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import MemoryBudgetError, OnnxExplainError, ParityError
from .io import (
    MANIFEST,
    JsonlAppender,
    atomic_save_npz,
    atomic_write_bytes,
    read_manifest,
    remove_stale_temporaries,
)

__all__ = [
    "HEATMAPS",
    "MANIFEST",
    "CollectSink",
    "EvaluateJob",
    "ExplainJob",
    "Writing",
    "ManifestSink",
    "Run",
    "make_sink",
    "method_spec",
    "model_layout",
    "one_line",
]

#: errors of the model or the job rather than of one item: on the first items they end the run (nothing
#: written); on a later input shape, only that shape's items fail
_JOB_ERRORS = (ParityError, MemoryBudgetError)
#: ``heatmaps=``: the map and the panel (input, map, colour bar), the map alone, or no images at all
HEATMAPS = ("panel", "map", "none")


@dataclass(frozen=True)
class Writing:
    """How a run writes each item's results: the heatmap settings (:func:`onnx_explain.app.viz.heat_map`),
    which images (``images``: one of :data:`HEATMAPS`), ``.npz`` compression, the output format, and the
    target as the user gave it (for Parquet rows)."""

    sign: str
    aggregate: str = "sum"
    percentile: float = 99.0
    times_input: bool = False
    overlay: bool = False
    images: str = "panel"
    compress: bool = False
    format: str = "files"
    target_spec: object = None


@dataclass(frozen=True)
class ExplainJob:
    """What an explain run does to every item, whichever engine executes it (the local engine,
    :func:`onnx_explain.app.batch.explain_files`, or Ray's workers): the method, the keyword arguments of
    :func:`onnx_explain.explain` for every group of items (``settings``), how results are written
    (:class:`Writing`) and, for texts, the tokenizer. Made and checked once by :meth:`make`, before anything
    is read or written."""

    method: str
    settings: dict = field(default_factory=dict)
    writing: Writing = None
    tokenizer: str | None = None
    max_length: int | None = None

    @classmethod
    def make(cls, method: str, target=None, *, output=None, batch_size: int = 64, seed: int = 0, device=None,
             heatmap: dict | None = None, heatmaps: str = "panel", compress: bool = False,
             format: str = "files", tokenizer=None, max_length: int | None = None, **options) -> ExplainJob:  # noqa: A002  # fmt: skip
        """The job of ``explain``'s options, checked: the method and its options, the heatmap settings
        (``heatmap``: aggregate, percentile, times_input, overlay) and ``heatmaps``; ``device`` None leaves
        the device to the engine (each Ray worker resolves its own).

        Raises
        ------
        OnnxExplainError
            An unknown method, option, heatmap setting or ``heatmaps`` value, in one line.
        """
        spec = method_spec(method)
        options = dict(options)
        max_memory = options.pop("max_memory", None)
        spec.check_options(options)
        if heatmaps not in HEATMAPS:
            raise OnnxExplainError(f"heatmaps must be one of {', '.join(HEATMAPS)}, not {heatmaps!r}")
        settings_heat = dict(heatmap or {})
        allowed = {"aggregate", "percentile", "times_input", "overlay", "sign"}
        if set(settings_heat) - allowed:
            raise OnnxExplainError(
                f"unknown heatmap settings {sorted(set(settings_heat) - allowed)}; known: {', '.join(sorted(allowed))}"
            )
        writing = Writing(**{"sign": spec.sign, **settings_heat}, images=heatmaps, compress=compress,
                          format=format, target_spec=target)  # fmt: skip
        tgt = (
            np.asarray(target) if isinstance(target, (list, np.ndarray)) else target
        )  # a tuple names an element
        settings = dict(
            target=tgt, output=output, batch_size=batch_size, seed=seed, max_memory=max_memory, **options
        )
        if device is not None:
            settings["device"] = device
        return cls(method, settings, writing, None if tokenizer is None else str(Path(tokenizer).resolve()),
                   max_length)  # fmt: skip

    @property
    def spec(self):
        """The method's registry entry."""
        return method_spec(self.method)

    @property
    def output(self) -> str:
        """The output space the method explains (the option, else the method's own)."""
        return self.settings.get("output") or self.spec.output

    def on_device(self, device: str) -> ExplainJob:
        """The same job with every item explained on ``device`` (a Ray worker's own)."""
        return replace(self, settings={**self.settings, "device": device})

    def encoder(self, model):
        """The text encoder of a job with a tokenizer (None without): ``max_length``, else the model's fixed
        sequence length."""
        if self.tokenizer is None:
            return None
        from .text import TextEncoder

        fixed = (model.input.shape or (None, None))[1:2]
        return TextEncoder(
            self.tokenizer, self.max_length or (fixed[0] if fixed and isinstance(fixed[0], int) else None)
        )


@dataclass(frozen=True)
class EvaluateJob:
    """What an evaluate run does to every group of items, whichever engine executes it (the local engine,
    :func:`onnx_explain.app.batch.evaluate_dir`, or Ray's actors): the metrics in order, each metric's own
    options (routed from the shared ones once: :func:`onnx_explain.options.route_options`) and the settings
    of :func:`onnx_explain.evaluate`. Made and checked once by :meth:`make`, before anything is read."""

    metrics: tuple
    options: dict = field(default_factory=dict)
    batch_size: int = 64
    seed: int = 0
    output: str | None = None

    @classmethod
    def make(cls, metrics, options: dict | None = None, *, batch_size: int = 64, seed: int = 0,
             output: str | None = None) -> EvaluateJob:  # fmt: skip
        """The job of ``evaluate``'s options, checked: a key of ``options`` goes to every metric that takes
        it, ``metric.key`` to that metric only.

        Raises
        ------
        OnnxExplainError
            An unknown metric, or an option no metric takes (:class:`~onnx_explain.options.UnknownOptionError`).
        """
        from ..metrics import METRICS
        from ..options import route_options

        metrics = tuple(metrics)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise OnnxExplainError(
                f"unknown metric {unknown[0]!r}; choose one of {', '.join(sorted(METRICS))}"
            )
        per_metric = route_options(options or {}, {m: METRICS[m].options for m in metrics})
        return cls(metrics, per_metric, batch_size, seed, output)

    def check_groupable(self) -> None:
        """Refuse metrics whose per-item scores depend on how items are grouped (random draws, an
        explainer): the Ray engine scores groups of items on different actors.

        Raises
        ------
        OnnxExplainError
            Naming the first such metric.
        """
        from ..metrics import METRICS

        drawn = [m for m in self.metrics if METRICS[m].takes_seed or METRICS[m].needs_explainer]
        if drawn:
            raise OnnxExplainError(
                f"--engine ray evaluates metrics without random draws or an explainer; {drawn[0]!r} has them "
                "(its scores would depend on the grouping): evaluate it with --engine local"
            )

    def score(self, model, att_dir, sources=None, wanted=None) -> tuple[list[str], dict]:
        """Score the finished items of an ``explain`` output folder (those made from ``sources``, or those
        named in ``wanted``) with every metric. Returns the item names in order and, per metric,
        :func:`onnx_explain.evaluate`'s result."""
        from ..evaluation import evaluate
        from .results import load_attributions

        names, xs, attrs, targets, companions = load_attributions(att_dir, sources, wanted)
        if companions:  # stored as batch-first rows: back to the model's layout (a state [2, B, 128])
            xs = model_layout(model, xs, companions)
        results = {
            m: evaluate(model, xs, attrs, m, target=targets, batch_size=self.batch_size, seed=self.seed,
                        output=self.output, **self.options[m])
            for m in self.metrics
        }  # fmt: skip
        return names, results


def model_layout(model, x, companions, one: bool = False) -> dict:
    """The inputs dict ``split_inputs`` takes (the model's layout) from a batch-first explained input and
    batch-first companion rows; ``one``: ``x`` and the companions are one item's rows (no batch axis)."""
    sig = model.signature
    lift = (lambda v: np.asarray(v)[None]) if one else np.asarray
    given = {model.input.name: lift(x)}
    given.update({k: sig.from_batch_first(k, lift(v)) for k, v in (companions or {}).items()})
    return given


def make_sink(format: str, out_dir, shard_rows: int | None = None):  # noqa: A002 - the CLI's --format
    """Where a run's finished items go: the manifest (``'files'``) or Parquet shards (``'parquet'``)."""
    from .shards import FORMATS, SHARD_ROWS, ParquetSink

    if format not in FORMATS:
        raise OnnxExplainError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    if format == "parquet":
        return ParquetSink(out_dir, shard_rows or SHARD_ROWS)
    return ManifestSink(out_dir)


class ManifestSink:
    """The ``files`` format's record keeping: a manifest line per item once its files are in place."""

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self.manifest = self.out_dir / MANIFEST
        self._log: JsonlAppender | None = None  # opened on the first record: a usage error leaves nothing

    def done(self, resume: bool) -> set[str]:
        """The items finished by an earlier run (with ``resume``; its temporaries are removed)."""
        if not resume:
            return set()
        records = read_manifest(self.manifest)
        remove_stale_temporaries(self.out_dir)
        return {
            n for n, r in records.items() if r.get("status") == "ok" and (self.out_dir / f"{n}.npz").exists()
        }

    def record(self, record: dict) -> None:
        if self._log is None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._log = JsonlAppender(self.manifest)
        self._log.append(record)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()


class CollectSink:
    """Keeps the records in memory (a Ray worker hands them back to the driver, which records them)."""

    def __init__(self):
        self.records: list[dict] = []

    def record(self, record: dict) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass


def method_spec(method: str):
    """The registered :class:`~onnx_explain.methods.base.MethodSpec` of ``method`` (checked before any
    item is read; an unknown name is a one-line error listing the methods)."""
    from ..methods import METHODS

    if method not in METHODS:
        raise OnnxExplainError(f"unknown method {method!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[method]


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for per-item failures."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Run:
    """One batch run's bookkeeping: the writer pool, the manifest, the summary, per-item failures.

    Finished work waits in a queue in input order: an item being written (a future of the pool) or a
    failure. The head of the queue is recorded as soon as it is done; the queue never holds more than
    ``in_flight`` items (the main thread waits for the oldest), so memory stays bounded however many items
    there are.
    """

    def __init__(self, out_dir: Path, model, layout: str, writers: int = 2, in_flight: int = 32, sink=None):
        self.out_dir, self.model, self.layout = out_dir, model, layout
        self.sink = ManifestSink(out_dir) if sink is None else sink
        self.summary = {"ok": 0, "failed": 0, "skipped": 0, "failures": []}
        self.explained = False  # a group went through: a later certification failure is per item
        self.in_flight = max(1, in_flight)
        self._pool = (
            ThreadPoolExecutor(writers, thread_name_prefix="onnx-explain-writer") if writers else None
        )
        self._queue: deque = deque()  # (item, Future | record dict | None, error message | None)
        self.encoder = None  # a TextEncoder for text items

    def pending(self, items, resume: bool) -> list:
        """The items still to do (with ``resume``, those finished in an earlier run are skipped and the
        temporary files of its interrupted writes removed)."""
        done = self.sink.done(resume)
        todo = []
        for it in items:
            if it.name in done:
                self.summary["skipped"] += 1
            else:
                todo.append(it)
        return todo

    def fail(self, it, msg: str) -> None:
        self._queue.append((it, None, msg))
        self._harvest()

    def submit(self, it, fn, *args) -> None:
        """Write one item with ``fn(*args)`` (returning its manifest record) on the pool."""
        if self._pool is None:
            try:
                self._queue.append((it, fn(*args), None))
            except Exception as exc:  # noqa: BLE001 - reported per item
                self._queue.append((it, None, _write_error(it, exc)))
        else:
            self._queue.append((it, self._pool.submit(fn, *args), None))
        self._harvest(self.in_flight)

    def _harvest(self, keep: int | None = None) -> None:
        """Record the finished items at the head of the queue, in input order; with ``keep``, also wait
        for the oldest ones until at most ``keep`` remain."""
        while self._queue:
            it, job, err = self._queue[0]
            if isinstance(job, Future):
                if not job.done() and (keep is None or len(self._queue) <= keep):
                    return
                try:
                    job = job.result()
                except Exception as exc:  # noqa: BLE001 - a writer's error is this item's failure
                    err = _write_error(it, exc)
            self._queue.popleft()
            it.x = it.image = it.companions = None  # written: the item's arrays are no longer needed
            if err is None:
                self._record(job)
                self.summary["ok"] += 1
            else:
                self._record({"item": it.name, "source": it.source, "status": "error", "error": err})
                self.summary["failed"] += 1
                self.summary["failures"].append(err)

    def _record(self, record: dict) -> None:
        self.sink.record(record)

    def close(self) -> None:
        """Wait for every writer, record every item, stop the pool, sync the manifest."""
        try:
            self._harvest(0)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self.sink.close()

    def readable(self, chunk) -> list:
        """The items of ``chunk`` that were read and fit the model; the others are reported."""
        good = []
        for it in chunk:
            if it.error:
                self.fail(it, it.error)
                continue
            if it.kind == "text":
                good.append(it)
                continue
            try:
                x, comp = self.model.split_inputs(model_layout(self.model, it.x, it.companions, one=True))
                it.x, it.companions = x[0], {k: v[0] for k, v in comp.items()}
                good.append(it)
            except Exception as exc:  # noqa: BLE001 - reported per item
                where = it.source if it.kind == "image" else f"{it.source} (item {it.name})"
                self.fail(it, f"{where}: {exc}")
        return good

    def explain_chunk(self, chunk, job: ExplainJob) -> None:
        hm = job.writing
        texts = [it for it in chunk if it.kind == "text"]
        if texts:
            self.explain_texts(texts, job)
        for group in _same_shapes([it for it in chunk if it.kind != "text"]):  # one shape per batch
            t0 = time.perf_counter()

            def inputs(group=group):
                x = np.stack([it.x for it in group])
                if group[0].companions:
                    comp = {k: np.stack([it.companions[k] for it in group]) for k in group[0].companions}
                    x = model_layout(self.model, x, comp)
                return x

            e = self._explained(group, job, inputs)
            if e is None:
                continue
            seconds = (time.perf_counter() - t0) / len(group)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write = _item_row if hm.format == "parquet" else _write_item
            for k, it in enumerate(group):
                self.submit(it, write, self.out_dir, it, e, k, hm, seconds, self.layout)

    def explain_texts(self, items, job: ExplainJob) -> None:
        """Tokenise ``items`` together (padded to the longest, mask per sample), explain, write each."""
        t0 = time.perf_counter()
        encoded = []

        def inputs():
            encoded.extend(self.encoder.encode([it.text for it in items]))
            return self.encoder.batch(encoded, self.model)

        e = self._explained(items, job, inputs)
        if e is None:
            return
        seconds = (time.perf_counter() - t0) / len(items)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write = _text_row if job.writing.format == "parquet" else _write_text_item
        for k, (it, enc) in enumerate(zip(items, encoded, strict=True)):
            self.submit(it, write, self.out_dir, it, enc, e, k, job.writing, seconds)

    def _explained(self, items, job: ExplainJob, inputs):
        """``explain`` of ``items`` (their batch made by ``inputs()``), or None with each item reported as
        failed. A usage error is the same for every item, and a model error on the first items (a refused
        certification, a batch over the memory budget) means nothing can be written: both end the run."""
        from ..errors import OptionError
        from ..explainer import explain

        try:
            e = explain(self.model, inputs(), job.method, **job.settings)
        except OptionError:
            raise
        except Exception as exc:  # noqa: BLE001 - the group's items are reported, the run goes on
            if isinstance(exc, _JOB_ERRORS) and not self.explained:
                raise
            for it in items:  # (a later input shape that fails its certification: these items only)
                self.fail(it, f"{it.source}: {one_line(exc)}")
            return None
        self.explained = True
        return e


def _write_text_item(out_dir, it, enc, e, k, hm, seconds) -> dict:
    """Write one text's ``.npz``, ``.json`` and ``.html`` (on a writer thread); returns its record."""
    from .text import text_html, text_record

    n = len(enc.tokens)
    attribution = np.asarray(e.attribution[k])
    scores = attribution[..., :n] if attribution.ndim == 1 else attribution[0, :n]  # top:K: the top class
    target = np.asarray(e.target[k])
    rec = text_record(it.text, enc, scores)
    title = f"{e.method}, target {target.tolist()}"
    atomic_save_npz(out_dir / f"{it.name}.npz", hm.compress, attribution=attribution[..., :n].astype(np.float32),
                    target=target, score=np.asarray(e.score[k], dtype=np.float64), input=enc.ids,
                    method=np.asarray(e.method), options=np.asarray(json.dumps(e.options, default=str, sort_keys=True)))  # fmt: skip
    atomic_write_bytes(out_dir / f"{it.name}.json", json.dumps({**rec, "target": target.tolist(),
                       "score": np.asarray(e.score[k]).tolist(), "method": e.method}, indent=1).encode())  # fmt: skip
    if hm.images != "none":
        atomic_write_bytes(out_dir / f"{it.name}.html", text_html(rec, title).encode())
    score = np.asarray(e.score[k], dtype=np.float64)
    record = {"item": it.name, "source": it.source, "status": "ok", "npz": f"{it.name}.npz", "json": f"{it.name}.json",
              "target": target.tolist(), "score": float(score) if score.ndim == 0 else score.tolist(),
              "tokens": n, "seconds": round(seconds, 4)}  # fmt: skip
    if enc.truncated:
        record["truncated"] = True
    return record


def _item_row(out_dir, it, e, k, hm, seconds, layout) -> dict:
    """One item's Parquet row (``--format parquet``)."""
    from .shards import item_row

    return item_row(it, e, k, seconds, hm.target_spec)


def _text_row(out_dir, it, enc, e, k, hm, seconds) -> dict:
    """One text's Parquet row: its real tokens' attribution, the token ids, tokens and offsets in extras."""
    from .shards import item_row
    from .text import text_record

    n = len(enc.tokens)
    attribution = np.asarray(e.attribution[k])[..., :n]
    rec = text_record(it.text, enc, attribution if attribution.ndim == 1 else attribution[0])
    extras = {key: rec[key] for key in ("text", "tokens", "offsets", "truncated")}
    return item_row(it, e, k, seconds, hm.target_spec, attribution, np.asarray(enc.ids), extras)


def _same_shapes(chunk) -> list[list]:
    """The items of ``chunk`` grouped by the shapes of their inputs, in order of first appearance."""
    groups: dict = {}
    for it in chunk:
        key = (np.shape(it.x), tuple(sorted((k, np.shape(v)) for k, v in (it.companions or {}).items())))
        groups.setdefault(key, []).append(it)
    return list(groups.values())


def _write_error(it, exc: BaseException) -> str:
    return f"{it.source}: writing {it.name} failed: {one_line(exc)}"


def _write_item(out_dir, it, e, k, hm, seconds, layout) -> dict:
    """Write one item's files (on a writer thread); returns its manifest record."""
    from .viz import display_image, heat_map, save_bars, save_heatmap, save_panel, target_shapes

    attribution = e.attribution[k]
    extras = {
        key: np.asarray(v)[k]
        for key, v in e.extras.items()
        if isinstance(v, np.ndarray) and np.ndim(v) >= 1 and len(v) == len(e.attribution)
    }
    npz = out_dir / f"{it.name}.npz"
    atomic_save_npz(
        npz,
        hm.compress,
        attribution=attribution.astype(np.float32),
        target=np.asarray(e.target[k]),
        score=np.asarray(e.score[k], dtype=np.float64),
        input=np.asarray(it.x),
        **{f"input_{k}": np.asarray(v) for k, v in (it.companions or {}).items()},
        method=np.asarray(e.method),
        options=np.asarray(json.dumps(e.options, default=str, sort_keys=True)),
        **({"parity": np.asarray(e.extras["parity"])} if isinstance(e.extras.get("parity"), str) else {}),
        **{f"extra_{key}": v for key, v in extras.items()},
        **({"columns": np.asarray(it.columns)} if it.columns else {}),
    )
    score = np.asarray(e.score[k], dtype=np.float64)
    record = {"item": it.name, "source": it.source, "status": "ok", "npz": npz.name, "target": e.target[k],
              "score": float(score) if score.ndim == 0 else score.tolist(), "seconds": round(seconds, 4)}  # fmt: skip
    images = hm.images
    maps = [attribution] if np.ndim(attribution) == np.ndim(it.x) else list(attribution)  # top:K gives K maps
    targets = np.atleast_1d(e.target[k]) if len(maps) > 1 else [e.target[k]]  # an element target: one map
    for j, (amap, tj) in enumerate(zip(maps, targets, strict=True)):
        if images == "none":
            break
        stem = it.name if len(maps) == 1 else f"{it.name}_top{j + 1}"
        title = (
            f"{e.method}, class {tj}"
            if np.ndim(tj) == 0
            else f"{e.method}, element {tuple(np.asarray(tj).tolist())}"
        )
        if np.ndim(amap) == 3 or (np.ndim(amap) == 2 and layout == "NHW"):
            times = it.x if hm.times_input else None
            h = heat_map(amap, layout, hm.aggregate, hm.sign, hm.percentile, times)
            save_heatmap(out_dir / f"{stem}.png", h, hm.sign)
            if images == "panel":
                shown = it.image if it.image is not None else display_image(it.x, layout)
                save_panel(out_dir / f"{stem}_panel.png", shown, h, hm.sign, title, hm.overlay,
                           target_shapes(e.extras, k))  # fmt: skip
            record.setdefault("png", []).append(f"{stem}.png")
        elif np.ndim(amap) == 1:
            if "expected_value" in extras and len(maps) == 1:  # exact SHAP: the score is E + Σφ
                title += f": {float(score):.4g} = expected {float(extras['expected_value']):.4g} + sum"
            save_bars(out_dir / f"{stem}_bars.png", amap, it.columns or [], title, inputs=it.x)
            record.setdefault("png", []).append(f"{stem}_bars.png")
    if record.get("png") and len(record["png"]) == 1:
        record["png"] = record["png"][0]
    return record
