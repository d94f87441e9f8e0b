"""LRP on onnxruntime's fused transformer nodes: a BERT optimised by ``onnxruntime.transformers.optimizer``
(``EmbedLayerNormalization``, ``Attention`` or ``MultiHeadAttention``, ``SkipLayerNormalization``,
``BiasGelu``) gets the relevance of its unfused export, AttnLRP and CP-LRP alike, and both equal the float64
hand-patched reference of ``test_lrp_tokens``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import onnx_explain as oe

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime.transformers.optimizer")

from test_lrp_tokens import IDS, MASK, _cosine, _tiny_bert, _token_relevance  # noqa: E402

INPUTS = {"input_ids": IDS, "attention_mask": MASK, "token_type_ids": np.zeros_like(IDS)}


def _optimise(path, out, mha: bool):
    import warnings

    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.use_multi_head_attention = mha
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optimize_model(
            str(path), model_type="bert", num_heads=2, hidden_size=16, optimization_options=options
        )
    opt.save_model_to_file(str(out))
    return out


@pytest.fixture(scope="module")
def berts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fused")
    bert, path = _tiny_bert("cls", folder / "bert.onnx", eager=True)
    return bert, path, folder


@pytest.mark.parametrize("fused", ["Attention", "MultiHeadAttention"])
def test_fused_bert_gets_the_relevance_of_the_unfused_one(fused, berts):
    import onnx

    bert, path, folder = berts
    opt = _optimise(path, folder / f"{fused}.onnx", mha=fused == "MultiHeadAttention")
    ops = {n.op_type for n in onnx.load(opt).graph.node}
    assert {fused, "EmbedLayerNormalization", "SkipLayerNormalization", "BiasGelu"} <= ops
    assert not ops & {"Softmax", "LayerNormalization"}  # nothing left unfused
    plain, m = oe.load(path), oe.load(opt)
    e = oe.explain(plain, INPUTS, "lrp")
    f = oe.explain(m, INPUTS, "lrp", target=e.target)
    assert f.extras["composite"] == "attnlrp" and not f.extras["fallback_nodes"]
    rules = set(f.extras["rules"].values())
    assert {f"{fused}: attention", "EmbedLayerNormalization: layer_norm", "BiasGelu: bias_identity"} <= rules
    np.testing.assert_allclose(f.score, e.score, rtol=1e-4, atol=1e-5)
    assert _cosine(f.attribution, e.attribution) >= 0.999  # measured 0.9999999992
    assert (f.attribution[MASK == 0] == 0).all()
    t = torch.as_tensor(e.target)
    ref, _ = _token_relevance(bert, IDS, MASK, lambda out: out.gather(1, t[:, None]).squeeze(1))
    assert _cosine(f.attribution, ref) >= 0.999
    # CP-LRP: the fused node holds the attention probabilities constant as the unfused Softmax does
    cp_plain = oe.explain(plain, INPUTS, "lrp", composite="cp_lrp", target=e.target)
    cp = oe.explain(m, INPUTS, "lrp", composite="cp_lrp", target=e.target)
    assert f"{fused}: attention_cp" in cp.extras["rules"].values()
    assert _cosine(cp.attribution, cp_plain.attribution) >= 0.999
    assert _cosine(cp.attribution, f.attribution) < 0.999  # the two composites differ here


def test_quantize_dynamic_of_the_fused_bert_gets_its_float_relevance(berts):
    # QAttention, QEmbedLayerNormalization, DynamicQuantizeLinear → MatMulInteger: the quantized twin's AttnLRP
    # and CP-LRP are the float fused model's up to quantization (cos ≥ 0.9; measured 0.989 and 0.990)
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _, path, folder = berts
    opt = _optimise(path, folder / "fused.onnx", mha=False)
    q = folder / "fused_q.onnx"
    quantize_dynamic(str(opt), str(q), weight_type=QuantType.QInt8, reduce_range=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fmt: skip
    assert {"QAttention", "QEmbedLayerNormalization", "MatMulInteger"} <= {
        n.op_type for n in onnx.load(q).graph.node
    }
    f, m = oe.load(opt), oe.load(q)
    for composite in ("attnlrp", "cp_lrp"):
        ef = oe.explain(f, INPUTS, "lrp", composite=composite)
        eq = oe.explain(m, INPUTS, "lrp", composite=composite, target=ef.target)
        rule = "attention" if composite == "attnlrp" else "attention_cp"
        assert f"QAttention: {rule}" in eq.extras["rules"].values() and not eq.extras["fallback_nodes"]
        assert _cosine(eq.attribution, ef.attribution) >= 0.9
        assert (eq.attribution[MASK == 0] == 0).all()
