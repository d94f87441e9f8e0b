"""The audit's result as an object (:func:`onnx_explain.audit`): the score table, every method's
explanation and mean curves, provenance; :meth:`AuditReport.save` writes what ``onnx-explain audit``
writes (``report.json``, ``report.html`` with the figures embedded, and the figures as PNG files), and
:meth:`AuditReport._repr_html_` shows the same page in a notebook."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: the version of report.json's layout, described by ``schemas/audit_report.schema.json`` (JSON Schema)
SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "schemas" / "audit_report.schema.json"

__all__ = ["AuditReport", "render_figures"]

#: the JSON's sections, in the order they are written
SECTIONS = ("model", "sha256", "versions", "settings", "conversion", "inputs", "lrp_coverage", "scores",
            "errors", "texts", "seconds")  # fmt: skip


@dataclass
class AuditReport:
    """What an audit found.

    Attributes
    ----------
    report : dict
        The JSON the command line writes (``report.json``): ``model`` (its description), ``sha256``,
        ``versions``, ``settings``, ``conversion`` (parity), ``inputs`` (used, failed), ``lrp_coverage``,
        ``scores`` (metric -> method -> ``mean``, ``per_item``, ``higher_is_better``), ``errors`` (a failing
        method or method/metric pair, one line each), ``seconds``; for texts, ``texts`` (each text's tokens
        and every method's token scores).
    explanations : dict
        Method name -> its :class:`~onnx_explain.Explanation` on the audited inputs.
    curves : dict
        Metric -> method -> the mean curve over the inputs (deletion, insertion, pixel flipping ...).
    figures : dict
        Figure name -> PNG bytes (heatmaps per method for images, the mean curves per metric).
    views : dict
        Name -> a self-contained HTML page shown inline (texts: each text's tokens coloured per method,
        the pages of ``explain --tokenizer``).
    x : numpy.ndarray or None
        The audited batch.
    """

    report: dict
    explanations: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)
    views: dict = field(default_factory=dict)
    x: np.ndarray | None = None

    @property
    def scores(self) -> dict:
        """metric -> method -> ``{'mean', 'per_item', 'higher_is_better'}``."""
        return self.report["scores"]

    @property
    def provenance(self) -> dict:
        """What was audited, with what: the model's description and sha256, versions, settings."""
        return {k: self.report[k] for k in ("model", "sha256", "versions", "settings") if k in self.report}

    def best(self) -> dict[str, str]:
        """metric -> the method with the best mean score (by the metric's own direction)."""
        out = {}
        for metric, per in self.scores.items():
            if per:
                pick = max if next(iter(per.values()))["higher_is_better"] else min
                defined = {m: v for m, v in per.items() if v.get("mean") is not None}
                if defined:
                    out[metric] = pick(defined, key=lambda m, per=defined: per[m]["mean"])
        return out

    def to_dict(self) -> dict:
        """The report's JSON as a dict (numpy values as plain numbers and lists)."""
        return json.loads(self.to_json())

    def to_json(self) -> str:
        return json.dumps(self.report, indent=1, default=_plain)

    def save(self, out_dir) -> Path:
        """Write ``report.json``, ``report.html`` (figures embedded: one self-contained file) and
        ``figures/NAME.png`` into ``out_dir`` (created); returns the HTML's path."""
        out_dir = Path(out_dir)
        _write(out_dir / "report.json", self.to_json().encode())
        for name, png in self.figures.items():
            _write(out_dir / "figures" / f"{name}.png", png)
        page = out_dir / "report.html"
        _write(page, self.html().encode())
        return page

    def html(self) -> str:
        """The self-contained page ``report.html``."""
        m = self.report["model"]
        return (
            f'<!doctype html><html><head><meta charset="utf-8"><title>onnx-explain audit: '
            f"{html.escape(str(m['path']))}</title><style>body{{font-family:sans-serif;margin:2em;"
            f"max-width:1100px}}</style></head><body><div class='oe-audit'>{self._body()}</div></body></html>"
        )

    def _repr_html_(self) -> str:
        """The report's page as a notebook cell (the same sections, no document wrapper)."""
        return f"<div class='oe-audit'>{self._body()}</div>"

    def _body(self) -> str:
        e = html.escape
        report, m = self.report, self.report["model"]
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
        metrics = list(report["scores"])
        methods = sorted({k for v in report["scores"].values() for k in v})
        rows = []
        for method in methods:
            cells = []
            for metric in metrics:
                s = report["scores"][metric].get(method)
                cells.append(
                    f"<td title='{metric}'>{s['mean']:.4g}</td>"
                    if s and s.get("mean") is not None
                    else f"<td title='{html.escape(s.get('undefined', '')) if s else ''}'>—</td>"
                )
            rows.append(f"<tr><th>{e(method)}</th>{''.join(cells)}</tr>")
        arrows = "".join(
            f"<th>{e(k)}<br><small>{'higher' if next(iter(report['scores'][k].values()))['higher_is_better'] else 'lower'} is better</small></th>"
            for k in metrics
            if report["scores"][k]
        )
        cov = report["lrp_coverage"]
        cov_html = (f"<p class=ok>every node that carries relevance has a rule ({len(cov['rules'])} nodes)</p>"
                    if cov["ok"] else f"<p class=bad>{e(cov['error'])}</p>")  # fmt: skip
        imgs = "".join(
            f"<figure><img src='data:image/png;base64,{base64.b64encode(v).decode()}'><figcaption>{e(k)}"
            "</figcaption></figure>"
            for k, v in self.figures.items()
            if k != "sanity"  # shown in its own section
        )
        errs = "".join(f"<li>{e(k)}: {e(v)}</li>" for k, v in report["errors"].items()) + "".join(
            f"<li>{e(f)}</li>" for f in report["inputs"]["failed"]
        )
        ops = ", ".join(f"{e(k)} {v}" for k, v in m["ops"].items())
        texts = "".join(
            # sized to its page once loaded: at the default 150 px a long text's tokens and text are cut off
            f"<h3>{e(k)}</h3><iframe style='width:100%;box-sizing:border-box;border:1px solid #ccc' "
            "onload=\"this.style.height=this.contentDocument.documentElement.scrollHeight+2+'px'\" "
            f'srcdoc="{e(v)}"></iframe>'
            for k, v in self.views.items()
        )
        texts = f"<h2>Texts</h2>{texts}" if texts else ""
        sanity = report.get("sanity") or {}
        san_rows = "".join(
            f"<tr><th>{e(k)}</th><td class={'ok' if v['passed'] else 'bad'}>{'passes' if v['passed'] else 'fails'}</td>"
            + "".join(
                f"<td title='{e(n)}'>{s_:.3f}</td>"
                for n, s_ in zip(
                    # efficient: one value, once every layer is random
                    [", ".join(v["layers"])] if v.get("variant") == "efficient" else v["layers"],
                    v["mean_similarity"],
                    strict=True,
                )
            )
            + "</tr>"
            for k, v in sanity.items()
        )
        variant = next(iter(sanity.values()), {}).get("variant", "mprt")
        what = {
            "mprt": "the top layers randomised in cascade; Spearman similarity of |attribution| to the trained "
            "model's, per step",
            "smooth": "SmoothMPRT (Hedström et al. 2023): as MPRT, each explanation the mean over noisy "
            "copies of the input",
            "efficient": "EfficientMPRT (Hedström et al. 2023): every layer randomised; the relative rise "
            "of the explanation's discrete entropy",
        }[variant]
        verdict = "above" if variant == "efficient" else "below"
        san_html = (
            f"<h2>Sanity check</h2><p>Model parameter randomisation (Adebayo et al. 2018), {what}. A method "
            f"passes {verdict} {next(iter(sanity.values()))['threshold']} once they are all random.</p>"
            f"<table><tr><th>method</th><th>verdict</th><th colspan=99>{'entropy rise' if variant == 'efficient' else 'similarity after each layer'}</th></tr>{san_rows}</table>"
            + (
                f"<figure><img src='data:image/png;base64,{base64.b64encode(self.figures['sanity']).decode()}'>"
                "<figcaption>sanity: the randomisation curves</figcaption></figure>"
                if "sanity" in self.figures
                else ""
            )
            if sanity
            else ""
        )
        pol = report.get("policy")
        pol_html = (
            f"<h2>Release policy</h2><p><code>{e(pol['path'])}</code>: "
            + (
                f"<span class=ok>all {pol['rules']} rule(s) hold</span></p>"
                if pol["passed"]
                else f"<span class=bad>{len(pol['failed'])} of {pol['rules']} rule(s) fail</span></p><ul>"
                + "".join(f"<li class=bad>{e(line)}</li>" for line in pol["failed"])
                + "</ul>"
            )
            if pol
            else ""
        )
        return f"""<style>.oe-audit table{{border-collapse:collapse}}.oe-audit td,.oe-audit th{{border:1px solid #ccc;padding:4px 8px}}
.oe-audit .ok{{color:#070}}.oe-audit .bad{{color:#a00}}.oe-audit figure{{display:inline-block;margin:6px}}.oe-audit img{{max-width:520px}}.oe-audit code{{background:#f4f4f4}}</style>
<h1>onnx-explain audit</h1>
<p><b>model</b> <code>{e(str(m["path"]))}</code><br><b>sha256</b> <code>{e(str(report["sha256"]))}</code><br>
<b>producer</b> {e(m["producer"] or "?")}, IR {m["ir_version"]}, opsets {e(json.dumps(m["opsets"]))}, {m["nodes"]} nodes, {m["parameters"]:,} parameters</p>
<p><b>ops</b> {ops}</p>
{pol_html}
<h2>Conversion</h2>{conv_html}
<h2>LRP coverage</h2>{cov_html}
<h2>Scores</h2><p>{len(report["inputs"]["used"])} inputs. Mean per method and metric.</p>
{report.get("metrics_note") and f"<p>{e(report['metrics_note'])}</p>" or ""}
<table><tr><th>method</th>{arrows}</tr>{"".join(rows)}</table>
{san_html}
<h2>Figures</h2>{imgs}{texts}
<h2>Problems</h2><ul>{errs or "<li>none</li>"}</ul>
<h2>Settings</h2><pre>{e(json.dumps(report["settings"], indent=1, default=_plain))}</pre><pre>{e(json.dumps(report["versions"], indent=1))}</pre>
<p>{report["seconds"]} s</p>"""


def _write(path: Path, data: bytes) -> None:
    """Write through a temporary file and a rename: a reader never sees half a file."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain(v):
    """JSON for numpy values."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def render_figures(x, explanations: dict, curves: dict, layout: str | None, thumbnails: int = 4,
                   columns: list | None = None) -> dict:  # fmt: skip
    """PNG bytes: the heatmaps of each method (image inputs, ``layout`` not None; the first ``thumbnails``
    inputs), for rows of features the mean |attribution| per feature of every method (named by
    ``columns``), and the mean curve of each metric per method."""
    figures = {}
    if layout is not None:
        for name, e in explanations.items():
            figures[f"heatmaps_{name}"] = png_bytes(lambda plt, e=e: _heat_fig(plt, x, e, layout, thumbnails))
    elif np.ndim(x) == 2 and explanations:
        table = {n: np.asarray(e.attribution) for n, e in explanations.items() if np.ndim(e.attribution) == 2}
        if table:
            figures["features"] = png_bytes(lambda plt: _feature_fig(plt, table, columns))
    for metric, cs in curves.items():
        figures[f"curve_{metric}"] = png_bytes(lambda plt, cs=cs, metric=metric: _curve_fig(plt, cs, metric))
    return figures


def sanity_figure(sanity: dict) -> bytes | None:
    """The parameter randomisation curves as Adebayo et al. draw them: per method, the similarity to the
    trained model's explanation (1 at the start) against the layers randomised so far, the pass threshold
    dashed. None when there is no curve (no check, or the one-step ``efficient`` variant)."""
    curves = {k: v for k, v in sanity.items() if v.get("variant", "mprt") != "efficient" and v["layers"]}
    if not curves:
        return None

    def fig(plt):
        layers = max((v["layers"] for v in curves.values()), key=len)
        f, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(layers) + 2), 3.2))
        for name, v in curves.items():
            ys = [1.0, *[np.nan if s is None else s for s in v["mean_similarity"]]]
            ax.plot(range(len(ys)), ys, marker="o", label=name)
        ax.axhline(next(iter(curves.values()))["threshold"], color="gray", linestyle="--", linewidth=1)
        short = [n if len(n) <= 18 else "…" + n[-17:] for n in layers]
        ax.set_xticks(range(len(layers) + 1), ["trained", *short], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("Spearman of |attribution|")
        ax.set_ylim(min(-0.1, ax.get_ylim()[0]), 1.05)
        ax.set_title(
            "similarity to the trained model's explanation, layers randomised in cascade", fontsize=9
        )
        ax.legend(fontsize=8)
        return f

    return png_bytes(fig)


def _feature_fig(plt, table: dict, columns: list | None, top: int = 15):
    """Mean |attribution| per feature, one bar per method, each method scaled to its largest feature (the
    methods' units differ: margins, probabilities): which features each method finds important."""
    first = next(iter(table.values()))
    names = list(columns or [])[: first.shape[1]] + [
        f"x{i}" for i in range(len(columns or []), first.shape[1])
    ]
    means = {m: np.abs(a).mean(0) for m, a in table.items()}
    order = np.argsort(-means[next(iter(means))], kind="stable")[:top][::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(order) * max(1, len(means) / 2) + 1.2))
    h = 0.8 / len(means)
    for j, (m, v) in enumerate(means.items()):
        ax.barh(np.arange(len(order)) + j * h, v[order] / (v.max() or 1.0), height=h, label=m)
    ax.set_yticks(np.arange(len(order)) + 0.4 - h / 2, [names[i] for i in order])
    ax.set_xlabel("mean |attribution| (each method scaled to its largest)")
    ax.legend(fontsize=8)
    return fig


def png_bytes(fig_fn) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = fig_fn(plt)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _heat_fig(plt, x, e, layout, k):
    from .heatmap import display_image, heat_map, plot_shapes, target_shapes
    from .methods import METHODS

    n = min(k, len(x))
    sign = METHODS[e.method].sign if e.method in METHODS else "signed"
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.4), squeeze=False)
    for i in range(n):
        img = display_image(x[i], layout)
        axes[0, i].imshow(img, cmap="gray" if img.ndim == 2 else None)
        axes[0, i].set_title(f"target {np.asarray(e.target[i]).tolist()}", fontsize=8)
        a = np.asarray(e.attribution[i])
        h = heat_map(a if a.ndim == np.ndim(x[i]) else a[0], layout, "sum", sign)
        axes[1, i].imshow(
            h, cmap="bwr" if sign == "signed" else "inferno", vmin=-1 if sign == "signed" else 0, vmax=1
        )
        plot_shapes(axes[1, i], target_shapes(e.extras, i))
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
