"""Inputs and outputs of the command line: image/array/CSV/text readers with preprocessing read from the
model's input shape, item naming, the manifest; atomic writes (:mod:`onnx_explain.atomic`, re-exported
here)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import (  # noqa: F401 - re-exported: the application's writers import them from here
    TEMP_PREFIX,
    TEMP_SUFFIX,
    atomic_path,
    atomic_save_npz,
    atomic_write_bytes,
    remove_stale_temporaries,
)
from ..errors import InputFileError
from .text import TEXT_SUFFIXES, read_texts  # texts: one per line (with a tokenizer)

#: the file of an output folder that lists its finished items, one JSON line per item
MANIFEST = "manifest.jsonl"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
ARRAY_SUFFIXES = {".npy", ".npz"}
TABLE_SUFFIXES = {".csv"}


@dataclass
class Preprocess:
    """How an image file becomes one model input.

    Defaults come from the model's input shape (:meth:`from_model`): size, layout (NCHW or NHWC) and
    channels (1: grayscale, 3: RGB). Pixels are scaled by ``scale`` (1/255) then normalised by ``mean``
    and ``std`` per channel.
    """

    size: tuple[int, int] | None = None
    layout: str = "NCHW"
    channels: int = 3
    color: str = "RGB"
    resize: str = "resize"  # or 'center-crop': resize the shorter side, then crop
    scale: float = 1 / 255
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    dtype: str = "float32"

    @classmethod
    def from_model(cls, spec, overrides: dict | None = None) -> Preprocess:
        from ..signature import image_layout

        shape = list(spec.shape or [])
        p = cls(dtype=spec.dtype or "float32")
        layout, axis = image_layout(shape)
        if layout == "NHW":  # (B, H, W) grayscale
            p.layout, p.channels, p.size = "NHW", 1, (shape[1], shape[2])
        elif layout is not None:
            p.layout = layout
            if isinstance(shape[axis], int) and shape[axis] in (1, 3, 4):
                p.channels = shape[axis]
            hw = [d for i, d in enumerate(shape[1:], 1) if i != axis]
            if all(isinstance(d, int) for d in hw):
                p.size = (int(hw[0]), int(hw[1]))
        from ..options import check_options

        check_options(
            [k for k, v in (overrides or {}).items() if v is not None], list(asdict(p)), "preprocessing"
        )
        for k, v in (overrides or {}).items():
            if v is not None:
                setattr(p, k, tuple(v) if k == "size" else v)
        return p

    def to_dict(self) -> dict:
        return asdict(self)

    def load_image(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(model input without batch axis, the resized RGB/gray uint8 image for display)."""
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            im = im.convert("L" if self.channels == 1 else "RGB")
        if self.size is not None:
            h, w = self.size
            if self.resize == "center-crop":
                s = max(h / im.height, w / im.width)
                im = im.resize((max(w, round(im.width * s)), max(h, round(im.height * s))), Image.BILINEAR)
                left, top = (im.width - w) // 2, (im.height - h) // 2
                im = im.crop((left, top, left + w, top + h))
            else:
                im = im.resize((w, h), Image.BILINEAR)
        pix = np.asarray(im)
        arr = pix.astype(np.float64)
        if arr.ndim == 2:
            arr = arr[..., None]
        if self.color == "BGR" and arr.shape[-1] == 3:
            arr = arr[..., ::-1]
        arr = arr * self.scale
        mean, std = np.asarray(self.mean, dtype=np.float64), np.asarray(self.std, dtype=np.float64)
        arr = (arr - mean) / std
        if self.layout == "NCHW":
            arr = arr.transpose(2, 0, 1)
        elif self.layout == "NHW":
            arr = arr[..., 0]
        return arr.astype(self.dtype), pix


@dataclass
class Item:
    """One input of a batch run: its name, the model input (or None), display image and error."""

    name: str
    source: str
    x: np.ndarray | None = None
    image: np.ndarray | None = None
    kind: str = "array"  # 'image', 'array', 'table'
    error: str | None = None
    columns: list[str] | None = None
    companions: dict | None = None  # one sample's values of the model's other inputs, by name
    text: str | None = None  # a text to tokenise (kind 'text')
    row: int | None = None  # lazy listing of a ``.npy`` file: the row of ``source`` (-1: the whole array)


def _expand(paths) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(
                q
                for q in p.iterdir()
                if q.is_file()
                and q.suffix.lower() in IMAGE_SUFFIXES | ARRAY_SUFFIXES | TABLE_SUFFIXES | TEXT_SUFFIXES
            )
        else:
            out.append(p)
    return out


def read_items(
    paths,
    preprocess: Preprocess | None,
    input_spec,
    input_names=(),
    texts: bool = False,
    lazy: bool = False,
    batch_first=None,
) -> list[Item]:
    """Every item in ``paths`` (files and folders): images one item each, ``.npy``/``.npz`` arrays one
    item per row (batch-first, already preprocessed), CSV one item per row. An ``.npz`` holding an array
    named after the explained input is one multi-input file: its arrays are named after the model's
    inputs (``input_names``) and item ``i`` is row ``i`` of each. A file that cannot be read becomes an
    item with ``error`` set; the others are unaffected.

    ``lazy`` (the Ray engine's listing, made on the driver): images are named but not decoded and ``.npy``
    files are memory-mapped, so listing a large dataset reads no pixels (:func:`shippable` and
    :func:`load_item` read one item where it is needed); names and order are those of the eager listing.

    ``batch_first(name, array)`` puts a named input's batch axis first (:meth:`Signature.to_batch_first`: a
    state ``[2, B, 128]``, a scalar sample rate); by default every array is batch-first already. Item
    companions are batch-first rows; a value with one row is shared by every item of its file."""
    items: list[Item] = []
    used: set[str] = set()

    def name(base: str) -> str:
        n, k = base, 1
        while n in used:
            k += 1
            n = f"{base}_{k}"
        used.add(n)
        return n

    for p in _expand(paths):
        suffix = p.suffix.lower()
        try:
            if not p.exists():
                raise InputFileError("file not found")
            if suffix in IMAGE_SUFFIXES:
                if preprocess is None:
                    raise InputFileError("the model input is not an image")
                if lazy:
                    items.append(Item(name(p.stem), str(p), None, None, "image"))
                    continue
                x, img = preprocess.load_image(p)
                items.append(Item(name(p.stem), str(p), x, img, "image"))
            elif suffix == ".npz" and input_spec.name in (data := np.load(p, allow_pickle=False)).files:
                items += _named_inputs(p, data, input_spec, input_names, name, batch_first)
            elif suffix in ARRAY_SUFFIXES:
                data = np.load(p, allow_pickle=False, mmap_mode="r" if lazy and suffix == ".npy" else None)
                arrays = (
                    [(p.stem, data)] if suffix == ".npy" else [(f"{p.stem}_{k}", data[k]) for k in data.files]
                )
                for base, arr in arrays:
                    arr = np.asarray(arr)
                    batched = arr.ndim == len(input_spec.shape or arr.shape)
                    rows = arr if batched else arr[None]
                    mapped = isinstance(data, np.memmap)
                    for i, row in enumerate(rows):
                        items.append(
                            Item(
                                name(f"{base}_{i:03d}" if len(rows) > 1 else base),
                                str(p),
                                row,
                                None,
                                "array",
                                row=(i if batched else -1) if mapped else None,
                            )
                        )
            elif suffix in TEXT_SUFFIXES:
                if not texts:
                    raise InputFileError("texts need a tokenizer (--tokenizer tokenizer.json)")
                for i, text in enumerate(read_texts(p)):
                    items.append(Item(name(f"{p.stem}_{i:04d}"), str(p), None, None, "text", text=text))
            elif suffix in TABLE_SUFFIXES:
                for i, (cols, row) in enumerate(_read_csv(p)):
                    items.append(Item(name(f"{p.stem}_row{i:04d}"), str(p), row, None, "table", columns=cols))
            else:
                raise InputFileError(f"unsupported file type {suffix or '(none)'}")
        except Exception as exc:  # noqa: BLE001 - one unreadable input is reported, the rest go on
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            items.append(Item(name(p.stem or "input"), str(p), error=f"{p}: {msg}"))
    return items


def shippable(it: Item) -> Item:
    """A lazily listed item as a small description to send to another process (the Ray engine's read
    stage): a memory-mapped ``.npy`` row is dropped and read there again by :func:`load_item`."""
    return dataclasses.replace(it, x=None) if it.row is not None else it


def load_item(it: Item, preprocess: Preprocess | None) -> Item:
    """Make a lazily listed item (:func:`read_items` with ``lazy``) whole: decode its image, read or copy
    its ``.npy`` row; a file that cannot be read sets ``error`` as the eager listing would."""
    if it.error is None and it.kind == "array" and it.x is None and it.row is not None:
        try:
            data = np.load(it.source, allow_pickle=False, mmap_mode="r")
            it.x = np.array(data if it.row < 0 else data[it.row])
        except Exception as exc:  # noqa: BLE001 - changed or removed since it was listed: this item fails
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            it.error = f"{it.source}: {msg}"
    elif it.error is None and it.kind == "image" and it.x is None:
        p = Path(it.source)
        try:
            if not p.exists():
                raise InputFileError("file not found")
            it.x, it.image = preprocess.load_image(p)
        except Exception as exc:  # noqa: BLE001 - one unreadable input is reported, the rest go on
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            it.error = f"{p}: {msg}"
    elif it.row is not None:  # a view of the memory-mapped file: copied
        it.x = np.array(it.x)
    return it


def _named_inputs(p: Path, data, input_spec, input_names, name, batch_first=None) -> list[Item]:
    """The items of an ``.npz`` whose arrays are named after the model's inputs (in the model's layout;
    ``batch_first`` puts each one's batch axis first)."""
    unknown = [k for k in data.files if k not in input_names and k != input_spec.name]
    if unknown:
        raise InputFileError(
            f"array {unknown[0]!r} is not an input of the model (inputs: {', '.join(input_names)}); "
            "an .npz holding the explained input names its arrays after the inputs"
        )
    arrays = {k: np.asarray(data[k]) for k in data.files}
    main = arrays.pop(input_spec.name)
    if batch_first is not None:
        arrays = {k: batch_first(k, v) for k, v in arrays.items()}
    if main.ndim:  # a value of one row (a scalar, a state of batch 1) goes with every row
        arrays = {
            k: np.repeat(v, len(main), axis=0) if v.ndim and len(v) == 1 else v for k, v in arrays.items()
        }
    sizes = {k: len(v) if v.ndim else 0 for k, v in arrays.items()}
    bad = [k for k, n in sizes.items() if n != len(main)]
    if main.ndim == 0 or bad:
        raise InputFileError(
            f"arrays with different batch sizes: {input_spec.name!r} has {len(main) if main.ndim else 0} "
            f"rows, {bad[0]!r} has {sizes[bad[0]]}"
            if bad
            else f"{input_spec.name!r} is not batch-first"
        )
    many = len(main) > 1
    return [
        Item(
            name(f"{p.stem}_{i:03d}" if many else p.stem),
            str(p),
            main[i],
            None,
            "array",
            companions={k: v[i] for k, v in arrays.items()},
        )  # fmt: skip
        for i in range(len(main))
    ]


def _read_csv(path: Path):
    from ..tabular.data import read_csv

    cols, rows = read_csv(path)
    return [(cols, row) for row in rows]


class JsonlAppender:
    """An append-only JSON-lines file kept open for a run (the manifest).

    Each record is one ``write`` in append mode, so a killed run leaves whole lines and at most a torn last
    one (which :func:`read_manifest` ignores); a torn line left by an earlier run is closed off before the
    first new record, so it cannot swallow it. The file is fsynced at most every ``sync_seconds`` and on
    :meth:`close` (an fsync per line cost more than writing the item on a small model).
    """

    def __init__(self, path: Path, sync_seconds: float = 1.0):
        import time

        self.path, self.sync_seconds, self._clock = Path(path), sync_seconds, time.monotonic
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self._synced = self._clock()
        if os.fstat(self._fd).st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    self._write(b"\n")

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def append(self, record: dict) -> None:
        self._write((json.dumps(record, default=json_default) + "\n").encode())
        if self._clock() - self._synced >= self.sync_seconds:
            os.fsync(self._fd)
            self._synced = self._clock()

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None


def read_manifest(path: Path) -> dict[str, dict]:
    """Last record of every item in a manifest (a torn last line is ignored)."""
    out: dict[str, dict] = {}
    if not Path(path).exists():
        return out
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[rec.get("item")] = rec
    return out


def json_default(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return str(v)
