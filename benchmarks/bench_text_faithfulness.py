"""Token deletion / insertion faithfulness of AttnLRP, CP-LRP and gradient methods on the shipped text
classifier (models/textcls.onnx), held-out sentences: AttnLRP's headline claim (Achtibat et al. 2024),
reproduced on a small synthetic task whose relevant tokens are known.

    OMP_NUM_THREADS=1 python benchmarks/bench_text_faithfulness.py [--n 200]

writes benchmarks/results/text_faithfulness.md. Every method explains the predicted class's logit; the
metrics replace tokens by [MASK] (special tokens and padding kept, CP-LRP's fractions 0, 0.1, ..., 1 of
the words) and score the predicted class's probability (and, second table, its logit).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import onnx_explain as oe
from onnx_explain.app.text import TextEncoder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))

from build import INTENSIFIERS, NEGATIVE, NEGATORS, POSITIVE, textcls_data  # noqa: E402

METHODS = {
    "AttnLRP (`lrp`, composite `attnlrp`)": ("lrp", {"composite": "attnlrp"}),
    "CP-LRP (`lrp`, composite `cp_lrp`)": ("lrp", {"composite": "cp_lrp"}),
    "gradient × input": ("gradient_x_input", {}),
    "integrated gradients (32 steps, zero embedding)": ("integrated_gradients", {"n_steps": 32}),
    "gradient (summed over the embedding)": ("gradient", {}),
    "random (floor)": (None, {}),
}


def relevant_positions(text: str) -> list[int]:
    """Token positions (after [CLS]) of the words the task's rule reads: sentiment words with the
    intensifier and negator right before them."""
    words = text.split()
    out = set()
    for i, w in enumerate(words):
        if w not in POSITIVE + NEGATIVE:
            continue
        out.add(i + 1)
        j = i - 1
        if j >= 0 and words[j] in INTENSIFIERS:
            out.add(j + 1)
            j -= 1
        if j >= 0 and words[j] in NEGATORS:
            out.add(j + 1)
    return sorted(out)


def top1_hit(a: np.ndarray, texts: list[str], n_tokens: np.ndarray) -> np.ndarray:
    """Per text with a relevant word: 1 when the highest-|R| word (not [CLS]/[SEP]) is one of them."""
    hits = []
    for b, text in enumerate(texts):
        rel = relevant_positions(text)
        if not rel:
            continue
        words = np.abs(a[b, 1 : n_tokens[b] - 1])
        hits.append(float(int(np.argmax(words)) + 1 in rel))
    return np.asarray(hits)


def sem(v: np.ndarray) -> float:
    return float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200, help="held-out sentences (from textcls_data(2000, seed=2))")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "text_faithfulness.md"))
    ap.add_argument("--skip", nargs="*", default=[], help="method keys to leave out (e.g. lrp)")
    args = ap.parse_args()

    model = oe.load(ROOT / "models" / "textcls.onnx")
    tokenizer = ROOT / "models" / "textcls_tokenizer.json"
    enc = TextEncoder(tokenizer)
    texts, labels = textcls_data(2000, seed=2)
    texts, labels = texts[: args.n], labels[: args.n]
    encoded = enc.encode(texts)
    x = enc.batch(encoded, model)
    n_tokens = np.array([len(e.ids) for e in encoded])
    target = model.predict(x).argmax(1)
    acc = float((target == labels).mean())

    rows = []
    for name, (method, opts) in METHODS.items():
        if method in args.skip:
            continue
        t0 = time.perf_counter()
        if method is None:
            a = np.random.default_rng(0).normal(size=x["input_ids"].shape) * x["attention_mask"]
        else:
            try:
                a = oe.explain(model, x, method, target=target, **opts).attribution
            except oe.OnnxExplainError as exc:  # e.g. LRP on token ids before it lands
                rows.append((name, None, str(exc).splitlines()[0]))
                continue
        seconds = time.perf_counter() - t0
        res = {}
        for space in ("prob", "logit"):
            for metric, order in (
                ("token_deletion", "morf"),
                ("token_deletion", "lerf"),
                ("token_insertion", "morf"),
            ):
                r = oe.evaluate(model, x, a, metric, target=target, output=space, order=order,
                                tokenizer=str(tokenizer))  # fmt: skip
                res[metric, order, space] = r["auc"]
        res["top1"] = top1_hit(a, texts, n_tokens)
        res["seconds"] = seconds
        rows.append((name, res, None))
        print(name, {k: round(float(np.mean(v)), 4) for k, v in res.items()}, flush=True)

    def cell(v):
        return f"{np.mean(v):.3f} ± {sem(v):.3f}"

    lines = [
        "# Token deletion / insertion on the shipped text classifier (AttnLRP's claim)",
        "",
        f"`models/textcls.onnx` (2-layer transformer, d = 64, 4 heads; held-out accuracy "
        f"{acc:.3f} on these {len(texts)} sentences), the first {len(texts)} held-out sentences "
        "(`textcls_data(2000, seed=2)`), each explained for its predicted class's logit. Deletion (MoRF): "
        "the `ceil(f·N)` most relevant of the N words replaced by [MASK] for f = 0, 0.1, …, 1 "
        "([CLS], [SEP], padding and the attention mask kept); insertion: from all words [MASK], the most "
        "relevant restored first. AUC = trapezoid over f. Mean ± standard error over sentences. "
        "Top-1: share of sentences with a sentiment word whose highest-|R| word is one the task's rule "
        "reads (a sentiment word or its negator/intensifier).",
        "",
        f"Rebuild: `OMP_NUM_THREADS=1 python benchmarks/bench_text_faithfulness.py --n {len(texts)}`.",
        "",
    ]
    for space in ("prob", "logit"):
        lines += [
            "",
            f"## Scores: the predicted class's {'probability' if space == 'prob' else 'logit'}",
            "",
            "| method | deletion MoRF AUC (↓) | deletion LeRF AUC (↑) | ΔA = LeRF − MoRF (↑) | insertion AUC (↑) "
            "| top-1 relevant word (↑) | explain seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, res, err in rows:
            if res is None:
                lines.append(f"| {name} | not run: {err} | | | | | |")
                continue
            morf, lerf = res["token_deletion", "morf", space], res["token_deletion", "lerf", space]
            lines.append(
                f"| {name} | {cell(morf)} | {cell(lerf)} | {cell(lerf - morf)} | "
                f"{cell(res['token_insertion', 'morf', space])} | {np.mean(res['top1']):.3f} | {res['seconds']:.2f} |"
            )
    done = {name: res for name, res, _ in rows if res is not None}
    attn = next((v for k, v in done.items() if k.startswith("AttnLRP")), None)
    if attn is not None:
        lines += [
            "",
            "## Paired comparison (per sentence, probability AUCs)",
            "",
            "Share of sentences where AttnLRP is strictly better / tied / worse, and the mean paired difference "
            "AttnLRP − other ± its standard error (deletion: negative favours AttnLRP; insertion: positive does).",
            "",
            "| vs | deletion better / tied / worse | deletion Δ AUC | insertion better / tied / worse | insertion Δ AUC |",
            "|---|---|---|---|---|",
        ]
        for k, v in done.items():
            if k.startswith("AttnLRP"):
                continue
            d = attn["token_deletion", "morf", "prob"] - v["token_deletion", "morf", "prob"]
            i = attn["token_insertion", "morf", "prob"] - v["token_insertion", "morf", "prob"]
            tol = 1e-9
            lines.append(
                f"| {k} | {np.mean(d < -tol):.2f} / {np.mean(abs(d) <= tol):.2f} / {np.mean(d > tol):.2f} | {cell(d)} | "
                f"{np.mean(i > tol):.2f} / {np.mean(abs(i) <= tol):.2f} / {np.mean(i < -tol):.2f} | {cell(i)} |"
            )
        lines += ["", "## Reading", ""]
        for k, v in done.items():
            if k.split(" (")[0] not in ("CP-LRP", "gradient × input", "integrated gradients"):
                continue
            verdicts = []
            for label, key, sign in (
                ("deletion", ("token_deletion", "morf", "prob"), -1),
                ("insertion", ("token_insertion", "morf", "prob"), 1),
            ):
                d = sign * (attn[key] - v[key])  # positive: AttnLRP better
                m, e = float(np.mean(d)), sem(d)
                word = "better" if m > 2 * e else "worse" if m < -2 * e else "not resolvably different"
                verdicts.append(f"{label}: AttnLRP {word} ({m:+.3f} ± {e:.3f})")
            lines.append(f"- vs {k.split(' (')[0]}: " + "; ".join(verdicts) + ".")
        lines += [
            "",
            '("better" / "worse": the paired mean difference is beyond 2 standard errors; sign flipped so that '
            "positive favours AttnLRP.) Explain seconds are wall time for the whole batch on a shared 2-core "
            "machine (other jobs running): indicative only.",
        ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
