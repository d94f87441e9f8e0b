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
    """--input-name, --output-name, --device, --allow-nonfinite: how to read the model (see :func:`load_model`)."""
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


def load_model(path, input_name=None, output_name=None, device="auto", **kw):
    """:func:`onnx_explain.load` with the command line's model options (``--allow-nonfinite``)."""
    from ..model import load

    ctx = click.get_current_context(silent=True)
    allow = bool(ctx and ctx.meta.get("onnx_explain.allow_nonfinite"))
    return load(path, input=input_name, output=output_name, device=device, allow_nonfinite=allow, **kw)


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
    """(torch device, onnxruntime device) for ``--device``."""
    if device == "cpu":
        return "cpu", "cpu"
    import torch

    has = torch.cuda.is_available()
    if device == "cuda" and not has:
        from ..errors import DeviceError

        raise DeviceError("--device cuda was asked for, but torch sees no CUDA device")
    return ("cuda", device) if has else ("cpu", "cpu")
