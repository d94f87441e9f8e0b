"""LRP on a token-id BERT fed as people feed it: token ids and per-sample attention masks (padded texts of
different lengths), onnx-explain vs a plain torch forward+backward and LXT, side by side.

    python benchmarks/bench_lrp_tokens.py --lxt-python /work/venv-optimum/bin/python
    python benchmarks/bench_lrp_tokens.py --shapes 4x64 64x128 --threads 1 2 --repeats 5

Model: ``BertForSequenceClassification`` with 6 layers, width 384, 6 heads (random weights, eager attention),
exported with ``input_ids`` and ``attention_mask`` (legacy exporter, opset 17, dynamic batch and length).
Inputs: ``B`` texts padded to ``L`` tokens, each of a random length in ``[L/2, L]`` (seeded), its mask 1 on
its tokens. Timed per shape and thread count, interleaved, median of ``--repeats`` after a warm-up:

- ``torch fwd+bwd``: the source model's gradient of logit 0 at the word embeddings (lookup, forward with the
  mask, backward), the floor every gradient method pays;
- ours: ``oe.explain(model, {"input_ids": ids, "attention_mask": mask}, method, target=0)`` for
  ``gradient_x_input``, ``lrp`` (AttnLRP, chosen automatically) and ``lrp`` with ``composite="cp_lrp"``
  (the graph is cut at the embedding and the LRP graph built on the warm-up call, like a model load);
- LXT 2.1 in its own environment (``transformers < 5``, ``--lxt-python``): the same weights, a plain
  forward+backward there and ``lxt.efficient.monkey_patch`` AttnLRP (relevance = embeddings × gradient,
  summed over the width); the cosine of LXT's and our per-token relevance.

Results go to ``benchmarks/results/lrp_tokens.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 6, "intermediate_size": 1536,
          "num_labels": 2}  # fmt: skip


def _model():
    import torch
    import transformers.models.bert.modeling_bert as bert  # looked up at call time: LXT patches the module

    torch.manual_seed(0)
    cfg = bert.BertConfig(**CONFIG)
    cfg._attn_implementation = "eager"
    return bert.BertForSequenceClassification(cfg).eval()


def _inputs(b: int, n: int):
    import numpy as np

    rng = np.random.default_rng(b * 1000 + n)
    ids = rng.integers(1000, 30000, size=(b, n)).astype(np.int64)
    lengths = rng.integers(n // 2, n + 1, size=b)
    mask = (np.arange(n)[None, :] < lengths[:, None]).astype(np.int64)
    ids[mask == 0] = 0
    ids[:, 0] = 101  # [CLS]
    return ids, mask


def _timed(fns: dict, repeats: int) -> dict:
    """Median wall-clock and CPU seconds of each function, interleaved, after a warm-up (as the other LRP
    benchmarks)."""
    sys.path.insert(0, str(HERE))
    from bench_lrp_transformer import _timed as timed

    return timed(fns, repeats)


def export_bert(model, path: str) -> None:
    """The BERT's logits from ``input_ids`` and ``attention_mask`` to ONNX (legacy exporter, opset 17, batch
    and length dynamic); the wrapper is put in eval mode, or the export's ``train()`` switches dropout on."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).logits

    ids, mask = _inputs(2, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Logits(model).eval(), (torch.as_tensor(ids), torch.as_tensor(mask)), path, dynamo=False,
            opset_version=17, input_names=["input_ids", "attention_mask"], output_names=["logits"],
            dynamic_axes={"input_ids": {0: "b", 1: "n"}, "attention_mask": {0: "b", 1: "n"}},
        )  # fmt: skip


def _torch_fns(model, ids, mask):
    """``(fwd_bwd, lrp_like)``: the gradient of logit 0 at the word embeddings, and that times them."""
    import torch

    ids_t, mask_t = torch.as_tensor(ids), torch.as_tensor(mask)

    def run():
        emb = model.bert.embeddings.word_embeddings(ids_t).detach().requires_grad_(True)
        logits = model(inputs_embeds=emb, attention_mask=mask_t).logits
        (g,) = torch.autograd.grad(logits[:, 0].sum(), emb)
        return (emb * g).sum(-1).detach()

    return run


def bench(shape: tuple, threads: int, repeats: int, tmp: str, lxt_python: str | None) -> dict:
    import numpy as np
    import torch

    import onnx_explain as oe

    torch.set_num_threads(threads)
    b, n = shape
    model = _model()
    path = os.path.join(tmp, "bert.onnx")
    if not os.path.exists(path):
        torch.save(model.state_dict(), os.path.join(tmp, "bert.pt"))
        export_bert(model, path)
    m = oe.load(path)
    ids, mask = _inputs(b, n)
    feed = {"input_ids": ids, "attention_mask": mask}
    kw = {"target": 0, "batch_size": b}
    fns = {
        "fwd_bwd": _torch_fns(model, ids, mask),
        "gxi": lambda: oe.explain(m, feed, "gradient_x_input", **kw),
        "attnlrp": lambda: oe.explain(m, feed, "lrp", **kw),
        "cp_lrp": lambda: oe.explain(m, feed, "lrp", composite="cp_lrp", **kw),
    }
    row = {"shape": f"{b}x{n}", "threads": threads, **_timed(fns, repeats)}
    ours = oe.explain(m, feed, "lrp", **kw).attribution.astype(np.float64)
    if lxt_python:
        np.save(os.path.join(tmp, "ids.npy"), ids)
        np.save(os.path.join(tmp, "mask.npy"), mask)
        cmd = [lxt_python, __file__, "--lxt-worker", tmp, str(threads), str(repeats)]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print("LXT failed:", (proc.stderr or proc.stdout).strip().splitlines()[-1:], file=sys.stderr)
        else:
            lxt = json.loads(proc.stdout.strip().splitlines()[-1])
            theirs = np.load(lxt.pop("relevance")).astype(np.float64)
            row.update({f"lxt_{k}": v for k, v in lxt.items()})
            a, c = ours.ravel(), theirs.ravel()
            row["cosine"] = float(a @ c / (np.linalg.norm(a) * np.linalg.norm(c)))
    print(row, flush=True)
    return row


def lxt_worker(tmp: str, threads: int, repeats: int) -> None:
    import numpy as np
    import torch
    import transformers.models.bert.modeling_bert as modeling_bert
    from lxt.efficient import monkey_patch

    torch.set_num_threads(threads)
    state = torch.load(os.path.join(tmp, "bert.pt"))
    ids, mask = np.load(os.path.join(tmp, "ids.npy")), np.load(os.path.join(tmp, "mask.npy"))
    plain = _model()
    plain.load_state_dict(state, strict=False)  # position-id buffers differ between versions
    floor = _timed({"fwd_bwd": _torch_fns(plain, ids, mask)}, repeats)
    monkey_patch(modeling_bert, verbose=False)
    patched = _model()  # built after patching: LXT replaces the module classes
    patched.load_state_dict(state, strict=False)
    lrp = _torch_fns(patched, ids, mask)
    med = _timed({"lrp": lrp}, repeats)
    rel = os.path.join(tmp, "lxt.npy")
    np.save(rel, lrp().numpy())
    print(json.dumps({**floor, **med, "relevance": rel}))


def report(rows: list, repeats: int, threads: list, shapes: list, lxt: bool) -> str:
    lines = [
        "# LRP on a token-id BERT with per-sample attention masks: onnx-explain vs torch and LXT",
        "",
        f"Machine: {os.cpu_count()} CPU cores, shared. BERT 6 layers x 384 (random weights, eager attention); "
        f"B texts padded to L tokens, lengths uniform in [L/2, L]; median of {repeats} interleaved runs after "
        "a warm-up, wall-clock seconds (CPU-second ratios in brackets). torch fwd+bwd = the source model's "
        "gradient at the word embeddings; ours = `oe.explain` with token ids and masks (gradient x input, "
        "AttnLRP, CP-LRP); LXT 2.1 = `lxt.efficient.monkey_patch` AttnLRP in its own venv (transformers 4.57), "
        "timed against its own torch fwd+bwd; cosine = LXT vs our AttnLRP per token. Command: "
        f"`python benchmarks/bench_lrp_tokens.py --shapes {' '.join(shapes)} --threads "
        f"{' '.join(map(str, threads))} --repeats {repeats}" + (" --lxt-python PY`" if lxt else "`"),
        "",
        "| B x L | threads | torch fwd+bwd (s) | ours gxi (s) | ours AttnLRP (s) | ours CP-LRP (s) | LXT (s) | "
        "gxi / fwd+bwd | AttnLRP / fwd+bwd | AttnLRP / LXT | LXT / its fwd+bwd | cosine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        has = "lxt_lrp" in r

        def ratio(a, b, r=r):
            return f"{r[a] / r[b]:.2f} ({r['cpu_' + a] / r['cpu_' + b]:.2f})"

        lines.append(
            f"| {r['shape']} | {r['threads']} | {r['fwd_bwd']:.3f} | {r['gxi']:.3f} | {r['attnlrp']:.3f} | "
            f"{r['cp_lrp']:.3f} | {r['lxt_lrp']:.3f} | " if has else
            f"| {r['shape']} | {r['threads']} | {r['fwd_bwd']:.3f} | {r['gxi']:.3f} | {r['attnlrp']:.3f} | "
            f"{r['cp_lrp']:.3f} | – | "
        )  # fmt: skip
        lines[-1] += (
            f"{ratio('gxi', 'fwd_bwd')} | {ratio('attnlrp', 'fwd_bwd')} | "
            + (f"{r['attnlrp'] / r['lxt_lrp']:.2f} | {r['lxt_lrp'] / r['lxt_fwd_bwd']:.2f} | "
               f"{r['cosine']:.6f} |" if has else "– | – | – |")
        )  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["4x64", "64x128"], help="BxL: texts x padded length")
    ap.add_argument("--threads", nargs="+", type=int, default=[1])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lxt-python", default=None, help="python of a venv with lxt and transformers<5")
    ap.add_argument("--out", default=str(HERE / "results" / "lrp_tokens.md"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    rows = [
        bench(tuple(int(v) for v in s.split("x")), th, args.repeats, tmp, args.lxt_python)
        for th in args.threads
        for s in args.shapes
    ]
    text = report(rows, args.repeats, args.threads, args.shapes, bool(args.lxt_python))
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--lxt-worker":
        lxt_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
