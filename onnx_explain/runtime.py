"""onnxruntime: provider choice, sessions, the batch mode of a file, chunked batched runs.

:class:`Runner` is the one place a model runs on onnxruntime. onnxruntime's own exceptions (session
creation and run) leave it as :class:`~onnx_explain.errors.ModelRunError`, naming the file and the node.

The CUDA provider is used only when it can load. onnxruntime-gpu lists ``CUDAExecutionProvider`` as
available even on machines without a GPU and then logs a page of errors when a session asks for it, so we
first ask the CUDA driver itself whether a device exists (a ``ctypes`` call, no torch import).
"""

from __future__ import annotations

import copy
import ctypes
import functools
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from .errors import DeviceError, InputDataError, InputSpecError, ModelRunError, OnnxExplainError, ort_error
from .signature import with_output

__all__ = [
    "Runner",
    "cuda_device_count",
    "make_session",
    "resolve_device",
    "run_chunked",
    "select_providers",
    "with_output",
]

_TWO_GB = 2**31


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports; 0 when no driver or no device (never raises)."""
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        try:
            if cuda.cuInit(0) != 0:
                return 0
            count = ctypes.c_int(0)
            if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
            return int(count.value)
        except AttributeError:
            return 0
    return 0


def select_providers(device: str = "auto") -> list[str]:
    """Execution providers for ``device`` in ``{'auto', 'cpu', 'cuda'}``.

    ``auto`` takes CUDA only when onnxruntime offers it *and* a CUDA device exists; ``cuda`` asks for it
    and lets :func:`make_session` report when it cannot load.
    """
    import onnxruntime as ort

    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    has_cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and (not has_cuda_ep or cuda_device_count() == 0):
        why = "this onnxruntime has no CUDA provider" if not has_cuda_ep else "no CUDA device was found"
        raise DeviceError(f"device 'cuda' was asked for, but {why}")
    if device == "cuda" or (has_cuda_ep and cuda_device_count() > 0):
        if has_cuda_ep and hasattr(ort, "preload_dlls"):
            try:  # CUDA/cuDNN from the nvidia-* wheels, when torch has not loaded them already
                ort.preload_dlls(directory="")
            except Exception:  # noqa: BLE001 - best effort; the session creation below decides
                pass
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def resolve_device(device: str) -> tuple[str, str]:
    """(torch device, onnxruntime device) for ``--device``: CUDA for both where torch sees a device,
    else the CPU; ``'cuda'`` without a device torch sees is a :class:`~onnx_explain.errors.DeviceError`."""
    if device == "cpu":
        return "cpu", "cpu"
    import torch

    has = torch.cuda.is_available()
    if device == "cuda" and not has:
        raise DeviceError("--device cuda was asked for, but torch sees no CUDA device")
    return ("cuda", device) if has else ("cpu", "cpu")


def make_session(
    model: str | bytes,
    device: str = "auto",
    threads: int | None = None,
    source: str = "<model>",
    weights: dict | None = None,
):
    """Create an ``InferenceSession`` on the best provider that loads.

    Parameters
    ----------
    model : str or bytes
        Path of the ONNX file (external data is resolved next to it) or serialized model bytes.
    device : {'auto', 'cpu', 'cuda'}
        Where to run. With ``'cuda'`` and no loadable CUDA provider a ``DeviceError`` is raised.
    threads : int, optional
        Intra-op threads; default: onnxruntime's choice (all physical cores), or ``ONNX_EXPLAIN_THREADS``.
    source : str
        The file, for messages.
    weights : dict of str to numpy.ndarray, optional
        Initializers given as arrays (memory-mapped big weights): onnxruntime uses them in place instead
        of reading its own copy, and does not pre-pack them (a packed copy would double the memory).

    Returns
    -------
    onnxruntime.InferenceSession

    Raises
    ------
    ModelRunError
        onnxruntime refuses the model (invalid graph, unsupported op, an allocation it cannot make ...).
    DeviceError
        ``'cuda'`` was asked for and cannot be had.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # fatal only: onnxruntime's errors reach the user as one ModelRunError line, not as a log page too
    opts.log_severity_level = 4
    threads = threads or int(os.environ.get("ONNX_EXPLAIN_THREADS", "0"))
    if threads:
        opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    values = []
    if weights:
        opts.add_session_config_entry("session.disable_prepacking", "1")
        for name, arr in weights.items():
            values.append(ort.OrtValue.ortvalue_from_numpy(np.asarray(arr)))  # the map itself, no copy
            opts.add_initializer(name, values[-1])
    providers = select_providers(device)
    try:
        session = ort.InferenceSession(model, sess_options=opts, providers=providers)
        session._onnx_explain_weights = values  # the OrtValues must outlive the session (they own nothing)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
        raise ort_error(exc, source, "load the model") from None
    if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise DeviceError("device 'cuda' was asked for, but onnxruntime's CUDA provider did not load")
    return session


def run_rows(
    fn: Callable[[np.ndarray], np.ndarray],
    n_rows: int,
    batch_size: int,
    fixed_batch: int | None = None,
) -> np.ndarray:
    """Apply ``fn`` to the row indices ``[0, n_rows)`` in chunks of ``batch_size`` and concatenate.

    ``fn(index)`` gets an index array and returns the chunk's result. With ``fixed_batch`` (a model whose
    batch dimension is baked in), chunks are exactly that size; the last one is padded by repeating its
    final row and the padding is dropped from the result.
    """
    if n_rows == 0:
        raise InputDataError("empty batch")
    step = fixed_batch or max(1, int(batch_size))  # a baked-in batch size cannot be exceeded
    outs: list[np.ndarray] = []
    for start in range(0, n_rows, step):
        index = np.arange(start, min(n_rows, start + step))
        real = len(index)
        if fixed_batch and real < fixed_batch:
            index = np.concatenate([index, np.full(fixed_batch - real, index[-1])])
        outs.append(np.asarray(fn(index))[:real])
    return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)


def run_chunked(
    fn: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    batch_size: int,
    fixed_batch: int | None = None,
) -> np.ndarray:
    """Apply ``fn`` to ``x`` in chunks of ``batch_size`` rows and concatenate (see :func:`run_rows`)."""

    def chunk(index):
        contiguous = index[-1] - index[0] == len(index) - 1
        return fn(x[index[0] : index[-1] + 1] if contiguous else x[index])

    return run_rows(chunk, x.shape[0], batch_size, fixed_batch)


@dataclass(frozen=True)
class BatchMode:
    """How a file's batch dimension is run.

    ``mode`` is ``'dynamic'`` (symbolic in the file), ``'freed'`` (fixed in the file, made symbolic and
    verified) or ``'chunked'`` (baked into the graph: run in chunks of ``fixed_batch``); ``graph`` is the
    model onnxruntime runs and the torch conversion starts from.
    """

    mode: str
    fixed_batch: int | None
    graph: onnx.ModelProto
    note: str | None = None


#: ``Runner.out_axes`` value of an output without a batch axis in a graph fixed at batch 1: one is added
NEW_AXIS = -1


class Runner:
    """onnxruntime on one model: one cached session, the batch mode, chunked runs.

    Parameters
    ----------
    proto : onnx.ModelProto
        The shape-inferred model (external data loaded, ZipMap outputs replaced). Never modified.
    path : pathlib.Path or None
        The file, when onnxruntime can read it directly.
    signature : Signature
        The explained input and output.
    device : {'auto', 'cpu', 'cuda'}

    Notes
    -----
    The batch mode is worked out on first use (it may need trial runs) and is cached; it changes what
    onnxruntime runs, never what the model describes.
    """

    def __init__(self, proto: onnx.ModelProto, path, signature, device: str = "auto", weights=None):
        self._proto = proto
        self.weights = dict(weights or {})  # memory-mapped initializers, given to every session
        self.path = path
        self.signature = signature
        self.source = signature.source
        self.device = device
        self._batch: BatchMode | None = None
        self._ort_model = None
        #: tensor name -> its batch axis when it is not 0 (time-major CTC and seq2seq outputs, ``(T, B, C)``)
        self.out_axes: dict[str, int] = {}
        self._session = None
        self._tmpdir = None

    # ------------------------------------------------------------------ batch mode
    @property
    def batch(self) -> BatchMode:
        """The resolved :class:`BatchMode` (trial runs on first use for a file with a fixed batch)."""
        if self._batch is None:
            self._batch = self._resolve_batch()
        return self._batch

    @property
    def notes(self) -> list[str]:
        """What onnxruntime runs differs from the file, and why."""
        return [self.batch.note] if self.batch.note else []

    def _resolve_batch(self) -> BatchMode:
        sig = self.signature
        self._ort_model = self._original_ort_model()
        dim0 = sig.input.shape[0] if sig.input.shape else None
        if not isinstance(dim0, int):
            return BatchMode("dynamic", None, self._proto)
        sig.probe_shape(dim0 + 1)  # a declared batch no machine can hold is refused here, by name
        from .convert.batch_dim import free_batch_dim

        rewritten, why = free_batch_dim(self._proto, sig.input.name, dim0)
        if rewritten is not None:
            ok, why = self._verify_rewrite(rewritten, dim0)
            if ok:
                self._ort_model = self._serialize(self._with_logit(rewritten))
                note = f"batch size {dim0} was fixed in the file; made symbolic (verified)"
                return BatchMode("freed", None, rewritten, note)
        note = f"batch size {dim0} is baked into the graph ({why}); running in chunks of {dim0}"
        return BatchMode("chunked", dim0, self._proto, note)

    def _verify_rewrite(self, rewritten: onnx.ModelProto, n: int) -> tuple[bool, str]:
        from .convert.batch_dim import index_bound, index_bounds

        sig = self.signature
        probe = sig.probe_batch(n + 1, index_bound=index_bound(self._proto, sig.input.name))
        comp = sig.probe_companions(n + 1, index_bounds(self._proto, [c.name for c in sig.companions]))
        names = [sig.output.name]
        try:
            fixed = make_session(
                self._ort_model, device=self.device, source=self.source, weights=self.weights
            )
            ref = run_rows(
                lambda i: fixed.run(names, sig.feed(probe[i], {k: v[i] for k, v in comp.items()}))[0],
                n + 1, n + 1, n,
            )  # fmt: skip
            free = make_session(
                self._serialize(rewritten), device=self.device, source=self.source,
                weights=self.weights,
            )  # fmt: skip
            got = free.run(names, sig.feed(probe, comp))[0]
        except DeviceError:
            raise
        except Exception as exc:  # noqa: BLE001 - the rewrite is only an optimisation
            return False, f"a batch of {n + 1} fails: {str(exc).splitlines()[0][:120] if str(exc) else exc!r}"
        if got.shape != ref.shape or not np.allclose(
            got, ref, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
        ):
            return False, f"a batch of {n + 1} gives different outputs"
        return True, ""

    # ------------------------------------------------------------------ what onnxruntime runs
    def _with_logit(self, proto: onnx.ModelProto) -> onnx.ModelProto:
        sig = self.signature
        return with_output(proto, sig.logit_name, sig.output.name) if sig.logit_name else proto

    def _original_ort_model(self):
        if self.path is not None and not self.signature.replaced and not self.signature.logit_name:
            return str(self.path)
        return self._serialize(self._with_logit(self._proto))

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

    def head(self, tensor: str, name: str) -> Callable:
        """``run(maps, x, companions=None) -> array``: the graph from the intermediate ``tensor`` to the
        output ``name`` on onnxruntime (a session of its own, cached), fed ``maps`` as ``tensor`` and, where
        the head still reads them (a path around the tensor), the model's inputs: rows ``x`` of the
        explained input and their companions, aligned with ``maps``. Gradient-free methods that modify a
        layer's activations (Recipro-CAM) batch the modified maps through it; no torch conversion needed.

        Raises
        ------
        OptionError
            The graph cannot be cut at ``tensor``.
        ModelRunError
            onnxruntime refuses the head or a run of it.
        """
        heads = self.__dict__.setdefault("_heads", {})
        if (tensor, name) not in heads:
            from .layers import head_graph

            proto = head_graph(self._with_logit(self.batch.graph), tensor, [name])
            reads = {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}
            weights = {k: v for k, v in self.weights.items() if k in reads}
            heads[(tensor, name)] = make_session(
                self._serialize(proto), device=self.device, source=self.source, weights=weights
            )
        session = heads[(tensor, name)]
        others = {i.name for i in session.get_inputs()} - {tensor}
        fixed = self.batch.fixed_batch if self.batch.mode == "chunked" else None

        def once(maps, x, companions):
            feed = {tensor: maps}
            if others:
                feed.update({k: v for k, v in self.signature.feed(x, companions).items() if k in others})
            try:
                return session.run([name], feed)[0]
            except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
                raise ort_error(exc, self.source, f"run the graph after layer {tensor!r}") from None

        def run(maps, x, companions=None):
            if fixed is None:
                return once(maps, x, companions)
            parts = []  # a batch baked into the graph: chunks of that size, the last one padded
            for i in range(0, len(maps), fixed):
                k = min(fixed, len(maps) - i)
                pad = [0] * (fixed - k)
                idx = np.r_[np.arange(i, i + k), np.full(len(pad), i)]
                comp = {c: v[idx] for c, v in (companions or {}).items()}
                parts.append(once(maps[idx], x[idx], comp)[:k])
            return np.concatenate(parts)

        return run

    def layer(self, tensor: str, name: str | None = None) -> Callable:
        """``run(x, companions=None) -> [values of tensor(, output name)]``: the intermediate ``tensor`` (and,
        when ``name`` is given, that output too, from the same pass) on onnxruntime, in a session of its
        own with the model's device, threads and weights (cached). Gradient-free CAMs read the layer and
        the explained score in one forward."""
        layers = self.__dict__.setdefault("_layers", {})
        outputs = [tensor] if name is None else [tensor, name]
        if (tensor, name) not in layers:
            proto = with_output(self._with_logit(self.batch.graph), tensor, self.signature.output.name)
            layers[(tensor, name)] = make_session(
                self._serialize(proto),
                device=self.device,
                source=self.source,
                weights=self.weights,
            )
        session = layers[(tensor, name)]
        inputs = {i.name for i in session.get_inputs()}
        fixed = self.batch.fixed_batch if self.batch.mode == "chunked" else None

        def once(x, companions):
            feed = {k: v for k, v in self.signature.feed(x, companions).items() if k in inputs}
            try:
                return session.run(outputs, feed)
            except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
                raise ort_error(exc, self.source, f"read layer {tensor!r}") from None

        def run(x, companions=None):
            if fixed is None:
                return once(x, companions)
            parts = []  # a batch baked into the graph: chunks of that size, the last one padded
            for i in range(0, len(x), fixed):
                k = min(fixed, len(x) - i)
                idx = np.r_[np.arange(i, i + k), np.full(fixed - k, i)]
                parts.append(
                    [v[:k] for v in once(x[idx], {c: v[idx] for c, v in (companions or {}).items()})]
                )
            return [np.concatenate([p[j] for p in parts]) for j in range(len(outputs))]

        return run

    def session(self):
        """The cached ``InferenceSession`` (created on first use)."""
        if self._session is None:
            _ = self.batch  # fixes what onnxruntime runs
            self._session = make_session(
                self._ort_model, device=self.device, source=self.source, weights=self.weights
            )
        return self._session

    # ------------------------------------------------------------------ runs
    def run(
        self,
        name: str,
        x: np.ndarray,
        batch_size: int = 64,
        companions: dict | None = None,
        owner: np.ndarray | None = None,
    ) -> np.ndarray:
        """Tensor ``name`` (a graph output, or the logits) for a validated batch ``x``, chunked.

        ``companions`` are per-sample values of the other inputs (``(B, ...)`` each); ``owner[r]`` is the
        sample of row ``r`` of ``x`` (default: row r is sample r), so every row runs with its own
        sample's companions.
        """
        session = self.session()
        fixed = self.batch.fixed_batch
        feed = self.signature.feed
        if companions and owner is None:
            owner = np.arange(len(x))

        def run(index):
            contiguous = index[-1] - index[0] == len(index) - 1
            chunk = x[index[0] : index[-1] + 1] if contiguous else x[index]
            rows = {k: v[owner[index]] for k, v in companions.items()} if companions else None

            def once(rows_x, rows_c):
                try:
                    return session.run([name], feed(rows_x, rows_c))[0]
                except OnnxExplainError:
                    raise
                except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
                    raise ort_error(exc, self.source, f"run output {name!r}") from None

            try:
                out = once(chunk, rows)
            except ModelRunError:
                if (
                    len(chunk) == 1
                    or self.batch.mode != "dynamic"
                    or not self._runs_one_row(once, chunk, rows)
                ):
                    raise
                # a symbolic batch the graph does not honour (a Reshape baking batch 1): one row per run
                self._batch = BatchMode("chunked", 1, self._batch.graph, (
                    "the batch is symbolic in the file but the graph only runs one row at a time (a batch "
                    f"of {len(chunk)} fails in onnxruntime): running in chunks of 1"
                ))  # fmt: skip
                parts = [
                    once(chunk[i : i + 1], {k: v[i : i + 1] for k, v in rows.items()} if rows else None)
                    for i in range(len(chunk))
                ]
                out = np.concatenate(parts) if parts[0].ndim else np.stack(parts)
            axis = self.out_axes.get(name)
            if axis is None:
                axis = self._batch_axis(name, out, chunk, rows, once)
            if axis == NEW_AXIS:
                return out[None]
            return np.moveaxis(out, axis, 0) if axis else out

        return run_rows(run, len(x), batch_size, fixed)

    @staticmethod
    def _runs_one_row(once, chunk, rows) -> bool:
        try:
            once(chunk[:1], {k: v[:1] for k, v in rows.items()} if rows else None)
        except ModelRunError:
            return False
        return True

    def _batch_axis(self, name: str, out: np.ndarray, chunk: np.ndarray, rows, once) -> int:
        """The batch axis of tensor ``name``: 0 when it is batch-first; else the one axis whose size
        follows the batch (from the file's dim names, else from a second run one row longer), remembered.

        Raises
        ------
        InputSpecError
            No axis follows the batch (a per-batch output: onnx-explain explains per-sample outputs).
        """
        b = chunk.shape[0]
        spec = next((o for o in self.signature.tensor_outputs if o.name == name), None)
        batch_dim = (self.signature.input.shape or (None,))[0]
        named = []
        if spec is not None and spec.shape and isinstance(batch_dim, str):
            named = [a for a, d in enumerate(spec.shape) if d == batch_dim]
        candidates = [a for a in range(out.ndim) if out.shape[a] == b]
        if len(named) == 1 and named[0] in candidates:
            axis = named[0]
        elif candidates == [0]:
            axis = 0
        elif self.batch.fixed_batch:  # the batch cannot grow: read it from the sizes alone
            if len(candidates) == 1:
                axis = candidates[0]  # a time-major (T, 1, C) output of a graph fixed at batch 1
            elif not candidates and self.batch.fixed_batch == 1:
                axis = NEW_AXIS  # a graph fixed at batch 1 that drops its batch axis (Squeeze)
            else:
                axis = 0 if 0 in candidates else None
        elif candidates:  # grow the batch by one row: the axis that follows
            more = np.concatenate([chunk, chunk[-1:]])
            rows2 = {k: np.concatenate([v, v[-1:]]) for k, v in rows.items()} if rows else None
            grown = once(more, rows2)
            axes = [a for a in candidates if grown.ndim == out.ndim and grown.shape[a] == b + 1]
            axis = axes[0] if len(axes) == 1 else None
        else:
            axis = None
        if axis is None:
            raise InputSpecError(
                f"{self.source}: output {name!r} has no batch axis (shape {list(out.shape)} for a batch of "
                f"{b}); onnx-explain explains per-sample outputs"
            )
        self.out_axes[name] = axis
        return axis
