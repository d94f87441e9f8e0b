"""``onnx-explain demo``: the main job on the bundled model and samples."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import fail, handle_errors

DEMO_METHODS = {
    "gradient": {},
    "smoothgrad": {"n_samples": 50},
    "integrated_gradients": {"n_steps": 32},
    "lrp": {"composite": "epsilon_plus_flat"},
}
DEMO_METRICS = ("pixel_flipping", "deletion", "insertion", "total_variation")


@click.command("demo")
@click.option(
    "--out", "-o", "out_dir", type=click.Path(file_okay=False), default="onnx-explain-demo", show_default=True
)
@click.option(
    "--model",
    type=click.Path(dir_okay=False),
    default=None,
    help="Default: the digits CNN shipped with the package.",
)
@click.option(
    "--samples", type=click.Path(), default=None, help="Default: its 8 samples shipped with the package."
)
@click.option("--quiet", "-q", is_flag=True)
@handle_errors
def demo(out_dir, model, samples, quiet):
    """Explain the bundled digits CNN on its bundled samples with four methods, evaluate every method with
    pixel flipping, deletion, insertion and total variation, and write heatmaps, curves and a report into
    OUT (default ./onnx-explain-demo/).

    \b
    Example:
      onnx-explain demo
    """
    from ..app.batch import evaluate_dir, explain_files
    from ..data import bundled
    from ..model import load

    # package data (onnx_explain/data), not models/ of the checkout: the demo runs from any folder
    model = model or bundled("digits.onnx")
    samples = samples or bundled("digits.npy")
    m = load(model)
    m.torch_module()
    out = Path(out_dir)
    report = {"model": str(model), "samples": str(samples), "methods": {}}
    for method, opts in DEMO_METHODS.items():
        summary = explain_files(m, [samples], out / method, method, quiet=quiet, **opts)
        if summary["failed"]:
            fail(f"{method}: {summary['failures'][0]}", 1)
        # 32x32 maps: total variation over pyramid levels down to 8x8 (the paper's 30x30 floor leaves one level)
        r = evaluate_dir(m, out / method, DEMO_METRICS, out / method / "evaluation.json", out / method / "plots",
                         options={"min_size": (8, 8)})  # fmt: skip
        report["methods"][method] = {
            k: {"mean": v["mean"], "higher_is_better": v["higher_is_better"]} for k, v in r["metrics"].items()
        }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    header = f"{'method':<22}" + "".join(f"{k:>18}" for k in DEMO_METRICS)
    click.echo(f"onnx-explain demo: {model} on {samples}")
    click.echo(header)
    for method, scores in report["methods"].items():
        click.echo(f"{method:<22}" + "".join(f"{scores[k]['mean']:>18.4f}" for k in DEMO_METRICS))
    arrows = "".join(
        f"{('(higher better)' if report['methods']['gradient'][k]['higher_is_better'] else '(lower better)'):>18}"
        for k in DEMO_METRICS
    )
    click.echo(f"{'':<22}{arrows}")
    click.echo(f"heatmaps, curves and report -> {out}/")
