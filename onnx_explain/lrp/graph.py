"""Build the LRP graph of a converted model in three steps, on a copy (the model itself is never modified):

- **canonize**: ``DequantizeLinear`` of constant weights evaluated (QDQ graphs), Conv/Gemm whose weights thus
  became constants made layers, quantize_dynamic's ``MatMulInteger``/``ConvInteger`` chains made a dequantized
  input and the dequantized layer, MatMul+Add → Linear, BatchNorm merged into the preceding linear layer;
- **plan**: every node that carries relevance gets its role (:mod:`onnx_explain.lrp.roles`) and a rule
  from the override, the composite or the role — or the build fails naming the ONNX node;
- **wrap**: each planned node's module is replaced by a :class:`RuleWrapper` computing its rule.

Op roles (docs/methods.md §2.5.6; registered in :mod:`onnx_explain.lrp.roles`):

=============================================  ==========================================================
Conv, ConvTranspose, Gemm, MatMul (const W)    the composite's rule for the layer (MatMul + Add(bias) is
                                               one linear layer)
Add/Sum of two or more activations             Norm (proportional split)
Add/Sub of a constant                          Norm on the activation (the constant absorbs its share)
AveragePool, GlobalAveragePool, ReduceMean,    Norm
ReduceSum
MaxPool, GlobalMaxPool, ReduceMax              gradient (winner takes all); ``maxpool='avgpool'``: Norm
                                               through an average-pool surrogate (Montavon's tutorial)
activations (Relu, LeakyRelu, Sigmoid, Tanh,   Pass
Gelu, Elu, Softplus, HardSwish, Clip ...)
BatchNormalization                             merged into the preceding linear layer; else Pass
Mul/Div by a constant                          Pass
Mul of a signal and a gate (SiLU, SE, GELU)    Pass to the signal; the gate is a constant
Mul/MatMul/Einsum of two activations           bilinear (½ each)
Softmax                                        AttnLRP's rule (CP-LRP: stop)
LayerNormalization (+ fused), Sqrt of a mean   σ held constant
com.microsoft Attention, MultiHeadAttention,   AttnLRP through the fused node (bilinear halves, softmax
QAttention                                     rule, projections ε, masks constant); CP-LRP: P constant
com.microsoft (Q)EmbedLayerNormalization       the embeddings' shares, σ held constant
com.microsoft BiasGelu, FastGelu(x, bias)      identity on the activation, the bias absorbing its share
LSTM, GRU, RNN                                 signal-take-all
routing (Flatten, Reshape, Transpose, Concat,  gradient
Slice, Pad, Squeeze, Gather, Where ...)
QuantizeLinear/DequantizeLinear of an          gradient: a Q → DQ pair is the straight-through identity
activation, DynamicQuantizeLinear              (0 where it clips); DQL's scale and zero point: constants
anything else carrying relevance               error naming the node, unless ``fallback='gradient'``
=============================================  ==========================================================
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.func import functional_call
from torch.fx.passes.shape_prop import ShapeProp

from ..convert.driver import NODE_ATTR
from ..errors import LRPCoverageError, OnnxExplainError, OptionError, node_label
from ..options import validate_call
from . import roles as roles_
from . import rules as R
from . import rules_extra as RX
from .composites import COMPOSITES, ROLE_RULES

#: op types that are linear layers with a constant weight, and products of activations otherwise
_LAYER_OPS = ("MatMul", "Einsum", "Gemm", "Conv", "ConvTranspose")
LINEAR_TYPES = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)


@dataclass
class Assignment:
    """What the LRP graph does at one node (for reports and the coverage diagnostic)."""

    module: str
    onnx_name: str
    op: str
    rule: str
    fallback: bool = False


class _LRPFunction(torch.autograd.Function):
    """Forward: the layer itself. Backward: the rule's relevance instead of the gradient."""

    @staticmethod
    def forward(ctx, wrapper, kwargs, *args):
        ctx.wrapper = wrapper
        ctx.kwargs = kwargs  # keyword inputs (a Resize's scales/sizes): the rule's re-run needs them too
        ctx.n = len(args)
        with torch.no_grad():
            out = wrapper.module(*args, **kwargs)
        ctx.multi = isinstance(out, tuple)  # LSTM/GRU: Y, Y_h (, Y_c)
        ctx.save_for_backward(*args, *(out if ctx.multi else (out,)))
        return out

    @staticmethod
    def backward(ctx, *relevances):
        w = ctx.wrapper
        saved = ctx.saved_tensors
        args, outs = list(saved[: ctx.n]), saved[ctx.n :]
        relevance, out = (relevances, outs) if ctx.multi else (relevances[0], outs[0])
        grads = [None] * ctx.n
        with torch.enable_grad():
            if w.rule is R.PASS:
                x = args[w.dependent[0]]
                if relevance.shape != x.shape:
                    relevance = relevance.sum_to_size(x.shape)
                grads[w.dependent[0]] = relevance
            elif w.rule is R.STOP:
                pass  # the output is a constant: no relevance reaches the inputs
            elif w.rule.uses_params:
                grads[w.dependent[0]] = w.rule.relevance(w.module, [args[w.dependent[0]]], relevance, out)[0]
            else:
                layer = w.surrogate if w.surrogate is not None else w.module
                if ctx.kwargs:
                    layer = functools.partial(layer, **ctx.kwargs)
                rel = w.rule.relevance(layer, args, relevance)
                for i in w.dependent:
                    grads[i] = rel[i]
        if w.record is not None and not ctx.multi:  # per-sample sums need batch-first single outputs
            total_out = relevance.reshape(len(relevance), -1).sum(1).detach()
            total_in = torch.zeros_like(total_out)
            for i in w.dependent:
                if grads[i] is not None:
                    total_in = total_in + grads[i].reshape(len(grads[i]), -1).sum(1).detach()
            w.record.setdefault(w.label, []).append((total_out, total_in))
        return (None, None, *grads)


class RuleWrapper(nn.Module):
    """A layer whose backward pass is an LRP rule (its forward is the layer's)."""

    def __init__(self, module, rule, dependent, label):
        super().__init__()
        self.module = module
        self.rule = rule
        self.dependent = list(dependent)
        self.label = label
        make = getattr(rule, "surrogate", None)
        if make is None:
            self.surrogate = None
        else:  # a surrogate may need to know which inputs carry relevance (the others are constants)
            self.surrogate = (
                make(module, self.dependent) if getattr(make, "with_dependent", False) else make(module)
            )
        self.record = None
        setattr(self, NODE_ATTR, getattr(module, NODE_ATTR, ("", "", "")))

    def forward(self, *args, **kwargs):
        return _LRPFunction.apply(self, kwargs, *args)


# ------------------------------------------------------------------------------ the single-backward form
def patchable(rule) -> bool:
    """Whether ``rule`` has a single-backward form: a forward whose value is the layer's and whose plain
    gradient, times the input, is the rule's relevance (LXT's observation, Achtibat et al. 2024). True for
    the gradient, pass and stop rules, every Norm-type rule (sums, softmax, bilinear, layer norms, fused
    nodes through their surrogates) and the layer rules whose relevance is a weighted sum of
    ``in_k ⊙ g_k`` with ``in_k`` the input or a clamp of it (ε, z⁺, αβ, γ); z^B, flat and w² are not
    ``input ⊙ something`` and need the rule graph (z^B on the explained input itself excepted: see
    :func:`wrap`)."""
    if rule in (R.GRADIENT, R.PASS, R.STOP):
        return True
    if isinstance(rule, RX.ShareRule):
        return rule.signal is None
    if isinstance(rule, R.Rule):
        return (not rule.uses_params) or rule.weights is not None
    return False


class _Carry(torch.autograd.Function):
    """``value`` (a constant) whose backward gives each share ``s_k`` the gradient ``g ⊙ m_k``: the value is
    the layer's, the backward the rule's. ``_Carry.apply(value, n, s_1..s_n, m_1..m_n)``; nothing is
    computed in the forward pass, and batched backwards (vmap) apply it per target."""

    generate_vmap_rule = True

    @staticmethod
    def forward(value, n, *tensors):
        return value.view_as(value)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, ctx.n, *tensors = inputs
        ctx.save_for_backward(*tensors[ctx.n :])

    @staticmethod
    def backward(ctx, g):
        return (None, None, *(g * m for m in ctx.saved_tensors), *([None] * ctx.n))


def _carry(value: torch.Tensor, s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``value`` (no gradient of its own) whose gradient reaches ``s`` scaled by the constant ``m``."""
    m = m.detach()
    if not (bool(torch.isfinite(m.sum())) and bool(torch.isfinite(s.detach().sum()))):
        with torch.no_grad():  # a masked logit (−inf) has no share, and adds no NaN
            m = torch.where(torch.isfinite(m), m, 0.0)
            m = torch.where(torch.isfinite(s * m), m, 0.0)
    return _Carry.apply(value.detach(), 1, s, m)


def _passes(rule, module: nn.Module, x: torch.Tensor):
    """The single-backward form of a layer rule's passes (any layer type, any input sign): the layer's
    output, the shares ``layer_k(in_k(x))`` with their graph (a clamp's gradient selects its part of
    ``x``), and their factors ``w_k · a_k ⊙ out`` (``a_k`` the mapper's coefficient, linear in R)."""
    with torch.no_grad():
        out = module(x)
    has_neg = R._has_negative(x)
    shares, outs = [], []
    for in_mod, p_mod, w in zip(rule.input_mods, rule.param_mods, rule.weights, strict=True):
        p = p_mod.params(module)
        if in_mod is R._neg and not has_neg and (p_mod.zero_bias or "bias" not in p):
            shares.append(None)  # an all-zero input and no bias: nothing, as the rule graph skips it
            outs.append(torch.zeros_like(out))
            continue
        with torch.set_grad_enabled(w != 0 and torch.is_grad_enabled()):
            o = functional_call(module, p, (in_mod(x),))
        shares.append(o if w != 0 else None)
        outs.append(o.detach())
    with torch.no_grad():
        coeffs = rule.mapper(torch.ones_like(out), outs)
        kept = [
            (s, w * c * out) for s, c, w in zip(shares, coeffs, rule.weights, strict=True) if s is not None
        ]
    return out, [s for s, _ in kept], [m for _, m in kept]


class _InputRule(torch.autograd.Function):
    """A layer rule with no single-backward form (z^B) on the explained input itself, inside the
    single-backward graph: its backward turns the gradient into the output relevance ``out ⊙ g`` and
    returns the rule's input relevance, which is what the input's gradient must be there."""

    @staticmethod
    def forward(ctx, wrapper, x):
        ctx.wrapper = wrapper
        with torch.no_grad():
            out = wrapper.module(x)
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx, g):
        x, out = ctx.saved_tensors
        with torch.enable_grad():
            return None, ctx.wrapper.rule.relevance(ctx.wrapper.module, [x], out * g, out)[0]


#: ops linear and homogeneous in the input that carries relevance, the others held constant: the pass rule
#: (R_in = R_out) is their plain gradient times the input
_HOMOGENEOUS = frozenset({"Mul", "Div", "Neg", "Identity", "Dropout", "Cast", "Reshape", "Transpose"})
#: activations piecewise linear through the origin: ``f(x) = f'(x)·x``, so the pass rule is their plain gradient
_PIECEWISE_LINEAR = frozenset({"Relu", "LeakyRelu", "PRelu", "ThresholdedRelu"})


def single_form(rule, module) -> str:
    """How a planned node enters the single-backward graph:

    - ``'plain'``: as it is (routing and selection ops, whose gradient rule ``x ⊙ Jᵀ(R/out)`` is ``Jᵀ R``;
      ReLU-type activations under the pass rule; LRP-0 on a layer);
    - ``'constant_others'``: the pass rule on an op linear in its one relevant input, the others held
      constant (a gate); an unstabilised Norm-type rule (sums, softmax: ``x ⊙ Jᵀ(R/out)`` is the
      gradient times the input); ``'surrogate'``: the same through the rule's surrogate (a layer norm
      with σ constant, a patched fused attention); ``'bilinear'``: an unstabilised product, its gradient
      halved;
    - ``'ratio'``: the identity rule on an activation (the input scaled by ``out / x``; a ReLU's gradient
      already is that, so a ReLU is ``'plain'``);
    - ``'epsilon'``: LRP-ε with the default stabiliser on a linear layer (its factor in the backward alone);
    - ``'passes'``: another layer rule (z⁺, αβ, γ, ε with another stabiliser), its passes as shares;
    - ``'carrier'``: a Norm-type rule (sums, softmax, the bilinear ½, a layer norm with σ constant, a
      fused node's share rule through its patched surrogate, an average pool for a max): its shares
      through the op or its surrogate, scaled by ``out / st(s)``, so the stabiliser acts exactly as in
      the rule graph;
    - ``'stop'``: a constant; ``'input'``: a layer rule without such a form (z^B, flat), only placed on the
      explained input (:func:`wrap`)."""
    if rule is R.GRADIENT:
        return "plain"
    if rule is R.STOP:
        return "stop"
    op = getattr(module, NODE_ATTR, ("", "", ""))[1]
    if rule is R.PASS:
        if op in _PIECEWISE_LINEAR:
            return "plain"
        return "constant_others" if op in _HOMOGENEOUS else "ratio"
    if rule.uses_params:
        if rule.weights is None:
            return "input"
        if rule.name == "epsilon" and rule.options.get("signed"):
            # LRP-0 (ε = 0, no bias change) is the gradient: z / st(z) = 1 wherever z ≠ 0
            return "plain" if rule.options["epsilon"] == 0 and rule.param_mods[0] == R.NO_MOD else "epsilon"
        return "passes"
    same_value = rule.surrogate is None or rule.surrogate is not R.average_pool_of
    if same_value and _unstabilized(rule):  # R/out: the gradient through the op (or its surrogate) alone
        if rule.surrogate is not None:
            return "surrogate"
        return "bilinear" if rule.name == "bilinear" else "constant_others"
    return "carrier"


def _unstabilized(rule) -> bool:
    """A Norm-type rule with no stabiliser (``R/out``; AttnLRP's and LXT's Norm-type rules)."""
    eps = rule.stabilizer if isinstance(rule, RX.ShareRule) else rule.options.get("stabilizer")
    return not callable(eps) and eps == 0


class PatchedWrapper(RuleWrapper):
    """A planned node in the single-backward LRP graph: its forward returns the layer's value, built so that
    the ordinary gradient through it, times the node's input, is the rule's relevance share
    (:func:`single_form` says how; :func:`wrap` places it). With the relevance ``R = out ⊙ g`` of every tensor, each input gets
    ``x ⊙ g_x``, the rule's share."""

    def __init__(self, module, rule, dependent, label):
        super().__init__(module, rule, dependent, label)  # the module, rule and surrogate, as the rule graph
        self.form = single_form(rule, module)

    def _constants(self, args, kwargs):
        ins = [a.detach() if isinstance(a, torch.Tensor) and i not in self.dependent else a
               for i, a in enumerate(args)]  # fmt: skip
        return ins, {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}

    def forward(self, *args, **kwargs):
        form, rule = self.form, self.rule
        if form == "stop":
            with torch.no_grad():
                out = self.module(*args, **kwargs)
            return out
        if form == "constant_others":
            ins, kw = self._constants(args, kwargs)
            return self.module(*ins, **kw)
        if form == "surrogate":
            ins, kw = self._constants(args, kwargs)
            return self.surrogate(*ins, **kw)
        if form == "bilinear":  # value unchanged, gradient halved (the uniform split)
            return _ScaledGradient.apply(self.module(*args, **kwargs), 0.5, None)
        if form == "ratio":
            x = args[self.dependent[0]]
            with torch.no_grad():
                out = self.module(*args, **kwargs)
                ratio = torch.nan_to_num(out / x, nan=0.0, posinf=0.0, neginf=0.0)
            return _Carry.apply(out, 1, x, ratio)
        if form == "passes":
            x = args[0]
            layer = R._Layer.of(self.module) if rule.single is not None else None
            got = None if layer is None else rule.single(layer, x)
            out, shares, factors = _passes(rule, self.module, x) if got is None else got
            return _Carry.apply(out, len(shares), *shares, *factors)
        if form == "input":
            return _InputRule.apply(self, args[0])
        if form == "epsilon":
            x = args[0]
            eps = rule.options["epsilon"]
            p_mod = rule.param_mods[0]
            if p_mod == R.NO_MOD:
                return _ScaledGradient.apply(self.module(x), 1.0, float(eps))
            with torch.no_grad():
                out = self.module(x)
            z = functional_call(self.module, p_mod.params(self.module), (x,))
            return _carry(out, z, out / R.stabilize(z.detach(), eps))
        # 'carrier': a Norm-type rule, its shares through the op or a surrogate of the same value (a layer
        # norm with σ constant), or of another value (the average pool of a max), scaled by out / st(s)
        ins, kw = self._constants(args, kwargs)
        layer = self.surrogate if self.surrogate is not None else self.module
        s = layer(*ins, **kw)
        if self.surrogate is None or rule.surrogate is not R.average_pool_of:
            true = (
                tuple(o.detach() if isinstance(o, torch.Tensor) else o for o in s)
                if isinstance(s, tuple)
                else s.detach()
            )
        else:
            with torch.no_grad():
                true = self.module(*args, **kwargs)
        scale = _share_scale(rule)
        if isinstance(s, tuple):
            return tuple(
                _carry(t, o, scale(t.detach(), o.detach())) if _carries(o) else t
                for t, o in zip(true, s, strict=True)
            )
        return _carry(true, s, scale(true.detach(), s.detach()))


class _ScaledGradient(torch.autograd.Function):
    """The identity whose backward scales the gradient: by the constant ``factor`` (the bilinear split's
    ½), or, with ``eps``, by ``|z| / (|z| + ε)`` = ``z / st(z)`` (LRP-ε with ``st(z) = z + ε·sign₀(z)``).
    Nothing is computed in the forward pass; batched backwards (vmap) apply it per target."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z, factor, eps):
        return z.view_as(z)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, ctx.factor, ctx.eps = inputs
        if ctx.eps is not None:
            ctx.save_for_backward(z)

    @staticmethod
    def backward(ctx, g):
        if ctx.eps is None:
            return g * ctx.factor, None, None
        (z,) = ctx.saved_tensors
        a = z.abs()
        a.div_(a + ctx.eps)  # in place: one output-sized temporary fewer (g may be batched: not g's)
        return g * a, None, None


def _carries(o) -> bool:
    return isinstance(o, torch.Tensor) and o.is_floating_point() and o.requires_grad


def _share_scale(rule):
    """``(out, s) -> m``: the factor a Norm-type rule puts on the gradient of its share function ``s``
    (``mapper(R, s) = R·m/out``, R = out ⊙ g): ``out / st(s)``, halved for the bilinear split."""
    if isinstance(rule, RX.ShareRule):
        eps = rule.stabilizer
        return lambda out, s: out / R.stabilize(s, eps)
    one = torch.ones(())
    return lambda out, s: out * (rule.mapper(one, [s])[0])


def _input_relevance(x: torch.Tensor) -> torch.Tensor:
    """The explained input as the single-backward graph reads it: its value, and a gradient multiplied by
    itself, so that the backward pass returns ``x ⊙ g``, the relevance, as the rule graph does."""
    xd = x.detach()
    return xd + (x * xd - (x * xd).detach())


def _output_relevance(out: torch.Tensor) -> torch.Tensor:
    """The explained output as the single-backward graph gives it: its value, and a gradient divided by
    itself, so that the relevance seeded there (``R = out ⊙ g``) enters as the gradient ``R / out``."""
    od = out.detach()
    inv = torch.where(od == 0, 0.0, 1.0 / torch.where(od == 0, 1.0, od))
    return od + (out * inv - (out * inv).detach())


def _is_float(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    if (
        meta is not None and not hasattr(meta, "dtype") and isinstance(meta, (tuple, list))
    ):  # multi-output nodes
        return any(hasattr(m, "dtype") and m.dtype.is_floating_point for m in meta)
    return meta is not None and hasattr(meta, "dtype") and meta.dtype.is_floating_point


def _onnx(module) -> tuple[str, str, str]:
    return getattr(module, NODE_ATTR, ("", type(module).__name__, ""))


def _const_value(gm: fx.GraphModule, node) -> torch.Tensor | None:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        obj = gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj
    return None


def _fold_matmul(gm: fx.GraphModule) -> int:
    """MatMul(x, W const) [+ Add(b const)] → nn.Linear, which the rules treat like Gemm (the conversion
    already folds those it finds; this catches the ones whose weight canonization made constant)."""
    from ..convert.fuse import fold_linear

    return fold_linear(gm, "lrp_linear")


#: ops evaluated once when every input is a constant: the weight side of a quantized (QDQ) layer
_FOLDABLE = ("DequantizeLinear", "Transpose", "Reshape", "Cast", "Squeeze", "Unsqueeze", "Identity",
             "Flatten")  # fmt: skip


def _fold_constants(gm: fx.GraphModule) -> int:
    """A ``DequantizeLinear`` of constant integer weights (and layout ops of constants after it) → the
    constant float tensor, so that ``DequantizeLinear → MatMul/Gemm/Conv`` is the dequantized linear layer."""
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or _onnx(gm.get_submodule(node.target))[1] not in _FOLDABLE:
            continue
        if node.kwargs or not node.args:
            continue
        values = [_const_value(gm, a) if isinstance(a, fx.Node) else a for a in node.args]
        if any(isinstance(a, fx.Node) and v is None for a, v in zip(node.args, values, strict=True)):
            continue
        with torch.no_grad():
            value = gm.get_submodule(node.target)(*values)
        if not isinstance(value, torch.Tensor):
            continue
        name = f"lrp_const_{folded}"
        gm.register_buffer(name, value.detach().clone())
        with gm.graph.inserting_before(node):
            new = gm.graph.get_attr(name)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        folded += 1
    return folded


def _fold_weight_inputs(gm: fx.GraphModule) -> int:
    """Conv (functional) and Gemm nodes whose weight and bias are constants but arrive as inputs (a folded
    ``DequantizeLinear``) → ``nn.Conv*d`` / ``nn.Linear``, which the layer rules read."""
    from ..convert.ops.functional import OnnxConvFunctional

    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.args) < 2 or node.kwargs:
            continue
        module = gm.get_submodule(node.target)
        w = _const_value(gm, node.args[1])
        b = _const_value(gm, node.args[2]) if len(node.args) > 2 and node.args[2] is not None else None
        if w is None or (len(node.args) > 2 and node.args[2] is not None and b is None):
            continue
        layer, pad = None, None
        if isinstance(module, OnnxConvFunctional):
            n, strides, dilations, kernel = module._common(w)
            pads = module.pads if module.auto_pad == "NOTSET" and module.pads else [0] * (2 * n)
            if module.auto_pad in ("SAME_UPPER", "SAME_LOWER") or pads[:n] != pads[n:]:
                # SAME (size-dependent) or asymmetric padding: an explicit zero pad (a routing node for
                # LRP) before a conv without padding, as the functional module computes it
                pad = _ExplicitPad(module.auto_pad, list(strides), list(dilations), list(kernel), pads)
                setattr(pad, NODE_ATTR, ("", "Pad", f"{_onnx(module)[2]}/pad"))
                pads = [0] * (2 * n)
            conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[n]
            layer = conv(w.shape[1] * module.group, w.shape[0], tuple(w.shape[2:]), stride=tuple(strides),
                         padding=tuple(pads[:n]), dilation=tuple(dilations), groups=module.group,
                         bias=b is not None).to(w.dtype)  # fmt: skip
            layer.weight = nn.Parameter(w.detach().clone(), requires_grad=False)
        elif _onnx(module)[1] == "Gemm" and not getattr(module, "trans_a", True) and w.dim() == 2:
            weight = (w if module.trans_b else w.T) * module.alpha
            if b is not None and b.dim() != 1:
                continue
            layer = nn.Linear(weight.shape[1], weight.shape[0], bias=b is not None).to(w.dtype)
            layer.weight = nn.Parameter(weight.detach().contiguous(), requires_grad=False)
            b = b * module.beta if b is not None else None
        if layer is None:
            continue
        if b is not None:
            layer.bias = nn.Parameter(b.detach().reshape(-1).clone(), requires_grad=False)
        setattr(layer, NODE_ATTR, _onnx(module))
        name = f"lrp_layer_{folded}"
        gm.add_module(name, layer)
        source = node.args[0]
        if pad is not None:
            gm.add_module(f"{name}_pad", pad)
            with gm.graph.inserting_before(node):
                source = gm.graph.call_module(f"{name}_pad", (source,))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (source,))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        folded += 1
    return folded


def _split_padded_convs(gm: fx.GraphModule) -> int:
    """onnx2torch writes a Conv with asymmetric pads as ``nn.Sequential(pad, conv)``: two nodes here, the
    pad a routing node and the conv a layer, so that each gets its LRP role."""
    split = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        if not (
            isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[1], LINEAR_TYPES)
        ):
            continue
        onnx = _onnx(module)
        pad, conv = module[0], module[1]
        setattr(pad, NODE_ATTR, ("", "Pad", f"{onnx[2]}/pad"))
        setattr(conv, NODE_ATTR, onnx)
        name = f"lrp_padded_{split}"
        gm.add_module(f"{name}_pad", pad)
        gm.add_module(f"{name}_conv", conv)
        with gm.graph.inserting_after(node):
            padded = gm.graph.call_module(f"{name}_pad", node.args[:1])
        with gm.graph.inserting_after(padded):
            new = gm.graph.call_module(f"{name}_conv", (padded,))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        split += 1
    return split


class _ExplicitPad(nn.Module):
    """The zero padding of an ONNX Conv with ``auto_pad`` SAME_* (from the input's size) or asymmetric
    ``pads``, as :class:`~onnx_explain.convert.ops.functional.OnnxConvFunctional` computes it."""

    def __init__(self, auto_pad: str, strides, dilations, kernel, pads):
        super().__init__()
        self.auto_pad, self.strides, self.dilations, self.kernel, self.pads = (
            auto_pad,
            strides,
            dilations,
            kernel,
            pads,
        )

    def forward(self, x):
        import torch.nn.functional as F

        from ..convert.ops.pooling import same_pads

        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            flat = same_pads(
                x.shape[2:], self.kernel, self.strides, self.dilations, self.auto_pad == "SAME_LOWER"
            )
        else:
            n = len(self.kernel)
            flat = [p for b, e in zip(self.pads[:n][::-1], self.pads[n:][::-1], strict=True) for p in (b, e)]
        return F.pad(x, flat)


class _Dequantize(nn.Module):
    """``(q - zp) · s``: the dequantized input of a ``MatMulInteger``/``ConvInteger`` made a float layer (a
    ``DequantizeLinear`` for LRP: with the ``DynamicQuantizeLinear`` before it, the straight-through identity)."""

    def forward(self, q, scale, zp=None):
        q = q.to(torch.float32)
        return (q if zp is None else q - zp.to(torch.float32)) * scale.to(torch.float32)


def _only_user(node: fx.Node, gm: fx.GraphModule, op: str) -> fx.Node | None:
    """The single user of ``node`` if it is a module of ONNX op type ``op``."""
    users = list(node.users)
    if len(users) != 1 or users[0].op != "call_module":
        return None
    return users[0] if _onnx(gm.get_submodule(users[0].target))[1] == op else None


def _other(node: fx.Node, arg: fx.Node):
    """The operand of a binary node that is not ``arg``."""
    return node.args[1] if node.args[0] is arg else node.args[0]


def _fold_integer_layers(gm: fx.GraphModule) -> int:
    """quantize_dynamic's ``DynamicQuantizeLinear → MatMulInteger/ConvInteger (constant weights) → Cast → Mul(s_x·s_w)
    [→ Add(constant bias)]`` → the dequantized input ``(q - zp)·s_x`` and ``nn.Linear``/``nn.Conv*d`` with the
    dequantized weights ``(W - w_zp)·s_w`` and the bias: the float twin's layer, with the composite's rule."""
    from ..convert.ops.quant import OnnxConvInteger, OnnxDynamicQuantizeLinear, OnnxMatMulInteger

    def getitem_of(arg, index):  # the DynamicQuantizeLinear node whose output ``index`` ``arg`` is
        if not (isinstance(arg, fx.Node) and arg.op == "call_function" and len(arg.args) == 2):
            return None
        src, i = arg.args
        ok = isinstance(src, fx.Node) and src.op == "call_module" and i == index
        return src if ok and isinstance(gm.get_submodule(src.target), OnnxDynamicQuantizeLinear) else None

    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or node.kwargs:
            continue
        module = gm.get_submodule(node.target)
        if not isinstance(module, (OnnxMatMulInteger, OnnxConvInteger)):
            continue
        q, w, zp, w_zp = (list(node.args) + [None] * 4)[:4]
        dql = getitem_of(q, 0)
        w, w_zp_v = _const_value(gm, w), _const_value(gm, w_zp) if w_zp is not None else None
        if (
            dql is None
            or w is None
            or (w_zp is not None and w_zp_v is None)
            or (zp is not None and getitem_of(zp, 2) is not dql)
        ):
            continue
        cast = _only_user(node, gm, "Cast")
        mul = _only_user(cast, gm, "Mul") if cast is not None else None
        scales = _other(mul, cast) if mul is not None else None
        if not (isinstance(scales, fx.Node) and scales.op == "call_module"):
            continue
        if _onnx(gm.get_submodule(scales.target))[1] != "Mul" or len(scales.args) != 2:
            continue
        s_x = next((a for a in scales.args if getitem_of(a, 1) is dql), None)
        s_w = _const_value(gm, _other(scales, s_x)) if s_x is not None else None
        if s_w is None:
            continue
        add, bias = _only_user(mul, gm, "Add"), None
        if add is not None:
            bias = _const_value(gm, _other(add, mul))
            add = (
                add
                if bias is not None
                and bias.numel() == w.shape[1 if isinstance(module, OnnxMatMulInteger) else 0]
                else None
            )
        w = w.to(torch.float64) - (w_zp_v.to(torch.float64) if w_zp_v is not None else 0.0)
        s_w = s_w.to(torch.float64)
        if isinstance(module, OnnxMatMulInteger):
            if w.dim() != 2 or s_w.numel() not in (1, w.shape[1]):
                continue
            weight = (w * s_w.reshape(1, -1)).T
            layer = nn.Linear(w.shape[0], w.shape[1], bias=add is not None)
        else:
            conv = module.conv
            if conv.auto_pad not in ("NOTSET", "VALID") or s_w.numel() != 1:
                continue
            n, strides, dilations, _ = conv._common(w)
            pads = conv.pads if conv.auto_pad == "NOTSET" and conv.pads else [0] * (2 * n)
            if pads[:n] != pads[n:]:
                continue
            weight = w * s_w.reshape(())
            layer = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[n](
                w.shape[1] * conv.group, w.shape[0], tuple(w.shape[2:]), stride=tuple(strides),
                padding=tuple(pads[:n]), dilation=tuple(dilations), groups=conv.group, bias=add is not None,
            )  # fmt: skip
        layer.weight = nn.Parameter(weight.float().contiguous(), requires_grad=False)
        if add is not None:
            layer.bias = nn.Parameter(bias.detach().reshape(-1).float().clone(), requires_grad=False)
        name, op, domain = _onnx(module)
        deq = _Dequantize()
        setattr(deq, NODE_ATTR, (f"{name}/dequantize", "DequantizeLinear", ""))
        setattr(layer, NODE_ATTR, (name, op, domain))
        gm.add_module(f"lrp_dequantize_{folded}", deq)
        gm.add_module(f"lrp_integer_layer_{folded}", layer)
        last = add if add is not None else mul
        with gm.graph.inserting_after(last):
            d = gm.graph.call_module(f"lrp_dequantize_{folded}", (q, s_x) if zp is None else (q, s_x, zp))
        with gm.graph.inserting_after(d):
            new = gm.graph.call_module(f"lrp_integer_layer_{folded}", (d,))
        last.replace_all_uses_with(new)
        for dead in (add, mul, cast, node):
            if dead is not None:
                gm.graph.erase_node(dead)
        folded += 1
    return folded


def _merge_batchnorm(gm: fx.GraphModule) -> int:
    """BatchNormalization right after a Conv/Linear with no other consumer → folded into its weights."""
    merged = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        bn = gm.get_submodule(node.target)
        if (
            _onnx(bn)[1] != "BatchNormalization"
            or getattr(bn, "batch_stats", False)
            or not hasattr(bn, "running_var")
        ):
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1):
            continue
        lin = gm.get_submodule(prev.target)
        if not isinstance(lin, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            continue
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        new = copy.deepcopy(lin)
        shape = (-1,) + (1,) * (lin.weight.dim() - 1)
        new.weight = nn.Parameter((lin.weight * scale.reshape(shape)).detach(), requires_grad=False)
        b = lin.bias if lin.bias is not None else torch.zeros_like(bn.running_mean)
        new.bias = nn.Parameter(((b - bn.running_mean) * scale + bn.bias).detach(), requires_grad=False)
        setattr(new, NODE_ATTR, _onnx(lin))
        gm.add_module(f"lrp_merged_{merged}", new)
        with gm.graph.inserting_after(node):
            repl = gm.graph.call_module(f"lrp_merged_{merged}", prev.args, prev.kwargs)
        node.replace_all_uses_with(repl)
        gm.graph.erase_node(node)
        gm.graph.erase_node(prev)
        merged += 1
    return merged


@dataclass
class _Step:
    """The plan for one node that carries relevance."""

    role: roles_.Role | None  # None: no registered role (an error unless fallback)
    rule: object  # the rule, None for a linear layer until the composite gives it
    dependent: list[int]  # positions of the node's inputs that receive relevance
    why: str = ""  # for a node with no role: what it does


@dataclass
class Plan:
    """What :func:`plan` decided: a step per relevance-carrying node (graph order), the linear layers in
    graph order (``(kind, node)``), and whether the graph has attention (a Softmax carrying relevance)."""

    steps: dict
    layers: list
    attention: bool


def canonize(converted, decisions=()):
    """A deep copy of ``converted`` with the ``If`` nodes ``decisions`` covers replaced by their taken
    branch (:mod:`onnx_explain.lrp.branches`), the ``DequantizeLinear`` of constant weights evaluated, Conv
    and Gemm nodes whose weights thus became constants made layers, MatMul(+Add) folded into Linear layers
    and BatchNorm merged.

    Returns ``(copy, report)``, the report counting each rewrite."""
    from .branches import inline_branches

    lrp = copy.deepcopy(converted)
    gm: fx.GraphModule = lrp.graph
    report = {"inlined_if": inline_branches(gm, decisions)} if decisions else {}
    report["folded_constants"] = _fold_constants(gm)  # DequantizeLinear of weights: float constants
    report["folded_weight_inputs"] = _fold_weight_inputs(gm)
    report["split_padded_convs"] = _split_padded_convs(gm)
    report["folded_integer_layers"] = _fold_integer_layers(gm)
    report["folded_matmul"] = _fold_matmul(gm)
    report["merged_batchnorm"] = _merge_batchnorm(gm)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return lrp, report


def _override(spec, module, role, maxpool_ok: bool):
    """The user's rule for a node, checked against what the node is."""
    name, op, domain = _onnx(module)
    rule = R.parse_rule(spec)
    if role is roles_.LAYER:
        if isinstance(rule, R.Rule) and not rule.uses_params and rule.name != "norm":
            raise LRPCoverageError(
                f"LRP: rule {spec!r} does not apply to the linear {node_label(name, op, domain)}"
            )
        return rule
    if isinstance(rule, R.Rule) and rule.uses_params:
        raise LRPCoverageError(
            f"LRP: rule {spec!r} needs a linear layer; {node_label(name, op, domain)} is not one"
        )
    if isinstance(rule, R.Rule) and rule.surrogate is R.average_pool_of and not maxpool_ok:
        raise LRPCoverageError(
            f"LRP: the avgpool surrogate replaces a 1-, 2- or 3-d max pooling; {node_label(name, op, domain)} is not one"
        )
    return rule


def _role_rule(factory, stabilizer: float | None):
    """A role's rule, with the composite's stabiliser where the rule takes one."""
    if stabilizer is not None and "stabilizer" in _parameters(factory):
        return factory(stabilizer=stabilizer)
    return factory()


@functools.cache
def _parameters(factory) -> tuple:
    import inspect

    try:
        return tuple(inspect.signature(factory).parameters)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return ()


def plan(
    gm: fx.GraphModule, position: int, composite: str, rules: dict, fallback: str | None, maxpool: str,
    also: tuple = (), stabilizer: float | None = None,
) -> Plan:  # fmt: skip
    """Give every node of the shape-propagated graph that carries relevance from the output to the
    explained input a role and a rule; raise :class:`LRPCoverageError` for one with no role.

    A node carries relevance when it depends on the explained input and the output depends on it through
    inputs that receive relevance: the gate branch of a squeeze-excitation block or the σ of a norm
    (held constant) does not. Rules come from, in order: an override by node name, by op type, the
    composite's rule for the role (linear layers: per layer), the role's own rule; ``stabilizer`` (the
    composite's, as Zennit's composites give theirs to the Norm rules) goes to the Norm-type rules of
    the roles (sums, pools, softmax, products, norms, fused nodes).
    """
    role_rules = dict(ROLE_RULES.get(composite, {}))
    if maxpool == "avgpool":
        role_rules[roles_.MAX_POOL] = R.avgpool
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    depends = {placeholders[position], *(placeholders[p] for p in also)}  # also: inputs relevance flows on to
    steps: dict[fx.Node, _Step] = {}
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        dep_inputs = [i for i, a in enumerate(node.args) if isinstance(a, fx.Node) and a in depends]
        if not dep_inputs:
            continue
        if node.op == "call_function":  # getitem of a multi-output node
            src = node.args[0]
            role = steps[src].role if src in steps else None
            if role is None or role.outputs is None or node.args[1] in role.outputs:
                depends.add(node)  # else an output the node's role holds constant
            continue
        float_dep = [i for i in dep_inputs if _is_float(node.args[i])]
        if not float_dep or not _is_float(node):
            # integers (shapes, indices) carry no relevance, nor do floats computed from them alone (the
            # 1/√d scale an exporter computes from Shape → Cast → Sqrt)
            continue
        module = gm.get_submodule(node.target)
        name, op, _ = _onnx(module)
        view = roles_.NodeView(gm, node, module, op, float_dep, depends)
        role = roles_.LAYER if isinstance(module, LINEAR_TYPES) else roles_.role_of(view)
        dependent = list(role.inputs(view)) if role is not None and role.inputs is not None else float_dep
        spec = rules.get(name, rules.get(op))
        if spec is not None and name not in rules and role is not roles_.LAYER and op in _LAYER_OPS:
            if isinstance(R.parse_rule(spec), R.Rule) and R.parse_rule(spec).uses_params:
                spec = None  # a layer rule by op type is for the linear ones (not Q·Kᵀ, which is MatMul too)
        if spec is not None:
            rule = _override(spec, module, role, type(module) in R.AVGPOOL_OF)
        elif role is None or role is roles_.LAYER:
            rule = None
        else:
            rule = _role_rule(role_rules.get(role, role.rule), stabilizer)
        if rule is not R.STOP:
            depends.add(node)  # a stopped node's output is a constant for LRP
        why = "mixes two activations" if len(float_dep) > 1 else "carries relevance"
        steps[node] = _Step(role, rule, dependent, why)
    live = _live(gm, steps, depends)
    # stopped nodes stay in the plan: wrapped, no gradient leaks through them (a Concat routes to all)
    steps = {n: s for n, s in steps.items() if n in live or s.rule is R.STOP}
    for node, step in steps.items():
        if step.role is None and step.rule is None:
            if fallback != "gradient":
                name, op, domain = _onnx(gm.get_submodule(node.target))
                raise LRPCoverageError(
                    f"LRP: {node_label(name, op, domain)} {step.why} and has no LRP rule; give it one "
                    f"(rules={{'{op}': ...}} / --rule {op}=RULE) or pass fallback='gradient' to let the plain gradient through"
                )
    layers = [("dense" if isinstance(gm.get_submodule(n.target), nn.Linear) else "conv", n)
              for n, s in steps.items() if s.role is roles_.LAYER]  # fmt: skip
    attention = any(s.role in (roles_.SOFTMAX, roles_.ATTENTION, roles_.Q_ATTENTION) for s in steps.values())
    return Plan(steps, layers, attention)


def _live(gm: fx.GraphModule, steps: dict, depends: set) -> set:
    """The nodes that relevance reaches from the output, through the inputs each step passes it to."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    todo = [a for a in out.all_input_nodes if a in depends]
    live = set()
    while todo:
        node = todo.pop()
        if node in live:
            continue
        live.add(node)
        if node in steps:
            step = steps[node]
            if step.rule is R.STOP:
                continue
            args = [node.args[i] for i in step.dependent]
        else:
            args = node.all_input_nodes
        todo.extend(a for a in args if isinstance(a, fx.Node) and a in depends)
    return live


def wrap(gm: fx.GraphModule, the_plan: Plan, layer_rules: list, single: bool = False, position: int = 0,
         seed_output: bool = True) -> list:  # fmt: skip
    """Replace every planned node's module by a :class:`RuleWrapper` computing its rule (the plain
    gradient needs none), or with ``single`` by a :class:`PatchedWrapper` (one ordinary backward computes
    the relevance: the explained input at ``position`` then returns its gradient times itself, and with
    ``seed_output`` the output divides the seeded relevance by itself; ``seed_output=False`` leaves the
    output as it is, for a graph whose output feeds another single-backward graph, an encoder under a
    decoder). ``layer_rules`` are the composite's, one per linear layer. Returns the :class:`Assignment`
    list."""
    by_layer = {n: r for (_, n), r in zip(the_plan.layers, layer_rules, strict=True)}
    assignments = []
    for node, step in the_plan.steps.items():
        module = gm.get_submodule(node.target)
        name, op, _ = _onnx(module)
        rule = step.rule if step.rule is not None else by_layer.get(node)
        fell_back = rule is None  # no role: only reached with fallback='gradient'
        if fell_back:
            rule = R.GRADIENT
        assignments.append(Assignment(node.target, name, op, rule.name, fallback=fell_back))
        label = f"{name or node.target} ({op})"
        if single and single_form(rule, module) != "plain":
            wrapper = PatchedWrapper(module, rule, step.dependent, label)
        elif not single and rule is not R.GRADIENT:
            wrapper = RuleWrapper(module, rule, step.dependent, label)
        else:
            continue
        _set_module(gm, node.target, wrapper)
    if single:
        _fuse_epsilon_relu(gm)
        _fuse_passes_relu(gm)
        _fuse_norm_relu(gm)
        _seed_ends(gm, position, seed_output)
    gm.recompile()
    return assignments


#: roles whose gradient selects (routes, picks a maximum, rounds): there the gradient rule's ``Jᵀ R`` of the
#: rule graph equals the single form's ``x ⊙ Jᵀ(R / out)``
_SELECTION_ROLES = (roles_.ROUTE, roles_.MAX_POOL, roles_.WINNER_TAKES_ALL, roles_.DYNAMIC_QUANTIZE)


def _single_ok(step, rule) -> bool:
    """Whether a planned node has a single-backward form that computes what the rule graph computes: the
    gradient rule only where it selects (an override or a fallback to the gradient elsewhere, on a sum
    say, passes ``Jᵀ R`` in the rule graph, which is not ``x ⊙ Jᵀ(R / out)``)."""
    if rule is R.GRADIENT:
        return step.role in _SELECTION_ROLES
    return patchable(rule)


#: quantizers on activations: relevance routes straight through them in the rule graph, but their output
#: is a rounded copy of their input, so x ⊙ g at the input is not the relevance of the output (where an
#: activation rounds to 0, it would be created from nothing): no single-backward form
_ROUNDING = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def _rounds(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` calls a converted quantizer (:data:`_ROUNDING`)."""
    if node.op != "call_module":
        return False
    return getattr(gm.get_submodule(node.target), NODE_ATTR, ("", "", ""))[1] in _ROUNDING


def _on_input(node: fx.Node, step, rule, placeholder: fx.Node) -> bool:
    """Whether a layer rule without a single-backward form (z^B) reads the explained input directly: it
    then runs as the rule graph does at the input end of the single-backward graph."""
    return isinstance(rule, R.Rule) and rule.uses_params and node.args[step.dependent[0]] is placeholder


class _ReluEpsilon(torch.autograd.Function):
    """ReLU whose backward also applies the LRP-ε factor of the layer before it: ``g · r / (r + ε)`` with
    ``r = ReLU(z)`` equals ``g · 1[z > 0] · |z| / (|z| + ε)``, so the layer's output need not be kept."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z, eps):
        return z.clamp_min(0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.eps = inputs[1]
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (r,) = ctx.saved_tensors
        d = r + ctx.eps
        torch.div(r, d, out=d)  # r / (r + ε) in place of the denominator: one temporary fewer
        return g * d, None


class _EpsilonRelu(nn.Module):
    def __init__(self, eps: float, relu: nn.Module):
        super().__init__()
        self.eps = eps
        setattr(self, NODE_ATTR, getattr(relu, NODE_ATTR, ("", "Relu", "")))

    def forward(self, z):
        return _ReluEpsilon.apply(z, self.eps)


def _read_by_a_relu_alone(gm: fx.GraphModule):
    """``(node, its module, the ReLU's node, the ReLU)`` for every module node whose one reader is a ReLU
    module: where the ReLU's work can move into the node before it, or the node's into the ReLU's backward."""
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        if user.op == "call_module" and type(gm.get_submodule(user.target)) is nn.ReLU:
            yield node, gm.get_submodule(node.target), user, gm.get_submodule(user.target)


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    """Replace the submodule at ``target`` (a dotted path) by ``module``."""
    parent, _, attr = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, attr, module)


def _fuse_epsilon_relu(gm: fx.GraphModule) -> int:
    """An LRP-ε layer read by a ReLU alone: the ε factor moves into the ReLU's backward (the same
    relevance; one tensor fewer kept and three ops fewer per layer)."""
    fused = 0
    for node, wrapper, user, relu in _read_by_a_relu_alone(gm):
        if not (isinstance(wrapper, PatchedWrapper) and wrapper.form == "epsilon"):
            continue
        eps = wrapper.rule.options["epsilon"]
        if wrapper.rule.param_mods[0] != R.NO_MOD or not eps > 0:
            continue
        _set_module(gm, node.target, wrapper.module)
        _set_module(gm, user.target, _EpsilonRelu(float(eps), relu))
        fused += 1
    return fused


class _ReluCarry(_Carry):
    """``ReLU(value)`` whose backward gives each share ``s_k`` the gradient ``g ⊙ m_k``, the factors already 0
    where ``value ≤ 0`` (:class:`_Carry` and the ReLU after it in one: the ReLU's output is not kept).
    ``_ReluCarry.apply(value, n, s_1..s_n, m_1..m_n)``; the context and the backward are :class:`_Carry`'s."""

    @staticmethod
    def forward(value, n, *tensors):
        return value.clamp_min(0)


class _PassesRelu(nn.Module):
    """A layer rule's single-backward passes and the ReLU that alone reads them, in one node: the rule's
    ``single(..., positive=True)`` form (factors 0 where the ReLU passes no gradient; γ then needs one
    share instead of two); an input the form declines (signed, for γ and αβ) runs the passes, then the
    ReLU."""

    def __init__(self, wrapper: PatchedWrapper):
        super().__init__()
        self.wrapper = wrapper  # found after this node by a layer tap on the layer's name (modules() order)
        setattr(self, NODE_ATTR, getattr(wrapper, NODE_ATTR, ("", "", "")))

    def forward(self, x):
        layer = R._Layer.of(self.wrapper.module)
        got = self.wrapper.rule.single(layer, x, positive=True)
        if got is None:
            return torch.relu(self.wrapper(x))
        out, shares, factors = got
        return _ReluCarry.apply(out, len(shares), *shares, *factors)


def _fuse_passes_relu(gm: fx.GraphModule) -> int:
    """A Conv/Linear layer under a rule with a single-backward form (z⁺, γ, αβ, ε with another stabiliser)
    read by a ReLU alone: both become one node (:class:`_PassesRelu`), which keeps one factor per share
    and not the ReLU's output, and gives γ one share and one transposed product instead of two (the same
    relevance)."""
    fused = 0
    for node, wrapper, user, relu in _read_by_a_relu_alone(gm):
        if not (
            isinstance(wrapper, PatchedWrapper)
            and wrapper.form == "passes"
            and wrapper.rule.single is not None
            and R._Layer.of(wrapper.module) is not None
            and len(node.args) == 1
            and not node.kwargs
        ):
            continue
        # the ReLU's node stays, as an identity with its name: layer taps (CRP, relevance maps) still find it
        _set_module(gm, node.target, _PassesRelu(wrapper))
        _set_module(gm, user.target, _Applied(relu))
        fused += 1
    return fused


class _HeldConstant(nn.Module):
    """A Norm-rule node whose stabiliser moved into the ReLU after it (:func:`_fuse_norm_relu`): the op
    itself, the inputs that carry no relevance held constant."""

    def __init__(self, wrapper: PatchedWrapper):
        super().__init__()
        self.wrapper = wrapper
        setattr(self, NODE_ATTR, getattr(wrapper, NODE_ATTR, ("", "", "")))

    def forward(self, *args, **kwargs):
        ins, kw = self.wrapper._constants(args, kwargs)
        return self.wrapper.module(*ins, **kw)


def _fuse_norm_relu(gm: fx.GraphModule) -> int:
    """A sum under the Norm rule with Zennit's stabiliser (a residual Add) read by a ReLU alone: its factor
    ``out / st(out)`` is ``r / (r + ε)`` of the ReLU's output ``r`` wherever the ReLU passes a gradient, so
    it moves into the ReLU's backward (:class:`_ReluEpsilon`), as for LRP-ε: the same relevance, and the
    factor is not kept."""
    fused = 0
    for node, wrapper, user, relu in _read_by_a_relu_alone(gm):
        if not (
            isinstance(wrapper, PatchedWrapper)
            and wrapper.form == "carrier"
            and wrapper.rule.name == "norm"
            and wrapper.surrogate is None
            and _onnx(wrapper.module)[1] in ("Add", "Sum")
        ):
            continue
        eps = wrapper.rule.options.get("stabilizer")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            continue
        _set_module(gm, node.target, _HeldConstant(wrapper))
        _set_module(gm, user.target, _EpsilonRelu(float(eps), relu))
        fused += 1
    return fused


class _Applied(nn.Identity):
    """Where a ReLU was whose work the node before it does (:class:`_PassesRelu`): its value passes as it is."""

    def __init__(self, relu: nn.Module):
        super().__init__()
        setattr(self, NODE_ATTR, getattr(relu, NODE_ATTR, ("", "Relu", "")))


def _seed_ends(gm: fx.GraphModule, position: int, seed_output: bool) -> None:
    """The single-backward graph's two ends: the explained input multiplied into its gradient, the
    seeded relevance divided by the output."""
    placeholder = [n for n in gm.graph.nodes if n.op == "placeholder"][position]
    with gm.graph.inserting_after(placeholder):
        carried = gm.graph.call_function(_input_relevance, (placeholder,))

    def reads_carried(user: fx.Node) -> bool:  # a z^B layer on the input returns the relevance itself
        if user is carried:
            return False
        module = gm.get_submodule(user.target) if user.op == "call_module" else None
        return not (isinstance(module, PatchedWrapper) and module.form == "input")

    placeholder.replace_all_uses_with(carried, delete_user_cb=reads_carried)
    if not seed_output:
        return
    output = next(n for n in gm.graph.nodes if n.op == "output")
    if len(output.args) != 1 or not isinstance(output.args[0], fx.Node):
        raise OnnxExplainError("LRP: the single-backward graph needs one output tensor")
    with gm.graph.inserting_before(output):
        seeded = gm.graph.call_function(_output_relevance, (output.args[0],))
    output.args = (seeded,)


def split_example(example) -> tuple[torch.Tensor, dict]:
    """``(x, companions)`` of an example given as a tensor or as ``(tensor, companion rows by name)``."""
    return example if isinstance(example, tuple) else (example, {})


def default_composite(converted, example) -> str:
    """``attnlrp`` for a graph with attention (a Softmax that carries relevance), else ``epsilon_plus``."""
    lrp, _ = canonize(converted)
    x, comp = split_example(example)
    ShapeProp(lrp.graph).propagate(*lrp.graph_args(x, companions=comp))
    try:
        found = plan(lrp.graph, lrp.position, "epsilon_plus", {}, "gradient", "gradient").attention
    except LRPCoverageError:  # pragma: no cover - fallback='gradient' does not raise for coverage
        found = False
    return "attnlrp" if found else "epsilon_plus"


def _composite_stabilizer(composite: str, options: dict) -> float | None:
    """The stabiliser of the composite's Norm-type rules: its ``norm_stabilizer`` option, else its
    ``stabilizer`` (given, or the default); None for a composite with neither."""
    import inspect

    params = inspect.signature(COMPOSITES[composite]).parameters
    for name in ("norm_stabilizer", "stabilizer"):
        if name in params:
            return options.get(name, params[name].default)
    return None


def build_lrp_graph(
    converted,
    example: torch.Tensor,
    composite: str | None = "epsilon_plus",
    composite_options: dict | None = None,
    rules: dict | None = None,
    fallback: str | None = None,
    maxpool: str = "gradient",
    mode: str = "auto",
    also: tuple = (),
    seed_output: bool = True,
    decisions: tuple = (),
):
    """A copy of ``converted`` (a ConvertedModel) whose backward pass computes LRP: canonize, plan, wrap.

    Parameters
    ----------
    converted : ConvertedModel
        From :meth:`onnx_explain.Model.torch_module`.
    example : tensor
        A batch of inputs, to find which tensors carry relevance and to prove canonization kept the output.
    composite : str or None
        One of :data:`COMPOSITES`; ``'auto'`` or None picks ``attnlrp`` for graphs with attention, else
        ``epsilon_plus``.
    composite_options : dict
        Its options (``low``/``high`` for z^B, ``epsilon``, ``gamma`` ...).
    rules : dict
        Overrides ``{ONNX op type or ONNX node name: rule spec}``; a node name wins over its op type.
    fallback : {None, 'gradient'}
        What a node with no rule does: None raises :class:`LRPCoverageError`; ``'gradient'`` lets the
        plain gradient through and reports the node.
    maxpool : {'gradient', 'avgpool'}
    mode : {'auto', 'single', 'rules'}
        ``'single'``: one ordinary backward through a forward patched node by node (:class:`PatchedWrapper`);
        ``'rules'``: each node's rule in its own backward (:class:`RuleWrapper`, needed by z^B, flat, w²
        and the per-layer conservation record); ``'auto'``: single where every rule has that form.
    also : tuple of int
        Positions of other graph inputs that relevance flows on to (an encoder-decoder's
        ``encoder_hidden_states``, whose encoder is a single-backward graph too): planned as carrying
        relevance, not multiplied by themselves. Single mode only.
    seed_output : bool
        Divide the relevance seeded at the output by the output (the relevance convention of the caller);
        False for a graph whose output feeds another single-backward graph. Single mode only.
    decisions : tuple
        The branch each ``If`` takes (:func:`onnx_explain.lrp.branches.branch_decisions` on ``example``):
        those ``If`` nodes are replaced by their branch's nodes, which get rules like any other.

    Returns
    -------
    (module, assignments)
    """
    if mode not in ("auto", "single", "rules"):
        raise OptionError(f"mode must be 'auto', 'single' or 'rules', not {mode!r}")
    if composite in (None, "auto"):
        composite = default_composite(converted, example)
    if composite not in COMPOSITES:
        raise OptionError(f"unknown composite {composite!r}; choose one of {', '.join(sorted(COMPOSITES))}")
    if fallback not in (None, "gradient"):
        raise OptionError(f"fallback must be None or 'gradient', not {fallback!r}")
    if maxpool not in ("gradient", "avgpool"):
        raise OptionError(f"maxpool must be 'gradient' or 'avgpool', not {maxpool!r}")
    options = validate_call(
        COMPOSITES[composite], dict(composite_options or {}), f"composite {composite!r}", ("layers",)
    )
    lrp, report = canonize(converted, decisions)
    gm: fx.GraphModule = lrp.graph
    x, comp = split_example(example)
    ShapeProp(gm).propagate(*lrp.graph_args(x, companions=comp))
    the_plan = plan(gm, lrp.position, composite, dict(rules or {}), fallback, maxpool, tuple(also),
                    _composite_stabilizer(composite, options))  # fmt: skip
    layer_rules = COMPOSITES[composite]([(k, n.target) for k, n in the_plan.layers], **options)
    by_layer = {n: r for (_, n), r in zip(the_plan.layers, layer_rules, strict=True)}
    rules_of = [
        s.rule if s.rule is not None else by_layer.get(n, R.GRADIENT) for n, s in the_plan.steps.items()
    ]
    placeholder = [n for n in gm.graph.nodes if n.op == "placeholder"][lrp.position]
    forms = [
        (_single_ok(s, r) and not _rounds(gm, n)) or _on_input(n, s, r, placeholder)
        for (n, s), r in zip(the_plan.steps.items(), rules_of, strict=True)
    ]
    single = mode == "single" or (mode == "auto" and all(forms))
    if mode == "single" and not all(forms):
        raise OptionError("LRP: a rule of this composite has no single-backward form; use mode='rules'")
    if (also or not seed_output) and not single:
        raise OptionError("LRP across two graphs (an encoder under a decoder) needs the single-backward form")
    assignments = wrap(gm, the_plan, layer_rules, single, lrp.position, seed_output)
    with torch.no_grad():
        ref, got = (converted(x, comp), lrp(x, comp)) if comp else (converted(x), lrp(x))
    if not torch.allclose(ref, got, rtol=1e-4, atol=1e-5 * float(ref.abs().max().clamp_min(1))):
        raise OnnxExplainError("LRP canonization changed the model's output (a bug: please report the model)")
    report["composite"] = composite
    report["mode"] = "single" if single else "rules"
    lrp.lrp_report = report
    return lrp, assignments


def set_recording(module: nn.Module, record: dict | None) -> None:
    """Make every rule wrapper of ``module`` record (R_out, R_in) sums into ``record`` (None: stop)."""
    for m in module.modules():
        if isinstance(m, RuleWrapper):
            m.record = record
