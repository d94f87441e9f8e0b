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
  node where a converted graph fails at run time.
"""

from __future__ import annotations

import heapq
import inspect
from collections import OrderedDict
from operator import getitem

import onnx
import torch
from onnx2torch.node_converters import get_converter
from onnx2torch.onnx_graph import OnnxGraph, ValueType
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.onnx_tensor import OnnxTensor
from torch import fx, nn

from ..errors import ConversionError, node_label
from . import ops  # noqa: F401  (registers our converters)
from .prepare import tensor_problem

__all__ = ["NODE_ATTR", "failing_node", "onnx_nodes", "to_fx"]

NODE_ATTR = "onnx_node"  # (name, op_type, domain) of the ONNX node a module came from


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
    cannot collide, and attributes that cannot be read reported by node."""

    def __init__(self, graph: onnx.GraphProto, nodes: list[onnx.NodeProto], source: str):
        self._proto = graph
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
        self._initializers = {t.name: OnnxTensor(t) for t in graph.initializer}
        self._node_output_values = {
            out: (node, i) for node in self._nodes.values() for i, out in enumerate(node.output_values)
        }
        self._value_info = {v.name: v for v in graph.value_info}
        for v in list(graph.input) + list(graph.output):
            self._value_info[v.name] = v


# ------------------------------------------------------------------------------- building the fx graph
class _Builder:
    """The fx graph under construction: one call_module per ONNX node, initializers as buffers."""

    def __init__(self, onnx_graph: _Graph, opsets: dict[str, int], source: str):
        self.onnx_graph = onnx_graph
        self.opsets = opsets
        self.source = source
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.inits = _Initializers()
        self.root.add_module("initializers", self.inits)
        self.values: dict[str, fx.Node] = {}  # ONNX value name -> fx node producing it
        self.n_buffers = 0
        for i, name in enumerate(onnx_graph.input_values, 1):
            self.values[name] = self.graph.placeholder(f"input_{i}")

    def module_name(self, unique_name: str) -> str:
        """A submodule name from the node's unique name: no dots, not taken, not an attribute of
        ``nn.Module`` (a node called ``forward`` or ``initializers``)."""
        base = unique_name.replace(".", "_") or "node"
        name, k = base, 0
        while hasattr(self.root, name):
            k += 1
            name = f"{base}_{k}"
        return name

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
                f"{self.source}: {label} could not be converted: {_first_line(exc)}"
            ) from None

    def initializer(self, value: str, label: str) -> fx.Node:
        """The get_attr node of initializer ``value``, registered as a buffer on first use."""
        if value not in self.values:
            try:
                tensor = self.onnx_graph.initializers[value].to_torch()
            except Exception as exc:  # noqa: BLE001 - a payload numpy or torch cannot read
                raise ConversionError(
                    f"{self.source}: initializer {value!r} read by {label} cannot be loaded: {_first_line(exc)}"
                ) from None
            buf = f"onnx_initializer_{self.n_buffers}"
            self.n_buffers += 1
            self.inits.register_buffer(buf, tensor)
            self.values[value] = self.graph.get_attr(f"initializers.{buf}")
        return self.values[value]

    def arguments(self, module: nn.Module, inputs, label: str) -> tuple[tuple, dict]:
        """The call's positional and keyword arguments for the ONNX inputs ``inputs`` of a node."""
        args: list = []
        for value in inputs:
            kind = self.onnx_graph.value_type(value)
            if kind in (ValueType.GRAPH_INPUT, ValueType.NODE_OUTPUT) and value in self.values:
                args.append(self.values[value])
            elif kind == ValueType.GRAPH_INITIALIZER:
                args.append(self.initializer(value, label))
            elif kind == ValueType.EMPTY:
                args.append(None)
            else:
                raise ConversionError(f"{self.source}: {label} reads {value!r}, which nothing produces")
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

    def add(self, unique_name: str, onnx_node: OnnxNode) -> None:
        """Convert one node and append its call (and the getitems of a multi-output node)."""
        label = node_label(onnx_node.name, onnx_node.operation_type, onnx_node.domain)
        module, mapping = self.convert(onnx_node, label)
        module.onnx_mapping = mapping
        setattr(module, NODE_ATTR, (onnx_node.name, onnx_node.operation_type, onnx_node.domain))
        mod_name = self.module_name(unique_name)
        self.root.add_module(mod_name, module)
        args, kwargs = self.arguments(module, mapping.inputs, label)
        fx_node = self.graph.call_module(mod_name, args=args, kwargs=kwargs)
        outs = onnx_node.output_values
        if len(outs) == 1:
            self.values[outs[0]] = fx_node
        else:
            for k, out in enumerate(outs):
                if out:
                    self.values[out] = self.graph.call_function(getitem, args=(fx_node, k))

    def finish(self) -> fx.GraphModule:
        results = []
        for name in self.onnx_graph.output_values:
            if name not in self.values and self.onnx_graph.value_type(name) == ValueType.GRAPH_INITIALIZER:
                self.initializer(name, "a graph output")
            if name not in self.values:
                raise ConversionError(f"{self.source}: graph output {name!r} is not computed by any node")
            results.append(self.values[name])
        if not results:
            raise ConversionError(f"{self.source}: the graph has no outputs")
        self.graph.output(results[0] if len(results) == 1 else tuple(results))
        try:
            gm = fx.GraphModule(self.root, self.graph)
            gm.graph.eliminate_dead_code()  # unused getitem of multi-output nodes
            gm.graph.lint()
            gm.recompile()
        except Exception as exc:  # noqa: BLE001 - fx refuses the assembled graph
            raise ConversionError(
                f"{self.source}: the torch graph cannot be assembled: {_first_line(exc)}"
            ) from None
        return gm.eval()  # onnx2torch hands modules back in training mode


def to_fx(model: onnx.ModelProto, source: str = "model") -> fx.GraphModule:
    """Convert a prepared, shape-inferred ONNX model to a ``torch.fx.GraphModule`` in eval mode.

    Parameters
    ----------
    model : onnx.ModelProto
        The model, with external data loaded. Edited in place: initializers are removed from the graph
        inputs.
    source : str
        How to name the model in error messages (usually its path).

    Raises
    ------
    ConversionError
        A node has no converter, its converter failed, an attribute or tensor cannot be read, a value
        has two producers, or the graph has a cycle; the message names the node and op.
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
    builder = _Builder(_Graph(model.graph, nodes, source), opsets, source)
    for unique_name, onnx_node in builder.onnx_graph.nodes.items():
        builder.add(unique_name, onnx_node)
    return builder.finish()


def onnx_nodes(module: torch.nn.Module) -> dict[str, tuple[str, str, str]]:
    """Map each submodule name of a converted graph to its ONNX node (name, op_type, domain)."""
    return {n: getattr(m, NODE_ATTR) for n, m in module.named_modules() if hasattr(m, NODE_ATTR)}


class _Locator(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.failed: str | None = None

    def call_module(self, target, args, kwargs):
        try:
            return super().call_module(target, args, kwargs)
        except Exception:
            if self.failed is None:
                name, op_type, domain = getattr(
                    self.module.get_submodule(target), NODE_ATTR, (target, "?", "")
                )
                self.failed = node_label(name, op_type, domain)
            raise


def failing_node(gm: fx.GraphModule, args) -> str | None:
    """Run ``gm`` on ``args`` once more, node by node, and name the ONNX node whose module raises
    (``"node '/l1/Add' (Add)"``); None when the run succeeds or fails outside a converted node.

    For error messages after a converted graph failed: ``ConvertedModel.graph_args(x)`` gives ``args``.
    """
    locator = _Locator(gm)
    try:
        with torch.no_grad():
            locator.run(*args)
    except Exception:  # noqa: BLE001 - the failure is what we are after
        return locator.failed
    return None
