"""Build the torch.fx graph from an ONNX graph with onnx2torch's converters.

This is onnx2torch's ``convert`` loop with the fixes that cannot live in a converter:

- a graph output taken from one output of a multi-output node returns that output, not the tuple;
- module names are made from ONNX node names with every dot replaced, so dotted custom domains
  (``ai.onnx.ml``, ``com.microsoft``) no longer crash ``add_module``;
- no shape inference here (the caller did it without serialising the model, which fails over 2 GB);
- every failure names the ONNX node and op type;
- each torch module keeps its ONNX node (``onnx_mapping``, and :data:`NODE_ATTR` with name, op type,
  domain), so later errors and LRP rule overrides can name ONNX nodes.
"""

from __future__ import annotations

import inspect
from operator import getitem

import onnx
import torch
from onnx2torch.node_converters import get_converter
from onnx2torch.onnx_graph import OnnxGraph, ValueType
from torch import fx, nn

from ..errors import ConversionError, node_label
from . import ops  # noqa: F401  (registers our converters)

NODE_ATTR = "onnx_node"  # (name, op_type, domain) of the ONNX node a module came from


class _Initializers(nn.Module):
    """Holds the graph's initializers as buffers."""

    def forward(self, *args, **kwargs):  # pragma: no cover - never called
        raise RuntimeError("the initializer container is not callable")


def _module_name(unique_name: str) -> str:
    return unique_name.replace(".", "_") or "node"


def to_fx(model: onnx.ModelProto, source: str = "model") -> fx.GraphModule:
    """Convert a prepared, shape-inferred ONNX model to a ``torch.fx.GraphModule`` in eval mode.

    Parameters
    ----------
    model : onnx.ModelProto
        The model, with external data loaded and initializers not listed as graph inputs.
    source : str
        How to name the model in error messages (usually its path).

    Raises
    ------
    ConversionError
        A node has no converter, or its converter failed; the message names the node and op.
    """
    init_names = {t.name for t in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in init_names]
    del model.graph.input[:]
    model.graph.input.extend(graph_inputs)

    opsets = {o.domain: o.version for o in model.opset_import}
    opsets.setdefault("ai.onnx", opsets.get("", 0))
    onnx_graph = OnnxGraph(model.graph)
    graph = fx.Graph()
    root = nn.Module()
    inits = _Initializers()
    root.add_module("initializers", inits)
    values: dict[str, fx.Node] = {}  # ONNX value name -> fx node producing it
    module_nodes: dict[str, fx.Node] = {}

    for i, name in enumerate(onnx_graph.input_values, 1):
        values[name] = graph.placeholder(f"input_{i}")

    n_buffers = 0
    for unique_name, onnx_node in onnx_graph.nodes.items():
        label = node_label(onnx_node.name, onnx_node.operation_type, onnx_node.domain)
        domain = onnx_node.domain if onnx_node.domain != "ai.onnx" else ""
        version = opsets.get(onnx_node.domain)
        if version is None:
            raise ConversionError(
                f"{source}: {label} uses domain {onnx_node.domain!r}, not in the opset imports"
            )
        try:
            convert = get_converter(domain=domain, operation_type=onnx_node.operation_type, version=version)
        except NotImplementedError:
            raise ConversionError(
                f"{source}: {label} has no torch converter at opset {version} "
                f"(onnx-explain: see onnx_explain/convert/ops to add one)"
            ) from None
        try:
            module, mapping = convert(onnx_node, onnx_graph)
        except Exception as exc:  # noqa: BLE001 - any converter failure becomes one clear line
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConversionError(f"{source}: {label} could not be converted: {msg}") from None
        module.onnx_mapping = mapping
        setattr(module, NODE_ATTR, (onnx_node.name, onnx_node.operation_type, onnx_node.domain))
        mod_name = _module_name(unique_name)
        root.add_module(mod_name, module)

        args: list = []
        for value in mapping.inputs:
            kind = onnx_graph.value_type(value)
            if kind in (ValueType.GRAPH_INPUT, ValueType.NODE_OUTPUT):
                args.append(values[value])
            elif kind == ValueType.GRAPH_INITIALIZER:
                if value not in values:
                    buf = f"onnx_initializer_{n_buffers}"
                    n_buffers += 1
                    inits.register_buffer(buf, onnx_graph.initializers[value].to_torch())
                    values[value] = graph.get_attr(f"initializers.{buf}")
                args.append(values[value])
            elif kind == ValueType.EMPTY:
                args.append(None)
            else:
                raise ConversionError(f"{source}: {label} reads {value!r}, which nothing produces")

        kwargs = {}
        if None in args:  # skipped optional inputs become keyword arguments, as in onnx2torch
            first = args.index(None)
            names = tuple(inspect.signature(module.forward).parameters)[first : len(args)]
            kwargs = {k: v for k, v in zip(names, args[first:], strict=False) if v is not None}
            args = args[:first]
        fx_node = graph.call_module(mod_name, args=tuple(args), kwargs=kwargs)
        module_nodes[unique_name] = fx_node
        outs = onnx_node.output_values
        if len(outs) == 1:
            values[outs[0]] = fx_node
        else:
            for k, out in enumerate(outs):
                if out:
                    values[out] = graph.call_function(getitem, args=(fx_node, k))

    results = []
    for name in onnx_graph.output_values:
        if name not in values:
            raise ConversionError(f"{source}: graph output {name!r} is not computed by any node")
        results.append(values[name])
    graph.output(results[0] if len(results) == 1 else tuple(results))
    gm = fx.GraphModule(root, graph)
    gm.graph.eliminate_dead_code()  # unused getitem of multi-output nodes
    gm.graph.lint()
    gm.recompile()
    gm.eval()  # onnx2torch hands modules back in training mode
    return gm


def onnx_nodes(module: torch.nn.Module) -> dict[str, tuple[str, str, str]]:
    """Map each submodule name of a converted graph to its ONNX node (name, op_type, domain)."""
    return {n: getattr(m, NODE_ATTR) for n, m in module.named_modules() if hasattr(m, NODE_ATTR)}
