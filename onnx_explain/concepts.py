"""Concept examples: relevance and activation maximisation over a set of inputs (Achtibat et al. 2023,
"From attribution maps to human-understandable explanations through Concept Relevance Propagation").

A *concept* is a channel of a layer. Its examples are the inputs that use it most (relevance
maximisation: the channel's share of the LRP relevance of each input's explained class at that layer) or
that activate it most (activation maximisation), each shown with its conditional heatmap: the relevance of
the explained class restricted to that channel at the layer (CRP, :func:`onnx_explain.explain` with
``"lrp"`` and ``conditions=``), so the heatmap shows *where in the input* the concept was used.

The per-input score of a channel is zennit-crp's ``ChannelConcept.reference_sampling``: the map's sum
over space (``max_target="sum"``) or its value at the location of its largest value (``"max"``), then,
with ``abs_norm``, divided by the sum of the absolute scores of all channels of that input (+ 1e-10), so
an input's channels compete for its own relevance. Inputs are ranked per channel by that score, highest
first (ties keep the inputs' order).
"""

from __future__ import annotations

import numpy as np

from .errors import OptionError

__all__ = ["MODES", "channel_scores", "concept_examples"]

MODES = ("relevance", "activation")
_TARGETS = ("sum", "max")


def channel_scores(maps: np.ndarray, max_target: str = "sum", abs_norm: bool = True):
    """``(scores, location)``, each ``(N, C)``, of layer maps ``(N, C, ...)``: the per-channel score of
    each input (module docstring) and the flat index of the channel's largest value (the "receptive
    field" neuron zennit-crp crops its reference images to)."""
    if max_target not in _TARGETS:
        raise OptionError(f"max_target must be one of {', '.join(_TARGETS)}, not {max_target!r}")
    flat = np.asarray(maps, dtype=np.float64).reshape(*np.shape(maps)[:2], -1)
    location = flat.argmax(-1)
    if max_target == "sum":
        scores = flat.sum(-1)
    else:
        scores = np.take_along_axis(flat, location[..., None], -1)[..., 0]
    if abs_norm:
        scores = scores / (np.abs(scores).sum(-1, keepdims=True) + 1e-10)
    return scores, location


def concept_examples(
    model,
    x,
    layer: str,
    channels=None,
    *,
    mode: str = "relevance",
    top: int = 8,
    max_target: str = "sum",
    abs_norm: bool = True,
    target=None,
    composite: str = "epsilon_plus",
    heatmaps: bool = True,
    batch_size: int = 32,
    **lrp_options,
) -> dict:
    """The inputs of ``x`` that use (or activate) each channel of ``layer`` most, with their conditional
    heatmaps.

    Parameters
    ----------
    model : Model or path
        An image model (the LRP runs on its converted graph; activations come from onnxruntime).
    x : array_like
        The inputs searched, batch first (e.g. a folder read with the model's preprocessing).
    layer : str
        The layer, an ONNX tensor or node name with a ``(B, C, ...)`` output (``info --layers`` lists
        feature maps).
    channels : sequence of int, optional
        The channels to report (default all).
    mode : {'relevance', 'activation'}
        Rank by the channel's relevance for each input's explained class, or by its activation.
    top : int
        Examples per channel.
    max_target : {'sum', 'max'}
        A channel's score: the sum of its map, or its largest value (zennit-crp's ``max_target``).
    abs_norm : bool
        Divide each input's channel scores by the sum of their absolute values (zennit-crp's default).
    target : optional
        The explained class per input (default the predicted one), as :func:`onnx_explain.explain` takes it.
    composite : str
        The LRP composite of the relevances and the heatmaps.
    heatmaps : bool
        Compute the conditional heatmaps of the examples (one LRP pass per channel over its ``top``
        examples).
    batch_size : int
        Inputs per LRP pass (and per onnxruntime call).
    **lrp_options
        Further options of the ``lrp`` method.

    Returns
    -------
    dict
        ``layer`` (the resolved layer), ``mode``, ``channels`` (K,), ``index`` ``(top, K)`` (the examples,
        best first, as positions in ``x``), ``score`` ``(top, K)``, ``location`` ``(top, K)`` (the flat
        index of the channel's largest value in that example's map), ``target`` (N,) (the explained class
        of every input), ``scores`` ``(N, C)`` (every input's channel scores) and, with ``heatmaps``,
        ``heatmap`` ``(top, K, *x.shape[1:])``: each example's relevance for its class through that
        channel alone.
    """
    from .explainer import explain
    from .layers import resolve_layer
    from .methods.cam import layer_activations
    from .model import Model, load

    if mode not in MODES:
        raise OptionError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if int(top) < 1:
        raise OptionError(f"top must be at least 1, not {top!r}")
    if max_target not in _TARGETS:
        raise OptionError(f"max_target must be one of {', '.join(_TARGETS)}, not {max_target!r}")
    model = model if isinstance(model, Model) else load(model)
    x = np.asarray(x)
    chosen = resolve_layer(model.proto, layer)
    name = chosen["node"] or chosen["tensor"]
    opts = {"composite": composite, **lrp_options}
    maps, targets = [], []
    for i in range(0, len(x), batch_size):  # one LRP pass per chunk: only (N, C) scores are kept
        xb = x[i : i + batch_size]
        tb = target if target is None or np.ndim(target) == 0 else np.asarray(target)[i : i + batch_size]
        e = explain(model, xb, "lrp", tb, batch_size=batch_size, relevance_at=name, **opts)
        targets.append(np.asarray(e.target).reshape(-1))
        if mode == "relevance":
            m = e.extras["layer_relevance_map"]
        else:
            m = layer_activations(model, chosen["tensor"], xb.astype(np.dtype(model.input.dtype), copy=False),
                                  None, batch_size)  # fmt: skip
        maps.append(channel_scores(m, max_target, abs_norm))
    scores = np.concatenate([s for s, _ in maps])
    location = np.concatenate([loc for _, loc in maps])
    targets = np.concatenate(targets)
    n_channels = scores.shape[1]
    chans = np.arange(n_channels) if channels is None else np.asarray(channels, dtype=np.int64).reshape(-1)
    if chans.size == 0 or chans.min() < 0 or chans.max() >= n_channels:
        raise OptionError(
            f"layer {chosen['tensor']!r} has {n_channels} channels; channels {channels!r} are not all in range"
        )
    k = min(int(top), len(x))
    order = np.argsort(-scores[:, chans], axis=0, kind="stable")[:k]  # (k, K)
    out = {
        "layer": chosen, "mode": mode, "channels": chans, "index": order,
        "score": np.take_along_axis(scores[:, chans], order, 0),
        "location": np.take_along_axis(location[:, chans], order, 0),
        "target": targets, "scores": scores, "max_target": max_target, "abs_norm": abs_norm,
    }  # fmt: skip
    if heatmaps:
        maps = []
        for j, c in enumerate(chans):
            items = order[:, j]
            e = explain(model, x[items], "lrp", targets[items], batch_size=batch_size,
                        conditions=[{"layer": name, "channels": [int(c)]}], **opts)  # fmt: skip
            maps.append(e.attribution)
        out["heatmap"] = np.stack(maps, axis=1)
    return out
