"""Load and validate an ONNX model; run it on onnxruntime; convert it to a checked torch graph.

:func:`load` gives a :class:`Model`. Its two faces:

- ``Model.predict(x, batch_size)``: onnxruntime on the *original* file (the ground truth), one cached
  session, chunked by ``batch_size``.
- ``Model.torch_module()``: the differentiable torch graph (onnx2torch plus this package's fixes),
  checked against onnxruntime on a probe batch before it is handed out.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .errors import InputDataError, InputSpecError, ModelLoadError, ParityError
from .runtime import make_session, run_chunked

__all__ = ["Model", "ParityReport", "TensorSpec", "load"]

_FLOAT_TYPES = {onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE}
_INT_TYPES = {
    onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32,
}  # fmt: skip
_TWO_GB = 2**31


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of a graph input or output.

    ``shape`` holds ints for fixed dims, strings for symbolic dims and None for unknown ones; it is
    None when the rank is unknown. ``kind`` is ``'tensor'``, ``'sequence'``, ``'map'`` or ``'optional'``.
    """

    name: str
    kind: str
    dtype: str | None
    shape: tuple | None

    @property
    def is_float(self) -> bool:
        return self.kind == "tensor" and self.dtype in ("float16", "float32", "float64")

    def shape_str(self) -> str:
        if self.shape is None:
            return "?"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"

    def __str__(self) -> str:
        return f"{self.name}: {self.kind} {self.dtype or ''} {self.shape_str()}".replace("  ", " ")


@dataclass
class ParityReport:
    """Outcome of comparing the torch graph with onnxruntime on one probe batch."""

    max_abs: float
    max_rel: float
    rtol: float
    atol: float
    batch: int
    passed: bool
    convert_seconds: float
    probe: str = "random"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _spec(value_info: onnx.ValueInfoProto) -> TensorSpec:
    t = value_info.type
    kind = t.WhichOneof("value")
    kind = {
        "tensor_type": "tensor",
        "sequence_type": "sequence",
        "map_type": "map",
        "optional_type": "optional",
    }.get(kind, str(kind))
    if kind != "tensor":
        return TensorSpec(value_info.name, kind, None, None)
    tt = t.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else None
    if not tt.HasField("shape"):
        return TensorSpec(value_info.name, kind, dtype, None)
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorSpec(value_info.name, kind, dtype, tuple(dims))


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
    return found


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

    Returns
    -------
    Model

    Raises
    ------
    ModelLoadError, InputSpecError
        Missing, corrupt, truncated or invalid file; unsafe external data; inputs/outputs that cannot
        be chosen. Each message is one line naming the file.
    """
    if isinstance(model, onnx.ModelProto):
        source, path = "<in-memory model>", None
        raw = onnx.ModelProto()
        raw.CopyFrom(model)  # never edit the caller's object
        if check and raw.ByteSize() < _TWO_GB:
            _checker(raw, source)
        has_external = any(True for _ in _external_tensors(raw))
        base = None
    else:
        path = Path(os.fspath(model))
        source = str(path)
        raw = _read(path)
        base = path.parent
        has_external = _check_external_locations(raw, base, source)
        if check:
            _checker(source, source)  # by path: never serialises the (possibly > 2 GB) model
    inferred, note = _infer(raw)
    if has_external and base is not None:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(inferred, str(base))
    return Model(inferred, path, source, input, output, fixed_inputs or {}, device, [note] if note else [])


class Model:
    """A validated ONNX model, runnable on onnxruntime and convertible to a checked torch graph.

    Use :func:`load` to make one.
    """

    def __init__(self, proto, path, source, input_name, output_name, fixed_inputs, device, notes):
        from .convert.prepare import tensor_outputs

        self.path: Path | None = path
        self.source: str = source
        self.device = device
        self.notes: list[str] = list(notes)
        self._proto = proto  # shape-inferred, external data loaded
        init_names = {t.name for t in proto.graph.initializer}
        self.inputs = [_spec(v) for v in proto.graph.input if v.name not in init_names]
        self.outputs = [_spec(v) for v in proto.graph.output]
        self.input = self._choose_input(input_name)
        missing = [i.name for i in self.inputs if i.name != self.input.name and i.name not in fixed_inputs]
        if missing:
            raise InputSpecError(f"{source}: inputs {missing} need values: pass fixed_inputs= for them")
        self.fixed_inputs = {k: np.asarray(v) for k, v in fixed_inputs.items()}
        # ZipMap outputs stand for the probability tensor they wrap: onnxruntime runs the rewritten
        # graph then (it returns only graph outputs), torch always does.
        self._replaced = tensor_outputs(proto)  # edits the output list of our own copy, in place
        for old, new in self._replaced.items():
            self.notes.append(
                f"output {old!r} (ZipMap of maps) stands for its tensor {new!r}"
                if new
                else f"output {old!r} is not a tensor: not explainable"
            )
        self.tensor_outputs = [_spec(v) for v in self._proto.graph.output]
        self.output = self._choose_output(output_name)
        self.logit_name = self._find_logit()
        self._session = None
        self._batch_resolved = False
        self.fixed_batch: int | None = None  # chunk size when the batch is baked in
        self.batch_mode = "dynamic"
        self._ort_model = None  # bytes/path onnxruntime runs: the original unless the batch was freed
        self._tmpdir = None
        self._torch: dict = {}  # space -> converted module
        self._parity: dict = {}  # space -> ParityReport

    # ---------------------------------------------------------------- description
    @property
    def proto(self) -> onnx.ModelProto:
        """The shape-inferred model (external data loaded)."""
        return self._proto

    def _choose_input(self, name: str | None) -> TensorSpec:
        if not self.inputs:
            raise InputSpecError(f"{self.source}: the model has no inputs")
        if name is None:
            if len(self.inputs) > 1:
                names = ", ".join(i.name for i in self.inputs)
                raise InputSpecError(
                    f"{self.source}: the model has several inputs ({names}); choose one with input= / --input-name"
                )
            spec = self.inputs[0]
        else:
            spec = next((i for i in self.inputs if i.name == name), None)
            if spec is None:
                names = ", ".join(i.name for i in self.inputs)
                raise InputSpecError(f"{self.source}: no input named {name!r} (inputs: {names})")
        if spec.kind != "tensor" or spec.dtype not in _np_names(_FLOAT_TYPES | _INT_TYPES):
            raise InputSpecError(
                f"{self.source}: input {spec.name!r} has unsupported type {spec.kind} {spec.dtype}; "
                "onnx-explain explains float or integer tensors"
            )
        return spec

    def _choose_output(self, name: str | None) -> TensorSpec:
        outs = self.tensor_outputs
        listing = ", ".join(str(o) for o in self.outputs)
        if name is not None:
            spec = next((o for o in outs if o.name == name), None)
            if spec is None and self._replaced.get(name):
                # a ZipMap output asked for by its own name means the tensor it wraps
                spec = next(o for o in outs if o.name == self._replaced[name])
            if spec is None:
                raise InputSpecError(f"{self.source}: no tensor output named {name!r} (outputs: {listing})")
            if not spec.is_float:
                raise InputSpecError(
                    f"{self.source}: output {name!r} is {spec.dtype}, not a float score tensor"
                )
            return spec
        floats = [o for o in outs if o.is_float]
        if len(floats) == 1:
            return floats[0]
        if not floats:
            raise InputSpecError(f"{self.source}: no float tensor output to explain (outputs: {listing})")
        names = ", ".join(o.name for o in floats)
        raise InputSpecError(
            f"{self.source}: several float outputs ({names}); choose one with output= / --output-name"
        )

    def _find_logit(self) -> str | None:
        """The input of a Softmax/LogSoftmax over the last axis that produces the explained output."""
        node = next((n for n in self._proto.graph.node if self.output.name in n.output), None)
        if (
            node is None
            or node.op_type not in ("Softmax", "LogSoftmax")
            or node.domain not in ("", "ai.onnx")
        ):
            return None
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        rank = len(self.output.shape) if self.output.shape is not None else None
        opset = self.opsets.get("ai.onnx", 13)
        default = -1 if opset >= 13 else 1
        axis = default if axis is None else axis
        if rank is None or axis % rank != rank - 1:
            return None
        return node.input[0]

    @property
    def parity(self) -> ParityReport | None:
        """Parity of the last converted output space (``None`` before :meth:`torch_module`)."""
        return next(reversed(self._parity.values()), None)

    def n_classes(self, space: str = "logit") -> int | None:
        """Number of scores per sample in ``space`` when the file fixes it (else None)."""
        spec = self.output
        if spec.shape is None or len(spec.shape) < 2 or not all(isinstance(d, int) for d in spec.shape[1:]):
            return None
        return int(np.prod(spec.shape[1:]))

    def space_name(self, space: str) -> str:
        """ONNX tensor explained in ``space``: ``'logit'`` (the input of a final Softmax, when there is one,
        else the output) or ``'output'`` (the output as the model returns it)."""
        if space not in ("logit", "output"):
            raise InputSpecError(f"output space must be 'logit' or 'output', not {space!r}")
        return self.logit_name if space == "logit" and self.logit_name else self.output.name

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
        """Everything ``onnx-explain info`` prints, as plain data."""
        p = self._proto
        return {
            "path": self.source,
            "ir_version": int(p.ir_version),
            "opsets": self.opsets,
            "producer": f"{p.producer_name} {p.producer_version}".strip(),
            "inputs": [_spec_dict(s) for s in self.inputs],
            "outputs": [_spec_dict(s) for s in self.outputs],
            "explained_input": self.input.name,
            "explained_output": self.output.name,
            "nodes": len(p.graph.node),
            "parameters": int(sum(int(np.prod(t.dims)) for t in p.graph.initializer)),
            "ops": self.op_histogram(),
            "notes": list(self.notes),
        }

    # ---------------------------------------------------------------- onnxruntime
    def _session_or_build(self):
        self._resolve_batch()
        if self._session is None:
            self._session = make_session(self._ort_model, device=self.device)
        return self._session

    def _original_ort_model(self):
        if self.path is not None and not self._replaced and not self.logit_name:
            return str(self.path)
        return self._serialize(self._with_logit_output(self._proto))

    def _with_logit_output(self, proto: onnx.ModelProto) -> onnx.ModelProto:
        """``proto`` with the pre-softmax tensor as an extra graph output (onnxruntime returns only those)."""
        if not self.logit_name or any(o.name == self.logit_name for o in proto.graph.output):
            return proto
        proto = copy.deepcopy(proto) if proto.ByteSize() < _TWO_GB else proto
        vi = next((v for v in proto.graph.value_info if v.name == self.logit_name), None)
        if vi is None:
            vi = helper.make_tensor_value_info(self.logit_name, onnx.TensorProto.FLOAT, None)
            vi.type.CopyFrom(next(o for o in proto.graph.output if o.name == self.output.name).type)
        proto.graph.output.append(vi)
        return proto

    def _serialize(self, proto: onnx.ModelProto):
        """bytes for onnxruntime, or a temporary file with external data when the model is > 2 GB."""
        from .convert.prepare import cap_ir_version

        proto = copy.copy(proto) if proto.ByteSize() < _TWO_GB else proto
        cap_ir_version(proto)
        if proto.ByteSize() < _TWO_GB:
            return proto.SerializeToString()
        if self._tmpdir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="onnx-explain-")
            weakref.finalize(self, shutil.rmtree, self._tmpdir, True)
        out = os.path.join(self._tmpdir, "model.onnx")
        onnx.save_model(
            proto, out, save_as_external_data=True, all_tensors_to_one_file=True, location="model.data"
        )
        return out

    def _feed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        feed = {self.input.name: x}
        for name, value in self.fixed_inputs.items():
            feed[name] = np.repeat(value, x.shape[0], axis=0) if value.shape[:1] == (1,) else value
        return feed

    def validate_input(self, x) -> np.ndarray:
        """Check ``x`` against the input spec and return it as a contiguous array of the input dtype.

        Raises
        ------
        InputDataError
            Wrong rank, a fixed dimension that differs, or a dtype of the wrong kind (float vs integer).
        """
        x = np.asarray(x)
        spec = self.input
        want = np.dtype(spec.dtype)
        if want.kind == "f" and x.dtype.kind != "f":
            raise InputDataError(
                f"input {spec.name!r} expects {want.name} values, got a {x.dtype.name} array"
            )
        if want.kind in "iu" and x.dtype.kind not in "iu":
            raise InputDataError(
                f"input {spec.name!r} expects {want.name} values, got a {x.dtype.name} array"
            )
        if spec.shape is not None:
            if x.ndim != len(spec.shape):
                raise InputDataError(
                    f"input {spec.name!r} expects shape {spec.shape_str()} (rank {len(spec.shape)}), "
                    f"got an array of shape {list(x.shape)}"
                )
            for axis, (want_d, got) in enumerate(zip(spec.shape, x.shape, strict=True)):
                if axis > 0 and isinstance(want_d, int) and want_d != got:
                    raise InputDataError(
                        f"input {spec.name!r} expects shape {spec.shape_str()}, got {list(x.shape)} "
                        f"(axis {axis} must be {want_d})"
                    )
        if x.ndim == 0 or x.shape[0] == 0:
            raise InputDataError(f"input {spec.name!r}: empty batch")
        return np.ascontiguousarray(x, dtype=want)

    def predict(self, x, batch_size: int = 64, space: str = "output") -> np.ndarray:
        """Run the explained output on onnxruntime.

        Parameters
        ----------
        x : array_like
            A batch for the explained input, batch first.
        batch_size : int
            Rows per onnxruntime call; the result does not depend on it.
        space : {'output', 'logit'}
            The output as the model returns it, or the logits before its final Softmax/LogSoftmax.

        Returns
        -------
        numpy.ndarray
            The explained output, one row per input row.
        """
        x = self.validate_input(x)
        session = self._session_or_build()
        names = [self.space_name(space)]

        def run(chunk):
            out = session.run(names, self._feed(chunk))[0]
            if out.ndim == 0 or out.shape[0] != chunk.shape[0]:
                raise InputSpecError(
                    f"{self.source}: output {names[0]!r} is not batch-first (shape {list(out.shape)} "
                    f"for a batch of {chunk.shape[0]}); onnx-explain explains per-sample outputs"
                )
            return out

        return run_chunked(run, x, batch_size, self.fixed_batch)

    # ---------------------------------------------------------------- fixed batch
    def _resolve_batch(self) -> None:
        if self._batch_resolved:
            return
        self._batch_resolved = True
        self._ort_model = self._original_ort_model()
        dim0 = self.input.shape[0] if self.input.shape else None
        if not isinstance(dim0, int):
            return
        from .convert.batch_dim import free_batch_dim

        rewritten, why = free_batch_dim(self._proto, self.input.name, dim0)
        if rewritten is not None:
            ok, why = self._verify_rewrite(rewritten, dim0)
            if ok:
                self._proto = rewritten
                self._ort_model = self._serialize(self._with_logit_output(rewritten))
                self.batch_mode = "freed"
                self.notes.append(f"batch size {dim0} was fixed in the file; made symbolic (verified)")
                return
        self.fixed_batch = dim0
        self.batch_mode = "chunked"
        self.notes.append(f"batch size {dim0} is baked into the graph ({why}); running in chunks of {dim0}")

    def _verify_rewrite(self, rewritten: onnx.ModelProto, n: int) -> tuple[bool, str]:
        probe = self.probe_batch(n + 1)
        names = [self.output.name]
        try:
            fixed = make_session(self._ort_model, device=self.device, quiet=True)
            ref = run_chunked(lambda c: fixed.run(names, self._feed(c))[0], probe, n + 1, n)
            free = make_session(self._serialize(rewritten), device=self.device, quiet=True)
            got = free.run(names, self._feed(probe))[0]
        except Exception as exc:  # noqa: BLE001 - the rewrite is only an optimisation
            return False, f"a batch of {n + 1} fails: {str(exc).splitlines()[0][:120]}"
        if got.shape != ref.shape or not np.allclose(
            got, ref, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(ref).max())
        ):
            return False, f"a batch of {n + 1} gives different outputs"
        return True, ""

    # ---------------------------------------------------------------- torch
    def probe_batch(self, n: int = 2, seed: int = 0) -> np.ndarray:
        """Random data of the input's dtype and shape (batch ``n``) for parity checks.

        Floats are standard normal; integer inputs are drawn below the row count of the first
        embedding table (Gather) they index, else below 10. Unknown non-batch dims are 32.
        """
        spec = self.input
        shape = [n] + [d if isinstance(d, int) else 32 for d in (spec.shape or (None, None))[1:]]
        rng = np.random.default_rng(seed)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            return rng.standard_normal(shape).astype(dtype)
        high = self._index_bound() or 10
        return rng.integers(0, high, size=shape).astype(dtype)

    def _index_bound(self) -> int | None:
        inits = {t.name: t for t in self._proto.graph.initializer}
        names = {self.input.name}
        for node in self._proto.graph.node:
            if node.op_type in ("Cast", "Identity") and node.input[0] in names:
                names.add(node.output[0])
            elif node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in names:
                table = inits.get(node.input[0])
                if table is not None and table.dims:
                    return int(table.dims[0])
        return None

    def torch_module(
        self, device: str = "cpu", probe=None, rtol: float = 1e-4, atol: float = 1e-5, space: str = "output"
    ):
        """The converted torch graph, checked against onnxruntime (cached per model and space).

        Parameters
        ----------
        space : {'output', 'logit'}
            Return the output as the model computes it, or the logits before a final Softmax/LogSoftmax
            (the default of the attribution methods).
        device : str
            torch device for the module.
        probe : array_like, optional
            A batch to check parity on (at least 2 rows is best: it catches baked-in batch sizes);
            default: :meth:`probe_batch` with 2 rows.
        rtol, atol : float
            Parity passes when ``max|torch - ort| <= atol + rtol * max|ort|``.

        Returns
        -------
        ConvertedModel
            ``module(x) -> explained output``; ``module.graph`` is the ``torch.fx.GraphModule``.

        Raises
        ------
        ConversionError
            A node has no converter or its converter failed (names the node and op).
        ParityError
            torch and onnxruntime disagree beyond the tolerance.
        """
        name = self.space_name(space)
        if name not in self._torch:
            module, report = self._convert_and_check(probe, rtol, atol, name)
            self._torch[name], self._parity[name] = module, report
        return self._torch[name].to(device)

    def _convert_and_check(self, probe, rtol, atol, name):
        import torch

        from .convert.driver import to_fx
        from .convert.prepare import cap_ir_version, keep_outputs, materialize_constants, tensor_outputs
        from .convert.wrapper import ConvertedModel

        self._resolve_batch()
        t0 = time.perf_counter()
        prepared = copy.deepcopy(self._proto)
        removed = materialize_constants(prepared)
        tensor_outputs(prepared)
        if not any(o.name == name for o in prepared.graph.output):
            prepared = self._with_logit_output(prepared)
        keep_outputs(prepared, [name])
        cap_ir_version(prepared)
        graph = to_fx(prepared, self.source)
        init_names = {t.name for t in prepared.graph.initializer}
        input_names = [i.name for i in prepared.graph.input if i.name not in init_names]
        others = {
            input_names.index(k): torch.as_tensor(np.asarray(v))
            for k, v in self.fixed_inputs.items()
            if k in input_names
        }
        position = input_names.index(self.input.name) if self.input.name in input_names else None
        module = ConvertedModel(graph, position, len(input_names), others, self.fixed_batch).eval()
        seconds = time.perf_counter() - t0
        notes = [f"{v} {k} node(s) turned into initializers" for k, v in removed.items() if v]

        given = probe is not None
        x = self.validate_input(probe) if given else self.probe_batch(2)
        ref = self.predict(x, space="logit" if name != self.output.name else "output")
        with torch.no_grad():
            got = module(torch.from_numpy(x)).cpu().numpy()
        if got.shape != ref.shape:
            raise ParityError(
                f"{self.source}: torch output {name!r} has shape {list(got.shape)}, "
                f"onnxruntime {list(ref.shape)}"
            )
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        max_abs = float(diff.max()) if diff.size else 0.0
        finite = np.isfinite(diff).all()
        report = ParityReport(
            max_abs=max_abs,
            max_rel=max_abs / scale if scale > 0 else max_abs,
            rtol=rtol,
            atol=atol,
            batch=int(x.shape[0]),
            passed=bool(finite and max_abs <= atol + rtol * scale),
            convert_seconds=seconds,
            probe="given" if given else "random",
            notes=notes,
        )
        if not report.passed:
            raise ParityError(
                f"{self.source}: the converted torch graph differs from onnxruntime on output "
                f"{name!r}: max |diff| {max_abs:.3g} (relative {report.max_rel:.3g}) > "
                f"atol {atol:g} + rtol {rtol:g} x {scale:.3g}"
            )
        return module, report


def _np_names(types) -> set[str]:
    return {helper.tensor_dtype_to_np_dtype(t).name for t in types}


def _spec_dict(spec: TensorSpec) -> dict:
    return {
        "name": spec.name,
        "kind": spec.kind,
        "dtype": spec.dtype,
        "shape": None if spec.shape is None else list(spec.shape),
    }
