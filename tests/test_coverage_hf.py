"""The tiniest cases of the coverage tool (``benchmarks/conversion_coverage.py``) in CI: a tiny random BERT through
both torch exporters and a tiny ViT through the legacy one. Each pair must convert with parity against
onnxruntime — on every sample with its own padding mask — and its attribution (gradient x input at the
token embedding; the input gradient for images) must equal autograd on the source model, cos >= 0.999,
with exactly zero at the padded positions."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import ROOT

pytest.importorskip("transformers")
# by path, under its own name: ``coverage`` is also the name of coverage.py, which pytest-cov imports
_spec = importlib.util.spec_from_file_location(
    "oe_coverage_tool", ROOT / "benchmarks" / "conversion_coverage.py"
)
coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coverage)


@pytest.mark.parametrize(
    "arch,exporter",
    [("bert", "legacy"), ("bert", "dynamo"), ("vit", "legacy")],
    ids=["bert-legacy", "bert-dynamo", "vit-legacy"],
)
def test_tiny_hf_model_converts_with_exact_attribution(arch, exporter, tmp_path):
    row = coverage.run_case("hf", arch, exporter, seed=0, workdir=tmp_path)
    assert row["status"] == "ok", row.get("reason", row)
    assert row["parity"] <= coverage.PARITY_RTOL
    assert row["parity_per_sample"] <= 1e-5  # every sample with its own mask, against onnxruntime
    assert row["cos"] >= coverage.COS_MIN
    if arch == "bert":
        assert row["padded_max"] == 0.0  # masked-out tokens cannot move the prediction
