"""``onnx-explain diff``'s files: inputs read as the other commands read them, :func:`onnx_explain.drift.compare`,
``report.json`` and a self-contained ``report.html`` with the least agreeing items side by side."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from .io import atomic_write_bytes, read_items

__all__ = ["run_diff"]


def _plain(v):
    if isinstance(v, np.ndarray):
        return [None if isinstance(t, float) and not np.isfinite(t) else t for t in v.tolist()]
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    raise TypeError(type(v))


def run_diff(model_a, model_b, inputs, out_dir, methods, *, batch_size=64, seed=0, max_items=64, worst=4,
             metrics=(), thresholds: dict | None = None, rules: list | None = None,
             policy: str | None = None) -> dict:  # fmt: skip
    """Compare the models on the files ``inputs`` and write ``out_dir/report.json`` and ``report.html``;
    returns the JSON as a dict (plus ``_raw``, the :func:`~onnx_explain.drift.compare` result).
    ``thresholds`` (``--fail-under``) and the policy ``rules`` (read from ``policy``) are checked before
    the report is written: ``gate`` holds one line per failure, shown in the page too."""
    from ..drift import compare, failed_thresholds
    from ..errors import InputDataError
    from ..model import load
    from .io import Preprocess

    ma, mb = load(model_a), load(model_b)
    items = [it for it in read_items(inputs, Preprocess.from_model(ma.input, None), ma.input,
                                      [i.name for i in ma.inputs], batch_first=ma.signature.to_batch_first)
             if not it.error][:max_items]  # fmt: skip
    if not items:
        raise InputDataError("no input could be read: nothing to compare")
    x = np.stack([ma.validate_input(np.asarray(it.x)[None])[0] for it in items])
    r = compare(ma, mb, x, methods, batch_size=batch_size, seed=seed, metrics=metrics)
    names = [it.name for it in items]
    out = {
        "model_a": str(model_a), "model_b": str(model_b), "items": len(x), "item_names": names,
        "prediction": {
            "top1_mean": float(r["prediction"]["top1"].mean()),
            "max_abs_diff_max": float(r["prediction"]["max_abs_diff"].max()),
            "per_item": {n: {"top1": bool(t), "max_abs_diff": float(d)}
                         for n, t, d in zip(names, r["prediction"]["top1"], r["prediction"]["max_abs_diff"], strict=True)},
        },
        "methods": {m: {k: {"mean": v["mean"], "per_item": dict(zip(names, _plain(v["per_item"]), strict=True))}
                        for k, v in meas.items()} for m, meas in r["methods"].items()},
        "ranking": [names[i] for i in r["ranking"]],
        "metrics": r.get("metrics", {}),
    }  # fmt: skip
    if thresholds or rules:
        from ..policy import check_policy

        failed = failed_thresholds(r, thresholds or {}) + (check_policy(rules, drift=r) if rules else [])
        out["gate"] = {"thresholds": dict(thresholds or {}), "policy": policy, "failed": failed,
                       "passed": not failed}  # fmt: skip
    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / "report.json", json.dumps(out, indent=1, allow_nan=False).encode())
    figures = _figures(x, r, ma.layout, names, worst)
    atomic_write_bytes(out_dir / "report.html", _html(out, figures).encode())
    return {**out, "_raw": r}


def _figures(x, r, layout, names, worst: int) -> dict:
    """Per method, the least agreeing items: input, map A, map B, A − B."""
    if layout is None or worst <= 0:
        return {}
    from ..heatmap import display_image, heat_map
    from ..report import png_bytes

    out = {}
    rows = r["ranking"][:worst]
    for m, (aa, ab) in r["attributions"].items():

        def fig(plt, aa=aa, ab=ab, m=m):
            f, axes = plt.subplots(len(rows), 4, figsize=(8.8, 2.2 * len(rows)), squeeze=False)
            for j, i in enumerate(rows):
                ha, hb = heat_map(aa[i], layout, "sum", "signed"), heat_map(ab[i], layout, "sum", "signed")
                img = display_image(x[i], layout)
                axes[j, 0].imshow(img, cmap="gray" if img.ndim == 2 else None)
                axes[j, 0].set_title(names[i], fontsize=8)
                for k, (h, t) in enumerate(((ha, "A"), (hb, "B"), (ha - hb, "A − B")), start=1):
                    axes[j, k].imshow(h, cmap="bwr", vmin=-1, vmax=1)
                    axes[j, k].set_title(f"{m} {t}", fontsize=8)
                for ax in axes[j]:
                    ax.axis("off")
            return f

        out[m] = png_bytes(fig)
    return out


def _metric_table(metrics: dict) -> str:
    """Each metric per method on A, on B, and B − A."""
    if not metrics:
        return ""
    e = html.escape
    rows = "".join(
        f"<tr><th>{e(m)}</th><td>{e(k)}</td>{_cell(v['a'])}{_cell(v['b'])}{_cell(v['delta'])}</tr>"
        for m, per in metrics.items()
        for k, v in per.items()
    )
    return ("<h2>Metrics per version</h2><table><tr><th>method</th><th>metric</th><th>A</th><th>B</th>"
            f"<th>B − A</th></tr>{rows}</table>")  # fmt: skip


def _cell(v) -> str:
    return "<td>—</td>" if v is None else f"<td>{v:.4g}</td>"


def _html(report: dict, figures: dict) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><th>{e(m)}</th>" + "".join(_cell(v["mean"]) for v in meas.values()) + "</tr>"
        for m, meas in report["methods"].items()
    )
    heads = "".join(f"<th>{e(k)}</th>" for k in next(iter(report["methods"].values()), {}))
    imgs = "".join(f"<figure><img src='data:image/png;base64,{base64.b64encode(v).decode()}'><figcaption>{e(k)}: "
                   "the least agreeing items</figcaption></figure>" for k, v in figures.items())  # fmt: skip
    p = report["prediction"]
    gate = report.get("gate")
    gate_html = ""
    if gate:
        what = ", ".join([f"{k} ≥ {v:g}" if k != "max_abs_diff" else f"{k} ≤ {v:g}" for k, v in gate["thresholds"].items()]
                         + ([f"policy {gate['policy']}"] if gate["policy"] else []))  # fmt: skip
        verdict = (
            "<p class=ok>every threshold holds</p>"
            if gate["passed"]
            else "<ul>" + "".join(f"<li class=bad>{e(line)}</li>" for line in gate["failed"]) + "</ul>"
        )
        gate_html = f"<h2>Release gate</h2><p>{e(what)}</p>{verdict}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>onnx-explain diff</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}img{{max-width:1000px}}.ok{{color:#070}}.bad{{color:#a00}}</style></head><body>
<h1>onnx-explain diff</h1><p><b>A</b> <code>{e(report["model_a"])}</code><br><b>B</b> <code>{e(report["model_b"])}</code><br>{report["items"]} inputs</p>
{gate_html}
<h2>Predictions</h2><p>top-1 agreement {p["top1_mean"]:.4g}; largest |Δ output| {p["max_abs_diff_max"]:.4g}</p>
<h2>Explanations</h2><p>Mean over the items of the agreement of A's and B's attributions for the same class.</p>
<table><tr><th>method</th>{heads}</tr>{rows}</table>
{_metric_table(report.get("metrics") or {})}
<h2>Least agreeing items</h2><p>{e(", ".join(report["ranking"][:10]))}</p>{imgs}
</body></html>"""
