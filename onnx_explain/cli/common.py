"""Options and error handling shared by the commands."""

from __future__ import annotations

import functools
import sys

import click


def fail(message: str, code: int = 2):
    """Print one line to stderr and exit with ``code`` (no traceback)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


#: ``onnx-explain --debug``: show tracebacks instead of the one-line messages
DEBUG = {"on": False}


def report_exception(exc: BaseException) -> None:
    """The last resort: one line for any exception and an exit status, never a traceback.

    The package's errors exit with their own status (2); anything else is a defect of onnx-explain:
    status 3 and a request to report it (``--debug`` shows the traceback).
    """
    from ..errors import OnnxExplainError

    if isinstance(exc, OnnxExplainError):
        fail(_one_line(str(exc)) or type(exc).__name__, exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        fail("interrupted", 130)
    if isinstance(exc, MemoryError):
        fail("out of memory (try a smaller --batch-size)", 2)
    if isinstance(exc, OSError) and exc.filename is not None:
        fail(f"{exc.filename}: {exc.strerror or exc}", 2)
    text = _one_line(str(exc))
    fail(
        f"internal error: {type(exc).__name__}{': ' + text if text else ''} — please report this "
        "(run with 'onnx-explain --debug ...' for the traceback)",
        3,
    )


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    return first if len(first) <= 500 else first[:497] + "..."


def handle_errors(fn):
    """Run a command so that no exception leaves it as a traceback (see :func:`report_exception`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - the CLI's last-resort handler
            if DEBUG["on"]:
                raise
            report_exception(exc)

    return wrapper


def load_array(path: str, what: str):
    """A ``.npy`` array (or the only array of an ``.npz``) for option ``what``; one-line errors."""
    import numpy as np

    from ..errors import InputFileError

    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputFileError(f"{path} ({what}): cannot read a numpy array: {_one_line(str(exc))}") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            if len(data.files) != 1:
                raise InputFileError(
                    f"{path} ({what}): an .npz holding one array expected, found {data.files}"
                )
            return data[data.files[0]]
    return data


def load_probe(path: str, model):
    """``--probe FILE``: a ``.npy`` batch of the explained input, or an ``.npz`` of arrays named after the
    model's inputs (the explained one and its per-sample companions) -> what ``torch_module(probe=)``
    takes."""
    import numpy as np

    from ..errors import InputFileError

    if str(path).endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError) as exc:
            raise InputFileError(f"{path} (--probe): cannot read: {_one_line(str(exc))}") from None
        if model.input.name in arrays:
            return model.split_inputs(arrays)
        if len(arrays) != 1:
            raise InputFileError(
                f"{path} (--probe): name its arrays after the model's inputs ({model.input.name!r} ...), "
                f"found {sorted(arrays)}"
            )
        return model.split_inputs(next(iter(arrays.values())))
    return model.split_inputs(load_array(path, "--probe"))


def parse_fixed(pairs, what: str = "--fixed") -> dict:
    """``NAME=VALUE`` pairs -> ``{name: array}``: VALUE is a number or JSON list, or a ``.npy`` file."""
    import json
    import os

    import numpy as np

    out = {}
    for p in pairs or ():
        name, sep, value = p.partition("=")
        if not sep or not name:
            raise click.UsageError(f"{what} takes NAME=VALUE or NAME=FILE.npy, not {p!r}")
        if value.endswith(".npy") or os.path.isfile(value):
            out[name] = load_array(value, f"{what} {name}")
            continue
        try:
            out[name] = np.asarray(json.loads(value))
        except (json.JSONDecodeError, ValueError):
            raise click.UsageError(
                f"{what} {name}: {value!r} is neither a number, a JSON list nor an existing .npy file"
            ) from None
    return out


def parse_batch_axes(pairs) -> dict:
    """``NAME=AXIS`` pairs (AXIS an integer or 'none') -> ``{name: axis}``."""
    out = {}
    for p in pairs or ():
        name, sep, value = p.partition("=")
        if not sep or not name:
            raise click.UsageError(f"--batch-axis takes NAME=AXIS, not {p!r}")
        if value.lower() == "none":
            out[name] = None
            continue
        try:
            out[name] = int(value)
        except ValueError:
            raise click.UsageError(
                f"--batch-axis {name}: {value!r} is not an axis (an integer or 'none')"
            ) from None
    return out


def parse_range(text: str | None, what: str) -> tuple[float, float] | None:
    """``'LO,HI'`` -> ``(lo, hi)`` with lo < hi; None stays None."""
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise click.UsageError(f"{what} takes LO,HI (two numbers), not {text!r}") from None
    if not lo < hi:
        raise click.UsageError(f"{what}: LO must be below HI, got {text!r}")
    return lo, hi


def _remember(ctx, param, value):
    ctx.meta[f"onnx_explain.{param.name}"] = value
    return value


def model_options(fn):
    """--input-name, --output-name, --device, --allow-nonfinite, --fixed: how to read the model (see
    :func:`load_model`)."""
    fn = click.option(
        "--batch-axis",
        multiple=True,
        expose_value=False,
        callback=_remember,
        metavar="NAME=AXIS",
        help="The axis input NAME holds its batch on, where the file's dim names do not say it (a state "
        "[2, B, 128]: --batch-axis state=1; 'none' for an input without one). Repeatable.",
    )(fn)
    fn = click.option(
        "--fixed",
        multiple=True,
        expose_value=False,
        callback=_remember,
        metavar="NAME=VALUE",
        help="A value for input NAME shared by every item (a number, a JSON list or a .npy file): "
        "--fixed sr=16000 --fixed state=state.npy. Repeatable.",
    )(fn)
    fn = click.option(
        "--allow-nonfinite",
        is_flag=True,
        expose_value=False,
        callback=_remember,
        help="Accept inputs holding NaN or infinite values (refused per item by default).",
    )(fn)
    fn = click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
        help="onnxruntime provider (CUDA only when it loads).",
    )(fn)
    fn = click.option(
        "--output-name", default=None, help="Output to explain (default: the one float output)."
    )(fn)
    fn = click.option(
        "--input-name",
        default=None,
        help="Input to explain (default: the only one, or input_ids / pixel_values / the only float one).",
    )(fn)
    return fn


def probe_option(fn):
    """--probe FILE: certify the conversion on this data before anything runs (else on the first items)."""
    return click.option(
        "--probe",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        expose_value=False,
        callback=_remember,
        help="Certify the torch conversion on this data first: a .npy batch of the explained input or an "
        ".npz of arrays named after the inputs (default: the first items of each new input shape).",
    )(fn)


def certify_given_probe(model, torch_device: str, space: str) -> None:
    """Certify ``model`` on ``--probe FILE`` when the command line gave one (nothing otherwise)."""
    ctx = click.get_current_context(silent=True)
    path = ctx.meta.get("onnx_explain.probe") if ctx else None
    if path:
        model.torch_module(device=torch_device, space=space, probe=load_probe(path, model))


def load_model(path, input_name=None, output_name=None, device="auto", choose_output: bool = True, **kw):
    """:func:`onnx_explain.load` with the command line's model options (``--allow-nonfinite``, ``--fixed``).

    A file with several float outputs and no ``--output-name`` is explained at its first float output,
    as ``info`` describes it, with a note on stderr (``choose_output=False`` refuses instead)."""
    from ..errors import InputSpecError
    from ..model import load

    ctx = click.get_current_context(silent=True)
    allow = bool(ctx and ctx.meta.get("onnx_explain.allow_nonfinite"))
    fixed = parse_fixed(ctx.meta.get("onnx_explain.fixed") if ctx else None)
    if fixed:
        kw["fixed_inputs"] = {**fixed, **kw.get("fixed_inputs", {})}
    axes = parse_batch_axes(ctx.meta.get("onnx_explain.batch_axis") if ctx else None)
    if axes:
        kw["batch_axes"] = {**axes, **kw.get("batch_axes", {})}
    for _ in range(3):  # at most: choose the input, then the output
        try:
            return load(
                path, input=input_name, output=output_name, device=device, allow_nonfinite=allow, **kw
            )
        except InputSpecError as exc:
            if not choose_output:
                raise
            if input_name is None and "several inputs" in str(exc):
                input_name = first_input_name(path)
                click.echo(
                    f"note: several inputs and none chosen: explaining {input_name!r}, the others given per "
                    "item (an .npz named after the inputs) or by --fixed (--input-name to choose)",
                    err=True,
                )
            elif output_name is None and "several float outputs" in str(exc):
                output_name = float_output_names(path)[0]
                click.echo(
                    f"note: several float outputs and none chosen: explaining {output_name!r} (--output-name "
                    "to choose)",
                    err=True,
                )
            else:
                raise
    return load(path, input=input_name, output=output_name, device=device, allow_nonfinite=allow, **kw)


def first_input_name(path) -> str:
    """The first graph input (initializers excluded) that is not a scalar, else the first."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    ranked = [i for i in inputs if len(i.type.tensor_type.shape.dim) >= 1]
    return (ranked or inputs)[0].name


def float_output_names(path) -> list[str]:
    """The file's float tensor outputs, in order, read without its weights."""
    import onnx

    from ..signature import spec_from_value_info

    proto = onnx.load(str(path), load_external_data=False)
    return [o.name for o in proto.graph.output if spec_from_value_info(o).is_float]


def target_option(fn):
    """--target predicted|INDEX|top:K|POSITION,CLASS."""
    return click.option("--target", "-t", default="predicted", show_default=True,
                        help="What to explain: a class (predicted, an index, top:K) of a (B, C) output; an "
                             "element of a (B, L, C) output as POSITION,CLASS (CLASS may be 'predicted', "
                             "POSITION 'all' for the sum over positions), e.g. 3,predicted; a detector's box "
                             "box:x1,y1,x2,y2:CLASS or detection:K; a segmenter's mask:FILE.png:CLASS; an "
                             "embedding's dot:REF.npy[:mean|cls] or cosine:REF.npy[:mean|cls].")(fn)  # fmt: skip


def parse_options(pairs) -> dict:
    """``KEY=VALUE`` pairs; values are read as JSON when they parse (numbers, lists, true/false), else text."""
    import json

    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--option takes KEY=VALUE, not {p!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def resolve_device(device: str) -> tuple[str, str]:
    """(torch device, onnxruntime device) for ``--device``: :func:`onnx_explain.runtime.resolve_device`,
    imported when a command runs (``--help`` imports no onnx)."""
    from ..runtime import resolve_device as resolve

    return resolve(device)
