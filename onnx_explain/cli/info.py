"""``onnx-explain info MODEL``."""

from __future__ import annotations

import json

import click

from .common import fail, handle_errors, model_options


@click.command("info")
@click.argument("model", type=click.Path())
@model_options
@click.option(
    "--convert/--no-convert",
    default=True,
    show_default=True,
    help="Convert to torch and check parity with onnxruntime.",
)
@click.option(
    "--probe",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Your data to certify parity on: a .npy batch of the explained input, or an .npz of arrays named "
    "after the inputs (default: a synthetic probe, which can only say 'not certified yet').",
)
@click.option(
    "--probe-range",
    default=None,
    metavar="LO,HI",
    help="The input's range, for the second probe drawn when the first cannot certify parity "
    "(an output that is all zero or the same for every sample). Default: 0,255.",
)
@click.option(
    "--rtol", type=float, default=1e-4, show_default=True, help="Parity tolerance, relative to max|output|."
)
@click.option(
    "--atol", type=float, default=0.0, show_default=True, help="Extra absolute parity tolerance (added)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--layers", "show_layers", is_flag=True,
              help="List the spatial feature maps a CAM can read (--layer of explain), the default marked.")  # fmt: skip
@handle_errors
def info(
    model, input_name, output_name, device, convert, probe, probe_range, rtol, atol, as_json, show_layers
):
    """Describe MODEL: IR version, opsets, producer, inputs and outputs, op histogram, and whether it
    converts to torch with outputs matching onnxruntime.

    \b
    Example:
      onnx-explain info models/digits.onnx
      onnx-explain info resnet.onnx --json --probe batch.npy
    """
    from ..errors import ConversionError, ParityError
    from .common import load_probe, parse_range

    lo_hi = parse_range(probe_range, "--probe-range")
    from pathlib import Path

    if Path(model).is_dir() or _is_decoder_file(
        model
    ):  # a generative export (Optimum, onnxruntime-genai ...)
        return _info_generative(model, device, convert, as_json)
    m, chosen = _load_any(model, input_name, output_name, device)
    data = m.describe()
    data["notes"] = chosen + data["notes"]
    from ..tabular import exact_method

    exact = exact_method(m)  # a tree ensemble or linear model: exact SHAP from the graph, no torch needed
    if exact:
        data["exact"] = {"method": exact[0], "why": exact[1]}
    if show_layers:
        from ..layers import default_layer, layer_candidates, token_layers

        cands = layer_candidates(m.proto)
        default = default_layer(m.proto)["tensor"] if cands else None
        data["layers"] = [{**c, "default": c["tensor"] == default} for c in cands]
        data["token_layers"] = token_layers(m.proto)  # a vision transformer's blocks, named explicitly
    status = 0
    if convert:
        given = None
        try:
            given = None if probe is None else load_probe(probe, m)
            m.convert()  # a node without a converter fails here, whatever the probe
            m.torch_module(probe=given, rtol=rtol, atol=atol, probe_range=lo_hi)
            data["conversion"] = {"ok": True, "certified": True, "batch_mode": m.batch_mode,
                                  "parity": m.parity.to_dict()}  # fmt: skip
        except ParityError as exc:
            if given is not None:  # the user's own data: a real difference
                data["conversion"] = {"ok": False, "certified": False, "error": str(exc)}
                status = 2
            else:  # a made-up probe proves nothing either way: the data will certify it
                data["conversion"] = {"ok": True, "certified": False, "batch_mode": m.batch_mode,
                                      "not_certified": str(exc)}  # fmt: skip
        except ConversionError as exc:
            data["conversion"] = {"ok": False, "certified": False, "error": str(exc)}
            status = 0 if exact else 2  # gradients need torch; the exact method does not
        data["notes"] = data["notes"] + m.runtime.notes
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _print_text(data)
    if status:
        fail(data["conversion"]["error"], status)
    return None


def _is_decoder_file(path) -> bool:
    """Whether the file is a generative decoder with a KV cache or position ids (described and certified
    as a generation model: a synthetic probe's position ids would overrun its position table)."""
    import onnx

    from ..errors import InputSpecError
    from ..generation.layout import decoder_io

    try:
        io = decoder_io(onnx.load(str(path), load_external_data=False), str(path))
    except InputSpecError:
        return False
    except Exception:  # noqa: BLE001 - an unreadable file: the normal path reports it in one line
        return False  # not a decoder, or not readable: the normal path reports it
    return io.has_cache or io.positions is not None


def _info_generative(folder, device, convert, as_json):
    from ..generation import load_generative
    from ..generation.explain import certify

    gm = load_generative(folder, device=device)
    data = {"path": str(folder), **gm.describe()}
    if convert:
        data["conversion"] = certify(gm)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    for k, v in data.items():
        if k == "conversion":
            parity = (
                v["parity"]
                if isinstance(v["parity"], dict) and "max_abs" not in v["parity"]
                else {"decoder": v["parity"]}
            )
            for part, p in parity.items():
                click.echo(f"{'torch:':<18}{part}: {p}")
        else:
            click.echo(f"{k + ':':<18}{v}")


def _load_any(path, input_name, output_name, device):
    """The model, loaded with the command line's choices; a model with several inputs or outputs and no
    choice is described with the first (info describes any model), saying so."""
    from ..errors import InputSpecError
    from .common import load_model

    notes = []
    for _ in range(3):
        try:
            return load_model(path, input_name, output_name, device, choose_output=False), notes
        except InputSpecError as exc:
            names = _names(path)
            if input_name is None and "several inputs" in str(exc) and names[0]:
                input_name = names[0][0]
                notes.append(f"several inputs and none chosen: described with {input_name!r} (--input-name)")
            elif output_name is None and "several float outputs" in str(exc) and names[1]:
                output_name = names[1][0]
                notes.append(
                    f"several outputs and none chosen: described with {output_name!r} (--output-name)"
                )
            else:
                raise
    return load_model(path, input_name, output_name, device, choose_output=False), notes


def _names(path) -> tuple[list[str], list[str]]:
    """(input names, float output names) of the file, read without its weights."""
    import onnx

    from ..signature import spec_from_value_info

    proto = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in inits]
    outputs = [o.name for o in proto.graph.output if spec_from_value_info(o).is_float]
    return inputs, outputs


def _print_text(d: dict) -> None:
    e = click.echo
    e(f"model     {d['path']}")
    e(
        f"producer  {d['producer'] or '?'}   IR {d['ir_version']}   opsets "
        + ", ".join(f"{k} {v}" for k, v in d["opsets"].items())
    )
    e(f"size      {d['nodes']} nodes, {d['parameters']:,} parameters")
    for title, specs, chosen in (
        ("inputs", d["inputs"], d["explained_input"]),
        ("outputs", d["outputs"], d["explained_output"]),
    ):
        e(f"{title}:")
        for s in specs:
            shape = (
                "?"
                if s["shape"] is None
                else "[" + ", ".join("?" if x is None else str(x) for x in s["shape"]) + "]"
            )
            mark = "  <- explained" if s["name"] == chosen else ""
            if title == "inputs" and s["name"] in d.get("per_sample_inputs", ()):
                mark = "  <- per sample, with the explained input"
            elif title == "inputs" and s["name"] in d.get("fixed_inputs", ()):
                mark = "  <- fixed value"
            e(f"  {s['name']}: {s['kind']} {s['dtype'] or ''} {shape}{mark}")
    e("ops:      " + ", ".join(f"{k} {v}" for k, v in d["ops"].items()))
    conv = d.get("conversion")
    if conv is not None:
        if conv.get("certified"):
            p = conv["parity"]
            e(
                f"torch:    converted in {p['convert_seconds']:.2f} s; parity with onnxruntime on a {p['probe']} "
                f"batch of {p['batch']}: max |diff| {p['max_abs']:.3g}, relative to the output "
                f"{p['max_rel']:.3g}, to the spread between samples {p['rel_spread']:.3g} -> OK"
            )
            if conv["batch_mode"] != "dynamic":
                e(f"batch:    {conv['batch_mode']}")
        elif conv.get("not_certified"):
            e(
                "torch:    converted; not certified yet: a synthetic probe cannot certify it "
                f"({conv['not_certified']}). Explaining certifies it on your data; or pass --probe FILE"
            )
        elif d.get("exact"):
            e(f"torch:    no conversion ({conv['error']}): gradient methods and LRP do not apply")
        else:
            e(f"torch:    FAILED ({conv['error']})")
    if d.get("exact"):
        x = d["exact"]
        e(f"exact:    {x['method']}: {x['why']}")
    if "layers" in d:
        e(f"layers:   {len(d['layers'])} spatial feature maps (tensor  <- node, op, shape)")
        for c in d["layers"]:
            shape = "[" + ", ".join("?" if v is None else str(v) for v in c["shape"]) + "]"
            mark = "  <- default for CAMs" if c["default"] else ""
            e(f"  {c['tensor']}  <- {c['node']}, {c['op']}, {shape}{mark}")
    if d.get("token_layers"):
        e(
            f"tokens:   {len(d['token_layers'])} token grids (B, extra + side², D), read as (D, side, side) when named"
        )
        for c in d["token_layers"]:
            shape = "[" + ", ".join("?" if v is None else str(v) for v in c["shape"]) + "]"
            extra, side = c["tokens"]
            e(
                f"  {c['tensor']}  <- {c['node']}, {c['op']}, {shape}, {extra} leading token(s), {side}x{side} grid"
            )
    for note in d["notes"]:
        e(f"note:     {note}")
