"""One-node (or few-node) ONNX graphs for every converter onnx-explain adds or fixes, each compared
with onnxruntime on the same input. Built with onnx.helper, as onnx2torch's own tests do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_model, ort_vs_torch, vinfo
from onnx import TensorProto, helper, numpy_helper

from onnx_explain.convert import ADDED, OVERRIDDEN, converter

F32 = TensorProto.FLOAT
I64 = TensorProto.INT64


def _init(name, value, dtype=None):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def case_gelu(approximate):
    node = helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)
    return make_model([node], [vinfo("x", ["N", 5])], [vinfo("y", None)], opset=20), _x((3, 5))


def case_mish():
    node = helper.make_node("Mish", ["x"], ["y"])
    return make_model([node], [vinfo("x", ["N", 5])], [vinfo("y", None)], opset=18), _x((3, 5))


def case_global_max_pool():
    node = helper.make_node("GlobalMaxPool", ["x"], ["y"])
    return make_model([node], [vinfo("x", ["N", 3, 4, 5])], [vinfo("y", None)], opset=17), _x((2, 3, 4, 5))


def case_reduce(op, axes, keepdims, opset=18):
    inputs = ["x"] + (["axes"] if axes is not None else [])
    inits = [_init("axes", axes, np.int64)] if axes is not None else []
    node = helper.make_node(op, inputs, ["y"], keepdims=keepdims)
    x = np.abs(_x((2, 3, 4))) + 0.1 if op in ("ReduceLogSum", "ReduceProd") else _x((2, 3, 4))
    return make_model([node], [vinfo("x", ["N", 3, 4])], [vinfo("y", None)], inits, opset=opset), x


def case_reduce_dynamic_axes():
    # axes computed in the graph (Shape -> Slice of a constant) instead of given as an initializer
    nodes = [
        helper.make_node("Add", ["ax0", "ax1"], ["axes"]),
        helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0),
    ]
    inits = [_init("ax0", [1, 2], np.int64), _init("ax1", [0, 0], np.int64)]
    return make_model(nodes, [vinfo("x", ["N", 3, 4])], [vinfo("y", None)], inits, opset=18), _x((2, 3, 4))


def case_reshape(allowzero, shape, opset=21):
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], allowzero=allowzero)
    inits = [_init("shape", shape, np.int64)]
    return make_model([node], [vinfo("x", ["N", 3, 4])], [vinfo("y", None)], inits, opset=opset), _x(
        (2, 3, 4)
    )


def case_split18_uneven():
    node = helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3)
    cat = helper.make_node("Concat", ["c", "a"], ["y"], axis=1)  # uses two of the three outputs
    return make_model([node, cat], [vinfo("x", ["N", 7])], [vinfo("y", None)], opset=18), _x((2, 7))


def case_pad(mode, axes, opset=19):
    inputs = ["x", "pads", "", "axes"] if axes is not None else ["x", "pads"]
    pads = [1, 2, 2, 1] if axes is not None else [0, 0, 1, 2, 0, 0, 2, 1]
    inits = [_init("pads", pads, np.int64)] + ([_init("axes", axes, np.int64)] if axes is not None else [])
    node = helper.make_node("Pad", inputs, ["y"], mode=mode)
    return make_model([node], [vinfo("x", ["N", 2, 4, 5])], [vinfo("y", None)], inits, opset=opset), _x(
        (2, 2, 4, 5)
    )


def case_cumsum(exclusive, reverse):
    attrs = {}
    if exclusive is not None:
        attrs["exclusive"] = exclusive
    if reverse is not None:
        attrs["reverse"] = reverse
    node = helper.make_node("CumSum", ["x", "axis"], ["y"], **attrs)
    inits = [_init("axis", 1, np.int64)]
    return make_model([node], [vinfo("x", ["N", 6])], [vinfo("y", None)], inits, opset=14), _x((2, 6))


def case_clip_int_then_gather():
    # token ids clipped to the table (an int Clip) then used as Gather indices
    nodes = [
        helper.make_node("Clip", ["ids", "lo", "hi"], ["c"]),
        helper.make_node("Gather", ["table", "c"], ["y"]),
    ]
    inits = [_init("lo", 0, np.int64), _init("hi", 4, np.int64), _init("table", _x((5, 3), 1))]
    model = make_model(nodes, [vinfo("ids", ["N", 6], I64)], [vinfo("y", None)], inits, opset=13)
    return model, np.array([[0, 7, -2, 3, 4, 1], [9, 2, 2, 0, -1, 5]], dtype=np.int64)


def case_clip_dynamic_bounds():
    nodes = [
        helper.make_node("ReduceMin", ["x"], ["lo"], keepdims=0),
        helper.make_node("Mul", ["lo", "half"], ["lo2"]),
        helper.make_node("Clip", ["x", "lo2", ""], ["y"]),
    ]
    inits = [_init("half", np.float32(0.5))]
    return make_model(nodes, [vinfo("x", ["N", 6])], [vinfo("y", None)], inits, opset=13), _x((2, 6))


def case_layernorm_unknown_shape(with_outputs):
    # the input comes from a Reshape whose target shape is computed: shape inference cannot know it
    outs = ["y", "mean", "istd"] if with_outputs else ["y"]
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Reshape", ["x", "s"], ["r"]),
        helper.make_node("LayerNormalization", ["r", "scale", "bias"], outs, axis=-1, epsilon=1e-3),
    ]
    if with_outputs:
        nodes.append(helper.make_node("Add", ["y", "mean"], ["z"]))
    inits = [_init("scale", _x((6,), 1)), _init("bias", _x((6,), 2))]
    out = "z" if with_outputs else "y"
    return make_model(nodes, [vinfo("x", ["N", "T", 6])], [vinfo(out, None)], inits, opset=17), _x((2, 4, 6))


def case_batchnorm(rank, declare_outputs):
    c = 3
    shape = [2, c] + [4] * (rank - 2)
    outs = ["y", "m", "v", "sm", "sv"] if declare_outputs else ["y"]
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "mu", "var"], outs, epsilon=1e-3)]
    inits = [_init("s", _x((c,), 1)), _init("b", _x((c,), 2)), _init("mu", _x((c,), 3)),
             _init("var", np.abs(_x((c,), 4)) + 0.5)]  # fmt: skip
    opset = 9 if declare_outputs else 15  # BN-9 may declare its optional outputs (older exporters do)
    dims = ["N", c] + [f"s{k}" for k in range(rank - 2)]
    return make_model(nodes, [vinfo("x", dims)], [vinfo("y", None)], inits, opset=opset), _x(shape)


def case_multi_output_graph_output():
    # TopK has two outputs; the graph returns only the values
    node = helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=1)
    inits = [_init("k", [2], np.int64)]
    return make_model([node], [vinfo("x", ["N", 5])], [vinfo("values", None)], inits, opset=13), _x((3, 5))


def case_type_only_bumps():
    # Cast-19, Shape-21, Flatten-21, Transpose-21, Unsqueeze-21, Identity-21, ConstantOfShape-21, Equal-19
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Unsqueeze", ["t", "ax"], ["u"]),
        helper.make_node("Flatten", ["u"], ["f"], axis=1),
        helper.make_node("Identity", ["f"], ["i"]),
        helper.make_node("Shape", ["i"], ["s"], start=1),
        helper.make_node(
            "ConstantOfShape", ["s"], ["ones"], value=numpy_helper.from_array(np.ones(1, np.float32))
        ),
        helper.make_node("Cast", ["ones"], ["onesd"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["onesd"], ["ones32"], to=F32),
        helper.make_node("Equal", ["i", "i"], ["eq"]),
        helper.make_node("Cast", ["eq"], ["eqf"], to=F32),
        helper.make_node("Mul", ["i", "ones32"], ["m"]),
        helper.make_node("Add", ["m", "eqf"], ["y"]),
    ]
    inits = [_init("ax", [1], np.int64)]
    return make_model(nodes, [vinfo("x", ["N", 3, 4])], [vinfo("y", None)], inits, opset=21), _x((2, 3, 4))


def case_weights_via_identity_and_constant():
    # legacy exporter: Identity of a shared initializer; PaddlePaddle: weights from Constant nodes
    w = _x((4, 3, 3, 3), 1)
    nodes = [
        helper.make_node("Identity", ["w_shared"], ["w1"]),
        helper.make_node("Constant", [], ["w2"], value=numpy_helper.from_array(_x((4, 4, 1, 1), 2))),
        helper.make_node("Constant", [], ["b2"], value_floats=[0.1, -0.2, 0.3, 0.0]),
        helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["h", "w2", "b2"], ["y"]),
    ]
    model = make_model(
        nodes, [vinfo("x", ["N", 3, 5, 5])], [vinfo("y", None)], [_init("w_shared", w)], opset=13
    )
    return model, _x((2, 3, 5, 5))


def case_average_pool19():
    node = helper.make_node(
        "AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], dilations=[1, 1]
    )
    return make_model([node], [vinfo("x", ["N", 2, 4, 4])], [vinfo("y", None)], opset=19), _x((2, 2, 4, 4))


def case_resize18():
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")
    inits = [_init("scales", [1, 1, 2, 2], np.float32)]
    return make_model([node], [vinfo("x", ["N", 2, 3, 3])], [vinfo("y", None)], inits, opset=18), _x(
        (2, 2, 3, 3)
    )


def case_slice(opset, starts, ends, axes, steps):
    if opset == 1:
        node = helper.make_node("Slice", ["x"], ["y"], starts=starts, ends=ends, axes=axes)
        inits = []
    else:
        node = helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])
        inits = [_init("s", starts, np.int64), _init("e", ends, np.int64), _init("a", axes, np.int64),
                 _init("st", steps, np.int64)]  # fmt: skip
    return make_model([node], [vinfo("x", ["N", 5, 6])], [vinfo("y", None)], inits, opset=opset), _x(
        (2, 5, 6)
    )


def case_slice_computed_bounds():
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "two"], ["w"]),
        helper.make_node("Div", ["w", "two"], ["half"]),
        helper.make_node("Slice", ["x", "zero", "half", "two"], ["y"]),
    ]
    inits = [_init("two", [2], np.int64), _init("zero", [0], np.int64)]
    return make_model(nodes, [vinfo("x", ["N", 5, 6])], [vinfo("y", None)], inits, opset=13), _x((2, 5, 6))


def case_scatter_nd(reduction, opset):
    # the batch axis is moved last so that the scattered axes are per-sample ones; [0, 1] repeats
    # for the reductions, and a negative index is used where duplicates are not allowed
    idx = np.array([[0, 1], [1, -1]] if reduction == "none" else [[0, 1], [1, 3], [0, 1]], np.int64)
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 2, 0]),
        helper.make_node("ScatterND", ["xt", "idx", "upd"], ["s"], reduction=reduction),
        helper.make_node("Transpose", ["s"], ["y"], perm=[2, 0, 1]),
    ]
    inits = [_init("idx", idx, np.int64), _init("upd", _x((len(idx), 2), 3))]
    return make_model(nodes, [vinfo("x", [2, 4, 5])], [vinfo("y", None)], inits, opset=opset), _x((2, 4, 5))


def case_lp_normalization(p, axis):
    node = helper.make_node("LpNormalization", ["x"], ["y"], p=p, axis=axis)
    x = _x((3, 4, 5))
    x[1, :, 2] = 0.0  # a zero vector along axis 1, a zero row along axis -1: they stay zero
    x[2, 3, :] = 0.0
    return make_model([node], [vinfo("x", ["N", 4, 5])], [vinfo("y", None)], opset=17), x


CASES = {
    "slice-1-attributes": lambda: case_slice(1, [1, 0], [4, -1], [1, 2], None),
    "slice-13-negative-steps": lambda: case_slice(13, [-1, 4], [-100, 0], [1, 2], [-2, -1]),
    "slice-13-sentinels": lambda: case_slice(13, [0, 2], [2**62, 2**62], [-2, -1], [2, 3]),
    "slice-13-computed-bounds": case_slice_computed_bounds,
    "scatternd-16-none": lambda: case_scatter_nd("none", 16),
    "scatternd-16-add": lambda: case_scatter_nd("add", 16),
    "scatternd-16-mul": lambda: case_scatter_nd("mul", 16),
    "scatternd-18-max": lambda: case_scatter_nd("max", 18),
    "scatternd-18-min": lambda: case_scatter_nd("min", 18),
    "gelu-none": lambda: case_gelu("none"),
    "gelu-tanh": lambda: case_gelu("tanh"),
    "mish-18": case_mish,
    "global-max-pool": case_global_max_pool,
    **{
        f"{op}-18-axes{axes}-keep{k}": (lambda op=op, axes=axes, k=k: case_reduce(op, axes, k))
        for op in [
            "ReduceMean",
            "ReduceMax",
            "ReduceMin",
            "ReduceSum",
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceProd",
            "ReduceSumSquare",
        ]
        for axes, k in [([1], 1), ([-1, 1], 0), (None, 0)]
    },  # fmt: skip
    "ReduceMax-20": lambda: case_reduce("ReduceMax", [2], 1, opset=20),
    "ReduceMin-20": lambda: case_reduce("ReduceMin", [1, 2], 0, opset=20),
    "reduce-dynamic-axes": case_reduce_dynamic_axes,
    "reshape-21-allowzero1": lambda: case_reshape(1, [-1, 4, 3]),
    "reshape-21-allowzero0-copies-zero": lambda: case_reshape(0, [0, -1]),
    "reshape-14-allowzero1": lambda: case_reshape(1, [2, 12], opset=14),
    "split-18-uneven": case_split18_uneven,
    "pad-19-constant": lambda: case_pad("constant", None),
    "pad-19-reflect": lambda: case_pad("reflect", None),
    "pad-19-edge": lambda: case_pad("edge", None),
    "pad-19-wrap": lambda: case_pad("wrap", None),
    "pad-18-axes": lambda: case_pad("constant", [2, 3], opset=18),
    "pad-21-axes-reflect": lambda: case_pad("reflect", [-2, -1], opset=21),
    "cumsum-default": lambda: case_cumsum(None, None),
    "cumsum-reverse": lambda: case_cumsum(None, 1),
    "cumsum-exclusive": lambda: case_cumsum(1, None),
    "cumsum-exclusive-reverse": lambda: case_cumsum(1, 1),
    "clip-int-then-gather": case_clip_int_then_gather,
    "clip-dynamic-bounds": case_clip_dynamic_bounds,
    "layernorm-unknown-shape": lambda: case_layernorm_unknown_shape(False),
    "layernorm-mean-output": lambda: case_layernorm_unknown_shape(True),
    "batchnorm-rank3-unknown": lambda: case_batchnorm(3, False),
    "batchnorm-rank5-unknown": lambda: case_batchnorm(5, False),
    "batchnorm-declared-outputs": lambda: case_batchnorm(4, True),
    "multi-output-node-graph-output": case_multi_output_graph_output,
    "type-only-bumps-19-21": case_type_only_bumps,
    "weights-via-identity-and-constant": case_weights_via_identity_and_constant,
    "averagepool-19": case_average_pool19,
    "resize-18": case_resize18,
    **{
        f"lpnormalization-p{p}-axis{a}": (lambda p=p, a=a: case_lp_normalization(p, a))
        for p in (1, 2)
        for a in (-1, 1)
    },
}


@pytest.mark.parametrize("name", list(CASES))
def test_converter_matches_onnxruntime(name, tmp_path):
    model, x = CASES[name]()
    if "axesNone" in name:  # reduces the batch axis too: not a per-sample model, so compare directly
        ref, got = _direct(model, x)
    else:
        ref, got, _ = ort_vs_torch(model, x, tmp_path)
    assert got.shape == ref.shape
    assert got.dtype == ref.dtype
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def _direct(model, x):
    import onnx
    import onnxruntime as ort

    from onnx_explain.convert import to_fx

    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    with torch.no_grad():
        got = to_fx(onnx.shape_inference.infer_shapes(model))(torch.from_numpy(x)).numpy()
    return ref, got


@pytest.mark.parametrize(
    "name",
    [
        "layernorm-unknown-shape",
        "layernorm-mean-output",
        "batchnorm-rank3-unknown",
        "batchnorm-rank5-unknown",
        "batchnorm-declared-outputs",
    ],
)
def test_norms_convert_without_any_shape_information(name):
    # no shape inference at all: onnx2torch's LayerNorm/BatchNorm read shapes and failed here
    from onnx_explain.convert import to_fx

    model, x = CASES[name]()
    del model.graph.value_info[:]
    import onnxruntime as ort

    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    with torch.no_grad():
        got = to_fx(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_cumsum_default_is_forward_not_reversed(tmp_path):
    # onnx2torch 1.5.15 reverses a plain CumSum; here the exact value is checked
    model, _ = case_cumsum(None, None)
    x = np.array([[1, 2, 3, 4, 5, 6]], dtype=np.float32)
    _, got, _ = ort_vs_torch(model, x, tmp_path)
    np.testing.assert_array_equal(got, [[1, 3, 6, 10, 15, 21]])


def test_int_clip_keeps_int_dtype(tmp_path):
    from onnx_explain.convert.ops.tensor import OnnxClip

    out = OnnxClip(0, 4)(torch.tensor([-3, 2, 9]))
    assert out.dtype == torch.int64
    assert out.tolist() == [0, 2, 4]


def test_registry_refuses_duplicates_and_bad_overrides():
    with pytest.raises(ValueError, match="already has a converter"):
        converter("Relu", 14)(lambda node, graph: None)
    with pytest.raises(ValueError, match="twice"):
        converter("Gelu", 20)(lambda node, graph: None)
    with pytest.raises(ValueError, match="does not have"):
        converter("NoSuchOp", 1, override=True)(lambda node, graph: None)


def test_override_list_is_exactly_the_fixed_builtins():
    fixed = {op for _, op, _ in OVERRIDDEN}
    assert fixed == {
        "Reshape",
        "Clip",
        "CumSum",
        "LayerNormalization",
        "BatchNormalization",
        "Slice",
        "ScatterND",
        # logic.py: uint16/32/64 kernels, IsInf's detect flags, Range's dtype
        "Greater",
        "Less",
        "GreaterOrEqual",
        "LessOrEqual",
        "Mod",
        "IsInf",
        "Range",
        # functional.py: weights computed in the graph
        "Conv",
        "ConvTranspose",
        # shapes.py: onnx2torch's NonZero-13 returns (nnz, rank), the transpose of ONNX's (rank, nnz)
        "NonZero",
        # shapes.py: onnx2torch's Flatten raised on 1-D inputs and axis=0 (legacy-exported BERT pooler)
        "Flatten",
        # quant.py: a Gather from a quantized (integer) embedding table returns a float carrier
        "Gather",
        # pooling.py: auto_pad SAME_UPPER/SAME_LOWER and asymmetric pads raised "not implemented"
        "MaxPool",
        "AveragePool",
        # pad.py: reflect/edge padding of 2-D/3-D tensors and of leading axes raised
        "Pad",
    }
    added = {op for _, op, _ in ADDED}
    assert {
        "Gelu",
        "GlobalMaxPool",
        "Mish",
        "LinearClassifier",
        "Normalizer",
        "LpNormalization",
        "ArrayFeatureExtractor",
        "CastLike",
        "Size",
    } <= added
