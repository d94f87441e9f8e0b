"""Start-up of the command line, and which heavy modules each path imports (issue 26 §4).

    python benchmarks/bench_startup.py              # 5 fresh processes per command -> results/startup.md
    python benchmarks/bench_startup.py --repeats 3  # quicker

Each command runs in a fresh interpreter on the bundled digits CNN and samples (``onnx_explain/data``),
``--heatmaps none``, the way a user types it; the wall time is the median over the repeats, interleaved. A
second run of each command, in-process through click with ``standalone_mode=False``, reports whether
``torch``, ``onnx2torch`` and ``torchvision`` were imported: the paths that need no torch (``--help``,
``info --no-convert``, black-box methods, ``evaluate``) should not import it. ``python -c pass`` and
``import torch`` are timed too, as the floors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "onnx_explain" / "data"
HEAVY = ("torch", "onnx2torch", "torchvision")

PROBE = """
import json, sys
from onnx_explain.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
print("@@" + json.dumps({m: m in sys.modules for m in %r}))
"""


def commands(work: Path) -> dict[str, list[str]]:
    model, x = str(DATA / "digits.onnx"), str(DATA / "digits.npy")
    out = str(work / "out")
    return {
        "--help": ["--help"],
        "info --no-convert": ["info", model, "--no-convert"],
        "info (converts, parity check)": ["info", model],
        "explain -m occlusion": ["explain", model, x, "-m", "occlusion", "--heatmaps", "none", "--out", out + "_occ"],
        "explain -m gradient": ["explain", model, x, "-m", "gradient", "--heatmaps", "none", "--out", out + "_grad"],
        "evaluate (deletion)": ["evaluate", model, "-a", out + "_grad", "--metric", "deletion", "--out",
                                str(work / "eval.json")],
    }  # fmt: skip


def _wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {r.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def _imported(args: list[str]) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE % (HEAVY,), *args], capture_output=True, text=True)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("@@")), None)
    if line is None:
        raise SystemExit(f"{args} gave no import report: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(line[2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "startup.md"))
    args = ap.parse_args()
    exe = Path(sys.executable).with_name("onnx-explain")
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "onnx_explain"]
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        work = Path(tmp)
        cmds = commands(work)
        floors = {"python -c pass": [sys.executable, "-c", "pass"],
                  "python -c 'import torch'": [sys.executable, "-c", "import torch"]}  # fmt: skip
        runs = {**{k: v for k, v in floors.items()}, **{k: cli + v for k, v in cmds.items()}}
        times = {k: [] for k in runs}
        for _ in range(args.repeats):
            for name, argv in runs.items():  # in order: evaluate reads what explain -m gradient wrote
                times[name].append(_wall(argv))
        imported = {name: _imported(a) for name, a in cmds.items()}
    lines = [
        "# Start-up of the command line (`benchmarks/bench_startup.py`)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPU cores "
        f"({platform.machine()}), Python {platform.python_version()}; the bundled digits CNN and its 8 "
        f"samples, `--heatmaps none`; median wall seconds of {args.repeats} fresh processes, interleaved; "
        "load average at the end "
        f"{os.getloadavg()[0]:.1f}.",
        "",
        "| command | seconds (median) | min | imports torch | onnx2torch | torchvision |",
        "|---|---|---|---|---|---|",
    ]
    for name, ts in times.items():
        imp = imported.get(name)
        marks = ["–"] * 3 if imp is None else ["yes" if imp[m] else "no" for m in HEAVY]
        lines.append(
            f"| `{name}` | {statistics.median(ts):.2f} | {min(ts):.2f} | " + " | ".join(marks) + " |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
