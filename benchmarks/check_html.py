"""Issue 23: the HTML reports checked in a real headless browser.

Builds real reports with the command line on the bundled models and samples, into a work folder:

* ``diff``: ``models/shapes.onnx`` against its onnxruntime ``quantize_dynamic`` twin (built here), three
  methods (gradient, gradcam, occlusion) and ``--metric deletion``;
* ``audit``: ``models/digits.onnx`` on the eight digit PNGs with its sanity check and a policy whose
  ``score`` rule fails (exit 4, one failed rule);
* ``audit_text``: ``models/textcls.onnx`` on its sample texts and one long text, with the tokenizer
  (coloured tokens in an iframe per text and method);
* ``explain_text``: ``explain --tokenizer`` on the same texts, the one ``explain`` output that is HTML (one
  page per text; image runs write PNGs and no page);

then runs ``benchmarks/check_html.mjs`` (puppeteer-core + @sparticuz/chromium) on every page: console and
page errors, requests and references (self-contained), images loaded and not blank, the expected sections
and their numbers against report.json, interactive elements, overflow at 1280 px, overlaps, and a
full-page screenshot per page into the work folder. It ends with a self-test of the checker: a page broken in
every way it looks for must fail each check, a page with working interactive elements must pass them all.

    python benchmarks/check_html.py                       # a fresh temporary work folder
    python benchmarks/check_html.py --workdir /tmp/html   # a chosen one (kept)
    python benchmarks/check_html.py --workdir /tmp/html --no-build   # re-check the pages already there
    ONNX_EXPLAIN_BROWSER_DIR=/path/with/node_modules python benchmarks/check_html.py

Exit 0 when every check passes, 1 when one fails, 2 when the browser or node is missing (one line says
how to install it) or a command did not do what it should.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
SAMPLES = MODELS / "samples"
NODE_SCRIPT = Path(__file__).with_suffix(".mjs")
DEFAULT_BROWSER_DIR = "/work/browser"

DIFF_METHODS = ("gradient", "gradcam", "occlusion")
DIFF_METRICS = ("deletion",)
WORST = 4
AUDIT_METHODS = ("gradient", "integrated_gradients", "lrp")
AUDIT_METRICS = ("deletion", "insertion")
TEXT_METHODS = ("gradient_x_input", "lrp")
TEXT_METRICS = ("token_deletion",)
POLICY = [
    {"check": "parity"},
    {"check": "lrp_coverage"},
    {"check": "sanity", "method": "gradient"},
    {"check": "score", "metric": "deletion", "method": "gradient", "max": 0.0001},  # fails: deletion is ~0.1
    {"check": "no_errors"},
]


def browser_missing(browser_dir: Path) -> str | None:
    """Why the browser check cannot run, or None."""
    install = (f"install the browser: mkdir -p {browser_dir} && cd {browser_dir} && npm install "
               "@sparticuz/chromium puppeteer-core (or point ONNX_EXPLAIN_BROWSER_DIR / --browser-dir at a "
               "folder holding them)")  # fmt: skip
    if shutil.which("node") is None:
        return f"no node on PATH; install Node.js 18+, then {install}"
    for pkg in ("@sparticuz/chromium", "puppeteer-core"):
        if not (browser_dir / "node_modules" / pkg / "package.json").is_file():
            return f"no {pkg} under {browser_dir}/node_modules; {install}"
    return None


def run_cli(args: list[str], log: list, expect_rc: int = 0) -> subprocess.CompletedProcess:
    """``onnx-explain ARGS`` from this checkout (python -m onnx_explain, the checkout first on the path)."""
    cmd = [sys.executable, "-m", "onnx_explain", *args]
    shown = "onnx-explain " + shlex.join(args)
    print(f"$ {shown}", flush=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    out = (p.stdout + p.stderr).rstrip()
    print("  " + out.replace("\n", "\n  "), flush=True)
    log.append({"command": shown, "rc": p.returncode, "seconds": round(dt, 1), "stderr": p.stderr.strip()})
    if p.returncode != expect_rc:
        sys.exit(f"error: `{shown}` exited {p.returncode}, expected {expect_rc}")
    return p


def build(work: Path, log: list) -> list[dict]:
    """Write the reports into ``work``; returns the browser manifest (each page and what it must show)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    work.mkdir(parents=True, exist_ok=True)
    shots = work / "screenshots"
    shots.mkdir(exist_ok=True)
    manifest = []

    # (a) diff: shapes.onnx against its dynamic int8 twin
    model_a, model_b = MODELS / "shapes.onnx", work / "shapes.int8.onnx"
    quantize_dynamic(str(model_a), str(model_b), weight_type=QuantType.QInt8)
    log.append({"command": f"python: onnxruntime.quantization.quantize_dynamic({model_a.name!r}, {model_b.name!r}, "
                           "weight_type=QuantType.QInt8)", "rc": 0})  # fmt: skip
    args = ["diff", str(model_a), str(model_b), str(SAMPLES / "shapes.npy"), "--out", str(work / "diff")]
    args += [a for m in DIFF_METHODS for a in ("-m", m)] + [a for k in DIFF_METRICS for a in ("--metric", k)]
    run_cli(args + ["--worst", str(WORST)], log)
    rep = json.loads((work / "diff" / "report.json").read_text())
    manifest.append({
        "name": "diff", "kind": "diff", "html": str(work / "diff" / "report.html"),
        "screenshot": str(shots / "diff.png"),
        "expect": {
            "models": [str(model_a), str(model_b)], "top1": rep["prediction"]["top1_mean"],
            "methods": list(DIFF_METHODS), "measures": list(next(iter(rep["methods"].values()))),
            "values": {m: {k: v["mean"] for k, v in meas.items()} for m, meas in rep["methods"].items()},
            "metrics": list(DIFF_METRICS), "worst": min(WORST, rep["items"]), "ranking": rep["ranking"],
        },
    })  # fmt: skip

    # (b) audit: digits on the digit PNGs, sanity check on, a policy that fails its score rule
    if sys.version_info >= (3, 11):
        policy = work / "policy.toml"
        policy.write_text("".join(
            "[[rule]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in rule.items()) for rule in POLICY))  # fmt: skip
    else:
        policy = work / "policy.json"
        policy.write_text(json.dumps({"rule": POLICY}, indent=1))
    pngs = sorted(str(p) for p in SAMPLES.glob("digit_*.png"))
    args = [
        "audit",
        str(MODELS / "digits.onnx"),
        *pngs,
        "--out",
        str(work / "audit"),
        "--policy",
        str(policy),
    ]
    args += [a for m in AUDIT_METHODS for a in ("--method", m)] + [
        a for k in AUDIT_METRICS for a in ("--metric", k)
    ]
    p = run_cli(args, log, expect_rc=4)
    failed = [line[len("fail: ") :] for line in p.stderr.splitlines() if line.startswith("fail: ")]
    if len(failed) != 1:
        sys.exit(f"error: the policy should fail exactly one rule, the audit printed {failed}")
    rep = json.loads((work / "audit" / "report.json").read_text())
    manifest.append({
        "name": "audit", "kind": "audit", "html": str(work / "audit" / "report.html"),
        "screenshot": str(shots / "audit.png"),
        "expect": {
            "sha256": rep["sha256"], "methods": list(AUDIT_METHODS), "metrics": list(AUDIT_METRICS),
            "sanity": {m: {"passed": v["passed"], "n": len(v["mean_similarity"])} for m, v in rep.get("sanity", {}).items()},
            "errors": [f"{k}: {v}" for k, v in rep["errors"].items()], "policy_failures": failed,
            "exit_code": p.returncode,
        },
    })  # fmt: skip

    # audit of texts: the tokens coloured per text and method, one iframe each; the sample texts and one
    # long enough (56 words) to wrap over several lines at 1280 px
    tok = MODELS / "textcls_tokenizer.json"
    samples = (MODELS / "textcls_texts.txt").read_text().splitlines()
    texts = work / "texts.txt"
    texts.write_text("\n".join([*samples, " ".join(" ".join(samples).split()[:56])]) + "\n")
    args = [
        "audit",
        str(MODELS / "textcls.onnx"),
        str(texts),
        "--tokenizer",
        str(tok),
        "--out",
        str(work / "audit_text"),
    ]
    args += [a for m in TEXT_METHODS for a in ("--method", m)] + [
        a for k in TEXT_METRICS for a in ("--metric", k)
    ]
    run_cli(args, log)
    manifest.append({
        "name": "audit_text", "kind": "audit_text", "html": str(work / "audit_text" / "report.html"),
        "screenshot": str(shots / "audit_text.png"),
        "expect": {"methods": list(TEXT_METHODS), "metrics": list(TEXT_METRICS), "texts": len(samples) + 1},
    })  # fmt: skip

    # (c) explain: its HTML output is the per-text page of --tokenizer (image runs write no page)
    args = ["explain", str(MODELS / "textcls.onnx"), str(texts), "--tokenizer", str(tok), "-m", "gradient_x_input",
            "--out", str(work / "explain_text"), "--quiet"]  # fmt: skip
    run_cli(args, log)
    for page in sorted((work / "explain_text").glob("*.html")):
        rec = json.loads(page.with_suffix(".json").read_text())
        manifest.append({
            "name": f"explain_text/{page.stem}", "kind": "explain_text", "html": str(page),
            "screenshot": str(shots / f"explain_{page.stem}.png"),
            "expect": {"tokens": rec["tokens"], "scores": rec["scores"], "text": rec["text"]},
        })  # fmt: skip
    return manifest


def self_test_pages(work: Path) -> tuple[list[dict], dict]:
    """Two pages that prove the checker: one broken in every way it looks for (each must FAIL), one with
    working interactive elements (sort button, tab, details, in-page link: everything must PASS)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    def png(a) -> str:
        buf = io.BytesIO()
        Image.fromarray(a.astype(np.uint8)).save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    noise = png(np.random.default_rng(0).integers(0, 256, (64, 64, 3)))
    blank = png(np.full((64, 64, 3), 255))
    d = work / "selftest"
    d.mkdir(parents=True, exist_ok=True)
    (d / "broken.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>broken</title>"
        "<link rel=stylesheet href='http://127.0.0.1:9/x.css'></head><body>"
        f"<img src='missing.png'><img src='{blank}'><p>score NaN</p>"
        "<div style='width:2000px'>wide</div><button>does nothing</button><a href='#nowhere'>jump</a>"
        "<p style='position:absolute;top:0;left:0'>over</p><p style='position:absolute;top:0;left:0'>lap</p>"
        "<script>console.error('boom'); undefinedFunction();</script></body></html>"
    )  # fmt: skip
    (d / "interactive.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>interactive</title></head><body>"
        f"<h2 id=top>t</h2><img src='{noise}'><details><summary>more</summary><p>hidden</p></details>"
        "<table id=t><tr><th>m</th><th>v</th></tr><tr><td>b</td><td>2</td></tr><tr><td>a</td><td>1</td></tr></table>"
        "<button onclick=\"const t=document.getElementById('t');const r=[...t.rows].slice(1);"
        "r.sort((x,y)=>x.cells[1].innerText-y.cells[1].innerText);r.forEach(x=>t.appendChild(x))\">sort</button>"
        "<div role=tab onclick=\"document.getElementById('p').hidden=!document.getElementById('p').hidden\">tab</div>"
        "<p id=p hidden>panel</p><a href='#top'>top</a></body></html>"
    )  # fmt: skip
    pages = [
        {"name": "selftest/broken", "kind": "generic", "html": str(d / "broken.html"), "screenshot": None},
        {"name": "selftest/interactive", "kind": "generic", "html": str(d / "interactive.html"), "screenshot": None},
    ]  # fmt: skip
    must_fail = {
        "selftest/broken": {
            "no request leaves the file", "no failed request", "every reference is inline (data:, #fragment)",
            "no console error", "no page error", "every <img> loaded (naturalWidth > 0)", "no blank image",
            "no NaN/undefined/None in the text", "no horizontal overflow at 1280 px", "no overlapping blocks",
            '"does nothing" (button) changes the page when clicked', "in-page link #nowhere has a target",
        },
        "selftest/interactive": set(),
    }  # fmt: skip
    return pages, must_fail


def run_self_test(work: Path, browser_dir: Path) -> int:
    pages, must_fail = self_test_pages(work)
    (work / "selftest.json").write_text(json.dumps(pages, indent=1))
    env = {**os.environ, "ONNX_EXPLAIN_BROWSER_DIR": str(browser_dir.resolve())}
    cmd = ["node", str(NODE_SCRIPT), str(work / "selftest.json"), str(work / "selftest_results.json")]
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)
    bad = 0
    for r in json.loads((work / "selftest_results.json").read_text()):
        failed = {c["name"] for c in r["checks"] if c["status"] == "FAIL"}
        passed = {c["name"] for c in r["checks"] if c["status"] == "PASS"}
        want = must_fail[r["name"]]
        missed, extra = want - failed, failed - want
        clicked = r["name"] != "selftest/interactive" or {
            "details #0 toggles on click", '"sort" (button) changes the page when clicked',
            '"tab" ([role=tab]) changes the page when clicked', "in-page link #top has a target",
        } <= passed  # fmt: skip
        ok = not missed and not extra and clicked
        bad += not ok
        print(f"self-test {r['name']}: {'ok' if ok else 'WRONG'} ({len(failed)} failed checks"
              f"{', not caught: ' + str(sorted(missed)) if missed else ''}"
              f"{', unexpected: ' + str(sorted(extra)) if extra else ''}"
              f"{'' if clicked else ', interactive elements not exercised'})")  # fmt: skip
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--workdir", type=Path, help="where the reports and screenshots go (default: a new temp folder)"
    )
    ap.add_argument("--browser-dir", type=Path, default=Path(os.environ.get("ONNX_EXPLAIN_BROWSER_DIR", DEFAULT_BROWSER_DIR)),
                    help="folder whose node_modules holds @sparticuz/chromium and puppeteer-core "
                         "($ONNX_EXPLAIN_BROWSER_DIR, default /work/browser)")  # fmt: skip
    ap.add_argument("--no-build", action="store_true", help="re-check the pages of --workdir, build nothing")
    ap.add_argument("--self-test", action="store_true",
                    help="only check the checker (every run ends with it): a broken page must fail every check, "
                         "a working interactive one pass them all")  # fmt: skip
    a = ap.parse_args(argv)

    why = browser_missing(a.browser_dir)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    work = a.workdir or Path(tempfile.mkdtemp(prefix="onnx-explain-html-"))
    work = work.resolve()
    print(f"work folder {work}", flush=True)
    if a.self_test:
        return run_self_test(work, a.browser_dir)
    log: list = []
    if a.no_build:
        manifest = json.loads((work / "manifest.json").read_text())
    else:
        manifest = build(work, log)
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
        (work / "commands.json").write_text(json.dumps(log, indent=1))
    env = {**os.environ, "ONNX_EXPLAIN_BROWSER_DIR": str(a.browser_dir.resolve())}
    cmd = ["node", str(NODE_SCRIPT), str(work / "manifest.json"), str(work / "results.json")]
    print(f"$ ONNX_EXPLAIN_BROWSER_DIR={a.browser_dir} {shlex.join(cmd)}", flush=True)
    rc = subprocess.run(cmd, env=env).returncode
    print(f"results {work / 'results.json'}, screenshots {work / 'screenshots'}")
    return max(rc, run_self_test(work, a.browser_dir))


if __name__ == "__main__":
    sys.exit(main())
