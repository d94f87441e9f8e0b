"""LRP speed: onnx-explain vs one plain forward+backward and vs Zennit (issue: LRP, Performance).

    python benchmarks/bench_lrp.py                       # ResNet-18, ResNet-50, VGG-16; 224x224; one image
    python benchmarks/bench_lrp.py --arch resnet18 --repeats 5 --threads 1 2

onnx-explain prepares the LRP graph once per model and settings (the first call, excluded like Zennit's
import); every timed call is one forward and one modified backward. Zennit is timed as it is used: a
``Gradient(model, composite)`` context (hooks and canonizers registered) per call, on the original model.
Results go to ``benchmarks/results/lrp_cnn.md`` (the summary with the transformer rows is ``lrp.md``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
LOW, HIGH = -2.5, 2.5


def bench_arch(arch: str, repeats: int, threads: int, images: int = 1) -> list:
    """Timings of every composite on one architecture, with ``threads`` torch threads, on a batch of
    ``images`` images (each explained for its own predicted class; the floor is the same batch's gradient)."""
    import torchvision
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonGammaBox, EpsilonPlus, LayerMapComposite, layer_map_base
    from zennit.rules import Epsilon
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer
    from zennit.types import Convolution, Linear

    import onnx_explain as oe

    rows = []
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None).eval()
    x = torch.randn(images, 3, 224, 224, generator=torch.Generator().manual_seed(1)).clamp(LOW, HIGH)
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, f"{arch}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), path, dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    model = oe.load(path)
    module = model.torch_module()
    with torch.no_grad():
        t = net(x).argmax(1)
    onehot = torch.eye(1000)[t]
    rows_ = torch.arange(images)
    canon = ResNetCanonizer if arch.startswith("resnet") else VGGCanonizer
    composites = {
        # LRP-ε on every layer: the engine's own overhead (the rule costs one transposed product, like a gradient)
        "epsilon (all layers)": (
            lambda: LayerMapComposite(
                layer_map_base() + [(Convolution, Epsilon()), (Linear, Epsilon())], canonizers=[canon()]
            ),
            {"composite": "epsilon_plus", "rules": {"Conv": "epsilon"}},
        ),
        "epsilon_plus": (lambda: EpsilonPlus(canonizers=[canon()]), {"composite": "epsilon_plus"}),
        "epsilon_gamma_box": (
            lambda: EpsilonGammaBox(low=LOW, high=HIGH, canonizers=[canon()]),
            {"composite": "epsilon_gamma_box", "low": LOW, "high": HIGH},
        ),
    }

    def floor():
        z = x.clone().requires_grad_(True)
        torch.autograd.grad(module(z)[rows_, t].sum(), z)

    for name, (zcomp, kw) in composites.items():

        def ours(kw=kw):
            oe.explain(model, x.numpy(), "lrp", target=t.numpy(), batch_size=max(64, images), **kw)

        def zen(zcomp=zcomp):
            with Gradient(net, zcomp()) as attributor:
                attributor(x, lambda out: out * onehot)

        ours()  # builds the LRP graph once
        zen()
        times = {"floor": [], "ours": [], "zennit": []}
        cpu = {k: [] for k in times}  # CPU seconds: robust to other jobs on a shared machine
        for _ in range(repeats):
            for k, fn in (("floor", floor), ("ours", ours), ("zennit", zen)):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                times[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
        med = {k: statistics.median(v) for k, v in times.items()}
        med.update({f"cpu_{k}": statistics.median(v) for k, v in cpu.items()})
        rows.append((arch, threads, name, med))
        print(arch, threads, name, med, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=["resnet18", "resnet50", "vgg16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch threads (each one a run)")
    ap.add_argument("--images", type=int, default=1, help="images per call (one batch)")
    ap.add_argument("--out", default=str(HERE / "results" / "lrp_cnn.md"))
    args = ap.parse_args()
    rows = [
        r
        for th in args.threads
        for arch in args.arch
        for r in bench_arch(arch, args.repeats, th, args.images)
    ]
    lines = [
        "# LRP: onnx-explain vs a plain forward+backward and Zennit",
        "",
        f"Machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d', time.gmtime())}. "
        f"{args.images} 224x224 image(s) per call, random weights, median of",
        f"{args.repeats} interleaved runs after a warm-up; wall-clock seconds, and the ratio of CPU seconds "
        "(`time.process_time`, robust to other jobs on a shared machine). Command: "
        f"`python benchmarks/bench_lrp.py --arch {' '.join(args.arch)} --repeats {args.repeats} "
        f"--threads {' '.join(map(str, args.threads))} --images {args.images}`",
        "",
        "| model | threads | composite | forward+backward (s) | onnx-explain (s) | Zennit (s) | ours / fwd+bwd | "
        "ours / Zennit | CPU: ours / fwd+bwd |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, threads, name, m in rows:
        lines.append(f"| {arch} | {threads} | {name} | {m['floor']:.3f} | {m['ours']:.3f} | {m['zennit']:.3f} | "
                     f"{m['ours'] / m['floor']:.2f} | {m['ours'] / m['zennit']:.2f} | "
                     f"{m['cpu_ours'] / m['cpu_floor']:.2f} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
