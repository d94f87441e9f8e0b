"""Tables: rows of features from CSV (with or without a header), ``.npy`` and ``.npz`` files, or arrays.

A CSV cell that is empty or reads ``nan``/``NA`` is a missing value (NaN): tree ensembles route missing
values as their nodes say, other models see NaN and are refused by the input checks.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..errors import InputFileError

__all__ = ["read_csv", "read_table"]

_MISSING = {"", "nan", "na", "n/a", "null", "none", "?"}


def _number(v: str) -> float:
    v = v.strip()
    if v.lower() in _MISSING:
        return float("nan")
    return float(v)


def read_csv(path) -> tuple[list[str], np.ndarray]:
    """``(column names, rows (n, columns) float32)`` of a CSV file; a first row that is not all numbers
    is the header (else the columns are named ``x0, x1 ...``)."""
    path = Path(path)
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        return [], np.zeros((0, 0), dtype=np.float32)
    try:
        [_number(v) for v in rows[0]]
        cols, data = [f"x{i}" for i in range(len(rows[0]))], rows
    except ValueError:
        cols, data = [c.strip() for c in rows[0]], rows[1:]
    out = np.empty((len(data), len(cols)), dtype=np.float32)
    for i, r in enumerate(data):
        if len(r) != len(cols):
            raise InputFileError(f"{path}: row {i + 1} has {len(r)} values, the header {len(cols)} columns")
        try:
            out[i] = [_number(v) for v in r]
        except ValueError as exc:
            raise InputFileError(
                f"{path}: row {i + 1}: {exc} (only numbers and empty cells are read)"
            ) from None
    return cols, out


def read_table(source, name: str | None = None) -> np.ndarray:
    """Rows ``(n, features)`` from an array, a ``.csv`` / ``.npy`` / ``.npz`` file (an ``.npz`` array named
    ``name`` when there is one, else its only array), or a list of these (stacked)."""
    if isinstance(source, (list, tuple)) and source and isinstance(source[0], (str, os.PathLike)):
        parts = [read_table(s, name) for s in source]
        widths = {p.shape[1:] for p in parts}
        if len(widths) > 1:
            raise InputFileError(f"tables of different widths: {', '.join(map(str, source))}")
        return np.concatenate(parts)
    if not isinstance(source, (str, os.PathLike)):
        a = np.asarray(source)
        return a.reshape(1, -1) if a.ndim == 1 else a
    path = Path(source)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return read_csv(path)[1]
        if suffix == ".npy":
            a = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if name in keys:
                    a = z[name]
                elif len(keys) == 1:
                    a = z[keys[0]]
                else:
                    raise InputFileError(f"{path}: holds {', '.join(keys)}; none is named {name!r}")
        else:
            raise InputFileError(f"{path}: a table is read from .csv, .npy or .npz, not {suffix or '(none)'}")
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{path}: {str(exc).splitlines()[0]}") from None
    return a.reshape(1, -1) if a.ndim == 1 else a
