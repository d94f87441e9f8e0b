"""The deployment-time audit: conversion parity, LRP coverage, several methods × several metrics on the
given inputs (:func:`audit`, the Python API's ``oe.audit``), returned as an
:class:`~onnx_explain.report.AuditReport` that writes a self-contained HTML report (images embedded), JSON
and the figures (:func:`run_audit`, the command line's ``audit``)."""

from __future__ import annotations

import hashlib
import platform
import time
from pathlib import Path

import numpy as np

from ..errors import InputDataError
from .io import Preprocess, read_items
from .job import model_layout


def default_methods(modality: str) -> dict[str, dict]:
    """The methods of a quick overview for inputs of ``modality``, with their overview settings (the
    :attr:`~onnx_explain.methods.base.MethodSpec.overview` facts of the registry)."""
    from ..methods import METHODS

    return {
        name: dict(spec.overview)
        for name, spec in METHODS.items()
        if spec.overview is not None and modality in spec.modalities and spec.backend == "torch"
    }  # the black-box methods' overview settings serve when the graph does not convert (_runtime_only)


def default_metrics(modality: str) -> list[str]:
    """The metrics of a quick overview for inputs of ``modality`` (the registry's ``overview`` facts)."""
    from ..metrics import METRICS

    return [name for name, spec in METRICS.items() if modality in spec.overview]


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def audit(model, x, methods: dict | list | None = None, metrics: list | None = None, *, batch_size: int = 64,
          seed: int = 0, preprocess: dict | None = None, max_items: int = 64, thumbnails: int = 4,
          tokenizer=None, max_length: int | None = None, target=None, sanity_layers: int = 3,
          sanity_items: int = 8, sanity_variant: str = "mprt"):  # fmt: skip
    """Audit ``model`` on ``x``: conversion parity, LRP coverage, several methods × several metrics.

    Parameters
    ----------
    model : Model or path
        An :class:`onnx_explain.Model`, or the path of an ``.onnx`` file to load.
    x : array_like, path or list of paths
        A batch of the explained input (batch first, preprocessed), or files and folders as the command
        line reads them (images, ``.npy``/``.npz``, CSV; with ``tokenizer``, ``.txt`` / ``.jsonl`` texts).
    methods : dict or list of str, optional
        Method -> options, or names (each with its overview settings); default: the registry's overview
        methods for the input's modality.
    metrics : list of str, optional
        Default: the registry's overview metrics for the input's modality.
    batch_size, seed : int
        As in :func:`onnx_explain.explain`.
    preprocess : dict, optional
        Image preprocessing for files (size, mean, std ...).
    max_items : int
        Inputs used at most.
    thumbnails : int
        Inputs drawn per method in the heatmap figures.
    tokenizer : str or Path, optional
        A ``tokenizers`` file for text inputs: texts are tokenised, padded with the attention mask per
        sample, explained per token and shown as coloured tokens.
    max_length : int, optional
        Longest token sequence (longer texts are truncated, and the report says so).
    target : optional
        What every method explains and every metric scores, as :func:`onnx_explain.explain` takes it
        (``'3,predicted'``, ``{'box': [x1, y1, x2, y2], 'class': c}``, ``'mask:FILE.png:1'`` ...); default:
        the predicted class. A detector's (boxes, scores) output pair is joined for a box target; the
        heatmaps draw the explained box and matched proposal, or the mask's outline.
    sanity_layers, sanity_items : int
        The model parameter randomisation check (:func:`onnx_explain.sanity.sanity_check`) of every method
        that runs on the converted graph: its top ``sanity_layers`` layers randomised in cascade, on the
        first ``sanity_items`` inputs (0 layers: no check). Its cost is one explanation per layer.
    sanity_variant : {'mprt', 'smooth', 'efficient'}
        Which randomisation test (:func:`onnx_explain.sanity.sanity_check`'s ``variant``): ``efficient``
        randomises every layer and needs one explanation in all.

    Returns
    -------
    AuditReport
        The score table, every method's explanation and mean curves, provenance; ``save(dir)`` writes
        what ``onnx-explain audit`` writes, ``_repr_html_`` shows it in a notebook.
    """
    import os

    from ..layout import modality
    from ..model import load
    from ..report import AuditReport, render_figures, sanity_figure

    if isinstance(model, (str, os.PathLike)):
        model = load(model)
    t0 = time.perf_counter()
    kind = "tokens" if tokenizer is not None else modality(model.layout, model.input.dtype)
    given = methods
    methods = _chosen_methods(methods, kind)
    report = _provenance(model, methods, batch_size, seed)
    if target is not None:
        from ..detectors import prepare_box_target

        report["settings"]["target"] = target if isinstance(target, (str, int)) else repr(target)
        model, target = prepare_box_target(model, target)
    texts = None
    if tokenizer is not None:
        x, report["inputs"], texts = _read_texts(model, x, tokenizer, max_length, max_items)
    elif _is_paths(x):
        x, report["inputs"] = _read_inputs(
            model, x, Preprocess.from_model(model.input, preprocess), max_items
        )
    elif isinstance(x, dict):  # the explained input with per-sample values of the others (a state ...)
        x = _head(model, x, max_items)
        report["inputs"] = {"used": [f"item_{i:03d}" for i in range(len(_shown(model, x)))], "failed": []}
    else:
        x = model.validate_input(np.asarray(x))[:max_items]
        report["inputs"] = {"used": [f"item_{i:03d}" for i in range(len(x))], "failed": []}
    module, report["conversion"] = _conversion(model, x)  # certified on the audited inputs themselves
    if module is not None and (missing := _no_embedding(model, module, x)) is not None:
        module = None  # ids the graph selects before any lookup: nothing per id for gradients or LRP
        report["conversion"]["note"] = (
            f"gradient methods and LRP skipped: {missing}; black-box methods run instead"
        )
    if module is None:  # the graph does not convert: the methods that run on onnxruntime alone, said so
        methods = _runtime_only(methods, given, kind, model)
        report["settings"]["methods"] = methods
        report["lrp_coverage"] = {"ok": False, "error": "no torch graph (see conversion)"}
    elif isinstance(x, dict):  # tokens through the embedding cut, or per-sample companions
        report["lrp_coverage"] = _lrp_coverage_explained(
            model, _head(model, x, 2), _head_target(model, target, x, 2)
        )
    else:
        report["lrp_coverage"] = _lrp_coverage(module, x)
    if not report["lrp_coverage"]["ok"]:
        methods.pop("lrp", None)
    metric_options = {}
    if texts is not None:
        metrics, metric_options, note = _text_metrics(metrics, tokenizer)
        if note:
            report["metrics_note"] = note
    metrics = list(metrics if metrics is not None else default_metrics(kind))
    report["settings"]["metrics"] = metrics
    if metric_options:
        report["settings"]["metric_options"] = metric_options
    explanations, report["scores"], curves, report["errors"] = _explain_and_score(
        model, x, methods, metrics, batch_size, seed, metric_options, target
    )
    views = {}
    if texts is not None:
        report["texts"], views = _text_views(texts, explanations)
    if sanity_layers and module is not None and texts is None:
        if target is None or isinstance(target, (int, np.integer)):
            report["sanity"] = _sanity(
                model,
                _head(model, x, sanity_items),
                methods,
                sanity_layers,
                batch_size,
                target,
                report["errors"],
                sanity_variant,
            )
        else:
            report["sanity_note"] = (
                "the parameter randomisation check explains classes: skipped for this target"
            )
    report["seconds"] = round(time.perf_counter() - t0, 2)
    layout = model.layout if kind == "image" else None
    shown = _shown(model, x) if texts is None else x
    figures = render_figures(shown, explanations, curves, layout, thumbnails, report["inputs"].get("columns"))
    if report.get("sanity") and (png := sanity_figure(report["sanity"])) is not None:
        figures["sanity"] = png
    return AuditReport(report, explanations, curves, figures, views, shown)


def _sanity(model, x, methods: dict, layers: int, batch_size: int, target, errors: dict,
            variant: str = "mprt") -> dict:  # fmt: skip
    """Cascading parameter randomisation of each method that runs on the converted graph (its top
    ``layers`` layers; ``efficient``: all), in the report's terms: layers, mean similarity (``efficient``:
    the entropy rise) per step, passed."""
    from ..methods import METHODS
    from ..sanity import sanity_check

    out = {}
    for name, opts in methods.items():
        if name not in METHODS or METHODS[name].backend != "torch":
            continue
        try:
            r = sanity_check(model, x, name, target, variant=variant, order="cascading",
                             layers=None if variant == "efficient" else layers, batch_size=batch_size,
                             check_layers=layers, **(opts or {}))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - one method's failure is reported, the others go on
            errors[f"{name}/sanity"] = str(exc).splitlines()[0]
            continue
        out[name] = {"layers": r["layers"], "mean_similarity": [float(v) for v in r["mean"]],
                     "passed": r["passed"], "threshold": r["threshold"], "variant": variant}  # fmt: skip
    return out


def run_audit(model, inputs, out_dir, methods: dict | list | None = None, metrics=None, batch_size: int = 64,
              seed: int = 0, preprocess: dict | None = None, max_items: int = 64, thumbnails: int = 4,
              tokenizer=None, max_length: int | None = None, target=None, sanity_layers: int = 3) -> dict:  # fmt: skip
    """:func:`audit` of ``model`` on the files ``inputs``, saved into ``out_dir`` (``report.html``,
    ``report.json``, ``figures/``); returns the report's JSON as a dict."""
    r = audit(model, inputs, methods, metrics, batch_size=batch_size, seed=seed, preprocess=preprocess,
              max_items=max_items, thumbnails=thumbnails, tokenizer=tokenizer, max_length=max_length,
              target=target, sanity_layers=sanity_layers)  # fmt: skip
    r.save(out_dir)
    return r.to_dict()


#: the metrics a text audit runs by default (token deletion and insertion, METHODS §3.10 "Tokens")
TEXT_METRICS = ("token_deletion", "token_insertion")


def _text_metrics(metrics, tokenizer) -> tuple[list, dict, str | None]:
    """(metrics, metric -> options, a note or None) of a text audit: by default token deletion and
    insertion, which replace tokens by the tokenizer's [MASK]/[UNK]/[PAD] and keep its special tokens
    (the tokenizer file goes to every metric that takes one); without them, no metric, said why."""
    import inspect

    from ..metrics import METRICS

    if metrics is None:
        metrics = [m for m in TEXT_METRICS if m in METRICS]
        if not metrics:
            return [], {}, "no token metrics in this version (token deletion/insertion): texts are not scored"
    options = {}
    for m in metrics:
        if m in METRICS and "tokenizer" in inspect.signature(METRICS[m].fn).parameters:
            options[m] = {"tokenizer": str(tokenizer)}
    return list(metrics), options, None


def _is_paths(x) -> bool:
    import os

    if isinstance(x, (str, os.PathLike)):
        return True
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(v, (str, os.PathLike)) for v in x)


def _read_texts(model, inputs, tokenizer, max_length, max_items: int):
    """(the model's inputs for the texts, the report's inputs section, [(name, text, Encoded)]): texts from
    ``.txt`` / ``.jsonl`` files (or a list of strings), tokenised and padded with the mask per sample."""
    from .text import TEXT_SUFFIXES, TextEncoder, read_texts

    encoder = TextEncoder(tokenizer, max_length)
    named, failed = [], []
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    for i, v in enumerate(inputs):  # a Path or a name ending .txt/.jsonl is a file, any other string a text
        if not (isinstance(v, Path) or Path(str(v)).suffix.lower() in TEXT_SUFFIXES):
            named.append((f"text_{i:03d}", str(v)))
            continue
        p = Path(v)
        try:
            if not p.is_file():
                raise InputDataError("file not found")
            lines = read_texts(p)
        except Exception as exc:  # noqa: BLE001 - an unreadable file is reported, the others go on
            failed.append(f"{p}: {str(exc).splitlines()[0]}")
            continue
        named += [(f"{p.stem}_{k:03d}", t) for k, t in enumerate(lines)]
    named = named[:max_items]
    if not named:
        raise InputDataError("no text could be read: nothing to audit")
    encoded = encoder.encode([t for _, t in named])
    failed += [f"{n}: truncated to {encoder.max_length} tokens" for (n, _), e in zip(named, encoded, strict=True)
               if e.truncated]  # fmt: skip
    batch = encoder.batch(encoded, model)
    section = {"used": [n for n, _ in named], "failed": failed}
    return batch, section, [(n, t, e) for (n, t), e in zip(named, encoded, strict=True)]


def _text_views(texts, explanations: dict) -> tuple[list, dict]:
    """Each text's tokens and every method's token scores (real tokens only, no padding), and one HTML
    page per text and method, as ``explain --tokenizer`` writes them."""
    from .text import text_html, text_record

    records, views = [], {}
    for k, (name, text, enc) in enumerate(texts):
        n = len(enc.tokens)
        per = {}
        for method, e in explanations.items():
            a = np.asarray(e.attribution[k])
            scores = a[:n] if a.ndim == 1 else a[0, :n]  # top:K: the first class
            rec = text_record(text, enc, scores)
            per[method] = rec["scores"]
            views[f"{name} — {method}"] = text_html(
                rec, f"{name}: {method}, target {np.asarray(e.target[k]).tolist()}"
            )
        records.append({"item": name, "text": text, "tokens": enc.tokens, "offsets": [list(o) for o in enc.offsets],
                        "truncated": enc.truncated, "scores": per})  # fmt: skip
    return records, views


def _no_embedding(model, module, x):
    """The error saying an integer input has no vector per id in the converted graph, or None."""
    from ..explainer import no_embedding

    probe = model.split_inputs(x) if isinstance(x, dict) else (x, {})
    return no_embedding(model, module, probe)


def _conversion(model, x):
    """(torch module or None, the report's conversion entry): the conversion certified on the audited
    inputs ``x`` (an array, or a dict of arrays named after the inputs)."""
    from ..errors import ConversionError, ParityError

    try:
        module = model.torch_module(probe=x)
    except (ConversionError, ParityError) as exc:
        from ..tabular import exact_method

        exact = exact_method(model)
        note = "gradient methods and LRP skipped; " + (
            f"{exact[0]} (exact, read from the graph) and black-box methods run instead"
            if exact
            else "black-box methods (onnxruntime alone) run instead"
        )
        return None, {"ok": False, "error": str(exc), "note": note}
    return module, {"ok": True, "batch_mode": model.batch_mode, "parity": model.parity.to_dict()}


def _runtime_only(methods: dict, given, kind: str, model=None) -> dict:
    """The methods of ``methods`` that need no torch graph; when none was asked for by name, the exact
    method a tree ensemble or linear model has (TreeSHAP, linear SHAP: against the audited rows), then the
    black-box methods of the registry's overview for ``kind`` (or all of them)."""
    from ..methods import METHODS
    from ..methods.base import runtime_methods
    from ..tabular import exact_method

    keep = {m: o for m, o in methods.items() if m in METHODS and METHODS[m].backend == "onnxruntime"}
    if keep or given:
        return keep
    exact = exact_method(model) if model is not None else None
    names = runtime_methods(exact[0] if exact else None)
    overview = [m for m in names if METHODS[m].overview is not None and kind in METHODS[m].modalities]
    first = {exact[0]: {}} if exact else {}
    return {**first, **{m: dict(METHODS[m].overview or {}) for m in (overview or names)}}


def _chosen_methods(methods, kind: str) -> dict[str, dict]:
    from ..methods import METHODS

    if methods is None:
        return default_methods(kind)
    if isinstance(methods, dict):
        return dict(methods)
    return {name: dict(METHODS[name].overview or {}) if name in METHODS else {} for name in methods}


def _provenance(model, methods: dict, batch_size: int, seed: int) -> dict:
    """What was audited, with what: the model's description and hash, versions, settings."""
    import onnx
    import onnxruntime
    import torch

    from .. import __version__
    from ..report import SCHEMA_VERSION

    return {
        "schema_version": SCHEMA_VERSION,  # onnx_explain/schemas/audit_report.schema.json
        "model": model.describe(),
        "sha256": _sha256(model.path) if model.path else None,
        "versions": {
            "onnx-explain": __version__,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__,
            "python": platform.python_version(),
        },
        "settings": {"methods": methods, "batch_size": batch_size, "seed": seed},
    }


def _read_inputs(model, inputs, prep, max_items: int) -> tuple[np.ndarray, dict]:
    """The batch of readable inputs (at most ``max_items``) and the report's inputs section."""
    good, failures = [], []
    names = [i.name for i in model.inputs]
    for it in read_items(inputs, prep, model.input, names, batch_first=model.signature.to_batch_first):
        if it.error:
            failures.append(it.error)
            continue
        if good and sorted(it.companions or {}) != sorted(good[0].companions or {}):
            failures.append(
                f"{it.source}: gives the inputs {_names(it.companions)} per item where the first item gives "
                f"{_names(good[0].companions)}"
            )
            continue
        try:
            if it.companions:  # per-item values of the other inputs (a state ...): checked with the item
                xs, comps = model.split_inputs(model_layout(model, it.x, it.companions, one=True))
                it.x, it.companions = xs[0], {k: v[0] for k, v in comps.items()}
            else:
                it.x = model.validate_input(np.asarray(it.x)[None])[0]
            good.append(it)
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{it.source}: {exc}")
        if len(good) == max_items:
            break
    if not good:
        raise InputDataError(
            "no input could be read: nothing to audit" + (f" ({failures[0]})" if failures else "")
        )
    info = {"used": [it.name for it in good], "failed": failures}
    if good[0].columns:
        info["columns"] = list(good[0].columns)  # a table's header: the features' names in the figures
    x = np.stack([it.x for it in good])
    if not good[0].companions:
        return x, info
    comps = {k: np.stack([it.companions[k] for it in good]) for k in good[0].companions}
    return model_layout(model, x, comps), info


def _names(companions) -> str:
    return ", ".join(sorted(companions or {})) or "none"


def _head(model, x, n: int):
    """The first ``n`` items of ``x``: rows of an array, or of every input of a dict in the model's layout
    (along each input's own batch axis: a state ``[2, B, 128]`` on axis 1)."""
    if not isinstance(x, dict):
        return x[:n]
    xs, comps = model.split_inputs(x)
    return model_layout(model, xs[:n], {k: v[:n] for k, v in comps.items()})


def _shown(model, x) -> np.ndarray:
    """The explained input's rows, batch first (what the figures draw)."""
    return model.split_inputs(x)[0] if isinstance(x, dict) else x


def _lrp_coverage(module, x: np.ndarray) -> dict:
    """Whether every node that carries relevance has a rule under the default composite."""
    import torch

    from ..errors import LRPCoverageError
    from ..methods.lrp import default_composite, lrp_graph

    example = torch.from_numpy(x[:2])
    composite = default_composite(module, example)  # attnlrp for a graph with attention, else epsilon_plus
    try:
        _, assignments = lrp_graph(module, example, composite, {}, {}, None, "gradient")
    except LRPCoverageError as exc:
        return {"ok": False, "composite": composite, "error": str(exc)}
    rules = {a.onnx_name or a.module: f"{a.op}: {a.rule}" for a in assignments}
    return {"ok": True, "composite": composite, "rules": rules}


def _head_target(model, target, x, n: int):
    """The target of the first ``n`` items: a list or array of one target per item is cut to them;
    anything else (a class, ``'3,predicted'``, an element tuple, a box, a mask) applies to every item."""
    if isinstance(target, (list, np.ndarray)) and len(target) == len(_shown(model, x)):
        return target[:n]
    return target


def _lrp_coverage_explained(model, two: dict, target=None) -> dict:
    """Whether LRP covers a model fed several inputs per sample (tokens through the embedding cut, a state
    ...): LRP on two items, with the default composite (attnlrp where attention carries relevance); the
    rules and where relevance is read."""
    from ..errors import LRPCoverageError
    from ..explainer import explain

    try:
        e = explain(model, two, "lrp", target=target)
    except LRPCoverageError as exc:
        return {"ok": False, "error": str(exc)}
    cov = {"ok": True, "composite": e.extras["composite"], "rules": e.extras["rules"]}
    if "relevance_at" in e.extras:
        cov["relevance_at"] = e.extras["relevance_at"]
    return cov


def _explain_and_score(model, x, methods: dict, metrics: list, batch_size: int, seed: int,
                       metric_options: dict | None = None, target=None):  # fmt: skip
    """Every method on x, every metric on every method's attributions; a failing pair is reported and
    the audit goes on. Returns (explanations, scores, mean curves, errors)."""
    from ..evaluation import evaluate
    from ..explainer import explain

    attributions, scores, curves, errors = {}, {}, {}, {}
    for name, opts in methods.items():
        try:
            e = explain(model, x, name, target=target, batch_size=batch_size, seed=seed, **opts)
        except Exception as exc:  # noqa: BLE001 - one failing method is reported, the audit goes on
            errors[name] = str(exc).splitlines()[0]
            continue
        attributions[name] = e
        for metric in metrics:
            try:
                r = evaluate(
                    model,
                    x,
                    e.attribution,
                    metric,
                    target=e.target if target is None else target,  # a box, a mask ... as explained
                    batch_size=batch_size,
                    seed=seed,
                    **(metric_options or {}).get(metric, {}),
                )
            except Exception as exc:  # noqa: BLE001
                errors[f"{name}/{metric}"] = str(exc).splitlines()[0]
                continue
            from ..metrics.base import defined_scores

            scores.setdefault(metric, {})[name] = {
                **defined_scores(r),
                "higher_is_better": r["higher_is_better"],
            }
            if "curve" in r:
                curves.setdefault(metric, {})[name] = r["curve"].mean(0)
    return attributions, scores, curves, errors
