"""Build the torch.fx graph from an ONNX graph with onnx2torch's converters.

This is onnx2torch's ``convert`` loop with the fixes that cannot live in a converter:

- a graph output taken from one output of a multi-output node returns that output, not the tuple;
- module names are made from ONNX node names with every dot replaced, so dotted custom domains
  (``ai.onnx.ml``, ``com.microsoft``) no longer crash ``add_module``; names that collide (two nodes
  called ``a`` and one ``a_1``, a node called ``forward``) are made unique instead of dropping a node;
- nodes are put in topological order as onnxruntime does (the ONNX spec asks for it; files break it);
  a cycle, or a value with two producers, is refused;
- no shape inference here (the caller did it without serialising the model, which fails over 2 GB);
- every failure is a :class:`ConversionError` naming the ONNX node and op type (or the initializer),
  including tensors whose data does not match their shape (a file may declare 2e12 values and hold
  none: refused without allocating) and attributes that cannot be read;
- each torch module keeps its ONNX node (``onnx_mapping``, and :data:`NODE_ATTR` with name, op type,
  domain), so later errors and LRP rule overrides can name ONNX nodes; :func:`failing_node` names the
  node where a converted graph fails at run time (both in :mod:`.nodes`, below the converters that use
  them);
- control flow (:mod:`.ops.control`): an ``If`` whose condition initializers, Constants and fixed inputs
  (``known``) decide is folded, its branch's nodes put in this graph (``GraphModule.onnx_folded`` lists
  it); other Ifs and every ``Loop``/``Scan`` body become fx graphs of their own that receive the
  outer-scope values they read as extra arguments. A node inside a subgraph is named in errors with
  where it sits (``node 'add' (Add) in the body of node 'loop' (Loop)``);
- a converter may return an fx graph marked ``onnx_inline`` (EmbedLayerNormalization): its nodes are
  copied into this graph, so its parts are separate nodes (the word lookup that token attribution
  starts from).
"""

from __future__ import annotations

import heapq
import inspect
from collections import ChainMap, OrderedDict
from operator import getitem

import numpy as np
import onnx
from onnx2torch.node_converters import get_converter
from onnx2torch.onnx_graph import OnnxGraph, ValueType
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.onnx_tensor import OnnxTensor
from onnx2torch.utils.common import OnnxMapping
from torch import fx, nn

from ..errors import ConversionError, node_label
from . import ops  # noqa: F401  (registers our converters)
from .nodes import NODE_ATTR, failing_node, onnx_nodes
from .ops import control
from .prepare import materialize_constants, tensor_problem

__all__ = ["NODE_ATTR", "failing_node", "onnx_nodes", "to_fx"]

_CONTROL = {"If", "Loop", "Scan"}  # ops with subgraphs, converted here (they need the builder)
_MAX_FOLD_NODES = 500  # an If condition computed by more nodes than this is selected per call


class _Initializers(nn.Module):
    """Holds the graph's initializers as buffers."""

    def forward(self, *args, **kwargs):  # pragma: no cover - never called
        raise RuntimeError("the initializer container is not callable")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _label(node: onnx.NodeProto) -> str:
    return node_label(node.name, node.op_type, node.domain)


# ------------------------------------------------------------------------------- checking the graph
def _subgraph_reads(node: onnx.NodeProto) -> list[str]:
    """Values read by the subgraphs of ``node`` (If/Loop/Scan bodies), at any depth."""
    reads: list[str] = []
    for attr in node.attribute:
        for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for inner in g.node:
                reads.extend(inner.input)
                reads.extend(_subgraph_reads(inner))
    return reads


def _topological(graph: onnx.GraphProto, source: str) -> list[onnx.NodeProto]:
    """The nodes in an order where each runs after the producers of what it reads (the file's order
    when it already is one); ConversionError for a value produced twice or a cycle."""
    producer: dict[str, int] = {}
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    nodes = list(graph.node)
    for k, node in enumerate(nodes):
        for out in node.output:
            if not out:
                continue
            if out in producer:
                other = nodes[producer[out]]
                raise ConversionError(
                    f"{source}: value {out!r} is produced by two nodes, {_label(other)} and {_label(node)}"
                )
            if out in defined:
                raise ConversionError(
                    f"{source}: {_label(node)} produces {out!r}, which is already a graph input or initializer"
                )
            producer[out] = k
    dependents: list[list[int]] = [[] for _ in nodes]
    waiting = [0] * len(nodes)
    for k, node in enumerate(nodes):
        deps = {producer[v] for v in list(node.input) + _subgraph_reads(node) if v in producer}
        if k in deps:
            raise ConversionError(f"{source}: {_label(node)} reads its own output (a cycle)")
        waiting[k] = len(deps)
        for d in deps:
            dependents[d].append(k)
    ready = [k for k in range(len(nodes)) if waiting[k] == 0]
    heapq.heapify(ready)  # smallest index first: a graph already in order keeps the file's order
    order: list[int] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for j in dependents[k]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) < len(nodes):
        stuck = next(k for k in range(len(nodes)) if waiting[k] > 0)
        raise ConversionError(
            f"{source}: the graph has a cycle through {_label(nodes[stuck])} "
            f"({len(nodes) - len(order)} node(s) wait on each other)"
        )
    return [nodes[k] for k in order]


def _check_names(graph: onnx.GraphProto, source: str) -> None:
    """Refuse names that are not text: protobuf hands back ``bytes`` for a string field that is not
    valid UTF-8 (a damaged file), and every name is used as a ``str``."""
    for node in graph.node:
        fields = [node.name, node.op_type, node.domain, *node.input, *node.output]
        fields += [a.name for a in node.attribute]
        if not all(isinstance(f, str) for f in fields):
            raise ConversionError(
                f"{source}: {_label(node)} has a name, op type, domain or value name that is not UTF-8 text"
            )
    for kind, items in (("input", graph.input), ("output", graph.output), ("initializer", graph.initializer)):
        for item in items:
            if not isinstance(item.name, str):
                raise ConversionError(
                    f"{source}: graph {kind} {item.name!r} has a name that is not UTF-8 text"
                )


def _check_tensors(graph: onnx.GraphProto, source: str) -> None:
    """Refuse initializers and Constant values whose data cannot be what they declare."""
    for t in graph.initializer:
        problem = tensor_problem(t)
        if problem:
            raise ConversionError(f"{source}: initializer {t.name!r} {problem}")
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    problem = tensor_problem(attr.t)
                    if problem:
                        raise ConversionError(f"{source}: {_label(node)}: its {attr.name!r} tensor {problem}")


class _Graph(OnnxGraph):
    """onnx2torch's graph view, built from nodes in topological order, with unique node names that
    cannot collide, and attributes that cannot be read reported by node.

    A subgraph (an If branch, a Loop or Scan body) has a ``parent``: the initializers and value
    infos of every enclosing graph are visible in it, and a value it does not define is looked up
    in the enclosing scopes (``ValueType`` of the outer graph), as the ONNX spec's outer-scope rule says.
    """

    def __init__(self, graph: onnx.GraphProto, nodes: list[onnx.NodeProto], source: str, parent=None):
        self._proto = graph
        self.parent = parent
        self._input_values = tuple(v.name for v in graph.input)
        self._output_values = tuple(v.name for v in graph.output)
        self._nodes = OrderedDict()
        for node in nodes:
            base = OnnxGraph.generate_node_name(node)
            name, k = base, 0
            while name in self._nodes:
                k += 1
                name = f"{base}_{k}"
            try:
                self._nodes[name] = OnnxNode(node, unique_name=name)
            except Exception as exc:  # noqa: BLE001 - an attribute of the wrong type or encoding
                raise ConversionError(
                    f"{source}: {_label(node)} has an attribute that cannot be read: {_first_line(exc)}"
                ) from None
        self._initializers = dict(parent._initializers) if parent is not None else {}
        own = {t.name for t in graph.initializer}
        # an inner value (input or node output) hides an outer initializer of the same name
        for name in self._input_values + tuple(o for n in nodes for o in n.output):
            if name not in own:
                self._initializers.pop(name, None)
        self._initializers.update({t.name: OnnxTensor(t) for t in graph.initializer})
        self._node_output_values = {
            out: (node, i) for node in self._nodes.values() for i, out in enumerate(node.output_values)
        }
        self._value_info = dict(parent._value_info) if parent is not None else {}
        self._value_info.update({v.name: v for v in graph.value_info})
        for v in list(graph.input) + list(graph.output):
            self._value_info[v.name] = v

    def value_type(self, value_name: str) -> ValueType:
        kind = super().value_type(value_name)
        if kind == ValueType.UNKNOWN and self.parent is not None:
            return self.parent.value_type(value_name)
        return kind

    def is_outer(self, value_name: str) -> bool:
        """Whether ``value_name`` is an input or node output of an enclosing graph (not an initializer)."""
        if not value_name or super().value_type(value_name) != ValueType.UNKNOWN or self.parent is None:
            return False
        return self.parent.value_type(value_name) in (ValueType.GRAPH_INPUT, ValueType.NODE_OUTPUT)


# ------------------------------------------------------------------------------- building the fx graph
class _Builder:
    """The fx graph under construction: one call_module per ONNX node, initializers as buffers.

    A builder also converts subgraphs: an If branch whose condition is known at load time is inlined
    into this graph (:meth:`inline`); other branches and Loop/Scan bodies become their own fx graphs
    (:meth:`body`), whose extra placeholders receive the outer-scope values they read.

    Parameters
    ----------
    onnx_graph : _Graph
    opsets : dict
    source : str
    context : str
        Appended to node labels in errors: where a subgraph sits (``" in the body of node 'L' (Loop)"``).
    known : dict, optional
        Graph input name -> value fixed at load time; lets an If on such an input be folded.
    captured : sequence of str
        Outer-scope values this (sub)graph reads; they become placeholders after the graph's inputs.
    shared : dict, optional
        State shared by a graph and its subgraphs (loaded initializer tensors, folded If nodes).
    """

    def __init__(self, onnx_graph: _Graph, opsets, source, context="", known=None, captured=(), shared=None):
        self.onnx_graph = onnx_graph
        self.opsets = opsets
        self.source = source
        self.context = context
        self.known = dict(known or {})
        self.shared = shared if shared is not None else {"tensors": {}, "folded": []}
        self.scopes = [onnx_graph]  # graphs whose nodes land in this fx graph (more while inlining)
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.inits = _Initializers()
        self.root.add_module("initializers", self.inits)
        self.values = {}  # ONNX value name -> fx node producing it
        self.n_buffers = 0
        for i, name in enumerate(onnx_graph.input_values, 1):
            self.values[name] = self.graph.placeholder(f"input_{i}")
        self.captured = list(captured)
        for i, name in enumerate(self.captured):
            self.values[name] = self.graph.placeholder(f"outer_{i}")

    def module_name(self, unique_name: str) -> str:
        """A submodule name from the node's unique name: no dots, not taken, not an attribute of
        ``nn.Module`` (a node called ``forward`` or ``initializers``)."""
        base = unique_name.replace(".", "_") or "node"
        name, k = base, 0
        while hasattr(self.root, name):
            k += 1
            name = f"{base}_{k}"
        return name

    def label(self, onnx_node: OnnxNode) -> str:
        return node_label(onnx_node.name, onnx_node.operation_type, onnx_node.domain) + self.context

    def convert(self, onnx_node: OnnxNode, label: str):
        """``(module, mapping)`` from the node's converter; ConversionError naming the node otherwise."""
        domain = onnx_node.domain if onnx_node.domain != "ai.onnx" else ""
        version = self.opsets.get(onnx_node.domain)
        if version is None:
            raise ConversionError(
                f"{self.source}: {label} uses domain {onnx_node.domain!r}, not in the opset imports"
            )
        try:
            convert = get_converter(domain=domain, operation_type=onnx_node.operation_type, version=version)
        except Exception:  # noqa: BLE001 - NotImplementedError, or a schema lookup failing on odd names
            raise ConversionError(
                f"{self.source}: {label} has no torch converter at opset {version} "
                f"(onnx-explain: see onnx_explain/convert/ops to add one)"
            ) from None
        try:
            return convert(onnx_node, self.onnx_graph)
        except Exception as exc:  # noqa: BLE001 - any converter failure becomes one clear line
            raise ConversionError(
                f"{self.source}: {label} could not be converted (opset {version}): {_first_line(exc)}"
            ) from None

    def initializer(self, value: str, label: str) -> fx.Node:
        """The get_attr node of initializer ``value``, registered as a buffer on first use (a tensor read
        by several subgraphs is loaded once and shared)."""
        if value not in self.values:
            onnx_tensor = self.onnx_graph.initializers[value]
            tensors = self.shared["tensors"]
            # keyed by identity, with the object kept alive beside its tensor: a bare id() of a wrapper that
            # is later freed (a subgraph's, once converted) can be reused by another tensor, which then
            # read this one's values — silero-vad's nested If branches got a Squeeze's axes wrong, at random
            cached = tensors.get(id(onnx_tensor))
            if cached is None or cached[0] is not onnx_tensor:
                try:
                    cached = tensors[id(onnx_tensor)] = (onnx_tensor, onnx_tensor.to_torch())
                except Exception as exc:  # noqa: BLE001 - a payload numpy or torch cannot read
                    raise ConversionError(
                        f"{self.source}: initializer {value!r} read by {label} cannot be loaded: {_first_line(exc)}"
                    ) from None
            buf = f"onnx_initializer_{self.n_buffers}"
            self.n_buffers += 1
            self.inits.register_buffer(buf, cached[1])
            self.values[value] = self.graph.get_attr(f"initializers.{buf}")
        return self.values[value]

    def value(self, value: str, label: str):
        """The fx node of ONNX value ``value`` (None for an empty name)."""
        if not value:  # an omitted optional input (some node's omitted optional output is '' too)
            return None
        kind = self.onnx_graph.value_type(value)
        if kind in (ValueType.GRAPH_INPUT, ValueType.NODE_OUTPUT) and value in self.values:
            return self.values[value]
        if kind == ValueType.GRAPH_INITIALIZER:
            return self.initializer(value, label)
        if kind == ValueType.EMPTY:
            return None
        raise ConversionError(f"{self.source}: {label} reads {value!r}, which nothing produces")

    def arguments(self, module: nn.Module, inputs, label: str) -> tuple[tuple, dict]:
        """The call's positional and keyword arguments for the ONNX inputs ``inputs`` of a node."""
        args = [self.value(v, label) for v in inputs]
        if None not in args:
            return tuple(args), {}
        # skipped optional inputs become keyword arguments, as in onnx2torch
        first = args.index(None)
        try:
            names = tuple(inspect.signature(module.forward).parameters)[first : len(args)]
        except (TypeError, ValueError):
            names = ()
        kwargs = {k: v for k, v in zip(names, args[first:], strict=False) if v is not None}
        return tuple(args[:first]), kwargs

    def attach(self, unique_name: str, onnx_node: OnnxNode, module: nn.Module, mapping) -> str:
        """Add ``module`` as the submodule of ``onnx_node``, with its ONNX identity; returns its name."""
        module.onnx_mapping = mapping
        setattr(module, NODE_ATTR, (onnx_node.name, onnx_node.operation_type, onnx_node.domain))
        module.onnx_context = self.context
        mod_name = self.module_name(unique_name)
        self.root.add_module(mod_name, module)
        return mod_name

    def add(self, unique_name: str, onnx_node: OnnxNode) -> None:
        """Convert one node and append its call (and the getitems of a multi-output node)."""
        label = self.label(onnx_node)
        if onnx_node.domain in ("", "ai.onnx") and onnx_node.operation_type in _CONTROL:
            self.add_control(unique_name, onnx_node, label)
            return
        module, mapping = self.convert(onnx_node, label)
        mod_name = self.attach(unique_name, onnx_node, module, mapping)
        if isinstance(module, fx.GraphModule) and getattr(module, "onnx_inline", False):
            self.inline_module(mod_name, module, mapping, label)
            return
        args, kwargs = self.arguments(module, mapping.inputs, label)
        fx_node = self.graph.call_module(mod_name, args=args, kwargs=kwargs)
        outs = onnx_node.output_values
        if len(outs) == 1:
            self.values[outs[0]] = fx_node
        else:
            for k, out in enumerate(outs):
                if out:
                    self.values[out] = self.graph.call_function(getitem, args=(fx_node, k))

    def inline_module(self, mod_name: str, module: fx.GraphModule, mapping, label: str) -> None:
        """Copy the nodes of a converter's own fx graph (``onnx_inline``) into this graph, so that its
        parts are separate nodes (an embedding lookup that attribution starts from); its placeholders
        take the node's inputs in order (None for absent ones)."""
        identity = getattr(module, NODE_ATTR)
        for sub in module.modules():
            if sub is not module:
                setattr(sub, NODE_ATTR, identity)
                sub.onnx_context = self.context
        inputs = iter(mapping.inputs)
        env: dict = {}
        results = None
        for node in module.graph.nodes:
            if node.op == "placeholder":
                env[node] = self.value(next(inputs, ""), label)
            elif node.op == "output":
                results = fx.map_arg(node.args[0], lambda n: env[n])
            else:
                target = (
                    f"{mod_name}.{node.target}" if node.op in ("call_module", "get_attr") else node.target
                )
                args = fx.map_arg(node.args, lambda n: env[n])
                kwargs = fx.map_arg(node.kwargs, lambda n: env[n])
                env[node] = self.graph.create_node(node.op, target, args, kwargs)
        outs = mapping.outputs
        if len(outs) == 1:
            self.values[outs[0]] = results if isinstance(results, fx.Node) else results[0]
            return
        for k, out in enumerate(outs):
            if out:
                self.values[out] = self.graph.call_function(getitem, args=(results, k))

    # --------------------------------------------------------------------------- control flow
    def subgraph(self, onnx_node: OnnxNode, attr: str, label: str) -> _Graph:
        """The ``_Graph`` view of subgraph attribute ``attr`` of ``onnx_node``, Constants materialised."""
        proto = next((a.g for a in onnx_node.proto.attribute if a.name == attr and a.HasField("g")), None)
        if proto is None:
            raise ConversionError(f"{self.source}: {label} has no graph attribute {attr!r}")
        holder = onnx.ModelProto()
        holder.graph.CopyFrom(proto)
        where = f"{self.source}: the {attr} of {label}"
        _check_names(holder.graph, where)
        _check_tensors(holder.graph, where)
        materialize_constants(holder)
        nodes = _topological(holder.graph, where)
        return _Graph(holder.graph, nodes, where, parent=self.onnx_graph)

    def body(self, onnx_node: OnnxNode, attr: str, label: str) -> tuple[fx.GraphModule, list[str]]:
        """Subgraph ``attr`` of ``onnx_node`` as its own fx graph: ``(module, outer values it reads)``.

        The module takes the subgraph's inputs, then the outer values, and returns a tuple."""
        sub = self.subgraph(onnx_node, attr, label)
        reads = [v for n in sub.nodes.values() for v in (*n.input_values, *_subgraph_reads(n.proto))]
        reads += list(sub.output_values)
        captured = [v for v in dict.fromkeys(reads) if sub.is_outer(v)]
        inner = _Builder(
            sub, self.opsets, self.source, f" in the {attr} of {label}", captured=captured, shared=self.shared
        )
        for unique_name, node in sub.nodes.items():
            inner.add(unique_name, node)
        return inner.finish(as_tuple=True), captured

    def inline(self, unique_name: str, onnx_node: OnnxNode, attr: str, label: str) -> None:
        """Put the nodes of subgraph ``attr`` (a folded If's branch) into this graph."""
        sub = self.subgraph(onnx_node, attr, label)
        if len(sub.output_values) != len(onnx_node.output_values):
            raise ConversionError(
                f"{self.source}: the {attr} of {label} has {len(sub.output_values)} outputs, "
                f"the node {len(onnx_node.output_values)}"
            )
        saved = self.onnx_graph, self.values, self.context
        self.onnx_graph, self.values = sub, ChainMap({}, self.values)
        self.context = f" in the {attr} of {label}"
        self.scopes.append(sub)
        try:
            for name, node in sub.nodes.items():
                self.add(f"{unique_name}_{name}", node)
            outs = [self.value(v, label) for v in sub.output_values]
        finally:
            self.onnx_graph, self.values, self.context = saved
            self.scopes.pop()
        for name, fx_node in zip(onnx_node.output_values, outs, strict=True):
            if name:
                self.values[name] = fx_node

    def static_value(self, name: str):
        """The value of ``name`` when it can be computed at load time from initializers, Constants and
        known inputs (evaluated with onnx's reference evaluator), else None."""
        from onnx import helper, numpy_helper

        leaves: dict[str, onnx.TensorProto] = {}
        nodes: list[onnx.NodeProto] = []
        seen: set[str] = set()
        from_known: set[str] = set()  # values computed from a fixed input

        def visit(value: str) -> bool:
            if not value or value in seen:
                return True
            seen.add(value)
            for g in reversed(self.scopes):
                kind = OnnxGraph.value_type(g, value)
                if kind == ValueType.GRAPH_INITIALIZER:
                    leaves[value] = g.initializers[value].proto
                    return True
                if kind == ValueType.GRAPH_INPUT:
                    if g is self.scopes[0] and value in self.known:
                        leaves[value] = numpy_helper.from_array(np.asarray(self.known[value]), value)
                        from_known.add(value)
                        return True
                    return False
                if kind == ValueType.NODE_OUTPUT:
                    node = g.value_as_node_output(value)[0].proto
                    if len(nodes) > _MAX_FOLD_NODES or node.domain not in ("", "ai.onnx"):
                        return False
                    reads = list(node.input) + _subgraph_reads(node)
                    if not all(visit(v) for v in reads):
                        return False
                    if any(v in from_known for v in reads):
                        # a fixed input is given with batch 1 and repeated to each batch: its shape
                        # is not what the graph sees per call, so a condition on it cannot be folded
                        if node.op_type in ("Shape", "Size"):
                            return False
                        from_known.update(node.output)
                    if all(n is not node for n in nodes):
                        nodes.append(node)
                    return True
            return False

        if not visit(name):
            return None
        if name in leaves:
            return numpy_helper.to_array(leaves[name])
        try:
            from onnx.reference import ReferenceEvaluator

            opsets = [helper.make_opsetid(d, v) for d, v in self.opsets.items() if d not in ("ai.onnx",)]
            graph = helper.make_graph(
                nodes, "fold", [], [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)],
                initializer=list(leaves.values()),
            )  # fmt: skip
            model = helper.make_model(graph, opset_imports=opsets)
            return np.asarray(ReferenceEvaluator(model).run(None, {})[0])
        except Exception:  # noqa: BLE001 - not foldable: the If selects its branch per call instead
            return None

    def add_control(self, unique_name: str, onnx_node: OnnxNode, label: str) -> None:
        """If (folded when its condition is known at load time), Loop and Scan."""
        op = onnx_node.operation_type
        version = self.opsets.get(onnx_node.domain, 0)
        since = onnx.defs.get_schema(op, max_inclusive_version=version).since_version if version else 0
        inputs = onnx_node.input_values
        if op == "If":
            cond = self.static_value(inputs[0]) if inputs and inputs[0] else None
            if cond is not None:
                if cond.size != 1:
                    raise ConversionError(
                        f"{self.source}: {label}: its condition {inputs[0]!r} has {cond.size} values, not one"
                    )
                branch = "then_branch" if bool(cond.reshape(())) else "else_branch"
                self.inline(unique_name, onnx_node, branch, label)
                self.shared["folded"].append((onnx_node.name, op, branch))
                return
        try:
            control.check(onnx_node, since)
        except Exception as exc:  # noqa: BLE001 - unsupported version or attribute
            raise ConversionError(
                f"{self.source}: {label} could not be converted (opset {version}): {_first_line(exc)}"
            ) from None
        if op == "If":
            then_gm, then_outer = self.body(onnx_node, "then_branch", label)
            else_gm, else_outer = self.body(onnx_node, "else_branch", label)
            outer = list(dict.fromkeys(then_outer + else_outer))
            module = control.OnnxIf(
                then_gm, else_gm, [outer.index(v) for v in then_outer], [outer.index(v) for v in else_outer],
                len(onnx_node.output_values),
            )  # fmt: skip
        else:
            body, outer = self.body(onnx_node, "body", label)
            try:
                module = control.make(onnx_node, since, body, len(outer))
            except Exception as exc:  # noqa: BLE001 - attributes that do not fit the node
                raise ConversionError(
                    f"{self.source}: {label} could not be converted (opset {version}): {_first_line(exc)}"
                ) from None
        mapping = OnnxMapping(inputs=tuple(inputs), outputs=onnx_node.output_values)
        mod_name = self.attach(unique_name, onnx_node, module, mapping)
        args = [self.value(v, label) for v in inputs] + [self.value(v, label) for v in outer]
        fx_node = self.graph.call_module(mod_name, args=tuple(args))
        for k, out in enumerate(onnx_node.output_values):
            if out:
                self.values[out] = self.graph.call_function(getitem, args=(fx_node, k))

    def finish(self, as_tuple: bool = False) -> fx.GraphModule:
        results = []
        for name in self.onnx_graph.output_values:
            if name not in self.values and self.onnx_graph.value_type(name) == ValueType.GRAPH_INITIALIZER:
                self.initializer(name, "a graph output")
            if name not in self.values:
                raise ConversionError(
                    f"{self.source}: graph output {name!r}{self.context} is not computed by any node"
                )
            results.append(self.values[name])
        if not results:
            raise ConversionError(f"{self.source}: the graph{self.context} has no outputs")
        self.graph.output(tuple(results) if as_tuple or len(results) > 1 else results[0])
        try:
            gm = fx.GraphModule(self.root, self.graph)
            gm.graph.eliminate_dead_code()  # unused getitem of multi-output nodes
            gm.graph.lint()
            gm.recompile()
        except Exception as exc:  # noqa: BLE001 - fx refuses the assembled graph
            raise ConversionError(
                f"{self.source}: the torch graph{self.context} cannot be assembled: {_first_line(exc)}"
            ) from None
        gm.onnx_folded = list(self.shared["folded"])
        return gm.eval()  # onnx2torch hands modules back in training mode


def to_fx(model: onnx.ModelProto, source: str = "model", known: dict | None = None) -> fx.GraphModule:
    """Convert a prepared, shape-inferred ONNX model to a ``torch.fx.GraphModule`` in eval mode.

    Parameters
    ----------
    model : onnx.ModelProto
        The model, with external data loaded. Edited in place: initializers are removed from the graph
        inputs.
    source : str
        How to name the model in error messages (usually its path).
    known : dict, optional
        Graph input name -> array fixed for every call (the fixed inputs of a multi-input model). They
        stay inputs of the graph; an ``If`` whose condition they (with initializers and Constants)
        determine is folded to its branch at load time.

    Returns
    -------
    torch.fx.GraphModule
        ``onnx_folded`` lists the folded ``If`` nodes as ``(name, op_type, branch)``; ``onnx_producers``
        maps every tensor name to the name of the node computing it.

    Raises
    ------
    ConversionError
        A node has no converter, its converter failed, an attribute or tensor cannot be read, a value
        has two producers, or the graph has a cycle; the message names the node and op (and, inside
        a subgraph, the If/Loop/Scan node holding it).
    """
    init_names = {t.name for t in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in init_names]
    del model.graph.input[:]
    model.graph.input.extend(graph_inputs)

    _check_names(model.graph, source)
    _check_tensors(model.graph, source)
    nodes = _topological(model.graph, source)
    opsets = {o.domain: o.version for o in model.opset_import}
    opsets.setdefault("ai.onnx", opsets.get("", 0))
    builder = _Builder(_Graph(model.graph, nodes, source), opsets, source, known=known)
    for unique_name, onnx_node in builder.onnx_graph.nodes.items():
        builder.add(unique_name, onnx_node)
    gm = builder.finish()
    gm.onnx_producers = {o: n.name for n in model.graph.node for o in n.output if o}  # tensor -> node name
    return gm
