"""Release-audit costs (issue 23, Speed): ``diff`` against one ``explain`` of each model, and the sanity
check with K layers against one explanation.

    python benchmarks/bench_release.py            # ResNet-18 (random weights), 64 images of 64x64, gradient

Targets: ``diff`` on 64 images ≤ 2.2× (explain A + explain B); the sanity check with K layers ≤ (K + 1)× one
explanation. Median of ``--repeats`` interleaved runs after a warm-up, in one process. Results go to
``benchmarks/results/release.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def median_time(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each callable, run in turn ``repeats`` times after one warm-up each: a load
    change on the shared machine then hits every entry alike."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--sanity-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "release.md"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torchvision
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import onnx_explain as oe
    from onnx_explain.drift import compare
    from onnx_explain.sanity import sanity_check

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(args.items, 3, args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        a = Path(tmp) / "a.onnx"
        torch.onnx.export(net, (x[:1],), str(a), dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})  # fmt: skip
        b = Path(tmp) / "b.onnx"
        quantize_dynamic(str(a), str(b), weight_type=QuantType.QInt8)
        ma, mb = oe.load(a), oe.load(b)
        xs = x.numpy()
        f = Path(tmp) / "f.onnx"  # a float twin: the same graph saved again (an ORT pass as cheap as A's)
        f.write_bytes(a.read_bytes())
        mf = oe.load(f)
        t = interleaved(
            {
                "explain A": lambda: oe.explain(ma, xs, "gradient"),
                "explain B": lambda: oe.explain(mb, xs, "gradient"),
                "explain F": lambda: oe.explain(mf, xs, "gradient"),
                "predict A": lambda: ma.predict(xs),
                "predict B": lambda: mb.predict(xs),
                "predict F": lambda: mf.predict(xs),
                "diff A B": lambda: compare(ma, mb, xs, ["gradient"]),
                "diff A F": lambda: compare(ma, mf, xs, ["gradient"]),
            },
            args.repeats,
        )
        t_a, t_b, t_diff = t["explain A"], t["explain B"], t["diff A B"]
        small = (
            np.random.default_rng(1)
            .normal(size=(8, 3, args.sanity_size, args.sanity_size))
            .astype(np.float32)
        )
        t_one = median_time(lambda: oe.explain(ma, small, "gradient"), args.repeats)
        t_san = median_time(lambda: sanity_check(ma, small, "gradient", layers=args.layers), args.repeats)
    lines = [
        "# Release audits: the cost of diff and of the sanity check",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}. ResNet-18 (random weights) "
        f"and its onnxruntime quantize_dynamic int8 build; gradient; median of {args.repeats} interleaved runs after a warm-up.",
        f"Command: `python benchmarks/bench_release.py --items {args.items} --size {args.size} --layers {args.layers} --sanity-size {args.sanity_size}`",
        "",
        "| what | time (s) | reference (s) | ratio | target |",
        "|---|---|---|---|---|",
        f"| diff A vs int8 B, {args.items} images of {args.size}² | {t_diff:.2f} | explain A {t_a:.2f} + explain B {t_b:.2f} = {t_a + t_b:.2f} | "
        f"{t_diff / (t_a + t_b):.2f} | ≤ 2.2 |",
        f"| diff A vs float twin F | {t['diff A F']:.2f} | explain A {t_a:.2f} + explain F {t['explain F']:.2f} = {t_a + t['explain F']:.2f} | "
        f"{t['diff A F'] / (t_a + t['explain F']):.2f} | ≤ 2.2 |",
        f"| sanity check, {args.layers} layers, 8 images of {args.sanity_size}² | {t_san:.2f} | one explanation {t_one:.2f} | {t_san / t_one:.2f} | "
        f"≤ {args.layers + 1} |",
        "",
        "Where diff's time goes: the two explanations, and the two onnxruntime prediction passes (the deployed "
        "numbers the prediction agreement compares):",
        "",
        "| pair | explain A | explain B | ORT predict A | ORT predict B | floor: their sum | diff | diff / floor |",
        "|---|---|---|---|---|---|---|---|",
        f"| A vs int8 B | {t_a:.2f} | {t_b:.2f} | {t['predict A']:.2f} | {t['predict B']:.2f} | "
        f"{t_a + t_b + t['predict A'] + t['predict B']:.2f} | {t_diff:.2f} | "
        f"{t_diff / (t_a + t_b + t['predict A'] + t['predict B']):.2f} |",
        f"| A vs float F | {t_a:.2f} | {t['explain F']:.2f} | {t['predict A']:.2f} | {t['predict F']:.2f} | "
        f"{t_a + t['explain F'] + t['predict A'] + t['predict F']:.2f} | {t['diff A F']:.2f} | "
        f"{t['diff A F'] / (t_a + t['explain F'] + t['predict A'] + t['predict F']):.2f} |",
    ]  # fmt: skip
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
