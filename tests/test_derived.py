"""The one cache of derived objects (``onnx_explain.derived``): kept on its owner, gone with it, and never
carried into a copy (LRP's canonizer deep-copies the converted model: it must not copy the LRP graphs
cached on it, nor reuse them for a copy whose weights may change)."""

from __future__ import annotations

import copy
import gc
import pickle
import weakref

import numpy as np
import torch

import onnx_explain as oe
from onnx_explain.data import bundled
from onnx_explain.derived import derived


def test_kept_on_the_owner_and_empty_in_its_copies():
    layer = torch.nn.Linear(3, 2)
    derived(layer)["k"] = 1
    assert derived(layer) == {"k": 1}
    assert derived(copy.deepcopy(layer)) == {} and derived(pickle.loads(pickle.dumps(layer))) == {}
    assert "k" not in layer.state_dict() and not list(layer.named_buffers())


def test_lrp_graphs_live_on_the_converted_model_and_die_with_it():
    m = oe.load(bundled("digits.onnx"))
    x = np.load(bundled("digits.npy"))[:2]
    e1 = oe.explain(m, x, "lrp", target=3)
    module = m.torch_module()
    graphs = [k for k in derived(module) if k[0] == "lrp_graph"]
    assert len(graphs) == 1
    built = derived(module)[graphs[0]][1]  # (version, what build_lrp_graph built)
    held = weakref.ref(built[0] if isinstance(built, tuple) else built)
    del built
    e2 = oe.explain(m, x, "lrp", target=3)  # the same graph again, not a second one
    assert [k for k in derived(module) if k[0] == "lrp_graph"] == graphs
    np.testing.assert_array_equal(e1.attribution, e2.attribution)
    assert derived(copy.deepcopy(module)) == {}
    del m, module, e1, e2
    gc.collect()
    assert held() is None
