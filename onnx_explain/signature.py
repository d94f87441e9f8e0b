"""What a model takes and gives: tensor specs, the explained input and output, the logits before a final
Softmax, the image layout, and the checks an input array must pass.

A :class:`Signature` is built once from the (shape-inferred) graph and never changes: everything here is a
fact of the file and the choices made at :func:`onnx_explain.load`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from .errors import InputDataError, InputSpecError

__all__ = ["Signature", "TensorSpec", "check_array", "image_layout", "spec_from_value_info", "with_output"]

_FLOAT_TYPES = {onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE}
_INT_TYPES = {
    onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32,
}  # fmt: skip
_CHANNELS = (1, 3, 4)
#: dim_param values that name no dimension (PaddlePaddle's ``?``, ``-1`` written as text): each such dim
#: is an unknown of its own, never "the same size" as another
_UNNAMED = {"?", "-1", "None", "none", "unk", "unknown", ""}
#: sizes tried, in turn, for the unknown dims of a synthetic probe (the first that onnxruntime accepts)
PROBE_SIZES = (32, 64, 128, 224, 320, 640)
#: the most values a probe batch may hold (2**28 float32 values are 1 GiB)
MAX_PROBE_ELEMENTS = 2**28


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of a graph input or output.

    ``shape`` holds ints for fixed dims, strings for symbolic dims and None for unknown ones (a dim
    declared as 0 or negative, PaddlePaddle's ``-1`` for the batch, is unknown); it is None when the rank
    is unknown. ``kind`` is ``'tensor'``, ``'sequence'``, ``'map'`` or ``'optional'``.
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

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "dtype": self.dtype,
            "shape": None if self.shape is None else list(self.shape),
        }

    def __str__(self) -> str:
        return f"{self.name}: {self.kind} {self.dtype or ''} {self.shape_str()}".replace("  ", " ")


def _dtype_name(elem_type: int) -> str | None:
    if not elem_type:
        return None
    try:
        return helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, ValueError, TypeError):  # an element type onnx itself does not know
        return f"elem_type {elem_type}"


def spec_from_value_info(value_info: onnx.ValueInfoProto) -> TensorSpec:
    """The :class:`TensorSpec` of a graph input or output."""
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
    dtype = _dtype_name(tt.elem_type)
    if not tt.HasField("shape"):
        return TensorSpec(value_info.name, kind, dtype, None)
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param and d.dim_param.strip() not in _UNNAMED:
            dims.append(d.dim_param)
        else:  # unknown, or 0 / negative: a "free" dim in exporters' conventions, not a size
            dims.append(None)
    return TensorSpec(value_info.name, kind, dtype, tuple(dims))


def image_layout(shape) -> tuple[str | None, int | None]:
    """``(layout, channel_axis)`` of a batch-first input shape.

    Rank 4 with 1, 3 or 4 on axis 1 is ``NCHW`` (axis 1); otherwise with 1, 3 or 4 on axis 3 it is
    ``NHWC`` (axis 3); an unknown channel count on both reads as NCHW (torch's default). Rank 3 with fixed
    height and width is ``NHW`` (grayscale, no channel axis). Anything else is not an image: ``(None, None)``.
    """
    shape = list(shape or [])
    if len(shape) == 4:
        if isinstance(shape[1], int) and shape[1] in _CHANNELS:
            return "NCHW", 1
        if isinstance(shape[3], int) and shape[3] in _CHANNELS:
            return "NHWC", 3
        return "NCHW", 1
    if len(shape) == 3 and all(isinstance(d, int) for d in shape[1:]):
        return "NHW", None
    return None, None


def _np_names(types) -> set[str]:
    return {helper.tensor_dtype_to_np_dtype(t).name for t in types}


def _find_logit(proto: onnx.ModelProto, output: TensorSpec) -> str | None:
    """The input of a Softmax/LogSoftmax over the last axis, or of a Sigmoid, that produces the explained
    output: the logit (a sigmoid's probability is ~1e-5 wherever the answer is "no": the logit keeps the
    information, and onnxruntime's approximate sigmoid costs relative precision there)."""
    node = next((n for n in proto.graph.node if output.name in n.output), None)
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if not node.input or not node.input[0]:  # a damaged file: a Softmax of nothing
        return None
    if node.op_type == "Sigmoid":
        return node.input[0]
    if node.op_type == "Div":
        return _decomposed_softmax(proto, node)
    if node.op_type not in ("Softmax", "LogSoftmax"):
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), None)
    rank = len(output.shape) if output.shape is not None else None
    opsets = {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}
    default = -1 if opsets.get("ai.onnx", 13) >= 13 else 1
    axis = default if axis is None else axis
    if not rank or axis % rank != rank - 1:
        return None
    return node.input[0]


def _decomposed_softmax(proto: onnx.ModelProto, div: onnx.NodeProto) -> str | None:
    """The logits of a softmax written out as ``exp(x − max x) / Σ exp(x − max x)`` (jax2tf, some
    hand-written heads): ``x``; None when ``div`` is not that."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    consts = {t.name for t in proto.graph.initializer} | {
        o for n in proto.graph.node if n.op_type == "Constant" for o in n.output
    }
    passthrough = ("Reshape", "Expand", "Unsqueeze", "Squeeze", "Identity", "Cast")

    def through(name):
        """The producer of ``name`` past reshapes, casts and a max/min with a constant (jax's max(−inf, ·))."""
        n = producer.get(name)
        while n is not None and n.input:
            if n.op_type in passthrough:
                n = producer.get(n.input[0])
            elif n.op_type in ("Max", "Min") and len(n.input) == 2 and sum(i in consts for i in n.input) == 1:
                n = producer.get(next(i for i in n.input if i not in consts))
            else:
                break
        return n

    if len(div.input) != 2:
        return None
    exp = producer.get(div.input[0])
    total = through(div.input[1])
    if exp is None or exp.op_type != "Exp" or total is None or total.op_type != "ReduceSum":
        return None
    if total.input[0] != exp.output[0]:
        return None
    shifted = producer.get(exp.input[0])
    if shifted is not None and shifted.op_type == "Sub":
        top = through(shifted.input[1])
        if top is not None and top.op_type == "ReduceMax" and top.input[0] == shifted.input[0]:
            return shifted.input[0]
    return exp.input[0]


@dataclass(frozen=True)
class Choice:
    """What the caller chose when loading a model (:func:`onnx_explain.load`'s arguments of the same names):
    the explained ``input`` and ``output`` (None: the only one), ``fixed_inputs`` (values of other inputs
    shared by every sample), ``allow_nonfinite`` and ``batch_axes`` (input name -> its batch axis)."""

    input: str | None = None  # noqa: A003 - mirrors load()'s argument
    output: str | None = None
    fixed_inputs: dict | None = None
    allow_nonfinite: bool = False
    batch_axes: dict | None = None


@dataclass(frozen=True)
class Signature:
    """The inputs and outputs of a model and which of them are explained.

    Attributes
    ----------
    source : str
        The file (or ``<in-memory model>``), for messages.
    inputs, outputs : list of TensorSpec
        The graph's inputs (initializers excluded) and outputs, as the file declares them.
    tensor_outputs : list of TensorSpec
        The outputs as onnx-explain runs them: a ZipMap output stands for the tensor it wraps.
    replaced : dict
        Non-tensor output -> the tensor output standing for it (None when dropped).
    input, output : TensorSpec
        The explained input and output.
    logit_name : str or None
        The tensor before a final Softmax/LogSoftmax over the last axis that produces ``output``.
    fixed_inputs : dict
        Values of other inputs shared by every sample (batch 1 is repeated to each batch).
    allow_nonfinite : bool
        Accept NaN and ±Inf in input arrays (refused by default).
    """

    source: str
    inputs: list
    outputs: list
    tensor_outputs: list
    replaced: dict
    input: TensorSpec
    output: TensorSpec
    logit_name: str | None
    fixed_inputs: dict = field(default_factory=dict)
    allow_nonfinite: bool = False
    #: input name -> the axis its batch is on (0 unless the file or the user says otherwise; None: the input
    #: has no batch axis, a scalar such as a sample rate, shared by every sample)
    batch_axes: dict = field(default_factory=dict)
    #: inputs the explained output does not depend on: never asked for (onnxruntime gets placeholders)
    unused: frozenset = frozenset()

    @classmethod
    def build(
        cls,
        proto: onnx.ModelProto,
        declared_outputs: list,
        replaced: dict,
        source: str,
        choice: Choice | None = None,
    ) -> Signature:
        """Choose the explained input and output of ``proto`` (whose ZipMap outputs are already replaced
        by their tensors, see :func:`onnx_explain.convert.prepare.tensor_outputs`) as ``choice`` says.

        Raises
        ------
        InputSpecError
            No input, several inputs and none chosen, an unknown name, an unsupported type, other inputs
            without values, no float output or several and none chosen.
        """
        choice = choice or Choice()
        input_name, output_name, batch_axes = choice.input, choice.output, choice.batch_axes
        fixed_inputs, allow_nonfinite = choice.fixed_inputs, choice.allow_nonfinite
        init_names = {t.name for t in proto.graph.initializer}
        inputs = [spec_from_value_info(v) for v in proto.graph.input if v.name not in init_names]
        tensor_outs = [spec_from_value_info(v) for v in proto.graph.output]
        chosen_in = choose_input(inputs, input_name, source)
        fixed_inputs = dict(fixed_inputs or {})
        unknown = sorted(set(fixed_inputs) - {i.name for i in inputs})
        if unknown:
            raise InputSpecError(f"{source}: fixed_inputs names {unknown} that are not inputs of the model")
        chosen_out = _choose_output(tensor_outs, declared_outputs, replaced, output_name, source)
        axes = _batch_axes(inputs, chosen_in, batch_axes or {}, source)
        logit = _find_logit(proto, chosen_out)
        needed = inputs_needed(proto, [chosen_out.name] + ([logit] if logit else []))
        unused = frozenset(i.name for i in inputs if i.name not in needed and i.name != chosen_in.name)
        return cls(
            source=source,
            inputs=inputs,
            outputs=list(declared_outputs),
            tensor_outputs=tensor_outs,
            replaced=dict(replaced),
            input=chosen_in,
            output=chosen_out,
            logit_name=logit,
            fixed_inputs={k: _as_input_dtype(v, inputs, k) for k, v in fixed_inputs.items()},
            allow_nonfinite=bool(allow_nonfinite),
            batch_axes=axes,
            unused=unused,
        )

    # ------------------------------------------------------------------ facts
    @property
    def layout(self) -> str | None:
        """Image layout of the explained input: ``'NCHW'``, ``'NHWC'``, ``'NHW'`` or None (not an image)."""
        return image_layout(self.input.shape)[0]

    @property
    def channel_axis(self) -> int | None:
        """Axis of the channels in a batch of the explained input (1 for NCHW, 3 for NHWC), else None."""
        return image_layout(self.input.shape)[1]

    @property
    def companions(self) -> list[TensorSpec]:
        """The other inputs without a fixed value: each call gives them per sample (an attention mask,
        token type ids ...), in a dict named after the inputs."""
        return [
            i
            for i in self.inputs
            if i.name != self.input.name and i.name not in self.fixed_inputs and i.name not in self.unused
        ]

    def n_classes(self, space: str = "logit") -> int | None:
        """Number of scores per sample when the file fixes it (else None)."""
        shape = self.output.shape
        if shape is None or len(shape) < 2 or not all(isinstance(d, int) for d in shape[1:]):
            return None
        return int(np.prod(shape[1:]))

    def space_name(self, space: str) -> str:
        """ONNX tensor explained in ``space``: ``'logit'`` (the input of a final Softmax, when there is one,
        else the output) or ``'output'`` (the output as the model returns it)."""
        if space not in ("logit", "output"):
            from .errors import OptionError

            raise OptionError(f"output space must be 'logit' or 'output', not {space!r}")
        return self.logit_name if space == "logit" and self.logit_name else self.output.name

    def batch_axis(self, name: str) -> int | None:
        """The axis input ``name`` holds its batch on (0 by default; None for an input without one)."""
        return self.batch_axes.get(name, 0)

    def to_batch_first(self, name: str, value):
        """Input ``name``'s array in the model's layout -> batch first (a scalar becomes one row)."""
        axis = self.batch_axis(name)
        if axis is None:
            return value[None]
        return value if axis == 0 else _moveaxis(value, axis, 0)

    def from_batch_first(self, name: str, value):
        """The inverse of :meth:`to_batch_first`: a batch-first array -> the model's layout (a scalar input
        takes the first row's value, the same in every row)."""
        axis = self.batch_axis(name)
        if axis is None:
            return np.asarray(value[0]) if isinstance(value, np.ndarray) else value[0]
        return value if axis == 0 else _moveaxis(value, 0, axis)

    def repeat_fixed(self, name: str, value, rows: int):
        """A fixed input's value for a batch of ``rows``: repeated along its batch axis when it holds one
        sample there (``(1, ...)``, or a state ``(2, 1, 128)`` on axis 1), else as it is."""
        axis = self.batch_axis(name)
        if axis is None or np.ndim(value) <= axis or np.shape(value)[axis] != 1 or rows == 1:
            return value
        return np.repeat(value, rows, axis=axis)

    def feed(self, x: np.ndarray, companions: dict | None = None) -> dict[str, np.ndarray]:
        """The onnxruntime feed for a batch ``x`` of the explained input: ``companions`` (batch-first,
        row-aligned with ``x``) by name in the model's layout, the fixed inputs repeated to the batch."""
        feed = {self.input.name: x}
        for name, value in self.fixed_inputs.items():
            feed[name] = self.repeat_fixed(name, value, x.shape[0])
        for name, value in (companions or {}).items():
            feed[name] = self.from_batch_first(name, value)
        for spec in self.inputs:  # onnxruntime wants every input fed: placeholders where nothing reads them
            if spec.name in self.unused and spec.name not in feed:
                feed[spec.name] = _placeholder(spec)
        return feed

    # ------------------------------------------------------------------ input checks
    def validate_input(self, x, allow_nonfinite: bool | None = None) -> np.ndarray:
        """Check ``x`` against the explained input and return it as a contiguous array of its dtype.

        Parameters
        ----------
        x : array_like
            A batch, batch first.
        allow_nonfinite : bool, optional
            Accept NaN and ±Inf (default: the model's setting, refused unless ``load(allow_nonfinite=True)``).

        Raises
        ------
        InputDataError
            Wrong rank, a fixed dimension that differs, a dtype of the wrong kind (float vs integer),
            an empty batch, or non-finite values (naming the first bad sample).
        """
        allow = self.allow_nonfinite if allow_nonfinite is None else allow_nonfinite
        return check_array(self.input, x, allow)

    def split_inputs(self, x, allow_nonfinite: bool | None = None) -> tuple[np.ndarray, dict]:
        """The explained batch and the per-sample companion arrays, from an array or a dict.

        Parameters
        ----------
        x : array_like or dict of str to array_like
            A batch of the explained input, or a dict of batch-first arrays named after the model's
            inputs: the explained input and, per sample, any other input (an attention mask ...). A
            value given here replaces the input's ``fixed_inputs`` value for this call.
        allow_nonfinite : bool, optional
            As for :meth:`validate_input`.

        Returns
        -------
        (numpy.ndarray, dict of str to numpy.ndarray)
            The checked explained batch ``(B, ...)`` and the checked companions, each ``(B, ...)``.

        Raises
        ------
        InputDataError
            A name that is not an input, the explained input missing, an input without a value, arrays
            with different batch sizes, a symbolic dimension that differs between inputs, or any check
            of :meth:`validate_input` failing on one of the arrays (named).
        """
        allow = self.allow_nonfinite if allow_nonfinite is None else allow_nonfinite
        if not isinstance(x, Mapping):
            x = {self.input.name: x}
        by_name = {i.name: i for i in self.inputs}
        unknown = [k for k in x if k not in by_name]
        if unknown:
            raise InputDataError(
                f"{unknown[0]!r} is not an input of the model (inputs: {', '.join(by_name)})"
            )
        if self.input.name not in x:
            raise InputDataError(
                f"the inputs hold no {self.input.name!r}, the explained input (given: {', '.join(x)})"
            )
        missing = [c.name for c in self.companions if c.name not in x]
        if missing:
            names = ", ".join(repr(n) for n in [self.input.name, *missing])
            raise InputDataError(
                f"input {missing[0]!r} needs a value per sample: pass a dict of arrays named after the "
                f"inputs ({names}), or fixed_inputs= at load for a value shared by every sample"
            )
        xe = check_array(self.input, x[self.input.name], allow)
        given = {}
        for name, value in x.items():
            if name != self.input.name:
                given[name] = check_array(by_name[name], value, allow, batch_axis=self.batch_axis(name))
        _check_symbolic_dims(self.input, xe, {n: (by_name[n], v) for n, v in given.items()}, self.batch_axes)
        companions = {}
        for name, value in given.items():
            v = self.to_batch_first(name, value)
            if len(v) == 1 and len(xe) > 1:  # one value for the whole batch (a scalar, a state of batch 1)
                v = np.repeat(v, len(xe), axis=0)
            if len(v) != len(xe):
                axis = self.batch_axis(name)
                raise InputDataError(
                    f"arrays with different batch sizes: {self.input.name!r} has {len(xe)} rows, {name!r} has "
                    f"{len(v)} on its batch axis {axis} (batch_axes= / --batch-axis {name}=AXIS if it is "
                    "another)"
                )
            companions[name] = v
        return xe, companions

    def pinned_dims(self) -> dict:
        """Sizes of symbolic dims that a fixed input fixes (an attention mask of length 12 given at load
        pins ``sequence`` to 12 for every input that shares it)."""
        by_name = {i.name: i for i in self.inputs}
        pinned = {}
        for name, value in self.fixed_inputs.items():
            spec = by_name.get(name)
            if spec is None or spec.shape is None or np.ndim(value) != len(spec.shape):
                continue
            for d, size in zip(spec.shape, np.shape(value), strict=True):
                if isinstance(d, str):
                    pinned.setdefault(d, int(size))
        return pinned

    def probe_shape(self, n: int, unknown: int = 32) -> list[int]:
        """The shape of a probe batch of ``n`` rows: fixed dims as declared, dims a fixed input pins
        (:meth:`pinned_dims`) at its size, other unknown ones ``unknown``.

        Raises
        ------
        InputSpecError
            The declared dims ask for more than :data:`MAX_PROBE_ELEMENTS` values.
        """
        spec = self.input
        pinned = self.pinned_dims()
        shape = [n] + [
            d if isinstance(d, int) else pinned.get(d, unknown) for d in (spec.shape or (None, None))[1:]
        ]
        if int(np.prod(shape, dtype=np.float64)) > MAX_PROBE_ELEMENTS:
            raise InputSpecError(
                f"{self.source}: input {spec.name!r} declares shape {spec.shape_str()}: a batch of {n} would hold "
                f"{np.prod(shape, dtype=np.float64):.3g} values, more than this machine should be asked for"
            )
        return shape

    def probe_batch(
        self, n: int = 2, seed: int = 0, index_bound: int | None = None, unknown: int = 32
    ) -> np.ndarray:
        """Random data of the input's dtype and shape (batch ``n``) for parity checks.

        Floats are standard normal; integers are drawn below ``index_bound`` (else 10). Unknown non-batch
        dims are ``unknown`` (see :meth:`probe_shape`).
        """
        spec = self.input
        shape = self.probe_shape(n, unknown)
        rng = np.random.default_rng(seed)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            return rng.standard_normal(shape).astype(dtype)
        return rng.integers(0, index_bound or 10, size=shape).astype(dtype)

    def probe_companions(
        self, n: int, index_bounds: dict | None = None, seed: int = 0, unknown: int = 32
    ) -> dict:
        """Plausible per-sample values of the companion inputs for a probe of ``n`` rows: integers that
        index a table (``Gather``) are drawn below its size, other integers and booleans are ones (an
        attention mask that keeps every position), floats standard normal. Dims are sized as in
        :meth:`probe_shape` (a symbolic dimension shared with the explained input gets its size)."""
        rng = np.random.default_rng(seed + 7)
        sizes = self.pinned_dims()
        sizes.update(
            {
                d: v
                for d, v in zip(self.input.shape or (), self.probe_shape(n, unknown), strict=False)
                if isinstance(d, str)
            }
        )
        out = {}
        for spec in self.companions:
            dims = list(spec.shape or (None, None))
            axis = self.batch_axis(spec.name)
            rest = dims if axis is None else dims[:axis] + dims[axis + 1 :]  # batch-first: the batch axis out
            shape = [n] + [d if isinstance(d, int) else sizes.get(d, unknown) for d in rest]
            dtype = np.dtype(spec.dtype)
            bound = (index_bounds or {}).get(spec.name)
            if dtype.kind == "f":
                out[spec.name] = rng.standard_normal(shape).astype(dtype)
            elif bound:
                out[spec.name] = rng.integers(0, bound, size=shape).astype(dtype)
            else:
                out[spec.name] = np.ones(shape, dtype=dtype)
        return out


def inputs_needed(proto: onnx.ModelProto, outputs: list[str]) -> set[str]:
    """The graph inputs tensors ``outputs`` depend on (through subgraphs too: an If or Loop body's
    outer-scope names count as inputs of its node)."""

    def names_in(graph) -> set[str]:
        out = set()
        for n in graph.node:
            out.update(n.input)
            for a in n.attribute:
                for g in [a.g] if a.HasField("g") else list(a.graphs):
                    out |= names_in(g)
        return out

    producer = {}
    for n in proto.graph.node:
        for o in n.output:
            producer[o] = n
    todo, seen = list(outputs), set()
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        node = producer.get(t)
        if node is None:
            continue
        todo.extend(i for i in node.input if i)
        for a in node.attribute:
            for g in [a.g] if a.HasField("g") else list(a.graphs):
                todo.extend(names_in(g))
    return seen


def with_output(proto: onnx.ModelProto, name: str, like: str) -> onnx.ModelProto:
    """``proto`` with the tensor ``name`` as an extra graph output (typed like output ``like``); onnxruntime
    returns only graph outputs. A copy when it changes anything (in place above 2 GB, where a copy would
    double the memory)."""
    if any(o.name == name for o in proto.graph.output):
        return proto
    proto = copy.deepcopy(proto) if proto.ByteSize() < 2**31 else proto
    vi = next((v for v in proto.graph.value_info if v.name == name), None)
    if vi is None:
        vi = helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        vi.type.CopyFrom(next(o for o in proto.graph.output if o.name == like).type)
    proto.graph.output.append(vi)
    return proto


def _placeholder(spec: TensorSpec) -> np.ndarray:
    """Zeros of an input's type and declared shape (unknown dims 1), for an input nothing reads."""
    dtype = np.dtype(spec.dtype) if spec.dtype and not spec.dtype.startswith("elem_type") else np.float32
    return np.zeros([d if isinstance(d, int) else 1 for d in (spec.shape or ())], dtype=dtype)


def _moveaxis(value, src: int, dst: int):
    """``np.moveaxis`` or ``torch.movedim``, whichever ``value`` is."""
    if isinstance(value, np.ndarray):
        return np.moveaxis(value, src, dst)
    return value.movedim(src, dst)


def _batch_axes(inputs: list, main: TensorSpec, declared: dict, source: str) -> dict:
    """Each input's batch axis where it is not 0: declared (``batch_axes=``), else read from the file's
    dim names (the explained input's first dim name found at another axis: a state ``[2, batch, 128]``),
    else None for a scalar (rank 0) input."""
    names = {i.name: i for i in inputs}
    unknown = sorted(set(declared) - set(names))
    if unknown:
        raise InputSpecError(f"{source}: batch_axes names {unknown} that are not inputs of the model")
    batch = (main.shape or (None,))[0] if main.shape else None
    axes = {}
    for spec in inputs:
        if spec.name in declared:
            a = declared[spec.name]
            rank = len(spec.shape) if spec.shape is not None else None
            if a is not None and (not isinstance(a, int) or a < 0 or (rank is not None and a >= rank)):
                raise InputSpecError(
                    f"{source}: batch axis {a!r} of input {spec.name!r} is not an axis of its shape "
                    f"{spec.shape_str()}"
                )
            axes[spec.name] = a
        elif spec.shape == ():
            axes[spec.name] = None
        elif isinstance(batch, str) and spec.shape and spec.shape[0] != batch and batch in spec.shape:
            axes[spec.name] = spec.shape.index(batch)
        elif (
            spec is not main and spec.shape and isinstance(spec.shape[0], int) and not isinstance(batch, int)
        ):
            # a fixed first dim cannot follow a free batch: the batch is its one free dim (silero's
            # state [2, ?, 128]), or it has none (an LSTM state [1, 1, 128] shared by every window)
            free = [a for a, d in enumerate(spec.shape) if not isinstance(d, int)]
            if len(free) <= 1:
                axes[spec.name] = free[0] if free else None
    return {k: v for k, v in axes.items() if v != 0}


def _as_input_dtype(value, inputs: list, name: str) -> np.ndarray:
    """A fixed input's value in the dtype its input declares (``--fixed sr=16000`` reads as an int, and an
    int64 input gets an int64 scalar)."""
    spec = next((i for i in inputs if i.name == name), None)
    a = np.asarray(value)
    if spec is None or not spec.dtype or spec.dtype.startswith("elem_type"):
        return a
    return a.astype(np.dtype(spec.dtype), copy=False)


def check_array(spec: TensorSpec, x, allow_nonfinite: bool = False, batch_axis: int | None = 0) -> np.ndarray:
    """Check ``x`` against input ``spec`` (rank, fixed dims, dtype kind, non-empty batch, finite values)
    and return it as a contiguous array of the input's dtype. ``batch_axis`` is the axis the batch is on
    (its size is free; None: no batch axis, a scalar input).

    Raises
    ------
    InputDataError
        Naming the input, and the first bad sample for non-finite values.
    """
    try:
        x = np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise InputDataError(f"input {spec.name!r}: not an array ({exc})") from None
    want = np.dtype(spec.dtype)
    kinds = {"f": "f", "i": "iu", "u": "iu", "b": "b"}
    if x.dtype.kind not in kinds.get(want.kind, want.kind):
        raise InputDataError(f"input {spec.name!r} expects {want.name} values, got a {x.dtype.name} array")
    if spec.shape is not None:
        if x.ndim != len(spec.shape):
            raise InputDataError(
                f"input {spec.name!r} expects shape {spec.shape_str()} (rank {len(spec.shape)}), "
                f"got an array of shape {list(x.shape)}"
            )
        for axis, (want_d, got) in enumerate(zip(spec.shape, x.shape, strict=True)):
            if axis != batch_axis and isinstance(want_d, int) and want_d != got:
                raise InputDataError(
                    f"input {spec.name!r} expects shape {spec.shape_str()}, got {list(x.shape)} "
                    f"(axis {axis} must be {want_d})"
                )
    if batch_axis is not None and (x.ndim <= batch_axis or x.shape[batch_axis] == 0):
        raise InputDataError(f"input {spec.name!r}: empty batch")
    if x.dtype.kind == "f" and not allow_nonfinite:
        rows = np.moveaxis(x, batch_axis, 0) if batch_axis else (x[None] if batch_axis is None else x)
        finite = np.isfinite(rows).reshape(rows.shape[0], -1).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            which = f"sample {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
            raise InputDataError(
                f"input {spec.name!r}: {which} holds NaN or infinite values "
                "(refused; load(..., allow_nonfinite=True) / --allow-nonfinite accepts them)"
            )
    if x.ndim == 0:  # a scalar input (np.ascontiguousarray would make it 1-D)
        return np.asarray(x, dtype=want)
    return np.ascontiguousarray(x, dtype=want)


def _check_symbolic_dims(
    main: TensorSpec, x: np.ndarray, others: dict, batch_axes: dict | None = None
) -> None:
    """Inputs sharing a symbolic dimension (``sequence`` of ``input_ids`` and ``attention_mask``) must
    agree on its size (batch axes aside: a value shared by the batch has 1 there)."""
    sizes: dict = {}
    for spec, arr in [(main, x), *others.values()]:
        batch = (batch_axes or {}).get(spec.name, 0)
        for axis, d in enumerate(spec.shape or ()):
            if axis == batch or not isinstance(d, str) or axis >= arr.ndim:
                continue
            seen = sizes.setdefault(d, (spec.name, arr.shape[axis]))
            if seen[1] != arr.shape[axis]:
                raise InputDataError(
                    f"input {spec.name!r} has {arr.shape[axis]} on its dimension {d!r}, input "
                    f"{seen[0]!r} has {seen[1]}: inputs sharing a dimension must agree"
                )


#: names the common exporters give the input a model is explained by, when it has several
_EXPLAINED_NAMES = (
    "input_ids",
    "pixel_values",
    "input_values",
    "input_features",
    "inputs_embeds",
    "input",
    "x",
)


def _default_input(inputs: list) -> TensorSpec | None:
    """The input to explain when a model has several and none is chosen: the one with a conventional
    name (``input_ids``, ``pixel_values`` ...), else the only float one; None when that is ambiguous."""
    by_name = {i.name: i for i in inputs}
    for name in _EXPLAINED_NAMES:
        if name in by_name:
            return by_name[name]
    floats = [i for i in inputs if i.is_float]
    return floats[0] if len(floats) == 1 else None


def choose_input(inputs: list, name: str | None, source: str) -> TensorSpec:
    if not inputs:
        raise InputSpecError(f"{source}: the model has no inputs")
    if name is None:
        spec = inputs[0] if len(inputs) == 1 else _default_input(inputs)
        if spec is None:
            names = ", ".join(i.name for i in inputs)
            raise InputSpecError(
                f"{source}: the model has several inputs ({names}); choose one with input= / --input-name"
            )
    else:
        spec = next((i for i in inputs if i.name == name), None)
        if spec is None:
            names = ", ".join(i.name for i in inputs)
            raise InputSpecError(f"{source}: no input named {name!r} (inputs: {names})")
    if spec.kind != "tensor" or spec.dtype not in _np_names(_FLOAT_TYPES | _INT_TYPES):
        raise InputSpecError(
            f"{source}: input {spec.name!r} has unsupported type {spec.kind} {spec.dtype}; "
            "onnx-explain explains float or integer tensors"
        )
    return spec


def _choose_output(outs: list, declared: list, replaced: dict, name: str | None, source: str) -> TensorSpec:
    listing = ", ".join(str(o) for o in declared)
    if name is not None:
        spec = next((o for o in outs if o.name == name), None)
        if spec is None and replaced.get(name):
            # a ZipMap output asked for by its own name means the tensor it wraps
            spec = next(o for o in outs if o.name == replaced[name])
        if spec is None:
            raise InputSpecError(f"{source}: no tensor output named {name!r} (outputs: {listing})")
        if not spec.is_float:
            raise InputSpecError(f"{source}: output {name!r} is {spec.dtype}, not a float score tensor")
        return spec
    floats = [o for o in outs if o.is_float]
    if len(floats) == 1:
        return floats[0]
    if not floats:
        raise InputSpecError(f"{source}: no float tensor output to explain (outputs: {listing})")
    names = ", ".join(o.name for o in floats)
    raise InputSpecError(
        f"{source}: several float outputs ({names}); choose one with output= / --output-name"
    )
