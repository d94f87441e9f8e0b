"""``onnx-explain diff``: drift between two versions of a model (:func:`onnx_explain.drift.compare`)."""

from __future__ import annotations

import click

from ..methods.base import METHODS
from .common import fail, handle_errors


@click.command("diff")
@click.argument("model_a", type=click.Path(dir_okay=False))
@click.argument("model_b", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--method", "-m", "methods", multiple=True, type=click.Choice(sorted(METHODS)),
              help="Methods compared, repeatable (default: gradient).")  # fmt: skip
@click.option("--fail-under", "fail_under", multiple=True, metavar="MEASURE=VALUE",
              help="Exit 4 when a measure fails: top1, spearman, spearman_abs, cosine, iou@1, iou@5, iou@10, ssim "
                   "(means over the items, every method), max_abs_diff (its largest value must stay under).")  # fmt: skip
@click.option("--metric", "metrics", multiple=True,
              help="A metric (deletion, insertion ...) scored on each version with its own attributions; "
                   "repeatable: report.json and report.html show A, B and B − A.")  # fmt: skip
@click.option("--policy", type=click.Path(dir_okay=False),
              help="A release policy file whose 'drift' rules apply (see onnx_explain.policy).")  # fmt: skip
@click.option("--max-items", type=int, default=64, show_default=True)
@click.option(
    "--worst", type=int, default=4, show_default=True, help="Items drawn side by side in report.html."
)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@handle_errors
def diff(
    model_a,
    model_b,
    inputs,
    out_dir,
    methods,
    fail_under,
    metrics,
    policy,
    max_items,
    worst,
    batch_size,
    seed,
):
    """Compare two versions of a model (a quantized, fp16 or optimised build, a retrained release) on the
    same inputs: prediction agreement and, per method, the agreement of the explanations (Spearman, top-k %
    IoU, cosine, SSIM); report.json and report.html with the least agreeing items side by side.

    \b
    Example:
      onnx-explain diff model.onnx model.int8.onnx images/ --out drift/ -m gradient -m lrp \\
          --fail-under spearman_abs=0.8 --fail-under top1=0.99
    """
    from ..app.drift import run_diff
    from ..drift import MEASURES

    thresholds = {}
    for item in fail_under:
        key, sep, value = item.partition("=")
        try:
            thresholds[key] = float(value)
        except ValueError:
            sep = ""
        if not sep or key not in MEASURES:
            raise click.UsageError(
                f"--fail-under takes MEASURE=VALUE with MEASURE one of {', '.join(MEASURES)}, not {item!r}"
            )
    rules = None
    if policy:
        from ..policy import load_policy

        rules = load_policy(policy)
    report = run_diff(model_a, model_b, list(inputs), out_dir, list(methods) or ["gradient"], batch_size=batch_size,
                      seed=seed, max_items=max_items, worst=worst, metrics=list(metrics), thresholds=thresholds,
                      rules=rules, policy=policy)  # fmt: skip
    click.echo(f"diff of {report['items']} inputs -> {out_dir}/report.html")
    click.echo(
        f"  top-1 agreement {report['prediction']['top1_mean']:.4g}, max |Δ output| {report['prediction']['max_abs_diff_max']:.4g}"
    )
    for m, meas in report["methods"].items():
        parts = ", ".join(f"{k} {v['mean']:.3g}" for k, v in meas.items() if v["mean"] is not None)
        click.echo(f"  {m}: {parts}")
    for m, per in report.get("metrics", {}).items():
        for k, v in per.items():
            show = ", ".join("undefined" if v[t] is None else f"{t} {v[t]:.4g}" for t in ("a", "b", "delta"))
            click.echo(f"  {m} {k}: {show}")
    failed = report.get("gate", {}).get("failed", [])
    for line in failed:
        click.echo(f"fail: {line}", err=True)
    if failed:
        fail(f"{len(failed)} threshold(s) failed", 4)
