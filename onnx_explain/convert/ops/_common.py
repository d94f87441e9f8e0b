"""Helpers shared by the converters."""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, onnx_mapping_from_node


def const(name: str, graph: OnnxGraph) -> torch.Tensor | None:
    """The value of an initializer input, or None when the input is computed (or absent)."""
    if not name or name not in graph.initializers:
        return None
    return graph.initializers[name].to_torch()


def result(module: torch.nn.Module, node: OnnxNode, inputs: tuple[str, ...] | None = None):
    """An ``OperationConverterResult`` with the node's inputs (or only ``inputs``) mapped to the module."""
    mapping = (
        onnx_mapping_from_node(node)
        if inputs is None
        else OnnxMapping(inputs=inputs, outputs=node.output_values)
    )
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping)


def unsupported(node: OnnxNode, what: str) -> NotImplementedError:
    """A NotImplementedError whose text names the unsupported feature (the driver adds the node)."""
    return NotImplementedError(f"{node.operation_type}: {what} is not supported")
