"""The torch module handed to the attribution methods: one input tensor in, the explained output out."""

from __future__ import annotations

import torch
from torch import fx, nn


def batch_first_output(out: torch.Tensor, axis: int) -> torch.Tensor:
    """A graph output with its batch axis ``axis`` moved first (``-1``, :data:`runtime.NEW_AXIS`: a batch-1
    graph that drops its batch axis gets one)."""
    if axis == -1:
        return out.unsqueeze(0)
    return out.movedim(axis, 0) if axis else out


def in_chunks(run, x: torch.Tensor, companions: dict | None, n: int | None) -> torch.Tensor:
    """``run(x, companions)`` on chunks of exactly ``n`` rows when the graph's batch is fixed at ``n`` (the
    last chunk padded by repeating its last row, the padding dropped from the output); gradients flow
    through the chunking unchanged. ``n`` None or equal to the batch: one call."""
    if not n or x.shape[0] == n:
        return run(x, companions)
    outs = []
    for start in range(0, x.shape[0], n):
        real = min(n, x.shape[0] - start)

        def pad(t, start=start, real=real):
            chunk = t[start : start + real]
            return chunk if real == n else torch.cat([chunk, chunk[-1:].expand(n - real, *chunk.shape[1:])])

        comp = {k: pad(v) for k, v in (companions or {}).items()}
        outs.append(run(pad(x), comp)[:real])
    return torch.cat(outs, dim=0)


class ConvertedModel(nn.Module):
    """Wrap the converted ``fx.GraphModule`` as ``f(x) -> explained output``.

    Parameters
    ----------
    graph : torch.fx.GraphModule
        The converted graph (``self.graph``; LRP canonizers work on it).
    position : int or None
        Position of the explained input among the graph's inputs (None: the graph ignores it).
    n_inputs : int
        Number of graph inputs.
    others : dict
        Position -> tensor (batch 1, repeated to the batch) for the other inputs.
    fixed_batch : int or None
        When the batch size is baked into the graph, inputs run in chunks of exactly this size (the last
        padded by repeating its last row); gradients flow through the chunking unchanged.
    """

    def __init__(
        self,
        graph: fx.GraphModule,
        position,
        n_inputs: int,
        others: dict,
        fixed_batch=None,
        names=None,
        batch_axes: dict | None = None,
        unused=(),
    ):
        super().__init__()
        #: inputs the output does not read: their placeholders get None
        self.unused = frozenset(unused)
        #: input name -> its batch axis where it is not 0 (None: no batch axis); companions arrive batch-first
        self.batch_axes = dict(batch_axes or {})
        self.graph = graph
        self.position = position
        self.n_inputs = n_inputs
        self.fixed_batch = fixed_batch
        for k, v in others.items():
            self.register_buffer(f"other_{k}", v)
        self._others = sorted(others)
        #: input name -> graph position (companion inputs are given by name)
        self.positions = {name: i for i, name in enumerate(names or [])}

    @property
    def other_positions(self) -> list[int]:
        """Positions of the graph inputs that hold fixed values (not the explained input)."""
        return list(self._others)

    def other_value(self, position: int, rows: int | None = None) -> torch.Tensor:
        """The fixed value at graph input ``position``; one holding a single sample on its batch axis is
        repeated to ``rows`` rows there when given."""
        v = getattr(self, f"other_{position}")
        name = next((n for n, i in self.positions.items() if i == position), None)
        axis = self.batch_axes.get(name, 0)
        if rows is None or axis is None or v.dim() <= axis or v.shape[axis] != 1:
            return v
        shape = list(v.shape)
        shape[axis] = rows
        return v.expand(*shape)

    def graph_args(self, x: torch.Tensor, rows: int | None = None, companions: dict | None = None) -> list:
        """The positional arguments of :attr:`graph` for the explained input ``x``: ``x`` at its position,
        ``companions`` (per-row values of other inputs, by name) at theirs, the fixed inputs repeated to
        ``rows`` rows (default: ``x``'s batch)."""
        rows = x.shape[0] if rows is None else rows
        args = [None] * self.n_inputs
        if self.position is not None:
            args[self.position] = x
        for k in self._others:
            args[k] = self.other_value(k, rows)
        for name, value in (companions or {}).items():
            if name in self.positions:  # an input the explained output does not depend on is not in the graph
                axis = self.batch_axes.get(name, 0)
                args[self.positions[name]] = (
                    value[0] if axis is None else value.movedim(0, axis) if axis else value
                )
        missing = [
            name
            for name, i in self.positions.items()
            if args[i] is None and i != self.position and name not in self.unused
        ]
        if missing:
            from ..errors import InputDataError

            raise InputDataError(f"input {missing[0]!r} needs a value per sample (pass it with the inputs)")
        return args

    #: the graph output's batch axis (1 for a time-major ``(T, B, C)`` output): moved to the front
    out_axis: int = 0

    def _run(self, x: torch.Tensor, companions: dict | None = None) -> torch.Tensor:
        return batch_first_output(self.graph(*self.graph_args(x, companions=companions)), self.out_axis)

    def forward(self, x: torch.Tensor, companions: dict | None = None) -> torch.Tensor:
        return in_chunks(self._run, x, companions, self.fixed_batch)
