"""How a target is spelled, read without torch: the command line's spellings (:func:`parse_target`), whether
a target names a box (:func:`is_box_target`), and explicit class indices checked against the classes
(:func:`class_indices`). Resolving a target on a model's outputs is :mod:`onnx_explain.targets`' job; these
are what the onnxruntime-only paths (``evaluate`` with class targets) need, so they import no torch."""

from __future__ import annotations

import numpy as np

from .errors import InputDataError

__all__ = ["class_indices", "is_box_target", "is_class_list", "parse_target"]


def parse_target(target):
    """The command line's spellings: ``'3,predicted'``, ``'all,5'`` -> tuples; ``'box:x1,y1,x2,y2[:class]'``,
    ``'detection:K'``, ``'mask:FILE.png|.npy[:class]'``, ``'dot:FILE.npy[:mean|cls]'`` (``cosine:`` alike)
    -> dicts; the rest as given."""
    if isinstance(target, str) and ":" in target and not target.startswith("top:"):
        return _parse_prefixed(target)
    if isinstance(target, str) and "," in target:
        parts = [p.strip() for p in target.split(",")]
        return tuple(p if p in ("predicted", "all") else _int(p, target) for p in parts)
    return target


def _parse_prefixed(target: str) -> dict:
    kind, _, rest = target.partition(":")
    parts = rest.split(":")
    if kind == "box" and 1 <= len(parts) <= 2:
        try:
            box = [float(v) for v in parts[0].split(",")]
        except ValueError:
            box = []
        if len(box) != 4:
            raise InputDataError(f"target {target!r}: box:x1,y1,x2,y2[:class] takes four numbers")
        return {"box": box, "class": _int(parts[1], target) if len(parts) == 2 else 0}
    if kind == "detection" and len(parts) == 1:
        return {"detection": _int(parts[0], target)}
    if kind in ("mask", "dot", "cosine") and 1 <= len(parts) <= 2:
        data = _load_array(parts[0], target)
        if kind == "mask":
            # no class: the foreground (1) of a segmenter, the one channel of a one-channel map
            return {"mask": data.astype(bool), "class": _int(parts[1], target) if len(parts) == 2 else None}
        return {kind: data, **({"pool": parts[1]} if len(parts) == 2 else {})}
    raise InputDataError(
        f"target {target!r} is not understood: use predicted, INDEX, top:K, POSITION,CLASS, "
        "box:x1,y1,x2,y2[:class], detection:K, mask:FILE[:class], dot:FILE.npy[:mean|cls] or cosine:..."
    )


def _load_array(path: str, whole: str) -> np.ndarray:
    """A .npy array, or a PNG/image read as a grey mask (non-zero pixels)."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise InputDataError(f"target {whole!r}: file {path!r} not found")
    try:
        if p.suffix.lower() == ".npy":
            return np.load(p, allow_pickle=False)
        from PIL import Image

        with Image.open(p) as im:
            return np.asarray(im.convert("L")) > 0
    except Exception as exc:  # noqa: BLE001 - numpy and Pillow raise several types
        raise InputDataError(
            f"target {whole!r}: {path} cannot be read ({str(exc).splitlines()[0]})"
        ) from None


def _int(v, whole):
    try:
        return int(v)
    except ValueError:
        raise InputDataError(
            f"target {whole!r}: each part is an index, 'predicted' (last) or 'all', not {v!r}"
        ) from None


def is_box_target(target, out_shape) -> bool:
    return isinstance(target, dict) and ("box" in target or "detection" in target)


def is_class_list(target) -> bool:
    """Whether ``target`` gives the class of each sample (or of all) as integers: no ``'predicted'``,
    ``'top:K'``, element, box, mask or callable, so it resolves without the model's outputs."""
    if isinstance(target, (bool, np.bool_)):
        return False
    if isinstance(target, (int, np.integer)):
        return True
    if isinstance(target, (list, np.ndarray)):
        arr = np.asarray(target)
        return arr.ndim <= 1 and (arr.size == 0 or np.issubdtype(arr.dtype, np.integer))
    return False


def class_indices(target, B: int, C: int) -> np.ndarray:
    """The class of each of ``B`` samples ``(B,)`` from an index, its string, or one index per sample,
    checked against the ``C`` classes.

    Raises
    ------
    InputDataError
        A string that is not an index, the wrong number of indices, or an index out of range.
    """
    if isinstance(target, str):
        try:
            target = int(target)
        except ValueError:
            raise InputDataError(
                f"target must be 'predicted', 'top:K', a class index or one per sample, not {target!r}"
            ) from None
    t = np.asarray(target, dtype=np.int64)
    if t.ndim == 0:
        t = np.full(B, int(t), np.int64)
    if t.shape != (B,):
        raise InputDataError(f"{t.size} targets given for {B} samples")
    if (t < 0).any() or (t >= C).any():
        raise InputDataError(f"target class out of range: the output has {C} classes")
    return t
