"""Concept examples (relevance and activation maximisation, Achtibat et al. 2023) equal zennit-crp's
``FeatureVisualization`` analysis on the torch source: its ``ChannelConcept.reference_sampling`` is written
out here (zennit-crp pins ``zennit <= 0.4.6``, see tests/test_crp.py), applied to Zennit's EpsilonPlus
relevance at the layer's output (the gradient Zennit's modified backward leaves there, as CondAttribution
records it) or to the layer's activations; the examples' conditional heatmaps equal Zennit's with
CondAttribution's channel mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_crp import LAYER_NODE, LAYER_TENSOR, VGGish, _zennit

import onnx_explain as oe
from onnx_explain.concepts import channel_scores, concept_examples

zennit = pytest.importorskip("zennit")


def _reference_sampling(rel: torch.Tensor, max_target: str, abs_norm: bool):
    """zennit-crp 0.6 ``ChannelConcept.reference_sampling``, as written there (torch)."""
    rel_l = rel.view(*rel.shape[:2], -1)
    rf_neuron = torch.argmax(rel_l, dim=-1)
    if max_target == "sum":
        rel_l = torch.sum(rel_l, dim=-1)
    else:
        rel_l = torch.gather(rel_l, 2, rf_neuron.unsqueeze(2)).squeeze(2)
    if abs_norm:
        rel_l = rel_l / (torch.abs(rel_l).sum(-1).view(-1, 1) + 1e-10)
    d_ch_sorted = torch.argsort(rel_l, dim=0, descending=True)
    return d_ch_sorted, torch.gather(rel_l, 0, d_ch_sorted), torch.gather(rf_neuron, 0, d_ch_sorted)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    from conftest import export

    torch.manual_seed(0)
    net = VGGish().eval()
    x = torch.randn(10, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    model = oe.load(export(net, x, tmp_path_factory.mktemp("concepts") / "v.onnx", "legacy"))
    return net, x, model


@pytest.mark.parametrize(("mode", "max_target", "abs_norm"),
                         [("relevance", "sum", True), ("relevance", "max", False), ("activation", "max", True)])  # fmt: skip
def test_examples_equal_zennit_crp_reference_sampling(searched, mode, max_target, abs_norm):
    net, x, model = searched
    r = concept_examples(model, x.numpy(), LAYER_NODE, mode=mode, top=4, max_target=max_target,
                         abs_norm=abs_norm, heatmaps=False, batch_size=4)  # fmt: skip
    targets = r["target"]
    np.testing.assert_array_equal(targets, net(x).argmax(1).numpy())  # the predicted class of each input
    if mode == "relevance":
        _, ref = _zennit(net, x, targets, at=net.features[3])
    else:
        with torch.no_grad():
            ref = net.features[:4](x)
    d, rel, rf = _reference_sampling(ref.double(), max_target, abs_norm)
    np.testing.assert_array_equal(r["index"], d[:4].numpy())
    np.testing.assert_allclose(r["score"], rel[:4].numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(r["location"], rf[:4].numpy())
    assert r["scores"].shape == (10, 12) and r["channels"].tolist() == list(range(12))


def test_heatmaps_are_the_examples_conditional_relevance(searched):
    net, x, model = searched
    r = concept_examples(model, x.numpy(), LAYER_TENSOR, channels=[2, 9], top=3, batch_size=4)
    assert r["heatmap"].shape == (3, 2, 3, 16, 16) and r["layer"]["tensor"] == LAYER_TENSOR
    for j, c in enumerate((2, 9)):
        items = r["index"][:, j]
        want, _ = _zennit(net, x[items], r["target"][items], layer=net.features[4], channels=[c])
        np.testing.assert_allclose(r["heatmap"][:, j], want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    # the chosen channels' columns are the full table's
    full = concept_examples(model, x.numpy(), LAYER_TENSOR, top=3, heatmaps=False, batch_size=7)
    np.testing.assert_array_equal(r["index"], full["index"][:, [2, 9]])
    np.testing.assert_allclose(
        r["scores"], full["scores"], rtol=1e-6, atol=1e-9
    )  # batch size changes nothing


def test_channel_scores_and_bad_options():
    m = np.zeros((2, 3, 2, 2))
    m[0, 1, 1, 0], m[0, 2] = 3.0, -1.0
    s, loc = channel_scores(m, "sum", abs_norm=True)
    np.testing.assert_allclose(s[0], [0, 3 / 7, -4 / 7], rtol=1e-9)
    assert loc[0, 1] == 2 and np.all(s[1] == 0)
    with pytest.raises(oe.OptionError, match="max_target"):
        channel_scores(m, "mean")


def test_bad_requests_are_one_line_errors(searched):
    _, x, model = searched
    with pytest.raises(oe.OptionError, match="mode"):
        concept_examples(model, x.numpy(), LAYER_NODE, mode="gradient")
    with pytest.raises(oe.OptionError, match="12 channels"):
        concept_examples(model, x.numpy(), LAYER_NODE, channels=[12], heatmaps=False)
    with pytest.raises(oe.OptionError, match="not a spatial feature map"):
        concept_examples(model, x.numpy(), "nope")


def test_command_line_writes_the_examples_of_a_folder(tmp_path):
    """`onnx-explain concepts` on the bundled digits folder: concepts.json holds what concept_examples
    finds on the same inputs (files the model cannot take are skipped and listed), heatmaps.npz its
    heatmaps; a bad layer is one line, exit 2, nothing written."""
    import json
    from pathlib import Path

    from click.testing import CliRunner

    from onnx_explain.cli import main

    root = Path(__file__).parent.parent / "models"
    pngs = sorted((root / "samples").glob("digit_*.png"))
    layer = "/features/features.6/Conv"
    args = ["concepts", str(root / "digits.onnx"), *map(str, pngs), str(root / "samples" / "shapes.npy"),
            "--layer", layer, "--channel", "3", "--channel", "7", "--top", "3"]  # fmt: skip
    r = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    out = json.loads((tmp_path / "c" / "concepts.json").read_text())
    assert out["items"] == 8 and len(out["skipped"]) == 8 and set(out["channels"]) == {"3", "7"}
    from onnx_explain.app.io import Preprocess, read_items

    model = oe.load(root / "digits.onnx")
    items = read_items(
        [str(p) for p in pngs], Preprocess.from_model(model.input, None), model.input, ["image"]
    )
    x = np.stack([np.asarray(it.x) for it in items])
    want = concept_examples(model, x, layer, [3, 7], top=3)
    for j, c in enumerate(("3", "7")):
        assert [e["item"] for e in out["channels"][c]] == [pngs[i].stem for i in want["index"][:, j]]
        np.testing.assert_allclose([e["score"] for e in out["channels"][c]], want["score"][:, j], rtol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "c" / "heatmaps.npz")["heatmap"], want["heatmap"], rtol=1e-5,
                               atol=1e-7)  # fmt: skip
    assert (tmp_path / "c" / "channel_7.png").read_bytes()[:4] == b"\x89PNG"
    r = CliRunner().invoke(main, [*args[:-6], "--layer", "nope", "-o", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "not a spatial feature map" in r.output and not (tmp_path / "bad").exists()
