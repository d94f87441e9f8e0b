"""LRP through ONNX ``If`` (docs/methods.md §2.5.6): the branch each ``If`` takes for a chunk is inlined
into the LRP graph, so its nodes get rules like any other. The file is written the way the torch exporter
writes a scripted shape test (``if h.shape[0] == 1``: Shape, Gather, Equal, If, as in Silero's VAD); the
reference is LRP of the If-free exports of the same weights that always take one branch or the other."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import onnx_explain as oe


class Net(nn.Module):
    """``which`` 0: a shape test picks fc1 for one row, fc2 for more; 1 and 2: always that layer."""

    def __init__(self, which: int = 0):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(3, 4, 3, padding=1)
        self.fc1 = nn.Linear(32, 5)
        self.fc2 = nn.Linear(32, 5)
        self.which = which

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(1)
        if self.which == 1:
            return self.fc1(h)
        if self.which == 2:
            return self.fc2(h)
        if h.shape[0] == 1:
            return self.fc1(h)
        return self.fc2(h)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("if")
    x = torch.randn(2, 3, 8)
    out = {}
    for which in (0, 1, 2):
        path = tmp / f"net{which}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = torch.jit.script(Net(which)) if which == 0 else Net(which)
            torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                              dynamic_axes={"x": {0: "b"}})  # fmt: skip
        out[which] = oe.load(path)
    assert "If" in [n.op_type for n in out[0].proto.graph.node]
    return out


@pytest.mark.parametrize("mode", ["auto", "rules"])
@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_gamma_box"])
def test_lrp_takes_the_branch_each_chunk_takes(files, mode, composite):
    x = np.random.default_rng(0).standard_normal((3, 3, 8)).astype(np.float32)
    opts = {"composite": composite, "mode": mode, "target": [1, 4, 2]}
    if composite == "epsilon_gamma_box":
        opts.update(low=-3.0, high=3.0)
    many = oe.explain(files[0], x, "lrp", batch_size=3, **opts)  # three rows: fc2
    np.testing.assert_allclose(many.attribution, oe.explain(files[2], x, "lrp", **opts).attribution,
                               rtol=1e-5, atol=1e-7)  # fmt: skip
    ones = oe.explain(files[0], x, "lrp", batch_size=1, **opts)  # chunks of one row: fc1
    np.testing.assert_allclose(ones.attribution, oe.explain(files[1], x, "lrp", batch_size=1, **opts).attribution,
                               rtol=1e-5, atol=1e-7)  # fmt: skip
    mixed = oe.explain(files[0], x, "lrp", batch_size=2, **opts)  # a chunk of two (fc2), then one (fc1)
    np.testing.assert_allclose(mixed.attribution[:2], many.attribution[:2], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(mixed.attribution[2:], ones.attribution[2:], rtol=1e-5, atol=1e-7)
    assert not np.allclose(ones.attribution, many.attribution)  # the branches really differ


def test_conditions_across_different_branches_are_refused_in_one_line(files):
    x = np.random.default_rng(0).standard_normal((3, 3, 8)).astype(np.float32)
    with pytest.raises(oe.OptionError, match="different branches"):
        oe.explain(files[0], x, "lrp", batch_size=2, relevance_at="/Relu")
    e = oe.explain(files[0], x, "lrp", batch_size=3, relevance_at="/Relu")  # one graph: fine
    assert e.extras["layer_relevance_map"].shape == (3, 4, 8)
