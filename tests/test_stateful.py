"""Inputs as stateful real models take them (issue 22 §2): a recurrent state whose batch is on axis 1
(``[2, B, H]``, as silero-vad exports it), a scalar sample rate (shape ``()``), read from an ``.npz`` or
given with ``--fixed``; the batch axis read from the file's dim names or declared; a state of batch 1
shared by every sample and by the rows of a black-box method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import export  # noqa: F401 - the shared exporter helpers live there

import onnx_explain as oe
from onnx_explain.cli import main

H = 8


class VadLike(torch.nn.Module):
    """audio [B, T] + state [2, B, H] + sr [] -> probability [B, 1] (and the next state)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = torch.nn.Linear(16, H)
        self.mix = torch.nn.Linear(2 * H, H)
        self.out = torch.nn.Linear(H, 1)

    def forward(self, audio, state, sr):
        scale = sr.to(audio.dtype) / 16000.0
        h = torch.tanh(self.enc(audio * scale))
        s = torch.tanh(self.mix(torch.cat([h, state[0] + state[1]], dim=1)))
        return torch.sigmoid(self.out(s)), torch.stack([s, h])


def _export(tmp_path, named: bool):
    net = VadLike().eval()
    args = (torch.randn(2, 16), torch.randn(2, 2, H), torch.tensor(16000))
    path = tmp_path / ("vad.onnx" if named else "vad_unnamed.onnx")
    dyn = {"audio": {0: "batch"}, "state": {1: "batch"}, "output": {0: "batch"}} if named else {
        "audio": {0: "?"}, "state": {1: "??"}, "output": {0: "?"}}  # fmt: skip
    with torch.no_grad():
        torch.onnx.export(net, args, str(path), dynamo=False, opset_version=17, input_names=["audio", "state", "sr"],
                          output_names=["output", "stateN"], dynamic_axes=dyn)  # fmt: skip
    return net, path


def _autograd(net, audio, state, sr):
    a = torch.from_numpy(audio).requires_grad_(True)
    net(a, torch.from_numpy(state), torch.tensor(sr))[0].sum().backward()
    return (a.grad * a).detach().numpy()


def test_state_on_axis_1_and_a_scalar_from_the_file_names(tmp_path):
    net, path = _export(tmp_path, named=True)
    m = oe.load(path, input="audio", output="output")
    assert m.signature.batch_axes == {"state": 1, "sr": None}
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((3, 16)).astype(np.float32)
    state = rng.standard_normal((2, 3, H)).astype(np.float32)
    sr = np.array(8000, np.int64)
    e = oe.explain(m, {"audio": audio, "state": state, "sr": sr}, "gradient_x_input", output="output")
    np.testing.assert_allclose(e.attribution, _autograd(net, audio, state, 8000), rtol=1e-4, atol=1e-6)
    # each sample with its own state: sample 1 alone gives the same
    one = oe.explain(
        m, {"audio": audio[1:2], "state": state[:, 1:2], "sr": sr}, "gradient_x_input", output="output"
    )
    np.testing.assert_allclose(one.attribution[0], e.attribution[1], rtol=1e-5, atol=1e-7)
    # a state of batch 1 is shared by every sample, also by the rows of a black-box method
    shared = state[:, :1]
    occ = oe.explain(
        m, {"audio": audio, "state": shared, "sr": sr}, "occlusion", window=(4,), output="output"
    )
    full = np.broadcast_to(shared, (2, 3, H)).copy()
    want = oe.explain(m, {"audio": audio, "state": full, "sr": sr}, "occlusion", window=(4,), output="output")
    np.testing.assert_allclose(occ.attribution, want.attribution, rtol=1e-6)


def test_batch_axis_declared_and_the_command_line(tmp_path):
    net, path = _export(tmp_path, named=False)
    rng = np.random.default_rng(1)
    audio = rng.standard_normal((2, 16)).astype(np.float32)
    state = rng.standard_normal((2, 2, H)).astype(np.float32)
    # unnamed dims: state [2, ?, 8] has a fixed first dim, so its batch is its one free dim
    assert oe.load(path, input="audio", output="output").signature.batch_axes == {"state": 1, "sr": None}
    with pytest.raises(
        oe.InputDataError, match=r"'state' has 3 on its batch axis 1 .*--batch-axis state=AXIS"
    ):
        oe.load(path, input="audio", output="output").predict(
            {"audio": audio, "state": np.zeros((2, 3, H), np.float32), "sr": np.array(16000)}
        )
    m = oe.load(path, input="audio", output="output", batch_axes={"state": 1})
    e = oe.explain(
        m, {"audio": audio, "state": state, "sr": np.array(16000)}, "gradient_x_input", output="output"
    )
    np.testing.assert_allclose(e.attribution, _autograd(net, audio, state, 16000), rtol=1e-4, atol=1e-6)

    npz = tmp_path / "chunk.npz"
    np.savez(npz, audio=audio, state=state, sr=np.array(16000, np.int64))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["explain", str(path), str(npz), "--batch-axis", "state=1", "--output-name", "output",
                                  "-m", "gradient_x_input", "--output", "output", "--out", str(out), "--heatmaps", "none"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "explaining 'audio'" in r.output  # several inputs: the first, said so
    for i in range(2):
        with np.load(out / f"chunk_{i:03d}.npz") as z:
            np.testing.assert_allclose(z["attribution"], e.attribution[i], rtol=1e-5, atol=1e-7)
            np.testing.assert_array_equal(z["input_state"], state[:, i])
    # the sample rate from the command line instead of the file
    np.savez(npz, audio=audio, state=state)
    r = CliRunner().invoke(main, ["explain", str(path), str(npz), "--batch-axis", "state=1", "--output-name", "output",
                                  "--fixed", "sr=16000", "-m", "gradient_x_input", "--output", "output", "--out",
                                  str(tmp_path / "out2"), "--heatmaps", "none"])  # fmt: skip
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "out2" / "chunk_001.npz") as z:
        np.testing.assert_allclose(z["attribution"], e.attribution[1], rtol=1e-5, atol=1e-7)
    r = CliRunner().invoke(
        main, ["explain", str(path), str(npz), "--batch-axis", "state=x", "--out", str(out)]
    )
    assert r.exit_code == 2 and "--batch-axis state: 'x' is not an axis" in r.output


def test_inputs_the_explained_output_does_not_read_are_not_asked_for(tmp_path):
    from conftest import make_model, save, vinfo
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Tanh", ["h"], ["h_out"])]
    model = make_model(nodes, [vinfo("x", ["N", 4]), vinfo("h", [1, "N", 3])],
                       [vinfo("y", ["N", 2]), vinfo("h_out", [1, "N", 3])], [w], opset=17)  # fmt: skip
    m = oe.load(save(model, tmp_path / "unused.onnx"), input="x", output="y")
    assert m.signature.unused == {"h"} and m.companions == []
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(m.predict(x), x @ np.arange(8, dtype=np.float32).reshape(4, 2), rtol=1e-6)
    e = oe.explain(m, x, "gradient", target=1)
    np.testing.assert_array_equal(e.attribution, np.broadcast_to(np.arange(8).reshape(4, 2)[:, 1], x.shape))
    # a second output that reads h asks for it
    with pytest.raises(oe.InputDataError, match="input 'h' needs a value per sample"):
        oe.load(tmp_path / "unused.onnx", input="x", output="h_out").predict(x)


def test_ir3_file_whose_initializers_are_not_inputs_loads(tmp_path):
    from conftest import make_model, vinfo
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.full((3, 2), 2.0, np.float32), "W")
    model = make_model([helper.make_node("Mul", ["X", "W"], ["Y"])], [vinfo("X", [3, 2])], [vinfo("Y", [3, 2])], [w],
                       opset=7)  # fmt: skip
    model.ir_version = 3  # as onnxruntime's own datasets/mul_1.onnx: W is not listed among the inputs
    path = tmp_path / "mul_ir3.onnx"
    path.write_bytes(model.SerializeToString())
    m = oe.load(path)
    assert any("read as IR 4" in n for n in m.notes)
    np.testing.assert_array_equal(m.predict(np.ones((3, 2), np.float32)), np.full((3, 2), 2.0))


def test_evaluate_reads_back_a_state_on_axis_1(tmp_path):
    net, path = _export(tmp_path, named=True)
    rng = np.random.default_rng(3)
    npz = tmp_path / "chunk.npz"
    np.savez(npz, audio=rng.standard_normal((3, 16)).astype(np.float32),
             state=rng.standard_normal((2, 3, H)).astype(np.float32), sr=np.array(16000, np.int64))  # fmt: skip
    out = tmp_path / "att"
    r = CliRunner().invoke(main, ["explain", str(path), str(npz), "--output-name", "output", "-m", "gradient_x_input",
                                  "--output", "output", "--out", str(out), "--heatmaps", "none"])  # fmt: skip
    assert r.exit_code == 0, r.output
    report = tmp_path / "eval.json"
    r = CliRunner().invoke(main, ["evaluate", str(path), "-a", str(out), "--output-name", "output", "--metric",
                                  "deletion", "--out", str(report)])  # fmt: skip
    assert r.exit_code == 0, r.output
    import json

    d = json.loads(report.read_text())
    m = oe.load(path, input="audio", output="output")
    z = dict(np.load(npz))
    e = oe.explain(m, z, "gradient_x_input", output="output")
    want = oe.evaluate(m, z, e.attribution, "deletion")
    got = d["metrics"]["deletion"] if "metrics" in d else d["deletion"]
    assert np.isclose(got["mean"], np.mean(want["scores"]), rtol=1e-5), (got, want["scores"])


def test_a_symbolic_batch_the_graph_does_not_honour_runs_one_row_at_a_time(tmp_path):
    # as khmersm's dynamo export: the input's batch is symbolic, a Reshape bakes batch 1
    from conftest import make_model, save, vinfo
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32), "w")
    emb = numpy_helper.from_array(np.random.default_rng(1).standard_normal((10, 2)).astype(np.float32), "emb")
    shape = numpy_helper.from_array(np.array([1, 6], np.int64), "shape")
    floats = make_model([helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])],
                        [vinfo("x", ["N", 6])], [vinfo("y", ["N", 3])], [w, shape], opset=17)  # fmt: skip
    ids = make_model([helper.make_node("Gather", ["emb", "t"], ["e"]), helper.make_node("Reshape", ["e", "shape"], ["r"]),
                      helper.make_node("MatMul", ["r", "w"], ["y"])],
                     [vinfo("t", ["N", 3], TensorProto.INT64)], [vinfo("y", ["N", 3])], [w, emb, shape], opset=17)  # fmt: skip
    rng = np.random.default_rng(2)
    for name, model, x in (("floats", floats, rng.standard_normal((3, 6)).astype(np.float32)),
                           ("ids", ids, rng.integers(0, 10, (3, 3)).astype(np.int64))):  # fmt: skip
        m = oe.load(save(model, tmp_path / f"{name}.onnx"))
        rows = np.concatenate([m.predict(x[i : i + 1]) for i in range(3)])
        np.testing.assert_allclose(m.predict(x), rows, rtol=1e-6)
        assert m.batch_mode == "chunked" and "only runs one row at a time" in m.runtime.notes[0]
        e = oe.explain(m, x, "gradient_x_input", target=1)
        for i in range(3):
            one = oe.explain(oe.load(tmp_path / f"{name}.onnx"), x[i : i + 1], "gradient_x_input", target=1)
            np.testing.assert_allclose(e.attribution[i], one.attribution[0], rtol=1e-5, atol=1e-7)


def test_audit_takes_per_item_states_from_an_npz_and_scores_them_as_the_api_does(tmp_path):
    import json

    net, path = _export(tmp_path, named=True)
    rng = np.random.default_rng(4)
    npz = tmp_path / "chunk.npz"
    z = {"audio": rng.standard_normal((3, 16)).astype(np.float32),
         "state": rng.standard_normal((2, 3, H)).astype(np.float32), "sr": np.array(16000, np.int64)}  # fmt: skip
    np.savez(npz, **z)
    r = CliRunner().invoke(main, ["audit", str(path), str(npz), "--output-name", "output", "-m", "gradient",
                                  "--metric", "deletion", "--out", str(tmp_path / "a")])  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["conversion"]["ok"] and report["conversion"]["parity"]["probe"] == "given"
    assert report["lrp_coverage"]["ok"] and "gradient" in report["sanity"]
    m = oe.load(path, input="audio", output="output")
    e = oe.explain(m, z, "gradient")
    want = oe.evaluate(m, z, e.attribution, "deletion")
    got = report["scores"]["deletion"]["gradient"]
    assert np.isclose(got["mean"], np.mean(want["scores"]), rtol=1e-5), (got, want["scores"])
    # each item's own state matters: with the states swapped the scores change
    swapped = {**z, "state": z["state"][:, ::-1].copy()}
    other = oe.evaluate(m, swapped, oe.explain(m, swapped, "gradient").attribution, "deletion")
    assert not np.allclose(other["scores"], want["scores"])


def test_sanity_check_with_per_sample_states_is_each_sample_checked_alone(tmp_path):
    net, path = _export(tmp_path, named=True)
    rng = np.random.default_rng(5)
    z = {"audio": rng.standard_normal((3, 16)).astype(np.float32),
         "state": rng.standard_normal((2, 3, H)).astype(np.float32), "sr": np.array(16000, np.int64)}  # fmt: skip
    m = oe.load(path, input="audio", output="output")
    for variant in ("mprt", "efficient"):  # (smooth draws its noise for the whole batch at once)
        whole = oe.sanity_check(m, z, "gradient_x_input", variant=variant)
        for i in range(3):
            one = {"audio": z["audio"][i : i + 1], "state": z["state"][:, i : i + 1], "sr": z["sr"]}
            alone = oe.sanity_check(m, one, "gradient_x_input", variant=variant)
            np.testing.assert_allclose(whole["similarity"][:, i], alone["similarity"][:, 0], atol=1e-6)
            np.testing.assert_allclose(whole["original"][i], alone["original"][0], rtol=1e-5, atol=1e-7)


def test_audit_takes_other_inputs_fixed(tmp_path):
    net, path = _export(tmp_path, named=True)
    rng = np.random.default_rng(4)
    audio = rng.standard_normal((3, 16)).astype(np.float32)
    np.save(tmp_path / "audio.npy", audio)
    np.save(tmp_path / "state.npy", np.zeros((2, 1, H), np.float32))
    r = CliRunner().invoke(main, ["audit", str(path), str(tmp_path / "audio.npy"), "--input-name", "audio",
                                  "--output-name", "output", "--fixed", f"state={tmp_path / 'state.npy'}",
                                  "--fixed", "sr=16000", "--out", str(tmp_path / "b")])  # fmt: skip
    assert r.exit_code == 0, r.output
    import json

    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["conversion"]["ok"] and report["conversion"]["parity"]["probe"] == "given"
