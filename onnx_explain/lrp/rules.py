"""LRP rules as data (Zennit's design: ``core.BasicHook``): input modifiers, parameter modifiers, a
gradient mapper and a reducer. A rule computes the relevance of a layer's input from the relevance of its
output as a modified gradient. docs/methods.md §2.5.2; the float64 replicas in the tests check each one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.func import functional_call

from ..errors import OptionError

# ----------------------------------------------------------------------------------------- stabilisers


def stabilize(z: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    """Zennit's stabiliser: ``z + ε·sign₀(z)`` with ``sign₀(0) = +1``."""
    return z + torch.where(z >= 0, epsilon, -epsilon)  # one pass; sign₀(0) = +1


def stabilize_unsigned(z: torch.Tensor, epsilon: float = 1e-9, rms: float = 0.0) -> torch.Tensor:
    """The Montavon tutorial's ``incr``: ``z + ε (+ rms·sqrt(mean z²))``, added without sign."""
    if rms:
        return z + epsilon + rms * (z**2).mean() ** 0.5
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
            ins = [x.detach().requires_grad_(True) for x in inputs]
            out = module(*ins)
            grad_out = self.mapper(relevance, [out])[0]
            grads = torch.autograd.grad(out, ins, grad_out, allow_unused=True)
            return [x * g if g is not None else None for x, g in zip(ins, grads, strict=True)]
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
        has_neg = bool((x < 0).any()) if _neg in self.input_mods else True
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


def _ident(x):
    return x


def _pos(x):
    return x.clamp(min=0)


def _neg(x):
    return x.clamp(max=0)


def epsilon(epsilon: float = 1e-6, zero_bias: bool = False, stabilizer: Callable | None = None) -> Rule:
    """LRP-ε (ε → 0: LRP-0): ``R_in = x ⊙ ((R / st(xWᵀ + b)) W)``."""
    st = stabilizer or (lambda z: stabilize(z, epsilon))
    return Rule("epsilon", [_ident], [ParamMod(zero_bias=zero_bias)], lambda r, o: [r / st(o[0])],
                lambda i, g: i[0] * g[0], options={"epsilon": epsilon})  # fmt: skip


def gamma(gamma: float = 0.25, stabilizer: float | Callable = 1e-6, zero_bias: bool = False) -> Rule:
    """Generalised LRP-γ (negative inputs and outputs handled, as Zennit's ``Gamma``)."""
    st = stabilizer if callable(stabilizer) else (lambda z: stabilize(z, stabilizer))

    def mapper(r, o):
        return (
            [r * (o[4] > 0) / st(o[0] + o[1])] * 2
            + [r * (o[4] < 0) / st(o[2] + o[3])] * 2
            + [torch.zeros_like(r)]
        )

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
    )


def zplus(stabilizer: float = 1e-6, zero_bias: bool = False) -> Rule:
    """z⁺ (= α1β0): positive contributions only."""
    st = lambda z: stabilize(z, stabilizer)  # noqa: E731
    return Rule("zplus", [_pos, _neg], [_clamp(min=0.0, zero_bias=zero_bias), _clamp(max=0.0, zero_bias=True)],
                lambda r, o: [r / st(o[0] + o[1])] * 2, lambda i, g: i[0] * g[0] + i[1] * g[1])  # fmt: skip


def zbox(low, high, stabilizer: float | Callable = 1e-6) -> Rule:
    """z^B for inputs bounded in [low, high] (broadcast per channel); the bias cancels."""
    st = stabilizer if callable(stabilizer) else (lambda z: stabilize(z, stabilizer))

    def lo(x):
        return torch.as_tensor(low, dtype=x.dtype, device=x.device).expand_as(x)

    def hi(x):
        return torch.as_tensor(high, dtype=x.dtype, device=x.device).expand_as(x)

    return Rule(
        "zbox",
        [_ident, lo, hi],
        [NO_MOD, _clamp(min=0.0), _clamp(max=0.0)],
        lambda r, o: [r / st(o[0] - o[1] - o[2])] * 3,
        lambda i, g: i[0] * g[0] - i[1] * g[1] - i[2] * g[2],
        options={"low": low, "high": high},
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


def norm(stabilizer: float | Callable = 1e-6) -> Rule:
    """Norm (sums, average pools, bias additions): each input gets its share ``x_i ∂out/∂x_i · R/st(out)``."""
    st = stabilizer if callable(stabilizer) else (lambda z: stabilize(z, stabilizer))
    return Rule("norm", [], [], lambda r, o: [r / st(o[0])], None, uses_params=False)


#: rule name -> constructor; what ``--rule OP_OR_NODE=NAME[:ARGS]`` can name
RULES: dict[str, Callable[..., Rule]] = {
    "epsilon": epsilon,
    "gamma": gamma,
    "alpha_beta": alpha_beta,
    "zplus": zplus,
    "zbox": zbox,
    "wsquare": wsquare,
    "flat": flat,
    "norm": norm,
}
#: rules that are not modified gradients: Pass (relevance unchanged), plain gradient, AvgPool surrogate
SPECIAL = ("pass", "gradient", "avgpool")


def parse_rule(spec: str | Rule) -> Rule | str:
    """``'gamma:0.25'``, ``'epsilon:1e-3'``, ``'alpha_beta:2,1'``, ``'zbox:-2.1,2.6'``, ``'pass'`` ...

    Returns a :class:`Rule`, or one of :data:`SPECIAL`.
    """
    if isinstance(spec, Rule):
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
        return name
    if name == "epsilon0":
        return epsilon(0.0)
    if name not in RULES:
        raise OptionError(f"unknown LRP rule {spec!r}; rules: {', '.join(sorted(RULES) + list(SPECIAL))}")
    values = [float(v) for v in args.split(",") if v.strip()] if args else []
    return RULES[name](*values)
