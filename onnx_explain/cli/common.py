"""Options and error handling shared by the commands."""

from __future__ import annotations

import functools
import sys

import click


def fail(message: str, code: int = 2):
    """Print one line to stderr and exit with ``code`` (no traceback)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn):
    """Turn the package's errors (and a missing file) into one line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..errors import OnnxExplainError

        try:
            return fn(*args, **kwargs)
        except OnnxExplainError as exc:
            fail(str(exc), exc.exit_code)

    return wrapper


def model_options(fn):
    """--input-name, --output-name, --device: how to read the model."""
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
    fn = click.option("--input-name", default=None, help="Input to explain (required with several inputs).")(
        fn
    )
    return fn


def target_option(fn):
    """--target predicted|INDEX|top:K."""
    return click.option("--target", "-t", default="predicted", show_default=True,
                        help="Class to explain: predicted, an index, or top:K.")(fn)  # fmt: skip


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
