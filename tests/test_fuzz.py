"""Fuzzing the error contract: a mutated ONNX file gives a result or an ``OnnxExplainError``, never another
exception, a signal or a hang.

The cases (``tests/fuzz_cases.py``) are byte mutations and graph surgery of the bundled models and of
small built graphs, plus fixed shapes of trouble (a batch declared -1 or 0, a ConstantOfShape of 2e12
floats, NaN inputs). Each goes through ``load``, ``describe``, ``predict`` and ``torch_module`` in a child
process that runs a few hundred cases; a failure names the case (``kind:seed``), the stage, the exception
and where it was raised. Reproduce one with ``python tests/fuzz_cases.py kind:seed``.

The second half holds the regressions the fuzzer found in the conversion driver, as plain tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import fuzz_cases as fc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnx_explain.convert.driver import failing_node, onnx_nodes, to_fx
from onnx_explain.convert.prepare import (
    drop_trailing_empty_inputs,
    materialize_constants,
    native_crash_hazard,
    symbolic_negative_dims,
    tensor_problem,
)
from onnx_explain.errors import ConversionError

QUICK = 400  # cases in the default run (about 10 s on two idle cores); the slow run has 10000 others
WORKERS = max(1, min(2, os.cpu_count() or 1))
SPECIAL = (
    [f"batch_dim:{s}" for s in range(8)]
    + [f"huge_alloc:{s}" for s in range(6)]
    + [f"huge_constant:{s}" for s in range(4)]
    + [f"input:{s}" for s in range(len(fc.INPUTS))]
)
#: cases of the long run that once leaked, kept in the quick run
FOUND = [
    "setbyte:5015",  # node names that are not UTF-8 (protobuf hands back bytes): driver
    "setbyte:5073",  # the same in a ZipMap's input: prepare.tensor_outputs
    "setbyte:5026", "setbyte:5127",  # the same: describe's op histogram and JSON
    "flip:5020",  # an output name with control characters inside an error message
    "initializer:1004", "graph_mix:1047",  # external data out of the file's bounds
    "shape:1031",  # an input dim of 2**62: the probe batch
    "shape:20158",  # a fixed batch of 2**40: the batch-freeing check builds a probe of 2**40 + 1 rows
    "fixed_batch:40026",  # an initializer of unknown type read by the batch-freeing rewrite
    "dangling:40118",  # LayerNormalization(x, scale, ''): onnxruntime 1.31 segfaults creating the session
    "graph_mix:30398",  # Split with num_outputs=1 and two outputs: onnx's shape inference aborts
    "flip:30270",  # a logit name that is not UTF-8, added as an output for onnxruntime
    "graph_mix:1002",  # a Softmax left with no input (dangling, then dropped): the logit search
    "batch_dim:2", "batch_dim:3",  # a batch of -1 (PaddlePaddle), then a Slice on it: onnx's checker aborts
]  # fmt: skip
#: known and not contained: onnx 1.23's shape inference aborts the process (SIGABRT in std::clamp) when a
#: dim that *inference* makes negative (a Conv kernel larger than its input) reaches a Slice. Only running
#: onnx's C++ checks in another process contains it; that costs every load a fork and is left for later.
KNOWN_UPSTREAM = ["flip:60250"]


def _failures(results: dict, names: list[str]) -> list[str]:
    missing = [n for n in names if n not in results]
    return [f"{n}: no outcome" for n in missing] + [
        line for n in names if n in results for line in fc.outcome_failures(results[n])
    ]


def _statuses(outcome: dict) -> dict[str, str]:
    return {stage: st["status"] for stage, st in outcome.get("stages", {}).items()}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    names = list(dict.fromkeys(fc.plan(QUICK) + SPECIAL + FOUND))
    t0 = time.perf_counter()
    results = fc.run_cases(names, tmp_path_factory.mktemp("fuzz"), workers=WORKERS)
    return names, results, time.perf_counter() - t0


def test_fuzz_every_outcome_is_a_result_or_an_onnx_explain_error(quick):
    names, results, seconds = quick
    assert len(names) >= 200
    failures = _failures(results, names)
    assert not failures, f"{len(failures)} of {len(names)} cases broke the error contract:\n" + "\n".join(
        failures
    )
    # the mutations bite (many are refused) and do not only bite (many still run end to end)
    refused = sum(any(s == "error" for s in _statuses(results[n]).values()) for n in names)
    clean = sum(
        set(_statuses(results[n]).values()) == {"ok"} and len(_statuses(results[n])) == 6 for n in names
    )
    assert refused >= 0.3 * len(names), f"only {refused} cases refused: the mutations do not reach the code"
    assert clean >= 0.1 * len(names), f"only {clean} cases ran end to end: the seeds are broken"
    assert seconds < 120, f"the quick fuzz run took {seconds:.0f} s"


def test_fuzz_cases_are_reproducible_by_name():
    for name in ["flip:3", "bad_attr:5", "graph_mix:7", "huge_alloc:1", "input:2"]:
        a, b = fc.make_case(name), fc.make_case(name)
        assert a.data == b.data and a.description == b.description and a.check == b.check
    assert fc.make_case("flip:3").data != fc.make_case("flip:4").data


def test_fuzz_paddle_batch_dims_are_symbolic(quick):
    _, results, _ = quick
    for name in SPECIAL:
        if name.startswith("batch_dim:"):
            outcome = results[name]
            assert "declared as" in outcome["what"]
            assert _statuses(outcome) == dict.fromkeys(
                ["load", "describe", "probe_batch", "predict", "torch_module", "describe_again"], "ok"
            ), (name, outcome)


def test_fuzz_impossible_allocation_is_one_line_error(quick):
    _, results, _ = quick
    for name in SPECIAL:
        if name.startswith(("huge_alloc:", "huge_constant:")):
            stages = results[name]["stages"]
            assert stages["load"]["status"] == "ok", (name, stages)
            assert stages["describe"]["status"] == "ok", (name, stages)  # `info` still describes it
            for stage in ("predict", "torch_module"):
                assert stages[stage]["status"] == "error", (name, stage, stages[stage])
                assert stages[stage]["type"] in ("ModelRunError", "ConversionError"), (name, stages[stage])
                assert "model.onnx" in stages[stage]["message"], (name, stages[stage])


def test_fuzz_non_finite_inputs_are_refused(quick):
    _, results, _ = quick
    for name in SPECIAL:
        case = fc.make_case(name) if name.startswith("input:") else None
        if case is not None and case.input in ("nan", "posinf", "neginf", "nan_row"):
            stages = results[name]["stages"]
            if case.seed_model == "embed":  # integer input: no NaN to put in
                continue
            assert stages["predict"]["status"] == "error", (name, stages["predict"])
            assert stages["predict"]["type"] == "InputDataError", (name, stages["predict"])


def test_harness_reports_leaks_crashes_and_hangs(tmp_path):
    names = ["selftest_ok:0", "selftest_leak:0", "selftest_crash:0", "selftest_ok:1", "selftest_hang:0"]
    names.append("selftest_ok:2")
    results = fc.run_cases(names, tmp_path, workers=1, case_timeout=3, start_timeout=60)
    assert set(results) == set(names)  # the cases after a crash and a hang still ran
    assert _statuses(results["selftest_ok:0"]) == {"load": "ok"}
    assert _statuses(results["selftest_ok:2"]) == {"load": "ok"}
    leak = fc.outcome_failures(results["selftest_leak:0"])
    assert len(leak) == 1 and "selftest_leak:0" in leak[0] and "load leaked builtins.KeyError" in leak[0]
    assert "fuzz_cases.py" in leak[0]  # where it was raised
    crash = fc.outcome_failures(results["selftest_crash:0"])
    assert len(crash) == 1 and crash[0].startswith("selftest_crash:0") and "SIGSEGV" in crash[0]
    assert "fuzz_cases.py:" in crash[0] and "in _selftest" in crash[0]  # where, from faulthandler
    hang = fc.outcome_failures(results["selftest_hang:0"])
    assert len(hang) == 1 and hang[0].startswith("selftest_hang:0") and "hang" in hang[0]


@pytest.mark.slow
def test_fuzz_long(tmp_path):
    names = fc.plan(10_000, first_seed=1000)
    results = fc.run_cases(names, tmp_path, workers=WORKERS)
    failures = _failures(results, names)
    assert not failures, f"{len(failures)} of {len(names)} cases broke the error contract:\n" + "\n".join(
        failures
    )


# ================================================================== regressions found by the fuzzer
def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _mlp_model(nodes=None, names=("mm", "add", "relu")) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b"),
    ]
    nodes = nodes or [
        helper.make_node("MatMul", ["x", "w"], ["h"], name=names[0]),
        helper.make_node("Add", ["h", "b"], ["h1"], name=names[1]),
        helper.make_node("Relu", ["h1"], ["y"], name=names[2]),
    ]
    graph = helper.make_graph(nodes, "g", [_vi("x", ["N", 4])], [_vi("y", ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _torch_vs_ort(model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray, torch.nn.Module]:
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    gm = to_fx(copy, "m.onnx")
    with torch.no_grad():
        got = gm(torch.from_numpy(x)).numpy()
    return ref, got, gm


def test_nodes_out_of_order_are_converted_in_dependency_order():
    model = _mlp_model()
    nodes = list(model.graph.node)[::-1]  # onnxruntime sorts them; onnx2torch raised KeyError
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    ref, got, _ = _torch_vs_ort(model)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_colliding_node_names_keep_every_node():
    # onnx2torch names unnamed nodes by op type: 'Relu', 'Relu_1' ... and a node *called* 'Relu_1'
    # replaced one of them (a node silently dropped); 'forward' and 'initializers' are attributes of the
    # root module (add_module raised KeyError)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="forward"),
        helper.make_node("Add", ["h", "b"], ["h1"], name="initializers"),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("Neg", ["h2"], ["h3"], name="Relu_1"),
        helper.make_node("Relu", ["h3"], ["h4"]),
        helper.make_node("Neg", ["h4"], ["y"], name="Relu_1_1"),
    ]
    ref, got, gm = _torch_vs_ort(_mlp_model(nodes))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    kept = sorted((v[0], v[1]) for v in onnx_nodes(gm).values())
    assert kept == [("", "Relu"), ("", "Relu"), ("Relu_1", "Neg"), ("Relu_1_1", "Neg"), ("forward", "MatMul"),
                    ("initializers", "Add")]  # fmt: skip


def test_cycles_and_values_with_two_producers_are_refused_by_node():
    cyc = _mlp_model([
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "y"], ["h1"], name="add"),
        helper.make_node("Relu", ["h1"], ["y"], name="relu"),
    ])  # fmt: skip
    with pytest.raises(ConversionError, match=r"^m\.onnx: the graph has a cycle through node 'add' \(Add\)"):
        to_fx(cyc, "m.onnx")
    own = _mlp_model([helper.make_node("Relu", ["y"], ["y"], name="selfish")])
    with pytest.raises(ConversionError, match=r"node 'selfish' \(Relu\) reads its own output"):
        to_fx(own, "m.onnx")
    dup = _mlp_model()
    dup.graph.node.append(helper.make_node("Neg", ["x"], ["h1"], name="twin"))
    with pytest.raises(
        ConversionError, match=r"'h1' is produced by two nodes, node 'add' \(Add\) and node 'twin'"
    ):
        to_fx(dup, "m.onnx")


def test_tensors_declaring_more_than_they_hold_are_refused_without_allocating():
    t = TensorProto(name="w_value", data_type=TensorProto.FLOAT, dims=[3, 666_666_666_667])
    t.raw_data = np.zeros(3, np.float32).tobytes()
    assert tensor_problem(t) == "declares shape [3, 666666666667] (8000000000004 bytes) but holds 12 bytes"
    model = _mlp_model([
        helper.make_node("Constant", [], ["w2"], name="const_w", value=t),
        helper.make_node("MatMul", ["x", "w2"], ["y"], name="mm"),
    ])  # fmt: skip
    assert materialize_constants(model) == {"Constant": 0, "Identity": 0}  # left for the driver to name
    t0 = time.perf_counter()
    with pytest.raises(
        ConversionError, match=r"node 'const_w' \(Constant\): its 'value' tensor declares shape"
    ):
        to_fx(model, "m.onnx")
    assert time.perf_counter() - t0 < 5
    model = _mlp_model()
    model.graph.initializer[1].ClearField("raw_data")
    with pytest.raises(
        ConversionError,
        match=r"^m\.onnx: initializer 'b' declares shape \[3\] \(3 values\) but holds 0 values$",
    ):
        to_fx(model, "m.onnx")


@pytest.mark.parametrize(
    "tensor",
    [numpy_helper.from_array((np.arange(6) % 2).astype(d).reshape(2, 3), "t") for d in
     (np.float32, np.float64, np.float16, np.int64, np.int32, np.int8, np.uint8, np.uint16, np.bool_)]
    + [
        helper.make_tensor("f", TensorProto.FLOAT, [2, 2], [1.0, 2.0, 3.0, 4.0]),
        helper.make_tensor("h", TensorProto.FLOAT16, [3], np.array([1, 2, 3], np.float16).view(np.uint16).tolist()),
        helper.make_tensor("i", TensorProto.INT64, [2], [1, 2]),
        helper.make_tensor("b", TensorProto.BOOL, [2], [True, False]),
        helper.make_tensor("d", TensorProto.DOUBLE, [], [1.5]),
        helper.make_tensor("s", TensorProto.STRING, [2], [b"a", b"bc"]),
        helper.make_tensor("c", TensorProto.COMPLEX64, [2], [1 + 2j, 3 + 4j]),
        helper.make_tensor("e", TensorProto.FLOAT, [0, 3], []),
    ],
    ids=lambda t: f"{t.name}-{t.data_type}-{'raw' if t.HasField('raw_data') else 'typed'}",
)  # fmt: skip
def test_valid_tensors_have_no_problem(tensor):
    assert tensor_problem(tensor) is None
    assert numpy_helper.to_array(tensor).size == int(np.prod(tensor.dims))


def test_unreadable_attribute_is_named():
    model = _mlp_model()
    model.graph.node[2].attribute.append(helper.make_attribute("mode", b"\xff\xfe"))
    with pytest.raises(ConversionError, match=r"node 'relu' \(Relu\) has an attribute that cannot be read"):
        to_fx(model, "m.onnx")


def test_failing_node_names_the_onnx_node_a_run_fails_in():
    model = _mlp_model()
    gm = to_fx(model, "m.onnx")
    assert failing_node(gm, [torch.zeros(2, 4)]) is None
    assert failing_node(gm, [torch.zeros(2, 5)]) == "node 'mm' (MatMul)"


_ORT_CHILD = """
import json, sys
import numpy as np, onnxruntime as ort
x = np.arange(60, dtype=np.float32).reshape(2, 5, 6) % 7
s = ort.InferenceSession(sys.stdin.buffer.read(), providers=["CPUExecutionProvider"])
print(json.dumps(s.run(None, {"x": x})[0].tolist()))
"""


def test_trailing_empty_inputs_are_dropped_so_onnxruntime_does_not_crash():
    # the ONNX spec makes LayerNormalization(x, scale, '') and LayerNormalization(x, scale) the same;
    # onnxruntime 1.31 segfaults on the first when it creates a session with extended optimizations
    scale = np.linspace(0.5, 2.0, 6).astype(np.float32)
    node = helper.make_node("LayerNormalization", ["x", "scale", ""], ["y"], name="ln", axis=-1)
    graph = helper.make_graph(
        [node],
        "g",
        [_vi("x", ["N", 5, 6])],
        [_vi("y", ["N", 5, 6])],
        [numpy_helper.from_array(scale, "scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 8
    assert drop_trailing_empty_inputs(model) == 1
    assert list(model.graph.node[0].input) == ["x", "scale"]
    assert drop_trailing_empty_inputs(model) == 0
    out = subprocess.run(
        [sys.executable, "-c", _ORT_CHILD], input=model.SerializeToString(), capture_output=True, timeout=300
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-800:]
    x = np.arange(60, dtype=np.float32).reshape(2, 5, 6) % 7
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * scale
    np.testing.assert_allclose(np.array(json.loads(out.stdout)), want, rtol=1e-4, atol=1e-5)


def test_native_crash_hazards_are_found_before_onnx_sees_them():
    def split(num_outputs, outputs=("a", "b")):
        node = helper.make_node("Split", ["x"], list(outputs), name="split", axis=1, num_outputs=num_outputs)
        outs = [_vi(o, [2, 3]) for o in outputs]
        graph = helper.make_graph([node], "g", [_vi("x", [2, 6])], outs)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    # onnx 1.23's shape inference (and checker.check_model(full_check=True)) aborts the process on this
    assert native_crash_hazard(split(1)) == "node 'split' (Split) declares num_outputs=1 but has 2 outputs"
    assert native_crash_hazard(split(2)) is None
    inner = split(3).graph  # the hazard inside an If branch counts too
    cond = helper.make_node("If", ["c"], ["a", "b"], name="if", then_branch=inner, else_branch=inner)
    outer = helper.make_graph([cond], "g", [_vi("c", [], TensorProto.BOOL)], [_vi("a", None), _vi("b", None)])
    assert "num_outputs=3" in native_crash_hazard(helper.make_model(outer))
    for name in fc.SEED_NAMES:
        assert native_crash_hazard(fc.seed_model(name)) is None


_ONNX_CHILD = """
import sys, onnx
m = onnx.ModelProto()
m.ParseFromString(sys.stdin.buffer.read())
onnx.checker.check_model(m, full_check=True)
print("checked")
"""


def test_negative_dims_become_symbolic_before_onnx_checks_them():
    # PaddlePaddle's batch of -1 then a Slice over the batch axis: onnx 1.23's full check aborts (SIGABRT)
    rows = [
        numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("s", 0), ("e", 2**62), ("a", 0))
    ]
    nodes = [
        helper.make_node("Slice", ["x", "s", "e", "a"], ["r"], name="rows"),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [_vi("x", [-1, 6])], [_vi("y", [-1, 6])], rows)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    assert symbolic_negative_dims(model) == 2
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [
        "batch",
        6,
    ]
    assert symbolic_negative_dims(model) == 0
    out = subprocess.run(
        [sys.executable, "-c", _ONNX_CHILD], input=model.SerializeToString(), capture_output=True, timeout=300
    )
    assert out.returncode == 0 and out.stdout.strip() == b"checked", out.stderr.decode(errors="replace")[
        -800:
    ]
