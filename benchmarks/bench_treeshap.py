"""TreeSHAP read from an ONNX file against shap's C++ TreeExplainer on the source model (issue 28, Speed).

    python benchmarks/bench_treeshap.py                 # 10 000 rows x 50 features, 500 trees of depth 6
    python benchmarks/bench_treeshap.py --rows 1000     # a quick run

An XGBoost regressor (500 trees, depth 6, 50 features, trained here on synthetic data with 2 threads) is
exported with onnxmltools. For each game the script times, in one process and one after the other:

- shap: ``shap.TreeExplainer(model, ...).shap_values(x)`` on the XGBoost source (C++);
- ours: the TreeSHAP engine built from the ONNX file's trees (``build``: tables, and for the
  path-dependent game the node covers counted on the 10 000 training rows, as ONNX stores no cover) and
  ``explain`` (the rows), through ``onnx_explain.explain(model, x, 'treeshap', ...)``, i.e. with the
  file's own check of the trees against onnxruntime.

Both games must agree with shap (the largest difference is printed): XGBoost's cover is a sum of
hessians, which for the squared error is 1 per training row, so our cover counted on the training rows is
the same (for other objectives the path-dependent numbers would differ by design; tests/test_treeshap.py
checks path-dependent equality where the source's cover is a count). Results go to
``benchmarks/results/treeshap.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--background", type=int, default=100)
    ap.add_argument("--trees", type=int, default=500)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--out", default=str(HERE / "results" / "treeshap.md"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import onnx
    import onnxmltools
    import shap
    import xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    import onnx_explain as oe

    rng = np.random.default_rng(0)
    F = args.features
    X = rng.normal(size=(10_000 + args.rows, F)).astype(np.float32)
    y = X[:, :10].sum(1) + np.sin(X[:, 10:20]).sum(1) + X[:, 0] * X[:, 1] + rng.normal(size=len(X))
    train, x = X[:10_000], X[10_000:]
    src = xgboost.XGBRegressor(n_estimators=args.trees, max_depth=args.depth, nthread=2).fit(
        train, y[:10_000]
    )
    onx = onnxmltools.convert_xgboost(src, initial_types=[("x", FloatTensorType([None, F]))])
    bg = train[: args.background]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "xgb.onnx"
        onnx.save(onx, path)
        for game, bg_ours, make in (
            (
                "path_dependent",
                train,
                lambda: shap.TreeExplainer(src, feature_perturbation="tree_path_dependent"),
            ),
            (
                "interventional",
                bg,
                lambda: shap.TreeExplainer(src, data=bg, feature_perturbation="interventional"),
            ),
        ):
            t0 = time.perf_counter()
            ref = make().shap_values(x, check_additivity=False)
            t_shap = time.perf_counter() - t0
            model = oe.load(path)
            t0 = time.perf_counter()
            oe.explain(
                model, x[:1], "treeshap", background=bg_ours, feature_perturbation=game
            )  # builds the tables
            t_build = time.perf_counter() - t0
            t0 = time.perf_counter()
            e = oe.explain(
                model, x, "treeshap", background=bg_ours, feature_perturbation=game, batch_size=len(x)
            )
            t_ours = time.perf_counter() - t0
            diff = float(np.abs(e.attribution - ref).max() / np.abs(ref).max())
            acc = float(np.abs(e.attribution.sum(1) + e.extras["expected_value"] - e.score).max())
            rows.append((game, t_shap, t_build, t_ours, diff, acc))
            print(f"{game}: shap {t_shap:.2f} s, ours build {t_build:.2f} s + explain {t_ours:.2f} s, "
                  f"diff {diff:.1e}, local accuracy {acc:.1e}", flush=True)  # fmt: skip
    lines = [
        "# TreeSHAP on an ONNX file vs shap's TreeExplainer on the source model",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), numpy {np.__version__}, shap {shap.__version__}, "
        f"xgboost {xgboost.__version__}. XGBoost regressor, {args.trees} trees of depth {args.depth}, {F} features; "
        f"{args.rows} explained rows; interventional background {args.background} rows; path-dependent cover "
        "counted on the 10 000 training rows. One run each, after the other, in one process.",
        f"Command: `python benchmarks/bench_treeshap.py --rows {args.rows}`",
        "",
        "| game | shap (s) | ours: build (s) | ours: explain (s) | ours total / shap | ours explain / shap | max diff / max |φ| | local accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for game, ts, tb, to, diff, acc in rows:
        lines.append(
            f"| {game} | {ts:.2f} | {tb:.2f} | {to:.2f} | {(tb + to) / ts:.2f} | {to / ts:.2f} | "
            f"{diff:.1e} | {acc:.1e} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
