"""``onnx-explain audit MODEL INPUTS... --out DIR``."""

from __future__ import annotations

import click

from ..app.audit import default_methods, default_metrics
from ..methods import METHODS
from ..metrics import METRICS
from .common import handle_errors, model_options, parse_options


def _defaults(choose) -> str:
    """The audit's default methods or metrics by input modality, for the help text."""
    return "; ".join(f"{kind}: {', '.join(choose(kind)) or 'none'}" for kind in ("image", "table"))


@click.command("audit")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--method", "methods", multiple=True, type=click.Choice(sorted(METHODS)),
              help=f"Methods to compare, repeatable (default, by input: {_defaults(default_methods)}).")  # fmt: skip
@click.option("--metric", "metrics", multiple=True, type=click.Choice(sorted(METRICS)),
              help=f"Metrics, repeatable (default, by input: {_defaults(default_metrics)}).")  # fmt: skip
@click.option("--max-items", type=int, default=64, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--preprocess-option",
    "pre",
    multiple=True,
    metavar="KEY=VALUE",
    help="Preprocessing (size, mean, std ...).",
)
@model_options
@handle_errors
def audit(
    model,
    inputs,
    out_dir,
    methods,
    metrics,
    max_items,
    batch_size,
    seed,
    pre,
    input_name,
    output_name,
    device,
):
    """Deployment-time audit: conversion parity, LRP coverage, several methods x several metrics on the
    inputs, written as a self-contained report.html (heatmaps, curves, the score table, the model's sha256
    and every setting) and report.json.

    \b
    Example:
      onnx-explain audit models/digits.onnx models/samples --out audit/
    """
    from ..app.audit import run_audit
    from .common import load_model, resolve_device

    _, ort_device = resolve_device(device)
    m = load_model(model, input_name, output_name, ort_device)
    r = run_audit(
        m,
        inputs,
        out_dir,
        list(methods) or None,
        list(metrics) or None,
        batch_size,
        seed,
        parse_options(pre),
        max_items,
    )
    click.echo(f"audit of {len(r['inputs']['used'])} inputs -> {out_dir}/report.html")
    for metric, per in r["scores"].items():
        best = (max if next(iter(per.values()))["higher_is_better"] else min)(
            per, key=lambda k: per[k]["mean"]
        )
        click.echo(f"  {metric:<26} best: {best} ({per[best]['mean']:.4g})")
    if not r["lrp_coverage"]["ok"]:
        click.echo(f"  LRP: {r['lrp_coverage']['error']}")
