"""The deployment-time audit: conversion parity, LRP coverage, several methods × several metrics on the
given inputs, written as a self-contained HTML report (images embedded) and JSON."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import platform
import time
from pathlib import Path

import numpy as np

from ..errors import InputDataError
from .io import Preprocess, atomic_write_bytes, read_items


def default_methods(modality: str) -> dict[str, dict]:
    """The methods of a quick overview for inputs of ``modality``, with their overview settings (the
    :attr:`~onnx_explain.methods.base.MethodSpec.overview` facts of the registry)."""
    from ..methods import METHODS

    return {
        name: dict(spec.overview)
        for name, spec in METHODS.items()
        if spec.overview is not None and modality in spec.modalities and spec.backend == "torch"
    }  # the black-box methods' overview settings serve when the graph does not convert (_runtime_only)


def default_metrics(modality: str) -> list[str]:
    """The metrics of a quick overview for inputs of ``modality`` (the registry's ``overview`` facts)."""
    from ..metrics import METRICS

    return [name for name, spec in METRICS.items() if modality in spec.overview]


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _png(fig_fn) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = fig_fn(plt)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def run_audit(model, inputs, out_dir, methods: dict | list | None = None, metrics=None, batch_size: int = 64,
              seed: int = 0, preprocess: dict | None = None, max_items: int = 64, thumbnails: int = 4) -> dict:  # fmt: skip
    """Audit ``model`` on ``inputs``; write ``report.html`` and ``report.json`` into ``out_dir``.

    ``methods``: name -> options, or names (each with its overview settings); default: the registry's
    overview methods for the input's modality. ``metrics``: names; default: the overview metrics.
    """
    from ..layout import modality

    t0 = time.perf_counter()
    kind = modality(model.layout, model.input.dtype)
    given = methods
    methods = _chosen_methods(methods, kind)
    report = _provenance(model, methods, batch_size, seed)
    module, report["conversion"] = _conversion(model)
    prep = Preprocess.from_model(model.input, preprocess)
    x, report["inputs"] = _read_inputs(model, inputs, prep, max_items)
    if module is None:  # the graph does not convert: the methods that run on onnxruntime alone, said so
        methods = _runtime_only(methods, given, kind)
        report["settings"]["methods"] = methods
        report["lrp_coverage"] = {"ok": False, "error": "no torch graph (see conversion)"}
    else:
        report["lrp_coverage"] = _lrp_coverage(module, x)
    if not report["lrp_coverage"]["ok"]:
        methods.pop("lrp", None)
    metrics = list(metrics or default_metrics(kind))
    report["settings"]["metrics"] = metrics
    attributions, report["scores"], curves, report["errors"] = _explain_and_score(
        model, x, methods, metrics, batch_size, seed
    )
    report["seconds"] = round(time.perf_counter() - t0, 2)
    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / "report.json", json.dumps(report, indent=1, default=str).encode())
    figures = _figures(x, attributions, curves, model.layout if kind == "image" else None, thumbnails)
    atomic_write_bytes(out_dir / "report.html", _html(report, figures).encode())
    return report


def _conversion(model):
    """(torch module or None, the report's conversion entry)."""
    from ..errors import ConversionError, ParityError

    try:
        module = model.torch_module()
    except (ConversionError, ParityError) as exc:
        return None, {"ok": False, "error": str(exc), "note": "gradient methods and LRP skipped; black-box "
                      "methods (onnxruntime alone) run instead"}  # fmt: skip
    return module, {"ok": True, "batch_mode": model.batch_mode, "parity": model.parity.to_dict()}


def _runtime_only(methods: dict, given, kind: str) -> dict:
    """The methods of ``methods`` that need no torch graph; when none was asked for by name, the black-box
    methods of the registry's overview for ``kind`` (or all of them)."""
    from ..methods import METHODS
    from ..methods.base import runtime_methods

    keep = {m: o for m, o in methods.items() if m in METHODS and METHODS[m].backend == "onnxruntime"}
    if keep or given:
        return keep
    names = runtime_methods()
    overview = [m for m in names if METHODS[m].overview is not None and kind in METHODS[m].modalities]
    return {m: dict(METHODS[m].overview or {}) for m in (overview or names)}


def _chosen_methods(methods, kind: str) -> dict[str, dict]:
    from ..methods import METHODS

    if methods is None:
        return default_methods(kind)
    if isinstance(methods, dict):
        return dict(methods)
    return {name: dict(METHODS[name].overview or {}) if name in METHODS else {} for name in methods}


def _provenance(model, methods: dict, batch_size: int, seed: int) -> dict:
    """What was audited, with what: the model's description and hash, versions, settings."""
    import onnx
    import onnxruntime
    import torch

    from .. import __version__

    return {
        "model": model.describe(),
        "sha256": _sha256(model.path) if model.path else None,
        "versions": {
            "onnx-explain": __version__,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__,
            "python": platform.python_version(),
        },
        "settings": {"methods": methods, "batch_size": batch_size, "seed": seed},
    }


def _read_inputs(model, inputs, prep, max_items: int) -> tuple[np.ndarray, dict]:
    """The batch of readable inputs (at most ``max_items``) and the report's inputs section."""
    good, failures = [], []
    for it in read_items(inputs, prep, model.input):
        if it.error:
            failures.append(it.error)
            continue
        try:
            it.x = model.validate_input(np.asarray(it.x)[None])[0]
            good.append(it)
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{it.source}: {exc}")
    good = good[:max_items]
    if not good:
        raise InputDataError("no input could be read: nothing to audit")
    return np.stack([it.x for it in good]), {"used": [it.name for it in good], "failed": failures}


def _lrp_coverage(module, x: np.ndarray) -> dict:
    """Whether every node that carries relevance has a rule under the default composite."""
    import torch

    from ..errors import LRPCoverageError
    from ..methods.lrp import default_composite, lrp_graph

    example = torch.from_numpy(x[:2])
    composite = default_composite(module, example)  # attnlrp for a graph with attention, else epsilon_plus
    try:
        _, assignments = lrp_graph(module, example, composite, {}, {}, None, "gradient")
    except LRPCoverageError as exc:
        return {"ok": False, "composite": composite, "error": str(exc)}
    rules = {a.onnx_name or a.module: f"{a.op}: {a.rule}" for a in assignments}
    return {"ok": True, "composite": composite, "rules": rules}


def _explain_and_score(model, x, methods: dict, metrics: list, batch_size: int, seed: int):
    """Every method on x, every metric on every method's attributions; a failing pair is reported and
    the audit goes on. Returns (explanations, scores, mean curves, errors)."""
    from ..evaluation import evaluate
    from ..explainer import explain

    attributions, scores, curves, errors = {}, {}, {}, {}
    for name, opts in methods.items():
        try:
            e = explain(model, x, name, batch_size=batch_size, seed=seed, **opts)
        except Exception as exc:  # noqa: BLE001 - one failing method is reported, the audit goes on
            errors[name] = str(exc).splitlines()[0]
            continue
        attributions[name] = e
        for metric in metrics:
            try:
                r = evaluate(
                    model, x, e.attribution, metric, target=e.target, batch_size=batch_size, seed=seed
                )
            except Exception as exc:  # noqa: BLE001
                errors[f"{name}/{metric}"] = str(exc).splitlines()[0]
                continue
            scores.setdefault(metric, {})[name] = {"mean": r["mean"], "per_item": list(map(float, r["scores"])),
                                                   "higher_is_better": r["higher_is_better"]}  # fmt: skip
            if "curve" in r:
                curves.setdefault(metric, {})[name] = r["curve"].mean(0)
    return attributions, scores, curves, errors


def _figures(x, attributions: dict, curves: dict, layout: str | None, thumbnails: int) -> dict:
    """Base64 PNGs: heatmaps of each method (image inputs only) and the mean curve of each metric."""
    figures = {}
    if layout is not None:
        for name, e in attributions.items():
            figures[f"heatmaps_{name}"] = _png(lambda plt, e=e: _heat_fig(plt, x, e, layout, thumbnails))
    for metric, cs in curves.items():
        figures[f"curve_{metric}"] = _png(lambda plt, cs=cs, metric=metric: _curve_fig(plt, cs, metric))
    return figures


def _heat_fig(plt, x, e, layout, k):
    from ..methods import METHODS
    from .viz import display_image, heat_map

    n = min(k, len(x))
    sign = METHODS[e.method].sign
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.4), squeeze=False)
    for i in range(n):
        img = display_image(x[i], layout)
        axes[0, i].imshow(img, cmap="gray" if img.ndim == 2 else None)
        axes[0, i].set_title(f"class {e.target[i]}", fontsize=8)
        h = heat_map(e.attribution[i], layout, "sum", sign)
        axes[1, i].imshow(
            h, cmap="bwr" if sign == "signed" else "inferno", vmin=-1 if sign == "signed" else 0, vmax=1
        )
        for a in axes[:, i]:
            a.axis("off")
    fig.suptitle(e.method)
    return fig


def _curve_fig(plt, curves, metric):
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name, c in curves.items():
        ax.plot(np.linspace(0, 1, len(c)), c, label=name)
    ax.set_title(metric)
    ax.set_xlabel("fraction perturbed")
    ax.legend(fontsize=8)
    return fig


def _html(report: dict, figures: dict) -> str:
    e = html.escape
    m = report["model"]
    conversion = report["conversion"]
    if conversion["ok"]:
        conv = conversion["parity"]
        conv_html = (
            f"<p class=ok>torch graph matches onnxruntime: max |diff| {conv['max_abs']:.3g}, relative to the "
            f"output {conv['max_rel']:.3g}, to the spread between samples {conv['rel_spread']:.3g} (allowed "
            f"{conv['rtol']:g} and {conv['spread_tol']:g}), on a {e(conv['probe'])} batch of {conv['batch']}; "
            f"batch mode {e(conversion['batch_mode'])}</p>"
        )
    else:
        conv_html = f"<p class=bad>{e(conversion['error'])}</p><p>{e(conversion['note'])}</p>"
    rows = []
    metrics = list(report["scores"])
    methods = sorted({k for v in report["scores"].values() for k in v})
    for method in methods:
        cells = []
        for metric in metrics:
            s = report["scores"][metric].get(method)
            cells.append(f"<td>{s['mean']:.4g}</td>" if s else "<td>—</td>")
        rows.append(f"<tr><th>{e(method)}</th>{''.join(cells)}</tr>")
    arrows = "".join(
        f"<th>{e(k)}<br><small>{'higher' if next(iter(report['scores'][k].values()))['higher_is_better'] else 'lower'} is better</small></th>"
        for k in metrics
    )
    cov = report["lrp_coverage"]
    cov_html = (f"<p class=ok>every node that carries relevance has a rule ({len(cov['rules'])} nodes)</p>" if cov["ok"]
                else f"<p class=bad>{e(cov['error'])}</p>")  # fmt: skip
    imgs = "".join(
        f"<figure><img src='data:image/png;base64,{v}'><figcaption>{e(k)}</figcaption></figure>"
        for k, v in figures.items()
    )
    errs = "".join(f"<li>{e(k)}: {e(v)}</li>" for k, v in report["errors"].items()) + "".join(
        f"<li>{e(f)}</li>" for f in report["inputs"]["failed"]
    )
    ops = ", ".join(f"{e(k)} {v}" for k, v in m["ops"].items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>onnx-explain audit: {e(m["path"])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}
.ok{{color:#070}}.bad{{color:#a00}}figure{{display:inline-block;margin:6px}}img{{max-width:520px}}code{{background:#f4f4f4}}</style></head><body>
<h1>onnx-explain audit</h1>
<p><b>model</b> <code>{e(m["path"])}</code><br><b>sha256</b> <code>{e(str(report["sha256"]))}</code><br>
<b>producer</b> {e(m["producer"] or "?")}, IR {m["ir_version"]}, opsets {e(json.dumps(m["opsets"]))}, {m["nodes"]} nodes, {m["parameters"]:,} parameters</p>
<p><b>ops</b> {ops}</p>
<h2>Conversion</h2>{conv_html}
<h2>LRP coverage</h2>{cov_html}
<h2>Scores</h2><p>{len(report["inputs"]["used"])} inputs. Mean per method and metric.</p>
<table><tr><th>method</th>{arrows}</tr>{"".join(rows)}</table>
<h2>Figures</h2>{imgs}
<h2>Problems</h2><ul>{errs or "<li>none</li>"}</ul>
<h2>Settings</h2><pre>{e(json.dumps(report["settings"], indent=1))}</pre><pre>{e(json.dumps(report["versions"], indent=1))}</pre>
<p>{report["seconds"]} s</p></body></html>"""
