"""The checked conversion: an ONNX model becomes a torch module *and* a proof that it computes what
onnxruntime computes.

:func:`convert_checked` returns ``(ConvertedModel, ParityReport)`` and raises :class:`ParityError` when the
torch graph differs from onnxruntime — or when the probe cannot tell (an output that is constant or
all-zero on the probe certifies nothing: a second probe drawn from the input's range is tried first).

The gate is relative. With ``ref`` the onnxruntime output on the probe and ``err = max|torch − ref|``:

- ``scale = max|ref|`` and ``err <= atol + rtol · scale`` (an error small next to the output), and
- ``spread = max over output elements of (max − min over the probe's samples)`` and
  ``err <= max(spread_tol · spread, 2 ulps · scale)`` (an error small next to what distinguishes one
  sample from another, or below float rounding when the samples hardly differ).

The probe is the user's own data wherever there is some (``explain`` certifies on the first rows of each
new input shape it meets); a synthetic probe (random rows, made-up companions) only says "not certified
yet" when it fails, since real models can need real data (a map that is ~0 on noise, a minimum size).

An absolute tolerance alone certifies any conversion of a model whose outputs are tiny (a freshly
initialised MobileNetV3 gives outputs of about 1e-9); the default ``atol`` is therefore 0.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import ConversionError, OnnxExplainError, ParityError

__all__ = ["DEFAULT_PROBE_RANGE", "ParityReport", "convert_checked", "convert_graph"]

#: the second probe's range when the first probe (standard normal) cannot certify parity: raw pixels
DEFAULT_PROBE_RANGE = (0.0, 255.0)
_TINY = 1e-30  # below this every output counts as zero


@dataclass
class ParityReport:
    """Outcome of comparing the torch graph with onnxruntime on a probe batch.

    Attributes
    ----------
    max_abs : float
        Largest absolute difference between torch and onnxruntime.
    max_rel : float
        ``max_abs / scale``: the error relative to the largest output.
    rel_spread : float
        ``max_abs / spread``: the error relative to how much outputs differ between samples.
    scale, spread : float
        ``max|ort|`` and the largest per-element range over the probe's samples.
    rtol, atol, spread_tol : float
        The tolerances the gate used.
    batch : int
        Rows in the probe.
    passed : bool
    convert_seconds : float
    probe : str
        ``'random'`` (standard normal: a synthetic probe), ``'range [lo, hi]'`` (the second probe),
        ``'given'`` (the user's data) or ``'given + 2 rows near it'`` (one row of it).
    notes : list of str
    shapes : dict of str to list of int
        The probe's arrays' shapes by input name: what the certification holds for.
    quant_step, quant_steps : float or None
        For a quantized graph: one step of the output's 8-bit grid (its range / 255) and the error in those
        steps (the gate allows :data:`QUANT_STEPS`); None otherwise.
    """

    max_abs: float
    max_rel: float
    rtol: float
    atol: float
    batch: int
    passed: bool
    convert_seconds: float
    probe: str = "random"
    notes: list[str] = field(default_factory=list)
    scale: float = 0.0
    spread: float = 0.0
    rel_spread: float = 0.0
    spread_tol: float = 1e-2
    shapes: dict = field(default_factory=dict)
    quant_step: float | None = None
    quant_steps: float | None = None

    @property
    def synthetic(self) -> bool:
        """True when the probe was made up (random or range rows), not the user's data."""
        return not self.probe.startswith("given")

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for people: the errors relative to the output's scale and spread."""
        steps = "" if self.quant_steps is None else f", {self.quant_steps:.3g} steps of its 8-bit grid"
        return (
            f"max |diff| {self.max_abs:.3g}, relative to the output {self.max_rel:.3g}, to the spread "
            f"between samples {self.rel_spread:.3g}{steps} ({self.probe} probe of {self.batch}"
            + "".join(f", {k} {v}" for k, v in list(self.shapes.items())[:1])
            + ")"
        )


def _weights_as_inputs(prepared, weights: dict) -> list[str]:
    """Turn the memory-mapped initializers into graph inputs (their data is not in the proto); returns
    their names. :func:`_weights_as_buffers` puts them back into the converted graph."""
    from onnx import helper

    names = []
    for i in reversed(range(len(prepared.graph.initializer))):
        t = prepared.graph.initializer[i]
        if t.name in weights:
            names.append(t.name)
            prepared.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
            del prepared.graph.initializer[i]
    return names


def _weights_as_buffers(graph, weights: dict, inputs: list[str]) -> None:
    """Each placeholder of a memory-mapped weight becomes a buffer read like any initializer (sharing the
    map's memory: no copy), so the converted graph looks as if the weight had been an initializer.
    ``inputs`` are the graph inputs' ONNX names, in placeholder order."""
    import torch

    holder = torch.nn.Module()
    graph.add_module("onnx_explain_mapped", holder)
    placeholders = [n for n in graph.graph.nodes if n.op == "placeholder"]
    pairs = [(n, name) for n, name in zip(placeholders, inputs, strict=True) if name in weights]
    for k, (node, name) in enumerate(pairs):
        # a copy-on-write map is writable: torch shares its pages, and nothing writes to them
        holder.register_buffer(f"w{k}", torch.from_numpy(weights[name]), persistent=False)
        with graph.graph.inserting_before(node):
            attr = graph.graph.get_attr(f"onnx_explain_mapped.w{k}")
        node.replace_all_uses_with(attr)
        graph.graph.erase_node(node)
    graph.recompile()


def convert_graph(proto, signature, name: str, fixed_batch: int | None, source: str, weights=None):
    """The torch module computing tensor ``name`` of ``proto`` from the explained input (no check).
    ``weights`` are initializers kept out of ``proto`` (memory-mapped), by name.

    Returns ``(ConvertedModel, seconds, notes)``.
    """
    import torch

    from ..signature import with_output
    from .driver import to_fx
    from .fuse import fuse
    from .prepare import cap_ir_version, keep_outputs, materialize_constants, tensor_outputs
    from .wrapper import ConvertedModel

    t0 = time.perf_counter()
    prepared = copy.deepcopy(proto)  # small: memory-mapped weights are references here
    weights = weights or {}
    mapped = _weights_as_inputs(prepared, weights)
    removed = materialize_constants(prepared)
    tensor_outputs(prepared)
    if not any(o.name == name for o in prepared.graph.output):
        prepared = with_output(prepared, name, signature.output.name)
    keep_outputs(prepared, [name])
    cap_ir_version(prepared)
    # fixed inputs that are not repeated to the batch (scalars, no leading 1) are what the graph sees on
    # every call: an If whose condition they decide is folded to its branch at load time
    known = {
        k: np.asarray(v)
        for k, v in signature.fixed_inputs.items()
        if signature.repeat_fixed(k, np.asarray(v), 2) is v or np.ndim(v) == 0
    }
    graph = to_fx(prepared, source, known=known)
    fused = fuse(graph)  # before the weights become buffers: memory-mapped weights are never copied
    init_names = {t.name for t in prepared.graph.initializer}
    if mapped:
        _weights_as_buffers(
            graph, weights, [i.name for i in prepared.graph.input if i.name not in init_names]
        )
        init_names |= set(mapped)
    input_names = [i.name for i in prepared.graph.input if i.name not in init_names]
    others = {
        input_names.index(k): torch.as_tensor(np.asarray(v))
        for k, v in signature.fixed_inputs.items()
        if k in input_names
    }
    position = input_names.index(signature.input.name) if signature.input.name in input_names else None
    module = ConvertedModel(
        graph, position, len(input_names), others, fixed_batch, input_names, signature.batch_axes,
        signature.unused,
    ).eval()  # fmt: skip
    notes = [f"{v} {k} node(s) turned into initializers" for k, v in removed.items() if v]
    module.onnx_rewrites = fused
    module.onnx_producers = getattr(graph, "onnx_producers", {})  # tensor -> node (layers named by tensor)
    notes += [
        f"{op} node {node!r} folded to its {branch} (condition known at load time)"
        for node, op, branch in getattr(graph, "onnx_folded", [])
    ]
    module.onnx_convert_seconds = time.perf_counter() - t0
    module.onnx_notes = tuple(notes)
    return module, module.onnx_convert_seconds, notes


def _torch_output(module, x: np.ndarray, source: str, name: str, companions: dict) -> np.ndarray:
    import torch

    comp = {k: torch.from_numpy(v) for k, v in companions.items()}
    try:
        with torch.no_grad():
            return module(torch.from_numpy(x), comp).cpu().numpy()
    except OnnxExplainError:
        raise
    except Exception as exc:  # noqa: BLE001 - a converted op failing on real data
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        from .driver import failing_node

        try:
            where = failing_node(module.graph, module.graph_args(torch.from_numpy(x), companions=comp))
        except Exception:  # noqa: BLE001 - naming the node is best effort
            where = None
        raise ConversionError(
            f"{source}: the converted torch graph fails on a probe batch" + (f" at {where}" if where else "")
            + f" ({first})"
        ) from None  # fmt: skip


def _synthetic_size(signature, runner, name, bound, comp_bounds) -> tuple[int, np.ndarray | None, str]:
    """``(size, onnxruntime's output, note)``: the first of :data:`~onnx_explain.signature.PROBE_SIZES`
    for the input's unknown dims on which onnxruntime runs the graph (a pooling that needs 48 rows, a
    reshape to a fixed grid); the note says which size was taken when it is not the first."""
    from ..signature import PROBE_SIZES

    shape = signature.input.shape or ()
    if all(isinstance(d, int) for d in shape[1:]) and not signature.companions:
        return PROBE_SIZES[0], None, ""
    first_error = None
    for size in PROBE_SIZES:
        x = signature.probe_batch(2, index_bound=bound, unknown=size)
        comp = signature.probe_companions(2, comp_bounds, unknown=size)
        try:
            return size, runner.run(name, x, len(x), comp), (
                f"synthetic probe: unknown dims set to {size}, the smallest of "
                f"{', '.join(map(str, PROBE_SIZES))} onnxruntime runs"
                if size != PROBE_SIZES[0] else ""
            )  # fmt: skip
        except OnnxExplainError as exc:
            first_error = first_error or exc
    raise first_error


def _range_probe(signature, n: int, probe_range, index_bound, unknown: int = 32) -> np.ndarray:
    spec = signature.input
    shape = signature.probe_shape(n, unknown)
    rng = np.random.default_rng(1)
    dtype = np.dtype(spec.dtype)
    lo, hi = probe_range
    if dtype.kind == "f":
        return rng.uniform(lo, hi, size=shape).astype(dtype)
    return rng.integers(0, index_bound or 10, size=shape).astype(dtype)


#: a quantized graph passes with errors up to this many steps of its output's 8-bit grid (range / 255)
QUANT_STEPS = 4
#: ops that compute on an integer grid (rounding flips between two implementations are possible)
_QUANT_OPS = {
    "QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul",
    "QLinearAdd", "QLinearMul", "QGemm", "DynamicQuantizeLSTM", "QAttention", "QEmbedLayerNormalization",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearSigmoid", "QLinearLeakyRelu",
}  # fmt: skip


def is_quantized(proto) -> bool:
    """True when the graph computes on an integer grid somewhere (QDQ, dynamic or QOperator format)."""
    return any(n.op_type in _QUANT_OPS for n in proto.graph.node)


#: errors up to this many ulps of the output's scale pass the spread test (rounding, not a wrong graph)
ROUNDING_ULPS = 2
#: the most rows of the user's batch a certification runs (each new input shape is certified once)
GIVEN_ROWS = 4


def _near_rows(x: np.ndarray, n: int) -> np.ndarray:
    """``n`` rows near the single row ``x[0]``: floats with Gaussian noise of 10 % of the row's spread,
    integers (token ids, pixels) shuffled along the last axis, so every value stays one the model accepts
    where it was."""
    rng = np.random.default_rng(2)
    row = x[:1]
    if x.dtype.kind == "f":
        sd = float(np.std(row)) or 1.0
        return (row + rng.normal(0.0, 0.1 * sd, size=(n, *x.shape[1:]))).astype(x.dtype)
    if row.ndim == 1:
        return np.repeat(row, n, axis=0)
    # positions shuffled along the last axis, each leading index on its own: a (chars, syllables) pair of
    # id rows keeps each vocabulary's ids in its own row
    return np.stack([rng.permuted(row[0], axis=-1) for _ in range(n)]).astype(x.dtype)


def _repeat_rows(comp: dict, n: int) -> dict:
    """Companions for ``n`` rows: the first ``n`` given, the first row repeated past them."""
    out = {}
    for k, v in comp.items():
        v = np.asarray(v)
        out[k] = v[:n] if len(v) >= n else np.concatenate([v, np.repeat(v[:1], n - len(v), axis=0)])
    return out


def _range_like(x: np.ndarray, lo_hi) -> np.ndarray:
    """4 rows of ``x``'s shape uniform in ``lo_hi`` (floats); integers keep ``x``'s first row, permuted."""
    if x.dtype.kind != "f":
        return _near_rows(x, 4)
    rng = np.random.default_rng(1)
    return rng.uniform(lo_hi[0], lo_hi[1], size=(4, *x.shape[1:])).astype(x.dtype)


def given_probe(signature, probe, proto=None) -> tuple[str, np.ndarray, dict] | None:
    """``(kind, x, companions)``: the first :data:`GIVEN_ROWS` finite rows of the user's data ``probe``
    (an array of the explained input, a dict of arrays named after the inputs, or ``(x, companions)``);
    a single row is joined by two rows near it (:func:`_near_rows`). None when no row is finite."""
    if isinstance(probe, tuple):
        x, comp = probe
        x = signature.validate_input(x)
    else:
        x, comp = signature.split_inputs(probe)
    comp = {k: np.asarray(v) for k, v in (comp or {}).items()}
    finite = np.ones(len(x), bool)  # rows holding NaN or inf (allowed by the user) certify nothing
    for a in (x, *comp.values()):
        if a.dtype.kind == "f" and a.ndim and len(a) == len(x):
            finite &= np.isfinite(a.reshape(len(a), -1)).all(axis=1)
    if not finite.any():
        return None
    keep = np.flatnonzero(finite)[:GIVEN_ROWS]
    x = x[keep]
    comp = {k: v[keep] if v.ndim and len(v) == len(finite) else v for k, v in comp.items()}
    missing = [c.name for c in signature.companions if c.name not in comp]
    if missing:  # an array alone for a model with per-sample inputs: synthetic companions of its shape
        from .batch_dim import index_bounds

        comp.update(
            {k: v for k, v in signature.probe_companions(len(x), index_bounds(proto, missing) if proto is not None else None).items()
             if k in missing}
        )  # fmt: skip
    if len(x) >= 2:
        return "given", x, comp
    return "given + 2 rows near it", np.concatenate([x, _near_rows(x, 2)]), _repeat_rows(comp, 3)


def _measure(got: np.ndarray, ref: np.ndarray) -> tuple[float, float, float, bool]:
    """(max_abs, scale, spread, finite) of torch ``got`` against onnxruntime ``ref``."""
    g, r = got.astype(np.float64), ref.astype(np.float64)
    finite = bool(np.isfinite(g).all() and np.isfinite(r).all())
    diff = np.abs(g - r)
    max_abs = float(np.nanmax(diff)) if diff.size else 0.0
    scale = float(np.nanmax(np.abs(r))) if r.size else 0.0
    flat = r.reshape(r.shape[0], -1)
    spread = float(np.nanmax(flat.max(0) - flat.min(0))) if flat.shape[0] > 1 and flat.size else 0.0
    return max_abs, scale, spread, finite


def _certifiable(scale: float, spread: float, n: int) -> str | None:
    """Why a probe's reference output cannot certify a conversion, or None when it can."""
    if scale <= _TINY:
        return "is all zero"
    if n > 1 and spread <= 1e-6 * scale:
        return "is the same for every sample"
    return None


def convert_checked(
    proto,
    signature,
    runner,
    space: str = "output",
    probe=None,
    rtol: float = 1e-4,
    atol: float = 0.0,
    spread_tol: float = 1e-2,
    probe_range: tuple[float, float] | None = None,
    weights: dict | None = None,
    module=None,
):
    """Convert ``proto`` to torch and prove it against onnxruntime.

    Parameters
    ----------
    proto : onnx.ModelProto
        The graph onnxruntime runs (``runner.batch.graph``).
    signature : Signature
    runner : Runner
        onnxruntime on the same model.
    space : {'output', 'logit'}
    probe : array_like or (array_like, dict), optional
        The batch to check on: the explained input, or the explained input and its per-sample companion
        inputs (the user's own data: its shapes and values). At most :data:`GIVEN_ROWS` rows are used;
        one row is joined by two rows near it (the same row with a little noise, integers permuted) so
        that the gate can compare the error with a spread. Default: 2 standard-normal rows with
        synthetic companions (a *synthetic* probe). When the output on the probe cannot certify anything
        (all zero, or the same for every sample), 4 rows uniform in ``probe_range`` are tried.
    rtol, atol, spread_tol : float
        The gate (see the module's docstring).
    probe_range : (float, float), optional
        The input's range for the second probe; default :data:`DEFAULT_PROBE_RANGE`.
    weights : dict of str to numpy.ndarray, optional
        Memory-mapped initializers (:attr:`onnx_explain.Model.weights`), kept out of ``proto``.
    module : ConvertedModel, optional
        A conversion of ``proto`` made earlier (:func:`convert_graph`): only proven here, not made again.

    Returns
    -------
    (ConvertedModel, ParityReport)

    Raises
    ------
    ConversionError
        A node has no converter, its converter failed, or the torch graph fails on the probe.
    ParityError
        torch and onnxruntime disagree beyond the gate, or no probe can certify the output.
    """
    source = signature.source
    name = signature.space_name(space)
    runner.session()  # a file onnxruntime refuses is reported as such, before any conversion work
    if module is None:
        module, seconds, notes = convert_graph(
            proto, signature, name, runner.batch.fixed_batch, source, weights
        )
    else:
        seconds, notes = module.onnx_convert_seconds, list(module.onnx_notes)
    args = (proto, signature, runner, name, probe, rtol, atol, spread_tol, probe_range)
    try:
        return _prove(module, seconds, notes, *args)
    except ParityError:
        if weights or getattr(module, "onnx_fused", False):
            raise
        if not any(n.op_type == "QuantizeLinear" for n in proto.graph.node):
            raise
    # a QDQ graph: onnxruntime's optimiser fuses DQ -> op -> Q groups into QLinear* kernels that round
    # differently from the graph as written; convert the graph onnxruntime runs instead
    from .ops.quant import onnxruntime_fused

    fused = onnxruntime_fused(proto)
    module, seconds, notes = convert_graph(fused, signature, name, runner.batch.fixed_batch, source, None)
    notes = [*notes, "QDQ graph converted as onnxruntime's graph optimiser fuses it (its QLinear* kernels)"]
    module.onnx_fused = True
    return _prove(module, seconds, notes, *args)


def _prove(
    module, seconds, notes, proto, signature, runner, name, probe, rtol, atol, spread_tol, probe_range
):
    """``(module, ParityReport)`` when ``module`` passes the gate on a probe that can certify it; else
    ParityError (see :func:`convert_checked`)."""
    from .batch_dim import index_bound, index_bounds

    source = signature.source
    bound = index_bound(proto, signature.input.name)
    lo_hi = tuple(probe_range or DEFAULT_PROBE_RANGE)
    comp_names = [c.name for c in signature.companions]
    comp_bounds = index_bounds(proto, comp_names)
    why_not = []
    given = None if probe is None else given_probe(signature, probe, proto)
    if probe is not None and given is None:
        why_not.append("the data holds NaN or inf in every row: a synthetic probe is used")
        probe = None
    if probe is None:
        size, ref0, note = _synthetic_size(signature, runner, name, bound, comp_bounds)
        if note:
            why_not.append(note)
        x0 = signature.probe_batch(2, index_bound=bound, unknown=size)
        first = ("random", x0, signature.probe_companions(2, comp_bounds, unknown=size))
        range_x = _range_probe(signature, 4, lo_hi, bound, size)
        range_comp = signature.probe_companions(4, comp_bounds, unknown=size)
    else:
        first, ref0 = given, None
        range_x = _range_like(first[1], lo_hi)
        range_comp = _repeat_rows(first[2], len(range_x))
    candidates = [first, (f"range [{lo_hi[0]:g}, {lo_hi[1]:g}]", range_x, range_comp)]
    quantized = is_quantized(proto)
    if quantized:
        why_not.append(
            f"quantized graph: errors up to {QUANT_STEPS} steps of the output's 8-bit grid (its range / 255) pass"
        )
    for kind, x, comp in candidates:
        ref = ref0 if ref0 is not None and kind == "random" else runner.run(name, x, len(x), comp)
        module.out_axis = runner.out_axes.get(name, 0)  # a time-major output: batch first, as onnxruntime's
        module.fixed_batch = runner.batch.fixed_batch  # onnxruntime may have found the graph runs 1 row only
        got = _torch_output(module, x, source, name, comp)
        if got.shape != ref.shape:
            raise ParityError(
                f"{source}: torch output {name!r} has shape {list(got.shape)}, onnxruntime {list(ref.shape)}"
            )
        max_abs, scale, spread, finite = _measure(got, ref)
        why = _certifiable(scale, spread, len(x))
        if why is not None and finite:
            why_not.append(f"{kind} probe: output {why}")
            continue
        report = ParityReport(
            max_abs=max_abs,
            max_rel=max_abs / scale if scale > 0 else max_abs,
            rtol=rtol,
            atol=atol,
            batch=int(x.shape[0]),
            passed=False,
            convert_seconds=seconds,
            probe=kind,
            notes=notes + why_not,
            scale=scale,
            spread=spread,
            rel_spread=max_abs / spread if spread > 0 else float("inf") if max_abs > 0 else 0.0,
            spread_tol=spread_tol,
            shapes={signature.input.name: list(x.shape), **{k: list(np.shape(v)) for k, v in comp.items()}},
        )
        # samples that hardly differ (saturated probabilities, the user's similar first rows) have a
        # spread below float rounding: an error of 2 ulps of the output is rounding whatever the spread
        rounding = ROUNDING_ULPS * float(np.finfo(ref.dtype if ref.dtype.kind == "f" else np.float32).eps)
        # an integer graph rounds to its grid: a value on a rounding boundary can land one step away and
        # carry the step to the output; the allowance is stated in steps of the output's own 8-bit grid
        q_allow = 0.0
        if quantized:
            report.quant_step = float(np.ptp(ref)) / 255 if ref.size else 0.0
            report.quant_steps = max_abs / report.quant_step if report.quant_step > 0 else 0.0
            q_allow = QUANT_STEPS * report.quant_step
        # rows made near one given row tell how the output moves under a little noise, not how samples
        # differ: their spread is no yardstick, so one row is held to the scale test alone (noted)
        near = kind.endswith("near it")
        report.passed = bool(
            finite
            and max_abs <= max(atol + rtol * scale, q_allow)
            and (len(x) < 2 or near or max_abs <= max(spread_tol * spread, rounding * scale, q_allow))
        )
        if near:
            report.notes = [*report.notes, "one row of data: the error is held to the output's scale only"]
        if not report.passed:
            raise ParityError(_failure(source, name, report, finite))
        return module, report
    raise ParityError(
        f"{source}: cannot certify the conversion of output {name!r}: " + "; ".join(why_not)
        + " — pass a representative probe (probe= / --probe FILE.npy) or the input's range (probe_range=)"
    )  # fmt: skip


def _failure(source: str, name: str, r: ParityReport, finite: bool) -> str:
    if not finite:
        return f"{source}: the converted torch graph gives non-finite values where onnxruntime does not (output {name!r})"
    if r.quant_step is not None and r.max_abs > max(r.atol + r.rtol * r.scale, QUANT_STEPS * r.quant_step):
        return (
            f"{source}: the converted torch graph differs from onnxruntime on output {name!r}: max |diff| "
            f"{r.max_abs:.3g} is {r.quant_steps:.3g} steps of the output's 8-bit grid {r.quant_step:.3g} "
            f"(allowed for a quantized graph: {QUANT_STEPS})"
        )
    if r.max_abs > r.atol + r.rtol * r.scale:
        return (
            f"{source}: the converted torch graph differs from onnxruntime on output {name!r}: max |diff| "
            f"{r.max_abs:.3g} is {r.max_rel:.3g} of the output's scale {r.scale:.3g} (allowed: rtol {r.rtol:g}"
            + (f" + atol {r.atol:g}" if r.atol else "")
            + ")"
        )
    return (
        f"{source}: the converted torch graph differs from onnxruntime on output {name!r}: max |diff| "
        f"{r.max_abs:.3g} is {r.rel_spread:.3g} of the spread between samples {r.spread:.3g} "
        f"(allowed: {r.spread_tol:g})"
    )
