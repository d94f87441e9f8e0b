"""Reading an ``explain`` output folder back (the manifest and ``<item>.npz`` files, or Parquet shards):
the finished items' names, inputs, attributions, targets and companion inputs, for ``evaluate`` on either
engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputFileError
from .io import MANIFEST, read_manifest

__all__ = ["attribution_names", "load_attributions"]


def load_attributions(
    att_dir, sources=None, names=None
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, dict]:
    """(names, inputs, attributions, targets, companions) of every finished item of an ``explain`` output
    folder (only those made from ``sources`` files or folders, when given; only ``names``, in that order,
    when given); ``companions`` holds the items' values of the model's other inputs, by input name (empty
    for single-input models)."""
    att_dir = Path(att_dir)
    if not (att_dir / MANIFEST).exists() and any(att_dir.glob("part-*.parquet")):
        return _load_shards(att_dir, sources, names)
    wanted = names
    names = attribution_names(att_dir, sources)
    if wanted:
        names = [n for n in wanted if n in set(names)]
    if not names:
        raise InputFileError(
            f"{att_dir}: no finished items (manifest.jsonl and <item>.npz from 'onnx-explain explain')"
        )
    xs, attrs, targets, companions = [], [], [], {}
    for n in names:
        with np.load(att_dir / f"{n}.npz") as z:
            xs.append(z["input"])
            a, t = z["attribution"], np.atleast_1d(z["target"])
            attrs.append(a if a.ndim == z["input"].ndim else a[0])  # top:K files: the top class is evaluated
            targets.append(int(t[0]))
            for key in z.files:
                if key.startswith("input_"):
                    companions.setdefault(key[len("input_") :], []).append(z[key])
    if len({v.shape for v in xs}) > 1 and all(v.ndim == 1 and v.dtype.kind in "iu" for v in xs):
        # texts of different lengths: pad to the longest (id 0, attribution 0) with an attention mask, so
        # the token metrics see each text with its own real tokens (padding is masked, never perturbed)
        L = max(len(v) for v in xs)

        def pad(v):
            return np.pad(v, (0, L - len(v)))

        comp = {k: np.stack([pad(c) for c in v]) for k, v in companions.items() if len(v) == len(names)}
        comp.setdefault("attention_mask", np.stack([pad(np.ones(len(v), np.int64)) for v in xs]))
        return (
            names,
            np.stack([pad(v) for v in xs]),
            np.stack([pad(a) for a in attrs]),
            np.asarray(targets),
            comp,
        )
    try:
        comp = {k: np.stack(v) for k, v in companions.items() if len(v) == len(names)}
        return names, np.stack(xs), np.stack(attrs), np.asarray(targets), comp
    except ValueError:
        raise InputFileError(
            f"{att_dir}: the items' inputs differ in shape; evaluate them in groups of one shape"
        ) from None


def attribution_names(att_dir, sources=None) -> list[str]:
    """The finished items of an ``explain`` output folder (files or Parquet shards), in order, without
    reading their arrays; only those made from ``sources`` files or folders, when given."""
    att_dir = Path(att_dir)
    if not (att_dir / MANIFEST).exists() and any(att_dir.glob("part-*.parquet")):
        from .shards import read_shards

        found = [(r["item"], r["source"]) for r in read_shards(att_dir, columns=["item", "source"])]
    else:
        records = read_manifest(att_dir / MANIFEST)
        found = [(n, r.get("source", "")) for n, r in records.items()
                 if r.get("status") == "ok" and (att_dir / f"{n}.npz").exists()]  # fmt: skip
    if sources:
        roots = [Path(s).resolve() for s in sources]
        found = [(n, src) for n, src in found
                 if any(Path(src).resolve() == q or q in Path(src).resolve().parents for q in roots)]  # fmt: skip
    return [n for n, _ in found]


def _load_shards(att_dir: Path, sources, names=None) -> tuple:
    """:func:`load_attributions` of a ``--format parquet`` folder."""
    from .shards import read_shards

    rows = read_shards(att_dir)
    if names:
        by_name = {r["item"]: r for r in rows}
        rows = [by_name[n] for n in names if n in by_name]
    if sources:
        roots = [Path(s).resolve() for s in sources]
        rows = [r for r in rows if any(Path(r["source"]).resolve() == q or q in Path(r["source"]).resolve().parents
                                       for q in roots)]  # fmt: skip
    if not rows:
        raise InputFileError(f"{att_dir}: no finished items (part-*.parquet from 'onnx-explain explain')")
    attrs = [
        r["attribution"] if r["attribution"].ndim == r["input"].ndim else r["attribution"][0] for r in rows
    ]
    targets = [int(np.atleast_1d(r["target"])[0]) for r in rows]
    comp_names = [k[len("input_") :] for k in rows[0] if k.startswith("input_")]
    try:
        comp = {k: np.stack([r[f"input_{k}"] for r in rows]) for k in comp_names}
        return (
            [r["item"] for r in rows],
            np.stack([r["input"] for r in rows]),
            np.stack(attrs),
            np.asarray(targets),
            comp,
        )
    except ValueError:
        raise InputFileError(
            f"{att_dir}: the items' inputs differ in shape; evaluate them in groups of one shape"
        ) from None
