"""Tree ensembles read out of ONNX graphs (onnx_explain.tabular): the trees reproduce onnxruntime's output
for every exporter, and TreeSHAP equals shap's TreeExplainer on the source model.

Models are trained here on small synthetic data with LightGBM, XGBoost and scikit-learn and exported by
their real converters (onnxmltools, skl2onnx): what users ship, not hand-written graphs.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_explain as oe
from onnx_explain.tabular import tree_view
from onnx_explain.tabular import treeshap as ts
from onnx_explain.tabular.trees import LEAF, TreeModelError, read_trees, tree_nodes

shap = pytest.importorskip("shap")
lightgbm = pytest.importorskip("lightgbm")
xgboost = pytest.importorskip("xgboost")
onnxmltools = pytest.importorskip("onnxmltools")
sk_ensemble = pytest.importorskip("sklearn.ensemble")
from onnxmltools.convert.common.data_types import FloatTensorType  # noqa: E402
from skl2onnx import to_onnx  # noqa: E402
from sklearn.datasets import make_classification  # noqa: E402
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning)
F = 8


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(400, F, n_informative=5, random_state=0, n_classes=3, n_clusters_per_class=1)
    X = X.astype(np.float32)
    return X, y, (y > 0).astype(int), (X[:, 0] + X[:, 1] * X[:, 2]).astype(np.float32)


def _lgb(m):
    return onnxmltools.convert_lightgbm(m, initial_types=[("x", FloatTensorType([None, F]))], zipmap=False)


def _lgb_reg(m):
    return onnxmltools.convert_lightgbm(m, initial_types=[("x", FloatTensorType([None, F]))])


def _xgb(m):
    return onnxmltools.convert_xgboost(m, initial_types=[("x", FloatTensorType([None, F]))])


def _skl(m, X):
    return to_onnx(m, X[:1], options={id(m): {"zipmap": False}} if hasattr(m, "classes_") else None)


# name -> (make the source model from data, export it); "pd": shap's path-dependent game uses the training
# data's node counts as cover for these (LightGBM without bagging, scikit-learn without subsampling), so our
# cover counted on the training rows must give the same numbers; XGBoost's cover is a hessian sum and a
# random forest's the bootstrap's, so those are checked in the interventional game only
MODELS = {
    "lightgbm-binary": (lambda X, y, yb, r: lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(X, yb), "lgb", True),
    "lightgbm-multiclass": (lambda X, y, yb, r: lightgbm.LGBMClassifier(n_estimators=8, verbose=-1).fit(X, y), "lgb", True),
    "lightgbm-regressor": (lambda X, y, yb, r: lightgbm.LGBMRegressor(n_estimators=20, verbose=-1).fit(X, r), "lgb_reg", True),
    "xgboost-binary": (lambda X, y, yb, r: xgboost.XGBClassifier(n_estimators=20, max_depth=4).fit(X, yb), "xgb", False),
    "xgboost-multiclass": (lambda X, y, yb, r: xgboost.XGBClassifier(n_estimators=8, max_depth=4).fit(X, y), "xgb", False),
    "xgboost-regressor": (lambda X, y, yb, r: xgboost.XGBRegressor(n_estimators=20, max_depth=4).fit(X, r), "xgb", False),
    "gradientboosting-binary": (lambda X, y, yb, r: sk_ensemble.GradientBoostingClassifier(n_estimators=10).fit(X, yb), "skl", True),
    "gradientboosting-regressor": (lambda X, y, yb, r: sk_ensemble.GradientBoostingRegressor(n_estimators=10).fit(X, r), "skl", True),
    "randomforest-binary": (lambda X, y, yb, r: sk_ensemble.RandomForestClassifier(10, max_depth=5, random_state=0).fit(X, yb), "skl", False),
    "randomforest-multiclass": (lambda X, y, yb, r: sk_ensemble.RandomForestClassifier(10, max_depth=5, random_state=0).fit(X, y), "skl", False),
    "randomforest-regressor": (lambda X, y, yb, r: sk_ensemble.RandomForestRegressor(10, max_depth=5, random_state=0).fit(X, r), "skl", False),
    "extratrees-multiclass": (lambda X, y, yb, r: sk_ensemble.ExtraTreesClassifier(10, max_depth=12, random_state=0).fit(X, y), "skl", False),
    "decisiontree-multiclass": (lambda X, y, yb, r: DecisionTreeClassifier(max_depth=6, random_state=0).fit(X, y), "skl", True),
    "decisiontree-regressor-deep": (lambda X, y, yb, r: DecisionTreeRegressor(max_depth=14, random_state=0).fit(X, r), "skl", True),
}  # fmt: skip
_BUILT: dict = {}


def built(name, data):
    if name not in _BUILT:
        X, y, yb, r = data
        make, kind, _ = MODELS[name]
        src = make(X, y, yb, r)
        onx = {"lgb": _lgb, "lgb_reg": _lgb_reg, "xgb": _xgb}.get(kind, lambda m: _skl(m, X))(src)
        _BUILT[name] = (src, onx)
    return _BUILT[name]


def _tree_scores(onx: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """onnxruntime's scores output of the tree node itself."""
    (node,) = tree_nodes(onx.graph)
    m = onnx.ModelProto()
    m.CopyFrom(onx)
    m.graph.output.append(helper.make_tensor_value_info(node.output[-1], TensorProto.FLOAT, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run([node.output[-1]], {s.get_inputs()[0].name: x})[0]


def _shap(ex, x, c, k):
    ref = np.asarray(ex.shap_values(x, check_additivity=False))
    if ref.ndim == 3:
        ref = ref[..., c] if ref.shape[-1] == k else ref[c]
    return ref


@pytest.mark.parametrize("name", list(MODELS))
def test_trees_reproduce_onnxruntime(name, data):
    """The tree view's prediction is onnxruntime's (scores, binary layouts, base values, NaN routing)."""
    X = data[0]
    _, onx = built(name, data)
    trees = read_trees(tree_nodes(onx.graph)[0])
    x = np.random.default_rng(1).normal(size=(300, F)).astype(np.float32) * 1.5
    x[::11, 2] = np.nan  # missing values follow each node's missing-value tracking
    x = np.concatenate([x, X[:50]])
    ref = _tree_scores(onx, x)
    got = trees.predict(x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("name", list(MODELS))
def test_interventional_equals_shap(name, data):
    X = data[0]
    src, onx = built(name, data)
    trees = read_trees(tree_nodes(onx.graph)[0])
    bg, x = X[:60], X[100:140]
    k = trees.n_outputs
    c = k - 1
    ex = shap.TreeExplainer(src, data=bg, feature_perturbation="interventional", model_output="raw")
    phi, e, margin = ts.TreeShap(trees, bg, "interventional").shap_values(x, np.full(len(x), c))
    ref = _shap(ex, x, c, k)
    scale = max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(phi, ref, atol=1e-6 * scale, rtol=0)
    np.testing.assert_allclose(phi.sum(1) + e, margin, atol=1e-9 * scale)  # local accuracy, exactly
    np.testing.assert_allclose(margin, trees.margins(x)[:, c], atol=1e-9 * scale)


@pytest.mark.parametrize("name", [n for n, (_, _, pd) in MODELS.items() if pd])
def test_path_dependent_equals_shap(name, data):
    """Cover counted on the training rows equals the cover the source model stores."""
    X = data[0]
    src, onx = built(name, data)
    trees = read_trees(tree_nodes(onx.graph)[0])
    k = trees.n_outputs
    c = k - 1
    x = X[100:140]
    ex = shap.TreeExplainer(src, feature_perturbation="tree_path_dependent")
    phi, e, margin = ts.TreeShap(trees, X, "path_dependent").shap_values(x, np.full(len(x), c))
    ref = _shap(ex, x, c, k)
    scale = max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(phi, ref, atol=1e-6 * scale, rtol=0)
    np.testing.assert_allclose(e[0], np.atleast_1d(ex.expected_value)[-1 if k > 1 else 0], atol=1e-6 * scale)
    np.testing.assert_allclose(phi.sum(1) + e, margin, atol=1e-9 * scale)


def _brute_shapley(v, d):
    phi = np.zeros(d)
    for s in range(d):
        others = [j for j in range(d) if j != s]
        for r in range(d):
            for S in itertools.combinations(others, r):
                w = math.factorial(r) * math.factorial(d - r - 1) / math.factorial(d)
                phi[s] += w * (v(set(S) | {s}) - v(set(S)))
    return phi


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_product_game_is_shapley(d):
    """The closed forms equal Shapley values by enumeration: continuous z (path-dependent) and binary z
    (interventional, every pair of patterns)."""
    rng = np.random.default_rng(d)
    for _ in range(5):
        o = rng.integers(0, 2, d).astype(float)
        z = rng.uniform(0, 1, d)
        v = lambda S, o=o, z=z: np.prod([o[j] if j in S else z[j] for j in range(d)])  # noqa: E731
        np.testing.assert_allclose(ts.product_game(o, z), _brute_shapley(v, d), atol=1e-12)
    g = ts.binary_game_table(d)
    for px, pz in itertools.product(range(1 << d), repeat=2):
        o = [(px >> j) & 1 for j in range(d)]
        z = [(pz >> j) & 1 for j in range(d)]
        v = lambda S, o=o, z=z: float(np.prod([o[j] if j in S else z[j] for j in range(d)]))  # noqa: E731
        np.testing.assert_allclose(g[px, pz], _brute_shapley(v, d), atol=1e-12)


@pytest.mark.parametrize("mode", ["interventional", "path_dependent"])
def test_long_paths_and_missing_values(mode, monkeypatch):
    """Paths longer than the tables take the row-by-row route with the same numbers; NaN rows follow the
    trees' missing-value tracking in both games (shap on the LightGBM source)."""
    from sklearn.datasets import make_regression

    X, y = make_regression(500, 12, random_state=1)
    X = X.astype(np.float32)
    X[::7, 3] = np.nan
    src = lightgbm.LGBMRegressor(n_estimators=6, num_leaves=48, min_child_samples=3, verbose=-1).fit(X, y)
    onx = onnxmltools.convert_lightgbm(src, initial_types=[("x", FloatTensorType([None, 12]))])
    trees = read_trees(tree_nodes(onx.graph)[0])
    assert trees.paths.n_slots.max() > 4
    bg = X[100:150] if mode == "interventional" else X
    x = X[:25]
    full = ts.TreeShap(trees, bg, mode).shap_values(x, np.zeros(len(x), int))
    monkeypatch.setattr(ts, "TABLE_SLOTS", 3)
    short = ts.TreeShap(trees, bg, mode)
    assert len(short.long) and short.tables
    part = short.shap_values(x, np.zeros(len(x), int))
    np.testing.assert_allclose(part[0], full[0], atol=1e-9 * np.abs(full[0]).max())
    monkeypatch.setattr(ts, "TABLE_BUDGET", 0)  # no table at all: every path row by row
    none = ts.TreeShap(trees, bg, mode)
    assert not none.tables and len(none.long) == len(trees.paths.leaf)
    np.testing.assert_allclose(
        none.shap_values(x, np.zeros(len(x), int))[0], full[0], atol=1e-9 * np.abs(full[0]).max()
    )
    ex = (
        shap.TreeExplainer(src, data=bg, feature_perturbation="interventional")
        if mode == "interventional"
        else shap.TreeExplainer(src)
    )
    ref = ex.shap_values(x, check_additivity=False)
    np.testing.assert_allclose(full[0], ref, atol=1e-6 * np.abs(ref).max())


def _to_v5(onx: onnx.ModelProto) -> onnx.ModelProto:
    """The same regressor written as ai.onnx.ml opset-5 ``TreeEnsemble`` (leaves apart from branches)."""
    t = read_trees(tree_nodes(onx.graph)[0])
    branch = np.flatnonzero(t.mode != LEAF)
    leaves = np.flatnonzero(t.mode == LEAF)
    bpos = {int(n): i for i, n in enumerate(branch)}
    lpos = {int(n): i for i, n in enumerate(leaves)}

    def ref(n):
        return (lpos[int(n)], 1) if t.mode[n] == LEAF else (bpos[int(n)], 0)

    tr = [ref(t.true_child[n]) for n in branch]
    fr = [ref(t.false_child[n]) for n in branch]
    node = helper.make_node(
        "TreeEnsemble", ["x"], ["y"], domain="ai.onnx.ml", name="v5",
        n_targets=1, aggregate_function=1, post_transform=0,
        tree_roots=[bpos[int(r)] for r in t.roots],
        nodes_featureids=t.feature[branch].tolist(),
        nodes_splits=numpy_helper.from_array(t.threshold[branch].astype(np.float32)),
        nodes_modes=numpy_helper.from_array(t.mode[branch].astype(np.uint8)),
        nodes_truenodeids=[a for a, _ in tr], nodes_trueleafs=[b for _, b in tr],
        nodes_falsenodeids=[a for a, _ in fr], nodes_falseleafs=[b for _, b in fr],
        nodes_missing_value_tracks_true=t.missing_true[branch].astype(int).tolist(),
        leaf_targetids=[0] * len(leaves),
        leaf_weights=numpy_helper.from_array(t.values[leaves, 0].astype(np.float32)),
    )  # fmt: skip
    graph = helper.make_graph(
        [node], "v5", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, F])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)]
    )
    model.ir_version = 10
    return model


def test_tree_ensemble_opset5(data, tmp_path):
    """The opset-5 op read on its own layout: onnxruntime's output and the same TreeSHAP as the v3 file."""
    X = data[0]
    src, onx = built("randomforest-regressor", data)
    v5 = _to_v5(onx)
    path = tmp_path / "v5.onnx"
    onnx.save(v5, path)
    trees5 = read_trees(v5.graph.node[0])
    x = np.concatenate([X[:80], np.where(np.arange(F) == 2, np.nan, X[80:120])]).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(trees5.predict(x), ref, rtol=1e-5, atol=1e-5)
    e = oe.explain(oe.load(path), X[:20], "treeshap", background=X[200:260])
    want = shap.TreeExplainer(src, data=X[200:260], feature_perturbation="interventional").shap_values(X[:20])
    np.testing.assert_allclose(e.attribution, want, atol=1e-5 * np.abs(want).max())


def test_explain_api_zipmap_and_auto(data, tmp_path):
    """Through the public API on a file with ZipMap: the predicted class, the margin as score, shap's
    numbers; ``auto`` picks TreeSHAP and, with no background, uses the explained rows."""
    X, y = data[0], data[1]
    src = lightgbm.LGBMClassifier(n_estimators=10, verbose=-1).fit(X, y)
    path = tmp_path / "lgb.onnx"
    onnx.save(onnxmltools.convert_lightgbm(src, initial_types=[("x", FloatTensorType([None, F]))]), path)
    model = oe.load(path)
    x, bg = X[:30], X[200:260]
    e = oe.explain(model, x, "treeshap", background=bg)
    np.testing.assert_array_equal(e.target, src.predict(x))
    ref = np.asarray(shap.TreeExplainer(src, data=bg, feature_perturbation="interventional").shap_values(x))
    np.testing.assert_allclose(e.attribution, ref[np.arange(len(x)), :, e.target], atol=1e-6)
    np.testing.assert_allclose(
        e.score, src.predict(x, raw_score=True)[np.arange(len(x)), e.target], atol=1e-5
    )
    np.testing.assert_allclose(e.attribution.sum(1) + e.extras["expected_value"], e.score, atol=1e-5)
    assert "margin" in e.extras["space"] and "SOFTMAX" in e.extras["space"]
    a = oe.explain(model, x, "auto")
    assert a.method == "treeshap" and "tree ensemble" in a.extras["auto"]
    ref_self = np.asarray(
        shap.TreeExplainer(src, data=x, feature_perturbation="interventional").shap_values(x)
    )
    np.testing.assert_allclose(a.attribution, ref_self[np.arange(len(x)), :, a.target], atol=1e-6)
    # batch independence: the background, not the batch, defines the game
    parts = np.concatenate(
        [oe.explain(model, x[i : i + 7], "treeshap", background=bg).attribution for i in range(0, 30, 7)]
    )
    np.testing.assert_allclose(parts, e.attribution, atol=1e-7)


def test_pipeline_with_scaler_and_refusals(data, tmp_path):
    """A StandardScaler before the trees is per-column: the attributions of the raw columns are shap's on
    the scaled rows. A Normalizer mixes columns: refused, naming the node. MIN aggregation: refused."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    X, yb = data[0], data[2]
    pipe = make_pipeline(StandardScaler(), sk_ensemble.GradientBoostingClassifier(n_estimators=10)).fit(X, yb)
    path = tmp_path / "pipe.onnx"
    onnx.save(to_onnx(pipe, X[:1], options={"zipmap": False}), path)
    scaler, gb = pipe.steps[0][1], pipe.steps[1][1]
    bg = X[:50]
    e = oe.explain(oe.load(path), X[100:120], "treeshap", target=1, background=bg)
    ref = shap.TreeExplainer(
        gb, data=scaler.transform(bg), feature_perturbation="interventional"
    ).shap_values(scaler.transform(X[100:120]))
    np.testing.assert_allclose(e.attribution, ref, atol=1e-5)

    bad = make_pipeline(Normalizer(), sk_ensemble.GradientBoostingClassifier(n_estimators=5)).fit(X, yb)
    path2 = tmp_path / "norm.onnx"
    onnx.save(to_onnx(bad, X[:1], options={"zipmap": False}), path2)
    with pytest.raises(TreeModelError, match=r"\(Normalizer\) mixes or changes columns"):
        oe.explain(oe.load(path2), X[:3], "treeshap")
    with pytest.raises(oe.errors.OptionError, match="path_dependent TreeSHAP needs background"):
        oe.explain(oe.load(path), X[:3], "treeshap", feature_perturbation="path_dependent")

    onx = onnx.ModelProto()
    onx.CopyFrom(built("randomforest-regressor", data)[1])
    tree_nodes(onx.graph)[0].attribute.append(helper.make_attribute("aggregate_function", "MIN"))
    path3 = tmp_path / "min.onnx"
    onnx.save(onx, path3)
    t = tree_view(oe.load(path3)).trees
    ref = ort.InferenceSession(str(path3), providers=["CPUExecutionProvider"]).run(None, {"X": X[:40]})[0]
    np.testing.assert_allclose(t.predict(X[:40]), ref, rtol=1e-5)  # predicted exactly, never attributed
    with pytest.raises(TreeModelError, match="aggregates its trees by MIN"):
        oe.explain(oe.load(path3), X[:3], "treeshap")


def test_output_after_the_trees_must_be_theirs(data, tmp_path):
    """A graph that rescales the trees' scores before its output is refused: the margin would not be
    what the output is made of."""
    onx = onnx.ModelProto()
    onx.CopyFrom(built("xgboost-regressor", data)[1])
    g = onx.graph
    g.initializer.append(numpy_helper.from_array(np.array([2.0], np.float32), "two"))
    old = g.output[0].name
    for n in g.node:
        for i, o in enumerate(n.output):
            if o == old:
                n.output[i] = "raw"
    g.node.append(helper.make_node("Mul", ["raw", "two"], [old]))
    onx.opset_import.append(helper.make_opsetid("", 17))
    path = tmp_path / "scaled.onnx"
    onnx.save(onx, path)
    with pytest.raises(oe.errors.OnnxExplainError, match="differs from the scores of node"):
        oe.explain(oe.load(path), data[0][:5], "treeshap")


@pytest.mark.parametrize("library", ["lightgbm", "xgboost"])
def test_cli_csv_with_header_and_missing_values(library, data, tmp_path):
    """CSV in (a header, empty cells as missing values), -m auto: TreeSHAP against every row of the table,
    equal to the API and to shap on the source; path-dependent without --background is one line and exit 2,
    nothing written."""
    import json

    from click.testing import CliRunner

    from onnx_explain.cli import main

    X = data[0][:40].copy()
    X[3, 2] = np.nan
    types = [("x", FloatTensorType([None, F]))]
    if library == "lightgbm":
        src = lightgbm.LGBMClassifier(n_estimators=8, min_child_samples=5, verbose=-1).fit(data[0], data[2])
        onx = onnxmltools.convert_lightgbm(src, initial_types=types)
    else:
        src = xgboost.XGBClassifier(n_estimators=8, max_depth=3).fit(data[0], data[2])
        onx = onnxmltools.convert_xgboost(src, initial_types=types)
    model = tmp_path / "m.onnx"
    onnx.save(onx, model)
    names = [f"f{i}" for i in range(F)]
    table = tmp_path / "rows.csv"
    table.write_text(
        ",".join(names)
        + "\n"
        + "\n".join(",".join("" if np.isnan(v) else repr(float(v)) for v in r) for r in X)
    )
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["explain", str(model), str(table), "-m", "auto", "-o", str(out), "-q",
                                  "--heatmaps", "none"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "method auto: treeshap" in r.output
    want = oe.explain(oe.load(model), X, "treeshap", background=X)
    # against shap on the source, on rows without the missing value: LightGBM trained without NaN reads NaN
    # as 0 while the exported trees send it to the true side (onnxruntime, which we follow, is the file)
    clean = np.delete(X, 3, axis=0)
    ours = oe.explain(oe.load(model), clean, "treeshap", background=clean)
    ref = np.asarray(
        shap.TreeExplainer(src, data=clean, feature_perturbation="interventional").shap_values(clean)
    )
    ref = ref if ref.ndim == 2 else ref[..., 1]  # class 1's margin; class 0's is its negation
    signs = np.where(ours.target == 1, 1.0, -1.0)[:, None]
    np.testing.assert_allclose(ours.attribution, signs * ref, atol=1e-5 * np.abs(ref).max())
    for i in (0, 3, 17):
        z = np.load(out / f"rows_row{i:04d}.npz")
        np.testing.assert_allclose(z["attribution"], want.attribution[i], atol=1e-6)
        assert int(z["target"]) == want.target[i]
    # with drawings: per-row bars and the run's summary (mean |φ| per named feature, largest first)
    drawn = tmp_path / "drawn"
    r = CliRunner().invoke(
        main, ["explain", str(model), str(table), "-m", "treeshap", "-o", str(drawn), "-q"]
    )
    assert r.exit_code == 0, r.output
    assert (drawn / "rows_row0003_bars.png").is_file()
    summary = json.loads((drawn / "summary.json").read_text())
    mean_abs = np.abs(want.attribution).mean(0)
    top = int(np.argmax(mean_abs))
    assert summary["rows"] == len(X) and summary["features"][0]["name"] == names[top]
    np.testing.assert_allclose(summary["features"][0]["mean_abs"], mean_abs[top], rtol=1e-5)
    bad = tmp_path / "bad"
    r = CliRunner().invoke(main, ["explain", str(model), str(table), "-m", "treeshap", "--perturbation",
                                  "path_dependent", "-o", str(bad)])  # fmt: skip
    assert r.exit_code == 2
    assert "path_dependent TreeSHAP needs background" in r.output and "Traceback" not in r.output
    assert not list(bad.glob("*.npz"))


def test_info_names_the_exact_method(data, tmp_path):
    """`info` on a tree ensemble: no torch converter is not a failure; it names TreeSHAP (exit 0)."""
    import json

    from click.testing import CliRunner

    from onnx_explain.cli import main

    src, onx = built("lightgbm-binary", data)
    path = tmp_path / "m.onnx"
    onnx.save(onx, path)
    r = CliRunner().invoke(main, ["info", str(path)])
    assert r.exit_code == 0, r.output
    assert "exact:    treeshap: the graph is a tree ensemble (TreeEnsembleClassifier" in r.output
    assert "gradient methods and LRP do not apply" in r.output
    r = CliRunner().invoke(main, ["info", str(path), "--json"])
    assert json.loads(r.output)["exact"]["method"] == "treeshap"


def test_faithfulness_correlation_on_a_table(data, tmp_path):
    """With 8 features the default subset is 2 (a quarter), so the correlation is defined; asking for all 8
    makes every run the same: NaN, explained in ``undefined``."""
    X = data[0]
    src, onx = built("lightgbm-regressor", data)
    path = tmp_path / "m.onnx"
    onnx.save(onx, path)
    model = oe.load(path)
    e = oe.explain(model, X[:6], "treeshap", background=X[:100])
    r = oe.evaluate(model, X[:6], e.attribution, "faithfulness_correlation", n_runs=30)
    assert r["subset_size"] == 2 and np.isfinite(r["scores"]).all() and "undefined" not in r
    r = oe.evaluate(model, X[:6], e.attribution, "faithfulness_correlation", n_runs=5, subset_size=F)
    assert np.isnan(r["scores"]).all() and r["undefined"].startswith("6 of 6 sample(s)")


def test_audit_of_a_tree_model(data, tmp_path):
    """The audit of a tree ensemble runs TreeSHAP first (against the audited rows), scores it like every
    method and draws the features' mean |attribution| per method, named by the CSV header."""
    import json

    from click.testing import CliRunner

    from onnx_explain.cli import main

    src, onx = built("lightgbm-multiclass", data)
    path = tmp_path / "m.onnx"
    onnx.save(onx, path)
    table = tmp_path / "rows.csv"
    table.write_text(
        ",".join(f"f{i}" for i in range(F))
        + "\n"
        + "\n".join(",".join(map(repr, map(float, r))) for r in data[0][:20])
    )
    out = tmp_path / "audit"
    r = CliRunner().invoke(
        main, ["audit", str(path), str(table), "-o", str(out), "--metric", "faithfulness_correlation"]
    )
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert list(report["settings"]["methods"])[0] == "treeshap"
    assert "treeshap (exact, read from the graph)" in report["conversion"]["note"]
    assert np.isfinite(report["scores"]["faithfulness_correlation"]["treeshap"]["mean"])
    assert (out / "figures" / "features.png").is_file()
    assert report["inputs"]["columns"] == [f"f{i}" for i in range(F)]


def _interventional_by_enumeration(predict, x, bg):
    """Interventional Shapley values by enumerating every coalition (features in S from x, the others from
    each background row, averaged): the definition, for a few features."""
    d = x.shape[1]
    phi = np.zeros(x.shape)
    for s in range(d):
        others = [j for j in range(d) if j != s]
        for r in range(d):
            for S in itertools.combinations(others, r):
                w = math.factorial(r) * math.factorial(d - r - 1) / math.factorial(d)
                for b in bg:
                    with_s = np.repeat(b[None], len(x), 0)
                    with_s[:, list(S) + [s]] = x[:, list(S) + [s]]
                    without = with_s.copy()
                    without[:, s] = b[s]
                    phi[:, s] += w * (predict(with_s) - predict(without)) / len(bg)
    return phi


def test_membership_nodes_and_modes_of_opset5(tmp_path):
    """A hand-written TreeEnsemble-5 with BRANCH_MEMBER (a categorical split), GT and NEQ nodes and a
    missing value tracked to the true side: onnxruntime's output, and TreeSHAP equal to Shapley values by
    enumeration on onnxruntime itself."""
    node = helper.make_node(
        "TreeEnsemble", ["x"], ["y"], domain="ai.onnx.ml", n_targets=1, aggregate_function=1, post_transform=0,
        tree_roots=[0, 3],
        nodes_featureids=[0, 1, 2, 2, 0],
        nodes_splits=numpy_helper.from_array(np.array([0, 0.5, 1.0, 0.0, 3.0], np.float32)),
        nodes_modes=numpy_helper.from_array(np.array([6, 3, 0, 5, 1], np.uint8)),  # MEMBER, GT, LEQ, NEQ, LT
        nodes_truenodeids=[0, 1, 2, 3, 4], nodes_trueleafs=[1, 1, 1, 1, 1],
        nodes_falsenodeids=[1, 2, 4, 4, 5], nodes_falseleafs=[0, 0, 1, 0, 1],
        nodes_missing_value_tracks_true=[0, 1, 0, 0, 0],
        membership_values=numpy_helper.from_array(np.array([1.0, 3.0, np.nan], np.float32)),
        leaf_targetids=[0] * 6,
        leaf_weights=numpy_helper.from_array(np.array([10.0, -3.0, 2.0, 5.0, 1.0, -7.0], np.float32)),
    )  # fmt: skip
    graph = helper.make_graph([node], "member", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])])  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)]
    )
    model.ir_version = 10
    path = tmp_path / "member.onnx"
    onnx.save(model, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x = np.stack([rng.integers(0, 5, 40), rng.normal(0.5, 1, 40), rng.normal(0.5, 1, 40)], 1).astype(
        np.float32
    )
    x[::6, 1] = np.nan
    trees = read_trees(model.graph.node[0])

    def predict(rows):
        return sess.run(None, {"x": rows.astype(np.float32)})[0][:, 0]

    np.testing.assert_allclose(trees.predict(x)[:, 0], predict(x), rtol=1e-6)
    assert len(set(np.round(predict(x), 4))) >= 4  # the rows reach several leaves
    bg = x[:6]
    phi, e, margin = ts.TreeShap(trees, bg, "interventional").shap_values(x[10:20], np.zeros(10, int))
    want = _interventional_by_enumeration(predict, x[10:20], bg)
    np.testing.assert_allclose(phi, want, atol=1e-5)
    np.testing.assert_allclose(phi.sum(1) + e, predict(x[10:20]), atol=1e-5)


def test_evaluate_writes_no_bare_nan(data, tmp_path):
    """An undefined score (every run perturbs all 8 features) is written as null with the reason, and the
    JSON parses strictly; the defined metric beside it keeps its numbers."""
    import json

    from click.testing import CliRunner

    from onnx_explain.cli import main

    src, onx = built("lightgbm-regressor", data)
    model = tmp_path / "m.onnx"
    onnx.save(onx, model)
    rows = tmp_path / "rows.npy"
    np.save(rows, data[0][:12])
    out = tmp_path / "out"
    r = CliRunner().invoke(
        main, ["explain", str(model), str(rows), "-m", "treeshap", "-o", str(out), "-q", "--heatmaps", "none"]
    )
    assert r.exit_code == 0, r.output
    report = tmp_path / "eval.json"
    r = CliRunner().invoke(main, ["evaluate", str(model), "-a", str(out), "--metric", "faithfulness_correlation",
                                  "--metric", "sensitivity_n", "--option", f"faithfulness_correlation.subset_size={F}",
                                  "--option", "faithfulness_correlation.n_runs=4", "-o", str(report)])  # fmt: skip
    assert r.exit_code == 0, r.output
    text = report.read_text()
    assert "NaN" not in text
    got = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in the report"))
    fc = got["metrics"]["faithfulness_correlation"]
    assert (
        fc["mean"] is None
        and set(fc["per_item"].values()) == {None}
        and "constant over the 4 subsets" in fc["undefined"]
    )
    assert all(isinstance(v, float) for v in got["metrics"]["sensitivity_n"]["per_item"].values())
