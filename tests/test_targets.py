"""Targets beyond (B, C) classifiers (docs/methods.md §1.6): a tagger's element, a sum over positions, a
callable, and the refusal of a class-only target on an output that is not one score per class.

Oracle: autograd of the same scalar on the torch source.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_gradients_match, export

import onnx_explain as oe
from onnx_explain.errors import InputDataError, OnnxExplainError

L, D, C = 6, 4, 3


class _Tagger(torch.nn.Module):
    """(B, L, D) features -> (B, L, C) per-position scores, positions mixed by a bidirectional GRU."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = torch.nn.GRU(D, 5, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(10, C)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    src = _Tagger().eval()
    x = np.random.default_rng(0).standard_normal((3, L, D)).astype(np.float32)
    path = export(src, torch.from_numpy(x), tmp_path_factory.mktemp("tag") / "tagger.onnx", "legacy")
    return src, oe.load(path), x


def _autograd(src, x, scalar):
    xt = torch.from_numpy(x).requires_grad_(True)
    scalar(src(xt)).sum().backward()
    return xt.grad.numpy()


def test_position_and_class_equals_autograd_of_that_element(tagger):
    src, model, x = tagger
    r = oe.explain(model, x, "gradient", target=(2, 1), output="output")
    assert_gradients_match(r.attribution, _autograd(src, x, lambda o: o[:, 2, 1]))
    np.testing.assert_array_equal(r.target, [[2, 1]] * 3)
    assert r.extras["target_kind"] == "element"
    with torch.no_grad():
        np.testing.assert_allclose(r.score, src(torch.from_numpy(x))[:, 2, 1].numpy(), rtol=1e-4, atol=1e-6)
    # the command line's spelling, negative indices, and 'predicted' at a position
    same = oe.explain(model, x, "gradient", target="-4,1", output="output")
    np.testing.assert_allclose(same.attribution, r.attribution)
    pred = oe.explain(model, x, "gradient", target=(4, "predicted"), output="output")
    with torch.no_grad():
        best = src(torch.from_numpy(x))[:, 4].argmax(1).numpy()
    np.testing.assert_array_equal(pred.target[:, 1], best)
    want = _autograd(src, x, lambda o: o[torch.arange(3), 4, torch.as_tensor(best)])
    assert_gradients_match(pred.attribution, want)


def test_all_positions_sum_and_integrated_gradients_complete(tagger):
    src, model, x = tagger
    r = oe.explain(model, x, "gradient", target=("all", 2), output="output")
    assert_gradients_match(r.attribution, _autograd(src, x, lambda o: o[:, :, 2].sum(1)))
    np.testing.assert_array_equal(r.target, [[-1, 2]] * 3)
    ig = oe.explain(model, x, "integrated_gradients", target=("all", 0), output="output", n_steps=64)
    with torch.no_grad():
        f = src(torch.from_numpy(x))[:, :, 0].sum(1) - src(torch.zeros(3, L, D))[:, :, 0].sum(1)
    np.testing.assert_allclose(ig.attribution.reshape(3, -1).sum(1), f.numpy(), rtol=1e-3, atol=1e-4)


def test_a_callable_target_equals_autograd_of_the_function(tagger):
    src, model, x = tagger

    def margin(out):  # class 0 minus class 1, averaged over positions
        return (out[:, :, 0] - out[:, :, 1]).mean(1)

    r = oe.explain(model, x, "smoothgrad", target=margin, output="output", n_samples=1, sigma=0.0)
    assert_gradients_match(r.attribution, _autograd(src, x, margin))
    with torch.no_grad():
        np.testing.assert_allclose(r.score, margin(src(torch.from_numpy(x))).numpy(), rtol=1e-4, atol=1e-6)


def test_a_class_alone_is_refused_where_the_output_has_several_axes(tagger):
    _, model, x = tagger
    for target in (None, "predicted", 1, "top:2", [0, 1, 2]):
        with pytest.raises(InputDataError, match=r"not one score per class.*target=\(position, class\)"):
            oe.explain(model, x, "gradient", target=target, output="output")
    with pytest.raises(InputDataError, match="needs 2"):
        oe.explain(model, x, "gradient", target=(1, 2, 0), output="output")
    with pytest.raises(InputDataError, match="part 0 must be an index below 6"):
        oe.explain(model, x, "gradient", target=(6, 0), output="output")
    with pytest.raises(InputDataError, match="one score per row"):
        oe.explain(model, x, "gradient", target=lambda o: o.sum(), output="output")
    with pytest.raises(OnnxExplainError, match="needs one output element"):
        oe.explain(model, x, "lrp", target=("all", 0), output="output", fallback="gradient")


def test_the_command_line_explains_an_element(tagger, tmp_path):
    from click.testing import CliRunner

    from onnx_explain.cli import main

    _, model, x = tagger
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out"
    args = ["explain", str(model.path), str(tmp_path / "x.npy"), "-m", "gradient", "-t", "2,predicted",
            "--output", "output", "-o", str(out)]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    want = oe.explain(model, x, "gradient", target=(2, "predicted"), output="output")
    for b in range(3):
        with np.load(out / f"x_{b:03d}.npz") as z:
            np.testing.assert_allclose(z["attribution"], want.attribution[b], rtol=1e-6)
            np.testing.assert_array_equal(z["target"], want.target[b])
    res = CliRunner().invoke(main, [*args[:5], "-t", "1", *args[7:]])
    assert res.exit_code != 0 and "not one score per class" in res.output
