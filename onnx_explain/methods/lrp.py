"""The ``lrp`` attribution method: the LRP graph is prepared once per model and settings, then every
chunk of rows is one forward and one (modified) backward pass."""

from __future__ import annotations

import numpy as np
import torch

from ..derived import derived
from ..errors import OnnxExplainError, OptionError
from ..options import accepted_options, check_options
from .base import Scorer, register_method


def _key(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _key(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple, np.ndarray, torch.Tensor)):
        return tuple(_key(v) for v in np.asarray(value, dtype=object).reshape(-1).tolist()) + (
            np.shape(value),
        )
    return value


def lrp_graph(module, example, composite, composite_options, rules, fallback, maxpool, mode="auto", also=(),
              seed_output=True, decisions=None):  # fmt: skip
    """The cached LRP graph of a converted model for these settings (built on first use); ``mode`` as in
    :func:`onnx_explain.lrp.graph.build_lrp_graph`. A model with ``If`` nodes gets one graph per set of
    branch ``decisions`` (default: those ``example`` takes)."""
    from ..lrp.branches import branch_decisions, has_if
    from ..lrp.graph import build_lrp_graph, split_example

    _check_module(module)
    if decisions is None:
        decisions = branch_decisions(module, *split_example(example)) if has_if(module) else ()
    owner, cut = _owner(module)
    per_model = derived(owner)
    key = (
        "lrp_graph",
        cut,
        composite,
        _key(composite_options),
        _key(rules),
        fallback,
        maxpool,
        mode,
        tuple(also),
        seed_output,
        decisions,
    )
    # the LRP graph holds copies of the weights (canonized, folded): rebuilt when a weight of the module
    # changed in place since (a parameter randomisation test, a user editing the model), never stale
    version = _weights_version(owner)
    hit = per_model.get(key)
    if hit is None or hit[0] != version:
        hit = per_model[key] = (
            version,
            build_lrp_graph(
                module,
                example,
                composite,
                composite_options,
                rules,
                fallback,
                maxpool,
                mode,
                also,
                seed_output,
                decisions,
            ),
        )
    return hit[1]


def _weights_version(module) -> tuple:
    """The in-place version counters of every parameter and buffer of ``module`` (they move on each write)."""
    return tuple(t._version for t in module.parameters()) + tuple(t._version for t in module.buffers())


def default_composite(module, example) -> str:
    """The composite used when none is named: ``attnlrp`` for a graph with attention, else
    ``epsilon_plus`` (decided once per model)."""
    from ..lrp.graph import default_composite as decide

    owner, cut = _owner(module)
    per_model = derived(owner)
    if (cut, "default_composite") not in per_model:
        per_model[(cut, "default_composite")] = decide(module, example)
    return per_model[(cut, "default_composite")]


def _owner(module):
    """``(converted model, cut)``: the object the LRP graphs of ``module`` are cached on, and the embedding
    node a token model's graph is cut at (None for a float input). A token model's embedding view is made
    anew for every call; its LRP graph is a copy, so caching it on the converted model keeps nothing alive."""
    frontier = getattr(module, "frontier", None)
    return (module.wrapper, frontier) if frontier is not None else (module, None)


def _check_module(module) -> None:
    from ..convert.wrapper import ConvertedModel
    from .embedding import EmbeddingModel

    if not isinstance(module, (ConvertedModel, EmbeddingModel)):
        raise OnnxExplainError(
            "LRP runs on a converted ONNX model (onnx_explain.load(...)), not on a plain torch module"
        )


@register_method(
    "lrp",
    "Layer-wise Relevance Propagation with a composite of rules (strict coverage)",
    modalities=("image", "table", "tokens"),  # token ids: relevance at the embedding cut, summed per token
    cost="forward + modified backward",
    overview={"composite": "auto"},  # epsilon_plus on CNNs, attnlrp where attention carries relevance
)
def lrp(
    scorer: Scorer,
    x,
    target,
    generator=None,
    composite: str | None = "auto",
    rules: dict | None = None,
    low=None,
    high=None,
    composite_options: dict | None = None,
    fallback: str | None = None,
    maxpool: str = "gradient",
    output_relevance: str = "score",
    layer_relevance: bool = False,
    mode: str = "auto",
    conditions: list | None = None,
    relevance_at: str | None = None,
):
    """LRP of f_c at x.

    Parameters
    ----------
    composite : str, optional
        ``epsilon_plus``, ``epsilon_gamma_box``, ``epsilon_plus_flat``, ``epsilon_alpha2_beta1``,
        ``epsilon_alpha2_beta1_flat``, ``montavon2019``, and for transformers ``attnlrp``, ``cp_lrp``,
        ``attnlrp_gamma_vit``. Default: ``attnlrp`` for a graph with attention (a Softmax that carries
        relevance), else ``epsilon_plus`` (``'auto'``, the default, or None).
    rules : dict, optional
        Overrides by ONNX op type or node name: ``{'Conv': 'gamma:0.25', '/features/features.0/Conv': 'zbox'}``.
    low, high : float or per-channel sequence
        Input bounds of z^B (``epsilon_gamma_box``, ``montavon2019``, ``zbox`` overrides).
    fallback : {None, 'gradient'}
        A node with no rule raises (default) or passes the plain gradient, reported in ``extras``.
    maxpool : {'gradient', 'avgpool'}
    output_relevance : {'score', 'onehot'}
        R_L = f_c(x)·e_c (default; Σ R ≈ f_c) or e_c.
    layer_relevance : bool
        Also report Σ R at the output and input of every rule layer (the conservation diagnostic).
    mode : {'auto', 'single', 'rules'}
        ``'single'``: one ordinary backward through a forward patched node by node (LRP at the cost of a
        gradient, the same relevance); ``'rules'``: every node's rule in its own backward; ``'auto'``
        (default): single where the plan has that form, rules otherwise and with ``layer_relevance``.
    conditions : list of dict, optional
        Concept Relevance Propagation (Achtibat et al. 2023): ``[{"layer": NAME, "channels": [c, ...]}]``
        keeps, at each named layer (ONNX node or tensor), the relevance of those channels (axis 1) only,
        so the input relevance is the part that flows through them (zennit-crp's ``CondAttribution``).
    relevance_at : str, optional
        An ONNX node or tensor name: its relevance map ``(B, *shape)`` is ``extras["layer_relevance_map"]``
        (after the conditions, when that layer has one).

    Extras: ``delta`` = Σ R − f_c(x) per sample (with ``output_relevance='score'``), ``rules`` (node →
    rule), ``fallback_nodes``, and ``layer_relevance`` on request. Token-id inputs are explained at the
    embedding lookup's output (the graph cut there, as for the gradient methods); the token relevance is
    its sum over the hidden dim, and ``relevance_at`` says so.
    """
    if output_relevance not in ("score", "onehot"):
        raise OptionError(f"output_relevance must be 'score' or 'onehot', not {output_relevance!r}")
    from ..lrp.graph import set_recording

    bounds = {k: _bound(v, x) for k, v in (("low", low), ("high", high)) if v is not None}
    first = x[: min(len(x), 2)]  # an example for building the graph, with its samples' companion inputs
    comp = scorer.companion_rows(target[: len(first)])
    example = (first, comp) if comp else first
    if composite in (None, "auto"):
        _check_module(scorer.module)
        composite = default_composite(scorer.module, example)
    opts = checked_composite_options(composite, composite_options, bounds)

    def graph(example, decisions=None):
        return lrp_graph(
            scorer.module, example, composite, opts, _zbox_rules(rules, bounds), fallback, maxpool,
            "rules" if layer_relevance else mode,  # the per-layer record is kept by the rule graph
            decisions=decisions,
        )  # fmt: skip

    chunks = _branch_chunks(scorer, x, target)  # a model with If nodes: the branches each chunk takes
    module, assignments = graph(example) if chunks is None else graph(*chunks[0][1:])
    if (
        chunks is not None
        and len({d for _, _, d in chunks}) > 1
        and (conditions or relevance_at or layer_relevance)
    ):
        raise OptionError(
            "LRP: the model's If nodes take different branches across the chunks of this batch; conditions=, "
            "relevance_at= and layer_relevance need one graph: explain those inputs in separate calls"
        )
    record = {} if layer_relevance else None
    set_recording(module, record)
    taps = _Taps(module, conditions, relevance_at, getattr(module, "lrp_report", {}).get("mode") == "single")
    module_of = None if chunks is None else {a: graph(ex, d)[0] for a, ex, d in chunks}.get
    try:
        relevance, scores = _propagate(scorer, module, x, target, output_relevance, module_of)
    finally:
        set_recording(module, None)
        taps.close()
    total = relevance.reshape(len(x), -1).sum(1).to(torch.float64)
    extras = {
        "score": scores,
        "delta": total - scores if output_relevance == "score" else total - 1.0,
        "composite": composite,
        "rules": {a.onnx_name or a.module: f"{a.op}: {a.rule}" for a in assignments},
        "fallback_nodes": [a.onnx_name for a in assignments if a.fallback],
        "mode": getattr(module, "lrp_report", {}).get("mode", "rules"),
    }
    if relevance_at is not None:
        extras["layer_relevance_map"] = torch.cat(taps.maps).numpy()
    if conditions:
        extras["conditions"] = [dict(c) for c in conditions]
    frontier = getattr(scorer.module, "frontier", None)
    if frontier is not None:  # token ids: the graph was cut at the embedding (methods/embedding.py)
        extras["relevance_at"] = (
            f"the output of {frontier!r} (the embedding), summed over the hidden dim per token"
        )
    if record is not None:
        extras["layer_relevance"] = [
            {
                "layer": k,
                "relevance_out": torch.cat([o for o, _ in v]).numpy(),
                "relevance_in": torch.cat([i for _, i in v]).numpy(),
            }
            for k, v in record.items()
        ]
    return relevance, extras


class _Taps:
    """Forward hooks on layers of the LRP graph: CRP's channel masks on the relevance flowing back through
    a layer, and the relevance map of one layer. In the single-backward graph a tensor's relevance is the
    tensor times its gradient, in the rule graph the gradient itself: a mask on the gradient masks the
    relevance either way."""

    def __init__(self, module, conditions, at, single: bool):
        from ..layers import node_of
        from .cam import layer_module

        self.handles, self.maps, self.single = [], [], single
        masks: dict = {}
        for c in conditions or []:
            if not isinstance(c, dict) or set(c) != {"layer", "channels"}:
                raise OptionError('each condition is {"layer": NAME, "channels": [c, ...]}')
            masks.setdefault(node_of(module, c["layer"]), set()).update(int(k) for k in c["channels"])
        names = set(masks) | ({node_of(module, at)} if at is not None else set())
        self.at = node_of(module, at) if at is not None else None
        for name in names:
            hook = self._hook(name, sorted(masks[name]) if name in masks else None)
            self.handles.append(layer_module(module, name).register_forward_hook(hook))

    def _hook(self, name, channels):
        def hook(_m, _inp, out):
            if not isinstance(out, torch.Tensor) or out.dim() < 2:
                raise OptionError(
                    f"layer {name!r}: CRP conditions and relevance maps need a (B, C, ...) tensor"
                )
            if not out.requires_grad:
                return out
            if channels is not None:
                if max(channels) >= out.shape[1] or min(channels) < 0:
                    raise OptionError(
                        f"layer {name!r} has {out.shape[1]} channels: {channels} is out of range"
                    )
                mask = torch.zeros(out.shape[1], dtype=out.dtype, device=out.device)
                mask[channels] = 1
                mask = mask.reshape(1, -1, *([1] * (out.dim() - 2)))
                out.register_hook(lambda g: g * mask)
            if name == self.at:
                value = out.detach()
                out.register_hook(lambda g: self.maps.append((value * g if self.single else g).detach()) or g)
            return out

        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def checked_composite_options(composite: str, composite_options: dict | None, bounds: dict) -> dict:
    """The composite's options, checked against what it takes, with the input bounds added where it
    takes them (``low``/``high`` of z^B)."""
    from ..lrp.composites import COMPOSITES

    opts = dict(composite_options or {})
    if composite not in COMPOSITES:
        raise OptionError(f"unknown composite {composite!r}; choose one of {', '.join(sorted(COMPOSITES))}")
    names, takes_any = accepted_options(COMPOSITES[composite], skip=("layers",))
    if not takes_any:
        check_options(opts, names, f"composite {composite!r}")
    opts.update({k: v for k, v in bounds.items() if takes_any or k in names})
    return opts


def _zbox_rules(rules: dict | None, bounds: dict) -> dict:
    """Rule overrides, a bare ``'zbox'`` given the method's scalar ``low``/``high``."""
    return {k: (f"zbox:{_scalar(bounds.get('low'))},{_scalar(bounds.get('high'))}" if str(v) == "zbox" else v)
            for k, v in (rules or {}).items()}  # fmt: skip


def _branch_chunks(scorer: Scorer, x, keys):
    """For a model with ``If`` nodes, ``[(start, example, decisions)]`` per chunk of ``batch_size`` rows:
    the branches that chunk takes (:func:`onnx_explain.lrp.branches.branch_decisions`, one forward pass
    each); None for a model without."""
    from ..lrp.branches import branch_decisions, has_if

    if not has_if(scorer.module):
        return None
    out = []
    for a in range(0, len(x), scorer.batch_size):
        rows = x[a : a + scorer.batch_size]
        comp = scorer.companion_rows(keys[a : a + scorer.batch_size])
        out.append((a, (rows, comp) if comp else rows, branch_decisions(scorer.module, rows, comp or None)))
    return out


def _propagate(scorer: Scorer, module, x, keys, output_relevance: str, module_of=None):
    """Relevance at the input (x's shape) and f_c(x), one forward and one modified backward pass per
    chunk of ``batch_size`` rows (each with its sample's companion inputs), seeded with f_c·e_c
    (``'score'``) or e_c (``'onehot'``); for a target that is not one element (a sum over positions, a
    mask, an embedding's dot product) with ``O ⊙ ∂t/∂O`` (``'score'``, which sums to t when t is linear in
    the output O) or ``∂t/∂O``; ``keys`` are the rows' keys (:class:`Scorer`); ``module_of(start)``,
    when given, is the LRP graph of the chunk starting at row ``start`` (a model whose ``If`` nodes decide
    per chunk)."""
    relevance = torch.empty_like(x)
    scores = torch.empty(len(x), dtype=torch.float64)
    for a in range(0, len(x), scorer.batch_size):
        b = min(len(x), a + scorer.batch_size)
        rows = x[a:b].detach().requires_grad_(True)
        comp = scorer.companion_rows(keys[a:b])
        net = module if module_of is None else module_of(a)
        with torch.enable_grad():
            out = net(rows, comp) if comp else net(rows)
            flat = out.reshape(out.shape[0], -1)
            if _one_element(scorer):
                cls = scorer.classes(keys[a:b]).reshape(-1, 1)
                weight = torch.zeros_like(flat).scatter_(1, cls, 1.0)
                score = flat.detach().gather(1, cls).squeeze(1)
            else:  # a sum, a mask, an embedding: relevance starts where the target reads the output
                probe = flat.detach().requires_grad_(True)
                t = scorer.select(probe, keys[a:b])
                (weight,) = torch.autograd.grad(t.sum(), probe)
                score = t.detach()
            seed = flat.detach() * weight if output_relevance == "score" else weight
            # allow_unused: rules can stop every path (``stop`` overrides): no relevance reaches the input
            (rel,) = torch.autograd.grad(flat, rows, seed, allow_unused=True)
        relevance[a:b] = 0.0 if rel is None else rel
        scores[a:b] = score.to(torch.float64)
    return relevance, scores


def _one_element(scorer) -> bool:
    """Whether each row explains one output element (a class, a (position, class) element)."""
    target = getattr(scorer, "target", None)
    return target is None or target.one_element


def _bound(v, x):
    """A z^B bound: a number or per-channel values. z^B acts at the first Conv, and an ONNX Conv reads
    channels on axis 1 whatever the model's input layout (an NHWC model transposes before it), so
    per-channel values go on axis 1 of the layer's input."""
    t = torch.as_tensor(np.asarray(v, dtype=np.float64), dtype=x.dtype)
    if t.dim() == 1 and x.dim() > 2:
        t = t.reshape(1, -1, *([1] * (x.dim() - 2)))
    return t


def _scalar(v):
    if v is None:
        raise OptionError("the zbox rule needs the input bounds low= and high=")
    t = torch.as_tensor(v)
    if t.numel() != 1:
        raise OptionError(
            "a zbox override by name takes scalar bounds; use the composite options for per-channel ones"
        )
    return float(t)
