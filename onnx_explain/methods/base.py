"""What every attribution method stands on: the scorer (batched forward and gradient of f_c), the
registry, randomness, and the result type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import OptionError

__all__ = ["METHODS", "Explanation", "Scorer", "register_method"]


class Scorer:
    """``f_c`` of a torch module, evaluated in chunks of ``batch_size`` rows.

    Parameters
    ----------
    module : torch.nn.Module
        Maps a batch ``(B, *S)`` to scores ``(B, C)`` (or ``(B, ...)``, flattened to ``(B, C)``).
    batch_size : int
        Rows per forward/backward pass: peak memory depends on it, results do not.
    """

    def __init__(self, module: torch.nn.Module, batch_size: int = 64):
        if batch_size < 1:
            raise OptionError("batch_size must be at least 1")
        self.module = module
        self.batch_size = int(batch_size)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        return out.reshape(out.shape[0], -1)

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """All scores ``(B, C)``, chunked."""
        return torch.cat([self._out(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)])

    def grad_chunk(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(∂f_c/∂x, f_c(x)) for one chunk, in one forward and one backward pass."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            sel = self._out(x).gather(1, target.reshape(-1, 1)).squeeze(1)
            (grad,) = torch.autograd.grad(sel.sum(), x)
        return grad.detach(), sel.detach()

    def map_rows(
        self,
        n_rows: int,
        make_rows: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
        consume: Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], None],
    ) -> None:
        """Stream ``n_rows`` rows through the gradient in chunks of ``batch_size``.

        ``make_rows(start, stop)`` builds the inputs and targets of rows ``[start, stop)`` (so the rows,
        noise included, never all exist at once); ``consume(start, stop, rows, grad, score)`` folds the
        chunk's results into the caller's accumulators.
        """
        for start in range(0, n_rows, self.batch_size):
            stop = min(n_rows, start + self.batch_size)
            rows, targets = make_rows(start, stop)
            grad, score = self.grad_chunk(rows, targets)
            consume(start, stop, rows, grad, score)


@dataclass
class Explanation:
    """The result of :func:`onnx_explain.explain`.

    Attributes
    ----------
    attribution : numpy.ndarray
        float32, exactly the shape of ``x`` (``(B, K, *S)`` for a ``top:K`` target).
    target : numpy.ndarray
        The explained class per sample (``(B,)``, or ``(B, K)``).
    score : numpy.ndarray
        ``f_c(x)`` in the explained output space.
    method : str
    options : dict
        The options the method ran with (defaults filled in).
    extras : dict
        What the method reports besides (``delta`` for IG, ``sigma`` for SmoothGrad/SmoothTaylor, the full
        embedding-space attribution for integer inputs ...).
    """

    attribution: np.ndarray
    target: np.ndarray
    score: np.ndarray
    method: str
    options: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: Callable
    description: str
    stochastic: bool


#: name -> MethodSpec; the CLI's --method choices come from here
METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, description: str, stochastic: bool = False) -> Callable:
    """Register ``fn(scorer, x, target, generator, **options) -> (attribution, extras)`` under ``name``.

    ``x`` is a float tensor ``(B, *S)``, ``target`` a long tensor ``(B,)``; the attribution has x's shape.
    """

    def deco(fn: Callable) -> Callable:
        if name in METHODS:
            raise ValueError(f"attribution method {name!r} is registered twice")
        METHODS[name] = MethodSpec(name, fn, description, stochastic)
        return fn

    return deco


def make_generator(seed, device="cpu") -> torch.Generator:
    """A torch Generator from a seed, a Generator (returned as is) or None (seed 0: reproducible by default)."""
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator(device=device)
    g.manual_seed(0 if seed is None else int(seed))
    return g


def draw_rows(generator: torch.Generator, n: int, shape, dtype, device) -> torch.Tensor:
    """``n`` standard normal rows of ``shape``, drawn one row at a time.

    Row ``r`` is the ``r``-th draw of the generator, so a chunk of rows gets the same values whatever the
    chunk size: results do not depend on ``batch_size``.
    """
    return torch.stack(
        [torch.randn(shape, generator=generator, dtype=dtype, device=device) for _ in range(n)]
    )


def per_sample_sigma(x: torch.Tensor, sigma: float, noise: str) -> torch.Tensor:
    """Noise scale per sample: ``sigma`` itself (``'absolute'``) or ``sigma · (max − min)`` of each
    sample over all its non-batch dims (``'relative'``)."""
    if noise == "absolute":
        return torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)
    if noise == "relative":
        flat = x.reshape(x.shape[0], -1)
        return sigma * (flat.amax(1) - flat.amin(1))
    raise OptionError(f"noise must be 'absolute' or 'relative', not {noise!r}")


def expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-row vector to broadcast against ``like`` ``(R, *S)``."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def explicit_rows(rows, x: torch.Tensor, n: int, what: str) -> tuple[torch.Tensor | None, int]:
    """Explicit per-sample rows (noise, roots) given as ``(B, N, *S)`` or sample-major ``(B·N, *S)``:
    returns them flattened and N; without rows, ``(None, n)``."""
    if rows is None:
        if int(n) < 1:
            raise OptionError(f"the number of {what} must be at least 1")
        return None, int(n)
    B, S = x.shape[0], x.shape[1:]
    rows = torch.as_tensor(rows, dtype=x.dtype, device=x.device).reshape(-1, *S)
    if rows.shape[0] % B or rows.shape[0] == 0:
        raise OptionError(f"{what} of {rows.shape[0]} rows do not split over {B} samples")
    return rows, rows.shape[0] // B
