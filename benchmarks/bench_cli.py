"""The command line against the library on the same work (issue 16 §1: the CLI at library speed).

    python benchmarks/bench_cli.py                       # both jobs, 3 interleaved repeats -> results/cli.md
    python benchmarks/bench_cli.py --quick               # smaller jobs, one repeat, printed only
    python benchmarks/bench_cli.py --before 2a70d26      # also time the command of an earlier commit

Two jobs, as the issue states them:

- digits: the bundled CNN (``models/digits.onnx``), 320 items of one ``.npy`` file (the bundled samples
  tiled, with a little noise), SmoothGrad n = 20;
- resnet18: torchvision ResNet-18 with random weights exported to ONNX (opset 17, dynamic batch), 32 PNG
  images of 224x224 with ImageNet normalisation, gradient.

For each job it times, in one run and interleaved:

- library: ``onnx_explain.explain(model, x, method, ...)`` over all items at once, the model loaded and
  converted beforehand, after a warm-up (the work the command does, without reading, writing or start-up);
- start-up: ``onnx-explain explain`` on one item with ``--heatmaps none``, end to end in a fresh process
  (imports, model loading, conversion and parity check, one item);
- the command end to end in a fresh process, once per ``--heatmaps`` mode (``panel`` is the default),
  and with ``--before REV`` the same command of the package at that commit (``git archive``, nothing in the
  work tree changes).

Target: command <= 1.3 x library + start-up, and start-up <= 6 s.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODES = ("panel", "map", "none")


def digits_job(tmp: Path, n: int) -> dict:
    x = np.load(ROOT / "models" / "samples" / "digits.npy")
    rng = np.random.default_rng(0)
    xs = (np.concatenate([x] * (n // len(x) + 1))[:n] + rng.normal(0, 0.05, (n, *x.shape[1:]))).astype(
        np.float32
    )
    np.save(tmp / "digits320.npy", xs)
    np.save(tmp / "digits1.npy", xs[:1])
    return {"name": f"digits CNN, {n} items, SmoothGrad n = 20", "model": ROOT / "models" / "digits.onnx",
            "inputs": [tmp / "digits320.npy"], "one": [tmp / "digits1.npy"], "method": "smoothgrad",
            "flags": ["--samples", "20"], "options": {"n_samples": 20}, "prep": {}}  # fmt: skip


IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def resnet_job(tmp: Path, n: int) -> dict:
    import torch
    import torchvision
    from PIL import Image

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    path = tmp / "resnet18.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    folder, one = tmp / "images", tmp / "one"
    folder.mkdir()
    one.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):  # smooth random pictures (noise would make PNG reading the bottleneck)
        small = rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)
        Image.fromarray(small).resize((224, 224), Image.BICUBIC).save(folder / f"img{i:03d}.png")
    shutil.copy(folder / "img000.png", one / "img000.png")
    flags = ["--mean", ",".join(map(str, IMAGENET["mean"])), "--std", ",".join(map(str, IMAGENET["std"]))]
    return {"name": f"ResNet-18 (random weights), {n} images 224x224, gradient", "model": path,
            "inputs": [folder], "one": [one], "method": "gradient", "flags": flags, "options": {},
            "prep": IMAGENET}  # fmt: skip


def library_seconds(job: dict, repeats: int) -> list[float]:
    """``explain`` over every item at once, model loaded and converted first, after a warm-up."""
    import onnx_explain as oe
    from onnx_explain.app.io import Preprocess, read_items

    model = oe.load(job["model"])
    model.torch_module(space="logit")
    items = read_items(job["inputs"], Preprocess.from_model(model.input, job["prep"]), model.input)
    x = np.stack([model.validate_input(it.x[None])[0] for it in items])

    def once() -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        oe.explain(model, x, job["method"], batch_size=64, seed=0, **job["options"])
        return time.perf_counter() - t, time.process_time() - c

    first = once()  # the fresh process's first call: torch's kernels and allocator warm up, as in the command
    return first, [once() for _ in range(repeats)]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def command_seconds(
    job: dict, out: Path, inputs, extra=(), pythonpath: str | None = None
) -> tuple[float, float]:
    """(wall, CPU) seconds of the command in a fresh process."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "onnx_explain", "explain", str(job["model"]), *map(str, inputs), "-m",
           job["method"], *job["flags"], "--out", str(out), "-q", *extra]  # fmt: skip
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    t, c = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=pythonpath or ROOT)
    seconds, cpu = time.perf_counter() - t, _children_cpu() - c
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return seconds, cpu


IMPORTS = {
    "python": "pass",
    "torch": "import torch",
    "torch + onnx2torch": "import torch, onnx2torch",
    "the command's modules": "import onnx_explain.cli.explain, onnx_explain.model, onnx_explain.convert.checked, "
    "onnx_explain.explainer, onnx_explain.app.batch, onnxruntime",
}


def import_seconds(repeats: int) -> dict[str, float]:
    """Wall seconds of fresh interpreters importing what a run imports (the bulk of the start-up)."""
    out = {}
    for name, stmt in IMPORTS.items():
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", stmt], check=True, cwd=ROOT)
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times)
    return out


def checkout(rev: str, tmp: Path) -> str:
    """The package at ``rev`` in a folder of its own (``git archive``: the work tree is not touched)."""
    dest = tmp / f"rev-{rev}"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "onnx_explain"], capture_output=True,
                             check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return str(dest)


def bench(job: dict, tmp: Path, repeats: int, before: str | None) -> dict:
    runs: dict[str, list] = {"startup": [], **{m: [] for m in MODES}}
    old = checkout(before, tmp) if before else None
    if old:
        runs["before"] = []
    first, runs["library"] = library_seconds(job, repeats)
    for _ in range(repeats):
        runs["startup"].append(command_seconds(job, tmp / "out", job["one"], ["--heatmaps", "none"]))
        for mode in MODES:
            runs[mode].append(command_seconds(job, tmp / "out", job["inputs"], ["--heatmaps", mode]))
        if old:  # the earlier command has no --heatmaps: it always drew the map and the panel
            runs["before"].append(command_seconds(job, tmp / "out", job["inputs"], pythonpath=old))
    wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu = {f"{k}_cpu": statistics.median(c for _, c in v) for k, v in runs.items()}
    load = os.getloadavg()[0]
    return {"job": job["name"], "repeats": repeats, **wall, **cpu, "library_first": first[0], "load": load,
            "runs": runs}  # fmt: skip


def table(rows: list[dict], before: str | None) -> list[str]:
    lines = [
        "Wall-clock seconds (median):",
        "",
        "| job | library | library, first call | start-up | command, `--heatmaps panel` (default) | `map` | `none` | "
        "(panel − start-up) / library | budget 1.3 × library + start-up | met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        budget = 1.3 * r["library"] + r["startup"]
        ok = r["panel"] <= budget and r["startup"] <= 6
        lines.append(f"| {r['job']} | {r['library']:.2f} | {r['library_first']:.2f} | {r['startup']:.2f} | "
                     f"{r['panel']:.2f} | {r['map']:.2f} | "
                     f"{r['none']:.2f} | {(r['panel'] - r['startup']) / r['library']:.2f} | {budget:.2f} | "
                     f"{'yes' if ok else 'no'} |")  # fmt: skip
    lines += ["", "CPU seconds (user + system, all threads; less sensitive to other load on the machine):", "",
              "| job | library | start-up | panel | map | none | (panel − start-up) / library |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['job']} | {r['library_cpu']:.2f} | {r['startup_cpu']:.2f} | {r['panel_cpu']:.2f} | "
                     f"{r['map_cpu']:.2f} | {r['none_cpu']:.2f} | "
                     f"{(r['panel_cpu'] - r['startup_cpu']) / r['library_cpu']:.2f} |")  # fmt: skip
    if before:
        lines += ["", f"The same command at `{before}`" + (" (a matplotlib panel per item, deflated npz):" if before.startswith("2a70d26") else ":"),
                  "", "| job | before, wall (s) | now, panel, wall (s) | speed-up | before, CPU (s) | now, CPU (s) |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            lines.append(f"| {r['job']} | {r['before']:.2f} | {r['panel']:.2f} | {r['before'] / r['panel']:.1f}× | "
                         f"{r['before_cpu']:.2f} | {r['panel_cpu']:.2f} |")  # fmt: skip
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="64 digits items and 8 images, one repeat; print only"
    )
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--jobs", nargs="+", choices=["digits", "resnet18"], default=["digits", "resnet18"])
    ap.add_argument("--before", metavar="REV", help="also time the command of the package at this commit")
    ap.add_argument("--out", default=None, help="Markdown result (default results/cli.md; none with --quick)")
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    sizes = {"digits": 64 if args.quick else 320, "resnet18": 8 if args.quick else 32}
    import torch

    imports = import_seconds(repeats)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.jobs:
            work = Path(tmp) / name
            work.mkdir()
            job = (digits_job if name == "digits" else resnet_job)(work, sizes[name])
            rows.append(bench(job, work, repeats, args.before))
            print(rows[-1], flush=True)
    loads = ", ".join(f"{r['load']:.1f}" for r in rows)
    lines = [
        "# The command line against the library (issue 16 §1)",
        "",
        f"Machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} torch threads. "
        f"Median of {repeats} interleaved runs; the library after a warm-up. 1-minute load average at the end of "
        f"each job: {loads} (other work on the machine inflates wall times).",
        f"Command: `python benchmarks/bench_cli.py{' --quick' if args.quick else ''}"
        f"{f' --before {args.before}' if args.before else ''}`",
        "",
        *table(rows, args.before),
        "",
        "Start-up is mostly imports (fresh interpreters, wall seconds): "
        + "; ".join(f"{k} {v:.2f}" for k, v in imports.items())
        + ".",
        "",
        "library: `onnx_explain.explain` over all items at once (model loaded and converted, no I/O), median after "
        "a warm-up; library, first call: that warm-up call, which pays what a fresh process pays. start-up: "
        "the command on one item with `--heatmaps none` (imports, load, conversion and parity check). command: "
        "`onnx-explain explain` end to end in a fresh process, writing `.npz`, manifest and, per `--heatmaps`, "
        "the map and the panel PNGs.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out or (None if args.quick else str(HERE / "results" / "cli.md"))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)


if __name__ == "__main__":
    main()
