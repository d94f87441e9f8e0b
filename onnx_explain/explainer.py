"""``onnx_explain.explain``: one call for every registered attribution method."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import torch

from .detectors import prepare_box_target
from .errors import InputDataError, OnnxExplainError, OptionError
from .methods import METHODS, Explanation, MethodSpec, Scorer
from .methods.base import make_generator
from .tabular import exact_method
from .targets import Resolved, resolve, resolve_targets, with_real_tokens
from .text import TextEncoder

__all__ = ["explain", "resolve_targets"]


def to_device(a: np.ndarray, device) -> torch.Tensor:
    """``a`` as a tensor on ``device``: on a GPU through pinned (page-locked) host memory, so the copy is
    one DMA transfer that need not wait for the host; on the CPU without a copy."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _out_dtype(a: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """float32, except for float64 inputs (a float64 torch module), which keep their precision."""
    return a.detach().cpu().numpy().astype(np.float64 if x.dtype == torch.float64 else np.float32)


def _to_numpy(v):
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return v


@dataclass(frozen=True)
class MethodCall:
    """What one run of a method on rows is asked (:func:`run_method`): the method and its checked
    options, the target as the user gave it, rows per pass, the image layout, the random generator, and an
    output row's shape when the file fixes it (None: the first pass tells)."""

    spec: MethodSpec
    opts: dict
    target: object
    batch_size: int
    layout: str | None
    generator: torch.Generator | None
    out_shape: tuple | None = None


def explain(
    model,
    x,
    method: str = "smoothgrad",
    target=None,
    *,
    output: str | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    seed=None,
    layout: str | None = None,
    input: str | None = None,  # noqa: A002 - mirrors load(input=...)
    max_memory=None,
    **options,
) -> Explanation:
    """Explain ``model`` at the inputs ``x`` with a registered attribution ``method``.

    Parameters
    ----------
    model : Model, path or torch.nn.Module
        An :class:`onnx_explain.Model` (or a path to load), or a torch module mapping ``x`` to scores.
    x : array_like or dict of str to array_like
        A batch, batch first, of the explained input in its dtype and layout; or, for a model with
        several inputs, a dict of batch-first arrays named after them: the explained input (chosen at
        :func:`onnx_explain.load`, ``input=``) and per-sample values of the others
        (``{"input_ids": ids, "attention_mask": mask}``). Every row a method builds from a sample
        (noisy copies, integration steps, ``top:K`` repeats) runs with that sample's values of the other
        inputs; only the explained input is attributed. ``fixed_inputs=`` at load holds values shared
        by every sample.
    method : str
        One of :data:`onnx_explain.METHODS` (``gradient``, ``gradient_x_input``, ``smoothgrad``,
        ``integrated_gradients``, ``smoothtaylor``, ``smoothtaylor_adaptive``, the black-box ``occlusion``
        ...), or ``'auto'``: SmoothGrad when the graph converts to torch, else a method that runs on
        onnxruntime alone (``extras['auto']`` says which and why).
    target : None, 'predicted', int, sequence of int, or 'top:K'
        The class explained per sample (default: the predicted one). ``'top:K'`` explains the K best
        classes: the attribution then has shape ``(B, K, *S)``.
    output : {'logit', 'output'}, optional
        Explain the logits before a final Softmax/LogSoftmax or the model's output as is; default: the
        method's own (:attr:`MethodSpec.output`, the logits for every built-in method).
    batch_size : int
        Rows (noisy copies, integration steps ...) per forward/backward pass: memory depends on it, the
        result does not.
    device : str
        torch device (``'cpu'``, ``'cuda'``).
    seed : int or torch.Generator, optional
        Randomness of stochastic methods (default seed 0: reproducible).
    layout : {'NCHW', 'NHWC', 'NHW'}, optional
        The image layout of ``x`` (where per-channel baselines go); default: the Model's own, and
        channels on axis 1 for a torch module.
    input : str, optional
        The input to explain for this call (:meth:`Model.with_input`); default: the one chosen at load.
    max_memory : int or str, optional
        The memory a gradient method's passes may plan to use (bytes, or ``'8G'``, ``'512M'``); default
        half of the memory available. The rows per pass are capped to fit it (measured on the graph:
        :mod:`onnx_explain.memory`; ``extras['memory']`` says when), and an input whose single row does
        not fit is refused with :class:`~onnx_explain.errors.MemoryBudgetError` before anything runs.
    **options
        The method's own options (``sigma``, ``n_samples``, ``reduce``, ``base``, ``n_steps``,
        ``quadrature_method``, ``baseline``, ``n_roots``, ``perturbations``, ``roots`` ...). An option the
        method does not take raises :class:`~onnx_explain.options.UnknownOptionError`.

    Returns
    -------
    Explanation
        ``attribution`` (float32, x's shape; float64 for float64 input to a torch module), ``target``,
        ``score`` (f_c(x)), ``method``, ``options`` and ``extras`` (``delta`` of IG, ``sigma`` ...; for
        token ids ``embedding_attribution``, the attribution at the embedding, whose sum over the
        embedding axes is ``attribution`` — its L2 norm for the gradient and SmoothGrad, whose sums are ~0
        after a LayerNorm: ``extras['token_reduction']``; positions an attention mask leaves out get what
        the graph gives them, 0 where the model does not read them).
    """
    model, target = prepare_box_target(model, target)  # a (boxes, scores) pair or an NMS graph, for a box
    auto = None
    if method == "auto":
        method, auto = auto_method(model, output, device, input, x)
    if method not in METHODS:
        choices = ", ".join(sorted(METHODS))
        raise OnnxExplainError(f"unknown method {method!r}; choose one of {choices} (or 'auto')")
    spec = METHODS[method]
    opts = spec.check_options(options)
    neuron = _neuron_target(model, target, spec, method)
    if neuron is not None:
        target = neuron["target"]
    output = output or spec.output
    if spec.backend == "onnxruntime":
        call = MethodCall(spec, opts, target, batch_size, layout, make_generator(seed, "cpu"))
        e = _explain_runtime(model, x, call, output, input)
        if auto:
            e.extras["auto"] = auto
        return e
    model, module, x_np, companions, layout = _resolve_model(model, x, output, device, layout, input)
    generator = make_generator(seed, device)
    xt = to_device(x_np, device)
    comp = {k: to_device(v, device) for k, v in companions.items()}
    extras_in: dict = {}
    if "layer" in spec.options and _is_model(
        model
    ):  # a layer named by its ONNX tensor or node (or the default)
        from .layers import resolve_layer

        chosen = resolve_layer(model.proto, opts.get("layer"))
        opts = {**opts, "layer": chosen["node"]}
        extras_in["layer"] = (
            f"{chosen['tensor']} (node {chosen['node']!r}, {chosen['op']}, shape {chosen['shape']})"
        )
    if _is_model(model) and model.parity is not None:  # what the conversion was certified on
        extras_in["parity"] = model.parity.summary()
    if x_np.dtype.kind in "iu":
        kind = _integer_kind(model)
        if kind == "ids":
            call = MethodCall(
                spec, opts, target, batch_size, None, generator, declared_row_shape(model, output)
            )
            e = _explain_ids(module, xt, comp, call)
            e.extras.update(_quantized_note(module))
            e.extras.update(extras_in)
            return e
        xt = xt.to(torch.float32)  # a quantity (pixels, counts): attributed in the input's own layout
        extras_in["integer_input"] = "attributed as a quantity at its cast to float"
    if xt.dtype not in (torch.float32, torch.float64):
        xt = xt.float()
    batch_size, memory_note = _fit_memory(model, module, xt, comp, batch_size, max_memory, device, output)
    if memory_note:
        extras_in["memory"] = memory_note
    out_shape = declared_row_shape(model, output)
    if neuron is not None:  # the explained output is the layer's map: its channel or element a mask target
        module, out_shape = _LayerOutput(module, neuron["node"]), neuron["shape"]
        extras_in["target_layer"] = neuron["describe"]
    result = run_method(
        module, xt, comp, MethodCall(spec, opts, target, batch_size, layout, generator, out_shape)
    )
    attribution, targets, score, extras = result
    if auto:
        extras_in["auto"] = auto
    extras_in.update(_quantized_note(module))
    return Explanation(
        attribution=_out_dtype(attribution, xt),
        target=np.asarray(targets),
        score=score.detach().cpu().numpy(),
        method=method,
        options=opts,
        extras={**extras_in, **{key: _to_numpy(v) for key, v in extras.items() if key != "score"}},
        layout=layout,
    )


def explain_text(
    model,
    texts,
    tokenizer,
    method: str = "smoothgrad",
    target=None,
    *,
    max_length: int | None = None,
    **kwargs,
) -> Explanation:
    """Explain a token model on texts: tokenise them with a ``tokenizers`` file, pad them to the longest
    with the attention mask (and token type ids) given per sample, and attribute each token.

    The Python twin of ``onnx-explain explain MODEL texts.txt --tokenizer tokenizer.json``.

    Parameters
    ----------
    model : Model or path
        A token model (its explained input is the token ids).
    texts : str or sequence of str
        One text or several.
    tokenizer : str, Path or TextEncoder
        A Hugging Face ``tokenizer.json`` (nothing is downloaded), or a ready
        :class:`onnx_explain.text.TextEncoder`.
    method, target
        As in :func:`explain`.
    max_length : int, optional
        Longest sequence; longer texts are truncated and ``extras['truncated']`` says which.
    **kwargs
        Everything else :func:`explain` takes (``batch_size``, ``seed``, method options ...).

    Returns
    -------
    Explanation
        ``attribution`` of shape ``(B, T)`` (T: the longest text's token count; padding exactly 0),
        ``tokens`` (each text's real tokens), ``extras['offsets']`` (their character spans in the text) and
        ``extras['truncated']``. The notebook view colours the tokens.
    """
    from .model import load

    if isinstance(texts, str):
        texts = [texts]
    texts = [str(t) for t in texts]
    if not texts:
        raise InputDataError("explain_text: no texts given")
    if not _is_model(model):
        model = load(model)
    if np.dtype(model.input.dtype).kind not in "iu":
        raise InputDataError(
            f"explain_text: the model's explained input {model.input.name!r} is {model.input.dtype}, not "
            "token ids; choose the token input with load(input=...)"
        )
    enc = tokenizer if isinstance(tokenizer, TextEncoder) else TextEncoder(tokenizer, max_length)
    encoded = enc.encode(texts)
    e = explain(model, enc.batch(encoded, model), method, target, **kwargs)
    e.tokens = [x.tokens for x in encoded]
    e.extras["offsets"] = [x.offsets for x in encoded]
    e.extras["truncated"] = np.asarray([x.truncated for x in encoded])
    return e


def run_method(module, xt, comp, call: MethodCall, make_scorer=None):
    """(attribution, targets, explained score, extras) of ``call.spec`` on rows ``xt`` with per-sample
    companions ``comp``: the target is resolved into units (:mod:`onnx_explain.targets`), keyed for the
    method. ``make_scorer(target)`` builds the scorer (default: a :class:`Scorer` of ``module``)."""
    spec, target, batch_size, layout, out_shape = (
        call.spec,
        call.target,
        call.batch_size,
        call.layout,
        call.out_shape,
    )
    if make_scorer is None:

        def make_scorer(resolved):
            return Scorer(module, batch_size, layout, companions=comp, target=resolved)

    B = len(xt)
    sample_scorer = make_scorer(None)
    samples = torch.arange(B, device=xt.device)
    seen = {}

    def outputs():  # the unperturbed outputs, computed once when the target needs them
        if "out" not in seen:
            flat = sample_scorer.scores(xt, samples)
            seen["out"] = flat.reshape(B, *sample_scorer.out_shape)
        return seen["out"]

    if out_shape is None:
        out_shape = tuple(outputs().shape[1:])
    # the predicted class of a (B, C) output, for a method whose rows are the inputs themselves: read from
    # its own pass rather than from a separate forward pass (a third of a plain gradient's work)
    on_pass = (
        spec.reads_inputs
        and (target is None or (isinstance(target, str) and target == "predicted"))
        and len(out_shape) == 1
        and "out" not in seen
    )
    if on_pass:
        pending = torch.full((B,), -1, dtype=torch.long, device=xt.device)
        resolved = Resolved("class", samples, index=pending, out_shape=tuple(out_shape))
    else:
        resolved = resolve(with_real_tokens(target, comp, B), out_shape, B, outputs, device=xt.device)
    scorer = make_scorer(resolved)
    scorer.out_shape = tuple(out_shape)
    scorer.predict_on_pass = on_pass
    k = resolved.k
    rows = xt if k is None else xt.repeat_interleave(k, 0)
    keys = torch.arange(len(rows), device=xt.device)
    with torch.no_grad():
        attribution, extras = spec.fn(scorer, rows, keys, call.generator, **call.opts)
    if on_pass:
        if bool((resolved.index < 0).any()):
            raise OnnxExplainError(f"method {spec.name!r} left a predicted class unread (reads_inputs)")
        resolved.record = resolved.index.cpu().numpy()
    reported = extras.get("score")
    if isinstance(reported, torch.Tensor) and reported.shape == (len(rows),):
        score = reported.to(xt.dtype)
    else:
        out = outputs()
        score = scorer.select(out.reshape(B, -1)[resolved.samples], keys).to(xt.dtype)
    if k is not None:
        attribution = attribution.reshape(B, k, *xt.shape[1:])
        score = score.reshape(B, k)
    extras = {**extras, **resolved.info}
    return attribution, resolved.record, score, extras


def _explain_runtime(model, x, call: MethodCall, output: str, input_name: str | None) -> Explanation:
    """A black-box method: every row runs through onnxruntime on the file, nothing is converted."""
    from .methods import RuntimeScorer
    from .model import load

    if isinstance(model, (str, os.PathLike)):
        model = load(model, input=input_name)
    if not _is_model(model):
        raise OnnxExplainError(
            f"method {call.spec.name!r} runs on onnxruntime: it needs an onnx_explain.Model"
        )
    model = model.with_input(input_name)
    x_np, companions = model.split_inputs(x)
    layout = call.layout or model.layout
    xt = torch.from_numpy(np.ascontiguousarray(x_np))
    if xt.dtype.is_floating_point and xt.dtype not in (torch.float32, torch.float64):
        xt = xt.float()
    space = "output" if output == "output" else "logit"

    def make_scorer(resolved):
        return RuntimeScorer(model, call.batch_size, layout, space, companions=companions, target=resolved)

    call = replace(call, layout=layout, out_shape=declared_row_shape(model, space))
    attribution, targets, score, extras = run_method(None, xt, companions, call, make_scorer)
    return Explanation(
        attribution=attribution.detach().cpu().numpy().astype(np.float32),
        target=np.asarray(targets),
        score=score.detach().cpu().numpy(),
        method=call.spec.name,
        options=call.opts,
        extras={key: _to_numpy(v) for key, v in extras.items() if key != "score"},
        layout=layout,
    )


#: a row whose input holds fewer bytes than budget / (rows x this) is not measured: no graph saves that much
_SAVED_PER_INPUT_BYTE = 4000


def _fit_memory(model, module, xt, comp, batch_size, max_memory, device, output) -> tuple[int, str | None]:
    """``(rows per pass, note)`` within the memory budget (:mod:`onnx_explain.memory`); the bytes per row
    are measured once per Model, space and input shape."""
    from .memory import budget_bytes, fit_rows, row_bytes

    budget = budget_bytes(max_memory, device)
    row_in = xt[:1].numel() * xt.element_size() + sum(v[:1].numel() * v.element_size() for v in comp.values())
    if max_memory is None and batch_size * row_in * _SAVED_PER_INPUT_BYTE < budget:
        return batch_size, None
    key = (output, tuple(xt.shape[1:]), tuple((k, tuple(v.shape[1:])) for k, v in sorted(comp.items())))
    cache = model.row_bytes_cache if _is_model(model) else {}
    if key not in cache:
        cache[key] = row_bytes(module, xt, comp)
    return fit_rows(cache[key], batch_size, budget)


def _is_model(model) -> bool:
    from .model import Model

    return isinstance(model, Model)


def _quantized_note(module) -> dict:
    """``{'quantized': ...}`` when the converted graph rounds to a quantized grid somewhere: its gradients
    are the straight-through estimator's (METHODS.md §1.7), not the derivative of the quantized function."""
    from .convert.ops.quant import straight_through_nodes

    if isinstance(module, torch.nn.Module) and straight_through_nodes(module):
        return {"quantized": "quantized graph: straight-through gradients"}
    return {}


def _resolve_model(model, x, output: str, device: str, layout: str | None, input_name: str | None = None):
    """(model, torch module, validated x, per-sample companions, image layout) for a Model, a path or a
    torch module."""
    from .model import load

    if isinstance(model, (str, os.PathLike)):
        model = load(model, input=input_name)
    if _is_model(model):
        model = model.with_input(input_name)
        xe, companions = model.split_inputs(x)
        module = converted(model, device, output, (xe, companions))
        return model, module, xe, companions, layout or model.layout
    if isinstance(x, dict) or input_name is not None:
        raise InputDataError("several inputs need an onnx_explain.Model (a torch module takes one tensor)")
    return model, model, np.asarray(x), {}, layout


def converted(model, device: str = "cpu", output: str = "output", data=None):
    """``model.torch_module(device, space=output, probe=data)``: the graph certified on the user's own
    ``data`` (``(x, companions)``; None: the conversion only, certified later on data); when the graph
    does not convert, the error says which methods still work (those that run on onnxruntime alone)."""
    from .errors import ConversionError, ParityError
    from .methods.base import runtime_methods

    try:
        if data is None:
            return model.convert(output)
        return model.torch_module(device=device, space=output, probe=data)
    except (ConversionError, ParityError) as exc:
        exact = exact_method(model) if _is_model(model) else None
        others = runtime_methods(exact[0] if exact else None)
        if _is_model(model):  # only those meant for this kind of input
            from .layout import modality
            from .methods import METHODS

            kind = modality(model.layout, model.input.dtype)
            others = [m for m in others if kind in METHODS[m].modalities]
        if not others:
            raise
        hint = ""
        if _is_model(model) and _has_estimator(model):
            hint = "; a preprocessing pipeline before trees or a linear model: explain_table (the CLI: CSV inputs, -m auto)"
        raise type(exc)(
            f"{exc} — methods that run on onnxruntime alone still work: {', '.join(others)} (or method='auto'){hint}"
        ) from None


def _has_estimator(model) -> bool:
    from .tabular.linear import LINEAR_OPS
    from .tabular.trees import TREE_OPS

    return any(
        n.domain == "ai.onnx.ml" and n.op_type in TREE_OPS + LINEAR_OPS for n in model.proto.graph.node
    )


def auto_method(model, output: str | None, device: str, input_name: str | None, data=None) -> tuple[str, str]:
    """``(method, why)`` for ``method='auto'``: SmoothGrad when the graph converts to torch with parity on
    ``data`` (the user's batch; None: conversion alone), else the first black-box method of the
    registry's overview (or any)."""
    from .errors import ConversionError, ParityError
    from .methods.base import runtime_methods
    from .model import load

    model = load(model, input=input_name) if isinstance(model, (str, os.PathLike)) else model
    if not _is_model(model):
        return "smoothgrad", "a torch module: gradient methods"
    exact = exact_method(model.with_input(input_name))
    if exact:
        return exact

    def black_box(why: str, exc: Exception):
        exact = exact_method(model) if _is_model(model) else None
        others = runtime_methods(exact[0] if exact else None)
        if not others:
            raise exc
        pick = next((m for m in others if METHODS[m].overview is not None), others[0])
        return pick, f"{why} ({exc}): {pick} runs on onnxruntime alone"

    try:
        m = model.with_input(input_name)
        if data is None:
            m.convert(output or "logit")
            return "smoothgrad", "the graph converts to torch: a gradient method"
        probe = data if isinstance(data, tuple) else m.split_inputs(data)
        module = m.torch_module(device=device, space=output or "logit", probe=probe)
    except (ConversionError, ParityError) as exc:
        what = "is not certified on the data" if isinstance(exc, ParityError) else "does not convert to torch"
        return black_box(f"the graph {what}", exc)
    missing = no_embedding(m, module, probe)
    if missing is not None:
        return black_box("no embedding to attribute the ids at", missing)
    return "smoothgrad", "the graph converts to torch with parity on the data: a gradient method"


def no_embedding(model, module, probe):
    """For token or category ids: the error that says the converted graph has no vector per id to attribute
    at (a decoder step that reads only its last id; :func:`onnx_explain.methods.embedding.find_float_frontier`),
    else None (and None for any other input). ``probe`` is ``(x, companions)``, batch first."""
    from .errors import InputSpecError
    from .methods.embedding import embedding_model

    ids = np.asarray(probe[0])
    if ids.dtype.kind not in "iu" or _integer_kind(model) != "ids":
        return None
    try:
        embedding_model(module, torch.from_numpy(ids[:1]), {k: torch.from_numpy(np.asarray(v)[:1])
                                                             for k, v in probe[1].items()})  # fmt: skip
    except InputSpecError as exc:
        return exc
    return None


class _LayerOutput(torch.nn.Module):
    """A converted model whose explained output is one of its layers' maps (neuron and channel targets):
    the model runs as it is, the layer's output is returned."""

    def __init__(self, module, node: str):
        from .methods.cam import layer_module

        super().__init__()
        self.inner, self.layer, self.store = module, layer_module(module, node), {}

    def forward(self, *args, **kwargs):
        handle = self.layer.register_forward_hook(lambda _m, _i, out: self.store.__setitem__("out", out))
        try:
            self.inner(*args, **kwargs)
        finally:
            handle.remove()
        return self.store.pop("out")


def _neuron_target(model, target, spec, method: str) -> dict | None:
    """``{"neuron": (layer, c)}`` (a channel: the sum of its map) or ``{"neuron": (layer, (c, i, j))}`` (one
    unit) as a mask target on the layer's ``(C, h, w)`` map, which becomes the explained output."""
    if not (isinstance(target, dict) and "neuron" in target):
        return None
    from .layers import resolve_layer

    if (
        set(target) != {"neuron"}
        or not isinstance(target["neuron"], (tuple, list))
        or len(target["neuron"]) != 2
    ):
        raise OptionError(
            'a neuron target is {"neuron": (layer, channel)} or {"neuron": (layer, (channel, i, j))}'
        )
    if spec.backend == "onnxruntime" or method == "lrp" or not _is_model(model):
        raise OptionError(
            f"a neuron target needs a gradient method on an onnx_explain.Model, not {method!r} (for LRP through "
            "chosen channels use conditions=[{'layer': ..., 'channels': [...]}])"
        )
    layer, unit = target["neuron"]
    chosen = resolve_layer(model.proto, layer)
    C, h, w = chosen["shape"][1:]
    if not all(isinstance(d, int) for d in (C, h, w)):
        raise OptionError(f"layer {layer!r} has no fixed (C, h, w) shape in the file: {chosen['shape']}")
    c, *where = (unit,) if isinstance(unit, (int, np.integer)) else tuple(unit)
    if (
        len(where) not in (0, 2)
        or not 0 <= int(c) < C
        or (where and not (0 <= where[0] < h and 0 <= where[1] < w))
    ):
        raise OptionError(
            f"neuron {unit!r} is not a channel or (channel, i, j) of layer {layer!r} ({C}, {h}, {w})"
        )
    mask = (
        np.ones((h, w), bool)
        if not where
        else np.eye(h * w, dtype=bool)[where[0] * w + where[1]].reshape(h, w)
    )
    what = f"channel {int(c)}" if not where else f"unit ({int(c)}, {where[0]}, {where[1]})"
    return {"target": {"mask": mask, "class": int(c)}, "node": chosen["node"], "shape": (C, h, w),
            "describe": f"{what} of {chosen['tensor']} (node {chosen['node']!r}, shape {chosen['shape']})"}  # fmt: skip


def declared_row_shape(model, space: str) -> tuple | None:
    """An output row's shape when the file fixes it (else None: the first pass tells)."""
    if not _is_model(model):
        return None
    shape = model.output.shape
    if shape is None or len(shape) < 2 or not all(isinstance(d, int) for d in shape[1:]):
        return None
    return tuple(shape[1:])  # a final Softmax keeps its input's shape: the logits have it too


def _integer_kind(model) -> str:
    """``'ids'`` (token or category ids: attributed at the embedding) or ``'quantity'`` (pixels or counts
    cast to float, possibly after a layout change: attributed at the cast, in the input's own layout)."""
    from .convert.batch_dim import integer_input_kind

    if not _is_model(model):
        raise OnnxExplainError(
            "integer inputs are explained through an onnx_explain.Model (the embedding is cut from its graph)"
        )
    return integer_input_kind(model.proto, model.input.name)


#: the companion input whose zeros mark positions a model leaves out (attention masks of HF exporters)
def _mask_of(ids: torch.Tensor, comp: dict):
    for name, v in comp.items():
        if "mask" in name.lower() and tuple(v.shape) == tuple(ids.shape):
            return name, v
    return None, None


def token_reduction(spec, opts: dict) -> str:
    """How a token's score is made from its embedding's attribution: ``'l2'`` (the norm over the embedding
    dims) for sensitivities — the gradient, and SmoothGrad's mean of gradients — whose sum is ~0 whenever
    a LayerNorm follows the embedding (every BERT-style model: the LayerNorm's gradient sums to 0 over
    its dims); ``'sum'`` for relevances (gradient × input, Integrated Gradients, LRP, ...), which add up
    to the explained score."""
    if spec.name == "gradient":
        return "l2"
    if (
        spec.delegate == "base"
        and opts.get("base", "gradient") == "gradient"
        and opts.get("reduce", "mean") == "mean"
    ):
        return "l2"
    return "sum"


def _explain_ids(module, ids, comp, call: MethodCall) -> Explanation:
    """Token ids: the graph is cut at the embedding once and every sample's rows run through it in
    batches, exactly as for float inputs; the ids travel with their sample like any companion input."""
    from .methods.embedding import embedding_model

    emb_module, e, frontier = embedding_model(module, ids, comp)
    mask_name, mask = _mask_of(ids, comp)
    comp = {**comp, emb_module.ids_key: ids}
    attribution, targets, score, extras = run_method(emb_module, e, comp, replace(call, layout=None))
    spec, opts = call.spec, call.opts
    # positions the mask leaves out keep what the graph gives them: exactly 0 where the model does not read
    # them (the mask's -inf/min logits), and their real share where it does (a right-padded GPT-2 reads
    # the last position, a pad, to classify)
    top_k = attribution.dim() > e.dim()
    lead = ids.dim() + (1 if top_k else 0)
    how = token_reduction(spec, opts)
    axes = tuple(range(lead, attribution.dim()))
    if attribution.dim() <= lead:
        per_position = attribution
    elif how == "l2":
        per_position = attribution.norm(dim=axes)
    else:
        per_position = attribution.sum(dim=axes)
    out_extras = {
        "embedding_attribution": attribution.cpu().numpy().astype(np.float32),
        "embedding_node": frontier,
        "token_reduction": how,
    }
    if mask_name is not None:
        out_extras["mask_input"] = mask_name
    out_extras.update({key: _to_numpy(v) for key, v in extras.items() if key != "score"})
    return Explanation(
        attribution=per_position.cpu().numpy().astype(np.float32),
        target=np.asarray(targets),
        score=score.detach().cpu().numpy(),
        method=spec.name,
        options=opts,
        extras=out_extras,
    )
