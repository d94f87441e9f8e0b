"""Token metrics (deletion, insertion, rank consistency) on bag-of-tokens ONNX models built here: exact
curves of a linear model, parity with a plain per-sample loop on onnxruntime, special tokens and padding
never touched, a text alone = in a padded batch."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_explain as oe
from onnx_explain.errors import OptionError
from onnx_explain.metrics.base import Predictor
from onnx_explain.metrics.text import FRACTIONS, special_token_ids, token_deletion, token_insertion

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = (PAD, UNK, CLS, SEP, MASK)
V, C, D = 20, 3, 6


def _bag_model(path, emb: np.ndarray, head: np.ndarray | None = None):
    """``logits = Σ_l mask_l · E[id_l]`` (linear, C = E's width), or ``tanh(Σ_l mask_l E[id_l]) @ head``."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", C])
    inits = [numpy_helper.from_array(emb.astype(np.float32), "E"), numpy_helper.from_array(np.array([2], np.int64), "ax2"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1")]  # fmt: skip
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["g"], name="embed"),
        helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Unsqueeze", ["mf", "ax2"], ["m3"], name="unsq"),
        helper.make_node("Mul", ["g", "m3"], ["gm"], name="mul"),
        helper.make_node("ReduceSum", ["gm", "ax1"], ["s" if head is not None else "logits"], keepdims=0, name="sum"),
    ]  # fmt: skip
    if head is not None:
        inits.append(numpy_helper.from_array(head.astype(np.float32), "H"))
        nodes += [helper.make_node("Tanh", ["s"], ["t"], name="tanh"), helper.make_node("MatMul", ["t", "H"], ["logits"], name="head")]  # fmt: skip
    graph = helper.make_graph(nodes, "bag", [ids, mask], [out], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(path))
    return path


def _texts(rng, B=5, L=9):
    """Token ids ``[CLS] w... [SEP] [PAD]...`` of varied lengths (one text of 0 words), some words being
    [UNK] or [MASK] already, and the attention mask."""
    ids = np.zeros((B, L), np.int64)
    mask = np.zeros((B, L), np.int64)
    for b in range(B):
        n = [0, 3, L - 2, 5, 6][b % 5]
        words = rng.integers(5, V, n)
        if n > 4:
            words[1] = UNK
        row = [CLS, *words, SEP]
        ids[b, : len(row)] = row
        mask[b, : len(row)] = 1
    return ids, mask


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bag")
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(V, C))
    emb[MASK] = 0.0  # the replacement contributes nothing: removing a token subtracts its weight exactly
    linear = oe.load(_bag_model(folder / "linear.onnx", emb))
    deep = _bag_model(folder / "deep.onnx", rng.normal(size=(V, D)), rng.normal(size=(D, C)))
    return emb, linear, oe.load(deep), deep


def test_linear_model_deletion_and_insertion_are_cumulative_sums_of_weights(models):
    emb, model, _, _ = models
    ids, mask = _texts(np.random.default_rng(1))
    t = np.array([0, 1, 2, 0, 1])
    w = emb[ids, t[:, None]] * mask  # each token's exact contribution to the target logit
    a = w.copy()
    a[:, 0] = 100.0  # [CLS] ranked first if it were eligible: it must not be replaced
    x = {"input_ids": ids, "attention_mask": mask}
    opts = dict(target=t, output="logit", replace_id=MASK, keep_ids=SPECIAL)
    dele = oe.evaluate(model, x, a, "token_deletion", **opts)
    ins = oe.evaluate(model, x, a, "token_insertion", **opts)
    for b in range(len(ids)):
        elig = [i for i in range(ids.shape[1]) if mask[b, i] and ids[b, i] not in SPECIAL]
        ranked = sorted(elig, key=lambda i: (-a[b, i], i))
        kept = w[b].sum() - w[b, elig].sum()  # special tokens' weights: never removed
        for j, f in enumerate(FRACTIONS):
            n = math.ceil(round(f * len(elig), 9))
            removed = w[b, ranked[:n]].sum()
            np.testing.assert_allclose(dele["curve"][b, j], w[b].sum() - removed, atol=1e-5)
            np.testing.assert_allclose(ins["curve"][b, j], kept + removed, atol=1e-5)
        assert dele["n_tokens"][b] == len(elig)
    np.testing.assert_allclose(dele["curve"][:, 0], ins["curve"][:, -1], atol=1e-5)  # both = f(x)
    auc = np.trapezoid(dele["curve"], FRACTIONS, axis=1)
    np.testing.assert_allclose(dele["auc"], auc, rtol=1e-12)
    assert not dele["higher_is_better"] and ins["higher_is_better"]


def _reference_curve(path, ids, mask, a, t, mode, fractions, replace_id, keep, order_sign=1.0):
    """Plain loop: each text alone, unpadded, one onnxruntime call per fraction, target probability."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = np.zeros((len(ids), len(fractions)))
    for b in range(len(ids)):
        n_real = int(mask[b].sum())
        row = ids[b, :n_real].copy()
        elig = [i for i in range(n_real) if row[i] not in keep and row[i] != replace_id]
        ranked = sorted(elig, key=lambda i: (-order_sign * a[b, i], i))
        for j, f in enumerate(fractions):
            n = math.ceil(round(f * len(elig), 9))
            cur = row.copy()
            if mode == "deletion":
                cur[ranked[:n]] = replace_id
            else:
                cur[[i for i in elig if i not in ranked[:n]]] = replace_id
            z = sess.run(None, {"input_ids": cur[None], "attention_mask": np.ones((1, n_real), np.int64)})[0][
                0
            ]
            p = np.exp(z - z.max())
            out[b, j] = (p / p.sum())[t[b]]
    return out


@pytest.mark.parametrize("mode,order", [("deletion", "morf"), ("insertion", "morf"), ("deletion", "lerf")])
def test_parity_with_a_plain_loop_on_onnxruntime(models, mode, order):
    _, _, model, path = models
    rng = np.random.default_rng(2)
    ids, mask = _texts(rng)
    a = rng.integers(-2, 3, ids.shape).astype(float)  # many ties: the lower position goes first
    t = rng.integers(0, C, len(ids))
    fractions = (0.0, 0.25, 0.3, 0.5, 0.7, 1.0)
    got = oe.evaluate(model, {"input_ids": ids, "attention_mask": mask}, a, f"token_{mode}", target=t,
                      replace_id=MASK, keep_ids=SPECIAL, fractions=fractions, order=order, batch_size=7)  # fmt: skip
    sign = 1.0 if order == "morf" else -1.0
    want = _reference_curve(path, ids, mask, a, t, mode, fractions, MASK, SPECIAL, sign)
    np.testing.assert_allclose(got["curve"], want, rtol=1e-5, atol=1e-6)
    assert got["output"] == "prob" and got["model_calls"] == math.ceil(len(ids) * len(fractions) / 7)


def test_special_tokens_and_padding_are_never_touched():
    ids, mask = _texts(np.random.default_rng(3))
    ids[mask == 0] = 7  # padding with a word id: the attention mask alone must protect it
    a = np.random.default_rng(4).normal(size=ids.shape)
    a[mask == 0] = 50.0  # padding and special tokens ranked first if they were eligible
    a[np.isin(ids, SPECIAL)] = 60.0
    rows = []

    def f(z):
        rows.append(z.copy())
        return np.zeros((len(z), C))

    for fn in (token_deletion, token_insertion):
        rows.clear()
        fn(Predictor(f), ids, a, np.zeros(len(ids), np.int64), None, replace_id=MASK, keep_ids=SPECIAL,
           attention_mask=mask)  # fmt: skip
        z = np.concatenate(rows).reshape(len(ids), len(FRACTIONS), -1)  # sample-major rows
        fixed = (mask == 0) | np.isin(ids, SPECIAL)
        assert (z == ids[:, None])[np.broadcast_to(fixed[:, None], z.shape)].all()
        changed = z != ids[:, None]
        assert (z[changed] == MASK).all()
        n_elig = ((mask == 1) & ~np.isin(ids, SPECIAL)).sum(1)
        n = changed.sum(2)
        want = np.ceil(np.outer(n_elig, FRACTIONS) - 1e-9)
        assert (n == want).all() if fn is token_deletion else (n == n_elig[:, None] - want).all()


def test_a_text_alone_equals_the_text_in_a_padded_batch(models):
    _, _, model, _ = models
    rng = np.random.default_rng(5)
    ids, mask = _texts(rng)
    a = rng.normal(size=ids.shape)
    opts = dict(replace_id=MASK, keep_ids=SPECIAL, target=1)
    for metric in ("token_deletion", "token_insertion"):
        batch = oe.evaluate(model, {"input_ids": ids, "attention_mask": mask}, a, metric, **opts)
        for b in range(len(ids)):
            n = int(mask[b].sum())
            alone = oe.evaluate(model, {"input_ids": ids[b : b + 1, :n], "attention_mask": mask[b : b + 1, :n]},
                                a[b : b + 1, :n], metric, **opts)  # fmt: skip
            np.testing.assert_allclose(alone["curve"][0], batch["curve"][b], rtol=1e-6, atol=1e-7)


def test_rank_consistency_identities_and_masking(models):
    from scipy.stats import kendalltau

    _, _, model, _ = models
    rng = np.random.default_rng(6)
    ids, mask = _texts(rng)
    ids, mask = ids[1:], mask[1:]  # a text with no word has a constant attribution after any ratio: NaN
    table = rng.normal(size=V)
    seen = []

    def explainer(z, t, seed):  # a deterministic non-linear function of the ids; exactly 0 at padding
        seen.append(z.copy())
        cnt = np.stack([(z == v).sum(1) for v in range(V)], 1)
        return table[z] * (1 + cnt[np.arange(len(z))[:, None], z]) * (z != PAD)

    x = {"input_ids": ids, "attention_mask": mask}
    a0 = explainer(ids, None, 0)
    res = oe.evaluate(model, x, a0, "token_rank_consistency", explainer=explainer, replace_id=MASK,
                      keep_ids=SPECIAL, ratios=(0.3, 0.6, 1.0), target=0)  # fmt: skip
    z = seen[-1].reshape(len(ids), 3, -1)  # one explainer call, sample-major rows
    for b in range(len(ids)):
        n_real = int(mask[b].sum())
        elig = [i for i in range(ids.shape[1]) if mask[b, i] and ids[b, i] not in SPECIAL]
        ranked = sorted(elig, key=lambda i: (-abs(a0[b, i]), i))
        for j, r in enumerate((0.3, 0.6, 1.0)):
            k = math.floor(round(r * len(elig), 9))
            want = ids[b].copy()
            want[ranked[:k]] = MASK
            assert (z[b, j] == want).all()  # exactly the top-k by |a| replaced
            u, v = a0[b, :n_real], explainer(want[None], None, 0)[0, :n_real]
            tau = kendalltau(u, v).statistic if np.ptp(u) and np.ptp(v) else np.nan
            np.testing.assert_allclose(res["kendall"][b, j], tau, rtol=1e-12, equal_nan=True)
    same = oe.evaluate(model, x, a0, "token_rank_consistency", explainer=lambda z, t, s: np.repeat(a0, len(z) // len(a0), axis=0),
                       replace_id=MASK, keep_ids=SPECIAL)  # fmt: skip
    neg = oe.evaluate(model, x, a0, "token_rank_consistency", explainer=lambda z, t, s: -np.repeat(a0, len(z) // len(a0), axis=0),
                      replace_id=MASK, keep_ids=SPECIAL)  # fmt: skip
    np.testing.assert_allclose(same["kendall"], 1.0)
    np.testing.assert_allclose(same["cosine"], 1.0)
    np.testing.assert_allclose(neg["kendall"], -1.0)
    np.testing.assert_allclose(neg["cosine"], -1.0)


def test_special_ids_from_a_tokenizer_and_bad_input(models, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4,
                                                            "good": 5}, unk_token="[UNK]"))  # fmt: skip
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.save(str(tmp_path / "tok.json"))
    assert special_token_ids(tmp_path / "tok.json") == (MASK, SPECIAL)
    _, model, _, _ = models
    ids, mask = _texts(np.random.default_rng(7))
    x = {"input_ids": ids, "attention_mask": mask}
    by_tok = oe.evaluate(model, x, np.ones(ids.shape), "token_deletion", tokenizer=str(tmp_path / "tok.json"))
    by_ids = oe.evaluate(model, x, np.ones(ids.shape), "token_deletion", replace_id=MASK, keep_ids=SPECIAL)
    np.testing.assert_array_equal(by_tok["curve"], by_ids["curve"])
    with pytest.raises(OptionError, match="needs replace_id="):
        oe.evaluate(model, x, np.ones(ids.shape), "token_deletion")
    with pytest.raises(OptionError, match="do not fit token ids"):
        oe.evaluate(model, x, np.ones((len(ids), 3)), "token_insertion", replace_id=MASK)
    with pytest.raises(OptionError, match="fractions must increase"):
        oe.evaluate(model, x, np.ones(ids.shape), "token_insertion", replace_id=MASK, fractions=(0.5, 0.2))
