"""``onnx-explain concepts``: relevance (or activation) maximisation of a layer's channels over a folder
(:func:`onnx_explain.concepts.concept_examples`)."""

from __future__ import annotations

import click

from .common import handle_errors


@click.command("concepts")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--layer", required=True,
              help="The layer: an ONNX tensor or node name with a (B, C, h, w) output (info --layers lists them).")  # fmt: skip
@click.option(
    "--channel", "channels", multiple=True, type=int, help="A channel to report, repeatable (default all)."
)
@click.option("--mode", type=click.Choice(["relevance", "activation"]), default="relevance", show_default=True,
              help="Rank inputs by the channel's LRP relevance for their class, or by its activation.")  # fmt: skip
@click.option("--top", type=click.IntRange(min=1), default=8, show_default=True, help="Examples per channel.")
@click.option("--max-target", type=click.Choice(["sum", "max"]), default="sum", show_default=True,
              help="A channel's score: its map's sum, or its largest value.")  # fmt: skip
@click.option(
    "--no-abs-norm", is_flag=True, help="Do not divide an input's channel scores by their absolute sum."
)
@click.option("--composite", default="epsilon_plus", show_default=True, help="The LRP composite.")
@click.option("--max-items", type=int, default=None, help="Read at most this many inputs.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@handle_errors
def concepts(model, inputs, out_dir, layer, channels, mode, top, max_target, no_abs_norm, composite, max_items,
             batch_size):  # fmt: skip
    """What a layer's channels stand for (Concept Relevance Propagation's relevance maximisation): the
    inputs that use each channel most for their predicted class (or activate it most), each with its
    conditional heatmap. Writes concepts.json, heatmaps.npz and channel_C.png.

    \b
    Example:
      onnx-explain concepts models/digits.onnx models/samples --layer /features/features.6/Conv --channel 3 -o concepts/
    """
    from ..app.concepts import run_concepts

    out = run_concepts(model, list(inputs), out_dir, layer, list(channels) or None, mode=mode, top=top,
                       max_target=max_target, abs_norm=not no_abs_norm, composite=composite,
                       batch_size=batch_size, max_items=max_items)  # fmt: skip
    click.echo(
        f"{len(out['channels'])} channel(s) of {out['layer']['tensor']} over {out['items']} inputs -> {out_dir}"
    )
    skipped = list(out["skipped"].items())
    for name, why in skipped[:3]:
        click.echo(f"  skipped {name}: {why}", err=True)
    if len(skipped) > 3:
        click.echo(f"  ... {len(skipped)} inputs skipped in all (concepts.json lists them)", err=True)
    for c, examples in list(out["channels"].items())[:8]:
        best = ", ".join(f"{e['item']} ({e['score']:.3g})" for e in examples[:3])
        click.echo(f"  channel {c}: {best}")
