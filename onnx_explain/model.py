"""Load and validate an ONNX model: :func:`load` gives a :class:`Model`, which composes three parts, each
one concern and none changing another behind its back:

- :class:`~onnx_explain.signature.Signature` (``signature.py``): inputs, outputs, the explained input and
  output, the logits before a final Softmax, the image layout, input checks;
- :class:`~onnx_explain.runtime.Runner` (``runtime.py``): onnxruntime on the *original* file (the ground
  truth), one cached session, the batch mode, chunked runs;
- :func:`~onnx_explain.convert.checked.convert_checked` (``convert/checked.py``): the differentiable torch
  graph and its parity report, proven against onnxruntime before it is handed out.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .errors import ModelLoadError
from .runtime import Runner
from .signature import Choice, Signature, TensorSpec, spec_from_value_info

__all__ = ["Model", "TensorSpec", "load"]  # and ParityReport, lazily

_TWO_GB = 2**31


def __getattr__(name: str):
    if name == "ParityReport":  # lives with the checked conversion; imported lazily (torch-free load)
        from .convert.checked import ParityReport

        return ParityReport
    raise AttributeError(f"module 'onnx_explain.model' has no attribute {name!r}")


def _external_tensors(model: onnx.ModelProto):
    from onnx.external_data_helper import _get_all_tensors

    for t in _get_all_tensors(model):
        if t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL:
            yield t


def _check_external_locations(model: onnx.ModelProto, base: Path, source: str) -> bool:
    """Refuse external-data locations outside the model's folder; True when there is external data."""
    found = False
    base_real = base.resolve()
    for t in _external_tensors(model):
        found = True
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        p = Path(loc)
        if not loc or p.is_absolute() or ".." in p.parts or ":" in loc:
            raise ModelLoadError(
                f"{source}: tensor {t.name!r} points to external data {loc!r} outside the model's folder; refused"
            )
        full = (base / p).resolve()
        if base_real not in full.parents:
            raise ModelLoadError(
                f"{source}: external data {loc!r} of tensor {t.name!r} leaves the model's folder"
            )
        if not full.is_file():
            raise ModelLoadError(f"{source}: external data file {loc!r} of tensor {t.name!r} is missing")
        keys = {e.key: e.value for e in t.external_data}
        try:
            offset, length = int(keys.get("offset") or 0), keys.get("length")
            length = None if length in (None, "") else int(length)
        except ValueError:
            raise ModelLoadError(
                f"{source}: tensor {t.name!r} has a non-numeric external data offset or length"
            ) from None
        size = full.stat().st_size
        if offset < 0 or (length is not None and (length < 0 or offset + length > size)) or offset > size:
            raise ModelLoadError(
                f"{source}: external data of tensor {t.name!r} (offset {offset}, length {length}) lies outside "
                f"{loc!r} ({size} bytes)"
            )
    return found


#: external tensors at least this big stay in their file, memory-mapped (smaller ones are read in) ...
MAPPED_BYTES = 2**24
#: ... when together they hold at least this much: below it, onnxruntime's weight pre-packing (off for mapped
#: weights, its packed copy would double them) is worth more than the memory
MAPPED_TOTAL = 2**30


def _map_external(model: onnx.ModelProto, base: Path) -> dict:
    """Read small external tensors into ``model``; return the big ones (``>= MAPPED_BYTES``) of the main
    graph as copy-on-write memory maps, name -> array, leaving their references in ``model`` — when they
    total ``MAPPED_TOTAL`` or more (else every tensor is read in and nothing is mapped).

    The mapped weights are then shared by onnxruntime (as session initializers) and torch (as buffers):
    one copy in memory however many consumers, read from the page cache, never held in a ``ModelProto``
    (which cannot be serialised, or even copied, above 2 GB).
    """
    from onnx.external_data_helper import load_external_data_for_tensor

    mapped = {}
    for t in model.graph.initializer:
        if not (t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL):
            continue
        keys = {e.key: e.value for e in t.external_data}
        offset, length = int(keys.get("offset") or 0), keys.get("length")
        if t.data_type == onnx.TensorProto.STRING:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        n_bytes = int(np.prod(t.dims, dtype=np.int64)) * dtype.itemsize
        if (
            n_bytes >= MAPPED_BYTES
            and dtype.kind in "fiub"
            and (length in (None, "") or int(length) == n_bytes)
        ):
            mapped[t.name] = np.memmap(
                base / keys["location"], dtype=dtype, mode="c", offset=offset, shape=tuple(t.dims)
            )
    if sum(m.nbytes for m in mapped.values()) < MAPPED_TOTAL:
        mapped = {}  # a model of ordinary size: read in, pre-packed by onnxruntime
    for t in _external_tensors(model):
        if t.name not in mapped:  # small tensors, and any in subgraphs, are read in
            load_external_data_for_tensor(t, str(base))
            t.data_location = onnx.TensorProto.DEFAULT
            del t.external_data[:]
    return mapped


def _names(model: onnx.ModelProto):
    """Every name and string of the main graph that messages and onnxruntime read."""
    yield model.producer_name
    yield model.producer_version
    for o in model.opset_import:
        yield o.domain
    g = model.graph
    for coll in (g.input, g.output, g.initializer, g.value_info):
        for v in coll:
            yield v.name
    for v in list(g.input) + list(g.output):
        if v.type.HasField("tensor_type"):
            yield from (d.dim_param for d in v.type.tensor_type.shape.dim)
    for n in g.node:
        yield n.name
        yield n.op_type
        yield n.domain
        yield from n.input
        yield from n.output


def _refuse_unsafe(model: onnx.ModelProto, source: str) -> None:
    """Refuse what would crash onnx's or onnxruntime's C++ code (the process dies, no exception) or
    cannot be named in a message: names that are not text, nodes known to abort shape inference."""
    from .convert.prepare import native_crash_hazard

    if not all(isinstance(v, str) for v in _names(model)):
        raise ModelLoadError(
            f"{source}: the graph holds names that are not valid UTF-8 text (a damaged file)"
        )
    hazard = native_crash_hazard(model)
    if hazard:
        raise ModelLoadError(f"{source}: invalid ONNX graph: {hazard}")


def _free_nonpositive_dims(proto: onnx.ModelProto) -> list[str]:
    """Make dims declared as 0 or negative symbolic, in place (our own copy): graph inputs and outputs,
    value_info and subgraphs. PaddlePaddle declares a free batch as ``-1``; onnxruntime reads a negative
    dim as free but ``0`` as a size, and onnx's shape inference aborts on a Slice of a negative dim.
    Returns ``name[axis]`` of each dim changed in the graph's inputs and outputs."""
    from .convert.prepare import symbolic_negative_dims

    changed = []
    for vi in list(proto.graph.input) + list(proto.graph.output):
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value <= 0:
                d.Clear()
                d.dim_param = "batch" if k == 0 else f"{vi.name}_dim{k}"
                changed.append(f"{vi.name}[{k}]")
    inner = symbolic_negative_dims(proto)  # value_info and subgraphs
    if inner:
        changed.append(f"{inner} in value_info or subgraphs")
    return changed


def _read(path: Path) -> onnx.ModelProto:
    source = str(path)
    if not path.exists():
        raise ModelLoadError(f"{source}: file not found")
    if path.is_dir():
        raise ModelLoadError(f"{source}: is a folder, not an ONNX file")
    try:
        model = onnx.load(source, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        size = path.stat().st_size
        text = str(exc).lower()
        if size == 0:
            raise ModelLoadError(f"{source}: empty file, not an ONNX model") from None
        if "truncat" in text or "end of" in text or "unexpected end" in text:
            raise ModelLoadError(f"{source}: truncated ONNX file (the protobuf ends early)") from None
        raise ModelLoadError(f"{source}: not an ONNX file (protobuf parse failed)") from None
    if (
        model.ir_version <= 0
        or not model.HasField("graph")
        or not model.opset_import
        or not model.graph.output
    ):
        raise ModelLoadError(f"{source}: not an ONNX model (no IR version, opset or graph outputs)")
    return model


#: ops onnxruntime registers in the ONNX domain where onnx has no schema (its transformer tools and
#: onnxruntime-genai write them there): the checker's copy moves them to com.microsoft, whose nodes it does
#: not check against schemas
_ORT_ONNX_DOMAIN_OPS = frozenset({"SimplifiedLayerNormalization"})


def _ort_onnx_domain_ops(model: onnx.ModelProto) -> bool:
    return any(n.domain in ("", "ai.onnx") and n.op_type in _ORT_ONNX_DOMAIN_OPS for n in model.graph.node)


def _checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """The copy of an in-memory model the checker reads: onnxruntime's ONNX-domain extras moved to
    com.microsoft, and initializers kept in external data turned into graph inputs of their type and
    shape (an in-memory model has no folder to find the data in; the locations were checked already)."""
    if not _ort_onnx_domain_ops(model) and not any(True for _ in _external_tensors(model)):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    moved = False
    for n in copy.graph.node:
        if n.domain in ("", "ai.onnx") and n.op_type in _ORT_ONNX_DOMAIN_OPS:
            n.domain, moved = "com.microsoft", True
    if moved and not any(o.domain == "com.microsoft" for o in copy.opset_import):
        copy.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    external = [t for t in copy.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        keep = [t for t in copy.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
        inputs = [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in external]
        del copy.graph.initializer[:]
        copy.graph.initializer.extend(keep)
        listed = {i.name for i in copy.graph.input}
        copy.graph.input.extend(i for i in inputs if i.name not in listed)
    return copy


def _check_or_drop_value_info(raw: onnx.ModelProto, path: str | None, source: str) -> str | None:
    """Check the model (by ``path``, or the in-memory ``raw``). A file whose own intermediate shape
    annotations (``value_info``) contradict what its nodes compute — onnxruntime-genai declares a
    rank-0 shape for a rank-1 Constant; onnxruntime ignores such annotations — is checked again without
    them, and on success loses them (shape inference recomputes them); returns a note saying so."""
    try:
        _checker(path if path is not None else _checkable(raw), source)
        return None
    except ModelLoadError as exc:
        if (
            "ShapeInferenceError" not in str(exc)
            or "existing shape" not in str(exc)
            or not raw.graph.value_info
        ):
            raise
        first = str(exc).split("invalid ONNX graph: ", 1)[-1]
    stripped = onnx.ModelProto()
    stripped.CopyFrom(raw)
    del stripped.graph.value_info[:]
    _checker(_checkable(stripped), source)
    n = len(raw.graph.value_info)
    del raw.graph.value_info[:]
    return f"the file's {n} intermediate shape annotations were dropped: they contradict its nodes ({first[:160]})"


def _checker(target, source: str) -> None:
    try:
        onnx.checker.check_model(target, full_check=True)
    except Exception as exc:  # noqa: BLE001 - ValidationError, InferenceError, ...
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise ModelLoadError(f"{source}: invalid ONNX graph: {first}") from None


def _infer(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True), None
    except Exception as exc:  # noqa: BLE001 - keep going without inferred shapes
        return (
            model,
            f"shape inference failed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
        )


def load(
    model,
    input: str | None = None,  # noqa: A002 - mirrors the CLI's --input-name
    output: str | None = None,
    fixed_inputs: dict[str, np.ndarray] | None = None,
    device: str = "auto",
    check: bool = True,
    allow_nonfinite: bool = False,
    batch_axes: dict[str, int | None] | None = None,
) -> Model:
    """Load, validate and describe an ONNX model.

    Parameters
    ----------
    model : str, os.PathLike or onnx.ModelProto
        Path of an ``.onnx`` file (external data is read from its folder only) or an in-memory model.
    input : str, optional
        Name of the input to explain; required when the model has several inputs.
    output : str, optional
        Name of the output to explain; by default the one float tensor output (ZipMap outputs count as
        the probability tensor they wrap, labels are skipped).
    fixed_inputs : dict, optional
        Values for the other inputs of a multi-input model, batch dimension 1 (repeated to each batch).
    device : {'auto', 'cpu', 'cuda'}
        onnxruntime provider choice.
    check : bool
        Run ``onnx.checker`` (full check). Turn off only for models you know the checker mis-reads.
    allow_nonfinite : bool
        Accept input arrays holding NaN or ±Inf (refused by default, naming the sample).
    batch_axes : dict, optional
        The axis each other input holds its batch on, where the file's dim names do not say it (a
        recurrent state ``[2, B, 128]``: ``{"state": 1}``; None: no batch axis). Read from the names
        otherwise; scalar inputs have none. Arrays are given in the model's layout; a value of batch 1 is
        shared by every sample.

    Returns
    -------
    Model

    Raises
    ------
    ModelLoadError, InputSpecError
        Missing, corrupt, truncated or invalid file; unsafe external data; inputs/outputs that cannot
        be chosen. Each message is one line naming the file.
    """
    if device not in ("auto", "cpu", "cuda"):
        from .errors import DeviceError

        raise DeviceError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
    if isinstance(model, onnx.ModelProto):
        source, path = "<in-memory model>", None
        raw = onnx.ModelProto()
        raw.CopyFrom(model)  # never edit the caller's object
        rewrites = _rewrite_before_checks(raw, source)
        if check and raw.ByteSize() < _TWO_GB:
            note = _check_or_drop_value_info(raw, None, source)
            if note:
                rewrites.append(note)
        has_external = any(True for _ in _external_tensors(raw))
        base = None
    else:
        try:
            path = Path(os.fspath(model))
        except TypeError:
            raise ModelLoadError(
                f"a model is a path or an onnx.ModelProto, not {type(model).__name__}"
            ) from None
        source = str(path)
        raw = _read(path)
        base = path.parent
        has_external = _check_external_locations(raw, base, source)
        rewrites = _rewrite_before_checks(raw, source)
        if check:
            # by path: never serialises the (possibly > 2 GB) model; our rewritten copy when it differs
            by_path = not (rewrites or _ort_onnx_domain_ops(raw)) or raw.ByteSize() >= _TWO_GB
            note = _check_or_drop_value_info(raw, source if by_path else None, source)
            if note:
                rewrites.append(note)
    inferred, note = _infer(raw)
    weights = _map_external(inferred, base) if has_external and base is not None else {}
    notes = [n for n in (note, *rewrites) if n]
    if weights:
        size = sum(w.nbytes for w in weights.values())
        notes.append(
            f"{len(weights)} weight tensor(s), {size / 2**30:.2f} GiB, memory-mapped from external data and "
            "shared by onnxruntime and torch (onnxruntime's weight pre-packing is off for this model)"
        )
    read = _Read(inferred, path, source, tuple(notes), bool(rewrites), weights)
    choice = Choice(input, output, fixed_inputs, allow_nonfinite, batch_axes)
    return Model._build(read, choice, device)


@dataclass(frozen=True)
class _Read:
    """What :func:`load` read from the file: the shape-inferred ``proto``, where it came from, the
    ``notes`` of reading, whether the proto was ``rewritten`` (onnxruntime then runs our copy, not the
    file) and the memory-mapped external ``weights``."""

    proto: onnx.ModelProto
    path: Path | None
    source: str
    notes: tuple
    rewritten: bool
    weights: dict


def _rewrite_before_checks(raw: onnx.ModelProto, source: str) -> list[str]:
    """Refuse what would crash the C++ checks, then make the rewrites onnx and onnxruntime need (dims
    declared 0 or negative made symbolic; empty trailing node inputs dropped). Returns notes, one per
    kind of change; an empty list means the proto is the file as it is."""
    from .convert.prepare import drop_trailing_empty_inputs

    _refuse_unsafe(raw, source)
    notes = []
    freed = _free_nonpositive_dims(raw)
    if freed:
        notes.append(f"dims declared as 0 or negative are symbolic: {', '.join(freed)}")
    dropped = drop_trailing_empty_inputs(raw)
    if dropped:
        notes.append(f"{dropped} empty trailing node input(s) dropped (omitted optional inputs)")
    if raw.ir_version and raw.ir_version < 4:
        listed = {i.name for i in raw.graph.input}
        missing = [t.name for t in raw.graph.initializer if t.name not in listed]
        if missing:  # IR < 4 wants every initializer listed as an input; writers that did not are still run
            was, raw.ir_version = raw.ir_version, 4
            notes.append(
                f"IR {was} file with initializers that are not graph inputs ({', '.join(missing[:3])}"
                f"{' ...' if len(missing) > 3 else ''}): read as IR 4, which allows them (onnxruntime runs it so)"
            )
    return notes


class Model:
    """A validated ONNX model: its :attr:`signature`, onnxruntime (:attr:`runtime`) and the checked torch
    conversion (:meth:`torch_module`). Use :func:`load` to make one.

    Nothing here changes what an earlier call saw: :meth:`describe` gives the same answer before and
    after the first run, and a module handed out is never moved or edited afterwards (another device
    gets another object).
    """

    def __init__(
        self,
        proto: onnx.ModelProto,
        path,
        signature: Signature,
        device: str = "auto",
        notes=(),
        ort_path=...,
        weights: dict | None = None,
    ):
        self.path: Path | None = path
        self.source: str = signature.source
        self.device = device
        self.signature = signature
        self._proto = proto  # shape-inferred, external data loaded, ZipMap outputs replaced
        self._notes = tuple(notes)
        # onnxruntime reads the file itself unless our copy differs from it (then ort_path is None)
        #: big weights memory-mapped from external data (name -> array), shared by onnxruntime and torch
        self.weights = dict(weights or {})
        self.runtime = Runner(proto, path if ort_path is ... else ort_path, signature, device, self.weights)
        self._modules: dict = {}  # space name -> the converted cpu module (converted once)
        #: (space name, probe key, rtol, atol, range) -> ParityReport; the user's data is keyed by its shapes
        self._certified: dict = {}
        self._by_space: dict = {}  # space name -> the key of its last certification
        self._moved: dict = {}  # (id of the cpu module, device) -> the module on that device
        self._siblings: dict = {}  # input name -> this model explaining that input (with_input)
        #: (space, input row shapes) -> bytes one row adds to a forward+backward (onnx_explain.memory)
        self.row_bytes_cache: dict = {}
        #: what is derived from the graph once (its tree ensemble's view: onnx_explain.tabular) by key
        self.derived: dict = {}

    @classmethod
    def _build(cls, read: _Read, choice: Choice, device: str) -> Model:
        from .convert.prepare import tensor_outputs

        proto = read.proto
        declared = [spec_from_value_info(v) for v in proto.graph.output]
        # ZipMap outputs stand for the probability tensor they wrap: onnxruntime runs the rewritten graph
        # then (it returns only graph outputs), torch always does. ``proto`` is our own copy.
        replaced = tensor_outputs(proto)
        notes = list(read.notes)
        if not choice.allow_nonfinite:
            from .tabular.trees import tree_nodes

            if tree_nodes(proto.graph):  # trees route a missing value (NaN) as their nodes say
                choice = dataclasses.replace(choice, allow_nonfinite=True)
                notes.append(
                    "tree ensemble: NaN in an input is a missing value, routed as the trees' nodes say"
                )
        signature = Signature.build(proto, declared, replaced, read.source, choice)
        for old, new in replaced.items():
            notes.append(
                f"output {old!r} (ZipMap of maps) stands for its tensor {new!r}"
                if new
                else f"output {old!r} is not a tensor: not explainable"
            )
        ort_path = None if read.rewritten else read.path
        return cls(proto, read.path, signature, device, notes, ort_path=ort_path, weights=read.weights)

    # ---------------------------------------------------------------- the signature
    @property
    def proto(self) -> onnx.ModelProto:
        """The shape-inferred model as the file holds it (external data read in, except the big weights in
        :attr:`weights`, which keep their references)."""
        return self._proto

    @property
    def notes(self) -> list[str]:
        """What loading found worth saying (ZipMap outputs, failed shape inference ...)."""
        return list(self._notes)

    inputs = property(lambda self: self.signature.inputs, doc="Graph inputs (initializers excluded).")
    outputs = property(lambda self: self.signature.outputs, doc="Graph outputs as the file declares them.")
    tensor_outputs = property(
        lambda self: self.signature.tensor_outputs, doc="Outputs as run (ZipMap -> tensor)."
    )
    input = property(lambda self: self.signature.input, doc="The explained input (a TensorSpec).")
    output = property(lambda self: self.signature.output, doc="The explained output (a TensorSpec).")
    logit_name = property(lambda self: self.signature.logit_name, doc="The tensor before a final Softmax.")
    fixed_inputs = property(lambda self: self.signature.fixed_inputs, doc="Values of the other inputs.")
    layout = property(lambda self: self.signature.layout, doc="'NCHW', 'NHWC', 'NHW' or None (not an image).")
    channel_axis = property(lambda self: self.signature.channel_axis, doc="1 (NCHW), 3 (NHWC) or None.")

    def n_classes(self, space: str = "logit") -> int | None:
        """Number of scores per sample when the file fixes it (else None)."""
        return self.signature.n_classes(space)

    def space_name(self, space: str) -> str:
        """ONNX tensor explained in ``space`` (``'logit'`` or ``'output'``)."""
        return self.signature.space_name(space)

    def validate_input(self, x) -> np.ndarray:
        """Check ``x`` against the explained input (see :meth:`Signature.validate_input`)."""
        return self.signature.validate_input(x)

    def split_inputs(self, x) -> tuple[np.ndarray, dict]:
        """The checked explained batch and per-sample companion arrays from an array or a dict of arrays
        named after the inputs (see :meth:`Signature.split_inputs`)."""
        return self.signature.split_inputs(x)

    def with_input(self, name: str | None) -> Model:
        """This model explaining input ``name`` instead (None or the same name: this model). The other
        inputs are then fixed (``fixed_inputs``) or given per sample, as here; the sibling is built once
        and shares nothing that could change this one.

        Raises
        ------
        InputSpecError
            No input of that name, or one of a type onnx-explain cannot explain.
        """
        from .signature import choose_input

        if name is None or name == self.input.name:
            return self
        sibling = self._siblings.get(name)
        if sibling is None:
            spec = choose_input(self.signature.inputs, name, self.source)
            fixed = {k: v for k, v in self.signature.fixed_inputs.items() if k != name}
            sig = dataclasses.replace(self.signature, input=spec, fixed_inputs=fixed)
            sibling = Model(
                self._proto, self.path, sig, self.device, self._notes, ort_path=self.runtime.path,
                weights=self.weights,
            )  # fmt: skip
            self._siblings[name] = sibling
        return sibling

    companions = property(
        lambda self: self.signature.companions,
        doc="The other inputs each call gives per sample (no fixed value): a list of TensorSpec.",
    )

    def probe_batch(self, n: int = 2, seed: int = 0) -> np.ndarray:
        """Random data of the input's dtype and shape (batch ``n``) for parity checks.

        Floats are standard normal; integer inputs are drawn below the row count of the first
        embedding table (Gather) they index, else below 10. Unknown non-batch dims are 32.
        """
        from .convert.batch_dim import index_bound

        return self.signature.probe_batch(n, seed, index_bound(self._proto, self.input.name))

    @property
    def opsets(self) -> dict[str, int]:
        return {(o.domain or "ai.onnx"): o.version for o in self._proto.opset_import}

    def op_histogram(self) -> dict[str, int]:
        """Count of each (domain-qualified) op type in the main graph."""
        hist: dict[str, int] = {}
        for n in self._proto.graph.node:
            key = f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
            hist[key] = hist.get(key, 0) + 1
        return dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))

    def describe(self) -> dict:
        """Everything ``onnx-explain info`` prints about the file, as plain data (runs nothing)."""
        p = self._proto
        return {
            "path": self.source,
            "ir_version": int(p.ir_version),
            "opsets": self.opsets,
            "producer": f"{p.producer_name} {p.producer_version}".strip(),
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "explained_input": self.input.name,
            "per_sample_inputs": [c.name for c in self.companions],
            "fixed_inputs": sorted(self.fixed_inputs),
            "explained_output": self.output.name,
            "layout": self.layout,
            "nodes": len(p.graph.node),
            "parameters": int(sum(int(np.prod(t.dims, dtype=np.float64)) for t in p.graph.initializer)),
            "ops": self.op_histogram(),
            "notes": self.notes,
        }

    # ---------------------------------------------------------------- onnxruntime
    @property
    def batch_mode(self) -> str:
        """``'dynamic'``, ``'freed'`` or ``'chunked'`` (see :class:`~onnx_explain.runtime.BatchMode`)."""
        return self.runtime.batch.mode

    @property
    def fixed_batch(self) -> int | None:
        """Chunk size when the batch is baked into the graph, else None."""
        return self.runtime.batch.fixed_batch

    def predict(self, x, batch_size: int = 64, space: str = "output") -> np.ndarray:
        """Run the explained output on onnxruntime.

        Parameters
        ----------
        x : array_like or dict of str to array_like
            A batch for the explained input, batch first; or a dict of batch-first arrays named after the
            model's inputs (the explained one and per-sample values of the others, e.g.
            ``{"input_ids": ids, "attention_mask": mask}``).
        batch_size : int
            Rows per onnxruntime call; the result does not depend on it.
        space : {'output', 'logit'}
            The output as the model returns it, or the logits before its final Softmax/LogSoftmax.

        Returns
        -------
        numpy.ndarray
            The explained output, one row per input row.

        Raises
        ------
        InputDataError
            ``x`` does not fit the input (shape, dtype, non-finite values).
        ModelRunError
            onnxruntime refuses the model or fails running it (names the file and node).
        """
        x, companions = self.split_inputs(x)
        return self.runtime.run(self.space_name(space), x, batch_size, companions)

    # ---------------------------------------------------------------- torch
    @property
    def parity(self):
        """:class:`~onnx_explain.convert.checked.ParityReport` of the last certification (or None)."""
        if not self._by_space:
            return None
        return self._certified[next(reversed(self._by_space.values()))]

    def convert(self, space: str = "output"):
        """The converted torch graph of ``space``'s output, *not yet certified* (converted once per
        space; :meth:`torch_module` certifies it on data).

        Raises
        ------
        ConversionError
            A node has no converter or its converter failed (names the node and op).
        """
        from .convert.checked import convert_graph

        name = self.space_name(space)
        if name not in self._modules:
            self.runtime.session()  # a file onnxruntime refuses is reported as such first
            self._modules[name] = convert_graph(
                self.runtime.batch.graph, self.signature, name, self.runtime.batch.fixed_batch,
                self.source, self.weights,
            )[0]  # fmt: skip
        return self._modules[name]

    def torch_module(
        self,
        device: str = "cpu",
        probe=None,
        rtol: float = 1e-4,
        atol: float = 0.0,
        space: str = "output",
        probe_range: tuple[float, float] | None = None,
    ):
        """The converted torch graph, certified against onnxruntime on ``probe``.

        The graph is converted once per space; it is certified once per probe *shape*: the user's data
        is the probe (``explain`` passes its batch), and a batch of new shapes (another sequence length,
        another image size) is certified when it first appears.

        Parameters
        ----------
        device : str
            torch device. Each device gets its own copy; a module already handed out never moves.
        probe : array_like, dict or (array_like, dict), optional
            The data to certify on: a batch of the explained input, or a dict of batch-first arrays named
            after the inputs (its companions with it). Its first rows are used (see
            :func:`~onnx_explain.convert.checked.given_probe`). Default: the last certification of this
            space, else a *synthetic* probe (2 standard-normal rows with made-up companions, then rows
            drawn from ``probe_range``) — which can fail on a model that needs real data (a map that is
            ~0 on noise, a pooling that needs a minimum size): such a failure means "not certified yet",
            not that the conversion is wrong.
        rtol, atol : float
            The gate: ``max|torch - ort| <= atol + rtol * max|ort|``, and at most 1 % of the largest
            difference between samples (see :mod:`onnx_explain.convert.checked`).
        space : {'output', 'logit'}
            The output as the model computes it, or the logits before a final Softmax/LogSoftmax (the
            default of the attribution methods).
        probe_range : (float, float), optional
            The input's range for the second probe (default ``(0, 255)``).

        Returns
        -------
        ConvertedModel
            ``module(x) -> explained output``; ``module.graph`` is the ``torch.fx.GraphModule``.

        Raises
        ------
        ConversionError
            A node has no converter or its converter failed (names the node and op).
        ParityError
            torch and onnxruntime disagree beyond the gate, or the probe cannot certify the output.
        """
        from .convert.checked import convert_checked

        name = self.space_name(space)
        probe_key = None if probe is None else _probe_key(probe)
        key = (name, probe_key, float(rtol), float(atol), None if probe_range is None else tuple(probe_range))
        default = probe is None and rtol == 1e-4 and atol == 0.0 and probe_range is None
        if default and name in self._by_space:
            key = self._by_space[name]  # a request with no settings reuses the certification already made
        if key not in self._certified:
            module, report = convert_checked(
                self.runtime.batch.graph, self.signature, self.runtime, space,
                probe, rtol, atol,
                probe_range=probe_range, weights=self.weights, module=self.convert(space),
            )  # fmt: skip
            self._modules[name] = module  # the graph onnxruntime fuses, when only that one holds
            self._certified[key] = report
        self._by_space.pop(name, None)
        self._by_space[name] = key
        return self._on_device(self._modules[name], device)

    def _on_device(self, module, device):
        import torch

        dev = torch.device(device)
        if dev.type == "cpu":
            return module
        moved = self._moved.get((id(module), str(dev)))
        if moved is None:
            import copy

            moved = copy.deepcopy(module).to(dev)
            self._moved[(id(module), str(dev))] = moved
        return moved


def _probe_key(probe) -> tuple:
    """A hashable key for a probe: the shapes (after the batch axis) and dtypes of its arrays. The user's
    data is certified once per shape: another batch of the same shapes reuses the certification."""
    if isinstance(probe, tuple):
        x, comp = probe
        arrays = {"": x, **(comp or {})}
    elif isinstance(probe, dict):
        arrays = probe
    else:
        arrays = {"": probe}
    return tuple(
        (k, np.shape(v)[1:], np.asarray(v).dtype.str) for k, v in sorted(arrays.items(), key=lambda kv: kv[0])
    )
