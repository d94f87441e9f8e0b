"""Items per second of ``explain --engine ray`` with 1 and 2 local workers, against the local engine
(issue 16 §2).

    python benchmarks/bench_ray.py                  # 48 images -> results/ray.md
    python benchmarks/bench_ray.py --items 16       # quicker, printed only

The job: torchvision ResNet-18 with random weights exported to ONNX (``bench_cli.resnet_job``), PNG images
of 224x224 with ImageNet normalisation, ``gradient``, ``--heatmaps none``, ``--format files`` (and ``parquet``), 8 items per
call. Every configuration runs in this one process, one after the other, on a local Ray instance of 2 CPUs
started once (its start-up is not counted):

- local, 1 thread / 2 threads: :func:`explain_files` with the model loaded and converted beforehand
  (torch pinned to that many threads);
- ray, 1 worker / 2 workers: :func:`explain_ray`, one CPU and one torch/onnxruntime thread per actor;
- the same with ``--format parquet`` (shards of 24 rows), local 2 threads and Ray 2 workers, where the Ray
  workers write the shards.

``end to end`` is the wall time of a run (for Ray: actor start, model load and conversion per actor,
reading, explaining, writing). For Ray the workers also report their own times (the run's
``summary["workers"]``): each actor's set-up, its busy seconds inside its calls, and the wall-clock span from
the first call's start to the last call's end over all actors (the *window*: the run without the actors'
set-up). ``items/s in the window`` = items / window is what more workers buy once they are up; it is
bounded by the cores (two one-thread workers on two cores: at most 2x one worker's), unlike the "steady"
rate of earlier versions, which started its clock after the other workers' first blocks were done.
``utilisation`` is the workers' busy seconds over (workers x window).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_cli import IMAGENET, resnet_job  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=48)
    ap.add_argument("--out", default=str(HERE / "results" / "ray.md"))
    args = ap.parse_args()
    os.environ["ONNX_EXPLAIN_THREADS"] = "1"
    import ray
    import torch

    import onnx_explain as oe
    from onnx_explain.app.batch import explain_files
    from onnx_explain.app.ray_engine import explain_ray

    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    job = resnet_job(tmp, args.items)
    full = job["inputs"][0]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    common = {"heatmaps": "none", "group": 8, "preprocess": dict(IMAGENET)}
    model = oe.load(job["model"])
    model.torch_module(space="logit")

    parquet = {"format": "parquet", "shard_rows": 24}  # 4 shards of 24 items: a worker writes each

    def local(threads, **fmt):
        def go(inputs, out):
            torch.set_num_threads(threads)
            return explain_files(model, [inputs], out, "gradient", **common, **fmt)

        return go

    def on_ray(workers, **fmt):
        def go(inputs, out):
            return explain_ray(job["model"], [inputs], out, "gradient", workers=workers, **common, **fmt)

        return go

    configs = {"local, 1 thread": local(1), "local, 2 threads": local(2), "ray, 1 worker": on_ray(1),
               "ray, 2 workers": on_ray(2), "local, 2 threads, parquet": local(2, **parquet),
               "ray, 2 workers, parquet (written by the workers)": on_ray(2, **parquet)}  # fmt: skip
    rows = {}
    for name, go in configs.items():
        out = tmp / f"out_{len(rows)}"
        t0 = time.perf_counter()
        summary = go(full, out)
        total = time.perf_counter() - t0
        assert summary["ok"] == args.items, summary
        workers = summary.get("workers")
        if workers:  # Ray: the window from the first call's start to the last call's end, set-up excluded
            window = max(w["last"] for w in workers) - min(w["first"] for w in workers)
            setup = max(w["setup_s"] for w in workers)
            busy = sum(w["busy_s"] for w in workers) / (len(workers) * window)
        else:  # the local engine: the model was loaded and converted before the clock started
            window, setup, busy = total, 0.0, None
        rows[name] = (total, args.items / total, setup, window, args.items / window, busy)
        print(f"{name:<18} end to end {total:6.1f} s = {rows[name][1]:.2f} items/s; set-up {setup:.1f} s; "
              f"window {window:.1f} s = {rows[name][4]:.2f} items/s", flush=True)  # fmt: skip
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    base = rows["ray, 1 worker"][4]
    lines = [
        f"## ResNet-18 gradient, {args.items} images 224x224, `--heatmaps none` (`benchmarks/bench_ray.py`)",
        "",
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), shared and noisy: "
        f"one run, the configurations one after the other; load average at the end "
        f"{os.getloadavg()[0]:.1f}. Ray {ray.__version__}, torch {torch.__version__}.",
        "",
        "| engine | end to end | items/s end to end | actor set-up | window | items/s in the window | / ray 1 worker | utilisation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, (t, rate, setup, window, in_window, busy) in rows.items():
        util = "–" if busy is None else f"{busy:.0%}"
        lines.append(f"| {name} | {t:.1f} s | {rate:.2f} | {setup:.1f} s | {window:.1f} s | {in_window:.2f} | "
                     f"{in_window / base:.2f}× | {util} |")  # fmt: skip
    lines += [
        "",
        "End to end includes, for Ray, starting the actors (each imports torch and onnx2torch, loads the model,",
        f"converts it and checks parity: a fixed cost per actor that a {args.items}-item run does not hide) but not",
        "starting Ray. The window runs from the first worker call's start to the last one's end, as the workers",
        "time them (set-up excluded, waits for input included); for the local engine it is the run itself. The",
        "ratio to one Ray worker is bounded by the cores. With `--format parquet` (shards of 24 rows) the local",
        "engine writes the shards on its own thread; on Ray each worker call explains and writes one shard.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.items >= 48:
        Path(args.out).write_text(text)
        print(f"-> {args.out}")


if __name__ == "__main__":
    main()
