"""Transformer LRP speed: onnx-explain's AttnLRP vs one forward+backward of the same model, and LXT.

    python benchmarks/bench_lrp_transformer.py                          # ViT-B/16 and BERT-base, 1 and 2 threads
    python benchmarks/bench_lrp_transformer.py --models bert --threads 1 --repeats 5
    python benchmarks/bench_lrp_transformer.py --lxt-python /tmp/venv-lxt/bin/python

Models (random weights, batch 1): torchvision ``vit_b_16`` on one 224x224 image, and a BERT-base-sized
``BertForSequenceClassification`` (``BertConfig()`` defaults: 12 layers, 768 wide, 12 heads; eager attention)
on 128 float token embeddings (``inputs_embeds``). Each is exported to ONNX (legacy exporter, opset 17).

Timed, per model and thread count, interleaved, median of ``--repeats`` after a warm-up: one forward and
backward of the converted ONNX graph and of the torch source (the gradient of the target logit with respect to
the input), and ``oe.explain(model, x, "lrp")`` (composite ``attnlrp``, chosen automatically; the LRP graph is
built once, on the warm-up call, like a model load). LXT 2.1 needs ``transformers < 5``: with
``--lxt-python`` (a separate virtual environment with ``torch``, ``torchvision``, ``lxt`` and
``transformers<5``) the same weights are explained there with LXT's efficient ``monkey_patch`` (AttnLRP for
BERT; CP-LRP, the only map LXT ships for torchvision's ViT), timed against a plain forward+backward in that
environment, and the cosine between LXT's and our relevance (summed over the embedding) is reported.
Results are appended as a section to ``benchmarks/results/lrp.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEQ = 128


# ----------------------------------------------------------------------------------------- models
def build(name: str):
    """``(module, input, state_dict path)``: the random-weight torch model and its input (seeded)."""
    import torch

    torch.manual_seed(0)
    if name == "vit":
        import torchvision

        net = torchvision.models.vit_b_16(weights=None).eval()
        torch.nn.init.normal_(net.heads.head.weight, std=0.02)  # torchvision zero-initialises the head
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        return net, x
    net = _bert()
    x = 0.5 * torch.randn(1, SEQ, 768, generator=torch.Generator().manual_seed(1))
    return net, x


def _bert():
    import torch

    # looked up on the module at call time: LXT's monkey_patch replaces the classes there
    import transformers.models.bert.modeling_bert as bert

    class Bert(torch.nn.Module):
        """BERT-base on float token embeddings; the logits only (the ONNX graph's one output)."""

        def __init__(self):
            super().__init__()
            cfg = bert.BertConfig(num_labels=2)
            cfg._attn_implementation = "eager"  # an explicit Softmax in the graph, as LXT patches it
            self.bert = bert.BertForSequenceClassification(cfg).eval()

        def forward(self, x):
            return self.bert(inputs_embeds=x).logits

    return Bert().eval()


def export(net, x, path: str) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), path, dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})  # fmt: skip


def _timed(fns: dict, repeats: int) -> dict:
    """Median wall-clock seconds of each function, interleaved, after one warm-up call each, and the median
    CPU seconds as ``cpu_<name>`` (``time.process_time``: robust to other jobs on a shared machine)."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {**{k: statistics.median(v) for k, v in times.items()},
            **{f"cpu_{k}": statistics.median(v) for k, v in cpu.items()}}  # fmt: skip


def _grad_fn(module, x, t):
    import torch

    def run():
        z = x.clone().requires_grad_(True)
        torch.autograd.grad(module(z)[0, t], z)

    return run


# ----------------------------------------------------------------------------------------- ours
def bench_ours(name: str, threads: int, repeats: int, tmp: str, lxt_python: str | None) -> dict:
    import numpy as np
    import torch

    import onnx_explain as oe

    torch.set_num_threads(threads)
    net, x = build(name)
    path = os.path.join(tmp, f"{name}.onnx")
    if not os.path.exists(path):
        export(net, x, path)
        torch.save(net.state_dict(), os.path.join(tmp, f"{name}.pt"))
    model = oe.load(path)
    module = model.torch_module()
    with torch.no_grad():
        t = int(net(x).argmax())
    xn = x.numpy()
    fns = {"onnx": _grad_fn(module, x, t), "torch": _grad_fn(net, x, t),
           "ours": lambda: oe.explain(model, xn, "lrp", target=t)}  # fmt: skip
    if name == "vit":  # LXT's ViT map is CP-LRP: time ours with the same composite too
        fns["ours_cp"] = lambda: oe.explain(model, xn, "lrp", target=t, composite="cp_lrp")
    t0 = time.perf_counter()
    e = oe.explain(model, xn, "lrp", target=t)  # builds the LRP graph
    build_s = time.perf_counter() - t0
    med = _timed(fns, repeats)
    row = {"model": name, "threads": threads, "build_s": build_s, **med, "composite": e.extras["composite"],
           "fallback": e.extras["fallback_nodes"]}  # fmt: skip
    if lxt_python:
        lxt = _run_lxt(lxt_python, name, threads, repeats, tmp, t)
        row.update({f"lxt_{k}": v for k, v in lxt.items() if k != "relevance"})
        if "relevance" in lxt:
            cp = oe.explain(model, xn, "lrp", target=t, composite="cp_lrp") if name == "vit" else e
            a = _per_token(name, np.asarray(cp.attribution, np.float64))
            b = _per_token(name, np.load(lxt["relevance"]).astype(np.float64))
            row["lxt_cosine"] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            # the same unit, unsummed: the relevance of every embedding coordinate (BERT) or pixel channel
            a = np.asarray(cp.attribution, np.float64).ravel()
            b = np.load(lxt["relevance"]).astype(np.float64).ravel()
            row["lxt_cosine_full"] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            row["lxt_max_rel_err"] = float(np.abs(a - b).max() / np.abs(b).max())
    print(json.dumps({k: v for k, v in row.items() if k != "fallback"}), flush=True)
    return row


def _per_token(name, r):
    """Relevance summed over the embedding (BERT) or the colour channels (ViT), flattened."""
    return (r.sum(-1) if name == "bert" else r.sum(1)).ravel()


def _run_lxt(python: str, name: str, threads: int, repeats: int, tmp: str, t: int) -> dict:
    """LXT in its own environment (transformers < 5): this script's ``--lxt-worker`` mode."""
    cmd = [python, __file__, "--lxt-worker", name, str(threads), str(repeats), tmp, str(t)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"LXT failed on {name}: {tail[0]}", file=sys.stderr)
        return {"error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------- LXT worker
def lxt_worker(name: str, threads: int, repeats: int, tmp: str, t: int) -> None:
    """Time a plain forward+backward and LXT (efficient ``monkey_patch``) in the LXT environment."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    state = torch.load(os.path.join(tmp, f"{name}.pt"))
    if name == "vit":
        import torchvision
        from lxt.efficient import monkey_patch
        from lxt.efficient.models.vit_torch import cp_LRP
        from torchvision.models import vision_transformer

        def make():
            net = torchvision.models.vit_b_16(weights=None).eval()
            net.load_state_dict(state)
            return net

        plain = make()
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        floor = _timed({"fwd_bwd": _grad_fn(plain, x, t)}, repeats)
        monkey_patch(vision_transformer, cp_LRP)
    else:
        import transformers.models.bert.modeling_bert as modeling_bert
        from lxt.efficient import monkey_patch

        def make():
            net = _bert()
            net.load_state_dict(state, strict=False)  # the position-id buffers differ between versions
            return net

        plain = make()
        x = 0.5 * torch.randn(1, SEQ, 768, generator=torch.Generator().manual_seed(1))
        floor = _timed({"fwd_bwd": _grad_fn(plain, x, t)}, repeats)
        monkey_patch(modeling_bert)
    patched = make()  # built after patching: LXT replaces the module classes

    def lrp():
        z = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(patched(z)[0, t], z)
        return z * g  # LXT: relevance = input × modified gradient

    med = _timed({"lrp": lrp}, repeats)
    rel = os.path.join(tmp, f"{name}-lxt.npy")
    np.save(rel, lrp().detach().numpy())
    print(json.dumps({"fwd_bwd": floor["fwd_bwd"], "lrp": med["lrp"], "cpu_fwd_bwd": floor["cpu_fwd_bwd"],
                      "cpu_lrp": med["cpu_lrp"], "relevance": rel}))  # fmt: skip


# ----------------------------------------------------------------------------------------- report
def report(rows: list, repeats: int, lxt: bool) -> str:
    import platform

    import torch

    lines = [
        "",
        "## Transformers: AttnLRP vs one forward+backward, and LXT",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), shared with other "
        f"jobs; torch {torch.__version__}. Batch 1, random weights; median of {repeats} interleaved runs after a "
        "warm-up, seconds. ViT = torchvision `vit_b_16` (224x224), BERT = `BertForSequenceClassification(BertConfig())`"
        f" on {SEQ} float token embeddings. fwd+bwd = the gradient of the target logit w.r.t. the input. Ours = "
        "`oe.explain(model, x, 'lrp')` (AttnLRP, chosen automatically; graph built once, not timed)"
        + (
            "; LXT 2.1 (`lxt.efficient.monkey_patch`, transformers 4.57 in its own venv: AttnLRP for BERT, CP-LRP "
            "for the ViT, LXT's only map for torchvision's ViT), timed against a plain fwd+bwd in that venv; "
            "cosine = LXT vs our same-method relevance per token/pixel, and unsummed (every embedding coordinate / "
            "pixel channel), with the largest difference relative to LXT's largest value"
            if lxt
            else ""
        )
        + ". Command: `python benchmarks/bench_lrp_transformer.py"
        + (" --lxt-python /tmp/venv-lxt/bin/python`" if lxt else "`"),
        "",
        "| model | threads | fwd+bwd ONNX (s) | fwd+bwd torch (s) | ours AttnLRP (s) | ours / fwd+bwd ONNX | "
        "ours / fwd+bwd torch | CPU: ours / fwd+bwd ONNX | ours CP-LRP (s) | LXT fwd+bwd (s) | LXT (s) | "
        "LXT / its fwd+bwd | CPU: LXT / its fwd+bwd | cosine LXT vs ours | cosine unsummed | max rel. error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:

        def f(k, fmt="{:.3f}", r=r):
            return fmt.format(r[k]) if isinstance(r.get(k), float) else "–"

        has_lxt = isinstance(r.get("lxt_lrp"), float)
        lxt_ratio = f"{r['lxt_lrp'] / r['lxt_fwd_bwd']:.2f}" if has_lxt else "–"
        lxt_cpu = f"{r['lxt_cpu_lrp'] / r['lxt_cpu_fwd_bwd']:.2f}" if has_lxt else "–"
        lines.append(
            f"| {r['model']} | {r['threads']} | {f('onnx')} | {f('torch')} | {f('ours')} | "
            f"{r['ours'] / r['onnx']:.2f} | {r['ours'] / r['torch']:.2f} | {r['cpu_ours'] / r['cpu_onnx']:.2f} | "
            f"{f('ours_cp')} | {f('lxt_fwd_bwd')} | {f('lxt_lrp')} | {lxt_ratio} | {lxt_cpu} | "
            f"{f('lxt_cosine', '{:.4f}')} | {f('lxt_cosine_full', '{:.7f}')} | {f('lxt_max_rel_err', '{:.1e}')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vit", "bert"], choices=["vit", "bert"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lxt-python", default=None, help="python of a venv with lxt and transformers<5")
    ap.add_argument(
        "--out", default=str(HERE / "results" / "lrp.md"), help="results file (a section is appended)"
    )
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_lrp_tf_")
    rows = [bench_ours(m, th, args.repeats, tmp, args.lxt_python) for m in args.models for th in args.threads]
    text = report(rows, args.repeats, bool(args.lxt_python))
    print(text)
    if not args.no_write:
        with open(args.out, "a") as fh:
            fh.write(text)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--lxt-worker":
        _, _, model_name, n_threads, n_repeats, tmp_dir, target = sys.argv
        lxt_worker(model_name, int(n_threads), int(n_repeats), tmp_dir, int(target))
    else:
        main()
