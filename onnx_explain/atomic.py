"""Atomic file writes: a killed run leaves either the old file or the new one, never a partial one, and
the temporaries it leaves are removed on resume. Used by the results that save themselves
(:meth:`onnx_explain.generation.GenerationExplanation.save`) and by every writer of the application
(:mod:`onnx_explain.app.io` re-exports them)."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
from pathlib import Path

import numpy as np

__all__ = [
    "TEMP_PREFIX",
    "TEMP_SUFFIX",
    "atomic_path",
    "atomic_save_npz",
    "atomic_write_bytes",
    "remove_stale_temporaries",
]

TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"  # temporary files of atomic writes: .<name>.<pid>-<n>.tmp
_TEMP_NUMBERS = itertools.count()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename: a killed
    run leaves either the old file or the new one, never a partial one (safe from several threads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f"{TEMP_PREFIX}{path.name}.{os.getpid()}-{next(_TEMP_NUMBERS)}{TEMP_SUFFIX}"
        try:  # the usual permissions: 0666 less the umask
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:  # left by a killed process of the same id
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: Path):
    """A temporary path in ``path``'s folder to write a whole file to (by any writer, e.g. pyarrow's),
    renamed to ``path`` when the block ends without an error and deleted otherwise: a killed run leaves a
    temporary (removed by :func:`remove_stale_temporaries` on resume), never a partial ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TEMP_PREFIX}{path.name}.{os.getpid()}-{next(_TEMP_NUMBERS)}{TEMP_SUFFIX}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporary files a killed run's atomic writes left in ``folder``; returns how many."""
    n = 0
    for p in Path(folder).glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}") if Path(folder).is_dir() else ():
        if p.is_file() and p.name.count(".") >= 3:
            p.unlink(missing_ok=True)
            n += 1
    return n


def atomic_save_npz(path: Path, compress: bool = False, **arrays) -> None:
    """An ``.npz`` written atomically; stored (float attributions barely deflate: a few percent smaller for
    tens of times the time) unless ``compress``."""
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
