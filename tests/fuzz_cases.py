"""Mutated ONNX models for the fuzz test, and the child process that runs them.

A case is ``kind:seed``: the mutation is a pure function of the two, so every outcome can be reproduced
by name (``python tests/fuzz_cases.py flip:17`` runs one case in this process and prints its
tracebacks). Kinds:

- byte mutations of a serialized seed model: ``flip``, ``setbyte``, ``truncate``, ``insert``, ``delete``,
  ``dup_span`` (flips avoid tensor payloads most of the time, so they hit the graph structure);
- graph surgery on a seed model: ``dangling``, ``wrong_type``, ``bad_attr``, ``cycle``, ``shape``,
  ``opset``, ``op_type``, ``io``, ``initializer``, ``reorder``, ``drop_node``, ``dup_node``, ``graph_mix``
  (several surgeries at once); most are loaded with ``check=False`` so they get past ``onnx.checker``;
- fixed shapes of trouble: ``batch_dim`` (a batch declared -1 or 0, PaddlePaddle style), ``fixed_batch``
  (a batch baked in, often with one more surgery), ``huge_alloc``
  (a ConstantOfShape of 2e12 floats), ``huge_constant`` (a Constant whose declared size has no data),
  ``input`` (NaN, Inf, wrong dtype, rank or shape given to ``predict``);
- ``selftest_*``: a leak, a crash, a hang and a success, to prove the harness reports each.

Each case goes through ``load`` -> ``describe`` -> ``predict`` -> ``torch_module``. A stage's outcome is
``ok``, ``error`` (an ``OnnxExplainError`` with a one-line message) or ``leak`` (anything else, or an
``OnnxExplainError`` whose message is empty or spans several lines). The parent side
(:func:`run_cases`) runs the cases in child processes, a few hundred per child, and turns a child
killed by a signal or silent past the per-case timeout into a ``crash`` or ``hang`` outcome of the
case it was running.
"""

from __future__ import annotations

import faulthandler
import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
_CASE_MARK = "=== fuzz case "  # on the worker's stderr before each case
MEMORY_LIMIT = 6 << 30  # address space of a worker: an impossible allocation fails instead of swapping

BYTE_KINDS = ("flip", "setbyte", "truncate", "insert", "delete", "dup_span")
GRAPH_KINDS = (
    "dangling", "wrong_type", "bad_attr", "cycle", "shape", "opset", "op_type", "io", "initializer",
    "reorder", "drop_node", "dup_node", "graph_mix",
)  # fmt: skip
SPECIAL_KINDS = ("batch_dim", "fixed_batch", "huge_alloc", "huge_constant", "input")
SELFTEST_KINDS = ("selftest_ok", "selftest_leak", "selftest_crash", "selftest_hang")
KINDS = BYTE_KINDS + GRAPH_KINDS + SPECIAL_KINDS


# ==================================================================================== seed models
def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _f32(rng: np.random.Generator, *shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _model(nodes, inputs, outputs, inits, opset: int, extra=None) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra or {}).items()]
    graph = helper.make_graph(nodes, "seed", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=opsets, producer_name="onnx-explain-fuzz")
    model.ir_version = 8
    return model


def _mlp() -> onnx.ModelProto:
    """MatMul, Add, Relu, Gemm and a final Softmax (the logit path)."""
    r = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(_f32(r, 6, 8), "w1"),
        numpy_helper.from_array(_f32(r, 8), "b1"),
        numpy_helper.from_array(_f32(r, 8, 4), "w2"),
        numpy_helper.from_array(_f32(r, 4), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="add"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("Gemm", ["h2", "w2", "b2"], ["logits"], name="gemm", alpha=1.0, transB=0),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    return _model(nodes, [_vi("x", ["N", 6])], [_vi("probs", ["N", 4])], inits, 13)


def _ops18() -> onnx.ModelProto:
    """Conv, BatchNormalization, Clip, Pad, Slice, ReduceMean-18, Reshape, Concat: this package's
    converters, with constant inputs as initializers."""
    r = np.random.default_rng(2)
    i64 = np.int64
    inits = [
        numpy_helper.from_array(_f32(r, 4, 3, 3, 3) * 0.3, "cw"),
        numpy_helper.from_array(_f32(r, 4), "cb"),
        numpy_helper.from_array(np.abs(_f32(r, 4)) + 0.5, "bn_s"),
        numpy_helper.from_array(_f32(r, 4), "bn_b"),
        numpy_helper.from_array(_f32(r, 4) * 0.1, "bn_m"),
        numpy_helper.from_array(np.abs(_f32(r, 4)) + 0.5, "bn_v"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], i64), "pads"),
        numpy_helper.from_array(np.array([1, 1], i64), "starts"),
        numpy_helper.from_array(np.array([9, 9], i64), "ends"),
        numpy_helper.from_array(np.array([2, 3], i64), "axes"),
        numpy_helper.from_array(np.array([2, 3], i64), "raxes"),
        numpy_helper.from_array(np.array([-1, 4], i64), "shape"),
        numpy_helper.from_array(_f32(r, 8, 3), "gw"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], name="bn"),
        helper.make_node("Clip", ["bn", "lo", "hi"], ["clip"], name="clip"),
        helper.make_node("Pad", ["clip", "pads"], ["pad"], name="pad", mode="reflect"),
        helper.make_node("Slice", ["pad", "starts", "ends", "axes"], ["sl"], name="slice"),
        helper.make_node("ReduceMean", ["sl", "raxes"], ["rm"], name="rmean", keepdims=0),
        helper.make_node("Reshape", ["rm", "shape"], ["rs"], name="reshape"),
        helper.make_node("Concat", ["rs", "rs"], ["cat"], name="concat", axis=1),
        helper.make_node("Gemm", ["cat", "gw"], ["y"], name="gemm"),
    ]
    return _model(nodes, [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 3])], inits, 18)


def _norm20() -> onnx.ModelProto:
    """LayerNormalization, Gelu-20, Split-18, CumSum, ReduceMax-20."""
    r = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(np.abs(_f32(r, 6)) + 0.5, "ln_s"),
        numpy_helper.from_array(_f32(r, 6), "ln_b"),
        numpy_helper.from_array(np.array(2, np.int64), "cs_axis"),
        numpy_helper.from_array(np.array([1], np.int64), "mx_axes"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln_s", "ln_b"], ["ln"], name="ln", axis=-1),
        helper.make_node("Gelu", ["ln"], ["ge"], name="gelu"),
        helper.make_node("Split", ["ge"], ["s0", "s1"], name="split", axis=2, num_outputs=2),
        helper.make_node("Add", ["s0", "s1"], ["sum"], name="add"),
        helper.make_node("CumSum", ["sum", "cs_axis"], ["cs"], name="cumsum"),
        helper.make_node("ReduceMax", ["cs", "mx_axes"], ["y"], name="rmax", keepdims=0),
    ]
    return _model(nodes, [_vi("x", ["N", 5, 6])], [_vi("y", ["N", 3])], inits, 20)


def _ml() -> onnx.ModelProto:
    """skl2onnx's classifier tail: Scaler, Normalizer, LinearClassifier and a ZipMap of probabilities."""
    r = np.random.default_rng(4)
    ml = "ai.onnx.ml"
    nodes = [
        helper.make_node("Scaler", ["x"], ["sc"], domain=ml, name="scaler", offset=[0.1] * 4, scale=[2.0] * 4),
        helper.make_node("Normalizer", ["sc"], ["nm"], domain=ml, name="norm", norm="L2"),
        helper.make_node(
            "LinearClassifier", ["nm"], ["label", "probs"], domain=ml, name="linear",
            coefficients=[float(v) for v in _f32(r, 12)], intercepts=[0.1, -0.2, 0.3],
            classlabels_ints=[0, 1, 2], post_transform="SOFTMAX",
        ),
        helper.make_node("ZipMap", ["probs"], ["output_probability"], domain=ml, name="zipmap", classlabels_int64s=[0, 1, 2]),
    ]  # fmt: skip
    seq_map = helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    )
    outputs = [_vi("label", ["N"], TensorProto.INT64), helper.make_value_info("output_probability", seq_map)]
    return _model(nodes, [_vi("x", ["N", 4])], outputs, [], 17, {ml: 1})


def _consts() -> onnx.ModelProto:
    """Weights from Constant nodes and through Identity (what ``materialize_constants`` rewrites)."""
    r = np.random.default_rng(5)
    w = numpy_helper.from_array(_f32(r, 4, 3), "w_value")
    nodes = [
        helper.make_node("Constant", [], ["w"], name="const_w", value=w),
        helper.make_node("Identity", ["b0"], ["b"], name="ident_b"),
        helper.make_node("Constant", [], ["k"], name="const_k", value_float=0.5),
        helper.make_node("Constant", [], ["shift"], name="const_shift", value_floats=[0.1, 0.2, 0.3]),
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "b"], ["h1"], name="add"),
        helper.make_node("Mul", ["h1", "k"], ["h2"], name="mul"),
        helper.make_node("Sub", ["h2", "shift"], ["y"], name="sub"),
    ]
    inits = [numpy_helper.from_array(_f32(r, 3), "b0")]
    return _model(nodes, [_vi("x", ["N", 4])], [_vi("y", ["N", 3])], inits, 13)


def _embed() -> onnx.ModelProto:
    """An integer input through an embedding table (Gather), ReduceMean with attribute axes, Gemm."""
    r = np.random.default_rng(6)
    inits = [numpy_helper.from_array(_f32(r, 20, 8), "table"), numpy_helper.from_array(_f32(r, 8, 2), "gw")]
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"], name="gather", axis=0),
        helper.make_node("ReduceMean", ["emb"], ["pooled"], name="pool", axes=[1], keepdims=0),
        helper.make_node("Gemm", ["pooled", "gw"], ["y"], name="gemm"),
    ]
    return _model(nodes, [_vi("ids", ["N", 5], TensorProto.INT64)], [_vi("y", ["N", 2])], inits, 17)


_BUILDERS = {"mlp": _mlp, "ops18": _ops18, "norm20": _norm20, "ml": _ml, "consts": _consts, "embed": _embed}
SEED_NAMES = ("digits", "wine", "shapes") + tuple(_BUILDERS)
_SEED_CACHE: dict[str, bytes] = {}


def seed_bytes(name: str) -> bytes:
    """The serialized seed model ``name`` (a bundled file or a small built graph)."""
    if name not in _SEED_CACHE:
        if name in _BUILDERS:
            _SEED_CACHE[name] = _BUILDERS[name]().SerializeToString()
        else:
            _SEED_CACHE[name] = (MODELS / f"{name}.onnx").read_bytes()
    return _SEED_CACHE[name]


def seed_model(name: str) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.ParseFromString(seed_bytes(name))
    return m


# ==================================================================================== byte mutations
def _payload_spans(data: bytes, model: onnx.ModelProto) -> list[tuple[int, int]]:
    """Byte ranges of the tensors' raw data in ``data`` (flipping those only changes weights)."""
    spans = []
    for t in model.graph.initializer:
        if len(t.raw_data) >= 16:
            at = data.find(t.raw_data)
            if at >= 0:
                spans.append((at, at + len(t.raw_data)))
    return spans


def _structural_offset(rng: random.Random, data: bytes, spans) -> int:
    """A byte offset, outside the tensor payloads 80% of the time."""
    for _ in range(50):
        k = rng.randrange(len(data))
        if rng.random() < 0.2 or not any(a <= k < b for a, b in spans):
            return k
    return rng.randrange(len(data))


def _byte_mutation(kind: str, rng: random.Random, data: bytes, model: onnx.ModelProto) -> tuple[bytes, str]:
    buf = bytearray(data)
    spans = _payload_spans(data, model)
    if kind == "flip":
        at = []
        for _ in range(rng.randint(1, 6)):
            k = _structural_offset(rng, data, spans)
            buf[k] ^= 1 << rng.randrange(8)
            at.append(k)
        return bytes(buf), f"bit flips at {at}"
    if kind == "setbyte":
        at = []
        for _ in range(rng.randint(1, 4)):
            k = _structural_offset(rng, data, spans)
            buf[k] = rng.choice([0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)])
            at.append(k)
        return bytes(buf), f"bytes set at {at}"
    if kind == "truncate":
        k = rng.choice([0, 1, 2, 7, rng.randrange(len(data)), len(data) - rng.randint(1, 40)])
        return data[:k], f"truncated to {k} of {len(data)} bytes"
    if kind == "insert":
        k = _structural_offset(rng, data, spans)
        junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
        return data[:k] + junk + data[k:], f"{len(junk)} random bytes inserted at {k}"
    if kind == "delete":
        k = _structural_offset(rng, data, spans)
        n = rng.randint(1, 16)
        return data[:k] + data[k + n :], f"{n} bytes deleted at {k}"
    if kind == "dup_span":
        k = _structural_offset(rng, data, spans)
        n = rng.randint(2, 64)
        return data[: k + n] + data[k : k + n] + data[k + n :], f"{n} bytes at {k} repeated"
    raise KeyError(kind)


# ==================================================================================== graph surgery
def _pick_node(rng: random.Random, g: onnx.GraphProto) -> onnx.NodeProto | None:
    return rng.choice(list(g.node)) if len(g.node) else None


def _values(g: onnx.GraphProto) -> list[str]:
    names = [i.name for i in g.input] + [t.name for t in g.initializer]
    return names + [o for n in g.node for o in n.output if o]


def _dangling(rng, m):
    g = m.graph
    node = _pick_node(rng, g)
    if rng.random() < 0.3:  # remove what feeds a node instead of renaming its input
        victim = rng.choice([t.name for t in g.initializer] or [g.input[0].name])
        inits = [t for t in g.initializer if t.name != victim]
        del g.initializer[:]
        g.initializer.extend(inits)
        return f"initializer or input {victim!r} removed"
    if not node.input:
        node.input.append("ghost")
        return f"node {node.name!r} ({node.op_type}) gets an extra input 'ghost'"
    k = rng.randrange(len(node.input))
    old = node.input[k]
    node.input[k] = rng.choice(["ghost", "", old + "_missing"])
    return f"node {node.name!r} ({node.op_type}) input {k} {old!r} -> {node.input[k]!r}"


_TYPES = [
    TensorProto.UNDEFINED, TensorProto.INT64, TensorProto.INT32, TensorProto.UINT8, TensorProto.BOOL,
    TensorProto.STRING, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.COMPLEX64, TensorProto.BFLOAT16,
    TensorProto.FLOAT8E4M3FN, 99,
]  # fmt: skip


def _wrong_type(rng, m):
    g = m.graph
    new = rng.choice(_TYPES)
    where = rng.choice(["input", "output", "initializer", "value_info", "cast", "non_tensor_input"])
    if where == "input":
        g.input[0].type.tensor_type.elem_type = new
        return f"input {g.input[0].name!r} elem_type -> {new}"
    if where == "non_tensor_input":
        name = g.input[0].name
        g.input[0].type.CopyFrom(helper.make_sequence_type_proto(helper.make_tensor_type_proto(1, None)))
        return f"input {name!r} becomes a sequence"
    if where == "output":
        o = rng.choice(list(g.output))
        if o.type.HasField("tensor_type"):
            o.type.tensor_type.elem_type = new
        else:
            o.type.CopyFrom(helper.make_tensor_type_proto(new, None))
        return f"output {o.name!r} elem_type -> {new}"
    if where == "initializer" and len(g.initializer):
        t = rng.choice(list(g.initializer))
        t.data_type = new
        return f"initializer {t.name!r} data_type -> {new} (payload kept)"
    if where == "value_info" and len(g.value_info):
        v = rng.choice(list(g.value_info))
        v.type.tensor_type.elem_type = new
        return f"value_info {v.name!r} elem_type -> {new}"
    node = _pick_node(rng, g)  # cast a node's output to the new type
    out = node.output[0]
    node.output[0] = out + "_precast"
    g.node.append(helper.make_node("Cast", [out + "_precast"], [out], name="fuzz_cast", to=max(new, 1)))
    return f"output of node {node.name!r} cast to {new}"


def _bad_int(rng):
    return rng.choice([0, -1, -7, 1, 3, 64, 2**31 - 1, 2**62, -(2**62)])


def _bad_attr(rng, m):
    g = m.graph
    with_attrs = [n for n in g.node if len(n.attribute)]
    node = rng.choice(with_attrs) if with_attrs and rng.random() < 0.85 else _pick_node(rng, g)
    how = rng.choice(["value", "value", "value", "type", "delete", "unknown", "duplicate"])
    label = f"node {node.name!r} ({node.op_type})"
    if not len(node.attribute) or how == "unknown":
        node.attribute.append(
            helper.make_attribute(rng.choice(["bogus", "axis", "kernel_shape"]), _bad_int(rng))
        )
        return f"{label}: attribute {node.attribute[-1].name!r}={node.attribute[-1].i} added"
    a = rng.choice(list(node.attribute))
    if how == "delete":
        node.attribute.remove(a)
        return f"{label}: attribute {a.name!r} deleted"
    if how == "duplicate":
        node.attribute.append(a)
        return f"{label}: attribute {a.name!r} repeated"
    if how == "type":
        new = rng.choice(
            [helper.make_attribute(a.name, 1.5), helper.make_attribute(a.name, "text"),
             helper.make_attribute(a.name, [1, 2, 3]), helper.make_attribute(a.name, 7),
             helper.make_attribute(a.name, numpy_helper.from_array(np.zeros(3, np.float32)))]
        )  # fmt: skip
        node.attribute.remove(a)
        node.attribute.append(new)
        return f"{label}: attribute {a.name!r} retyped to {onnx.AttributeProto.AttributeType.Name(new.type)}"
    if a.type == onnx.AttributeProto.INT:
        a.i = _bad_int(rng)
        return f"{label}: {a.name}={a.i}"
    if a.type == onnx.AttributeProto.INTS:
        vals = list(a.ints)
        choice = rng.randrange(5)
        if choice == 0:
            vals = []
        elif choice == 1:
            vals = vals + [_bad_int(rng)]
        elif choice == 2:
            vals = vals[:-1]
        else:
            vals = [_bad_int(rng) for _ in vals] or [_bad_int(rng)]
        del a.ints[:]
        a.ints.extend(vals)
        return f"{label}: {a.name}={vals}"
    if a.type == onnx.AttributeProto.FLOAT:
        a.f = rng.choice([float("nan"), float("inf"), -1.0, 0.0, 1e30])
        return f"{label}: {a.name}={a.f}"
    if a.type == onnx.AttributeProto.FLOATS:
        vals = list(a.floats)
        vals = rng.choice([[], vals[:-1], vals + [float("nan")], [float("inf")] * len(vals)])
        del a.floats[:]
        a.floats.extend(vals)
        return f"{label}: {a.name}= {len(vals)} floats"
    if a.type == onnx.AttributeProto.STRING:
        a.s = rng.choice([b"", b"BOGUS", b"\xff\xfe", b"none;drop"])
        return f"{label}: {a.name}={a.s!r}"
    if a.type == onnx.AttributeProto.TENSOR:
        t = a.t
        choice = rng.randrange(3)
        if choice == 0:
            t.dims.append(rng.choice([0, 2, 1000]))
        elif choice == 1:
            t.data_type = rng.choice(_TYPES)
        else:
            t.ClearField("raw_data")
            del t.float_data[:]
        return f"{label}: tensor attribute {a.name!r} damaged ({choice})"
    node.attribute.remove(a)
    return f"{label}: attribute {a.name!r} deleted"


def _cycle(rng, m):
    g = m.graph
    nodes = list(g.node)
    k = rng.randrange(len(nodes))
    later = nodes[rng.randrange(k, len(nodes))]
    node = nodes[k]
    if not node.input:
        node.input.append(later.output[0])
    else:
        node.input[rng.randrange(len(node.input))] = later.output[0]
    return f"node {node.name!r} ({node.op_type}) reads {later.output[0]!r} of node {later.name!r}"


def _shape(rng, m):
    g = m.graph
    vi = rng.choice(list(g.input) + list(g.output) + list(g.value_info))
    if not vi.type.HasField("tensor_type"):
        return f"{vi.name!r} is not a tensor: unchanged"
    shape = vi.type.tensor_type.shape
    how = rng.randrange(6)
    if how == 0 or not len(shape.dim):
        shape.dim.add().dim_value = rng.choice([1, 3, 0])
        return f"{vi.name!r} gains a dim"
    if how == 1:
        del shape.dim[-1]
        return f"{vi.name!r} loses its last dim"
    if how == 2:
        vi.type.tensor_type.ClearField("shape")
        return f"{vi.name!r} loses its shape"
    axis = rng.randrange(len(shape.dim))
    d = shape.dim[axis]
    value = rng.choice([-1, 0, -7, 1, 2, 2**40, 2**62])
    d.Clear()
    if how == 3:
        d.dim_param = rng.choice(["", "?", "batch", "N M"])
        return f"{vi.name!r} dim {axis} -> {d.dim_param!r}"
    d.dim_value = value
    return f"{vi.name!r} dim {axis} -> {value}"


def _opset(rng, m):
    how = rng.randrange(5)
    if how == 0:
        m.opset_import[0].version = rng.choice([0, 1, 6, 9, 11, 99, 10**6])
        return f"default opset -> {m.opset_import[0].version}"
    if how == 1:
        m.opset_import.append(helper.make_opsetid("", 7))
        return "default opset imported twice"
    if how == 2:
        node = _pick_node(rng, m.graph)
        node.domain = rng.choice(["com.fuzz", "ai.onnx.ml", "com.microsoft", "ai.onnx"])
        return f"node {node.name!r} ({node.op_type}) domain -> {node.domain!r}"
    if how == 3:
        m.ir_version = rng.choice([0, 1, 3, 99, -1 & 0x7FFFFFFF])
        return f"ir_version -> {m.ir_version}"
    del m.opset_import[:]
    m.opset_import.append(helper.make_opsetid("com.fuzz", 1))
    return "default opset removed"


_OPS = ["Relu", "Softmax", "Conv", "Gemm", "MatMul", "Reshape", "Transpose", "Loop", "If", "Scan",
        "Bogus", "", "ConstantOfShape", "Concat", "TopK", "NonZero", "Resize", "Einsum", "Split"]  # fmt: skip


def _op_type(rng, m):
    node = _pick_node(rng, m.graph)
    old = node.op_type
    node.op_type = rng.choice(_OPS)
    return f"node {node.name!r} op {old} -> {node.op_type!r}"


def _io(rng, m):
    g = m.graph
    how = rng.randrange(8)
    if how == 0:
        del g.output[:]
        return "all outputs removed"
    if how == 1:
        g.output[0].name = "nowhere"
        return "output renamed to 'nowhere'"
    if how == 2:
        g.output.append(g.output[0])
        return "output listed twice"
    if how == 3:
        g.input.append(_vi("extra", ["N", 3]))
        return "unused extra input"
    if how == 4:
        g.input.append(g.input[0])
        return "input listed twice"
    if how == 5 and len(g.initializer):
        t = rng.choice(list(g.initializer))
        g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        return f"initializer {t.name!r} also listed as an input"
    if how == 6:
        src = rng.choice([g.input[0].name] + [t.name for t in g.initializer])
        g.output.append(_vi(src, None))
        return f"{src!r} is also a graph output"
    del g.input[:]
    return "all inputs removed"


def _initializer(rng, m):
    g = m.graph
    if not len(g.initializer):
        return _dangling(rng, m)
    t = rng.choice(list(g.initializer))
    how = rng.randrange(7)
    if how == 0:
        t.dims.append(rng.choice([2, 0, 7]))
        return f"initializer {t.name!r} gains a dim (payload kept)"
    if how == 1:
        del t.dims[:]
        t.dims.extend([rng.choice([2**31, 10**12, 0])])
        return f"initializer {t.name!r} dims -> {list(t.dims)}"
    if how == 2:
        t.ClearField("raw_data")
        return f"initializer {t.name!r} loses its data"
    if how == 3:
        try:
            arr = numpy_helper.to_array(t)
        except Exception:  # noqa: BLE001 - an earlier surgery broke it already
            return f"initializer {t.name!r} is unreadable: unchanged"
        if arr.dtype.kind == "f":
            arr = np.full_like(arr, rng.choice([np.nan, np.inf, 1e38]))
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
        return f"initializer {t.name!r} values -> non-finite or huge"
    if how == 4:
        g.initializer.append(g.initializer[0])
        return f"initializer {g.initializer[0].name!r} listed twice"
    # external data: outside the folder, missing, or a sibling file too short
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    loc = rng.choice(["../../etc/passwd", "/etc/passwd", "missing.bin", "weights.bin", "weights.bin"])
    entries = {"location": loc}
    if rng.random() < 0.5:
        entries["offset"] = str(rng.choice([0, 3, 10**9, -5]))
    if rng.random() < 0.5:
        entries["length"] = str(rng.choice([1, 12, 10**12]))
    for k, v in entries.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    return f"initializer {t.name!r} external data {entries}"


def _reorder(rng, m):
    nodes = list(m.graph.node)
    rng.shuffle(nodes)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return "nodes shuffled out of topological order"


def _drop_node(rng, m):
    node = _pick_node(rng, m.graph)
    m.graph.node.remove(node)
    return f"node {node.name!r} ({node.op_type}) removed"


def _dup_node(rng, m):
    node = _pick_node(rng, m.graph)
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    if rng.random() < 0.5:
        copy.name = node.name + "_copy"
    m.graph.node.append(copy)
    return f"node {node.name!r} ({node.op_type}) repeated: its outputs have two producers"


_SURGERY = {
    "dangling": _dangling, "wrong_type": _wrong_type, "bad_attr": _bad_attr, "cycle": _cycle,
    "shape": _shape, "opset": _opset, "op_type": _op_type, "io": _io, "initializer": _initializer,
    "reorder": _reorder, "drop_node": _drop_node, "dup_node": _dup_node,
}  # fmt: skip


def _graph_mix(rng, m):
    done = []
    for _ in range(rng.randint(2, 4)):
        kind = rng.choice(sorted(k for k in _SURGERY if k != "graph_mix"))
        if not len(m.graph.node) or not len(m.graph.input) or not len(m.graph.output):
            break  # an earlier step emptied the graph: nothing left to cut
        done.append(f"{kind}: {_SURGERY[kind](rng, m)}")
    return "; ".join(done)


_SURGERY["graph_mix"] = _graph_mix


# ==================================================================================== special cases
def _batch_dim(rng, m):
    """PaddlePaddle declares the batch as -1; other exporters as 0 (or another negative number)."""
    value = rng.choice([-1, -1, 0, -2])
    for vi in list(m.graph.input[:1]) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
        if len(dims):
            dims[0].Clear()
            dims[0].dim_value = value
    what = f"batch dim of the input and outputs declared as {value}"
    if rng.random() < 0.5:  # the whole batch sliced first (x[0:]): an identity that reads the batch dim
        x = m.graph.input[0].name
        for node in m.graph.node:
            node.input[:] = [f"{x}_rows" if i == x else i for i in node.input]
        m.graph.initializer.extend(
            numpy_helper.from_array(np.array([v], np.int64), f"rows_{k}")
            for k, v in (("start", 0), ("end", 2**63 - 1), ("axis", 0))
        )
        names = [x, "rows_start", "rows_end", "rows_axis"]
        m.graph.node.insert(0, helper.make_node("Slice", names, [f"{x}_rows"], name="rows"))
        what += ", then sliced whole on the batch axis"
    return what


def _fixed_batch(rng, m):
    """A batch size baked into the file (torch.onnx.export without dynamic axes), sometimes with one more
    surgery: the batch-freeing rewrite and the fixed-batch chunking run on damaged graphs."""
    value = rng.choice([1, 2, 3])
    for vi in list(m.graph.input[:1]) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
        if len(dims):
            dims[0].Clear()
            dims[0].dim_value = value
    what = f"batch fixed at {value}"
    if rng.random() < 0.6:
        kind = rng.choice(sorted(k for k in _SURGERY if k != "graph_mix"))
        what += f"; {kind}: {_SURGERY[kind](rng, m)}"
    return what


def _huge_alloc(rng) -> tuple[onnx.ModelProto, str]:
    """y = x + mean(ConstantOfShape(shape)), the shape asking for 2e12 floats (8 TB)."""
    how = rng.choice(["initializer", "constant", "computed"])
    shape = np.array([2_000_000, 1_000_000], np.int64)
    inits, nodes = [], []
    if how == "initializer":
        inits.append(numpy_helper.from_array(shape, "shape"))
    elif how == "constant":
        nodes.append(
            helper.make_node(
                "Constant", [], ["shape"], name="shape_const", value=numpy_helper.from_array(shape)
            )
        )
    else:  # the shape is computed from the input: only a run can find the size
        inits.append(numpy_helper.from_array(np.array([1_000_000, 1_000_000], np.int64), "scale"))
        nodes += [
            helper.make_node("Shape", ["x"], ["xs"], name="shape_of_x"),
            helper.make_node("Mul", ["xs", "scale"], ["shape"], name="scale_shape"),
        ]
    fill = numpy_helper.from_array(np.array([0.5], np.float32), "fill")
    nodes += [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], name="huge", value=fill),
        helper.make_node("ReduceMean", ["big"], ["m"], name="mean", keepdims=0),
        helper.make_node("Add", ["x", "m"], ["y"], name="add"),
    ]
    model = _model(nodes, [_vi("x", ["N", 3])], [_vi("y", ["N", 3])], inits, 17)
    return model, f"ConstantOfShape of 2e12 floats, shape from {how}"


def _huge_constant(rng) -> tuple[onnx.ModelProto, str]:
    """A Constant node (a weight) whose declared dims promise 2e12 floats that are not there."""
    t = TensorProto()
    t.name = "w_value"
    t.data_type = TensorProto.FLOAT
    t.dims.extend([3, rng.choice([666_666_666_667, 2**40, 7])])
    how = rng.choice(["empty", "short"])
    if how == "short":
        t.raw_data = np.zeros(12, np.float32).tobytes()
    nodes = [
        helper.make_node("Constant", [], ["w"], name="const_w", value=t),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
    ]
    model = _model(nodes, [_vi("x", ["N", 3])], [_vi("y", ["N", None])], [], 13)
    return model, f"Constant of dims {list(t.dims)} with {how} data"


INPUTS = ["nan", "posinf", "neginf", "nan_row", "int", "float64", "bool", "rank_up", "rank_down",
           "wrong_dim", "empty", "scalar", "list", "object", "string"]  # fmt: skip


def _bad_input(how: str, x: np.ndarray):
    if how in ("nan", "posinf", "neginf"):
        x = x.copy()
        if x.dtype.kind == "f":
            x.flat[0] = {"nan": np.nan, "posinf": np.inf, "neginf": -np.inf}[how]
        return x
    if how == "nan_row":
        return np.full_like(x, np.nan) if x.dtype.kind == "f" else x
    if how == "int":
        return x.astype(np.int64)
    if how == "float64":
        return x.astype(np.float64)
    if how == "bool":
        return x > 0
    if how == "rank_up":
        return x[..., None]
    if how == "rank_down":
        return x.reshape(x.shape[0], -1)[:, 0]
    if how == "wrong_dim":
        return np.concatenate([x, x], axis=-1)
    if how == "empty":
        return x[:0]
    if how == "scalar":
        return x.reshape(-1)[0]
    if how == "list":
        return x.tolist()
    if how == "object":
        return np.array([None, "a"], dtype=object)
    if how == "string":
        return np.array(["a", "b"])
    raise KeyError(how)


# ==================================================================================== cases
@dataclass
class Case:
    """One mutated model and how to run it."""

    name: str  # kind:seed
    seed_model: str
    description: str
    data: bytes = b""
    check: bool = True
    in_memory: bool = False
    input: str | None = None  # a bad input for predict (see _bad_input)
    extra_files: dict = field(default_factory=dict)


def make_case(name: str) -> Case:
    """Build case ``kind:seed``; the same name always gives the same case."""
    kind, _, seed_text = name.partition(":")
    seed = int(seed_text)
    rng = random.Random(f"onnx-explain-fuzz/{kind}/{seed}")
    if kind.startswith("selftest_"):
        return Case(name, "none", kind)
    seed_name = SEED_NAMES[seed % len(SEED_NAMES)]
    if kind in BYTE_KINDS:
        data = seed_bytes(seed_name)
        mutated, what = _byte_mutation(kind, rng, data, seed_model(seed_name))
        return Case(name, seed_name, what, mutated, check=rng.random() < 0.5)
    if kind in ("huge_alloc", "huge_constant"):
        model, what = (_huge_alloc if kind == "huge_alloc" else _huge_constant)(rng)
        return Case(
            name, "built", what, model.SerializeToString(), check=kind == "huge_alloc" and seed % 2 == 0
        )
    model = seed_model(seed_name)
    if kind == "input":
        how = INPUTS[seed % len(INPUTS)]
        return Case(name, seed_name, f"predict on a {how} input", model.SerializeToString(), input=how)
    if kind == "batch_dim":
        what = _batch_dim(rng, model)
        return Case(name, seed_name, what, model.SerializeToString(), check=True)
    if kind not in _SURGERY and kind != "fixed_batch":
        raise KeyError(f"unknown fuzz kind {kind!r}")
    what = (_fixed_batch if kind == "fixed_batch" else _SURGERY[kind])(rng, model)
    extra = {"weights.bin": bytes(rng.randrange(256) for _ in range(rng.choice([0, 5, 64])))}
    return Case(
        name, seed_name, what, model.SerializeToString(),
        check=rng.random() < 0.3, in_memory=rng.random() < 0.15, extra_files=extra,
    )  # fmt: skip


def plan(n: int, first_seed: int = 0) -> list[str]:
    """``n`` case names spread over every kind (round robin), seeds from ``first_seed``."""
    names = []
    seed = first_seed
    while len(names) < n:
        for kind in KINDS:
            names.append(f"{kind}:{seed}")
        seed += 1
    return names[:n]


# ==================================================================================== running a case
def _frames(exc: BaseException) -> list[str]:
    """``file:line in function`` of the frame that raised and of the innermost onnx_explain frames."""
    tb = traceback.extract_tb(exc.__traceback__)
    ours = [fr for fr in tb if "onnx_explain" in fr.filename and "/tests/" not in fr.filename]
    picked = [tb[-1]] + [fr for fr in reversed(ours[-3:]) if fr is not tb[-1]] if tb else []
    out = []
    for fr in picked:
        path = fr.filename
        for marker in ("site-packages/", str(ROOT) + "/"):
            if marker in path:
                path = path.split(marker, 1)[1]
        out.append(f"{path}:{fr.lineno} in {fr.name}")
    return out


def _stage(outcome: dict, stage: str, fn, keep_tb: bool = False):
    """Run ``fn``; record ``ok``, ``error`` or ``leak`` for ``stage`` in ``outcome``; return its value."""
    from onnx_explain.errors import OnnxExplainError

    try:
        value = fn()
    except OnnxExplainError as exc:
        msg = str(exc)
        if not msg.strip() or "\n" in msg.strip():
            outcome["stages"][stage] = {
                "status": "leak", "type": type(exc).__name__, "message": repr(msg[:300]),
                "why": "an OnnxExplainError message must be one non-empty line", "frames": _frames(exc),
            }  # fmt: skip
        else:
            outcome["stages"][stage] = {"status": "error", "type": type(exc).__name__, "message": msg[:300]}
        return None
    except Exception as exc:  # noqa: BLE001 - the point: anything else is a leak
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        outcome["stages"][stage] = {
            "status": "leak", "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "message": first, "frames": _frames(exc),
        }  # fmt: skip
        if keep_tb:
            outcome["stages"][stage]["traceback"] = traceback.format_exc()
        return None
    outcome["stages"][stage] = {"status": "ok"}
    return value


def run_case(case: Case, workdir: Path, convert: bool = True, keep_tb: bool = False) -> dict:
    """Run one case through load, describe, predict and (``convert``) torch_module; the outcome as data."""
    outcome = {"case": case.name, "seed_model": case.seed_model, "what": case.description, "stages": {}}
    if case.name.startswith("selftest_"):
        return _selftest(case, outcome)
    import onnx_explain as oe

    folder = workdir / case.name.replace(":", "_")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(case.data)
    for fname, content in case.extra_files.items():
        (folder / fname).write_bytes(content)
    outcome["options"] = {"check": case.check, "in_memory": case.in_memory, "input": case.input}
    try:
        if case.in_memory:
            target = onnx.ModelProto()
            target.ParseFromString(case.data)
        else:
            target = path
        model = _stage(outcome, "load", lambda: oe.load(target, check=case.check), keep_tb)
        if model is None:
            return outcome
        _stage(outcome, "describe", lambda: json.dumps(model.describe()), keep_tb)
        x = _stage(outcome, "probe_batch", lambda: model.probe_batch(2), keep_tb)
        if x is not None:
            if case.input:
                x = _bad_input(case.input, x)

            def predict():
                y = model.predict(x)
                rows = np.shape(x)[0] if np.ndim(x) else None
                if not isinstance(y, np.ndarray) or (rows is not None and y.shape[:1] != (rows,)):
                    raise AssertionError(f"predict returned {type(y).__name__} {np.shape(y)} for {rows} rows")
                return y

            _stage(outcome, "predict", predict, keep_tb)
        if convert:
            _stage(outcome, "torch_module", lambda: model.torch_module(), keep_tb)
            _stage(outcome, "describe_again", lambda: json.dumps(model.describe()), keep_tb)
    finally:
        for p in sorted(folder.iterdir()):
            p.unlink()
        folder.rmdir()
    return outcome


def _selftest(case: Case, outcome: dict) -> dict:
    kind = case.name.split(":")[0]
    if kind == "selftest_leak":
        _stage(outcome, "load", lambda: {}["no such key"])
    elif kind == "selftest_crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif kind == "selftest_hang":
        time.sleep(3600)
    else:
        outcome["stages"]["load"] = {"status": "ok"}
    return outcome


def outcome_failures(outcome: dict) -> list[str]:
    """One line per problem of a case outcome: a leaked stage, a crash or a hang."""
    outcome = dict(outcome, what=" ".join(str(outcome.get("what", "?")).split())[:400])
    if "fatal" in outcome:
        return [f"{outcome['case']} ({outcome.get('what', '?')}): {outcome['fatal']}"]
    lines = []
    for stage, st in outcome["stages"].items():
        if st["status"] == "leak":
            where = " <- ".join(st.get("frames", []))
            why = f" [{st['why']}]" if "why" in st else ""
            lines.append(
                f"{outcome['case']} [{outcome['seed_model']}; {outcome['what']}; {outcome.get('options')}] "
                f"{stage} leaked {st['type']}: {st['message']}{why} at {where}"
            )
    return lines


# ==================================================================================== child processes
def _worker(workdir: str, convert: bool) -> None:
    """Child side: read case names (JSON list) on stdin; for each, write a 'start' and a 'done' line."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)  # our own channel: C++ code may print on fd 1
    os.dup2(2, 1)
    faulthandler.enable()  # a crash leaves the Python stack on stderr, for the parent to quote
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ImportError, ValueError, OSError):
        pass
    names = json.loads(sys.stdin.readline())
    work = Path(workdir)
    if any(not n.startswith("selftest_") for n in names):
        import torch

        import onnx_explain.convert.driver  # noqa: F401
        import onnx_explain.model  # noqa: F401

        torch.set_num_threads(1)
    proto.write(json.dumps({"ready": True}) + "\n")
    for name in names:
        proto.write(json.dumps({"start": name}) + "\n")
        print(f"{_CASE_MARK}{name}", file=sys.stderr, flush=True)
        try:
            outcome = run_case(make_case(name), work, convert=convert)
        except Exception as exc:  # noqa: BLE001 - a harness failure is reported as the case's
            outcome = {"case": name, "what": "?", "fatal": f"harness error {type(exc).__name__}: {exc}"}
        proto.write(json.dumps({"done": outcome}) + "\n")
    proto.write(json.dumps({"finished": True}) + "\n")


def _crash_site(stderr: str) -> str:
    """Where a worker died, from the faulthandler dump of its last case: the innermost frame and the
    innermost onnx_explain frame, then the case's first line of native output (an assertion, say)."""
    text = stderr.rsplit(_CASE_MARK, 1)[-1]
    lines = text.splitlines()[1:]
    frames = [ln.strip() for ln in lines if ln.strip().startswith('File "')]

    def short(frame: str) -> str:
        m = re.match(r'File "(.*)", line (\d+) in (.*)', frame)
        if not m:
            return frame
        path = m.group(1)
        for marker in ("site-packages/", str(ROOT) + "/"):
            path = path.split(marker, 1)[-1]
        return f"{path}:{m.group(2)} in {m.group(3)}"

    where = [short(f) for f in frames[:1]] + [short(f) for f in frames[1:] if "onnx_explain/" in f][:2]
    native = next((ln.strip() for ln in lines if ln.strip() and not ln.startswith((" ", "File"))), "")
    out = f" at {' <- '.join(where)}" if where else ""
    return out + (f"; stderr: {native[:300]}" if native else "")


def _reader(stream, q: queue.Queue) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _run_slot(names, workdir, case_timeout, start_timeout, convert, results) -> None:
    """Run ``names`` in a child, restarting it after a crash or a hang, until every case has an outcome."""
    todo = list(names)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", ONNX_EXPLAIN_THREADS="1")
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    while todo:
        err_path = Path(workdir) / f"stderr-{threading.get_ident()}-{len(todo)}.txt"
        with open(err_path, "w") as err:
            child = subprocess.Popen(
                [sys.executable, __file__, "--worker", str(workdir), "--convert" if convert else "--no-convert"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
            )  # fmt: skip
        child.stdin.write(json.dumps(todo) + "\n")
        child.stdin.flush()
        q: queue.Queue = queue.Queue()
        threading.Thread(target=_reader, args=(child.stdout, q), daemon=True).start()
        current, timeout = None, start_timeout
        fatal = None
        while True:
            try:
                line = q.get(timeout=timeout)
            except queue.Empty:
                fatal = f"hang: no answer within {timeout:g} s"
                child.kill()
                break
            if line is None:
                code = child.wait()
                how = _signal_name(code) if code < 0 else f"exit code {code}"
                fatal = f"crash: the worker died ({how}){_crash_site(err_path.read_text(errors='replace'))}"
                break
            msg = json.loads(line)
            if "start" in msg:
                current, timeout = msg["start"], case_timeout
            elif "done" in msg:
                results[msg["done"]["case"]] = msg["done"]
                todo.remove(msg["done"]["case"])
                current = None
            elif "finished" in msg:
                break
            else:
                timeout = case_timeout
        child.wait()
        child.stdout.close()
        err_path.unlink(missing_ok=True)
        if fatal is not None:
            victim = current or (todo[0] if todo else None)
            if victim is None:
                break
            results[victim] = {"case": victim, "what": make_case(victim).description, "fatal": fatal}
            todo.remove(victim)


def run_cases(
    names: list[str],
    workdir: Path,
    workers: int = 2,
    case_timeout: float = 60.0,
    start_timeout: float = 180.0,
    convert: bool = True,
) -> dict[str, dict]:
    """Run every case in ``workers`` child processes; ``{case name: outcome}`` for each."""
    results: dict[str, dict] = {}
    slots = [names[i::workers] for i in range(workers)]
    threads = [
        threading.Thread(target=_run_slot, args=(s, workdir, case_timeout, start_timeout, convert, results))
        for s in slots
        if s
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        _worker(argv[1], argv[2] == "--convert")
        return 0
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name in argv:
            case = make_case(name)
            print(f"{name}: {case.description} (seed model {case.seed_model}, check={case.check})")
            outcome = run_case(case, Path(tmp), keep_tb=True)
            for stage, st in outcome["stages"].items():
                print(f"  {stage}: {st['status']} {st.get('type', '')} {st.get('message', '')}")
                if "traceback" in st:
                    print("    " + st["traceback"].replace("\n", "\n    "))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main(sys.argv[1:]))
