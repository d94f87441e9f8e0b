"""``onnx-explain evaluate MODEL --attributions DIR --metric NAME ... --out FILE``."""

from __future__ import annotations

import json

import click

from ..metrics import METRICS
from ..metrics.base import OUTPUTS
from .common import fail, handle_errors, model_options, parse_options


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
              help="Output folder of 'onnx-explain explain' (files or --format parquet shards).")  # fmt: skip
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
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Score here, or groups of items on a Ray cluster (metrics without random draws; "
                   "pip install 'onnx-explain[ray]').")  # fmt: skip
@click.option("--address", default=None, help="Ray cluster address (--engine ray; default RAY_ADDRESS or a local "
              "instance).")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Ray actors, each loading the model once (default: cluster CPUs / --cpus-per-worker).")  # fmt: skip
@click.option("--cpus-per-worker", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPUs per Ray actor; its onnxruntime threads.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@model_options
@handle_errors
def evaluate(model, inputs, att_dir, metrics, out_file, plots_dir, extra, space, batch_size, seed, engine, address,
             workers, cpus_per_worker, as_json, input_name, output_name, device):  # fmt: skip
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

    if engine == "local" and (address or workers or cpus_per_worker != 1):
        raise click.UsageError("--address, --workers and --cpus-per-worker need --engine ray")
    on_ray = None
    if engine == "ray":
        from ..app.ray_engine import require_ray

        require_ray()
        ctx = click.get_current_context(silent=True)
        on_ray = {"model": model, "address": address, "workers": workers, "cpus_per_worker": cpus_per_worker,
                  "device": device, "load_options": {"input": input_name, "output": output_name,
                  "allow_nonfinite": bool(ctx and ctx.meta.get("onnx_explain.allow_nonfinite"))}}  # fmt: skip
    # with --engine ray the workers run the model: here it is only read (on the CPU) for the report
    # metrics run on onnxruntime alone: its CUDA provider where it loads ('auto'), no torch to ask
    ort_device = "cpu" if on_ray else device
    m = load_model(model, input_name, output_name, ort_device)
    if not Path(att_dir).is_dir():
        fail(f"{att_dir}: no such folder (the --out of 'onnx-explain explain')")
    try:
        report = evaluate_dir(m, att_dir, metrics, out_file, plots_dir, batch_size, seed, space, parse_options(extra),
                              sources=list(inputs) or None, ray=on_ray)  # fmt: skip
    except FileNotFoundError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(report))
        return
    n = len(report["items"])
    for name, e in report["metrics"].items():
        arrow = "higher is better" if e["higher_is_better"] else "lower is better"
        mean = "undefined" if e["mean"] is None else f"{e['mean']:.4g}"
        click.echo(f"{name:<26} {e['score']:<16} mean {mean} over {n} items ({arrow})")
        if e.get("undefined"):
            click.echo(f"{'':<26} undefined: {e['undefined']}")
    if out_file:
        click.echo(f"report -> {out_file}")
