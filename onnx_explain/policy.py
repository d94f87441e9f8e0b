"""Release policies: rules an audit report (or a diff) must satisfy before a build ships.

A policy is a TOML (Python 3.11+) or JSON file with a list of rules::

    [[rule]]
    check = "parity"              # the torch conversion is certified on the audited inputs
    [[rule]]
    check = "lrp_coverage"        # every node that carries relevance has a rule
    [[rule]]
    check = "sanity"              # the parameter randomisation check passes
    method = "gradient"
    [[rule]]
    check = "score"               # a metric's mean for a method
    metric = "deletion"
    method = "gradient"
    max = 0.2                     # and/or min = ...
    [[rule]]
    check = "no_errors"           # no method or metric failed
    [[rule]]
    check = "drift"               # for `diff --policy`: a measure of onnx_explain.drift.MEASURES
    measure = "spearman_abs"
    min = 0.8

Each failed rule is one line; the commands exit 4 when any fails (0–3 keep their meanings). A rule naming
something the report does not hold (a method that was not audited) fails, saying so: a policy never
passes by omission.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputFileError, OptionError

__all__ = ["CHECKS", "check_policy", "load_policy"]

CHECKS = ("parity", "lrp_coverage", "sanity", "score", "no_errors", "drift")


def load_policy(path) -> list[dict]:
    """The rules of a policy file (``.toml`` or ``.json``), checked for known checks and fields."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise InputFileError(f"{path}: TOML needs Python 3.11+; write the policy as JSON") from None
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (ValueError, TypeError) as exc:
        raise InputFileError(f"{path}: not a valid policy ({str(exc).splitlines()[0]})") from None
    rules = data.get("rule", data.get("rules")) if isinstance(data, dict) else data
    if not isinstance(rules, list) or not rules:
        raise InputFileError(f"{path}: a policy is a list of rules ([[rule]] tables)")
    for i, r in enumerate(rules):
        if not isinstance(r, dict) or r.get("check") not in CHECKS:
            raise OptionError(f"{path}: rule {i + 1} needs check = one of {', '.join(CHECKS)}")
        if r["check"] == "sanity" and "method" not in r:
            raise OptionError(f"{path}: rule {i + 1} (sanity) needs a method")
        if r["check"] in ("score", "drift") and not ({"min", "max"} & set(r)):
            raise OptionError(f"{path}: rule {i + 1} ({r['check']}) needs min and/or max")
        if r["check"] == "score" and not {"metric", "method"} <= set(r):
            raise OptionError(f"{path}: rule {i + 1} (score) needs a metric and a method")
        if r["check"] == "drift" and "measure" not in r:
            raise OptionError(f"{path}: rule {i + 1} (drift) needs a measure")
    return rules


def _bounds(value, rule, what: str) -> list[str]:
    out = []
    if value is None:
        return [f"{what} is undefined"]
    if "min" in rule and not value >= rule["min"]:
        out.append(f"{what} = {value:.4g} is below {rule['min']:g}")
    if "max" in rule and not value <= rule["max"]:
        out.append(f"{what} = {value:.4g} is above {rule['max']:g}")
    return out


def check_policy(rules: list[dict], audit: dict | None = None, drift: dict | None = None) -> list[str]:
    """One line per failed rule, against an audit report's JSON (``audit``) and/or a diff's
    (``drift``: :func:`onnx_explain.drift.compare`'s result). Rules for the other kind are skipped."""
    fails = []
    for r in rules:
        check = r["check"]
        if check == "drift":
            if drift is None:
                continue
            from .drift import failed_thresholds

            measure = r["measure"]
            if measure == "max_abs_diff":  # a largest difference: only a maximum makes sense
                fails += [
                    f"drift: {line}"
                    for line in failed_thresholds(drift, {measure: r.get("max", r.get("min"))})
                ]
            elif "min" in r:
                fails += [f"drift: {line}" for line in failed_thresholds(drift, {measure: r["min"]})]
            if "max" in r and measure != "max_abs_diff":
                for m, meas in drift["methods"].items():
                    v = meas.get(measure, {}).get("mean")
                    fails += [f"drift: {m}: {line}" for line in _bounds(v, {"max": r["max"]}, measure)]
            continue
        if audit is None:
            continue
        if check == "parity":
            conv = audit.get("conversion", {})
            if not conv.get("ok"):
                fails.append(
                    f"parity: the conversion is not certified ({conv.get('error', 'no conversion')})"
                )
        elif check == "lrp_coverage":
            cov = audit.get("lrp_coverage", {})
            if not cov.get("ok"):
                fails.append(f"lrp_coverage: {cov.get('error', 'not checked')}")
        elif check == "sanity":
            sc = (audit.get("sanity") or {}).get(r["method"])
            if sc is None:
                fails.append(
                    f"sanity: {r['method']} was not checked (not audited, or not on the converted graph)"
                )
            elif not sc.get("passed"):
                sims = ", ".join(f"{v:.2f}" for v in sc.get("mean_similarity", []))
                fails.append(
                    f"sanity: {r['method']} fails ("
                    f"{'entropy rise' if sc.get('variant') == 'efficient' else 'similarity'} {sims}; "
                    f"threshold {sc.get('threshold')})"
                )
        elif check == "score":
            s = (audit.get("scores", {}).get(r["metric"]) or {}).get(r["method"])
            if s is None:
                fails.append(f"score: {r['metric']} of {r['method']} is not in the report")
            else:
                fails += [
                    f"score: {line}" for line in _bounds(s.get("mean"), r, f"{r['metric']} of {r['method']}")
                ]
        elif check == "no_errors":
            errs = audit.get("errors") or {}
            if errs:
                k, v = next(iter(errs.items()))
                fails.append(f"no_errors: {len(errs)} failure(s), e.g. {k}: {v}")
    return fails
