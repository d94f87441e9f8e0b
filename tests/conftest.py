"""Shared helpers: exporting torch modules both ways, one-node ONNX graphs, gradient comparison."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import onnx_explain as oe

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def export(module: torch.nn.Module, x: torch.Tensor, path: Path, exporter: str, dynamic: bool = True) -> Path:
    """Export ``module`` with the legacy (opset 17) or the dynamo exporter; dynamic batch unless told."""
    module = module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(
                module, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                dynamic_axes={"x": {0: "batch"}} if dynamic else None,
            )  # fmt: skip
        else:
            shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
            torch.onnx.export(
                module, (x,), str(path), dynamo=True, input_names=["x"], dynamic_shapes=shapes,
                external_data=False, verbose=False,
            )  # fmt: skip
    return path


def input_gradient(module, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """d sum_b f(x)[b, target_b] / dx."""
    x = x.clone().requires_grad_(True)
    out = module(x)
    out.gather(1, target[:, None]).sum().backward()
    return x.grad.detach().cpu().numpy()


def assert_gradients_match(got: np.ndarray, want: np.ndarray, rel: float = 1e-4, cos: float = 0.9999) -> None:
    """Compare gradients by norm and cosine (not max-abs: ReLU/MaxPool kinks make max-abs noisy)."""
    g, w = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    nw = np.linalg.norm(w)
    assert nw > 0, "reference gradient is zero: the test would prove nothing"
    rel_norm = abs(np.linalg.norm(g) - nw) / nw
    cosine = float(g @ w / (np.linalg.norm(g) * nw))
    assert rel_norm <= rel, f"gradient norm differs by {rel_norm:.3g} (> {rel})"
    assert cosine >= cos, f"gradient cosine {cosine:.6f} < {cos}"


def make_model(
    nodes, inputs, outputs, initializers=(), opset: int = 20, extra_opsets=None
) -> onnx.ModelProto:
    """A checked ONNX model from ``onnx.helper`` pieces, IR 10 (what onnxruntime 1.31 reads)."""
    opsets = [helper.make_opsetid("", opset)] + [
        helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()
    ]
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="onnx-explain-tests")
    model.ir_version = 10
    # outputs given without a shape get the rank (symbolic dims) that shape inference finds
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v for v in list(inferred.graph.output) + list(inferred.graph.value_info)}
    for out in model.graph.output:
        if not out.type.tensor_type.HasField("shape") and out.name in types:
            dims = types[out.name].type.tensor_type.shape.dim
            out.type.tensor_type.elem_type = types[out.name].type.tensor_type.elem_type
            shape = out.type.tensor_type.shape
            shape.SetInParent()  # rank 0 is a shape too
            for k, _ in enumerate(dims):
                shape.dim.add().dim_param = f"{out.name}_d{k}"
    onnx.checker.check_model(model, full_check=True)
    return model


def vinfo(name: str, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def ort_vs_torch(model: onnx.ModelProto, x: np.ndarray, tmp_path: Path, output: str | None = None, **load_kw):
    """Load through onnx-explain; return (onnxruntime output, torch output, Model)."""
    path = save(model, tmp_path / "m.onnx")
    m = oe.load(path, output=output, **load_kw)
    mod = m.torch_module(probe=x)
    with torch.no_grad():
        got = mod(torch.from_numpy(np.asarray(x))).numpy()
    return m.predict(x), got, m


def word_tokenizer(folder: Path, sentences: list[str], specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]")) -> Path:
    """A WordLevel ``tokenizers`` file trained on ``sentences`` (no download), adding [CLS] ... [SEP]."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.train_from_iterator(sentences, tokenizers.trainers.WordLevelTrainer(special_tokens=list(specials)))
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    path = folder / "tokenizer.json"
    tok.save(str(path))
    return path


def tiny_bert(path: Path, vocab: int, names: list[str], num_labels: int = 2) -> Path:
    """A tiny random HF BERT classifier (1 layer, d = 16) exported with inputs ``names`` (ids first, then
    the attention mask and, if named, the token type ids), dynamic batch and length."""
    transformers = pytest.importorskip("transformers")
    import warnings

    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=20, max_position_embeddings=32, num_labels=num_labels,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(cfg).eval()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, *inputs):
            return self.bert(**dict(zip(names, inputs, strict=True))).logits

    ids = torch.ones(2, 5, dtype=torch.int64)
    args = tuple(ids * 0 if n == "token_type_ids" else ids for n in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits(), args, str(path), dynamo=False, opset_version=17, input_names=names,
                          output_names=["logits"], dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names})  # fmt: skip
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)
