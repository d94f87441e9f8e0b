"""Release policies on audits and diffs (exit 4, one line per failed rule) and the JSON Schema of the
audit's report.json, validated on real reports."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from onnx_explain.cli import main
from onnx_explain.policy import check_policy, load_policy
from onnx_explain.report import SCHEMA_PATH


def _export(seed, path):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(128, 10),
    ).eval()  # fmt: skip
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "b"}})  # fmt: skip
    return path


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("policy")
    model = _export(0, tmp / "m.onnx")
    np.save(tmp / "x.npy", np.random.default_rng(0).normal(size=(4, 3, 16, 16)).astype(np.float32))
    out = tmp / "audit"
    r = CliRunner().invoke(main, ["audit", str(model), str(tmp / "x.npy"), "-o", str(out), "--method", "gradient",
                                  "--method", "lrp", "--metric", "deletion", "--sanity-layers", "3"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return tmp, model, json.loads((out / "report.json").read_text())


def test_report_matches_its_schema(audited):
    _, _, report = audited
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.validate(report, schema)
    assert report["schema_version"] == 1
    broken = {k: v for k, v in report.items() if k != "conversion"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_policy_rules_on_an_audit(audited, tmp_path):
    _, _, report = audited
    ok = [{"check": "parity"}, {"check": "lrp_coverage"}, {"check": "sanity", "method": "gradient"},
          {"check": "score", "metric": "deletion", "method": "gradient", "max": 1.0}, {"check": "no_errors"}]  # fmt: skip
    assert check_policy(ok, audit=report) == []
    dm = report["scores"]["deletion"]["gradient"]["mean"]
    bad = [{"check": "score", "metric": "deletion", "method": "gradient", "max": dm / 2},
           {"check": "sanity", "method": "smoothgrad"}]  # fmt: skip
    lines = check_policy(bad, audit=report)
    assert lines[0] == f"score: deletion of gradient = {dm:.4g} is above {dm / 2:g}"
    assert lines[1].startswith("sanity: smoothgrad was not checked")
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"rule": [{"check": "score", "metric": "deletion"}]}))
    with pytest.raises(Exception, match="needs min and/or max"):
        load_policy(p)


def test_audit_and_diff_exit_4_on_a_failed_policy(audited, tmp_path):
    tmp, model, report = audited
    policy = tmp_path / "policy.toml"
    policy.write_text('[[rule]]\ncheck = "sanity"\nmethod = "lrp"\n[[rule]]\ncheck = "parity"\n'
                      '[[rule]]\ncheck = "drift"\nmeasure = "top1"\nmin = 0.99\n')  # fmt: skip
    # LRP's default composite (z^B on the first layer) keeps its map on this net when the weights are random
    assert report["sanity"]["lrp"]["passed"] is False and report["sanity"]["gradient"]["passed"] is True
    r = CliRunner().invoke(main, ["audit", str(model), str(tmp / "x.npy"), "-o", str(tmp_path / "a"), "--method", "lrp",
                                  "--metric", "deletion", "--policy", str(policy)])  # fmt: skip
    assert r.exit_code == 4, r.output
    assert "fail: sanity: lrp fails" in r.output and "fail: parity" not in r.output
    # the verdict is in the report too: the page and report.json say which rule failed
    page = (tmp_path / "a" / "report.html").read_text()
    assert "Release policy" in page and "1 of 3 rule(s) fail" in page and "sanity: lrp fails" in page
    pol = json.loads((tmp_path / "a" / "report.json").read_text())["policy"]
    assert pol["passed"] is False and pol["rules"] == 3 and pol["failed"][0].startswith("sanity: lrp fails")
    other = _export(3, tmp_path / "other.onnx")
    r = CliRunner().invoke(main, ["diff", str(model), str(other), str(tmp / "x.npy"), "-o", str(tmp_path / "d"),
                                  "--policy", str(policy)])  # fmt: skip
    agree = json.loads((tmp_path / "d" / "report.json").read_text())["prediction"]["top1_mean"]
    assert agree < 0.99 and r.exit_code == 4, r.output
    assert "fail: drift: top1 =" in r.output
    gate = json.loads((tmp_path / "d" / "report.json").read_text())["gate"]
    assert gate["passed"] is False and gate["failed"][0].startswith("drift: top1 =")
    assert "Release gate" in (tmp_path / "d" / "report.html").read_text()
    r = CliRunner().invoke(main, ["diff", str(model), str(model), str(tmp / "x.npy"), "-o", str(tmp_path / "same"),
                                  "--policy", str(policy)])  # fmt: skip
    assert r.exit_code == 0, r.output  # a model against itself holds every drift rule
    assert json.loads((tmp_path / "same" / "report.json").read_text())["gate"]["passed"] is True
    assert "every threshold holds" in (tmp_path / "same" / "report.html").read_text()
