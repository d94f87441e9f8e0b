"""Conversion coverage on the models people deploy (issue 11 §4): tiny random Hugging Face architectures
and a seeded random sample of timm classifiers, each exported with both torch exporters and checked
against autograd on the source model.

    python benchmarks/conversion_coverage.py                               # everything -> results/coverage.md
    python benchmarks/conversion_coverage.py --only bert,vit --exporter legacy
    python benchmarks/conversion_coverage.py --timm-sample 60 --seed 0 --jobs 2
    python benchmarks/conversion_coverage.py --only timm --merge           # re-run some cases, keep the other rows

For every (architecture, exporter) pair, in a subprocess of its own with a time limit (a crash or a hang
costs that case only):

1. build the model from a configuration with random weights (nothing is downloaded) and inputs: float
   images/audio, or token ids with an ``attention_mask`` padded differently in every sample;
2. export it: ``torch.onnx.export(..., dynamo=False, opset_version=17)`` ("legacy") or the default
   dynamo exporter ("dynamo"), batch (and sequence) dims dynamic where the exporter manages, else static;
   onnxruntime must run the file — if either step fails the pair is "export failed", not ours;
3. ``onnx_explain.load`` it and take the checked torch graph (the parity gate of ``convert/checked.py``),
   then run that graph on the *whole* per-sample input (every sample with its own mask) and compare it
   with onnxruntime;
4. compare the attribution with autograd on the source model, per sample, for the predicted class:
   the input gradient for float inputs; gradient x input at the token embedding for ids (the converted
   graph is cut at the embedding ``Gather``; the source's embedding output is made a leaf by a hook).
   Pass: cosine >= 0.999 for every sample. Positions the mask pads out are reported too (they get
   exactly zero in the source).

The source model's parameters do not require gradients (only the input's are needed), and the export gets
a deep copy: timm models that cache tensors computed from parameters (EfficientFormer's attention bias)
otherwise fail the second backward with "Trying to backward through the graph a second time".
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import copy
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # configs only: never reach the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
EXPORTERS = ("legacy", "dynamo")
COS_MIN = 0.999
#: a source whose float32 output differs from its float64 output by more than half what the parity gate
#: allows (rtol 1e-4 of the scale, 1 % of the spread between samples) cannot certify any float32 runtime
ILL_CONDITIONED = (0.5e-4, 0.5e-2)
PARITY_RTOL = 1e-4
TARGETS = {"hf": 0.95, "timm": 0.97}
MAX_PARAMS = 60e6

# ---------------------------------------------------------------------------------- the HF zoo
# name -> (config class, model class, config kwargs, modality)
_TEXT = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=99,
    max_position_embeddings=64, num_labels=3,
)  # fmt: skip
HF_ARCHS: dict[str, tuple[str, str, dict, str]] = {
    "bert": ("BertConfig", "BertForSequenceClassification", _TEXT, "text"),
    "distilbert": (
        "DistilBertConfig",
        "DistilBertForSequenceClassification",
        dict(
            dim=32,
            n_layers=2,
            n_heads=2,
            hidden_dim=37,
            vocab_size=99,
            max_position_embeddings=64,
            num_labels=3,
        ),
        "text",
    ),
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification", {**_TEXT, "pad_token_id": 1}, "text"),
    "xlm-roberta": (
        "XLMRobertaConfig",
        "XLMRobertaForSequenceClassification",
        {**_TEXT, "pad_token_id": 1},
        "text",
    ),  # fmt: skip
    "albert": ("AlbertConfig", "AlbertForSequenceClassification", {**_TEXT, "embedding_size": 16}, "text"),
    "electra": ("ElectraConfig", "ElectraForSequenceClassification", {**_TEXT, "embedding_size": 16}, "text"),
    "deberta-v2": (
        "DebertaV2Config",
        "DebertaV2ForSequenceClassification",
        {**_TEXT, "relative_attention": True, "position_buckets": 8, "pos_att_type": ["p2c", "c2p"]},
        "text",
    ),
    "mpnet": ("MPNetConfig", "MPNetForSequenceClassification", {**_TEXT, "pad_token_id": 1}, "text"),
    "gpt2": (
        "GPT2Config",
        "GPT2ForSequenceClassification",
        dict(n_embd=32, n_layer=2, n_head=2, vocab_size=99, n_positions=64, num_labels=3, pad_token_id=0),
        "text",
    ),
    "llama": (
        "LlamaConfig",
        "LlamaForSequenceClassification",
        dict(_TEXT, num_key_value_heads=1, pad_token_id=0),  # grouped-query attention, rotary positions
        "text",
    ),
    "vit": (
        "ViTConfig",
        "ViTForImageClassification",
        dict(_TEXT, image_size=32, patch_size=8, vocab_size=None),
        "image",
    ),
    "deit": (
        "DeiTConfig",
        "DeiTForImageClassification",
        dict(_TEXT, image_size=32, patch_size=8, vocab_size=None),
        "image",
    ),
    "beit": (
        "BeitConfig",
        "BeitForImageClassification",
        dict(_TEXT, image_size=32, patch_size=8, vocab_size=None, use_relative_position_bias=True),
        "image",
    ),
    "swin": (
        "SwinConfig",
        "SwinForImageClassification",
        dict(
            image_size=32,
            patch_size=4,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=4,
            num_labels=3,
        ),
        "image",
    ),
    "convnext": (
        "ConvNextConfig",
        "ConvNextForImageClassification",
        dict(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3, image_size=32),
        "image",
    ),
    "mobilevit": (
        "MobileViTConfig",
        "MobileViTForImageClassification",
        dict(
            image_size=64,
            patch_size=2,
            hidden_sizes=[16, 16, 16],
            neck_hidden_sizes=[8, 8, 8, 8, 8, 8, 16],
            num_attention_heads=2,
            num_labels=3,
            initializer_range=0.35,  # the default 0.02 shrinks the activations to exactly 0 by the head
        ),  # fmt: skip
        "image",
    ),
    "whisper-encoder": (
        "WhisperConfig",
        "WhisperForAudioClassification",
        dict(
            d_model=32,
            encoder_layers=2,
            encoder_attention_heads=2,
            encoder_ffn_dim=37,
            decoder_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=37,
            num_mel_bins=16,
            max_source_positions=16,
            vocab_size=99,
            num_labels=3,
        ),  # fmt: skip
        "mel",
    ),
    "wav2vec2": (
        "Wav2Vec2Config",
        "Wav2Vec2ForSequenceClassification",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            conv_dim=(16, 16),
            conv_stride=(5, 2),
            conv_kernel=(10, 3),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
            num_labels=3,
            vocab_size=99,
        ),  # fmt: skip
        "audio",
    ),
}

BATCH = 3
SEQ = 10
LENGTHS = (10, 7, 4)  # real tokens per sample; the rest is padding (a different mask per sample)


# ---------------------------------------------------------------------------------- building cases
def _seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - model code may draw from the legacy global state
    torch.manual_seed(seed)


class _Logits:
    """Picks the logits tensor from whatever a model returns."""

    @staticmethod
    def of(out):
        if hasattr(out, "logits"):
            return out.logits
        if isinstance(out, (tuple, list)):
            return out[0]
        return out


def _wrapper(model, names: list[str]):
    """A module ``f(*inputs) -> logits`` taking the inputs positionally, in ``names`` order."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            return _Logits.of(self.model(**dict(zip(names, args, strict=True))))

    return Wrapped().eval()


def build_hf(name: str, seed: int):
    """``(module, inputs, names, explained, info)`` for one tiny HF architecture."""
    import torch
    import transformers

    cfg_name, model_name, kwargs, modality = HF_ARCHS[name]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    _seed(seed)
    config = getattr(transformers, cfg_name)(**kwargs)
    model = getattr(transformers, model_name)(config).eval()
    rng = np.random.default_rng(seed)
    info = {"modality": modality}
    if modality == "text":
        pad = config.pad_token_id if config.pad_token_id is not None else 0
        ids = rng.integers(3, config.vocab_size, size=(BATCH, SEQ))
        mask = np.zeros((BATCH, SEQ), dtype=np.int64)
        for b, n in enumerate(LENGTHS):
            mask[b, :n] = 1
        ids = np.where(mask == 1, ids, pad)
        inputs = [torch.from_numpy(ids), torch.from_numpy(mask)]
        names = ["input_ids", "attention_mask"]
        info["embedding"] = model.get_input_embeddings()
    elif modality == "image":
        size = getattr(config, "image_size", 32)
        inputs = [torch.from_numpy(rng.standard_normal((BATCH, 3, size, size)).astype(np.float32))]
        names = ["pixel_values"]
    elif modality == "mel":
        length = 2 * config.max_source_positions
        inputs = [
            torch.from_numpy(rng.standard_normal((BATCH, config.num_mel_bins, length)).astype(np.float32))
        ]
        names = ["input_features"]
    else:  # raw audio
        inputs = [torch.from_numpy(rng.standard_normal((BATCH, 400)).astype(np.float32))]
        names = ["input_values"]
    return _wrapper(model, names), inputs, names, names[0], info


def build_timm(name: str, seed: int):
    """``(module, inputs, names, explained, info)`` for one timm classifier at a small input size."""
    import timm
    import torch

    _seed(seed)
    rng = np.random.default_rng(seed)
    tried = []
    for size in (64, 96, 128, None):
        kw = {"pretrained": False, "num_classes": 10}
        if size is not None:
            kw["img_size"] = size
        try:
            model = timm.create_model(name, **kw).eval()
        except TypeError:  # no img_size: a size-agnostic network
            kw.pop("img_size", None)
            model = timm.create_model(name, **kw).eval()
        if size is None:
            size = model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
        chans = model.pretrained_cfg.get("input_size", (3, 224, 224))[0]
        x = torch.from_numpy(rng.standard_normal((BATCH, chans, size, size)).astype(np.float32))
        try:
            with torch.no_grad():
                copy.deepcopy(model)(x)
        except Exception as exc:  # noqa: BLE001 - too small for this network: try a larger size
            tried.append(f"{size}: {str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__}")
            continue
        n_params = sum(p.numel() for p in model.parameters())
        return (
            model,
            [x],
            ["pixel_values"],
            "pixel_values",
            {"modality": "image", "size": size, "params": n_params},
        )
    raise RuntimeError("no input size works: " + "; ".join(tried))


# ---------------------------------------------------------------------------------- export
def export(module, inputs, names, exporter: str, path: Path, text: bool) -> str:
    """Export ``module`` to ``path``; returns a note ('' or 'static shapes')."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            axes = {n: ({0: "batch", 1: "seq"} if text else {0: "batch"}) for n in names}
            torch.onnx.export(
                module, tuple(inputs), str(path), dynamo=False, opset_version=17, input_names=names,
                output_names=["logits"], dynamic_axes={**axes, "logits": {0: "batch"}},
            )  # fmt: skip
            return ""
        batch = torch.export.Dim("batch", min=2, max=64)
        seq = torch.export.Dim("seq", min=2, max=64)
        # the wrapper takes ``*args``: its one argument is the tuple of inputs
        shapes = (tuple(({0: batch, 1: seq} if text else {0: batch}) for _ in names),)
        try:
            torch.onnx.export(
                module, tuple(inputs), str(path), dynamo=True, input_names=names, output_names=["logits"],
                dynamic_shapes=shapes, verbose=False,
            )  # fmt: skip
            return ""
        except Exception:  # noqa: BLE001 - dynamic shapes refused: the static export is still a deployable file
            torch.onnx.export(
                module, tuple(inputs), str(path), dynamo=True, input_names=names, output_names=["logits"],
                verbose=False,
            )  # fmt: skip
            return "static shapes"


# ---------------------------------------------------------------------------------- checks
def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    scale = float(np.abs(ref).max()) or 1.0
    return float(np.abs(got.astype(np.float64) - ref).max() / scale)


def source_attribution(module, inputs, explained_pos: int, targets, info):
    """Autograd on the source: the input gradient, or gradient x input at the embedding's output."""

    module = copy.deepcopy(module)
    module.requires_grad_(False)
    args = [t.clone() for t in inputs]
    if "embedding" not in info:
        args[explained_pos] = args[explained_pos].clone().requires_grad_(True)
        out = module(*args)
        out.gather(1, targets[:, None]).sum().backward()
        return args[explained_pos].grad.numpy(), None
    # make the embedding's output a leaf: the path name of the embedding inside the copied module
    emb_name = next(n for n, m in info["source_model"].named_modules() if m is info["embedding"])
    emb = module.model.get_submodule(emb_name) if emb_name else module.model
    seen = {}

    def hook(_mod, _inp, out):
        out = out.detach().requires_grad_(True)
        seen["e"] = out
        return out

    handle = emb.register_forward_hook(hook)
    try:
        out = module(*args)
        out.gather(1, targets[:, None]).sum().backward()
    finally:
        handle.remove()
    e = seen["e"]
    return (e.grad * e).detach().numpy(), e.detach().numpy()


def _embedding_frontier(gm, position: int, args, reference: np.ndarray):
    """The fx node computed from the ids' *values* (not only their shape) whose output is the source
    embedding's output ``reference`` (an ONNX ``Gather`` preferred, then graph order)."""
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    from onnx_explain.convert.driver import NODE_ATTR

    gm = copy.deepcopy(gm)
    values: dict[str, torch.Tensor] = {}

    class Keep(ShapeProp):
        def run_node(self, n):
            out = super().run_node(n)
            if (
                isinstance(out, torch.Tensor)
                and out.is_floating_point()
                and tuple(out.shape) == reference.shape
            ):
                values[n.name] = out.detach()
            return out

    with torch.no_grad():
        Keep(gm).propagate(*args)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    depends = {placeholders[position].name}
    found = []
    for k, node in enumerate(gm.graph.nodes):
        if node.op == "placeholder" or not any(a.name in depends for a in node.all_input_nodes):
            continue
        op = (
            getattr(gm.get_submodule(node.target), NODE_ATTR, ("", "", ""))[1]
            if node.op == "call_module"
            else ""
        )
        if op in ("Shape", "Size"):  # reads the ids' shape only
            continue
        depends.add(node.name)
        if node.name in values and _rel(values[node.name].numpy(), reference) < 1e-5:
            found.append((op != "Gather", k, node.name))
    if not found:
        raise RuntimeError(
            f"no tensor computed from the ids equals the source embedding's output {list(reference.shape)}"
        )
    return min(found)[2]


def _cut(gm, frontier: str):
    """``(g, value)``: ``g(*args, e)`` with the frontier node's output replaced by ``e``, and a module
    computing the frontier's value from ``args``."""
    gm_cut = copy.deepcopy(gm)
    g = gm_cut.graph
    node = next(n for n in g.nodes if n.name == frontier)
    last = [n for n in g.nodes if n.op == "placeholder"][-1]
    with g.inserting_after(last):
        emb = g.placeholder("embedding")
    node.replace_all_uses_with(emb)
    g.erase_node(node)
    g.eliminate_dead_code()
    gm_cut.recompile()
    gm_val = copy.deepcopy(gm)
    out = next(n for n in gm_val.graph.nodes if n.op == "output")
    out.args = (next(n for n in gm_val.graph.nodes if n.name == frontier),)
    gm_val.graph.eliminate_dead_code()
    gm_val.recompile()
    return gm_cut, gm_val


def converted_attribution(graph, args, explained_pos: int, targets, src_e):
    """The same attribution on the converted fx graph run on every per-sample input at once (cut where
    the graph computes the source's embedding output ``src_e``, for ids)."""
    import torch

    if src_e is None:
        args = list(args)
        args[explained_pos] = args[explained_pos].clone().requires_grad_(True)
        out = graph(*args)
        out.gather(1, targets[:, None]).sum().backward()
        return args[explained_pos].grad.numpy(), None
    frontier = _embedding_frontier(graph, explained_pos, args, src_e)
    cut, value = _cut(graph, frontier)
    with torch.no_grad():
        e = value(*args).detach()
    e.requires_grad_(True)
    out = cut(*args, e)
    out.gather(1, targets[:, None]).sum().backward()
    return (e.grad * e).detach().numpy(), e.detach().numpy()


_NODE = re.compile(r"node '([^']*)' \(([^)]*)\)")


_ANSI = re.compile(r"\x1b\[[0-9;]*m|\[[0-9;]*m(?=\S)")


def _failure(exc: BaseException) -> dict:
    text = _ANSI.sub("", str(exc)).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    m = _NODE.search(text)
    kind = type(exc).__name__
    if not type(exc).__module__.startswith("onnx_explain"):  # torch.onnx has a ConversionError too
        kind = f"{type(exc).__module__}.{kind}"
    return {
        "reason": f"{kind}: {text[:300]}",
        "node": m.group(1) if m else "",
        "op": m.group(2) if m else "",
    }


def _locate(path: Path, explained: str, inputs, names, feed_names) -> dict:
    """``{'node', 'op'}`` of the converted node that raises on the per-sample inputs (or {})."""
    try:
        import onnx_explain as oe
        from onnx_explain.convert.checked import convert_graph
        from onnx_explain.convert.driver import failing_node

        fixed = {n: inputs[names.index(n)][:1].numpy() for n in feed_names if n != explained}
        m = oe.load(str(path), input=explained, fixed_inputs=fixed or None)
        batch = m.runtime.batch
        module, _, _ = convert_graph(
            batch.graph, m.signature, m.space_name("output"), batch.fixed_batch, str(path)
        )
        where = failing_node(module.graph, [inputs[names.index(i.name)] for i in m.signature.inputs])
    except Exception:  # noqa: BLE001 - locating is best effort
        return {}
    match = _NODE.search(where or "")
    return {"node": match.group(1), "op": match.group(2)} if match else {}


def _conditioning(module, inputs, ref_logits) -> tuple[float, float] | None:
    """How far the source's float32 output is from the same model in float64: ``(error / scale,
    error / spread between samples)``, the two quantities the parity gate bounds; None where the model
    does not run in float64."""
    import torch

    try:
        with torch.no_grad():
            args = [t.double() if t.is_floating_point() else t for t in inputs]
            exact = copy.deepcopy(module).double()(*args).numpy()
    except Exception:  # noqa: BLE001 - a model with float32-only code paths
        return None
    err = float(np.abs(ref_logits.astype(np.float64) - exact).max())
    flat = exact.reshape(len(exact), -1)
    spread = float((flat.max(0) - flat.min(0)).max())
    scale = float(np.abs(exact).max())
    return err / scale if scale else 0.0, err / spread if spread else float("inf") if err else 0.0


def run_case(family: str, arch: str, exporter: str, seed: int, workdir: Path) -> dict:
    """Everything for one (architecture, exporter) pair; a dict of results (never raises)."""
    import onnx
    import onnxruntime as ort
    import torch

    torch.set_num_threads(1)
    row: dict = {"family": family, "arch": arch, "exporter": exporter, "status": "error"}
    t0 = time.perf_counter()
    try:
        module, inputs, names, explained, info = (build_hf if family == "hf" else build_timm)(arch, seed)
    except Exception as exc:  # noqa: BLE001 - the source model itself cannot be built here
        row.update(status="build failed", **_failure(exc))
        return row
    row.update({k: v for k, v in info.items() if k in ("size", "params", "modality")})
    if "embedding" in info:
        info["source_model"] = module.model
    pos = names.index(explained)
    with torch.no_grad():
        ref_logits = copy.deepcopy(module)(*inputs).numpy()
    cond = _conditioning(module, inputs, ref_logits)
    if cond is not None:
        row["float32_vs_float64"], row["float32_vs_float64_spread"] = cond
    targets = torch.from_numpy(ref_logits.argmax(1))
    path = workdir / f"{family}_{arch}_{exporter}.onnx".replace("/", "_")
    text = "embedding" in info
    try:
        row["export_note"] = export(copy.deepcopy(module), inputs, names, exporter, path, text)
        proto = onnx.load(str(path), load_external_data=False)
        row["opset"] = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed_names = [i.name for i in sess.get_inputs()]
        feeds = {n: inputs[names.index(n)].numpy() for n in feed_names}
        ort_logits = sess.run(None, feeds)[0]
    except Exception as exc:  # noqa: BLE001 - not ours: the exporter or onnxruntime
        row.update(status="export failed", seconds=round(time.perf_counter() - t0, 1), **_failure(exc))
        return row
    row["ort_vs_source"] = _rel(ort_logits, ref_logits)
    row["export_seconds"] = round(time.perf_counter() - t0, 1)
    try:
        import onnx_explain as oe

        fixed = {n: inputs[names.index(n)][:1].numpy() for n in feed_names if n != explained}
        m = oe.load(str(path), input=explained, fixed_inputs=fixed or None)
        wrapper = m.torch_module(probe=inputs[pos].numpy(), space="output")
        row["parity"] = m.parity.max_rel
        # the graph on every sample with its own companion inputs
        graph_names = [i.name for i in m.signature.inputs]
        args = [inputs[names.index(n)] for n in graph_names]
        with torch.no_grad():
            got = wrapper.graph(*args).numpy()
        row["parity_per_sample"] = _rel(got, ort_logits)
        if row["parity_per_sample"] > 1e-3:
            row.update(
                status="parity failed",
                reason=f"per-sample inputs: relative error {row['parity_per_sample']:.3g}",
            )
            return row
        src, src_e = source_attribution(module, inputs, pos, targets, info)
        conv, conv_e = converted_attribution(
            wrapper.graph, args, graph_names.index(explained), targets, src_e
        )
        if src_e is not None:
            row["embedding_diff"] = _rel(conv_e, src_e)
            pad = inputs[names.index("attention_mask")].numpy() == 0
            row["padded_max"] = float(np.abs(conv[pad]).max()) if pad.any() else 0.0
        cosines = [_cos(conv[b], src[b]) for b in range(len(src))]
        row["cos"] = min(cosines)
        row["status"] = "ok" if row["cos"] >= COS_MIN else "gradient differs"
        if row["status"] != "ok":
            row["reason"] = "cosines " + ", ".join(f"{c:.4f}" for c in cosines)
    except Exception as exc:  # noqa: BLE001 - ours: one line naming the node
        from onnx_explain.errors import ConversionError, ParityError

        kind = (
            "convert failed"
            if isinstance(exc, ConversionError)
            else "parity failed"
            if isinstance(exc, ParityError)
            else "error"
        )
        row.update(status=kind, **_failure(exc))
        if (
            kind == "parity failed"
            and cond is not None
            and (cond[0] > ILL_CONDITIONED[0] or cond[1] > ILL_CONDITIONED[1])
        ):
            # the source's own float32 output uses over half of what the parity gate allows against its
            # exact (float64) function: no float32 runtime can be certified on it
            row["status"] = "ill-conditioned"
            row["reason"] = (
                f"the source in float32 differs from float64 by {cond[0]:.2g} of its scale and {cond[1]:.2g} "
                f"of the spread between samples at this random initialisation; {row['reason']}"
            )
        if kind == "error":
            row["trace"] = traceback.format_exc()[-1500:]
        if not row.get("node"):  # a run-time failure: name the node whose module raises
            row.update(_locate(path, explained, inputs, names, feed_names))
    finally:
        row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


# ---------------------------------------------------------------------------------- the sweep
def timm_sample(n: int, seed: int) -> list[str]:
    """A seeded random sample of ``n`` timm architectures with at most 60 M parameters (counted on the
    meta device: nothing is allocated or downloaded)."""
    import timm
    import torch

    names = sorted(timm.list_models())
    random.Random(seed).shuffle(names)
    picked = []
    for name in names:
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = timm.create_model(name, pretrained=False, num_classes=10)
            params = sum(p.numel() for p in model.parameters())
        except Exception:  # noqa: BLE001 - a model that cannot be built on meta: count it normally
            continue
        if params <= MAX_PARAMS:
            picked.append(name)
        if len(picked) >= n:
            break
    return picked


def _run_subprocess(case: tuple[str, str, str], seed: int, timeout: float, workdir: Path) -> dict:
    family, arch, exporter = case
    out = workdir / f"{family}_{arch}_{exporter}.json".replace("/", "_")
    cmd = [sys.executable, __file__, "--case", f"{family}:{arch}:{exporter}", "--seed", str(seed),
           "--workdir", str(workdir), "--result", str(out)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"family": family, "arch": arch, "exporter": exporter, "status": "timeout",
                "reason": f"over {timeout:.0f} s", "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    if out.exists():
        return json.loads(out.read_text())
    tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
    return {"family": family, "arch": arch, "exporter": exporter, "status": "crash",
            "reason": f"exit {proc.returncode}: {tail[0][:200]}", "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def _counts(rows: list[dict], family: str) -> tuple[int, int]:
    eligible = [
        r
        for r in rows
        if r["family"] == family and r["status"] not in ("export failed", "build failed", "ill-conditioned")
    ]
    return sum(r["status"] == "ok" for r in eligible), len(eligible)


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def write_table(rows: list[dict], path: Path, meta: dict) -> str:
    """The markdown table (and summary) of ``rows``; written to ``path``; returns the summary line."""
    lines = [
        "# Conversion coverage (`benchmarks/conversion_coverage.py`)",
        "",
        f"Generated {meta['when']} — seed {meta['seed']}, timm sample {meta['timm_sample']}, "
        f"torch {meta['torch']}, transformers {meta['transformers']}, timm {meta['timm']}, "
        f"onnxruntime {meta['onnxruntime']}. Command: `{meta['command']}`.",
        "",
        "Each pair is exported (legacy = `dynamo=False`, opset 17; dynamo = torch's default exporter) and "
        "run in onnxruntime; *parity* is the checked conversion's error relative to the output (`load` + "
        "`torch_module`), *per-sample* the converted graph on every sample with its own companion inputs "
        "(text: a different padding mask per sample) against onnxruntime; *cos* the smallest per-sample cosine "
        f"between the attribution on the converted graph and autograd on the source (pass >= {COS_MIN}); "
        "text models are attributed as gradient x input at the token embedding, *padded* is the largest "
        "attribution at a padded position. 'export failed' (the exporter or onnxruntime) does not count, nor does 'ill-conditioned' (a parity failure where the source's own float32 output differs from its "
        "float64 output by more than half of what the parity gate allows, at its random initialisation: no "
        "float32 runtime can be certified on it).",
        "",
    ]
    summary = []
    for family, label in (("hf", "HF architectures"), ("timm", "timm sample")):
        ok, n = _counts(rows, family)
        if n == 0 and not any(r["family"] == family for r in rows):
            continue
        share = ok / n if n else 0.0
        exported = sum(r["family"] == family for r in rows)
        target = TARGETS[family]
        summary.append(
            f"{label}: {ok}/{n} pairs pass ({100 * share:.1f} %; target {100 * target:.0f} %: "
            f"{'met' if share >= target else 'not met'}); {exported - n} of {exported} did not export/run or are ill-conditioned"
        )
    lines += ["**Summary.** " + " — ".join(summary) + ".", ""]
    header = ("family", "architecture", "exporter", "opset", "status", "ORT vs source", "parity", "per-sample",
              "cos", "padded", "s", "failure (node, op)")  # fmt: skip
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = {"hf": 0, "timm": 1}
    for r in sorted(rows, key=lambda r: (order.get(r["family"], 2), r["arch"], r["exporter"])):
        fail = ""
        if r["status"] != "ok":
            where = f"`{r['node']}` ({r['op']}) " if r.get("node") or r.get("op") else ""
            fail = _ANSI.sub("", where + r.get("reason", "")).replace("|", "\\|")[:260]
        note = f" ({r['export_note']})" if r.get("export_note") else ""
        cells = [
            r["family"], r["arch"] + (f" @{r['size']}px" if r.get("size") else ""), r["exporter"] + note,
            str(r.get("opset") or ""), r["status"], _fmt(r.get("ort_vs_source"), ".1e"), _fmt(r.get("parity"), ".1e"),
            _fmt(r.get("parity_per_sample"), ".1e"), _fmt(r.get("cos"), ".6f"), _fmt(r.get("padded_max"), ".1e"),
            _fmt(r.get("seconds"), ".0f"), fail,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return " — ".join(summary)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--only", default="", help="comma-separated architecture names (HF names, timm names, or 'hf'/'timm')"
    )
    p.add_argument("--exporter", choices=[*EXPORTERS, "both"], default="both")
    p.add_argument("--timm-sample", type=int, default=60, help="timm architectures to sample (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="cases run at once, each in its own process")
    p.add_argument("--timeout", type=float, default=420.0, help="seconds per case")
    p.add_argument("--out", type=Path, default=RESULTS / "coverage.md")
    p.add_argument(
        "--merge", action="store_true", help="keep the rows of the last run that this run does not redo"
    )
    p.add_argument(
        "--resume", action="store_true", help="with --merge: skip the cases the last run has a row for"
    )
    p.add_argument("--case", help=argparse.SUPPRESS)  # family:arch:exporter, run in this process
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.case:  # a child process: one case, its row as JSON
        family, arch, exporter = args.case.split(":", 2)
        row = run_case(family, arch, exporter, args.seed, args.workdir or Path(tempfile.mkdtemp()))
        if args.result:
            args.result.write_text(json.dumps(row, default=str))
        else:
            print(json.dumps(row, indent=1, default=str))
        return 0

    only = {s.strip() for s in args.only.split(",") if s.strip()}
    exporters = EXPORTERS if args.exporter == "both" else (args.exporter,)
    json_path = args.out.with_suffix(".json")
    last = json.loads(json_path.read_text()) if json_path.exists() else {"meta": {}, "rows": []}
    previous = last["rows"] if args.merge else []
    hf = [a for a in HF_ARCHS if not only or a in only or "hf" in only]
    timm_names = []
    if args.timm_sample and (not only or "timm" in only or only - set(HF_ARCHS) - {"hf"}):
        cached = last["meta"].get("timm_names")  # the sample is slow to draw: reuse the same draw
        same = last["meta"].get("seed") == args.seed and last["meta"].get("timm_sample") == args.timm_sample
        timm_names = cached if cached and same else timm_sample(args.timm_sample, args.seed)
    if only and "timm" not in only:
        timm_names = [n for n in timm_names if n in only] + sorted(
            only - set(HF_ARCHS) - set(timm_names) - {"hf"}
        )
    cases = [("hf", a, e) for a in hf for e in exporters] + [
        ("timm", a, e) for a in timm_names for e in exporters
    ]
    if args.resume:  # an interrupted sweep: only the cases the last run has no row for
        have = {(r["family"], r["arch"], r["exporter"]) for r in previous}
        cases = [c for c in cases if c not in have]

    import onnxruntime
    import timm
    import torch
    import transformers

    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seed": args.seed,
        "timm_sample": args.timm_sample, "torch": torch.__version__, "transformers": transformers.__version__,
        "timm": timm.__version__, "onnxruntime": onnxruntime.__version__,
        "command": "python benchmarks/conversion_coverage.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "timm_names": timm_names if args.timm_sample and (not only or "timm" in only) else last["meta"].get("timm_names"),
    }  # fmt: skip
    rows: list[dict] = []

    def save() -> str:
        # after every case: an interrupted sweep keeps what it measured
        done = {(r["family"], r["arch"], r["exporter"]) for r in rows}
        kept = rows + [r for r in previous if (r["family"], r["arch"], r["exporter"]) not in done]
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"meta": meta, "rows": kept}, indent=1, default=str))
        return write_table(kept, args.out, meta)

    with tempfile.TemporaryDirectory(prefix="coverage_") as tmp:
        with cf.ThreadPoolExecutor(max(1, args.jobs)) as pool:
            futures = {pool.submit(_run_subprocess, c, args.seed, args.timeout, Path(tmp)): c for c in cases}
            for fut in cf.as_completed(futures):
                row = fut.result()
                rows.append(row)
                print(f"[{len(rows)}/{len(cases)}] {row['family']} {row['arch']} {row['exporter']}: {row['status']} "
                      f"cos={row.get('cos')} {row.get('op', '')} {row.get('reason', '')[:120]}", flush=True)  # fmt: skip
                save()
    print(save())
    return 0


if __name__ == "__main__":
    sys.exit(main())
