"""``onnx-explain evaluate MODEL --attributions DIR --metric NAME ... --out FILE``."""

from __future__ import annotations

import json

import click

from ..metrics import METRICS
from ..metrics.base import OUTPUTS
from .common import fail, handle_errors, model_options, parse_options, resolve_device


def _output_help() -> str:
    spaces: dict[str, list[str]] = {}
    for name, spec in METRICS.items():
        spaces.setdefault(spec.output, []).append(name)
    own = "; ".join(f"{space} for {', '.join(names)}" for space, names in spaces.items() if space != "logit")
    return f"Score space (default: the metric's own: {own}; logit otherwise)." if own else "Score space."


def _metrics_epilog() -> str:
    """Every registered metric with its description and facts (click keeps \\b blocks)."""
    lines = ["\b", "Metrics:"]
    for name, spec in METRICS.items():
        better = {True: "higher is better", False: "lower is better"}.get(
            spec.higher_is_better, "direction by order"
        )
        facts = [better, spec.cost, "/".join(spec.modalities)] + ["needs an explainer"] * spec.needs_explainer
        lines += [f"  {name}: {spec.description}", f"      {'; '.join(facts)}"]
    return "\n".join(lines)


@click.command("evaluate", epilog=_metrics_epilog())
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("--attributions", "-a", "att_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder of 'onnx-explain explain'.")  # fmt: skip
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    required=True,
    type=click.Choice(sorted(METRICS)),
    help="Repeatable.",
)
@click.option(
    "--out", "-o", "out_file", type=click.Path(dir_okay=False), help="Report: .json (default) or .csv."
)
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), help="Folder for curve plots (PNG).")
@click.option("--option", "extra", multiple=True, metavar="KEY=VALUE",
              help="Metric option (JSON value), repeatable; METRIC.KEY=VALUE sets it for one metric only.")  # fmt: skip
@click.option("--output", "space", type=click.Choice(OUTPUTS), default=None, help=_output_help())
@click.option("--batch-size", type=int, default=64, show_default=True, help="Rows per onnxruntime call.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@model_options
@handle_errors
def evaluate(model, inputs, att_dir, metrics, out_file, plots_dir, extra, space, batch_size, seed, as_json, input_name,
             output_name, device):  # fmt: skip
    """Evaluate the attributions written by 'onnx-explain explain' (their inputs are read from the .npz files;
    INPUTS, when given, keep only the items made from those files). Writes per-item and mean scores, curves,
    and plots.

    \b
    Example:
      onnx-explain evaluate models/digits.onnx -a out/sg --metric pixel_flipping --metric deletion \\
          --out out/sg_eval.json --plots out/plots
    """
    from pathlib import Path

    from ..app.batch import evaluate_dir
    from .common import load_model

    _, ort_device = resolve_device(device)
    m = load_model(model, input_name, output_name, ort_device)
    if not Path(att_dir).is_dir():
        fail(f"{att_dir}: no such folder (the --out of 'onnx-explain explain')")
    try:
        report = evaluate_dir(m, att_dir, metrics, out_file, plots_dir, batch_size, seed, space, parse_options(extra),
                              sources=list(inputs) or None)  # fmt: skip
    except FileNotFoundError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(report))
        return
    n = len(report["items"])
    for name, e in report["metrics"].items():
        arrow = "higher is better" if e["higher_is_better"] else "lower is better"
        click.echo(f"{name:<26} {e['score']:<16} mean {e['mean']:.4g} over {n} items ({arrow})")
    if out_file:
        click.echo(f"report -> {out_file}")
