"""Batch runs over files, behind the ``explain``, ``evaluate`` and ``demo`` commands: per-item outputs
written atomically by a bounded pool of writer threads while the next items are computed, a manifest line
per item once its files are complete, resume, and one bad item reported while the rest finish.

This is the local engine: it schedules the per-item work of :mod:`onnx_explain.app.job` (shared with the
Ray engine, :mod:`onnx_explain.app.ray_engine`); reading an output folder back is
:mod:`onnx_explain.app.results`. Their public names are importable from here too."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .io import Preprocess, atomic_write_bytes, read_items
from .job import (
    HEATMAPS,
    MANIFEST,
    CollectSink,
    EvaluateJob,
    ExplainJob,
    ManifestSink,
    Run,
    make_sink,
    model_layout,
)
from .results import attribution_names, load_attributions

__all__ = [
    "HEATMAPS",
    "MANIFEST",
    "CollectSink",
    "ManifestSink",
    "attribution_names",
    "evaluate_dir",
    "explain_files",
    "first_item_data",
    "load_attributions",
    "make_sink",
    "model_layout",
]


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
    job = ExplainJob.make(method, target, output=output, batch_size=batch_size, seed=seed, device=device,
                          heatmap=heatmap, heatmaps=heatmaps, compress=compress, format=format, tokenizer=tokenizer,
                          max_length=max_length, **options)  # fmt: skip
    out_dir = Path(out_dir)
    prep = Preprocess.from_model(model.input, preprocess)
    step = max(1, group)  # a sample's result does not depend on its batch, stochastic methods included
    sink = make_sink(format, out_dir, shard_rows)
    run = Run(out_dir, model, prep.layout, writers=writers, in_flight=max(2 * step, 4 * max(1, writers)),
               sink=sink)  # fmt: skip
    run.encoder = job.encoder(model)
    items = read_items(
        inputs, prep, model.input, [i.name for i in model.inputs], texts=tokenizer is not None,
        batch_first=model.signature.to_batch_first,
    )  # fmt: skip
    todo = run.pending(items, resume)
    if job.spec.backend == "torch" and tokenizer is None:
        _certify_first(model, todo, job.output, device)
    bar = _progress(len(todo), quiet, method)
    try:
        for start in range(0, len(todo), step):
            chunk = run.readable(todo[start : start + step])
            if chunk:
                run.explain_chunk(chunk, job)
            bar.update(min(step, len(todo) - start))
    finally:
        run.close()  # every item handed to the writers is written and recorded before this returns
        bar.close()
    out_dir.mkdir(parents=True, exist_ok=True)  # also when there was nothing to do
    if format == "files" and heatmaps != "none":
        from .viz import save_table_summary

        save_table_summary(out_dir, f"{method}")
    return run.summary


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
    job = EvaluateJob.make(metrics, options, batch_size=batch_size, seed=seed, output=output)
    if ray is not None:
        from .ray_engine import evaluate_ray

        names, results = evaluate_ray(att_dir, job, sources=sources, **ray)
    else:
        names, results = job.score(model, att_dir, sources)
    report = {
        "model": getattr(model, "source", str(model)),
        "attributions": str(att_dir),
        "items": names,
        "metrics": {m: _metric_entry(results[m], names, job.options[m], plots_dir) for m in job.metrics},
    }
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
