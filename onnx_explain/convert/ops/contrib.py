"""onnxruntime's fused transformer ops (domain ``com.microsoft``), as ``onnxruntime.transformers.optimizer``
writes them into BERT-style graphs. onnx2torch 1.5.15 converts none of them.

Each is written out in plain torch ops, so gradients flow as through the unfused graph:

- ``Attention``: packed input projection (``weights`` ``(D, Dq + Dk + Dv)``, ``qkv_hidden_sizes``),
  ``num_heads``, ``scale`` (default ``1 / sqrt(head_size)``), ``unidirectional``, ``mask_filter_value``
  (default -10000) and every ``mask_index`` form onnxruntime's CPU kernel reads: 1-D end positions
  ``(B)``, end and start positions ``(2B)``, a raw 2-D ``(B, T)`` or 3-D ``(B, S, T)`` 0/1 mask (masked
  scores get ``mask_filter_value`` added, as onnxruntime does); ``attention_bias`` added to the scores;
  the optional ``present`` output. ``past`` (a KV cache), ``do_rotary`` and 4-D masks are refused.
- ``MultiHeadAttention``: separate query/key/value (3-D, or packed QKV ``(B, S, N, 3, H)`` / packed KV
  ``(B, L, N, 2, H)``), ``bias``, ``key_padding_mask`` (the forms above), ``attention_bias``,
  ``unidirectional``, ``scale``; ``present_key``/``present_value`` outputs. Past key/value are refused.
- ``GroupQueryAttention`` (onnxruntime-genai's decoders): grouped KV heads, past key/value, rotary
  embedding, causal and ``seqlens_k`` masks (see :class:`OnnxGroupQueryAttention`).
- ``SkipLayerNormalization`` / ``SkipSimplifiedLayerNormalization``: ``input + skip (+ bias)``, then
  LayerNorm (or RMS norm) over the last axis; the ``mean``, ``inv_std_var`` and
  ``input_skip_bias_sum`` outputs.
- ``SimplifiedLayerNormalization`` (RMS norm over the axes from ``axis`` on; onnxruntime registers it in
  the ONNX domain, where onnx has no schema for it: such files load with ``check=False``).
- ``EmbedLayerNormalization``: word + position (+ segment) embeddings, LayerNorm, and the ``mask_index``
  output (the number of non-zero mask entries per row). It becomes two modules in the graph, the word
  embedding lookup and the rest, so that attribution to token ids starts at the word embedding exactly
  as in the unfused graph.
- ``Gelu``, ``BiasGelu`` (exact erf), ``FastGelu`` (tanh approximation, optional bias), ``QuickGelu``
  (``x * sigmoid(alpha x)``), ``BiasAdd`` (``X + bias + skip``), ``FusedMatMul`` (``alpha``,
  ``transA``/``transB``; ``transBatchA``/``transBatchB`` are refused).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..registry import converter
from ._common import result, unsupported

MS = "com.microsoft"


def _present(node, k: int) -> bool:
    return len(node.input_values) > k and bool(node.input_values[k])


def _outputs(values: tuple, n: int):
    """A node with one output returns a tensor, one with several a tuple (of the first ``n``)."""
    return values[0] if n == 1 else tuple(values[:n])


# --- attention ------------------------------------------------------------------------------------------
def _additive_mask(
    mask: torch.Tensor, batch: int, q_len: int, kv_len: int, fill: float, dtype
) -> torch.Tensor:
    """onnxruntime's ``mask_index`` forms as an additive ``(B, 1, S or 1, T)`` mask (0 kept, ``fill``
    masked)."""
    device = mask.device
    keys = torch.arange(kv_len, device=device)
    if mask.dim() == 1 and mask.shape[0] in (batch, 2 * batch):
        masked = keys[None, :] >= mask[:batch, None].long()  # right padding: at or after the end
        if mask.shape[0] == 2 * batch:  # left padding: before the start
            masked = masked | (keys[None, :] < mask[batch:, None].long())
        masked = masked[:, None, None, :]
    elif mask.dim() == 2:
        masked = (mask <= 0)[:, None, None, :]
    elif mask.dim() == 3:
        masked = (mask <= 0)[:, None, :, :]
    else:
        raise ValueError(
            f"a mask of shape {list(mask.shape)} (batch {batch}) is not a form this conversion reads: "
            "(B), (2B), (B, T) or (B, S, T)"
        )
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(masked, torch.full((), fill, dtype=dtype, device=device), zero)


def _attend(q, k, v, heads: int, scale: float | None, mask, attention_bias, causal: bool):
    """Scaled dot-product attention of ``(B, S, N*H)`` q and ``(B, T, N*H)`` k, v; returns
    ``(output (B, S, N*Hv), k and v as (B, N, T, H))``."""
    b, s, _ = q.shape
    t = k.shape[1]
    qh = q.reshape(b, s, heads, -1).transpose(1, 2)
    kh = k.reshape(b, t, heads, -1).transpose(1, 2)
    vh = v.reshape(b, t, heads, -1).transpose(1, 2)
    scale = 1.0 / math.sqrt(qh.shape[-1]) if not scale else scale
    scores = torch.matmul(qh, kh.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask
    if attention_bias is not None:
        scores = scores + attention_bias
    if causal:  # a query sees keys up to its own position (the past, if any, comes first)
        future = torch.ones(s, t, dtype=torch.bool, device=q.device).triu(t - s + 1)
        scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, vh).transpose(1, 2).reshape(b, s, -1)
    return out, kh, vh


class OnnxAttention(nn.Module):
    """``com.microsoft.Attention`` without a past state.

    Parameters
    ----------
    num_heads : int
    qkv_sizes : list of int or None
        ``qkv_hidden_sizes``; None splits the projection in three equal parts.
    unidirectional : bool
    mask_filter_value, scale : float
    n_outputs : int
    """

    def __init__(self, num_heads, qkv_sizes, unidirectional, mask_filter_value, scale, n_outputs):
        super().__init__()
        self.num_heads = num_heads
        self.qkv_sizes = qkv_sizes
        self.unidirectional = unidirectional
        self.mask_filter_value = mask_filter_value
        self.scale = scale
        self.n_outputs = n_outputs

    def forward(self, input, weights, bias=None, mask_index=None, past=None, attention_bias=None):  # noqa: A002
        proj = torch.matmul(input, weights)
        if bias is not None:
            proj = proj + bias
        return self._from_projection(proj, mask_index, attention_bias)

    def _from_projection(self, proj, mask_index=None, attention_bias=None):
        """Everything after the packed ``(B, S, Dq + Dk + Dv)`` projection (shared with ``QAttention``)."""
        sizes = self.qkv_sizes or [proj.shape[-1] // 3] * 3
        q, k, v = torch.split(proj, sizes, dim=-1)
        mask = None
        if mask_index is not None:
            mask = _additive_mask(
                mask_index, q.shape[0], q.shape[1], k.shape[1], self.mask_filter_value, q.dtype
            )
        out, kh, vh = _attend(q, k, v, self.num_heads, self.scale, mask, attention_bias, self.unidirectional)
        if self.n_outputs == 1:
            return out
        return out, torch.stack([kh, vh])


@converter("Attention", 1, domain=MS)
def _attention(node, graph):
    a = node.attributes
    if _present(node, 4):
        raise unsupported(node, "a past state (input 'past', KV cache)")
    if len(node.input_values) > 6 and any(node.input_values[6:]):
        raise unsupported(node, "past_sequence_length")
    for attr in ("do_rotary", "past_present_share_buffer"):
        if a.get(attr, 0):
            raise unsupported(node, f"attribute {attr}={a[attr]}")
    sizes = a.get("qkv_hidden_sizes")
    if sizes and len(sizes) != 3:
        raise ValueError(f"Attention: qkv_hidden_sizes must have 3 values, not {sizes}")
    heads = int(a["num_heads"])
    for size in sizes or []:
        if size % heads:
            raise ValueError(f"Attention: hidden size {size} is not divisible by num_heads={heads}")
    module = OnnxAttention(
        heads, list(sizes) if sizes else None, bool(a.get("unidirectional", 0)),
        float(a.get("mask_filter_value", -10000.0)), float(a.get("scale", 0.0)),
        max(1, len(node.output_values)),
    )  # fmt: skip
    return result(module, node)


class OnnxMultiHeadAttention(nn.Module):
    """``com.microsoft.MultiHeadAttention`` without past key/value (see the module docstring for forms)."""

    def __init__(self, num_heads, unidirectional, mask_filter_value, scale, n_outputs):
        super().__init__()
        self.num_heads = num_heads
        self.unidirectional = unidirectional
        self.mask_filter_value = mask_filter_value
        self.scale = scale
        self.n_outputs = n_outputs

    def forward(self, query, key=None, value=None, bias=None, key_padding_mask=None, attention_bias=None):
        n = self.num_heads
        if key is None and query.dim() == 5:  # packed QKV (B, S, N, 3, H)
            b, s = query.shape[:2]
            query, key, value = (t.reshape(b, s, -1) for t in query.unbind(3))
        elif value is None and key is not None and key.dim() == 5:  # packed KV (B, L, N, 2, H)
            b, t = key.shape[:2]
            key, value = (u.reshape(b, t, -1) for u in key.unbind(3))
        elif key is not None and key.dim() == 4:  # keys/values already split in heads (B, N, L, H)
            if bias is not None:
                raise ValueError(
                    "MultiHeadAttention: bias with key/value already split in heads is not supported"
                )
            key = key.transpose(1, 2).flatten(2)
            value = value.transpose(1, 2).flatten(2)
        if key is None or value is None or query.dim() != 3:
            raise ValueError(
                f"MultiHeadAttention: query {list(query.shape)} with key/value "
                f"{None if key is None else list(key.shape)} is not a supported layout"
            )
        if bias is not None:
            dq, dk = query.shape[-1], key.shape[-1]
            query, key, value = query + bias[:dq], key + bias[dq : dq + dk], value + bias[dq + dk :]
        mask = None
        if key_padding_mask is not None:
            mask = _additive_mask(
                key_padding_mask,
                query.shape[0],
                query.shape[1],
                key.shape[1],
                self.mask_filter_value,
                query.dtype,
            )
        out, kh, vh = _attend(query, key, value, n, self.scale, mask, attention_bias, self.unidirectional)
        return _outputs((out, kh, vh), self.n_outputs)


@converter("MultiHeadAttention", 1, domain=MS)
def _multi_head_attention(node, graph):
    a = node.attributes
    for k, what in (
        (6, "past_key"),
        (7, "past_value"),
        (8, "past_sequence_length"),
        (9, "cache_indirection"),
    ):
        if _present(node, k):
            raise unsupported(node, f"input {what!r} (KV cache)")
    if len(node.output_values) > 3 and any(node.output_values[3:]):
        raise unsupported(node, "the qk output")
    module = OnnxMultiHeadAttention(
        int(a["num_heads"]), bool(a.get("unidirectional", 0)), float(a.get("mask_filter_value", -10000.0)),
        float(a.get("scale", 0.0)), max(1, len(node.output_values)),
    )  # fmt: skip
    return result(module, node)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotary embedding of ``x`` ``(B, N, S, H)`` with ``cos``/``sin`` ``(B, 1, S, R/2)`` on its first R dims
    (onnxruntime's ``RotaryEmbedding``: halves rotated, or interleaved pairs)."""
    r = 2 * cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).flatten(-2)
    else:
        x1, x2 = rot[..., : r // 2], rot[..., r // 2 :]
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
    return torch.cat([out, rest], -1) if rest.shape[-1] else out


class OnnxGroupQueryAttention(nn.Module):
    """``com.microsoft.GroupQueryAttention`` (onnxruntime-genai's decoders): packed or separate Q/K/V,
    ``kv_num_heads`` key/value heads shared by ``num_heads // kv_num_heads`` query heads each, the past
    key/value concatenated before the new ones, rotary embedding from ``cos_cache``/``sin_cache`` at
    positions ``past + 0..S-1`` (or ``position_ids``), a causal mask over absolute positions, keys after
    ``seqlens_k[b]`` (the last valid position, right padding) masked, ``local_window_size``, ``softcap``,
    ``attention_bias``. Outputs: the attention, and the present key/value ``(B, N_kv, P + S, H)``."""

    def __init__(self, num_heads, kv_num_heads, scale, window, softcap, rotary, interleaved, n_outputs):
        super().__init__()
        self.num_heads, self.kv_num_heads = num_heads, kv_num_heads
        self.scale, self.window, self.softcap = scale, window, softcap
        self.rotary, self.interleaved, self.n_outputs = rotary, interleaved, n_outputs

    def forward(self, query, key=None, value=None, past_key=None, past_value=None, seqlens_k=None,  # noqa: PLR0913
                total_sequence_length=None, cos_cache=None, sin_cache=None, position_ids=None,
                attention_bias=None, head_sink=None):  # fmt: skip
        n, nkv = self.num_heads, self.kv_num_heads
        b, s = query.shape[:2]
        if key is None:  # packed (B, S, (N + 2 N_kv) H)
            h = query.shape[-1] // (n + 2 * nkv)
            query, key, value = torch.split(query, [n * h, nkv * h, nkv * h], dim=-1)
        h = query.shape[-1] // n
        q = query.reshape(b, s, n, h).transpose(1, 2)
        k = key.reshape(b, s, nkv, h).transpose(1, 2)
        v = value.reshape(b, s, nkv, h).transpose(1, 2)
        p = 0 if past_key is None else past_key.shape[2]
        if position_ids is not None:
            pos = position_ids.long().reshape(b, s)
        else:
            pos = (p + torch.arange(s, device=q.device)).expand(b, s)
        if self.rotary:
            cos = cos_cache[pos][:, None].to(q.dtype)  # (B, 1, S, R/2)
            sin = sin_cache[pos][:, None].to(q.dtype)
            q = _rotate(q, cos, sin, self.interleaved)
            k = _rotate(k, cos, sin, self.interleaved)
        if past_key is not None and p:
            k = torch.cat([past_key, k], 2)
            v = torch.cat([past_value, v], 2)
        present_k, present_v = k, v
        group = n // nkv
        kh = k.repeat_interleave(group, 1)
        vh = v.repeat_interleave(group, 1)
        scale = self.scale or 1.0 / math.sqrt(h)
        scores = torch.matmul(q, kh.transpose(-1, -2)) * scale
        if self.softcap > 0:
            scores = self.softcap * torch.tanh(scores / self.softcap)
        t = kh.shape[2]
        keys = torch.arange(t, device=q.device)
        qpos = p + torch.arange(s, device=q.device)
        masked = keys[None, :] > qpos[:, None]  # causal, over absolute positions
        if self.window >= 0:
            masked = masked | (keys[None, :] < qpos[:, None] - self.window)
        masked = masked[None, None].expand(b, 1, s, t)
        if seqlens_k is not None:
            masked = masked | (keys.view(1, 1, 1, t) > seqlens_k.long().view(b, 1, 1, 1))
        if attention_bias is not None:
            scores = scores + attention_bias
        scores = scores.masked_fill(masked, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, vh).transpose(1, 2).reshape(b, s, n * h)
        return _outputs((out, present_k, present_v), self.n_outputs)


@converter("GroupQueryAttention", 1, domain=MS)
def _group_query_attention(node, graph):
    a = node.attributes
    if _present(node, 11):
        raise unsupported(node, "input 'head_sink'")
    if a.get("qk_output", 0):
        raise unsupported(node, "the qk output")
    module = OnnxGroupQueryAttention(
        int(a["num_heads"]), int(a["kv_num_heads"]), float(a.get("scale", 0.0)), int(a.get("local_window_size", -1)),
        float(a.get("softcap", 0.0)), bool(a.get("do_rotary", 0)), bool(a.get("rotary_interleaved", 0)),
        max(1, len(node.output_values)),
    )  # fmt: skip
    return result(module, node)


# --- normalisation --------------------------------------------------------------------------------------
def _layer_norm(x: torch.Tensor, gamma, beta, eps: float, simplified: bool):
    """(normalised, mean, inverse std) over the last axis; RMS norm when ``simplified``."""
    if simplified:
        mean = torch.zeros_like(x[..., :1])
        inv = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        y = x * inv
    else:
        mean = x.mean(-1, keepdim=True)
        centred = x - mean
        inv = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
        y = centred * inv
    y = y * gamma
    if beta is not None:
        y = y + beta
    return y, mean, inv


class OnnxSkipLayerNorm(nn.Module):
    """``SkipLayerNormalization`` / ``SkipSimplifiedLayerNormalization``: norm of ``input + skip (+ bias)``.

    Outputs: output, mean, inv_std_var, input_skip_bias_sum (the first ``n_outputs``).
    """

    def __init__(self, epsilon: float, simplified: bool, n_outputs: int):
        super().__init__()
        self.epsilon = epsilon
        self.simplified = simplified
        self.n_outputs = n_outputs

    def forward(self, input, skip, gamma, beta=None, bias=None):  # noqa: A002
        s = input + skip
        if bias is not None:
            s = s + bias
        y, mean, inv = _layer_norm(s, gamma, beta, self.epsilon, self.simplified)
        return _outputs((y, mean, inv, s), self.n_outputs)


class OnnxSkipSimplifiedLayerNorm(OnnxSkipLayerNorm):
    """``SkipSimplifiedLayerNormalization``: inputs input, skip, gamma, bias (no beta)."""

    def forward(self, input, skip, gamma, bias=None):  # noqa: A002
        return super().forward(input, skip, gamma, None, bias)


@converter("SkipLayerNormalization", 1, domain=MS)
def _skip_layer_norm(node, graph):
    eps = float(node.attributes.get("epsilon", 1e-12))
    return result(OnnxSkipLayerNorm(eps, False, max(1, len(node.output_values))), node)


@converter("SkipSimplifiedLayerNormalization", 1, domain=MS)
def _skip_simplified_layer_norm(node, graph):
    if len(node.output_values) > 1 and node.output_values[1]:
        raise unsupported(node, "the mean output (a simplified norm has none)")
    eps = float(node.attributes.get("epsilon", 1e-12))
    return result(OnnxSkipSimplifiedLayerNorm(eps, True, max(1, len(node.output_values))), node)


class OnnxSimplifiedLayerNorm(nn.Module):
    """``SimplifiedLayerNormalization`` (RMS norm over the axes from ``axis`` on): Y, inv_std_var."""

    def __init__(self, axis: int, epsilon: float, n_outputs: int):
        super().__init__()
        self.axis = axis
        self.epsilon = epsilon
        self.n_outputs = n_outputs

    def forward(self, x, scale):
        axes = tuple(range(self.axis % x.dim(), x.dim()))
        inv = torch.rsqrt(x.pow(2).mean(axes, keepdim=True) + self.epsilon)
        return _outputs((x * inv * scale, inv), self.n_outputs)


def _simplified_layer_norm(node, graph):
    a = node.attributes
    if a.get("stash_type", 1) != 1:
        raise unsupported(node, f"stash_type={a['stash_type']}")
    module = OnnxSimplifiedLayerNorm(
        int(a.get("axis", -1)), float(a.get("epsilon", 1e-5)), max(1, len(node.output_values))
    )
    return result(module, node)


# onnxruntime registers it in the ONNX domain (not in com.microsoft); onnx has no schema for it, so the
# lookup asks for the model's default-domain opset itself: register every one
converter("SimplifiedLayerNormalization", range(1, 27))(_simplified_layer_norm)


class OnnxWordEmbedding(nn.Module):
    """The word-embedding lookup of ``EmbedLayerNormalization`` (its own graph node: see module doc)."""

    def forward(self, input_ids, word_embedding):
        return F.embedding(input_ids.long(), word_embedding)


class OnnxEmbedLayerNormRest(nn.Module):
    """Position and segment embeddings, LayerNorm and the mask index of ``EmbedLayerNormalization``.

    Outputs: output, mask_index, embedding_sum (the first ``n_outputs``).
    """

    def __init__(self, epsilon: float, n_outputs: int):
        super().__init__()
        self.epsilon = epsilon
        self.n_outputs = n_outputs

    def forward(
        self,
        words,
        input_ids,
        segment_ids,
        position_embedding,
        segment_embedding,
        gamma,
        beta,
        mask,
        position_ids,
    ):
        b, s = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(s, device=words.device)[None, :]
        total = words + F.embedding(position_ids.long(), position_embedding)
        if segment_ids is not None and segment_embedding is not None:
            total = total + F.embedding(segment_ids.long(), segment_embedding)
        y, _, _ = _layer_norm(total, gamma, beta, self.epsilon, False)
        if mask is not None:
            mask_index = (mask != 0).sum(-1).to(torch.int32)
        else:
            mask_index = torch.zeros(b, dtype=torch.int32, device=words.device)
        return _outputs((y, mask_index, total), self.n_outputs)


_EMBED_INPUTS = (
    "input_ids", "segment_ids", "word_embedding", "position_embedding", "segment_embedding", "gamma", "beta",
    "mask", "position_ids",
)  # fmt: skip


@converter("EmbedLayerNormalization", 1, domain=MS)
def _embed_layer_norm(node, graph):
    a = node.attributes
    n_out = max(1, len(node.output_values))
    if n_out > 1 and node.output_values[1] and a.get("mask_index_type", 1) != 1:
        raise unsupported(node, f"mask_index_type={a['mask_index_type']}")
    # a small fx graph: word lookup, then the rest; the driver inlines it (``onnx_inline``)
    g = fx.Graph()
    root = nn.Module()
    root.words = OnnxWordEmbedding()
    root.rest = OnnxEmbedLayerNormRest(float(a.get("epsilon", 1e-12)), n_out)
    names = list(node.input_values) + [""] * (len(_EMBED_INPUTS) - len(node.input_values))
    ph = {key: g.placeholder(key) for key in _EMBED_INPUTS}
    words = g.call_module("words", (ph["input_ids"], ph["word_embedding"]))
    rest = [ph[k] for k in _EMBED_INPUTS if k not in ("word_embedding",)]
    out = g.call_module("rest", (words, *rest))
    g.output(out)
    module = fx.GraphModule(root, g)
    module.onnx_inline = True
    return result(module, node, tuple(names))


# --- activations and products ---------------------------------------------------------------------------
class OnnxBiasGelu(nn.Module):
    """``Gelu`` / ``BiasGelu`` (exact, erf) and ``FastGelu`` (tanh approximation) of ``x (+ bias)``."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x, bias=None):
        return F.gelu(x if bias is None else x + bias, approximate=self.approximate)


converter("Gelu", 1, domain=MS)(lambda node, graph: result(OnnxBiasGelu(), node))
converter("BiasGelu", 1, domain=MS)(lambda node, graph: result(OnnxBiasGelu(), node))
converter("FastGelu", 1, domain=MS)(lambda node, graph: result(OnnxBiasGelu("tanh"), node))


class OnnxQuickGelu(nn.Module):
    """``QuickGelu``: ``x * sigmoid(alpha * x)``."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return x * torch.sigmoid(self.alpha * x)


@converter("QuickGelu", 1, domain=MS)
def _quick_gelu(node, graph):
    return result(OnnxQuickGelu(float(node.attributes.get("alpha", 1.702))), node)


class OnnxBiasAdd(nn.Module):
    """``BiasAdd``: ``X + bias + skip``."""

    def forward(self, x, bias, skip):
        return x + bias + skip


converter("BiasAdd", 1, domain=MS)(lambda node, graph: result(OnnxBiasAdd(), node))


class OnnxFusedMatMul(nn.Module):
    """``FusedMatMul``: ``alpha * op(A) @ op(B)``, ``op`` transposing the last two axes when asked."""

    def __init__(self, alpha: float, trans_a: bool, trans_b: bool):
        super().__init__()
        self.alpha = alpha
        self.trans_a = trans_a
        self.trans_b = trans_b

    def forward(self, a, b):
        if self.trans_a and a.dim() >= 2:
            a = a.transpose(-1, -2)
        if self.trans_b and b.dim() >= 2:
            b = b.transpose(-1, -2)
        out = torch.matmul(a, b)
        return out * self.alpha if self.alpha != 1.0 else out


@converter("FusedMatMul", 1, domain=MS)
def _fused_matmul(node, graph):
    a = node.attributes
    for attr in ("transBatchA", "transBatchB"):
        if a.get(attr, 0):
            raise unsupported(node, f"attribute {attr}={a[attr]}")
    module = OnnxFusedMatMul(float(a.get("alpha", 1.0)), bool(a.get("transA", 0)), bool(a.get("transB", 0)))
    return result(module, node)
