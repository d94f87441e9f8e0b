"""SmoothGrad speed and memory against the floor and Captum (issue: gradient methods, Performance).

    python benchmarks/bench_methods.py                   # ResNet-18 and ResNet-50, 224x224, n = 50
    python benchmarks/bench_methods.py --arch resnet18 --repeats 5

For each architecture (torchvision, random weights, exported with the legacy exporter and converted by
onnx-explain once, outside the timings) it times, interleaved and repeated (median):

- floor: one batched forward+backward of the converted graph over the same 50 noisy inputs;
- ours: ``onnx_explain.explain(model, x, 'smoothgrad', n_samples=50, batch_size=50)`` on one image;
- captum: ``NoiseTunnel(Saliency(original torch model))`` with ``nt_samples_batch_size=50``.

Peak RSS is measured in fresh processes for n = 50 and n = 200 at the same batch size (it must follow
the batch size, not n). Results go to ``benchmarks/results/methods.md``.
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

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def build(arch: str, tmp: str):
    import torchvision

    import onnx_explain as oe

    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    path = os.path.join(tmp, f"{arch}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), path, dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    model = oe.load(path)
    model.torch_module()  # convert + parity check once, outside the timings
    return net, model, x


def time_one(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench(arch: str, n: int, batch_size: int, repeats: int) -> dict:
    from captum.attr import NoiseTunnel, Saliency

    import onnx_explain as oe

    with tempfile.TemporaryDirectory() as tmp:
        net, model, x = build(arch, tmp)
        module = model.torch_module()
        target = int(model.predict(x.numpy()).argmax())
        sigma = 0.15 * float(x.max() - x.min())
        noisy = x.repeat(n, 1, 1, 1) + sigma * torch.randn(n, *x.shape[1:])
        t = torch.full((n,), target)

        def floor():
            for s in range(0, n, batch_size):
                z = noisy[s : s + batch_size].clone().requires_grad_(True)
                out = module(z).gather(1, t[s : s + batch_size, None]).sum()
                torch.autograd.grad(out, z)

        def ours():
            oe.explain(model, x.numpy(), "smoothgrad", target=target, n_samples=n, batch_size=batch_size)

        def captum():
            NoiseTunnel(Saliency(net)).attribute(x, nt_type="smoothgrad", nt_samples=n, nt_samples_batch_size=batch_size,
                                                 stdevs=sigma, target=target, abs=False)  # fmt: skip

        runs = {"floor": [], "ours": [], "captum": []}
        for fn in (floor, ours, captum):  # warm-up
            fn()
        for _ in range(repeats):
            for name, fn in (("floor", floor), ("ours", ours), ("captum", captum)):
                runs[name].append(time_one(fn))
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"arch": arch, "n": n, "batch_size": batch_size, "repeats": repeats, **med,
            "ours/floor": med["ours"] / med["floor"], "ours/captum": med["ours"] / med["captum"]}  # fmt: skip


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_child(path: str, n: int, batch_size: int) -> None:
    """Load the exported model, then sample this process's RSS every 5 ms while SmoothGrad runs."""
    import threading

    import onnx_explain as oe

    model = oe.load(path)
    model.torch_module()
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    oe.explain(model, x, "gradient")  # warm the allocator
    base = _rss_mb()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.005)

    th = threading.Thread(target=sample)
    th.start()
    oe.explain(model, x, "smoothgrad", n_samples=n, batch_size=batch_size)
    done.set()
    th.join()
    print(json.dumps({"peak_rss_mb": peak[0], "before_mb": base, "increase_mb": peak[0] - base}))


def peak_rss(arch: str, n: int, batch_size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        build(arch, tmp)
        path = os.path.join(tmp, f"{arch}.onnx")
        out = subprocess.run([sys.executable, __file__, "--rss-child", path, str(n), str(batch_size)],
                             capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(HERE / "results" / "methods.md"))
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]), int(args.rss_child[2]))
        return
    torch.set_num_threads(os.cpu_count() or 1)
    rows = [bench(a, args.n, args.batch_size, args.repeats) for a in args.arch]
    mem = {a: {n: peak_rss(a, n, args.batch_size) for n in (args.n, 4 * args.n)} for a in args.arch}
    lines = [
        "# SmoothGrad: onnx-explain vs the floor and Captum",
        "",
        f"Machine: {os.cpu_count()} CPU cores, torch {torch.__version__}. 224x224, one image, n = {args.n} noisy",
        f"samples, batch size {args.batch_size}, median of {args.repeats} interleaved runs after a warm-up.",
        "Command: `python benchmarks/bench_methods.py`",
        "",
        "| model | floor (s) | onnx-explain (s) | Captum (s) | ours / floor | ours / Captum |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['floor']:.2f} | {r['ours']:.2f} | {r['captum']:.2f} | "
                     f"{r['ours/floor']:.3f} | {r['ours/captum']:.3f} |")  # fmt: skip
    lines += ["", f"Peak RSS while SmoothGrad runs, in a fresh process that loaded the model (MB; batch size "
              f"{args.batch_size}; in brackets the increase over the RSS before the call):", "",
              f"| model | n = {args.n} | n = {4 * args.n} |", "|---|---|---|"]  # fmt: skip
    for a in args.arch:
        cells = [
            f"{mem[a][k]['peak_rss_mb']:.0f} (+{mem[a][k]['increase_mb']:.0f})" for k in (args.n, 4 * args.n)
        ]
        lines.append(f"| {a} | {cells[0]} | {cells[1]} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    print(json.dumps({"rows": rows, "rss": mem}, default=float))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
