"""Control flow: ONNX ``If``, ``Loop`` and ``Scan`` as torch modules over converted subgraphs.

onnx2torch 1.5.15 converts none of them. Their subgraphs need the graph builder, so the driver
(:mod:`onnx_explain.convert.driver`) converts each branch or body to its own ``fx.GraphModule`` and hands
it to the modules here; a subgraph's reads of outer-scope values become extra arguments, passed after
the node's own inputs. Everything runs eagerly, so autograd flows through every iteration:

- ``If`` whose condition is computable at load time (initializers, Constants, fixed inputs) is not
  built here: the driver inlines the branch it takes (``GraphModule.onnx_folded`` lists it). Otherwise
  :class:`OnnxIf` runs the branch its condition selects on each call. The condition must be one value;
  a condition with one value per sample is accepted when every sample takes the same branch, and
  refused naming the node when they would not (the batch would need two graphs).
- ``Loop`` (:class:`OnnxLoop`): trip count ``M`` and/or condition (either may be omitted), loop-carried
  values, scan outputs stacked on a new first axis. A loop with neither ``M`` nor a condition that ever
  turns false runs forever, as in onnxruntime.
- ``Scan`` (:class:`OnnxScan`, opsets 9+): state variables and scan inputs sliced along
  ``scan_input_axes`` in ``scan_input_directions``; scan outputs stacked along ``scan_output_axes`` in
  ``scan_output_directions``. Scan-8 (a batch axis and ``sequence_lens``) is refused.

A failure inside a subgraph is reported by the node of the subgraph that failed
(``failed_inner``, read by :func:`onnx_explain.convert.nodes.failing_node`).
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ModelRunError, node_label
from ..nodes import failing_node

__all__ = ["OnnxIf", "OnnxLoop", "OnnxScan", "check", "make"]


def check(node, since: int) -> None:
    """Refuse an op version or attribute this module does not implement (NotImplementedError)."""
    if node.operation_type == "Scan" and since < 9:
        raise NotImplementedError("Scan-8 (batch axis and sequence_lens) is not supported; use opset 9+")


class _Control(nn.Module):
    """Shared parts: the node's label and the location of a failure inside a subgraph."""

    failed_inner: str | None = None

    def where(self) -> str:
        name, op_type, domain = getattr(self, "onnx_node", ("", type(self).__name__, ""))
        return node_label(name, op_type, domain) + getattr(self, "onnx_context", "")

    def run(self, body: nn.Module, args) -> tuple:
        try:
            return body(*args)
        except Exception:
            if self.failed_inner is None:
                self.failed_inner = failing_node(body, list(args))
            raise

    def flag(self, value: torch.Tensor, what: str) -> bool:
        """A boolean condition from a tensor that must hold one value (or the same value per sample)."""
        if value.numel() == 1:
            return bool(value.reshape(()))
        flat = value.reshape(-1).bool()
        if flat.numel() and bool((flat == flat[0]).all()):
            return bool(flat[0])
        raise ModelRunError(
            f"{self.where()}: its {what} has {value.numel()} values that differ "
            f"(samples of one batch would take different paths); run such inputs one at a time (batch_size=1)"
        )


class OnnxIf(_Control):
    """ONNX ``If`` selecting its branch per call.

    Parameters
    ----------
    then_branch, else_branch : torch.fx.GraphModule
        The converted branches; each returns a tuple and takes the outer values it reads.
    then_outer, else_outer : list of int
        Positions, among the outer values passed to :meth:`forward`, of each branch's arguments.
    n_outputs : int
    """

    def __init__(self, then_branch, else_branch, then_outer, else_outer, n_outputs: int):
        super().__init__()
        self.then_branch = then_branch
        self.else_branch = else_branch
        self.then_outer = list(then_outer)
        self.else_outer = list(else_outer)
        self.n_outputs = n_outputs

    def forward(self, cond: torch.Tensor, *outer):
        self.failed_inner = None
        if self.flag(cond, "condition"):
            return self.run(self.then_branch, [outer[k] for k in self.then_outer])
        return self.run(self.else_branch, [outer[k] for k in self.else_outer])


def _stack(items: list[torch.Tensor], axis: int = 0) -> torch.Tensor:
    if not items:  # zero iterations: ONNX gives an empty tensor whose other dims are unknown here
        return torch.zeros((0,))
    rank = items[0].dim() + 1
    return torch.stack(items, dim=axis % rank if axis < 0 else axis)


class OnnxLoop(_Control):
    """ONNX ``Loop``: ``forward(M, cond, *v_initial, *outer) -> (*v_final, *scan_outputs)``.

    Parameters
    ----------
    body : torch.fx.GraphModule
        ``(iteration_num, cond, *v, *outer) -> (cond, *v, *scan_values)``.
    n_carried : int
        Number of loop-carried values.
    """

    def __init__(self, body: nn.Module, n_carried: int):
        super().__init__()
        self.body = body
        self.n_carried = n_carried

    def forward(self, trip_count, cond, *rest):
        self.failed_inner = None
        n = self.n_carried
        carried, outer = list(rest[:n]), list(rest[n:])
        limit = None if trip_count is None else int(trip_count.reshape(-1)[0])
        keep = True if cond is None else self.flag(cond, "initial condition")
        scans: list[list[torch.Tensor]] | None = None
        i = 0
        while keep and (limit is None or i < limit):
            it = torch.tensor(i, dtype=torch.int64)
            c = torch.tensor(keep)
            outs = self.run(self.body, [it, c, *carried, *outer])
            keep = self.flag(outs[0], "loop condition")
            carried = list(outs[1 : 1 + n])
            if scans is None:
                scans = [[] for _ in outs[1 + n :]]
            for store, v in zip(scans, outs[1 + n :], strict=True):
                store.append(v)
            i += 1
        if scans is None:  # no iteration ran: the scan outputs' count is the body's
            scans = [[] for _ in range(self.n_scan)]
        return (*carried, *(_stack(s) for s in scans))


class OnnxScan(_Control):
    """ONNX ``Scan`` (opsets 9+): ``forward(*states, *scan_inputs, *outer) -> (*states, *scan_outputs)``.

    Parameters
    ----------
    body : torch.fx.GraphModule
        ``(*states, *slices, *outer) -> (*states, *scan_values)``.
    n_states, n_scan_inputs : int
    input_directions, input_axes : list of int
        Per scan input: 0 forward / 1 reverse; the axis it is sliced along.
    output_directions, output_axes : list of int
        Per scan output: 0 append / 1 prepend; the axis it is stacked along.
    """

    def __init__(
        self, body, n_states, n_scan_inputs, input_directions, input_axes, output_directions, output_axes
    ):
        super().__init__()
        self.body = body
        self.n_states = n_states
        self.n_scan_inputs = n_scan_inputs
        self.input_directions = list(input_directions)
        self.input_axes = list(input_axes)
        self.output_directions = list(output_directions)
        self.output_axes = list(output_axes)

    def forward(self, *args):
        self.failed_inner = None
        n, m = self.n_states, self.n_scan_inputs
        states, xs, outer = list(args[:n]), list(args[n : n + m]), list(args[n + m :])
        axes = [a % x.dim() for a, x in zip(self.input_axes, xs, strict=True)]
        lengths = {x.shape[a] for x, a in zip(xs, axes, strict=True)}
        if len(lengths) != 1:
            raise ModelRunError(f"{self.where()}: its scan inputs have different lengths {sorted(lengths)}")
        steps = lengths.pop()
        collected: list[list[torch.Tensor]] = []
        for t in range(steps):
            slices = [
                x.select(a, steps - 1 - t if d else t)
                for x, a, d in zip(xs, axes, self.input_directions, strict=True)
            ]
            outs = self.run(self.body, [*states, *slices, *outer])
            states = list(outs[:n])
            if not collected:
                collected = [[] for _ in outs[n:]]
            for store, v in zip(collected, outs[n:], strict=True):
                store.append(v)
        results = []
        for k, store in enumerate(collected):
            direction = self.output_directions[k] if k < len(self.output_directions) else 0
            axis = self.output_axes[k] if k < len(self.output_axes) else 0
            results.append(_stack(store[::-1] if direction else store, axis))
        return (*states, *results)


def make(node, since: int, body: nn.Module, n_outer: int) -> nn.Module:
    """The module for a Loop or Scan ``node`` (an ``OnnxNode``) with converted ``body``."""
    a = node.attributes
    body_outputs = len(body.graph.find_nodes(op="output")[0].args[0])
    if node.operation_type == "Loop":
        n_carried = len(node.input_values) - 2
        module = OnnxLoop(body, n_carried)
        module.n_scan = body_outputs - 1 - n_carried
        return module
    m = int(a["num_scan_inputs"])
    n = len(node.input_values) - m
    if n < 0:
        raise ValueError(f"Scan: num_scan_inputs={m} but the node has {len(node.input_values)} inputs")
    k = body_outputs - n
    return OnnxScan(
        body,
        n,
        m,
        a.get("scan_input_directions", [0] * m),
        a.get("scan_input_axes", [0] * m),
        a.get("scan_output_directions", [0] * k),
        a.get("scan_output_axes", [0] * k),
    )
