"""Benchmark 6: the speed table — the methods, LRP and evaluation benchmarks in one report.

python benchmarks/speed.py            # run the three benchmarks (about 20 minutes on 2 cores), then collect
python benchmarks/speed.py --collect  # only gather the last results into results/speed.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = [("bench_methods.py", "methods.md"), ("bench_lrp.py", "lrp.md"), ("bench_metrics.py", "metrics.md")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collect", action="store_true")
    args = ap.parse_args()
    if not args.collect:
        for script, _ in PARTS:
            subprocess.run([sys.executable, str(HERE / script)], check=True)
    out = ["# Speed: onnx-explain against its floors and the reference libraries", ""]
    for script, md in PARTS:
        path = HERE / "results" / md
        body = path.read_text() if path.exists() else f"(run `python benchmarks/{script}`)\n"
        out += [body.replace("# ", "## ", 1), ""]
    (HERE / "results" / "speed.md").write_text("\n".join(out))
    print("\n".join(out))


if __name__ == "__main__":
    main()
