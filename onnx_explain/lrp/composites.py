"""Composites: which rule each linear layer gets (Zennit's presets, ``composites.py``), plus the
Montavon 2019 VGG recipe and the transformer composites (AttnLRP, CP-LRP). A composite maps the ordered
list of linear layers to rules, and may map roles (:mod:`onnx_explain.lrp.roles`) to other rules than their
own; every other node gets its role's rule."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import OptionError
from . import roles
from . import rules as R
from . import rules_extra as RX

#: name -> fn(layers, **options) -> list of rules, one per layer; ``layers`` is a list of
#: ``(kind, node_name)`` in graph order, kind 'conv' or 'dense'
COMPOSITES: dict[str, Callable] = {}
#: name -> {role: () -> rule}, the roles a composite treats otherwise than the role's own rule
ROLE_RULES: dict[str, dict] = {}


def register_composite(name: str, role_rules: dict | None = None):
    """Register ``fn(layers, **options) -> rules`` as composite ``name``; ``role_rules`` maps roles to
    rule factories where the composite departs from the roles' own rules."""

    def deco(fn):
        if name in COMPOSITES:
            raise ValueError(f"composite {name!r} is registered twice")
        COMPOSITES[name] = fn
        ROLE_RULES[name] = dict(role_rules or {})
        return fn

    return deco


def _needs_conv(name, layers):
    """A composite that puts z^B on the first convolution does not fit a graph with none (a token or
    tabular model): say so rather than silently give its dense layers ε only."""
    if not any(kind == "conv" for kind, _ in layers):
        raise OptionError(
            f"composite {name!r} does not fit this model: it puts z^B on the first convolution and the graph "
            f"has none ({len(layers)} dense layers); use 'attnlrp' or 'cp_lrp' for transformers, "
            "'epsilon_plus_flat' for dense networks, or a zbox rule on a named layer"
        )


def _by_kind(layers, conv, dense, first=None, first_kinds=("conv",)):
    out = []
    first_done = first is None
    for kind, _ in layers:
        if not first_done and kind in first_kinds:
            out.append(first())
            first_done = True
        else:
            out.append(conv() if kind == "conv" else dense())
    return out


@register_composite("epsilon_gamma_box")
def epsilon_gamma_box(layers, low=None, high=None, epsilon=1e-6, gamma=0.25, stabilizer=1e-6):
    """First convolution z^B(low, high); other convolutions γ = 0.25; dense layers ε."""
    if low is None or high is None:
        raise OptionError("epsilon_gamma_box needs the input bounds low= and high=")
    _needs_conv("epsilon_gamma_box", layers)
    return _by_kind(layers, lambda: R.gamma(gamma, stabilizer), lambda: R.epsilon(epsilon),
                    first=lambda: R.zbox(low, high, stabilizer))  # fmt: skip


@register_composite("epsilon_plus")
def epsilon_plus(layers, epsilon=1e-6, stabilizer=1e-6):
    """Convolutions z⁺; dense layers ε."""
    return _by_kind(layers, lambda: R.zplus(stabilizer), lambda: R.epsilon(epsilon))


@register_composite("epsilon_plus_flat")
def epsilon_plus_flat(layers, epsilon=1e-6, stabilizer=1e-6):
    """First linear layer (conv or dense) flat; convolutions z⁺; dense layers ε."""
    return _by_kind(layers, lambda: R.zplus(stabilizer), lambda: R.epsilon(epsilon), first=lambda: R.flat(stabilizer),
                    first_kinds=("conv", "dense"))  # fmt: skip


@register_composite("epsilon_alpha2_beta1")
def epsilon_alpha2_beta1(layers, epsilon=1e-6, stabilizer=1e-6):
    """Convolutions α2β1; dense layers ε."""
    return _by_kind(layers, lambda: R.alpha_beta(2.0, 1.0, stabilizer), lambda: R.epsilon(epsilon))


@register_composite("epsilon_alpha2_beta1_flat")
def epsilon_alpha2_beta1_flat(layers, epsilon=1e-6, stabilizer=1e-6):
    """First linear layer flat; convolutions α2β1; dense layers ε."""
    return _by_kind(layers, lambda: R.alpha_beta(2.0, 1.0, stabilizer), lambda: R.epsilon(epsilon),
                    first=lambda: R.flat(stabilizer), first_kinds=("conv", "dense"))  # fmt: skip


@register_composite("montavon2019")
def montavon2019(layers, low=None, high=None):
    """The Montavon et al. 2019 / LRP tutorial recipe for VGG-16: pixels z^B; the lower half of the other
    convolutions γ = 0.25; the upper half ε = 0.25·RMS(z) of each sample; dense layers LRP-0; stabilisers
    added without sign (1e-9), as the tutorial. Use with ``maxpool='avgpool'`` for the tutorial's pooling."""
    if low is None or high is None:
        raise OptionError("montavon2019 needs the input bounds low= and high=")
    _needs_conv("montavon2019", layers)
    unsigned = lambda z: R.stabilize_unsigned(z, 1e-9)  # noqa: E731
    convs = [i for i, (k, _) in enumerate(layers) if k == "conv"]
    out = []
    for i, (kind, _) in enumerate(layers):
        if convs and i == convs[0]:
            out.append(R.zbox(low, high, unsigned))
        elif kind == "conv":
            rest = convs[1:]
            lower = rest.index(i) < (len(rest) + 1) // 2
            out.append(
                R.gamma(0.25, unsigned)
                if lower
                else R.epsilon(stabilizer=lambda z: R.stabilize_unsigned(z, 1e-9, 0.25))
            )
        else:
            out.append(R.epsilon(stabilizer=unsigned))
    return out


# ----------------------------------------------------------------------------------------- transformers


@register_composite("attnlrp")
def attnlrp(layers, epsilon=0.0, stabilizer=0.0):
    """AttnLRP (Achtibat et al., ICML 2024): linear layers (conv and dense) ε (0 by default: LRP-0, the
    gradient, as LXT's efficient AttnLRP; an output of exactly 0 passes no relevance); Softmax by its rule
    ``x ⊙ (R − s ΣR)``; products of two activations split uniformly; norms with σ held constant;
    activations and gates pass relevance to the signal. The default for graphs with attention.
    ``stabilizer`` is the Norm-type rules' (residual sums, softmax, products of activations, norms, fused
    attention): 0, as the paper and LXT, divides by their output alone (an output of exactly 0 passes
    none); Zennit's 1e-6 gives the Norm rule of its CNN composites."""
    return [R.epsilon(epsilon) for _ in layers]


@register_composite(
    "cp_lrp",
    role_rules={
        roles.SOFTMAX: lambda: R.STOP,
        roles.ATTENTION: RX.attention_cp,
        roles.Q_ATTENTION: RX.qattention_cp,
    },
)
def cp_lrp(layers, epsilon=0.0, stabilizer=0.0):
    """CP-LRP (Ali et al., ICML 2022): as ``attnlrp``, but the attention probabilities are constants, so
    the values take all relevance of attention × values and the queries and keys get none.
    ``stabilizer`` as for ``attnlrp``."""
    return [R.epsilon(epsilon) for _ in layers]


@register_composite("attnlrp_gamma_vit")
def attnlrp_gamma_vit(layers, conv_gamma=0.25, linear_gamma=0.05, stabilizer=1e-6, norm_stabilizer=0.0):
    """AttnLRP with γ on the linear layers, for vision transformers (LXT's ViT example tunes γ per layer
    kind; ours defaults to γ = 0.25 on convolutions, the patch embedding, and γ = 0.05 on dense layers).
    ``stabilizer`` is the γ rules', ``norm_stabilizer`` the Norm-type rules' (as ``attnlrp``'s)."""
    return [R.gamma(conv_gamma if kind == "conv" else linear_gamma, stabilizer) for kind, _ in layers]
