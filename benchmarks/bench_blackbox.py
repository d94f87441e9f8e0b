"""Black-box methods on onnxruntime: speed against the floor, Captum and DIANNA (issue 15, Speed).

    python benchmarks/bench_blackbox.py                      # ResNet-18 224x224, RISE with 1000 masks
    /tmp/dvenv/bin/python benchmarks/bench_blackbox.py       # the same with DIANNA installed (a venv)
    python benchmarks/bench_blackbox.py --masks 200 --samples 100   # a quick run

ResNet-18 (torchvision, random weights) is exported once with the legacy exporter. For each method it
times, on one image, the median of ``--repeats`` runs after a warm-up:

- floor: onnxruntime alone on as many rows as the method evaluates, in the same chunks of
  ``--batch-size`` (the rows are made outside the timing): what any black-box tool must pay;
- ours: ``onnx_explain.explain(model, x, method, batch_size=...)``;
- Captum on the torch source (``perturbations_per_eval = batch size``) with the same random draws
  (``torch.manual_seed``), and the largest difference to ours;
- DIANNA's ``RISEImage`` on the same ONNX file with the same number of masks and ``p_keep``, when
  ``dianna`` imports; its masks are then given to ours (``masks=``) and the maps compared.

DIANNA is not a dependency: install it in a throwaway venv (``python -m venv /tmp/dvenv
--system-site-packages; /tmp/dvenv/bin/pip install --no-deps dianna xarray``). Results go to
``benchmarks/results/blackbox.md``.
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
sys.path.insert(0, str(HERE.parent))  # this checkout's onnx_explain, also from a venv


def build(tmp: str):
    import torchvision
    from scipy.ndimage import gaussian_filter

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    # a smooth image (blurred noise): superpixels of white noise degenerate to one segment
    noise = np.random.default_rng(1).normal(size=(1, 3, 224, 224))
    smooth = gaussian_filter(noise, sigma=(0, 0, 8, 8))
    x = torch.from_numpy((smooth / smooth.std()).astype(np.float32))
    path = Path(tmp) / "resnet18.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    return net, path, x


def median_time(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` runs; with more than one run, a warm-up run first (the session
    and the torch module are warmed up once before anything is timed)."""
    out = fn() if repeats > 1 else None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def floor(path: Path, n_rows: int, batch_size: int, repeats: int) -> float:
    """onnxruntime alone on ``n_rows`` fresh rows of 3x224x224 in chunks of ``batch_size``, through a
    session made as onnx-explain makes its own: the ``session.run`` time only (rows made outside it)."""
    from onnx_explain.runtime import make_session

    sess = make_session(str(path))
    rng = np.random.default_rng(0)
    sess.run(None, {"x": rng.normal(size=(1, 3, 224, 224)).astype(np.float32)})
    times = []
    for _ in range(repeats):
        total = 0.0
        for start in range(0, n_rows, batch_size):
            chunk = rng.normal(size=(min(batch_size, n_rows - start), 3, 224, 224)).astype(np.float32)
            t0 = time.perf_counter()
            sess.run(None, {"x": chunk})
            total += time.perf_counter() - t0
        times.append(total)
    return statistics.median(times)


def rel_err(ours, theirs) -> float:
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    return float(np.abs(np.asarray(ours) - theirs).max() / np.abs(theirs).max())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--masks", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=200, help="KernelSHAP and LIME samples")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "blackbox.md"))
    args = ap.parse_args()

    import captum.attr as ca

    import onnx_explain as oe
    from onnx_explain.features import make_groups

    bs, R = args.batch_size, args.repeats
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        net, path, x = build(tmp)
        model = oe.load(path)
        xn = x.numpy()
        with torch.no_grad():
            c = int(net(x).argmax())  # also warms the torch module up
        model.predict(xn)  # creates and warms the session up
        t = torch.tensor([c])

        def run(method, **kw):
            return lambda: oe.explain(model, xn, method, target=c, batch_size=bs, seed=0, **kw)

        # occlusion
        win, stride = (3, 32, 32), (3, 16, 16)
        t_ours, e = median_time(run("occlusion", window=win, strides=stride), R)
        n = int(e.extras["n_evaluations"])
        t_cap, a = median_time(lambda: ca.Occlusion(net).attribute(
            x, sliding_window_shapes=win, strides=stride, target=t, perturbations_per_eval=bs), R)  # fmt: skip
        rows.append(
            ("occlusion 32x32 / 16", n, floor(path, n, bs, R), t_ours, t_cap, rel_err(e.attribution, a))
        )

        # feature groups: SLIC superpixels of the image, given to Captum as the same mask
        ids, counts = make_groups("slic:100", xn, "NCHW")
        mask = ids[:, :1]
        t_ours, e = median_time(run("feature_ablation", feature_groups="slic:100"), R)
        t_cap, a = median_time(lambda: ca.FeatureAblation(net).attribute(
            x, target=t, feature_mask=mask, perturbations_per_eval=bs), R)  # fmt: skip
        rows.append((f"feature_ablation slic ({counts[0]} groups)", 1 + counts[0], floor(path, 1 + counts[0], bs, R),
                     t_ours, t_cap, rel_err(e.attribution, a)))  # fmt: skip

        for method, cls in (("kernel_shap", ca.KernelShap), ("lime", ca.Lime)):
            t_ours, e = median_time(run(method, feature_groups="slic:100", n_samples=args.samples), R)

            def captum(cls=cls):
                torch.manual_seed(0)
                return cls(net).attribute(x, target=t, feature_mask=mask, n_samples=args.samples,
                                          perturbations_per_eval=bs)  # fmt: skip

            t_cap, a = median_time(captum, R)
            rows.append((f"{method} slic, {args.samples} samples", args.samples, floor(path, args.samples, bs, R),
                         t_ours, t_cap, rel_err(e.attribution, a)))  # fmt: skip

        n_perm = 2
        t_ours, e = median_time(run("shapley_sampling", feature_groups="slic:100", n_samples=n_perm), R)

        def captum_shapley():
            torch.manual_seed(0)
            return ca.ShapleyValueSampling(net).attribute(
                x, target=t, feature_mask=mask, n_samples=n_perm, perturbations_per_eval=bs
            )

        t_cap, a = median_time(captum_shapley, R)
        n = 1 + n_perm * counts[0]
        rows.append((f"shapley_sampling slic, {n_perm} permutations", n, floor(path, n, bs, R), t_ours, t_cap,
                     rel_err(e.attribution, a)))  # fmt: skip

        # RISE against DIANNA on the same file
        t_ours, e = median_time(run("rise", n_masks=args.masks, p_keep=0.5, output="output"), R)
        dianna_t, dianna_err = None, None
        try:
            from dianna.methods.rise_image import RISEImage
        except ImportError:
            RISEImage = None
        if RISEImage is not None:
            explainer = RISEImage(n_masks=args.masks, feature_res=8, p_keep=0.5, axis_labels={0: "channels"})

            def dianna_run():
                np.random.seed(0)  # noqa: NPY002 - DIANNA draws from numpy's global generator
                return explainer.explain(str(path), xn[0], labels=[c], batch_size=bs)

            dianna_t, sal = median_time(dianna_run, R)
            same = oe.explain(model, xn, "rise", target=c, batch_size=bs, masks=explainer.masks[..., 0],
                              p_keep=0.5, output="output")  # fmt: skip
            dianna_err = rel_err(same.attribution[0, 0], sal[0])
        rows.append((f"rise {args.masks} masks", args.masks, floor(path, args.masks, bs, R), t_ours, dianna_t,
                     dianna_err))  # fmt: skip

    lines = [
        "# Black-box methods on onnxruntime: onnx-explain vs the floor, Captum and DIANNA",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), onnxruntime CPU "
        f"provider, torch {torch.__version__}. ResNet-18 (random weights), one 224x224 image, batch size {bs}, "
        f"median of {R} run(s) after a warm-up.",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        "",
        "floor = onnxruntime alone on the same number of rows in the same chunks; the reference is Captum on "
        "the torch source (same random draws) for all rows but RISE, where it is DIANNA's `RISEImage` on the "
        "same ONNX file (its masks fed to ours for the difference).",
        "",
        "| method | rows | floor (s) | onnx-explain (s) | reference (s) | ours / floor | ours / reference |"
        " max diff / max |ref| |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, n, fl, ours, ref, err in rows:
        ref_s = f"{ref:.2f}" if ref is not None else "n/a"
        ratio = f"{ours / ref:.3f}" if ref is not None else "n/a"
        err_s = f"{err:.1e}" if err is not None else "n/a"
        lines.append(
            f"| {name} | {n} | {fl:.2f} | {ours:.2f} | {ref_s} | {ours / fl:.3f} | {ratio} | {err_s} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
