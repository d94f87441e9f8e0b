"""Batch runs over files, behind the ``explain``, ``evaluate`` and ``demo`` commands: per-item outputs
written atomically, a manifest line per item, resume, and one bad item reported while the rest finish."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import InputFileError
from .io import Preprocess, append_jsonl, atomic_save_npz, atomic_write_bytes, read_items, read_manifest

MANIFEST = "manifest.jsonl"


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
    output: str = "logit",
    batch_size: int = 64,
    device: str = "cpu",
    seed: int = 0,
    resume: bool = False,
    preprocess: dict | None = None,
    heatmap: dict | None = None,
    quiet: bool = True,
    group: int = 16,
    **options,
) -> dict:
    """Explain every item of ``inputs`` (image files, folders, ``.npy``/``.npz`` arrays, CSV rows) into
    ``out_dir``: ``<item>.npz`` (attribution, target, score, input, method, options), heatmap PNGs
    (``<item>.png`` at the input's size, ``<item>_panel.png`` with the input and a colour bar; a bar chart
    for tabular rows) and ``manifest.jsonl``.

    Each item is explained as ``explain(model, x_item[None], method, seed=seed)`` would explain it alone;
    deterministic methods are batched over ``group`` items. Returns ``{'ok', 'failed', 'skipped'}``
    counts and the failures.
    """
    from ..explainer import explain
    from ..methods import METHODS

    out_dir = Path(out_dir)
    spec = model.input
    prep = Preprocess.from_model(spec, preprocess)
    items = read_items(inputs, prep, spec)
    done = read_manifest(out_dir / MANIFEST) if resume else {}
    todo, summary = [], {"ok": 0, "failed": 0, "skipped": 0, "failures": []}
    for it in items:
        if resume and done.get(it.name, {}).get("status") == "ok" and (out_dir / f"{it.name}.npz").exists():
            summary["skipped"] += 1
        else:
            todo.append(it)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / MANIFEST
    hm = {"sign": "abs" if method in ("gradient", "smoothgrad") else "signed", "aggregate": "sum", "percentile": 99.0,
          "times_input": False, "overlay": False, **(heatmap or {})}  # fmt: skip
    stochastic = METHODS[method].stochastic
    bar = _progress(len(todo), quiet, method)

    def fail(it, msg):
        summary["failed"] += 1
        summary["failures"].append(msg)
        append_jsonl(manifest, {"item": it.name, "source": it.source, "status": "error", "error": msg})

    def ok_items(chunk):
        good = []
        for it in chunk:
            if it.error:
                fail(it, it.error)
                continue
            try:
                it.x = model.validate_input(np.asarray(it.x)[None])[0]
                good.append(it)
            except Exception as exc:  # noqa: BLE001 - reported per item
                where = it.source if it.kind == "image" else f"{it.source} (item {it.name})"
                fail(it, f"{where}: {exc}")
        return good

    step = 1 if stochastic else max(1, group)
    for start in range(0, len(todo), step):
        chunk = ok_items(todo[start : start + step])
        if chunk:
            t0 = time.perf_counter()
            try:
                xs = np.stack([it.x for it in chunk])
                tgt = target if not isinstance(target, (list, tuple, np.ndarray)) else np.asarray(target)
                e = explain(model, xs, method, target=tgt, output=output, batch_size=batch_size, device=device,
                            seed=seed, **options)  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - the chunk's items are reported, the run goes on
                for it in chunk:
                    fail(it, f"{it.source}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
                bar.update(len(chunk))
                continue
            seconds = (time.perf_counter() - t0) / len(chunk)
            for k, it in enumerate(chunk):
                _write_item(out_dir, it, e, k, hm, seconds, manifest, prep.layout)
                summary["ok"] += 1
        bar.update(step if start + step <= len(todo) else len(todo) - start)
    bar.close()
    return summary


def _write_item(out_dir, it, e, k, hm, seconds, manifest, layout):
    from .viz import heat_map, save_bars, save_heatmap, save_panel

    attribution = e.attribution[k]
    extras = {
        key: np.asarray(v)[k]
        for key, v in e.extras.items()
        if isinstance(v, np.ndarray) and np.ndim(v) >= 1 and len(v) == len(e.attribution)
    }
    npz = out_dir / f"{it.name}.npz"
    atomic_save_npz(
        npz,
        attribution=attribution.astype(np.float32),
        target=np.asarray(e.target[k]),
        score=np.asarray(e.score[k], dtype=np.float64),
        input=np.asarray(it.x),
        method=np.asarray(e.method),
        options=np.asarray(json.dumps(e.options, default=str, sort_keys=True)),
        **{f"extra_{key}": v for key, v in extras.items()},
    )
    score = np.asarray(e.score[k], dtype=np.float64)
    record = {"item": it.name, "source": it.source, "status": "ok", "npz": npz.name, "target": e.target[k],
              "score": float(score) if score.ndim == 0 else score.tolist(), "seconds": round(seconds, 4)}  # fmt: skip
    maps = [attribution] if np.ndim(attribution) == np.ndim(it.x) else list(attribution)  # top:K gives K maps
    targets = np.atleast_1d(e.target[k])
    for j, (amap, tj) in enumerate(zip(maps, targets, strict=True)):
        stem = it.name if len(maps) == 1 else f"{it.name}_top{j + 1}"
        title = f"{e.method}, class {tj}"
        if np.ndim(amap) == 3 or (np.ndim(amap) == 2 and layout == "NHW"):
            h = heat_map(
                amap,
                layout,
                hm["aggregate"],
                hm["sign"],
                hm["percentile"],
                it.x if hm["times_input"] else None,
            )
            save_heatmap(out_dir / f"{stem}.png", h, hm["sign"])
            shown = it.image if it.image is not None else _display(it.x, layout)
            save_panel(out_dir / f"{stem}_panel.png", shown, h, hm["sign"], title, hm["overlay"])
            record.setdefault("png", []).append(f"{stem}.png")
        elif np.ndim(amap) == 1:
            save_bars(out_dir / f"{stem}_bars.png", amap, it.columns or [], title)
            record.setdefault("png", []).append(f"{stem}_bars.png")
    if record.get("png") and len(record["png"]) == 1:
        record["png"] = record["png"][0]
    append_jsonl(manifest, record)


def _display(x: np.ndarray, layout: str) -> np.ndarray:
    """An already preprocessed input, min-max scaled to uint8 for display."""
    a = np.asarray(x, dtype=np.float64)
    if layout == "NCHW" and a.ndim == 3:
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    span = a.max() - a.min()
    return ((a - a.min()) / (span if span > 0 else 1) * 255).round().astype(np.uint8)


def load_attributions(att_dir, sources=None) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(names, inputs, attributions, targets) of every finished item of an ``explain`` output folder
    (only those made from ``sources`` files or folders, when given)."""
    att_dir = Path(att_dir)
    records = read_manifest(att_dir / MANIFEST)
    names = [n for n, r in records.items() if r.get("status") == "ok" and (att_dir / f"{n}.npz").exists()]
    if sources:
        roots = [Path(s).resolve() for s in sources]
        names = [
            n
            for n in names
            if any(
                Path(records[n]["source"]).resolve() == r or r in Path(records[n]["source"]).resolve().parents
                for r in roots
            )
        ]
    if not names:
        raise InputFileError(
            f"{att_dir}: no finished items (manifest.jsonl and <item>.npz from 'onnx-explain explain')"
        )
    xs, attrs, targets = [], [], []
    for n in names:
        with np.load(att_dir / f"{n}.npz") as z:
            xs.append(z["input"])
            a, t = z["attribution"], np.atleast_1d(z["target"])
            attrs.append(a if a.ndim == z["input"].ndim else a[0])  # top:K files: the top class is evaluated
            targets.append(int(t[0]))
    return names, np.stack(xs), np.stack(attrs), np.asarray(targets)


def evaluate_dir(model, att_dir, metrics, out_file=None, plots_dir=None, batch_size: int = 64, seed: int = 0,
                 output: str | None = None, options: dict | None = None, sources=None) -> dict:  # fmt: skip
    """Evaluate the attributions of an ``explain`` output folder with each of ``metrics``; write JSON or
    CSV to ``out_file`` and curve plots to ``plots_dir``. Returns the report."""
    import inspect

    from ..evaluation import evaluate
    from ..metrics import METRICS
    from .viz import save_curves

    names, xs, attrs, targets = load_attributions(att_dir, sources)
    report = {
        "model": getattr(model, "source", str(model)),
        "attributions": str(att_dir),
        "items": names,
        "metrics": {},
    }
    for metric in metrics:
        params = inspect.signature(METRICS[metric].fn).parameters
        opts = {k: v for k, v in (options or {}).items() if k in params}
        r = evaluate(
            model, xs, attrs, metric, target=targets, batch_size=batch_size, seed=seed, output=output, **opts
        )
        entry = {"higher_is_better": r["higher_is_better"], "score": r["score"], "mean": r["mean"], "output": r["output"],
                 "options": opts, "per_item": dict(zip(names, map(float, r["scores"]), strict=True))}  # fmt: skip
        if "curve" in r:
            entry["curves"] = {n: list(map(float, c)) for n, c in zip(names, r["curve"], strict=True)}
            if plots_dir is not None:
                save_curves(
                    Path(plots_dir) / f"{metric}.png",
                    {metric: r["curve"]},
                    f"{metric} ({len(names)} items)",
                    r["output"],
                )
        report["metrics"][metric] = entry
    if out_file is not None:
        out_file = Path(out_file)
        if out_file.suffix.lower() == ".csv":
            lines = ["item,metric,score"] + [
                f"{n},{m},{e['per_item'][n]!r}" for m, e in report["metrics"].items() for n in names
            ]
            atomic_write_bytes(out_file, ("\n".join(lines) + "\n").encode())
        else:
            atomic_write_bytes(out_file, json.dumps(report, indent=1).encode())
    return report
