"""``explain --format parquet``: results of runs of 10⁵+ items as sharded Parquet files instead of files
per item.

Why Parquet and not Zarr: a result is a *record* per item (its id, source file, target, score, options,
method extras as JSON) plus an attribution array whose shape can differ between items (top:K, texts of
different lengths). Parquet holds exactly that: one row per item, the attribution as a ``list<float32>``
column with its shape beside it, strings and numbers as typed columns. pyarrow reads it lazily (a column,
a row group, a filter on ``item``) and Ray Data, pandas, polars, DuckDB and Spark read and write it
natively. Zarr stores dense n-dimensional chunks: it suits one big array of one shape, and it would need a
second store for the per-item records and a convention for ragged items.

Layout of an output folder: ``part-00000.parquet``, ``part-00001.parquet``, ... of about ``shard_rows``
rows each (fewer when the rows would pass ``shard_bytes``: 10⁴ ResNet maps are 6 GB), written in input
order, each through a temporary file and a rename, so a shard is complete or absent; a killed run leaves
at most a hidden temporary (names starting with ``.``, which pyarrow's and Ray's dataset readers skip).
Items that failed are lines of ``_failures.jsonl`` (a leading ``_``: also skipped by those readers).
``--resume`` skips the items of the complete shards and numbers new shards after them.

On Ray (``--engine ray``) the workers write the shards themselves (:func:`write_worker_shards`), so no
attribution passes through the driver: a worker's call of up to :func:`rows_per_call` items becomes
``part-<run>-<first item's position>.parquet`` (cut again at ``shard_bytes``), where ``<run>`` numbers the
runs of a folder as the local engine numbers its shards. Names sort in input order within a run, and a
call that Ray retries after its worker died writes the same name with the same rows.

Columns: ``item``, ``source``, ``method``, ``target`` (the resolved target as JSON: a class, a list for
top:K, an element), ``requested_target`` (as given, JSON), ``score`` (``list<double>``, one value per
explained target), ``attribution`` (``list<float32>``, C order) and ``attribution_shape``, ``input`` and
``input_shape`` (and ``input_<name>``/``input_<name>_shape`` for the model's other inputs), ``options``
and ``extras`` (JSON), ``seconds``. :func:`read_shards` gives the rows back with the arrays reshaped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputFileError, OnnxExplainError
from .io import JsonlAppender, atomic_path, json_default, remove_stale_temporaries

FORMATS = ("files", "parquet")
SHARD_ROWS = 10_000
SHARD_BYTES = 256 * 2**20  # also keeps a list column's int32 offsets far below 2**31 values
FAILURES = "_failures.jsonl"
PART = "part-{:05d}.parquet"


def require_pyarrow():
    """pyarrow's ``parquet`` module, or a one-line error naming what to install."""
    try:
        import pyarrow as pa  # noqa: F401
        import pyarrow.parquet as pq
    except ImportError:
        raise OnnxExplainError(
            "--format parquet needs pyarrow: pip install pyarrow (or pip install 'onnx-explain[ray]')"
        ) from None
    return pq


def shard_paths(out_dir) -> list[Path]:
    """The complete shards of an output folder, in order (temporaries are hidden files, never listed)."""
    return sorted(p for p in Path(out_dir).glob("part-*.parquet") if p.is_file())


class ParquetSink:
    """Collects the rows of a run in input order and writes them as shards (see the module's text).

    The rows are written on the calling thread when a shard is full and on :meth:`close`; a row counts as
    done only once its shard has been renamed into place.
    """

    def __init__(self, out_dir, shard_rows: int = SHARD_ROWS, shard_bytes: int = SHARD_BYTES):
        require_pyarrow()
        if shard_rows < 1:
            raise OnnxExplainError(f"shard rows must be at least 1, not {shard_rows}")
        self.out_dir = Path(out_dir)
        self.shard_rows, self.shard_bytes = shard_rows, shard_bytes
        self._rows: list[dict] = []
        self._bytes = 0
        self._failures: JsonlAppender | None = None
        existing = shard_paths(self.out_dir)
        self._next = 1 + max((int(p.stem.split("-")[1]) for p in existing), default=-1)
        self.written: list[Path] = []

    @property
    def next_shard(self) -> int:
        """The number the next shard written to this folder takes (after those already there)."""
        return self._next

    def done(self, resume: bool) -> set[str]:
        """The items of the complete shards (with ``resume``; the temporaries of a killed run are
        removed). Without ``resume`` a folder that already holds shards is refused: new shards beside
        them would repeat items."""
        existing = shard_paths(self.out_dir)
        if not resume:
            if existing:
                raise OnnxExplainError(
                    f"{self.out_dir} already holds {existing[0].name}: use --resume to go on, or another --out"
                )
            return set()
        remove_stale_temporaries(self.out_dir)
        pq = require_pyarrow()
        names: set[str] = set()
        for p in existing:
            try:
                names.update(pq.read_table(p, columns=["item"]).column("item").to_pylist())
            except Exception as exc:  # noqa: BLE001 - pyarrow's errors: one line naming the shard
                raise InputFileError(f"{p}: not a readable shard ({str(exc).splitlines()[0]})") from None
        return names

    def record(self, rec: dict) -> None:
        """A row (from :func:`item_row`) or a failure record (``status`` 'error')."""
        if rec.get("status") == "error":
            if self._failures is None:
                self._failures = JsonlAppender(self.out_dir / FAILURES)
            self._failures.append(rec)
            return
        self._rows.append(rec)
        self._bytes += sum(np.asarray(v).nbytes for k, v in rec.items() if isinstance(v, np.ndarray))
        if len(self._rows) >= self.shard_rows or self._bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the collected rows as the next shard (atomically)."""
        if not self._rows:
            return
        pq = require_pyarrow()
        table = rows_table(self._rows)
        path = self.out_dir / PART.format(self._next)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        self._next += 1
        self.written.append(path)
        self._rows, self._bytes = [], 0

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._failures is not None:
                self._failures.close()


class WorkerShardSink(ParquetSink):
    """The driver's side of ``--format parquet`` on Ray: the workers write the shards
    (:func:`write_worker_shards`) and hand back one small record per item; failures and ``resume`` are
    kept here as by :class:`ParquetSink`."""

    def record(self, rec: dict) -> None:
        if rec.get("status") == "error":
            super().record(rec)
        elif (path := self.out_dir / rec["shard"]) not in self.written:
            self.written.append(path)

    def flush(self) -> None:
        pass  # nothing collected here


def rows_per_call(shard_rows: int, input_shape, itemsize: int = 4, shard_bytes: int = SHARD_BYTES) -> int:
    """How many items a Ray worker takes per call with ``--format parquet``: ``shard_rows``, fewer when
    their inputs and attributions (about twice the input's bytes; 512 for an unknown axis) would pass
    ``shard_bytes``, so that a call's rows, held until its shard is written, stay bounded."""
    n = 1
    for d in list(input_shape or [])[1:]:
        n *= d if isinstance(d, int) and d > 0 else 512
    return max(1, min(int(shard_rows), shard_bytes // max(1, 2 * n * itemsize)))


def write_worker_shards(out_dir, run: int, records: list[dict], positions: dict[str, int],
                        shard_bytes: int = SHARD_BYTES) -> list[dict]:  # fmt: skip
    """Write the rows among ``records`` (a Ray worker's call, in input order) as shards named after
    ``run`` and their first item's position (``positions``: item name → position in the run); returns
    the records to hand back, each row replaced by ``{'item', 'status': 'ok', 'shard'}``."""
    pq = require_pyarrow()
    out, rows, size = [], [], 0

    def flush():
        nonlocal rows, size
        if rows:
            path = Path(out_dir) / f"part-{run:05d}-{positions[rows[0]['item']]:09d}.parquet"
            with atomic_path(path) as tmp:
                pq.write_table(rows_table(rows), tmp)
            out.extend({"item": r["item"], "status": "ok", "shard": path.name} for r in rows)
            rows, size = [], 0

    for rec in records:
        if rec.get("status") == "error":
            out.append(rec)
            continue
        rows.append(rec)
        size += sum(np.asarray(v).nbytes for v in rec.values() if isinstance(v, np.ndarray))
        if size >= shard_bytes:
            flush()
    flush()
    order = {r["item"]: i for i, r in enumerate(records)}
    return sorted(out, key=lambda r: order[r["item"]])  # errors and rows in the call's order


def item_row(it, e, k: int, seconds: float, target_spec, attribution=None, x=None, extras=None) -> dict:
    """Sample ``k`` of explanation ``e`` for item ``it`` as a row (arrays kept as arrays until the shard
    is written)."""
    attribution = np.asarray(e.attribution[k] if attribution is None else attribution, dtype=np.float32)
    x = np.asarray(it.x if x is None else x)
    if extras is None:
        extras = {
            key: np.asarray(v)[k]
            for key, v in e.extras.items()
            if isinstance(v, np.ndarray) and np.ndim(v) >= 1 and len(v) == len(e.attribution)
        }
    row = {
        "item": it.name,
        "source": it.source,
        "method": e.method,
        "target": json.dumps(np.asarray(e.target[k]).tolist()),
        "requested_target": json.dumps(target_spec, default=json_default),
        "score": np.atleast_1d(np.asarray(e.score[k], dtype=np.float64)).ravel(),
        "attribution": attribution,
        "input": x,
        "options": json.dumps(e.options, default=json_default, sort_keys=True),
        "extras": json.dumps(extras, default=json_default, sort_keys=True),
        "seconds": float(seconds),
    }
    for name, v in (it.companions or {}).items():
        row[f"input_{name}"] = np.asarray(v)
    return row


def rows_table(rows: list[dict]):
    """A pyarrow table of rows: array values become a flat list column and a ``<name>_shape`` column."""
    import pyarrow as pa

    columns = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if isinstance(values[0], np.ndarray):
            flat = [np.ascontiguousarray(v).ravel() for v in values]
            offsets = np.concatenate([[0], np.cumsum([len(f) for f in flat])]).astype(np.int32)
            columns[key] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(flat)))
            if key != "score":
                columns[f"{key}_shape"] = pa.array([list(v.shape) for v in values], pa.list_(pa.int32()))
        else:
            columns[key] = pa.array(values)
    return pa.table(columns)


def read_shards(out_dir, columns=None) -> list[dict]:
    """Every row of an output folder's shards, in order, with ``attribution``, ``input`` (and the other
    inputs) reshaped to their arrays and ``target``, ``requested_target``, ``options``, ``extras`` parsed.
    Fine for thousands of rows; for more, read the shards with ``pyarrow.dataset`` and select columns."""
    pq = require_pyarrow()
    out = []
    for p in shard_paths(out_dir):
        table = pq.read_table(p, columns=columns)
        names = table.column_names
        data = {n: table.column(n) for n in names}
        for i in range(table.num_rows):
            row = {}
            for n in names:
                if n.endswith("_shape") and n[: -len("_shape")] in data:
                    continue
                col = data[n]
                if f"{n}_shape" in data:
                    flat = col[i].values.to_numpy(zero_copy_only=False)
                    row[n] = flat.reshape(data[f"{n}_shape"][i].as_py())
                elif n == "score":
                    row[n] = col[i].values.to_numpy(zero_copy_only=False)
                elif n in ("target", "requested_target", "options", "extras"):
                    row[n] = json.loads(col[i].as_py())
                else:
                    row[n] = col[i].as_py()
            out.append(row)
    return out
