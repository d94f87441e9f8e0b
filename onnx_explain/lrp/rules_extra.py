"""LRP rules for onnxruntime's fused transformer nodes (``com.microsoft`` ``Attention``,
``MultiHeadAttention``, ``EmbedLayerNormalization``, ``BiasGelu``/``FastGelu`` with a bias) and for
``ai.onnx.ml``'s ``LinearClassifier`` (a linear layer and its activation in one node), as the Norm share
``R_i = x_i ⊙ ∂s/∂x_i · R / s(x)`` of a *patched* forward ``s`` that computes the node's own output.

The patches are those of AttnLRP (Achtibat et al., ICML 2024) in its gradient×input form (METHODS §2.6), so a
fused node gets exactly the relevance its unfused subgraph gets from the per-op rules:

- attention: a product of two activations (Q·Kᵀ, P·V) has its gradient halved (the uniform bilinear split),
  the softmax is differentiated as it is (AttnLRP's rule), or held constant (CP-LRP); the projections are
  linear (ε with a vanishing ε), the mask and attention bias are additive constants;
- layer norms: σ held constant;
- an activation of ``x + bias``: the identity rule on the activation, then the bias absorbs its share
  (``R_x = x / (x + b) · R``), as the linear layer before an unfused activation does with its bias.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from . import rules as R


class ShareRule:
    """A Norm-type rule through a surrogate of the node: ``R_i = x_i ⊙ ∂s/∂x_i · R/st(s(x))``.

    Unlike :func:`onnx_explain.lrp.rules.norm`, outputs that are not float tensors (a mask index) and
    outputs that receive no relevance are skipped, and the surrogate is built knowing which inputs carry
    relevance (``surrogate(module, dependent)``): the others are constants of the patched forward.
    """

    uses_params = False

    def __init__(
        self,
        name: str,
        surrogate: Callable | None = None,
        stabilizer: float = 1e-6,
        signal: Callable | None = None,
    ):
        self.name = name
        self.stabilizer = stabilizer
        self.surrogate = surrogate
        if surrogate is not None:
            self.surrogate.with_dependent = True
        #: ``(i, inputs) -> tensor`` that multiplies input i's gradient (default: the input itself)
        self.signal = signal

    def __repr__(self):
        return f"ShareRule({self.name!r})"

    def relevance(self, module, inputs, relevance, output=None) -> list:
        """Relevance of each of ``inputs`` given the node's output relevance (one per output)."""
        ins = [x if not isinstance(x, torch.Tensor) else x.detach().requires_grad_(x.is_floating_point())
               for x in inputs]  # fmt: skip
        out = module(*ins)
        outs = list(out) if isinstance(out, tuple) else [out]
        rels = list(relevance) if isinstance(relevance, tuple) else [relevance]
        pairs = [(o, r) for o, r in zip(outs, rels, strict=True)
                 if isinstance(o, torch.Tensor) and o.is_floating_point() and o.requires_grad and r is not None]  # fmt: skip
        wanted = [x for x in ins if isinstance(x, torch.Tensor) and x.requires_grad]
        if not pairs or not wanted:
            return [None] * len(ins)
        grad_outs = [r / R.stabilize(o.detach(), self.stabilizer) for o, r in pairs]
        grads = iter(torch.autograd.grad([o for o, _ in pairs], wanted, grad_outs, allow_unused=True))
        rel = []
        for i, x in enumerate(ins):
            g = next(grads) if isinstance(x, torch.Tensor) and x.requires_grad else None
            a = x if self.signal is None or g is None else self.signal(i, inputs).detach()
            rel.append(None if g is None else torch.where(torch.isfinite(a), a * g, 0.0))
        return rel


# ----------------------------------------------------------------------------------------- attention

_MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm}
_SOFTMAXES = {torch.softmax, torch.Tensor.softmax, torch.nn.functional.softmax}


class _AttentionPatch(TorchFunctionMode):
    """Within a fused attention's forward: halve the gradient of every product of two tensors that
    depend on the explained input (Q·Kᵀ, P·V; the projection by the constant weights is not one); with
    ``cp``, hold the attention probabilities constant instead (CP-LRP)."""

    def __init__(self, cp: bool):
        super().__init__()
        self.cp = cp

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.cp:
            return out.detach() if func in _SOFTMAXES else out
        if func in _MATMULS and all(isinstance(a, torch.Tensor) and a.requires_grad for a in args[:2]):
            return 0.5 * out + 0.5 * out.detach()  # value unchanged, gradient halved
        return out


class _PatchedAttention(nn.Module):
    """A converted ``Attention`` / ``MultiHeadAttention`` run under :class:`_AttentionPatch`, its inputs
    that carry no relevance (weights, biases, masks) held constant."""

    def __init__(self, module: nn.Module, dependent, cp: bool):
        super().__init__()
        self.module = module
        self.dependent = set(dependent)
        self.cp = cp

    def forward(self, *args, **kwargs):
        args = [a.detach() if isinstance(a, torch.Tensor) and i not in self.dependent else a
                for i, a in enumerate(args)]  # fmt: skip
        # keyword inputs are the optional ones after a skipped input (a cache, sequence lengths, rotary
        # tables): constants
        kwargs = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        with _AttentionPatch(self.cp):
            return self.module(*args, **kwargs)


def attention(stabilizer: float = 1e-6) -> ShareRule:
    """AttnLRP on a fused attention node: ε on the projections, the bilinear split of Q·Kᵀ and P·V, the
    softmax by its rule, masks as additive constants."""
    return ShareRule("attention", lambda m, dep: _PatchedAttention(m, dep, cp=False), stabilizer)


def _qattention_signal(i, inputs):
    """QAttention's input ``q`` is ``DynamicQuantizeLinear``'s ``round(x / s) + zp``, which passes relevance
    straight through (``R_x = R_q / s``, its gradient): ``q``'s gradient is multiplied by ``(q - zp)·s``, so
    that ``R_x = (q - zp) ⊙ ∂out/∂q · R/out = x̂ ⊙ ∂out/∂x̂ · R/out`` with ``x̂ = (q - zp)·s``, the share a
    float Attention gives its input (the zero point is no part of the signal)."""
    q, scale = inputs[0], inputs[3].detach().float().reshape(())
    zp = inputs[6] if len(inputs) > 6 and inputs[6] is not None else None
    centred = q.float() - (zp.float().reshape(()) if zp is not None else 0.0)
    return centred * scale if i == 0 else inputs[i]


def qattention(stabilizer: float = 1e-6) -> ShareRule:
    """AttnLRP on ``com.microsoft.QAttention`` (the fused attention of ``quantize_dynamic``): as
    :func:`attention`, the packed projection by the constant integer weights being the linear part."""
    return ShareRule(
        "attention", lambda m, dep: _PatchedAttention(m, dep, cp=False), stabilizer, _qattention_signal
    )


def qattention_cp(stabilizer: float = 1e-6) -> ShareRule:
    """CP-LRP on ``com.microsoft.QAttention``."""
    return ShareRule(
        "attention_cp", lambda m, dep: _PatchedAttention(m, dep, cp=True), stabilizer, _qattention_signal
    )


def attention_cp(stabilizer: float = 1e-6) -> ShareRule:
    """CP-LRP on a fused attention node: the attention probabilities are constants, V takes everything."""
    return ShareRule("attention_cp", lambda m, dep: _PatchedAttention(m, dep, cp=True), stabilizer)


# ----------------------------------------------------------------------------------------- norms, activations


class _SigmaDetachedEmbed(nn.Module):
    """The rest of a converted ``EmbedLayerNormalization`` (word embeddings in; position and segment
    embeddings added, LayerNorm) with σ held constant; the mask index passes through."""

    def __init__(self, module: nn.Module, dependent):
        super().__init__()
        self.module = module

    def forward(self, words, input_ids, segment_ids, position_embedding, segment_embedding, gamma, beta, mask,
                position_ids):  # fmt: skip
        import torch.nn.functional as F

        ln = self.module
        b, s = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(s, device=words.device)[None, :]
        total = words + F.embedding(position_ids.long(), position_embedding.detach())
        if segment_ids is not None and segment_embedding is not None:
            total = total + F.embedding(segment_ids.long(), segment_embedding.detach())
        centred = total - total.mean(-1, keepdim=True)  # the mean is not detached (LXT)
        sigma = torch.sqrt(centred.detach().pow(2).mean(-1, keepdim=True) + ln.epsilon)
        y = centred / sigma * gamma.detach()
        y = y + beta.detach() if beta is not None else y
        if ln.n_outputs == 1:
            return y
        mask_index = ((mask != 0).sum(-1) if mask is not None else torch.zeros(b, device=words.device)).to(
            torch.int32
        )
        return (y, mask_index, total)[: ln.n_outputs]


class _SigmaDetachedQEmbed(_SigmaDetachedEmbed):
    """``QEmbedLayerNormalization`` after its word lookup: its tables, γ and β dequantized, then as
    :class:`_SigmaDetachedEmbed`."""

    def forward(self, words, input_ids, segment_ids, position_q, segment_q, gamma_q, beta_q, mask,  # noqa: PLR0913
                position_s, segment_s, gamma_s, beta_s, position_z, segment_z, gamma_z, beta_z):  # fmt: skip
        def deq(q, s, z):
            v = q.to(torch.int32) - (z.to(torch.int32).reshape(()) if z is not None else 0)
            return v.to(torch.float32) * s.detach().float().reshape(())

        segment = None if segment_q is None else deq(segment_q, segment_s, segment_z)
        return super().forward(
            words, input_ids, segment_ids, deq(position_q, position_s, position_z), segment,
            deq(gamma_q, gamma_s, gamma_z), deq(beta_q, beta_s, beta_z), None if mask is None else (mask == 1), None,
        )  # fmt: skip


class _SigmaDetachedSkipNorm(nn.Module):
    """A ``SkipLayerNormalization`` / ``SkipSimplifiedLayerNormalization`` that also gives its sum
    ``input + skip (+ bias)`` as output 3 (onnxruntime-genai's residual stream): the norm with σ held
    constant, the mean and 1/σ outputs constants, the sum as it is."""

    def __init__(self, module: nn.Module, dependent):
        super().__init__()
        self.module = module
        self.norm = R.sigma_detached(module)

    def forward(self, *args):
        outs = list(self.module(*args))
        outs[0] = self.norm(*args)
        for i in (1, 2):
            if i < len(outs) and isinstance(outs[i], torch.Tensor):
                outs[i] = outs[i].detach()
        return tuple(outs)


def skip_layer_norm(stabilizer: float = 1e-6) -> ShareRule:
    """A skip norm with several outputs: each input's Norm share of the normalised output (σ constant, as
    :func:`onnx_explain.lrp.rules.layer_norm`) and of the sum output, added."""
    return ShareRule("layer_norm", _SigmaDetachedSkipNorm, stabilizer)


def q_embed_layer_norm(stabilizer: float = 1e-6) -> ShareRule:
    """``QEmbedLayerNormalization`` after its word lookup: as :func:`embed_layer_norm` on the dequantized
    tables."""
    return ShareRule("layer_norm", _SigmaDetachedQEmbed, stabilizer)


def embed_layer_norm(stabilizer: float = 1e-6) -> ShareRule:
    """``EmbedLayerNormalization`` after its word lookup: word + position (+ segment) embeddings, the
    constants absorbing their share, then LayerNorm with σ held constant."""
    return ShareRule("layer_norm", _SigmaDetachedEmbed, stabilizer)


class _BiasIdentity(nn.Module):
    """``act(x + b)`` written as ``(x + b) · (act(x + b) / (x + b))`` with the ratio held constant: the
    identity rule on the activation, then ``x`` and the bias share by their values."""

    def __init__(self, module: nn.Module, dependent):
        super().__init__()
        self.module = module

    def forward(self, x, bias=None):
        out = self.module(x, bias)
        z = x if bias is None else x + bias
        ratio = torch.where(z != 0, out / torch.where(z != 0, z, 1.0), 0.0)
        return z * ratio.detach()


class _LinearScores(nn.Module):
    """A ``LinearClassifier`` (``ai.onnx.ml``) as its linear layer and its post transform: the scores
    written as ``base · (scores / base)`` with the ratio held constant, ``base`` the margins ``X Wᵀ + b``
    (a binary model's ``[-s, s]``). Relevance passes the post transform unchanged (the identity rule of an
    activation; a binary model's two columns both reach its one margin, as a ``Neg`` and a ``Concat``
    pass it) and the linear layer shares it by the ε rule, the intercept absorbing its share."""

    def __init__(self, module: nn.Module, dependent):
        super().__init__()
        self.module = module

    def forward(self, x):
        m = self.module
        margins = m.margins(x)
        scores = m.scores(margins)
        base = torch.cat([-margins, margins], dim=1) if m.binary else margins
        ratio = torch.where(base != 0, scores / torch.where(base != 0, base, 1.0), 0.0)
        labels = m(x.detach())
        labels = labels[0] if isinstance(labels, tuple) else labels
        return (labels, base * ratio.detach()) if m.n_out == 2 else labels


def linear_scores(stabilizer: float = 1e-6) -> ShareRule:
    """A ``LinearClassifier``'s scores: the identity rule through its post transform, then the ε rule on
    its linear map (:class:`_LinearScores`)."""
    return ShareRule("epsilon", _LinearScores, stabilizer)


def bias_identity(stabilizer: float = 1e-6) -> ShareRule:
    """An activation of ``x + bias`` (``BiasGelu``, ``FastGelu`` with a bias): identity on the activation,
    the bias absorbing its share, as the linear layer before an unfused activation does."""
    return ShareRule("bias_identity", _BiasIdentity, stabilizer)
