"""``onnx-explain explain MODEL INPUTS... --method NAME --out DIR``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..app.batch import HEATMAPS
from ..baselines import describe as describe_baselines
from ..methods.base import METHODS, NOISES, OUTPUTS, SIGNS
from ..methods.gradient import REDUCES
from ..methods.integrated_gradients import QUADRATURES
from ..metrics.base import AGGREGATORS
from .common import (
    certify_given_probe,
    fail,
    handle_errors,
    model_options,
    parse_options,
    probe_option,
    resolve_device,
    target_option,
)

# flag -> the method parameters it may set (the first one the method has)
FLAG_PARAMS = {
    "samples": ("n_samples", "n_roots"),
    "sigma": ("sigma",),
    "noise": ("noise",),
    "reduce": ("reduce",),
    "base": ("base",),
    "steps": ("n_steps",),
    "quadrature": ("quadrature_method",),
    "baseline": ("baseline",),
    "composite": ("composite",),
    "low": ("low",),
    "high": ("high",),
    "fallback": ("fallback",),
    "window": ("window",),
    "stride": ("strides",),
    "masks": ("n_masks",),
    "p_keep": ("p_keep",),
    "superpixels": ("feature_groups",),
    "background": ("background",),
    "layer": ("layer",),
    "reshape": ("reshape",),
    "perturbation": ("feature_perturbation",),
}


def _methods_epilog() -> str:
    """Every registered method with its description and facts (click keeps \\b blocks)."""
    lines = ["\b", "Methods:"]
    for name, spec in METHODS.items():
        facts = [spec.cost, "/".join(spec.modalities), f"heatmap {spec.sign}"] + [
            "stochastic"
        ] * spec.stochastic
        lines += [f"  {name}: {spec.description}", f"      {'; '.join(facts)}"]
    return "\n".join(lines)


def method_options(method: str, flags: dict, rules: tuple, extra: dict) -> dict:
    """The method's options from the command's flags and ``--option`` pairs; a flag the method does not
    take is a usage error, an ``--option`` key it does not take an unknown-option error."""
    spec = METHODS[method]
    given = {"base": flags["base"]} if flags.get("base") else {}
    accepted = spec.accepted({**given, **extra})
    opts = {}
    for flag, value in flags.items():
        if value is None:
            continue
        target = next((p for p in FLAG_PARAMS[flag] if accepted is None or p in accepted), None)
        if target is None:
            raise click.UsageError(f"--{flag} does not apply to method {method!r}")
        opts[target] = _value(value) if flag == "baseline" else value
    if rules:
        if accepted is not None and "rules" not in accepted:
            raise click.UsageError(f"--rule does not apply to method {method!r}")
        parsed = {}
        for r in rules:
            key, sep, rule = r.partition("=")
            if not sep or not key or not rule:
                raise click.UsageError(f"--rule takes OP_OR_NODE=RULE[:ARGS], not {r!r}")
            parsed[key] = rule
        opts["rules"] = parsed
    opts.update(extra)
    spec.check_options(opts)
    return opts


def _value(text: str):
    """A flag value read as JSON when it parses (a number, a list of per-channel values), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@click.command("explain", epilog=_methods_epilog())
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--method", "-m", type=click.Choice([*sorted(METHODS), "auto"]), default="smoothgrad", show_default=True,
              help="Attribution method (listed below).")  # fmt: skip
@click.option(
    "--out", "-o", "out_dir", type=click.Path(file_okay=False), required=True, help="Output folder."
)
@target_option
@click.option("--samples", type=int, help="Noisy samples (SmoothGrad) or roots (SmoothTaylor).")
@click.option(
    "--sigma", type=float, help="Noise level (relative to each input's range unless --noise absolute)."
)
@click.option("--noise", type=click.Choice(NOISES), help="How --sigma is read.")
@click.option("--reduce", type=click.Choice(REDUCES), help="SmoothGrad, SmoothGrad² or VarGrad.")
@click.option(
    "--base", type=click.Choice(sorted(METHODS)), help="Method smoothed by smoothgrad (default gradient)."
)
@click.option("--steps", type=int, help="Integration steps (integrated_gradients).")
@click.option(
    "--window", help="Occlusion window in the input's layout, e.g. 3,16,16 (or 16,16: all channels)."
)
@click.option("--stride", help="Occlusion strides, e.g. 3,8,8 (default: half the window).")
@click.option("--masks", type=int, help="RISE masks.")
@click.option("--p-keep", "p_keep", type=float, help="RISE: probability that a mask cell is kept.")
@click.option("--superpixels", help="Feature groups of feature_ablation, kernel_shap, lime, shapley_sampling: "
              "slic:100, quickshift, felzenszwalb, grid:8, tokens, columns.")  # fmt: skip
@click.option("--quadrature", type=click.Choice(QUADRATURES), help="Integrated Gradients' quadrature rule.")
@click.option("--baseline", help=f"Baseline: {describe_baselines()} (JSON for numbers and lists).")
@click.option("--layer", help="CAMs: the feature map, an ONNX tensor or node name (default: the last one "
              "before the classifier's pooling; onnx-explain info --layers lists them).")  # fmt: skip
@click.option("--reshape", help="CAMs: how the layer is read as a map: auto (a (B, C, h, w) map; a ViT's tokens on the "
              "image's patch grid), nhwc (a channels-last map), or EXTRA:HxW (tokens after EXTRA leading ones, "
              "e.g. 1:14x28).")  # fmt: skip
@click.option("--background", type=click.Path(dir_okay=False),
              help="TreeSHAP: background rows (.csv/.npy/.npz): the reference rows of the interventional game, "
                   "the node covers of the path-dependent one (default: every row of the table inputs).")  # fmt: skip
@click.option("--perturbation", type=click.Choice(["interventional", "path_dependent"]),
              help="TreeSHAP's game (shap's feature_perturbation; default interventional).")  # fmt: skip
@click.option("--composite", help=f"LRP composite (default {METHODS['lrp'].defaults()['composite']}; "
              "the registered composites of onnx_explain.lrp.COMPOSITES).")  # fmt: skip
@click.option(
    "--rule", "rules", multiple=True, metavar="OP_OR_NODE=RULE[:ARGS]", help="LRP rule override, repeatable."
)
@click.option("--low", type=float, help="Lowest input value (z^B rule).")
@click.option("--high", type=float, help="Highest input value (z^B rule).")
@click.option(
    "--fallback", type=click.Choice(["gradient"]), help="LRP: let the gradient through nodes without a rule."
)
@click.option(
    "--option", "extra", multiple=True, metavar="KEY=VALUE", help="Any other method option (JSON value)."
)
@click.option("--output", "space", type=click.Choice(OUTPUTS), default=None,
              help="Explain the logits before a final softmax, or the output as is (default: the method's, logit).")  # fmt: skip
@click.option("--batch-size", type=int, default=64, show_default=True, help="Rows per forward/backward pass.")
@click.option("--max-memory", default=None, metavar="SIZE",
              help="Memory the passes may plan to use (8G, 512M): rows per pass are capped to fit, and an "
                   "input whose one row cannot fit is refused up front (default: half the memory available).")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--preprocess",
    "preprocess_file",
    type=click.Path(exists=True, dir_okay=False),
    help="JSON preprocessing spec.",
)
@click.option("--size", help="Image size HxW (default: the model's input).")
@click.option("--mean", help="Per-channel mean after scaling to [0, 1], e.g. 0.485,0.456,0.406.")
@click.option("--std", help="Per-channel std, e.g. 0.229,0.224,0.225.")
@click.option("--bgr", is_flag=True, help="Feed channels in BGR order.")
@click.option("--crop", is_flag=True, help="Resize the shorter side, then center-crop.")
@click.option(
    "--sign", type=click.Choice(SIGNS), help="Heatmap of signed or absolute values (default: the method's)."
)
@click.option(
    "--aggregate",
    type=click.Choice(list(AGGREGATORS)),
    default="sum",
    show_default=True,
)
@click.option(
    "--percentile", type=float, default=99.0, show_default=True, help="Cap the heatmap at this percentile."
)
@click.option("--times-input", is_flag=True, help="Multiply the map by the input before drawing.")
@click.option("--overlay", is_flag=True, help="Draw the heatmap over the input instead of beside it.")
@click.option("--heatmaps", type=click.Choice(HEATMAPS), default="panel", show_default=True,
              help="Images per item: the map (<item>.png) and a panel with the input and a colour bar "
              "(<item>_panel.png), the map alone, or none (npz and manifest only).")  # fmt: skip
@click.option(
    "--compress", is_flag=True, help="Deflate the .npz files (slower; float attributions barely shrink)."
)
@click.option("--tokenizer", type=click.Path(dir_okay=False), default=None,
              help="A tokenizers JSON file: .txt (a text per line) and .jsonl ('text' field) inputs are then "
                   "texts, padded per batch with their attention mask; per item .json (tokens, offsets, "
                   "scores) and .html.")  # fmt: skip
@click.option(
    "--max-length",
    type=int,
    default=None,
    help="Truncate texts to this many tokens (default: the model's sequence length, else 512).",
)
@click.option("--format", "fmt", type=click.Choice(["files", "parquet"]), default="files", show_default=True,
              help="Per item files (.npz, images) and manifest.jsonl, or one row per item in Parquet shards "
                   "part-NNNNN.parquet of --shard-rows rows (runs of 10^5+ items; needs pyarrow).")  # fmt: skip
@click.option("--shard-rows", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Rows per Parquet shard (--format parquet; fewer when a shard would pass 256 MB).")  # fmt: skip
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Run here, or on a Ray cluster (pip install 'onnx-explain[ray]').")  # fmt: skip
@click.option("--address", default=None, help="Ray cluster address (--engine ray; default RAY_ADDRESS or a local "
              "instance).")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Ray actors, each loading the model once (default: cluster CPUs / --cpus-per-worker).")  # fmt: skip
@click.option("--readers", type=click.IntRange(min=1), default=None,
              help="Ray read tasks at once, decoding inputs beside the workers (default: one per worker).")  # fmt: skip
@click.option("--cpus-per-worker", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPUs per Ray actor; its torch and onnxruntime threads.")  # fmt: skip
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0, show_default=True,
              help="GPUs per Ray actor (with --device cuda).")  # fmt: skip
@click.option("--resume", is_flag=True, help="Skip items already finished in --out.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@model_options
@probe_option
@handle_errors
def explain(model, inputs, method, out_dir, target, input_name, output_name, device, rules, extra, space, batch_size,
            max_memory, seed,
            preprocess_file, size, mean, std, bgr, crop, sign, aggregate, percentile, times_input, overlay, heatmaps,
            compress, tokenizer, max_length, fmt, shard_rows, engine, address, workers, readers, cpus_per_worker,
            gpus_per_worker, resume, quiet, as_json, **flags):  # fmt: skip
    """Explain every input (image files or folders, .npy/.npz arrays, CSV rows) with a method; write per item
    an .npz (attribution, target, score, input, options), heatmap PNGs and a manifest.jsonl line.

    \b
    Examples:
      onnx-explain explain models/digits.onnx models/samples --method smoothgrad --samples 50 --out out/sg
      onnx-explain explain resnet.onnx photos/ --method lrp --composite epsilon_gamma_box --low -2.2 --high 2.7 \\
          --rule Conv=gamma:0.25 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --out out/lrp
      onnx-explain explain bert.onnx reviews.txt --tokenizer tokenizer.json -m integrated_gradients --out out/txt
    """
    from ..app.batch import explain_files
    from .common import load_model

    if engine == "local" and (address or workers or readers or gpus_per_worker or cpus_per_worker != 1):
        raise click.UsageError(
            "--address, --workers, --readers, --cpus-per-worker and --gpus-per-worker need --engine ray"
        )
    if fmt == "parquet":
        from ..app.shards import require_pyarrow

        require_pyarrow()  # before any work: one line naming what to install
    if engine == "ray":
        from ..app.ray_engine import require_ray

        require_ray()
        # the driver only lists items and checks the model: its device is the CPU; workers use --device
        torch_device, ort_device = "cpu", "cpu"
    else:
        torch_device, ort_device = resolve_device(device)
    tables = [p for p in inputs if Path(p).suffix.lower() == ".csv"]
    if (
        method in ("auto", "treeshap", "linear_shap")
        and tables
        and len(tables) == len(inputs)
        and not input_name
    ):
        from ..app.tables import explain_table_files, table_model

        tm = table_model(model)
        if tm is not None:  # columns across several inputs or strings: the whole pipeline at once
            if target != "predicted" and not str(target).isdigit():
                raise click.UsageError("a table model takes --target predicted or a class index")
            summary = explain_table_files(
                tm, tables, out_dir, method, None if target == "predicted" else int(target),
                background=flags.get("background"), feature_perturbation=flags.get("perturbation") or "interventional",
                heatmaps=heatmaps, batch_size=max(batch_size, 1024),
            )  # fmt: skip
            _report(summary, out_dir, as_json)
            return
    m = load_model(model, input_name, output_name, ort_device)
    pre = {}
    if preprocess_file:
        pre.update(json.loads(open(preprocess_file).read()))
    if size:
        try:
            pre["size"] = tuple(int(v) for v in size.lower().split("x"))
        except ValueError:
            raise click.UsageError(f"--size takes HxW, not {size!r}") from None
    for key, val in (("mean", mean), ("std", std)):
        if val:
            try:
                pre[key] = [float(v) for v in val.split(",")]
            except ValueError:
                raise click.UsageError(f"--{key} takes numbers separated by commas, not {val!r}") from None
    if bgr:
        pre["color"] = "BGR"
    if crop:
        pre["resize"] = "center-crop"
    if method == "auto":  # a gradient method when the graph converts and is certified on the first item
        from ..app.batch import first_item_data
        from ..explainer import auto_method

        data = None if tokenizer else first_item_data(m, inputs, pre)
        method, why = auto_method(m, space, torch_device, None, None if data is None else data)
        click.echo(f"method auto: {method} ({why})", err=True)
    opts = method_options(method, flags, rules, parse_options(extra))
    interventional = opts.get("feature_perturbation", "interventional") == "interventional"
    if (
        "background" in (METHODS[method].accepted(opts) or ())
        and opts.get("background") is None
        and interventional
    ):
        tables = [
            str(p) for p in inputs if Path(p).suffix.lower() in (".csv", ".npy", ".npz") and Path(p).is_file()
        ]
        if tables:  # the whole table, not each batch: results do not depend on --batch-size
            opts["background"] = tables
            click.echo(f"background: every row of {', '.join(tables)}", err=True)
    # conversion and parity first, in the space the method explains (converted once for the whole run): a
    # bad model leaves nothing on disk; methods on onnxruntime alone need no conversion
    if METHODS[method].backend == "torch":
        from ..explainer import converted

        converted(m, torch_device, space or METHODS[method].output)
        certify_given_probe(m, torch_device, space or METHODS[method].output)
    heat = {"aggregate": aggregate, "percentile": percentile, "times_input": times_input, "overlay": overlay}
    if sign:
        heat["sign"] = sign
    if max_memory is not None:
        from ..memory import parse_size

        parse_size(max_memory)  # a bad size is a usage error before anything runs
        opts["max_memory"] = max_memory
    common = dict(output=space, batch_size=batch_size, seed=seed, resume=resume, preprocess=pre, heatmap=heat,
                  heatmaps=heatmaps, compress=compress, quiet=quiet, tokenizer=tokenizer, max_length=max_length,
                  format=fmt, shard_rows=shard_rows, **opts)  # fmt: skip
    if engine == "ray":
        from ..app.ray_engine import explain_ray

        ctx = click.get_current_context(silent=True)
        load_opts = {"input": input_name, "output": output_name,
                     "allow_nonfinite": bool(ctx and ctx.meta.get("onnx_explain.allow_nonfinite"))}  # fmt: skip
        if m.fixed_inputs:
            load_opts["fixed_inputs"] = dict(m.fixed_inputs)
        summary = explain_ray(model, inputs, out_dir, method, target, load_options=load_opts, address=address,
                              workers=workers, readers=readers, cpus_per_worker=cpus_per_worker,
                              gpus_per_worker=gpus_per_worker, device=device, driver_model=m, **common)  # fmt: skip
    else:
        summary = explain_files(m, inputs, out_dir, method, target, device=torch_device, **common)
    _report(summary, out_dir, as_json)


def _report(summary: dict, out_dir, as_json: bool) -> None:
    """The run's one-line summary (or JSON), its failures on stderr, exit 1 when an item failed."""
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(
            f"{summary['ok']} explained, {summary['skipped']} skipped, {summary['failed']} failed -> {out_dir}"
        )
    for f in summary["failures"]:
        click.echo(f"error: {f}", err=True)
    if summary["failed"]:
        fail(f"{summary['failed']} item(s) failed", 1)
