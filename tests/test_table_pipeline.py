"""Whole scikit-learn pipelines in ONNX (skl2onnx: one input per DataFrame column, strings for categories,
ColumnTransformer with StandardScaler and OneHotEncoder, then trees or a linear model): exact SHAP per
original column, equal to shap on the fitted estimator and the transformed rows, from the API and the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

shap = pytest.importorskip("shap")
pd = pytest.importorskip("pandas")
pytest.importorskip("sklearn")
from click.testing import CliRunner  # noqa: E402
from skl2onnx import to_onnx  # noqa: E402
from skl2onnx.common.data_types import FloatTensorType, StringTensorType  # noqa: E402
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.ensemble import GradientBoostingClassifier, RandomForestRegressor  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: E402

import onnx_explain as oe  # noqa: E402
from onnx_explain.cli import main  # noqa: E402
from onnx_explain.tabular.trees import TreeModelError  # noqa: E402

COLUMNS = ["age", "income", "city", "job"]
TYPES = [("age", FloatTensorType([None, 1])), ("income", FloatTensorType([None, 1])),
         ("city", StringTensorType([None, 1])), ("job", StringTensorType([None, 1]))]  # fmt: skip


@pytest.fixture(scope="module")
def people():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({
        "age": rng.normal(40, 10, 300).astype(np.float32), "income": rng.normal(50, 20, 300).astype(np.float32),
        "city": rng.choice(["paris", "berlin", "rome"], 300), "job": rng.choice(["a", "b", "c"], 300),
    })  # fmt: skip
    y = ((df.age > 40) ^ (df.city == "rome") | (df.job == "c")).astype(int)
    return df, y


def _pipe(estimator):
    pre = ColumnTransformer(
        [("num", StandardScaler(), ["age", "income"]), ("cat", OneHotEncoder(), ["city", "job"])]
    )
    return Pipeline([("pre", pre), ("est", estimator)])


def _groups(pre, width):
    """Original column of each transformed column (scikit-learn's own names: 'cat__city_rome' ...)."""
    out = []
    for name in pre.get_feature_names_out():
        rest = name.split("__", 1)[1]
        out.append(next(i for i, c in enumerate(COLUMNS) if rest == c or rest.startswith(c + "_")))
    assert len(out) == width
    return np.asarray(out)


def _rows(df):
    return {c: df[c].to_numpy() for c in COLUMNS}


@pytest.mark.parametrize("kind", ["gradient_boosting", "random_forest_regressor", "logistic_regression"])
def test_pipeline_equals_shap_per_original_column(kind, people, tmp_path):
    df, y = people
    est = {"gradient_boosting": GradientBoostingClassifier(n_estimators=15, random_state=0),
           "random_forest_regressor": RandomForestRegressor(10, max_depth=5, random_state=0),
           "logistic_regression": LogisticRegression()}[kind]  # fmt: skip
    target = y if kind != "random_forest_regressor" else df.age * 0.1 + (df.city == "rome")
    pipe = _pipe(est).fit(df, target)
    path = tmp_path / "pipe.onnx"
    onnx.save(to_onnx(pipe, initial_types=TYPES, options={id(est): {"zipmap": False}} if kind != "random_forest_regressor" else None), path)  # fmt: skip
    pre = pipe.steps[0][1]
    x, bg = df.iloc[:25], df.iloc[100:170]
    c = 0 if kind == "random_forest_regressor" else 1
    e = oe.explain_table(path, _rows(x), background=_rows(bg), target=c)
    z, zb = pre.transform(x), pre.transform(bg)
    if kind == "logistic_regression":
        assert e.method == "linear_shap"
        ref = np.asarray(shap.LinearExplainer(est, zb).shap_values(z))
    else:
        assert e.method == "treeshap"
        ref = np.asarray(
            shap.TreeExplainer(est, data=zb, feature_perturbation="interventional").shap_values(z)
        )
        ref = ref[..., c] if ref.ndim == 3 else ref
    scale = np.abs(ref).max()
    np.testing.assert_allclose(e.extras["estimator_attribution"], ref, atol=1e-5 * scale)
    groups = _groups(pre, ref.shape[1])
    per_column = np.stack([ref[:, groups == i].sum(1) for i in range(len(COLUMNS))], axis=1)
    np.testing.assert_allclose(e.attribution, per_column, atol=1e-5 * scale)
    assert e.extras["columns"] == COLUMNS
    np.testing.assert_allclose(e.attribution.sum(1) + e.extras["expected_value"], e.score, atol=1e-4 * scale)


def test_pipeline_cli_csv_with_strings(people, tmp_path):
    """CSV with a header, strings and an empty cell: -m auto reads the whole pipeline; one bad table
    (a column missing) is one failure while the other finishes."""
    df, y = people
    est = GradientBoostingClassifier(n_estimators=10, random_state=0)
    pipe = _pipe(est).fit(df, y)
    path = tmp_path / "pipe.onnx"
    onnx.save(to_onnx(pipe, initial_types=TYPES, options={id(est): {"zipmap": False}}), path)
    rows = df.iloc[:30].copy()
    table = tmp_path / "people.csv"
    rows.to_csv(table, index=False)
    bad = tmp_path / "bad.csv"
    rows.drop(columns=["job"]).to_csv(bad, index=False)
    out = tmp_path / "out"
    r = CliRunner().invoke(
        main, ["explain", str(path), str(table), str(bad), "-m", "auto", "-o", str(out), "-q"]
    )
    assert r.exit_code == 1, r.output
    assert "30 explained, 0 skipped, 1 failed" in r.output and "no column 'job'" in r.output
    want = oe.explain_table(path, table)
    for i in (0, 7, 29):
        z = np.load(out / f"people_row{i:04d}.npz")
        np.testing.assert_allclose(z["attribution"], want.attribution[i], atol=1e-6)
        assert list(z["columns"]) == COLUMNS and z["input"][2] == rows.city.iloc[i]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 30 and {f["name"] for f in summary["features"]} == set(COLUMNS)


def test_pipeline_that_mixes_columns_is_refused(people, tmp_path):
    df, y = people
    pipe = Pipeline([("pre", ColumnTransformer([("num", StandardScaler(), ["age", "income"])])), ("pca", PCA(2)),
                     ("est", GradientBoostingClassifier(n_estimators=5))]).fit(df, y)  # fmt: skip
    path = tmp_path / "pca.onnx"
    onnx.save(to_onnx(pipe, initial_types=TYPES[:2], options={"zipmap": False}), path)
    with pytest.raises(TreeModelError, match=r"before the estimator mixes columns"):
        oe.explain_table(path, {c: df[c].to_numpy()[:5] for c in COLUMNS[:2]})
