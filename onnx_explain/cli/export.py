"""``onnx-explain export SOURCE --out FILE.onnx``."""

from __future__ import annotations

import json

import click

from .common import handle_errors


@click.command("export")
@click.argument("source")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="The ONNX file to write.")
@click.option("--input-shape", help="Example input shape, e.g. 1,3,224,224 (PyTorch sources).")
@click.option("--dynamic-batch/--no-dynamic-batch", default=True, show_default=True)
@click.option("--exporter", type=click.Choice(["dynamo", "legacy"]), default="dynamo", show_default=True)
@click.option("--opset", type=int, default=None, help="ONNX opset (default: the exporter's).")
@click.option("--kind", type=click.Choice(["auto", "torch", "keras", "sklearn"]), default="auto", show_default=True,
              help="What SOURCE is (auto: .keras/.h5/SavedModel folder = keras, .pkl/.joblib = sklearn, else torch).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def export(source, out, input_shape, dynamic_batch, exporter, opset, kind, as_json):
    """Export SOURCE to ONNX and verify the file (onnxruntime against the source model; the conversion back
    to torch). SOURCE is package.module:factory, file.py:factory, a TorchScript (.pt) or torch.export (.pt2)
    file, a Keras model, or a pickled scikit-learn estimator. Nothing is written if verification fails.

    \b
    Examples:
      onnx-explain export torchvision.models:resnet18 --input-shape 1,3,224,224 --out resnet18.onnx
      onnx-explain export mynet.py:build --input-shape 1,1,28,28 --exporter legacy --no-dynamic-batch --out net.onnx
      onnx-explain export clf.pkl --out clf.onnx
    """
    from pathlib import Path

    from ..app import export as ex

    if kind == "auto":
        p = Path(source)
        kind = "keras" if p.suffix in (".keras", ".h5") or (p.is_dir() and (p / "saved_model.pb").exists()) else (
            "sklearn" if p.suffix in (".pkl", ".pickle", ".joblib") else "torch")  # fmt: skip
    if kind == "torch":
        if not input_shape:
            raise click.UsageError("--input-shape is needed to export a PyTorch model")
        try:
            shape = [int(v) for v in input_shape.split(",")]
        except ValueError:
            raise click.UsageError(
                f"--input-shape takes integers separated by commas, not {input_shape!r}"
            ) from None
        report = ex.export_torch(source, out, shape, exporter, dynamic_batch, opset)
    elif kind == "sklearn":
        report = ex.export_sklearn(source, out)
    else:
        report = ex.export_keras(source, out)
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(f"wrote {report['path']}: onnxruntime vs source max |diff| {report['max_abs_ort_vs_source']:.3g} "
                   f"(relative {report['max_rel_ort_vs_source']:.3g}); torch conversion parity max |diff| "
                   f"{report['parity']['max_abs']:.3g} (relative {report['parity']['max_rel']:.3g}, "
                   f"{report['parity']['rel_spread']:.3g} of the spread between samples)")  # fmt: skip
