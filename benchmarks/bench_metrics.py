"""Evaluation speed: onnx-explain (onnxruntime, every step batched) vs Quantus and vs the onnxruntime floor.

    python benchmarks/bench_metrics.py                 # ResNet-18, 224x224, 1 and 8 images
    python benchmarks/bench_metrics.py --images 1 --repeats 3

Settings, identical for all three:
- pixel flipping: 98 steps of 1536 elements (= 512 pixels x 3 channels), zero baseline, logits;
  Quantus ``PixelFlipping(features_in_step=1568, perturb_baseline=0.0, normalise=False, abs=False)``;
- region perturbation: 8x8 patches, 100 regions, MoRF, zero baseline;
  Quantus ``RegionPerturbation(patch_size=8, regions_evaluation=100, ...)``.
The floor is one onnxruntime pass over all perturbed inputs, precomputed, in the same batch size.
The numbers of onnx-explain and Quantus are checked to agree (float32 tolerance) before timing.
Results go to ``benchmarks/results/metrics.md``.
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


def main() -> None:
    import torchvision

    import onnx_explain as oe

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default=str(HERE / "results" / "metrics.md"))
    args = ap.parse_args()

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "resnet18.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 224, 224),), path, dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    model = oe.load(path)
    session = model.runtime.session()
    bs = args.batch_size
    rows = []
    for n_img in args.images:
        rng = np.random.default_rng(n_img)
        x = rng.standard_normal((n_img, 3, 224, 224)).astype(np.float32)
        a = rng.standard_normal(x.shape).astype(np.float32)
        y = model.predict(x).argmax(1)

        configs = _configs(model, net, x, a, y, bs)
        for name, (ours, theirs, key, steps) in configs.items():
            got = ours()
            ref = np.asarray(theirs())
            np.testing.assert_allclose(got[key], ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
            # the floor: every perturbed input prepared beforehand, one batched onnxruntime pass
            curve_inputs = _perturbed_inputs(x, a, name, steps)

            def floor(curve_inputs=curve_inputs):
                for s in range(0, len(curve_inputs), bs):
                    session.run(None, {"x": curve_inputs[s : s + bs]})

            times = {"ours": [], "quantus": [], "floor": []}
            for _ in range(args.repeats):
                for k, fn in (("floor", floor), ("ours", ours), ("quantus", theirs)):
                    t = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t)
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append((name, n_img, med))
            print(name, n_img, med, flush=True)

    lines = [
        "# Evaluation: onnx-explain vs Quantus and the onnxruntime floor",
        "",
        f"Machine: {os.cpu_count()} CPU cores. ResNet-18 (random weights), 224x224, logits, zero baseline, batch size {bs},",
        f"median of {args.repeats} interleaved runs. The curves of onnx-explain and Quantus agree before timing.",
        "Command: `python benchmarks/bench_metrics.py`",
        "",
        "| metric | images | floor (s) | onnx-explain (s) | Quantus (s) | Quantus / ours | ours / floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, n_img, m in rows:
        lines.append(f"| {name} | {n_img} | {m['floor']:.2f} | {m['ours']:.2f} | {m['quantus']:.2f} | "
                     f"{m['quantus'] / m['ours']:.1f}x | {m['ours'] / m['floor']:.2f} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


def _configs(model, net, x, a, y, bs):
    """name -> (onnx-explain call, Quantus call, key of the comparable curve, steps)."""
    import quantus

    import onnx_explain as oe

    return {
        "pixel flipping (96 x 1568 el.)": (
            lambda: oe.evaluate(model, x, a, "pixel_flipping", target=y, mode="feature", pixels_per_step=1568, batch_size=bs),
            lambda: quantus.PixelFlipping(features_in_step=1568, perturb_baseline=0.0, normalise=False, abs=False,
                                          disable_warnings=True)(model=net, x_batch=x, y_batch=y, a_batch=a, softmax=False,
                                                                 channel_first=True, device="cpu"),
            "quantus_curve", 96,
        ),
        "region perturbation (100 x 8x8)": (
            lambda: oe.evaluate(model, x, a, "region_perturbation", target=y, region=8, n_regions=100, batch_size=bs),
            lambda: quantus.RegionPerturbation(patch_size=8, regions_evaluation=100, perturb_baseline=0.0, normalise=False,
                                               abs=False, disable_warnings=True)(model=net, x_batch=x, y_batch=y, a_batch=a,
                                                                                 softmax=False, channel_first=True, device="cpu"),
            "quantus_curve", 100,
        ),
    }  # fmt: skip


def _perturbed_inputs(x, a, name, steps):
    """All perturbed inputs of the curve (step 0 included), built without the model."""
    B = len(x)
    flat = x.reshape(B, -1)
    if name.startswith("pixel"):
        order = np.argsort(-a.reshape(B, -1), 1, kind="stable")
        per = 1568
        out = []
        for b in range(B):
            cur = flat[b].copy()
            out.append(cur.copy())
            for t in range(steps):
                cur[order[b, t * per : (t + 1) * per]] = 0
                out.append(cur.copy())
        return np.stack(out).reshape(-1, *x.shape[1:])
    sums = a.reshape(B, 3, 28, 8, 28, 8).sum((1, 3, 5)).reshape(B, -1)
    order = np.argsort(-sums, 1, kind="stable")
    out = []
    for b in range(B):
        cur = x[b].copy()
        out.append(cur.copy())
        for t in range(steps):
            r, c = divmod(order[b, t], 28)
            cur[:, r * 8 : r * 8 + 8, c * 8 : c * 8 + 8] = 0
            out.append(cur.copy())
    return np.stack(out)


if __name__ == "__main__":
    main()
