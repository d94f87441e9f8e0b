"""The ONNX node behind each module of a converted graph: :data:`NODE_ATTR` (set by the driver on every
module it makes), :func:`onnx_nodes` and :func:`failing_node`.

This sits below both the driver (:mod:`.driver`) and the converters (:mod:`.ops`): the control-flow
modules name the node of their subgraph that failed with :func:`failing_node`, and the driver imports the
converters.
"""

from __future__ import annotations

import torch
from torch import fx

from ..errors import node_label

__all__ = ["NODE_ATTR", "failing_node", "onnx_nodes"]

NODE_ATTR = "onnx_node"  # (name, op_type, domain) of the ONNX node a module came from


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
                module = self.module.get_submodule(target)
                name, op_type, domain = getattr(module, NODE_ATTR, (target, "?", ""))
                # a control-flow module names the node of its subgraph that failed
                inner = getattr(module, "failed_inner", None)
                self.failed = inner or node_label(name, op_type, domain) + getattr(module, "onnx_context", "")
            raise


def failing_node(gm: fx.GraphModule, args) -> str | None:
    """Run ``gm`` on ``args`` once more, node by node, and name the ONNX node whose module raises
    (``"node '/l1/Add' (Add)"``; inside an If/Loop/Scan, the subgraph's node and where it sits);
    None when the run succeeds or fails outside a converted node.

    For error messages after a converted graph failed: ``ConvertedModel.graph_args(x)`` gives ``args``.
    """
    locator = _Locator(gm)
    try:
        with torch.no_grad():
            locator.run(*args)
    except Exception:  # noqa: BLE001 - the failure is what we are after
        return locator.failed
    return None
