"""The torch module handed to the attribution methods: one input tensor in, the explained output out."""

from __future__ import annotations

import torch
from torch import fx, nn


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
        self, graph: fx.GraphModule, position, n_inputs: int, others: dict, fixed_batch=None, names=None
    ):
        super().__init__()
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
        """The fixed value at graph input ``position``; a batch-1 value repeated to ``rows`` rows when given."""
        v = getattr(self, f"other_{position}")
        return v.expand(rows, *v.shape[1:]) if rows is not None and v.shape[:1] == (1,) else v

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
                args[self.positions[name]] = value
        missing = [name for name, i in self.positions.items() if args[i] is None and i != self.position]
        if missing:
            from ..errors import InputDataError

            raise InputDataError(f"input {missing[0]!r} needs a value per sample (pass it with the inputs)")
        return args

    #: the graph output's batch axis (1 for a time-major ``(T, B, C)`` output): moved to the front
    out_axis: int = 0

    def _run(self, x: torch.Tensor, companions: dict | None = None) -> torch.Tensor:
        out = self.graph(*self.graph_args(x, companions=companions))
        return out.movedim(self.out_axis, 0) if self.out_axis else out

    def forward(self, x: torch.Tensor, companions: dict | None = None) -> torch.Tensor:
        n = self.fixed_batch
        if not n or x.shape[0] == n:
            return self._run(x, companions)
        outs = []
        for start in range(0, x.shape[0], n):
            real = min(n, x.shape[0] - start)

            def pad(t, start=start, real=real):
                chunk = t[start : start + real]
                return (
                    chunk if real == n else torch.cat([chunk, chunk[-1:].expand(n - real, *chunk.shape[1:])])
                )

            comp = {k: pad(v) for k, v in (companions or {}).items()}
            outs.append(self._run(pad(x), comp)[:real])
        return torch.cat(outs, dim=0)
