"""Build the LRP graph of a converted model: canonize (MatMul+Add → Linear, BatchNorm merged into the
preceding linear layer), then give every node that carries relevance a rule from the op table — or fail
naming the ONNX node. Everything happens on a copy: the model itself is never modified.

Op table (docs/methods.md §2.5.6):

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
routing (Flatten, Reshape, Transpose, Concat,  gradient
Slice, Pad, Squeeze, Gather ...)
anything else carrying relevance               error naming the node, unless ``fallback='gradient'``
=============================================  ==========================================================
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..convert.driver import NODE_ATTR
from ..errors import LRPCoverageError, OnnxExplainError, OptionError, node_label
from ..options import validate_call
from . import rules as R
from .composites import COMPOSITES

LINEAR_TYPES = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)
ACTIVATIONS = {"Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Gelu", "Elu", "Selu", "Celu", "Softplus", "Softsign",
               "HardSigmoid", "HardSwish", "Mish", "Clip", "ThresholdedRelu"}  # fmt: skip
ROUTING = {"Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Concat", "Slice", "Pad",
           "Split", "Gather", "Cast", "Expand", "Tile", "DepthToSpace", "SpaceToDepth"}  # fmt: skip
AVERAGES = {"AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum"}
MAXIMA = {"MaxPool", "GlobalMaxPool", "ReduceMax"}
#: the average pool that stands in for a max pool under ``maxpool='avgpool'``
AVGPOOL_OF = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}


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
        ctx.n = len(args)
        with torch.no_grad():
            out = wrapper.module(*args, **kwargs)
        ctx.save_for_backward(*args, out)
        return out

    @staticmethod
    def backward(ctx, relevance):
        w = ctx.wrapper
        *args, out = ctx.saved_tensors
        grads = [None] * ctx.n
        with torch.enable_grad():
            if w.rule == "pass":
                x = args[w.dependent[0]]
                if relevance.shape != x.shape:
                    relevance = relevance.sum_to_size(x.shape)
                grads[w.dependent[0]] = relevance
            elif w.rule.uses_params:
                grads[w.dependent[0]] = w.rule.relevance(w.module, [args[w.dependent[0]]], relevance, out)[0]
            else:
                layer = w.surrogate or w.module
                rel = w.rule.relevance(layer, list(args), relevance)
                for i in w.dependent:
                    grads[i] = rel[i]
        if w.record is not None:
            w.record.setdefault(w.label, []).append(
                (
                    relevance.reshape(len(relevance), -1).sum(1).detach(),
                    sum(grads[i].reshape(len(grads[i]), -1).sum(1) for i in w.dependent).detach(),
                )  # fmt: skip
            )
        return (None, None, *grads)


class RuleWrapper(nn.Module):
    """A layer whose backward pass is an LRP rule (its forward is the layer's)."""

    def __init__(self, module, rule, dependent, label, surrogate=None):
        super().__init__()
        self.module = module
        self.rule = rule
        self.dependent = list(dependent)
        self.label = label
        self.surrogate = surrogate
        self.record = None
        setattr(self, NODE_ATTR, getattr(module, NODE_ATTR, ("", "", "")))

    def forward(self, *args, **kwargs):
        return _LRPFunction.apply(self, kwargs, *args)


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
    """MatMul(x, W const) [+ Add(b const)] → nn.Linear, which the rules treat like Gemm."""
    folded = 0
    for node in list(gm.graph.nodes):
        if (
            node.op != "call_module"
            or _onnx(gm.get_submodule(node.target))[1] != "MatMul"
            or len(node.args) != 2
        ):
            continue
        w = _const_value(gm, node.args[1])
        if w is None or w.dim() != 2 or _const_value(gm, node.args[0]) is not None:
            continue
        lin = nn.Linear(w.shape[0], w.shape[1], bias=False).to(w.dtype)
        lin.weight = nn.Parameter(w.detach().T.contiguous(), requires_grad=False)
        last = node
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module":
            add = users[0]
            if _onnx(gm.get_submodule(add.target))[1] == "Add" and len(add.args) == 2:
                other = add.args[1] if add.args[0] is node else add.args[0]
                b = _const_value(gm, other)
                if b is not None and b.numel() == w.shape[1]:
                    lin.bias = nn.Parameter(b.detach().reshape(-1).clone(), requires_grad=False)
                    last = add
        setattr(lin, NODE_ATTR, _onnx(gm.get_submodule(node.target)))
        name = f"lrp_linear_{folded}"
        gm.add_module(name, lin)
        with gm.graph.inserting_after(last):
            new = gm.graph.call_module(name, (node.args[0],))
        last.replace_all_uses_with(new)
        if last is not node:
            gm.graph.erase_node(last)
        gm.graph.erase_node(node)
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
    """What the op table decided for one node, before the composite assigns the linear layers' rules."""

    what: str  # 'linear', 'override', 'norm', 'pass', 'gradient' or 'avgpool'
    override: str | None  # the user's rule spec for the node (by name or op type), if any
    dependent: list[int]  # positions of the node's float arguments that carry relevance


def _op_role(op: str, n_float: int, maxpool: str) -> str | None:
    """The op table for a node that is not a linear layer: ``'norm'``, ``'pass'``, ``'gradient'``,
    ``'avgpool'``, or None when the op has no rule. ``n_float`` counts its relevance-carrying inputs."""
    if op in ("Add", "Sum") or (op == "Sub" and n_float == 1) or op in AVERAGES:
        return "norm"
    if op in MAXIMA:
        return "avgpool" if (maxpool == "avgpool" and op == "MaxPool") else "gradient"
    if op in ACTIVATIONS or op == "BatchNormalization" or (op in ("Mul", "Div") and n_float == 1):
        return "pass"
    if op in ROUTING:
        return "gradient"
    return None


def _canonized_copy(converted):
    """A deep copy of ``converted`` with MatMul(+Add) folded into Linear layers and BatchNorm merged."""
    lrp = copy.deepcopy(converted)
    gm: fx.GraphModule = lrp.graph
    report = {"folded_matmul": _fold_matmul(gm), "merged_batchnorm": _merge_batchnorm(gm)}
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return lrp, report


def _plan(gm: fx.GraphModule, position: int, rules: dict, fallback: str | None, maxpool: str):
    """Walk the shape-propagated graph from the explained input and decide every relevance-carrying
    node's step. Returns ``(plan, linear_nodes, fallback_assignments)``; raises for a node with no rule."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    depends = {placeholders[position]}
    plan: dict[fx.Node, _Step] = {}
    linear_nodes: list[tuple[str, fx.Node]] = []
    fallbacks: list[Assignment] = []
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        dep_inputs = [i for i, a in enumerate(node.args) if isinstance(a, fx.Node) and a in depends]
        if not dep_inputs:
            continue
        depends.add(node)
        float_dep = [i for i in dep_inputs if _is_float(node.args[i])]
        if not float_dep or not _is_float(node) and node.op != "call_function":
            continue  # integer bookkeeping (shapes, indices): no relevance
        if node.op == "call_function":  # getitem of multi-output nodes
            continue
        module = gm.get_submodule(node.target)
        name, op, domain = _onnx(module)
        override = rules.get(name, rules.get(op))
        if isinstance(module, LINEAR_TYPES):
            linear_nodes.append(("dense" if isinstance(module, nn.Linear) else "conv", node))
            plan[node] = _Step("linear", override, float_dep)
            continue
        if override is not None:
            plan[node] = _Step("override", override, float_dep)
            continue
        role = _op_role(op, len(float_dep), maxpool)
        if role is not None:
            plan[node] = _Step(role, None, float_dep)
        elif fallback == "gradient":
            plan[node] = _Step("gradient", None, float_dep)
            fallbacks.append(Assignment(node.target, name, op, "gradient", fallback=True))
        else:
            why = "mixes two activations" if len(float_dep) > 1 else "carries relevance"
            raise LRPCoverageError(
                f"LRP: {node_label(name, op, domain)} {why} and has no LRP rule; give it one "
                f"(rules={{'{op}': ...}} / --rule {op}=RULE) or pass fallback='gradient' to let the plain gradient through"
            )
    return plan, linear_nodes, fallbacks


def _node_rule(step: _Step, composite_rule, module) -> R.Rule | str:
    """The rule of one planned node: the override, the composite's rule for a linear layer, Norm, or one
    of the special rules (``'pass'``, ``'gradient'``, ``'avgpool'``)."""
    name, op, domain = _onnx(module)
    if step.what == "linear":
        rule = R.parse_rule(step.override) if step.override is not None else composite_rule
        if isinstance(rule, str) and rule not in ("gradient", "pass"):
            raise LRPCoverageError(
                f"LRP: rule {step.override!r} does not apply to the linear {node_label(name, op, domain)}"
            )
        return rule
    if step.what == "override":
        rule = R.parse_rule(step.override)
        if isinstance(rule, R.Rule) and rule.uses_params:
            raise LRPCoverageError(
                f"LRP: rule {step.override!r} needs a linear layer; {node_label(name, op, domain)} is not one"
            )
    else:
        rule = R.norm() if step.what == "norm" else step.what
    if rule == "avgpool" and type(module) not in AVGPOOL_OF:
        raise LRPCoverageError(
            f"LRP: the avgpool surrogate replaces a 1-, 2- or 3-d max pooling; {node_label(name, op, domain)} is not one"
        )
    return rule


def _install(gm: fx.GraphModule, node: fx.Node, module, rule, dependent: list[int], label: str) -> None:
    """Replace the node's module by a :class:`RuleWrapper` computing ``rule`` in the backward pass."""
    surrogate = None
    if rule == "avgpool":  # Montavon's tutorial: relevance through an average pool of the same geometry
        pool = AVGPOOL_OF[type(module)]
        surrogate = pool(module.kernel_size, module.stride, module.padding, ceil_mode=module.ceil_mode)
        rule = R.norm()
    wrapper = RuleWrapper(module, rule, dependent, label, surrogate)
    parent, _, attr = node.target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, attr, wrapper)


def build_lrp_graph(
    converted,
    example: torch.Tensor,
    composite: str = "epsilon_plus",
    composite_options: dict | None = None,
    rules: dict | None = None,
    fallback: str | None = None,
    maxpool: str = "gradient",
):
    """A copy of ``converted`` (a ConvertedModel) whose backward pass computes LRP.

    Parameters
    ----------
    converted : ConvertedModel
        From :meth:`onnx_explain.Model.torch_module`.
    example : tensor
        A batch of inputs, to find which tensors carry relevance and to prove canonization kept the output.
    composite : str
        One of :data:`COMPOSITES`.
    composite_options : dict
        Its options (``low``/``high`` for z^B, ``epsilon``, ``gamma`` ...).
    rules : dict
        Overrides ``{ONNX op type or ONNX node name: rule spec}``; a node name wins over its op type.
    fallback : {None, 'gradient'}
        What a node with no rule does: None raises :class:`LRPCoverageError`; ``'gradient'`` lets the
        plain gradient through and reports the node.
    maxpool : {'gradient', 'avgpool'}

    Returns
    -------
    (module, assignments)
    """
    if composite not in COMPOSITES:
        raise OptionError(f"unknown composite {composite!r}; choose one of {', '.join(sorted(COMPOSITES))}")
    if fallback not in (None, "gradient"):
        raise OptionError(f"fallback must be None or 'gradient', not {fallback!r}")
    if maxpool not in ("gradient", "avgpool"):
        raise OptionError(f"maxpool must be 'gradient' or 'avgpool', not {maxpool!r}")
    options = validate_call(
        COMPOSITES[composite], dict(composite_options or {}), f"composite {composite!r}", ("layers",)
    )
    lrp, report = _canonized_copy(converted)
    gm: fx.GraphModule = lrp.graph
    ShapeProp(gm).propagate(*lrp.graph_args(example))
    plan, linear_nodes, assignments = _plan(gm, lrp.position, dict(rules or {}), fallback, maxpool)

    composite_rules = COMPOSITES[composite]([(k, n.target) for k, n in linear_nodes], **options)
    linear_rule = {n: r for (_, n), r in zip(linear_nodes, composite_rules, strict=True)}
    reported = {a.module for a in assignments}  # the fallback nodes, reported as such
    for node, step in plan.items():
        module = gm.get_submodule(node.target)
        name, op, _ = _onnx(module)
        rule = _node_rule(step, linear_rule.get(node), module)
        if node.target not in reported:
            assignments.append(
                Assignment(node.target, name, op, rule if isinstance(rule, str) else rule.name)
            )
        if rule != "gradient":
            _install(gm, node, module, rule, step.dependent, f"{name or node.target} ({op})")
    gm.recompile()
    with torch.no_grad():
        ref, got = converted(example), lrp(example)
    if not torch.allclose(ref, got, rtol=1e-4, atol=1e-5 * float(ref.abs().max().clamp_min(1))):
        raise OnnxExplainError("LRP canonization changed the model's output (a bug: please report the model)")
    lrp.lrp_report = report
    return lrp, assignments


def set_recording(module: nn.Module, record: dict | None) -> None:
    """Make every rule wrapper of ``module`` record (R_out, R_in) sums into ``record`` (None: stop)."""
    for m in module.modules():
        if isinstance(m, RuleWrapper):
            m.record = record
