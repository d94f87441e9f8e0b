"""``onnx-explain audit MODEL INPUTS... --out DIR``."""

from __future__ import annotations

import click

from ..app.audit import TEXT_METRICS, default_methods, default_metrics
from ..methods import METHODS
from ..metrics import METRICS
from .common import handle_errors, model_options, parse_options, target_option


def _defaults(choose) -> str:
    """The audit's default methods or metrics by input modality, for the help text."""
    return "; ".join(f"{kind}: {', '.join(choose(kind)) or 'none'}" for kind in ("image", "table"))


@click.command("audit")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--method", "-m", "methods", multiple=True, type=click.Choice(sorted(METHODS)),
              help=f"Methods to compare, repeatable (default, by input: {_defaults(default_methods)}).")  # fmt: skip
@click.option("--metric", "metrics", multiple=True, type=click.Choice(sorted(METRICS)),
              help=f"Metrics, repeatable (default, by input: {_defaults(default_metrics)}; texts: "
              f"{', '.join(TEXT_METRICS)}).")  # fmt: skip
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
@click.option("--tokenizer", type=click.Path(dir_okay=False),
              help="A tokenizers file (tokenizer.json): INPUTS are .txt (a text per line) or .jsonl ('text' "
              "fields); each text is shown as tokens coloured per method.")  # fmt: skip
@click.option(
    "--max-length", type=int, default=None, help="Longest token sequence (longer texts are truncated)."
)
@click.option("--sanity-layers", type=click.IntRange(min=0), default=3, show_default=True,
              help="Model parameter randomisation check: randomise the top K layers in cascade and compare each "
                   "gradient/LRP/CAM method's explanations (0: skip; one explanation per layer).")  # fmt: skip
@click.option("--sanity-test", type=click.Choice(["mprt", "smooth", "efficient"]), default="mprt", show_default=True,
              help="Which randomisation test: mprt (Adebayo et al.), smooth (explanations averaged over noisy "
                   "copies: SmoothMPRT) or efficient (every layer random, the explanation's entropy must rise: "
                   "EfficientMPRT).")  # fmt: skip
@click.option("--policy", type=click.Path(dir_okay=False),
              help="A release policy (.toml or .json rules on parity, LRP coverage, sanity, scores, errors): "
                   "exit 4 with one line per failed rule.")  # fmt: skip
@target_option
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
    tokenizer,
    max_length,
    sanity_layers,
    sanity_test,
    policy,
    target,
    input_name,
    output_name,
    device,
):
    """Deployment-time audit: conversion parity, LRP coverage, several methods x several metrics on the
    inputs, written as a self-contained report.html (heatmaps or, for texts, coloured tokens; curves, the
    score table, the model's sha256 and every setting), report.json and figures/*.png. The same as the
    Python API's onnx_explain.audit(model, x).save(DIR).

    \b
    Example:
      onnx-explain audit models/digits.onnx models/samples --out audit/
      onnx-explain audit model.onnx texts.txt --tokenizer tokenizer.json --out audit/
    """
    from ..app.audit import audit as run
    from .common import load_model, resolve_device

    rules = None
    if policy:
        from ..policy import load_policy

        rules = load_policy(policy)  # a bad policy is an error before any work
    _, ort_device = resolve_device(device)
    m = load_model(model, input_name, output_name, ort_device)
    r = run(m, list(inputs), list(methods) or None, list(metrics) or None, batch_size=batch_size, seed=seed,
            preprocess=parse_options(pre), max_items=max_items, tokenizer=tokenizer, max_length=max_length,
            target=None if target == "predicted" else target, sanity_layers=sanity_layers,
            sanity_variant=sanity_test)  # fmt: skip
    failed = []
    if rules:  # the verdict goes into the report (page and JSON) before it is written
        from ..policy import check_policy

        failed = check_policy(rules, audit=r.to_dict())
        r.report["policy"] = {
            "path": str(policy),
            "rules": len(rules),
            "failed": failed,
            "passed": not failed,
        }
    r.save(out_dir)
    click.echo(f"audit of {len(r.report['inputs']['used'])} inputs -> {out_dir}/report.html")
    for metric, best in r.best().items():
        click.echo(f"  {metric:<26} best: {best} ({r.scores[metric][best]['mean']:.4g})")
    if r.report.get("metrics_note"):
        click.echo(f"  metrics: {r.report['metrics_note']}")
    for name, sc in r.report.get("sanity", {}).items():
        verdict = "passes" if sc["passed"] else "FAILS"
        sims = ", ".join(f"{v:.2f}" for v in sc["mean_similarity"])
        what = (
            "entropy rise, every layer randomised"
            if sc.get("variant") == "efficient"
            else "similarity to the trained model's, top layers randomised"
        )
        click.echo(f"  sanity {name:<19} {verdict} ({what}: {sims})")
    if not r.report["lrp_coverage"]["ok"]:
        click.echo(f"  LRP: {r.report['lrp_coverage']['error']}")
    if rules:
        from .common import fail

        for line in failed:
            click.echo(f"fail: {line}", err=True)
        if failed:
            fail(f"{len(failed)} policy rule(s) failed ({policy})", 4)
        click.echo(f"  policy {policy}: {len(rules)} rule(s) hold")
