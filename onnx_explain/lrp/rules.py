"""LRP rules as data (Zennit's design: ``core.BasicHook``): input modifiers, parameter modifiers, a
gradient mapper and a reducer. A rule computes the relevance of a layer's input from the relevance of its
output as a modified gradient. docs/methods.md §2.5.2; the float64 replicas in the tests check each one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch.func import functional_call

from ..derived import derived
from ..errors import OptionError

# ----------------------------------------------------------------------------------------- stabilisers


def stabilize(z: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    """Zennit's stabiliser: ``z + ε·sign₀(z)`` with ``sign₀(0) = +1``. ``ε = 0``: none, and a zero becomes
    ∞ (a division by it gives 0: an output of exactly 0 passes no relevance, rather than NaN)."""
    if epsilon == 0:
        return torch.where(z == 0, torch.inf, z)
    return z + torch.where(z >= 0, epsilon, -epsilon)  # one pass; sign₀(0) = +1


def stabilize_unsigned(z: torch.Tensor, epsilon: float = 1e-9, rms: float = 0.0) -> torch.Tensor:
    """The Montavon tutorial's ``incr``: ``z + ε (+ rms·sqrt(mean z²))``, added without sign. The mean is
    per sample (the tutorial explains one image at a time): a sample's relevance never depends on the
    others in its batch."""
    if rms:
        per_sample = (z.reshape(len(z), -1) ** 2).mean(1) ** 0.5
        return z + epsilon + rms * per_sample.reshape(-1, *([1] * (z.dim() - 1)))
    return z + epsilon


# ----------------------------------------------------------------------------------------- parameter mods


@dataclass(frozen=True)
class ParamMod:
    """Modify a layer's parameters for one forward pass; ``zero_bias`` sets the bias to 0."""

    fn: Callable[[torch.Tensor, str], torch.Tensor] = lambda p, name: p
    zero_bias: bool = False

    def params(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        out = {}
        for name in ("weight", "bias"):
            p = getattr(module, name, None)
            if p is None:
                continue
            out[name] = torch.zeros_like(p) if (name == "bias" and self.zero_bias) else self.fn(p, name)
        return out


def _clamp(min=None, max=None, zero_bias=False):  # noqa: A002 - torch's names
    return ParamMod(lambda p, _: p.clamp(min=min, max=max), zero_bias)


def _gamma(gamma, min=None, max=None, zero_bias=False):  # noqa: A002
    return ParamMod(lambda p, _: p + gamma * p.clamp(min=min, max=max), zero_bias)


NO_MOD = ParamMod()


# ----------------------------------------------------------------------------------------- rules


@dataclass
class Rule:
    """A modified-gradient LRP rule.

    For each pair (input modifier, parameter modifier) ``m``: ``out_m = layer_m(in_m(x))``; then
    ``g = autograd.grad(outputs, inputs, mapper(R, outputs))`` and ``R_in = reducer(inputs, g)``.
    ``uses_params=False`` runs the layer itself (Norm on sums and pools).
    """

    name: str
    input_mods: list[Callable]
    param_mods: list[ParamMod]
    mapper: Callable
    reducer: Callable
    uses_params: bool = True
    options: dict = field(default_factory=dict)
    used: tuple | None = None  # the passes whose gradient the reducer reads (None: all)
    surrogate: Callable | None = None  # module -> module whose shares a Norm-type rule computes
    #: ``fast(layer, x, relevance, output) -> R_in or None``: the same relevance as the passes above for a
    #: Conv/Linear layer, with the passes fused (fewer, larger products); None falls back to the passes
    fast: Callable | None = field(default=None, repr=False, compare=False)
    #: the reducer's coefficients when it is ``Σ_k w_k · in_k ⊙ g_k`` with every ``in_k`` the input or a clamp
    #: of it (then the rule has a single-backward form); None for rules whose relevance is not ``x ⊙ ...``
    weights: tuple | None = None
    #: ``single(layer, x, positive=False) -> (out, shares, factors) or None``: the single-backward form of
    #: the passes for a Conv/Linear layer, fused as in ``fast``: the layer's output, share tensors computed
    #: from ``x`` with their graph, and constant factors, such that ``x ⊙ ∂/∂x Σ_k <shares_k, factors_k ⊙ g>``
    #: is the rule's relevance for ``R = out ⊙ g`` (None: the generic passes). With ``positive`` the layer
    #: is read by a ReLU alone, so ``g`` is 0 wherever ``out ≤ 0``: the factors are 0 there, and a rule may
    #: use fewer shares (γ needs one)
    single: Callable | None = field(default=None, repr=False, compare=False)

    def relevance(
        self,
        module: torch.nn.Module,
        inputs: list[torch.Tensor],
        relevance: torch.Tensor,
        output: torch.Tensor | None = None,
    ) -> list:
        """Relevance of each of ``inputs`` (tensors the layer reads) given its output relevance.

        ``output`` is the layer's forward output, when known: the unmodified pass (identity input, no
        parameter change) then costs nothing. For Conv and Linear layers the transposed products are
        computed directly (no autograd graph), and a pass whose input is all zero (x⁻ after a ReLU) and
        whose bias is zeroed is skipped: it contributes exactly nothing.
        """
        if not self.uses_params:  # Norm: proportional to each input's share of the output
            ins = [x if x is None else x.detach().requires_grad_(x.is_floating_point()) for x in inputs]
            out = module(*ins)
            outs = list(out) if isinstance(out, tuple) else [out]  # a multi-output node: every output's share
            rels = list(relevance) if isinstance(relevance, tuple) else [relevance]
            grad_outs = [self.mapper(r, [o])[0] for r, o in zip(rels, outs, strict=True)]
            wanted = [x for x in ins if x is not None and x.requires_grad]
            grads = iter(torch.autograd.grad(outs, wanted, grad_outs, allow_unused=True))
            rel = []
            for x in ins:
                g = next(grads) if x is not None and x.requires_grad else None
                rel.append(None if g is None else _share(x, g))
            return rel
        x = inputs[0]
        vjp = _direct_vjp(module)
        if vjp is None:  # any other layer type: plain autograd, as Zennit does
            ins, outs = [], []
            for in_mod, p_mod in zip(self.input_mods, self.param_mods, strict=True):
                xi = in_mod(x).detach().requires_grad_(True)
                ins.append(xi)
                outs.append(functional_call(module, p_mod.params(module), (xi,)))
            grad_outs = self.mapper(relevance, outs)
            grads = torch.autograd.grad(outs, ins, grad_outs, allow_unused=True)
            grads = [torch.zeros_like(i) if g is None else g for i, g in zip(ins, grads, strict=True)]
            return [self.reducer(ins, grads)]
        if self.fast is not None:
            layer = _Layer.of(module)
            if layer is not None:
                rel = self.fast(layer, x, relevance, output)
                if rel is not None:
                    return [rel]
        has_neg = _has_negative(x) if _neg in self.input_mods else True
        zero = x.new_zeros(())  # stands for an all-zero input or gradient in the reducer
        ins, outs, params, skip = [], [], [], []
        for in_mod, p_mod in zip(self.input_mods, self.param_mods, strict=True):
            p = p_mod.params(module)
            # x⁻ after a ReLU is all zero: with a zeroed bias its pass contributes exactly nothing
            skipped = in_mod is _neg and not has_neg and (p_mod.zero_bias or "bias" not in p)
            xi = zero if skipped else in_mod(x).detach()
            if skipped:
                out = None
            elif in_mod is _ident and p_mod == NO_MOD and output is not None:
                out = output  # the layer's own forward output
            else:
                out = functional_call(module, p, (xi,))
            ins.append(xi)
            outs.append(out)
            params.append(p)
            skip.append(skipped)
        zero_out = torch.zeros_like(relevance) if any(skip) else None
        grad_outs = self.mapper(relevance, [zero_out if o is None else o for o in outs])
        grads = []
        for i, (p, g_out, skipped) in enumerate(zip(params, grad_outs, skip, strict=True)):
            unused = self.used is not None and i not in self.used
            grads.append(zero if skipped or unused else vjp(x, p["weight"], g_out))
        return [self.reducer(ins, grads)]


def _share(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``x ⊙ g``, 0 where ``x`` is not finite: a masked logit (−inf) has no share, and x·g would be NaN there.
    A finite sum proves every entry finite (inf and NaN propagate), one fast reduction instead of the mask."""
    if bool(torch.isfinite(x.sum())):
        return x * g
    return torch.where(torch.isfinite(x), x * g, 0.0)


def _direct_vjp(module: torch.nn.Module):
    """``(x, weight, grad_out) -> Wᵀ grad_out`` for Conv1d/2d/3d (zero padding) and Linear, else None."""
    import torch.nn.functional as F  # noqa: F401  (kept next to torch.nn.grad)

    if isinstance(module, torch.nn.Linear):
        return lambda x, w, g: g @ w
    conv_input = {torch.nn.Conv1d: torch.nn.grad.conv1d_input, torch.nn.Conv2d: torch.nn.grad.conv2d_input,
                  torch.nn.Conv3d: torch.nn.grad.conv3d_input}.get(type(module))  # fmt: skip
    if conv_input is None or module.padding_mode != "zeros" or isinstance(module.padding, str):
        return None
    m = module
    return lambda x, w, g: conv_input(x.shape, w, g, m.stride, m.padding, m.dilation, m.groups)


def _has_negative(x: torch.Tensor) -> bool:
    """Whether ``x`` has a negative entry; ``amin`` is several times faster than ``(x < 0).any()`` on CPU."""
    return x.numel() > 0 and bool(x.amin() < 0)


class _Layer:
    """A Conv1d/2d/3d (zero padding) or Linear layer as the fused rules use it: its forward and transposed
    products with any weight, the channel axis, and a cache of weight variants (clamped, stacked) that is
    rebuilt when the weight changes."""

    __slots__ = ("module", "weight", "bias", "vjp", "groups", "cdim", "_fwd")

    @staticmethod
    def of(module: torch.nn.Module) -> _Layer | None:
        return None if _direct_vjp(module) is None else _Layer(module)

    def __init__(self, module):
        import torch.nn.functional as F

        self.module, self.weight, self.bias = module, module.weight, module.bias
        self.groups = getattr(module, "groups", 1)
        self.cdim = -1 if isinstance(module, torch.nn.Linear) else 1
        m = module
        if isinstance(module, torch.nn.Linear):
            self._fwd = F.linear
            self.vjp = lambda shape, w, g: g @ w
        else:
            conv, conv_t = {
                torch.nn.Conv1d: (F.conv1d, F.conv_transpose1d),
                torch.nn.Conv2d: (F.conv2d, F.conv_transpose2d),
                torch.nn.Conv3d: (F.conv3d, F.conv_transpose3d),
            }[type(m)]
            self._fwd = lambda x, w, b: conv(x, w, b, m.stride, m.padding, m.dilation, m.groups)

            def vjp(shape, w, g):
                # Wᵀ g as a transposed convolution (``torch.nn.grad.conv2d_input`` runs the convolution's
                # backward on a broadcast input: 5-10 % slower on CPU in our measurements), its output
                # padding the rows a strided convolution dropped
                spatial = range(g.dim() - 2)
                extra = [
                    shape[2 + i]
                    - (
                        (g.shape[2 + i] - 1) * m.stride[i]
                        - 2 * m.padding[i]
                        + m.dilation[i] * (w.shape[2 + i] - 1)
                        + 1
                    )
                    for i in spatial
                ]
                return conv_t(g, w, None, m.stride, m.padding, extra, m.groups, m.dilation)

            self.vjp = vjp

    def fwd(self, x, w, b=None):
        """``x Wᵀ + b`` (the layer with weight ``w`` and bias ``b``)."""
        return self._fwd(x, w, b)

    def share(self, x, w, b=None):
        """``x Wᵀ + b`` for the single-backward form, whose backward needs only ``Wᵀ g``: unlike autograd's
        product, it keeps no reference to ``x`` (the weight is a constant), so a layer's input is freed
        once the forward has passed it (the relevance needs ``x`` only at the explained input)."""
        if not x.requires_grad:
            return self._fwd(x, w, b)
        return _InputProduct.apply(x, w, b, self)

    def along_channels(self, b: torch.Tensor, ndim: int) -> torch.Tensor:
        """A per-output-channel vector shaped to broadcast over an output of ``ndim`` dimensions."""
        return b if self.cdim == -1 else b.reshape(-1, *([1] * (ndim - 2)))

    def cached(self, tag: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``make()``, a function of the weight, computed once per weight version."""
        w = self.weight
        store = derived(self.module)  # a modified layer's weights are constant between calls
        key = (w._version, w.data_ptr(), w.dtype, w.device)
        hit = store.get(("weights", tag))
        if hit is None or hit[0] != key:
            with torch.no_grad():
                hit = store[("weights", tag)] = (key, make().detach())
        return hit[1]

    def stack_out(self, tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
        """Output channels of several weights (dim 0) or outputs/gradients (the channel axis) side by
        side, group by group, so that one product with the stacked weight computes every product at once
        (``Wᵀ`` of stacked gradients sums them)."""
        if self.groups == 1:
            return torch.cat(tensors, dim)
        dim = dim % tensors[0].dim()
        parts = [t.unflatten(dim, (self.groups, -1)) for t in tensors]
        return torch.stack(parts, dim + 1).flatten(dim, dim + 2)

    def unstack_out(self, out: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        """The ``n`` outputs of a product with weights stacked by :meth:`stack_out` (the inverse split)."""
        dim = self.cdim % out.dim()
        if self.groups == 1:
            return out.chunk(n, dim)
        parts = out.unflatten(dim, (self.groups, n, -1))
        return tuple(parts.select(dim + 1, i).flatten(dim, dim + 1) for i in range(n))

    def fwd_in(self, xs: list, ws: list, b, tag: str) -> torch.Tensor:
        """``Σ_i x_i W_iᵀ + b``: one product over inputs concatenated along the channels (groups = 1)."""
        if self.groups != 1:
            return sum(
                self.fwd(x, w, b if i == 0 else None) for i, (x, w) in enumerate(zip(xs, ws, strict=True))
            )
        w = self.cached(tag, lambda: torch.cat(ws, 1))
        return self.fwd(torch.cat(xs, self.cdim), w, b)

    def vjp_in(self, shape, ws: list, g: torch.Tensor, tag: str) -> list:
        """``[W_i g for each W_i]`` (transposed products of one gradient), in one product for groups = 1."""
        if self.groups != 1:
            return [self.vjp(shape, w, g) for w in ws]
        w = self.cached(tag, lambda: torch.cat(ws, 1))
        shape = list(shape)
        shape[self.cdim] *= len(ws)
        return list(self.vjp(shape, w, g).chunk(len(ws), self.cdim))


class _InputProduct(torch.autograd.Function):
    """``layer.fwd(x, w, b)`` whose backward gives ``x`` its gradient ``Wᵀ g`` and nothing else (the weight
    and bias are constants of the LRP graph): only the weight is saved, not ``x``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w, b, layer):
        return layer.fwd(x, w, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, _, ctx.layer = inputs
        ctx.shape = x.shape
        ctx.save_for_backward(w)

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        return ctx.layer.vjp(ctx.shape, w, g), None, None, None


def _read_by_relu(out: torch.Tensor, z: torch.Tensor, st: Callable, positive: bool) -> torch.Tensor:
    """A single-backward factor ``out / st(z)``, 0 where ``out ≤ 0`` when a ReLU alone reads the layer
    (``positive``: the ReLU's output over ``st(z)``)."""
    return (out.clamp_min(0) if positive else out) / st(z)


def _ident(x):
    return x


def _pos(x):
    return x.clamp(min=0)


def _neg(x):
    return x.clamp(max=0)


def epsilon(epsilon: float = 1e-6, zero_bias: bool = False, stabilizer: Callable | None = None) -> Rule:
    """LRP-ε (ε → 0: LRP-0): ``R_in = x ⊙ ((R / st(xWᵀ + b)) W)``."""
    st = stabilizer or (lambda z: stabilize(z, epsilon))

    def fast(layer, x, r, out):
        z = layer.fwd(x, layer.weight, layer.bias) if out is None else out
        if zero_bias and layer.bias is not None:
            z = z - layer.along_channels(layer.bias, z.dim())
        return x * layer.vjp(x.shape, layer.weight, r / st(z))

    def single(layer, x, positive=False):
        z = layer.share(x, layer.weight, layer.bias)
        with torch.no_grad():
            out = z.detach()
            zb = (
                out - layer.along_channels(layer.bias, out.dim())
                if zero_bias and layer.bias is not None
                else out
            )
            return out, [z], [_read_by_relu(out, zb, st, positive)]

    # ``signed``: the default stabiliser, whose factor z / st(z) = |z| / (|z| + ε) the single-backward graph
    # applies in the backward pass alone
    options = {"epsilon": epsilon, "signed": stabilizer is None}
    return Rule("epsilon", [_ident], [ParamMod(zero_bias=zero_bias)], lambda r, o: [r / st(o[0])],
                lambda i, g: i[0] * g[0], options=options, fast=fast, weights=(1.0,), single=single)  # fmt: skip


def gamma(gamma: float = 0.25, stabilizer: float | Callable = 1e-6, zero_bias: bool = False) -> Rule:
    """Generalised LRP-γ (negative inputs and outputs handled, as Zennit's ``Gamma``)."""
    st = stabilizer if callable(stabilizer) else (lambda z: stabilize(z, stabilizer))

    def mapper(r, o):
        return (
            [r * (o[4] > 0) / st(o[0] + o[1])] * 2
            + [r * (o[4] < 0) / st(o[2] + o[3])] * 2
            + [torch.zeros_like(r)]
        )

    def fast(layer, x, r, out):
        # after a ReLU (x ≥ 0) the two x⁻ passes vanish, and x(W+γW⁻) = xW + γ(xW − xW⁺): one product with
        # W⁺ (xW comes with the forward output) gives both denominators, and one transposed product with
        # the two modified weights stacked gives both numerators
        if _has_negative(x):
            return None
        w, b = layer.weight, layer.bias
        if out is None:
            out = layer.fwd(x, w, b)
        u = layer.fwd(x, layer.cached("pos", lambda: w.clamp(min=0)))
        xw = out if b is None else out - layer.along_channels(b, out.dim())
        z_pos, z_neg = xw + gamma * u, xw + gamma * (xw - u)
        if b is not None and not zero_bias:
            z_pos = z_pos + layer.along_channels(b + gamma * b.clamp(min=0), out.dim())
            z_neg = z_neg + layer.along_channels(b + gamma * b.clamp(max=0), out.dim())
        g_pos = torch.where(out > 0, r / st(z_pos), 0.0)
        g_neg = torch.where(out < 0, r / st(z_neg), 0.0)
        stacked = layer.cached(
            f"gamma{gamma}",
            lambda: layer.stack_out([w + gamma * w.clamp(min=0), w + gamma * w.clamp(max=0)], 0),
        )
        return x * layer.vjp(x.shape, stacked, layer.stack_out([g_pos, g_neg], layer.cdim))

    def single(layer, x, positive=False):
        # x ≥ 0: the shares x(W+γW⁺) = xW + γu and x(W+γW⁻) = (1+γ)xW − γu of xW and u = xW⁺, so the
        # backward is Wᵀ and W⁺ᵀ products only (as ``fast``)
        if _has_negative(x):
            return None
        w, b = layer.weight, layer.bias
        if positive:  # only out > 0 is read: the one share x(W+γW⁺) (+ b + γb⁺), one product back
            with torch.no_grad():
                out = layer.fwd(x, w, b)
            bias = None if b is None or zero_bias else b + gamma * b.clamp(min=0)
            s = layer.share(x, layer.cached(f"gamma+{gamma}", lambda: w + gamma * w.clamp(min=0)), bias)
            with torch.no_grad():
                return out, [s], [_read_by_relu(out, s, st, True)]
        xw = layer.share(x, w)
        u = layer.share(x, layer.cached("pos", lambda: w.clamp(min=0)))
        with torch.no_grad():
            out = xw if b is None else xw + layer.along_channels(b, xw.dim())
            z_pos, z_neg = xw + gamma * u, (1 + gamma) * xw - gamma * u
            if b is not None and not zero_bias:
                z_pos += layer.along_channels(b + gamma * b.clamp(min=0), out.dim())
                z_neg += layer.along_channels(b + gamma * b.clamp(max=0), out.dim())
            m_pos = torch.where(out > 0, out / st(z_pos), 0.0)
            m_neg = torch.where(out < 0, out / st(z_neg), 0.0)
        return out, [xw, u], [m_pos + (1 + gamma) * m_neg, gamma * (m_pos - m_neg)]

    return Rule(
        "gamma",
        [_pos, _neg, _pos, _neg, _ident],
        [
            _gamma(gamma, min=0.0, zero_bias=zero_bias),
            _gamma(gamma, max=0.0, zero_bias=True),
            _gamma(gamma, max=0.0, zero_bias=zero_bias),
            _gamma(gamma, min=0.0, zero_bias=True),
            NO_MOD,
        ],  # fmt: skip
        mapper,
        lambda i, g: sum(a * b for a, b in zip(i[:4], g[:4], strict=True)),
        options={"gamma": gamma},
        used=(0, 1, 2, 3),
        fast=fast,
        weights=(1.0, 1.0, 1.0, 1.0, 0.0),
        single=single,
    )


def alpha_beta(
    alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6, zero_bias: bool = False
) -> Rule:
    """LRP-αβ (α − β = 1, both ≥ 0)."""
    if alpha < 0 or beta < 0:
        raise OptionError("alpha and beta must be non-negative")
    if alpha - beta != 1:
        raise OptionError("alpha - beta must equal 1")
    st = lambda z: stabilize(z, stabilizer)  # noqa: E731

    def fast(layer, x, r, out):
        # x ≥ 0: the x⁻ passes vanish and xW⁻ = xW − xW⁺, so one product with W⁺ gives both denominators
        if _has_negative(x):
            return None
        w, b = layer.weight, layer.bias
        if out is None:
            out = layer.fwd(x, w, b)
        wp = layer.cached("pos", lambda: w.clamp(min=0))
        u = layer.fwd(x, wp)
        z_pos, z_neg = u, (out if b is None else out - layer.along_channels(b, out.dim())) - u
        if b is not None and not zero_bias:
            z_pos = z_pos + layer.along_channels(b.clamp(min=0), out.dim())
            z_neg = z_neg + layer.along_channels(b.clamp(max=0), out.dim())
        g_pos = alpha * r / st(z_pos)
        if beta == 0:
            return x * layer.vjp(x.shape, wp, g_pos)
        g_neg = -beta * r / st(z_neg)
        stacked = layer.cached("pos|neg", lambda: layer.stack_out([wp, w.clamp(max=0)], 0))
        return x * layer.vjp(x.shape, stacked, layer.stack_out([g_pos, g_neg], layer.cdim))

    def single(layer, x, positive=False):
        # x ≥ 0: the x⁻ passes vanish; the shares xW⁺ (z⁺) and xW⁻ (z⁻) are products of their own (not
        # xW − xW⁺: z⁻ ≈ 0 gives huge factors, whose difference through Wᵀ and W⁺ᵀ would cancel)
        if _has_negative(x):
            return None
        w, b = layer.weight, layer.bias
        with torch.no_grad():
            out = layer.fwd(x, w, b)
        if beta == 0:
            shares = [layer.share(x, layer.cached("pos", lambda: w.clamp(min=0)))]
        else:
            both = layer.share(
                x, layer.cached("pos|neg", lambda: layer.stack_out([w.clamp(min=0), w.clamp(max=0)], 0))
            )
            shares = list(layer.unstack_out(both, 2))
        with torch.no_grad():
            z_pos = (
                shares[0]
                if b is None or zero_bias
                else shares[0] + layer.along_channels(b.clamp(min=0), out.dim())
            )
            factors = [alpha * _read_by_relu(out, z_pos, st, positive)]
            if beta != 0:
                z_neg = (
                    shares[1]
                    if b is None or zero_bias
                    else shares[1] + layer.along_channels(b.clamp(max=0), out.dim())
                )
                factors.append(-beta * _read_by_relu(out, z_neg, st, positive))
        return out, shares, factors

    return Rule(
        "alpha_beta",
        [_pos, _neg, _pos, _neg],
        [
            _clamp(min=0.0, zero_bias=zero_bias),
            _clamp(max=0.0, zero_bias=True),
            _clamp(max=0.0, zero_bias=zero_bias),
            _clamp(min=0.0, zero_bias=True),
        ],  # fmt: skip
        lambda r, o: [r / st(o[0] + o[1])] * 2 + [r / st(o[2] + o[3])] * 2,
        lambda i, g: alpha * (i[0] * g[0] + i[1] * g[1]) - beta * (i[2] * g[2] + i[3] * g[3]),
        options={"alpha": alpha, "beta": beta},
        fast=fast,
        weights=(alpha, alpha, -beta, -beta),
        single=single,
    )


def zplus(stabilizer: float = 1e-6, zero_bias: bool = False) -> Rule:
    """z⁺ (= α1β0): positive contributions only."""
    st = lambda z: stabilize(z, stabilizer)  # noqa: E731

    def fast(layer, x, r, out):
        w, b = layer.weight, layer.bias
        wp = layer.cached("pos", lambda: w.clamp(min=0))
        bp = None if b is None or zero_bias else b.clamp(min=0)
        if not _has_negative(x):  # after a ReLU: the x⁻ pass contributes nothing
            return x * layer.vjp(x.shape, wp, r / st(layer.fwd(x, wp, bp)))
        # signed input: x⁺W⁺ + x⁻W⁻ as one product over [x⁺, x⁻] concatenated along the channels
        xs, ws = [x.clamp(min=0), x.clamp(max=0)], [wp, layer.cached("neg", lambda: w.clamp(max=0))]
        s = r / st(layer.fwd_in(xs, ws, bp, "pos,neg"))
        g_pos, g_neg = layer.vjp_in(x.shape, ws, s, "pos,neg")
        return xs[0] * g_pos + xs[1] * g_neg

    def single(layer, x, positive=False):
        # one share z = x⁺W⁺ + x⁻W⁻ (+ b⁺); the clamps' gradients select each part's input
        w, b = layer.weight, layer.bias
        wp = layer.cached("pos", lambda: w.clamp(min=0))
        bp = None if b is None or zero_bias else b.clamp(min=0)
        with torch.no_grad():
            out = layer.fwd(x, w, b)
        if not _has_negative(x):
            s = layer.share(x, wp, bp)
        else:
            ws = [wp, layer.cached("neg", lambda: w.clamp(max=0))]
            s = layer.fwd_in([x.clamp(min=0), x.clamp(max=0)], ws, bp, "pos,neg")
        with torch.no_grad():
            return out, [s], [_read_by_relu(out, s, st, positive)]

    return Rule("zplus", [_pos, _neg], [_clamp(min=0.0, zero_bias=zero_bias), _clamp(max=0.0, zero_bias=True)],
                lambda r, o: [r / st(o[0] + o[1])] * 2, lambda i, g: i[0] * g[0] + i[1] * g[1],
                fast=fast, weights=(1.0, 1.0), single=single)  # fmt: skip


def zbox(low, high, stabilizer: float | Callable = 1e-6) -> Rule:
    """z^B for inputs bounded in [low, high] (broadcast per channel); the bias cancels."""
    st = stabilizer if callable(stabilizer) else (lambda z: stabilize(z, stabilizer))

    def lo(x):
        return torch.as_tensor(low, dtype=x.dtype, device=x.device).expand_as(x)

    def hi(x):
        return torch.as_tensor(high, dtype=x.dtype, device=x.device).expand_as(x)

    def fast(layer, x, r, out):
        # the two bound passes in one product over [l, h] (their biases b⁺ + b⁻ = b), the three
        # transposed products in one over [W, W⁺, W⁻]
        w, b = layer.weight, layer.bias
        if out is None:
            out = layer.fwd(x, w, b)
        bounds = [lo(x), hi(x)]
        wp, wn = layer.cached("pos", lambda: w.clamp(min=0)), layer.cached("neg", lambda: w.clamp(max=0))
        s = r / st(out - layer.fwd_in(bounds, [wp, wn], b, "pos,neg"))
        g, g_lo, g_hi = layer.vjp_in(x.shape, [w, wp, wn], s, "id,pos,neg")
        return x * g - bounds[0] * g_lo - bounds[1] * g_hi

    return Rule(
        "zbox",
        [_ident, lo, hi],
        [NO_MOD, _clamp(min=0.0), _clamp(max=0.0)],
        lambda r, o: [r / st(o[0] - o[1] - o[2])] * 3,
        lambda i, g: i[0] * g[0] - i[1] * g[1] - i[2] * g[2],
        options={"low": low, "high": high},
        fast=fast,
    )


def wsquare(stabilizer: float = 1e-6, zero_bias: bool = False) -> Rule:
    """w²: ``R_in = (R / st(1·(W²)ᵀ + b²)) W²``; the input is not used."""
    st = lambda z: stabilize(z, stabilizer)  # noqa: E731
    return Rule("wsquare", [torch.ones_like], [ParamMod(lambda p, _: p**2, zero_bias)],
                lambda r, o: [r / st(o[0])], lambda i, g: g[0])  # fmt: skip


def flat(stabilizer: float = 1e-6) -> Rule:
    """flat: a uniform split over each output's receptive field (weights 1, no bias)."""
    st = lambda z: stabilize(z, stabilizer)  # noqa: E731
    return Rule("flat", [torch.ones_like], [ParamMod(lambda p, _: torch.ones_like(p), True)],
                lambda r, o: [r / st(o[0])], lambda i, g: g[0])  # fmt: skip


def norm(stabilizer: float | Callable = 1e-6, surrogate: Callable | None = None, name: str = "norm") -> Rule:
    """Norm (sums, average pools, bias additions): each input gets its share ``x_i ∂out/∂x_i · R/st(out)``.

    ``surrogate(module) -> module`` computes the shares through another function of the same inputs (an
    average pool for a max pool, a layer norm with σ held constant)."""
    st = stabilizer if callable(stabilizer) else (lambda z: stabilize(z, stabilizer))
    return Rule(name, [], [], lambda r, o: [r / st(o[0])], None, uses_params=False, surrogate=surrogate,
                options={"stabilizer": stabilizer})  # fmt: skip


def bilinear(stabilizer: float = 1e-6) -> Rule:
    """Uniform split of a product of two activations (AttnLRP, Achtibat et al. 2024): each operand gets
    half of its Norm share, ``R_a = ½ a ⊙ ∂out/∂a · R/st(out)``, so ``ΣR_a = ΣR_b = ½ΣR``."""
    st = lambda z: stabilize(z, stabilizer)  # noqa: E731
    return Rule("bilinear", [], [], lambda r, o: [0.5 * r / st(o[0])], None, uses_params=False,
                options={"stabilizer": stabilizer})  # fmt: skip


def softmax(stabilizer: float = 1e-6) -> Rule:
    """AttnLRP's Softmax rule (Achtibat et al. 2024, Prop. 3.1): ``R_i = x_i (R_i − s_i Σ_j R_j)``, which is
    the Norm form ``x ⊙ Jᵀ(R/s)``; masked logits (−inf) get no relevance."""
    return norm(stabilizer, name="softmax")


def layer_norm(stabilizer: float = 1e-6) -> Rule:
    """LayerNormalization with σ held constant (AttnLRP/CP-LRP): the layer becomes linear in x,
    ``y = (x − mean x)·γ/σ + β``, and relevance follows its Norm share (β absorbs its part)."""
    return norm(stabilizer, surrogate=sigma_detached, name="layer_norm")


def avgpool(stabilizer: float = 1e-6) -> Rule:
    """Montavon's tutorial: relevance leaves a max pool as through an average pool of the same geometry."""
    return norm(stabilizer, surrogate=average_pool_of, name="avgpool")


def signal_take_all(stabilizer: float = 1e-6) -> Rule:
    """LSTM/GRU/RNN nodes (Arras et al.): gates held constant, the signal takes all relevance, identity on
    its squashing; the Norm share of the patched cell loop (:mod:`onnx_explain.lrp.recurrent`)."""
    from .recurrent import signal_take_all_surrogate

    return norm(stabilizer, surrogate=signal_take_all_surrogate, name="signal_take_all")


class Special:
    """A rule that is not a modified gradient: ``pass`` (relevance unchanged to the one input that carries
    it), ``gradient`` (the plain gradient: routing ops, winner-takes-all pools) and ``stop`` (the output is
    held constant: no relevance flows to the inputs)."""

    uses_params = False

    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return f"Special({self.name!r})"


PASS = Special("pass")
GRADIENT = Special("gradient")
STOP = Special("stop")


# ----------------------------------------------------------------------------------------- surrogates

#: the average pool that stands in for a max pool under ``maxpool='avgpool'``
AVGPOOL_OF = {torch.nn.MaxPool1d: torch.nn.AvgPool1d, torch.nn.MaxPool2d: torch.nn.AvgPool2d,
              torch.nn.MaxPool3d: torch.nn.AvgPool3d}  # fmt: skip


def average_pool_of(module: torch.nn.Module) -> torch.nn.Module:
    """The average pool of a max pool's geometry."""
    pool = AVGPOOL_OF[type(module)]
    return pool(module.kernel_size, module.stride, module.padding, ceil_mode=module.ceil_mode)


def _sigma(centred: torch.Tensor, dims, eps: float) -> torch.Tensor:
    """σ = sqrt(mean(centred²) + ε), detached: a constant for the backward pass."""
    return torch.sqrt((centred.detach() ** 2).mean(dim=dims, keepdim=True) + eps)


def _affine(y, scale, bias):
    y = y * scale if scale is not None else y
    return y + bias if bias is not None else y


class _NormSigmaConstant(torch.autograd.Function):
    """A layer norm over the trailing dims whose 1/σ is a constant of the backward pass, in one fused
    forward (``native_layer_norm``) and a 4-op backward ``r (g·s − mean(g·s))`` (``r = 1/σ``, ``s`` the
    scale; the mean's gradient is kept, as LXT). Batched backwards (vmap) apply it per target."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, shape, eps, scale, bias):
        y, _, rstd = torch.ops.aten.native_layer_norm(x, shape, scale, bias, eps)
        return y, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, shape, _, scale, _ = inputs
        ctx.dims = tuple(range(-len(shape), 0))
        ctx.save_for_backward(output[1], scale)
        ctx.set_materialize_grads(True)
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, g, _g_rstd):
        rstd, scale = ctx.saved_tensors
        gs = g if scale is None else g * scale
        gx = gs * rstd
        return gx - gx.mean(dim=ctx.dims, keepdim=True), None, None, None, None


def _norm_sigma_constant(x, dims, eps, scale, bias):
    """``(x − μ)/σ · scale + bias`` with σ constant: fused where the dims are trailing and the scale and bias
    have the normalised shape, else written out."""
    shape = tuple(x.shape[d] for d in dims)
    trailing = dims == tuple(range(x.dim() - len(dims), x.dim()))
    fits = all(t is None or (isinstance(t, torch.Tensor) and tuple(t.shape) == shape) for t in (scale, bias))
    if trailing and fits and x.is_floating_point():
        return _NormSigmaConstant.apply(x, list(shape), float(eps), scale, bias)[0]
    centred = x - x.mean(dim=dims, keepdim=True)  # the mean is not detached (LXT)
    return _affine(centred / _sigma(centred, dims, eps), scale, bias)


class _SigmaDetached(torch.nn.Module):
    """A converted norm with σ detached: LayerNormalization (any rank, scale and bias as buffers or
    inputs), com.microsoft SkipLayerNormalization / SkipSimplifiedLayerNormalization (norm of
    ``input + skip (+ bias)``) and SimplifiedLayerNormalization (RMS norm, no centring)."""

    def __init__(self, ln: torch.nn.Module):
        super().__init__()
        self.ln = ln
        self.op = getattr(ln, "onnx_node", ("", "", ""))[1]

    def forward(self, *args):
        ln = self.ln
        if self.op in ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization"):
            if ln.simplified:
                x, skip, gamma, *rest = args
                beta, bias = None, (rest[0] if rest else None)
            else:
                x, skip, gamma, beta, bias = (list(args) + [None, None])[:5]
            x = x + skip if bias is None else x + skip + bias
            centred = x if ln.simplified else x - x.mean(-1, keepdim=True)
            return _affine(centred / _sigma(centred, (-1,), ln.epsilon), gamma, beta)
        if self.op == "SimplifiedLayerNormalization":
            x, scale = args
            dims = tuple(range(ln.axis % x.dim(), x.dim()))
            return x / _sigma(x, dims, ln.epsilon) * scale
        x, scale, bias = (list(args) + [None, None])[:3]
        if isinstance(ln, torch.nn.LayerNorm):
            dims, eps = tuple(range(x.dim() - len(ln.normalized_shape), x.dim())), ln.eps
            scale, bias = ln.weight, ln.bias
        else:
            dims, eps = tuple(range(ln.axis % x.dim(), x.dim())), ln.epsilon
            scale = getattr(ln, "weight", None) if scale is None else scale
            bias = getattr(ln, "bias", None) if bias is None else bias
        return _norm_sigma_constant(x, tuple(d % x.dim() for d in dims), eps, scale, bias)


def sigma_detached(module: torch.nn.Module) -> torch.nn.Module:
    """A norm module whose normalising factor 1/σ is a constant for the backward pass."""
    return _SigmaDetached(module)


@runtime_checkable
class RelevanceRule(Protocol):
    """What the LRP graph asks of a rule (:class:`Rule`, and the share rules of
    :mod:`onnx_explain.lrp.rules_extra`): a name for reports, whether it reads a layer's parameters (only
    those rules go on Conv/Linear layers) and the relevance of a node's inputs from its output's."""

    name: str
    uses_params: bool

    def relevance(self, module: torch.nn.Module, inputs: list, relevance, output=None) -> list:
        """Relevance of each of ``inputs`` given the node's output relevance (None where none flows)."""
        ...


#: rule name -> constructor; what ``--rule OP_OR_NODE=NAME[:ARGS]`` and composites can name
RULES: dict[str, Callable[..., RelevanceRule]] = {}


def register_rule(name: str, constructor: Callable[..., RelevanceRule] | None = None):
    """Make ``constructor(*numbers) -> rule`` nameable as ``name`` (``rules={'Conv': 'name:1,2'}``,
    ``--rule Conv=name:1,2``); usable as a decorator. A rule whose ``fast`` or ``single`` form is set is
    checked against its own passes by ``tests/test_lrp_rule_registry.py``, whatever its name.

    Raises
    ------
    ValueError
        ``name`` already names a rule (or a special one: pass, gradient, stop).
    """

    def add(fn):
        key = name.strip().lower()
        if key in RULES or key in SPECIAL:
            raise ValueError(f"LRP rule {name!r} is registered twice")
        RULES[key] = fn
        return fn

    return add if constructor is None else add(constructor)


#: rules that are not modified gradients, by name
SPECIAL = {"pass": PASS, "gradient": GRADIENT, "stop": STOP}

for _name, _make in (("epsilon", epsilon), ("gamma", gamma), ("alpha_beta", alpha_beta), ("zplus", zplus),
                     ("zbox", zbox), ("wsquare", wsquare), ("flat", flat), ("norm", norm), ("bilinear", bilinear),
                     ("softmax", softmax), ("layer_norm", layer_norm), ("avgpool", avgpool),
                     ("signal_take_all", signal_take_all)):  # fmt: skip
    register_rule(_name, _make)


def parse_rule(spec: str | Rule | Special) -> Rule | Special:
    """``'gamma:0.25'``, ``'epsilon:1e-3'``, ``'alpha_beta:2,1'``, ``'zbox:-2.1,2.6'``, ``'pass'`` ...

    Returns a :class:`Rule`, or one of the :data:`SPECIAL` rules.
    """
    if isinstance(spec, (Rule, Special)):
        return spec
    name, _, args = str(spec).partition(":")
    name = name.strip().lower().replace("-", "_")
    name = {
        "alpha2beta1": "alpha_beta",
        "z_plus": "zplus",
        "z_box": "zbox",
        "w2": "wsquare",
        "lrp0": "epsilon0",
    }.get(name, name)
    if name in SPECIAL:
        return SPECIAL[name]
    if name == "epsilon0":
        return epsilon(0.0)
    if name not in RULES:
        raise OptionError(f"unknown LRP rule {spec!r}; rules: {', '.join(sorted(RULES) + list(SPECIAL))}")
    values = [float(v) for v in args.split(",") if v.strip()] if args else []
    return RULES[name](*values)
