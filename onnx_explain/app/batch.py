"""Batch runs over files, behind the ``explain``, ``evaluate`` and ``demo`` commands: per-item outputs
written atomically by a bounded pool of writer threads while the next items are computed, a manifest line
per item once its files are complete, resume, and one bad item reported while the rest finish."""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import InputFileError, MemoryBudgetError, OnnxExplainError, ParityError
from .io import (
    JsonlAppender,
    Preprocess,
    atomic_save_npz,
    atomic_write_bytes,
    read_items,
    read_manifest,
    remove_stale_temporaries,
)

MANIFEST = "manifest.jsonl"
#: errors of the model or the job rather than of one item: on the first items they end the run (nothing
#: written); on a later input shape, only that shape's items fail
_JOB_ERRORS = (ParityError, MemoryBudgetError)
#: ``heatmaps=``: the map and the panel (input, map, colour bar), the map alone, or no images at all
HEATMAPS = ("panel", "map", "none")


def _progress(total: int, quiet: bool, desc: str):
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit="item", file=sys.stderr, disable=quiet or not sys.stderr.isatty()
    )


def explain_files(
    model,
    inputs,
    out_dir,
    method: str = "smoothgrad",
    target=None,
    *,
    output: str | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    seed: int = 0,
    resume: bool = False,
    preprocess: dict | None = None,
    heatmap: dict | None = None,
    heatmaps: str = "panel",
    compress: bool = False,
    writers: int = 2,
    quiet: bool = True,
    group: int = 16,
    tokenizer=None,
    max_length: int | None = None,
    format: str = "files",  # noqa: A002 - the CLI's --format
    shard_rows: int | None = None,
    **options,
) -> dict:
    """Explain every item of ``inputs`` (image files, folders, ``.npy``/``.npz`` arrays, CSV rows) into
    ``out_dir``: ``<item>.npz`` (attribution, target, score, input, method, options), heatmap PNGs and
    ``manifest.jsonl``.

    ``heatmaps``: ``'panel'`` writes ``<item>.png`` (the map at the input's size) and ``<item>_panel.png``
    (the input, the map and a colour bar), ``'map'`` only ``<item>.png``, ``'none'`` no image (a pipeline's
    choice); tabular rows get ``<item>_bars.png`` unless ``'none'``. ``compress`` deflates the ``.npz``.

    Each item is explained as ``explain(model, x_item[None], method, seed=seed)`` would explain it alone
    (docs/methods.md §1.2: no result depends on the batch), ``group`` items per call. Items are written by ``writers`` threads (0:
    on the calling thread) while the next ones are computed, at most a few groups in flight; an item's
    manifest line is appended, in input order, only once all its files are in place, so ``resume`` never
    trusts a partial item. A bad method or option is an error before anything is written; an item that
    cannot be read, explained or written is reported and the others go on. Returns ``{'ok', 'failed',
    'skipped'}`` counts and the failures.

    With ``tokenizer`` (a ``tokenizers`` JSON file), ``.txt`` (one text per line) and ``.jsonl`` (a
    ``text`` field per line) inputs are texts: tokenised, padded per group with the attention mask given
    per sample, and written as ``<item>.json`` (tokens, offsets, scores) and ``<item>.html`` besides the
    ``.npz`` (:mod:`onnx_explain.app.text`); ``max_length`` truncates (default: the model's fixed
    sequence length, else 512).

    ``format='parquet'`` writes no file per item: one row per item in shards of about ``shard_rows``
    (10⁴) rows, ``part-00000.parquet``, ... (:mod:`onnx_explain.app.shards`), each complete or absent;
    ``resume`` skips the items of the complete shards. Failures go to ``_failures.jsonl``.
    """
    spec = _method(method)
    max_memory = options.pop("max_memory", None)
    spec.check_options(options)
    if heatmaps not in HEATMAPS:
        raise OnnxExplainError(f"heatmaps must be one of {', '.join(HEATMAPS)}, not {heatmaps!r}")
    out_dir = Path(out_dir)
    prep = Preprocess.from_model(model.input, preprocess)
    step = max(1, group)  # a sample's result does not depend on its batch, stochastic methods included
    sink = make_sink(format, out_dir, shard_rows)
    run = _Run(out_dir, model, prep.layout, writers=writers, in_flight=max(2 * step, 4 * max(1, writers)),
               sink=sink)  # fmt: skip
    if tokenizer is not None:
        from .text import TextEncoder

        fixed = (model.input.shape or (None, None))[1:2]
        run.encoder = TextEncoder(
            tokenizer, max_length or (fixed[0] if fixed and isinstance(fixed[0], int) else None)
        )
    items = read_items(
        inputs, prep, model.input, [i.name for i in model.inputs], texts=tokenizer is not None,
        batch_first=model.signature.to_batch_first,
    )  # fmt: skip
    todo = run.pending(items, resume)
    hm = {"sign": spec.sign, "aggregate": "sum", "percentile": 99.0, "times_input": False, "overlay": False,
          **(heatmap or {}), "images": heatmaps, "compress": compress, "format": format,
          "target_spec": target}  # fmt: skip
    tgt = np.asarray(target) if isinstance(target, (list, np.ndarray)) else target  # a tuple names an element
    settings = dict(target=tgt, output=output, batch_size=batch_size, device=device, seed=seed,
                    max_memory=max_memory, **options)  # fmt: skip
    if spec.backend == "torch" and tokenizer is None:
        _certify_first(model, todo, output or spec.output, device)
    bar = _progress(len(todo), quiet, method)
    try:
        for start in range(0, len(todo), step):
            chunk = run.readable(todo[start : start + step])
            if chunk:
                run.explain_chunk(chunk, method, settings, hm)
            bar.update(min(step, len(todo) - start))
    finally:
        run.close()  # every item handed to the writers is written and recorded before this returns
        bar.close()
    out_dir.mkdir(parents=True, exist_ok=True)  # also when there was nothing to do
    if format == "files" and heatmaps != "none":
        from .viz import save_table_summary

        save_table_summary(out_dir, f"{method}")
    return run.summary


def model_layout(model, x, companions, one: bool = False) -> dict:
    """The inputs dict ``split_inputs`` takes (the model's layout) from a batch-first explained input and
    batch-first companion rows; ``one``: ``x`` and the companions are one item's rows (no batch axis)."""
    sig = model.signature
    lift = (lambda v: np.asarray(v)[None]) if one else np.asarray
    given = {model.input.name: lift(x)}
    given.update({k: sig.from_batch_first(k, lift(v)) for k, v in (companions or {}).items()})
    return given


def _first_data(model, todo, tries: int = 8):
    """``(x, companions)`` of the first of ``todo``'s first ``tries`` items that reads and fits the model
    (None when none does; texts are not looked at)."""
    for it in todo[:tries]:
        if it.error or it.kind == "text":
            continue
        try:
            return model.split_inputs(model_layout(model, it.x, it.companions, one=True))
        except Exception:  # noqa: BLE001 - an unreadable item is reported in its turn
            continue
    return None


def first_item_data(model, inputs, preprocess: dict | None = None):
    """The first readable item of ``inputs`` as ``(x, companions)`` (or None): what ``-m auto`` certifies
    the conversion on before it chooses a method."""
    prep = Preprocess.from_model(model.input, preprocess)
    items = read_items(
        inputs, prep, model.input, [i.name for i in model.inputs], batch_first=model.signature.to_batch_first
    )
    return _first_data(model, items)


def _certify_first(model, todo, space: str, device: str) -> None:
    """Certify the torch conversion on the first readable item before anything is written: a model that
    onnxruntime cannot run, or whose conversion differs on the user's data, ends the run with one line
    and nothing on disk (later input shapes are certified when they appear; their failures are per item)."""
    data = _first_data(model, todo)
    if data is not None:
        model.torch_module(device=device, space=space, probe=data)


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


def _method(method: str):
    from ..methods import METHODS

    if method not in METHODS:
        raise OnnxExplainError(f"unknown method {method!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[method]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _Run:
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

    def explain_chunk(self, chunk, method: str, settings: dict, hm: dict) -> None:
        from ..errors import OptionError
        from ..explainer import explain

        texts = [it for it in chunk if it.kind == "text"]
        if texts:
            self.explain_texts(texts, method, settings, hm)
        for group in _same_shapes([it for it in chunk if it.kind != "text"]):  # one shape per batch
            t0 = time.perf_counter()
            x = np.stack([it.x for it in group])
            if group[0].companions:
                comp = {k: np.stack([it.companions[k] for it in group]) for k in group[0].companions}
                x = model_layout(self.model, x, comp)
            try:
                e = explain(self.model, x, method, **settings)
            except OptionError:
                raise  # a usage error: the same for every item
            except _JOB_ERRORS:
                if not self.explained:
                    raise  # certified on the first items and refused: a model error, nothing written
                for it in group:  # a later input shape that fails its certification: these items only
                    self.fail(it, f"{it.source}: {_one_line(sys.exc_info()[1])}")
                continue
            except Exception as exc:  # noqa: BLE001 - the group's items are reported, the run goes on
                for it in group:
                    self.fail(it, f"{it.source}: {_one_line(exc)}")
                continue
            self.explained = True
            seconds = (time.perf_counter() - t0) / len(group)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write = _item_row if hm.get("format") == "parquet" else _write_item
            for k, it in enumerate(group):
                self.submit(it, write, self.out_dir, it, e, k, hm, seconds, self.layout)

    def explain_texts(self, items, method: str, settings: dict, hm: dict) -> None:
        """Tokenise ``items`` together (padded to the longest, mask per sample), explain, write each."""
        from ..errors import OptionError
        from ..explainer import explain

        t0 = time.perf_counter()
        try:
            encoded = self.encoder.encode([it.text for it in items])
            e = explain(self.model, self.encoder.batch(encoded, self.model), method, **settings)
        except OptionError:
            raise
        except _JOB_ERRORS:
            if not self.explained:
                raise
            for it in items:
                self.fail(it, f"{it.source}: {_one_line(sys.exc_info()[1])}")
            return
        except Exception as exc:  # noqa: BLE001 - the group's items are reported, the run goes on
            for it in items:
                self.fail(it, f"{it.source}: {_one_line(exc)}")
            return
        self.explained = True
        seconds = (time.perf_counter() - t0) / len(items)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write = _text_row if hm.get("format") == "parquet" else _write_text_item
        for k, (it, enc) in enumerate(zip(items, encoded, strict=True)):
            self.submit(it, write, self.out_dir, it, enc, e, k, hm, seconds)


def _write_text_item(out_dir, it, enc, e, k, hm, seconds) -> dict:
    """Write one text's ``.npz``, ``.json`` and ``.html`` (on a writer thread); returns its record."""
    from .text import text_html, text_record

    n = len(enc.tokens)
    attribution = np.asarray(e.attribution[k])
    scores = attribution[..., :n] if attribution.ndim == 1 else attribution[0, :n]  # top:K: the top class
    target = np.asarray(e.target[k])
    rec = text_record(it.text, enc, scores)
    title = f"{e.method}, target {target.tolist()}"
    atomic_save_npz(out_dir / f"{it.name}.npz", hm["compress"], attribution=attribution[..., :n].astype(np.float32),
                    target=target, score=np.asarray(e.score[k], dtype=np.float64), input=enc.ids,
                    method=np.asarray(e.method), options=np.asarray(json.dumps(e.options, default=str, sort_keys=True)))  # fmt: skip
    atomic_write_bytes(out_dir / f"{it.name}.json", json.dumps({**rec, "target": target.tolist(),
                       "score": np.asarray(e.score[k]).tolist(), "method": e.method}, indent=1).encode())  # fmt: skip
    if hm["images"] != "none":
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

    return item_row(it, e, k, seconds, hm.get("target_spec"))


def _text_row(out_dir, it, enc, e, k, hm, seconds) -> dict:
    """One text's Parquet row: its real tokens' attribution, the token ids, tokens and offsets in extras."""
    from .shards import item_row
    from .text import text_record

    n = len(enc.tokens)
    attribution = np.asarray(e.attribution[k])[..., :n]
    rec = text_record(it.text, enc, attribution if attribution.ndim == 1 else attribution[0])
    extras = {key: rec[key] for key in ("text", "tokens", "offsets", "truncated")}
    return item_row(it, e, k, seconds, hm.get("target_spec"), attribution, np.asarray(enc.ids), extras)


def _same_shapes(chunk) -> list[list]:
    """The items of ``chunk`` grouped by the shapes of their inputs, in order of first appearance."""
    groups: dict = {}
    for it in chunk:
        key = (np.shape(it.x), tuple(sorted((k, np.shape(v)) for k, v in (it.companions or {}).items())))
        groups.setdefault(key, []).append(it)
    return list(groups.values())


def _write_error(it, exc: BaseException) -> str:
    return f"{it.source}: writing {it.name} failed: {_one_line(exc)}"


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
        hm["compress"],
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
    images = hm["images"]
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
            times = it.x if hm["times_input"] else None
            h = heat_map(amap, layout, hm["aggregate"], hm["sign"], hm["percentile"], times)
            save_heatmap(out_dir / f"{stem}.png", h, hm["sign"])
            if images == "panel":
                shown = it.image if it.image is not None else display_image(it.x, layout)
                save_panel(out_dir / f"{stem}_panel.png", shown, h, hm["sign"], title, hm["overlay"],
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


def load_attributions(
    att_dir, sources=None, names=None
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, dict]:
    """(names, inputs, attributions, targets, companions) of every finished item of an ``explain`` output
    folder (only those made from ``sources`` files or folders, when given; only ``names``, in that order,
    when given); ``companions`` holds the items' values of the model's other inputs, by input name (empty
    for single-input models)."""
    att_dir = Path(att_dir)
    if not (att_dir / MANIFEST).exists() and any(att_dir.glob("part-*.parquet")):
        return _load_shards(att_dir, sources, names)
    wanted = names
    names = attribution_names(att_dir, sources)
    if wanted:
        names = [n for n in wanted if n in set(names)]
    if not names:
        raise InputFileError(
            f"{att_dir}: no finished items (manifest.jsonl and <item>.npz from 'onnx-explain explain')"
        )
    xs, attrs, targets, companions = [], [], [], {}
    for n in names:
        with np.load(att_dir / f"{n}.npz") as z:
            xs.append(z["input"])
            a, t = z["attribution"], np.atleast_1d(z["target"])
            attrs.append(a if a.ndim == z["input"].ndim else a[0])  # top:K files: the top class is evaluated
            targets.append(int(t[0]))
            for key in z.files:
                if key.startswith("input_"):
                    companions.setdefault(key[len("input_") :], []).append(z[key])
    if len({v.shape for v in xs}) > 1 and all(v.ndim == 1 and v.dtype.kind in "iu" for v in xs):
        # texts of different lengths: pad to the longest (id 0, attribution 0) with an attention mask, so
        # the token metrics see each text with its own real tokens (padding is masked, never perturbed)
        L = max(len(v) for v in xs)

        def pad(v):
            return np.pad(v, (0, L - len(v)))

        comp = {k: np.stack([pad(c) for c in v]) for k, v in companions.items() if len(v) == len(names)}
        comp.setdefault("attention_mask", np.stack([pad(np.ones(len(v), np.int64)) for v in xs]))
        return (
            names,
            np.stack([pad(v) for v in xs]),
            np.stack([pad(a) for a in attrs]),
            np.asarray(targets),
            comp,
        )
    try:
        comp = {k: np.stack(v) for k, v in companions.items() if len(v) == len(names)}
        return names, np.stack(xs), np.stack(attrs), np.asarray(targets), comp
    except ValueError:
        raise InputFileError(
            f"{att_dir}: the items' inputs differ in shape; evaluate them in groups of one shape"
        ) from None


def attribution_names(att_dir, sources=None) -> list[str]:
    """The finished items of an ``explain`` output folder (files or Parquet shards), in order, without
    reading their arrays; only those made from ``sources`` files or folders, when given."""
    att_dir = Path(att_dir)
    if not (att_dir / MANIFEST).exists() and any(att_dir.glob("part-*.parquet")):
        from .shards import read_shards

        found = [(r["item"], r["source"]) for r in read_shards(att_dir, columns=["item", "source"])]
    else:
        records = read_manifest(att_dir / MANIFEST)
        found = [(n, r.get("source", "")) for n, r in records.items()
                 if r.get("status") == "ok" and (att_dir / f"{n}.npz").exists()]  # fmt: skip
    if sources:
        roots = [Path(s).resolve() for s in sources]
        found = [(n, src) for n, src in found
                 if any(Path(src).resolve() == q or q in Path(src).resolve().parents for q in roots)]  # fmt: skip
    return [n for n, _ in found]


def _load_shards(att_dir: Path, sources, names=None) -> tuple:
    """:func:`load_attributions` of a ``--format parquet`` folder."""
    from .shards import read_shards

    rows = read_shards(att_dir)
    if names:
        by_name = {r["item"]: r for r in rows}
        rows = [by_name[n] for n in names if n in by_name]
    if sources:
        roots = [Path(s).resolve() for s in sources]
        rows = [r for r in rows if any(Path(r["source"]).resolve() == q or q in Path(r["source"]).resolve().parents
                                       for q in roots)]  # fmt: skip
    if not rows:
        raise InputFileError(f"{att_dir}: no finished items (part-*.parquet from 'onnx-explain explain')")
    attrs = [
        r["attribution"] if r["attribution"].ndim == r["input"].ndim else r["attribution"][0] for r in rows
    ]
    targets = [int(np.atleast_1d(r["target"])[0]) for r in rows]
    comp_names = [k[len("input_") :] for k in rows[0] if k.startswith("input_")]
    try:
        comp = {k: np.stack([r[f"input_{k}"] for r in rows]) for k in comp_names}
        return (
            [r["item"] for r in rows],
            np.stack([r["input"] for r in rows]),
            np.stack(attrs),
            np.asarray(targets),
            comp,
        )
    except ValueError:
        raise InputFileError(
            f"{att_dir}: the items' inputs differ in shape; evaluate them in groups of one shape"
        ) from None


def evaluate_dir(model, att_dir, metrics, out_file=None, plots_dir=None, batch_size: int = 64, seed: int = 0,
                 output: str | None = None, options: dict | None = None, sources=None, ray=None) -> dict:  # fmt: skip
    """Evaluate the attributions of an ``explain`` output folder with each of ``metrics``; write JSON or
    CSV to ``out_file`` and curve plots to ``plots_dir``. Returns the report.

    ``options`` are shared: a key goes to every metric that takes it, ``metric.key`` to that metric
    only, and a key that none of them takes is an :class:`~onnx_explain.options.UnknownOptionError`.

    ``ray`` (a dict of :func:`onnx_explain.app.ray_engine.evaluate_ray`'s engine arguments: ``model``
    path, ``load_options``, ``address``, ``workers``, ``cpus_per_worker``) scores groups of items on Ray
    actors instead, for metrics that draw no random numbers (a sample's score then does not depend on
    its group): the same report.
    """
    from ..evaluation import evaluate
    from ..metrics import METRICS
    from ..options import route_options

    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        from ..errors import OnnxExplainError

        raise OnnxExplainError(f"unknown metric {unknown[0]!r}; choose one of {', '.join(sorted(METRICS))}")
    per_metric = route_options(options or {}, {m: METRICS[m].options for m in metrics})
    if ray is not None:
        from .ray_engine import evaluate_ray

        names, results = evaluate_ray(att_dir, metrics, per_metric, batch_size=batch_size, seed=seed, output=output,
                                      sources=sources, **ray)  # fmt: skip
        report = {"model": getattr(model, "source", str(model)), "attributions": str(att_dir), "items": names,
                  "metrics": {m: _metric_entry(results[m], names, per_metric[m], plots_dir) for m in metrics}}  # fmt: skip
        if out_file is not None:
            _write_report(Path(out_file), report, names)
        return report
    names, xs, attrs, targets, companions = load_attributions(att_dir, sources)
    if companions:  # stored as batch-first rows: back to the model's layout (a state [2, B, 128])
        xs = model_layout(model, xs, companions)
    report = {
        "model": getattr(model, "source", str(model)),
        "attributions": str(att_dir),
        "items": names,
        "metrics": {},
    }
    for metric in metrics:
        opts = per_metric[metric]
        r = evaluate(
            model, xs, attrs, metric, target=targets, batch_size=batch_size, seed=seed, output=output, **opts
        )
        report["metrics"][metric] = _metric_entry(r, names, opts, plots_dir)
    if out_file is not None:
        _write_report(Path(out_file), report, names)
    return report


def _metric_entry(r: dict, names: list[str], opts: dict, plots_dir) -> dict:
    from ..metrics.base import defined_scores
    from .viz import save_curves

    d = defined_scores(r)  # JSON has no NaN: an undefined score is null, and the entry says why
    entry = {"higher_is_better": r["higher_is_better"], "score": r["score"], "mean": d["mean"], "output": r["output"],
             "options": opts, "per_item": dict(zip(names, d["per_item"], strict=True))}  # fmt: skip
    if "undefined" in d:
        entry["undefined"] = d["undefined"]
    if "curve" in r:
        entry["curves"] = {n: list(map(float, c)) for n, c in zip(names, r["curve"], strict=True)}
        if plots_dir is not None:
            metric = r["metric"]
            save_curves(Path(plots_dir) / f"{metric}.png", {metric: r["curve"]}, f"{metric} ({len(names)} items)",
                        r["output"])  # fmt: skip
    return entry


def _write_report(out_file: Path, report: dict, names: list[str]) -> None:
    if out_file.suffix.lower() == ".csv":
        lines = ["item,metric,score"] + [
            f"{n},{m},{'' if e['per_item'][n] is None else repr(e['per_item'][n])}"
            for m, e in report["metrics"].items()
            for n in names
        ]
        atomic_write_bytes(out_file, ("\n".join(lines) + "\n").encode())
    else:
        atomic_write_bytes(out_file, json.dumps(report, indent=1, allow_nan=False).encode())
