"""The command line's table runs: every row of CSV files through a whole preprocessing pipeline
(:func:`onnx_explain.tabular.table.explain_table`), written as the batch runs write items: per row an
``.npz`` (attribution per original column, target, score, expected value, the row's values as text),
a bar chart, a ``manifest.jsonl`` line; then ``summary.png``/``summary.json`` over the run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .io import atomic_save_npz
from .job import ManifestSink

__all__ = ["explain_table_files", "table_model"]


def table_model(path):
    """The loaded Model (with its :class:`~onnx_explain.tabular.table.TablePipeline`) when ``path`` is a model
    whose rows must be read across several inputs (or with strings) and whose explained output is one tree
    ensemble's or linear model's after preprocessing; else None."""
    import onnx

    from ..tabular.table import TablePipeline, load_any
    from ..tabular.trees import TreeModelError

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a readable model: the regular loader says why, in one line
        return None
    inits = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in inits]
    strings = any(v.type.tensor_type.elem_type == onnx.TensorProto.STRING for v in inputs)
    if len(inputs) < 2 and not strings:
        return None
    model = load_any(path)
    try:
        model.derived["tabular.pipeline"] = TablePipeline(model)
    except TreeModelError:
        return None
    return model


def explain_table_files(model, tables, out_dir, method="auto", target=None, *, background=None,
                        feature_perturbation="interventional", heatmaps="panel", batch_size=4096) -> dict:  # fmt: skip
    """Explain every row of the CSV ``tables`` into ``out_dir``; a table that cannot be read is one failure
    and the others go on. Rows are explained ``batch_size`` at a time against one background (default:
    every row of the tables), so no result depends on the batch."""
    from ..tabular.table import TablePipeline, explain_table, load_any, read_table_rows
    from .viz import save_bars, save_table_summary

    out_dir = Path(out_dir)
    model = load_any(model) if not hasattr(model, "proto") else model
    pipe = model.derived.get("tabular.pipeline") or TablePipeline(model)
    model.derived["tabular.pipeline"] = pipe  # explain_table finds it there
    summary = {"ok": 0, "failed": 0, "skipped": 0, "failures": []}
    read = []
    for t in tables:
        try:
            read.append((Path(t), read_table_rows(t, pipe.inputs)))
        except Exception as exc:  # noqa: BLE001 - one unreadable table is reported, the rest go on
            summary["failed"] += 1
            summary["failures"].append(f"{t}: {str(exc).splitlines()[0]}")
    if background is None and read:
        background = {k: np.concatenate([r[k] for _, r in read]) for k in read[0][1]}
    sink = ManifestSink(out_dir)
    try:
        for path, rows in read:
            n = len(next(iter(rows.values())))
            for start in range(0, n, batch_size):
                part = {k: v[start : start + batch_size] for k, v in rows.items()}
                t0 = time.perf_counter()
                e = explain_table(model, part, method, target, background=background,
                                  feature_perturbation=feature_perturbation)  # fmt: skip
                seconds = (time.perf_counter() - t0) / max(len(e.attribution), 1)
                names = e.extras["columns"]
                for i in range(len(e.attribution)):
                    item = f"{path.stem}_row{start + i:04d}"
                    values = np.array([_cell(part, c, start, i) for c in _columns(part)], dtype=str)
                    atomic_save_npz(out_dir / f"{item}.npz", attribution=e.attribution[i], target=np.asarray(e.target[i]),
                                    score=np.asarray(e.score[i]), input=values, columns=np.asarray(names, dtype=str),
                                    extra_expected_value=np.asarray(e.extras["expected_value"][i]),
                                    method=np.asarray(e.method),
                                    options=np.asarray(json.dumps(e.options, default=str, sort_keys=True)))  # fmt: skip
                    record = {"item": item, "source": str(path), "status": "ok", "npz": f"{item}.npz",
                              "target": int(e.target[i]), "score": float(e.score[i]), "seconds": round(seconds, 6)}  # fmt: skip
                    if heatmaps != "none":
                        title = (f"{e.method}, class {int(e.target[i])}: {float(e.score[i]):.4g} = expected "
                                 f"{float(e.extras['expected_value'][i]):.4g} + sum")  # fmt: skip
                        save_bars(out_dir / f"{item}_bars.png", e.attribution[i], names, title, inputs=None,
                                  labels=[f"{c} = {v}" for c, v in zip(names, values, strict=False)])  # fmt: skip
                        record["png"] = f"{item}_bars.png"
                    sink.record(record)
                    summary["ok"] += 1
    finally:
        sink.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    if heatmaps != "none":
        save_table_summary(out_dir, method if method != "auto" else "exact SHAP")
    return summary


def _columns(rows: dict) -> list[tuple[str, int]]:
    return [(k, j) for k, v in rows.items() for j in range(v.shape[1])]


def _cell(rows: dict, col: tuple[str, int], start: int, i: int) -> str:
    v = rows[col[0]][i, col[1]]
    return v if isinstance(v, str) else f"{v:.6g}"
