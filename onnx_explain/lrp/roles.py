"""LRP roles: what an ONNX op does to relevance, registered per op type.

A role is data: a name, the rule it gets unless a composite or an override says otherwise, and which of the
node's inputs receive relevance. ``register_lrp_role(op_types, role, when=...)`` adds an op; a condition
``when(view)`` picks between roles of one op type (``Mul`` by a constant, of a gate, of two activations).
Composites map roles to rules (:mod:`onnx_explain.lrp.composites`); linear layers get the composite's
per-layer rules. A new op gets LRP support by one registration plus its test.

Transformer and gated-network roles follow AttnLRP (Achtibat et al., ICML 2024) and CP-LRP (Ali et al.,
ICML 2022): the normalising factor of a norm is held constant, a product of two activations is split
uniformly, a product with a gate (sigmoid, hard-sigmoid, the ``1 + erf`` of a decomposed GELU) gives all
relevance to the signal, and activations pass relevance unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import fx, nn

from . import rules as R
from . import rules_extra as RX


@dataclass(frozen=True, eq=False)
class Role:
    """What a node does to relevance.

    Attributes
    ----------
    name : str
        Shown in reports and errors.
    rule : callable or None
        ``() -> Rule`` used unless the composite maps the role to another rule; None for linear layers,
        whose rules the composite gives per layer.
    inputs : callable, optional
        ``view -> positions`` of the inputs that receive relevance (default: every float input that
        depends on the explained input).
    outputs : tuple of int, optional
        For a multi-output node, the outputs that carry relevance (default: all); the others are constants
        for LRP (the data-dependent scale and zero point of ``DynamicQuantizeLinear``).
    """

    name: str
    rule: Callable | None
    inputs: Callable | None = field(default=None, repr=False)
    outputs: tuple | None = None

    def __repr__(self):
        return f"Role({self.name!r})"


@dataclass
class NodeView:
    """One graph node as the role conditions see it."""

    gm: fx.GraphModule
    node: fx.Node
    module: nn.Module
    op: str
    dependent: list[int]  # float inputs that depend on the explained input (through no stopped node)
    depends: set  # every node that depends on the explained input so far

    def producer_op(self, arg) -> str | None:
        """The ONNX op type of the node that computes ``arg`` (None for constants and inputs)."""
        return op_of(self.gm, arg)


def op_of(gm: fx.GraphModule, node) -> str | None:
    if isinstance(node, fx.Node) and node.op == "call_module":
        return getattr(gm.get_submodule(node.target), "onnx_node", ("", type(node).__name__, ""))[1]
    return None


# ------------------------------------------------------------------------------------------- registry

#: op type -> [(condition or None, role)], tried in order; the unconditional entry comes last
LRP_ROLES: dict[str, list[tuple[Callable | None, Role]]] = {}


def register_lrp_role(op_types, role: Role, when: Callable[[NodeView], bool] | None = None) -> None:
    """Give ``op_types`` (a name or several) the LRP ``role``, under the condition ``when(view)`` if given.

    Conditional entries of one op are tried in registration order before its unconditional one; a second
    unconditional entry for an op raises.
    """
    for op in [op_types] if isinstance(op_types, str) else list(op_types):
        entries = LRP_ROLES.setdefault(op, [])
        if when is None:
            if any(w is None for w, _ in entries):
                raise ValueError(f"LRP role of {op!r} is registered twice")
            entries.append((None, role))
        else:
            entries.insert(sum(w is not None for w, _ in entries), (when, role))


def role_of(view: NodeView) -> Role | None:
    """The registered role of ``view``'s node, or None."""
    for when, role in LRP_ROLES.get(view.op, ()):
        if when is None or when(view):
            return role
    return None


# ------------------------------------------------------------------------------------------- conditions

_GATES = {"Sigmoid": 2, "HardSigmoid": 2, "Erf": 1, "Tanh": 1, "Clip": 1}
_AFFINE = {"Add", "Sub", "Mul", "Div"}


def _gate_strength(view: NodeView, arg) -> int:
    """How gate-like ``arg`` is: 2 for a sigmoid or hard-sigmoid, 1 for the ``1 + erf(x/√2)`` of a GELU,
    a tanh or a clip, seen through additions and scalings by constants; 0 otherwise."""
    for _ in range(4):
        op = view.producer_op(arg)
        if op in _GATES:
            return _GATES[op]
        if op not in _AFFINE:
            return 0
        carriers = [a for a in arg.args if isinstance(a, fx.Node) and a in view.depends]
        if len(carriers) != 1:
            return 0
        arg = carriers[0]
    return 0


def gate_position(view: NodeView) -> int | None:
    """For a product of two activations, the position of the gate operand (the more gate-like one), or
    None when neither is a gate or both are alike."""
    if len(view.dependent) != 2:
        return None
    a, b = (_gate_strength(view, view.node.args[i]) for i in view.dependent)
    if a == b:
        return None
    return view.dependent[0] if a > b else view.dependent[1]


def _past_constant_adds(view: NodeView, arg, depth: int) -> str | None:
    """The op that computes ``arg``, looking through up to ``depth`` additions of constants (an ε)."""
    for _ in range(depth):
        op = view.producer_op(arg)
        if op != "Add":
            return op
        carriers = [a for a in arg.args if isinstance(a, fx.Node) and a in view.depends]
        if len(carriers) != 1:
            return op
        arg = carriers[0]
    return None


def _is_variance(view: NodeView, arg, depth: int = 3) -> bool:
    """Whether ``arg`` is a mean (of squares), possibly plus a constant ε: the inside of a norm's σ."""
    return _past_constant_adds(view, arg, depth) == "ReduceMean"


def _one(view):
    return len(view.dependent) == 1


def _two(view):
    return len(view.dependent) == 2


def _gated(view):
    return gate_position(view) is not None


def _scaled(view):  # x / c, not c / x
    return view.dependent == [0]


def _norm_scale(view):
    return _is_variance(view, view.node.args[view.dependent[0]])


def _of_sqrt(view):
    """1/√(·): the reciprocal of a square root (a norm's 1/σ written as Reciprocal(Sqrt(var + ε)), jax2tf's
    LayerNorm), possibly through an added constant."""
    return bool(view.dependent) and _past_constant_adds(view, view.node.args[view.dependent[0]], 2) == "Sqrt"


def _signal(view):
    gate = gate_position(view)
    return [i for i in view.dependent if i != gate]


def _single_output(view):
    return getattr(view.module, "n_outputs", 1) == 1


def _norm_and_sum(view):
    """A skip norm read only at its normalised output (0) and its sum (3)."""
    uses = [u for u in view.node.users if u.op == "call_function"]
    return getattr(view.module, "n_outputs", 1) == 4 and all(
        len(u.args) > 1 and u.args[1] in (0, 3) for u in uses
    )


def _nearest(view):
    m = getattr(
        view.module, "_resize", view.module
    )  # onnx2torch wraps Resize-10 around the Resize-11+ module
    mode = getattr(m, "onnx_mode", None) or getattr(m, "mode", "")
    return str(mode).lower().startswith("nearest")


def _biased(view):  # an activation of x + a bias, x alone carrying relevance
    return view.dependent == [0] and len(view.node.args) > 1 and view.node.args[1] is not None


def _attention_outputs_unused(view):
    """Only the attention output carries relevance: a ``present`` (KV cache) output used downstream would
    carry some too, and has no rule."""
    if getattr(view.module, "n_outputs", 1) == 1:
        return True
    uses = [u for u in view.node.users if u.op == "call_function"]
    return all(u.args[1] == 0 for u in uses if len(u.args) > 1)


# ------------------------------------------------------------------------------------------- roles

LAYER = Role("layer", None)
PROPORTIONAL = Role("proportional", R.norm)
IDENTITY = Role("identity", lambda: R.PASS)
ROUTE = Role("route", lambda: R.GRADIENT)
MAX_POOL = Role("max_pool", lambda: R.GRADIENT)
WINNER_TAKES_ALL = Role("winner_takes_all", lambda: R.GRADIENT)
SOFTMAX = Role("softmax", R.softmax)
BILINEAR = Role("bilinear", R.bilinear)
GATED = Role("gated", lambda: R.PASS, inputs=_signal)
NORM_SCALE = Role("norm_scale", lambda: R.STOP)
LAYER_NORM = Role("layer_norm", R.layer_norm)
SKIP_NORM = Role("layer_norm", RX.skip_layer_norm, outputs=(0, 3))
RECURRENT = Role("recurrent", R.signal_take_all)
ATTENTION = Role("attention", RX.attention)  # fused: projections, Q·Kᵀ, softmax, P·V, mask
EMBED_NORM = Role("embed_layer_norm", RX.embed_layer_norm)
Q_ATTENTION = Role("q_attention", RX.qattention)  # quantize_dynamic's fused attention
Q_EMBED_NORM = Role("q_embed_layer_norm", RX.q_embed_layer_norm)
BIAS_ACTIVATION = Role("bias_activation", RX.bias_identity)
LINEAR_SCORES = Role("linear_scores", RX.linear_scores)  # ai.onnx.ml's LinearClassifier: ε on X Wᵀ + b

ACTIVATIONS = ("Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Gelu", "FastGelu", "QuickGelu", "BiasGelu", "Elu",
               "Selu", "Celu", "Softplus", "Softsign", "HardSigmoid", "HardSwish", "Swish", "Mish", "Clip",
               "ThresholdedRelu")  # fmt: skip
ROUTING = ("Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Concat", "Slice", "Pad",
           "Split", "Gather", "Cast", "Expand", "Tile", "DepthToSpace", "SpaceToDepth",
           "Where")  # fmt: skip  # Where: SDPA exports zero NaN probabilities (fully masked rows)

register_lrp_role(("BiasGelu", "FastGelu"), BIAS_ACTIVATION, when=_biased)  # com.microsoft: act(x + bias)
register_lrp_role(ACTIVATIONS, IDENTITY)
register_lrp_role("BatchNormalization", IDENTITY)  # when not merged into the layer before it
# scikit-learn pipelines (ai.onnx.ml): a Scaler ((x − offset) · scale) and an Imputer map each column on
# its own, as a BatchNormalization does; a Normalizer divides by the row's norm, held constant as a
# LayerNorm's is (AttnLRP): each passes a column's relevance to that column
register_lrp_role(("Scaler", "Imputer", "Normalizer", "LpNormalization"), IDENTITY)
# a LinearClassifier is a linear layer and an activation in one node: relevance passes its post transform
# (logistic, softmax) as an activation's does and is shared by the ε rule over X Wᵀ + b, the intercept
# absorbing its share; the label output carries none
register_lrp_role("LinearClassifier", LINEAR_SCORES)
register_lrp_role(ROUTING, ROUTE)
register_lrp_role(("Add", "Sum", "Sub"), PROPORTIONAL)
register_lrp_role(("AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum"), PROPORTIONAL)
register_lrp_role("MaxPool", MAX_POOL)
# Resize/Upsample (every FPN and U-Net): nearest copies pixels, so relevance is routed back to its source
# (exactly, no stabiliser); (bi/tri)linear and cubic modes are linear maps, so the Norm rule gives each
# source pixel its share of each output pixel (its interpolation weight times its value)
register_lrp_role(("Resize", "Upsample"), ROUTE, when=_nearest)
register_lrp_role(("Resize", "Upsample"), PROPORTIONAL)
register_lrp_role(("GlobalMaxPool", "ReduceMax"), WINNER_TAKES_ALL)
# Max/Min: of an activation and a constant, an activation (tf's Maximum(x, 0) for a ReLU: pass); of two
# activations, the winner takes all (tf's Maximum(x, 0.2 x) for a LeakyReLU, as a max pool does)
register_lrp_role(("Max", "Min"), IDENTITY, when=_one)
register_lrp_role(("Max", "Min"), WINNER_TAKES_ALL)
register_lrp_role("Mul", IDENTITY, when=_one)  # scaling by a constant
register_lrp_role("Div", IDENTITY, when=_scaled)
register_lrp_role("Mul", GATED, when=_gated)  # SiLU, squeeze-excitation, decomposed GELU
register_lrp_role("Mul", BILINEAR, when=_two)
register_lrp_role(("MatMul", "Einsum"), PROPORTIONAL, when=_one)  # by a constant not folded into a layer
register_lrp_role(("MatMul", "Einsum"), BILINEAR, when=_two)
register_lrp_role("Softmax", SOFTMAX)
NORMS = ("LayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
         "SimplifiedLayerNormalization")  # fmt: skip
register_lrp_role(NORMS, LAYER_NORM, when=_single_output)  # the mean / inv-std outputs: no role
# a skip norm whose sum output (input + skip) feeds the next residual (onnxruntime-genai): the mean and 1/σ
# outputs carry nothing, the normalised output and the sum each give their Norm share
register_lrp_role(
    ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization"), SKIP_NORM, when=_norm_and_sum
)
register_lrp_role(("LSTM", "GRU", "RNN"), RECURRENT)  # gates constant, the signal takes all (Arras)
register_lrp_role("DynamicQuantizeLSTM", RECURRENT)  # com.microsoft: the same cell, its GEMMs quantized
register_lrp_role("BiasAdd", PROPORTIONAL)  # com.microsoft: x + bias + skip
register_lrp_role("FusedMatMul", PROPORTIONAL, when=_one)
register_lrp_role("FusedMatMul", BILINEAR, when=_two)
register_lrp_role("Sqrt", NORM_SCALE, when=_norm_scale)  # σ of a decomposed LayerNorm or RMSNorm
register_lrp_role("Reciprocal", NORM_SCALE, when=_of_sqrt)  # 1/σ of a norm, whatever computed the variance
# element-wise functions of one activation pass relevance unchanged, as activations do: the magnitude
# sqrt(re² + im²) of an STFT front-end (Silero, Magika's L2 norm), |x|, a power by a constant exponent,
# the log of a magnitude spectrum (Silero v4, mel front-ends) and exp
register_lrp_role(("Sqrt", "Abs", "Log", "Exp"), IDENTITY)
register_lrp_role(
    "Neg", IDENTITY
)  # -x (a rotary embedding's rotate_half): linear, relevance passes unchanged
register_lrp_role("Pow", IDENTITY, when=_scaled)  # x ** c (c constant): as Div by a constant, position 0
register_lrp_role(("Attention", "MultiHeadAttention", "GroupQueryAttention"), ATTENTION,
                  when=_attention_outputs_unused)  # fmt: skip
register_lrp_role("EmbedLayerNormalization", EMBED_NORM)  # its word lookup is a routing Gather before it
# quantized graphs: a Q → DQ pair on an activation is the identity for relevance with the straight-through
# gradient (0 where the quantizer clips); the DequantizeLinear of constant weights is folded in canonize
register_lrp_role(("QuantizeLinear", "DequantizeLinear"), ROUTE, when=_one)

# quantize_dynamic: DynamicQuantizeLinear's y = round(x / s) + zp routes relevance straight through (as a
# QuantizeLinear); its data-dependent s and zp are constants. canonize makes each MatMulInteger/ConvInteger of
# constant weights (with the Cast, scale Mul and bias Add after it) a DequantizeLinear of its input and the
# dequantized layer, so the pair is the straight-through identity and the layer gets its composite rule.
DYNAMIC_QUANTIZE = Role("dynamic_quantize", lambda: R.GRADIENT, outputs=(0,))
register_lrp_role("DynamicQuantizeLinear", DYNAMIC_QUANTIZE)
register_lrp_role("QAttention", Q_ATTENTION, when=_attention_outputs_unused)
register_lrp_role("QEmbedLayerNormalization", Q_EMBED_NORM)
