"""What every attribution method stands on: the scorer (batched forward and gradient of f_c), the
registry, randomness, and the result type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import OptionError
from ..layout import channel_axis
from ..options import accepted_options, check_options, option_defaults

__all__ = ["METHODS", "Explanation", "MethodSpec", "Scorer", "register_method"]


class Scorer:
    """``f_c`` of a torch module, evaluated in chunks of ``batch_size`` rows.

    Parameters
    ----------
    module : torch.nn.Module
        Maps a batch ``(B, *S)`` to scores ``(B, C)`` (or ``(B, ...)``, flattened to ``(B, C)``).
    batch_size : int
        Rows per forward/backward pass: peak memory depends on it, results do not.
    layout : {'NCHW', 'NHWC', 'NHW'}, optional
        The image layout of the module's input (:func:`onnx_explain.signature.image_layout`); None for
        a tensor that is not an image.
    """

    def __init__(self, module: torch.nn.Module, batch_size: int = 64, layout: str | None = None):
        if batch_size < 1:
            raise OptionError("batch_size must be at least 1")
        self.module = module
        self.batch_size = int(batch_size)
        self.layout = layout
        self.channel_axis = channel_axis(layout)  # where per-channel values (baselines, bounds) go

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


SIGNS = ("signed", "abs")
MODALITIES = ("image", "table", "tokens")
#: the output spaces a method explains: the logits before a final Softmax/LogSoftmax, or the output as is
OUTPUTS = ("logit", "output")
#: how a noise scale ``sigma`` is read (SmoothGrad, SmoothTaylor)
NOISES = ("relative", "absolute")
#: the inputs every method function takes before its options
_INPUTS = ("scorer", "x", "target", "generator")


@dataclass(frozen=True)
class MethodSpec:
    """A registered attribution method and the facts the API, the batch runs, the audit and the CLI
    read from it (none of them names a method).

    Attributes
    ----------
    name, fn, description
        The registry key, ``fn(scorer, x, target, generator, **options) -> (attribution, extras)`` and a
        one-line description (the CLI's help).
    stochastic : bool
        Draws random numbers (seeded by ``seed``): batch runs explain one item per call, so every item's
        result is the one it gets alone.
    sign : {'signed', 'abs'}
        How its heatmaps show it by default: a diverging map of signed values, or magnitudes.
    output : {'logit', 'output'}
        The output space it explains by default.
    modalities : tuple of {'image', 'table', 'tokens'}
        The inputs it is meant for (image batches, feature rows, integer token ids).
    cost : str
        Model passes per explained sample, in words (``'n_samples × forward+backward'``).
    delegate : str, optional
        The option naming another method whose options this one also takes (SmoothGrad's ``base``).
    overview : dict, optional
        Settings for a quick comparison of methods (the audit's default); None: not part of it.
    """

    name: str
    fn: Callable
    description: str
    stochastic: bool = False
    sign: str = "signed"
    output: str = "logit"
    modalities: tuple[str, ...] = MODALITIES
    cost: str = "forward+backward"
    delegate: str | None = None
    overview: dict | None = None

    @property
    def options(self) -> list[str]:
        """Its own option names, in signature order."""
        return accepted_options(self.fn, _INPUTS)[0]

    def defaults(self) -> dict:
        """Its own options that have a default, with it."""
        return option_defaults(self.fn, _INPUTS)

    def accepted(self, given: dict | None = None) -> list[str] | None:
        """Every option key it takes with ``given`` (a delegate's own options included); None when any key
        goes (a ``**kwargs`` function without a delegate, or a delegate that is not a method)."""
        names, open_ = accepted_options(self.fn, _INPUTS)
        if self.delegate is None:
            return None if open_ else names
        base = (given or {}).get(self.delegate, self.defaults().get(self.delegate))
        if not isinstance(base, str) or base not in METHODS or base == self.name:
            return None  # the method itself reports the bad delegate
        more = METHODS[base].accepted()
        return None if more is None else names + [k for k in more if k not in names]

    def check_options(self, given: dict) -> dict:
        """``given`` checked (an unknown key raises :class:`~onnx_explain.options.UnknownOptionError`),
        with the defaults of the options not given filled in."""
        accepted = self.accepted(given)
        if accepted is not None:
            check_options(given, accepted, f"method {self.name!r}")
        return {**self.defaults(), **given}


#: name -> MethodSpec; the CLI's --method choices come from here
METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, description: str, stochastic: bool = False, **facts) -> Callable:
    """Register ``fn(scorer, x, target, generator, **options) -> (attribution, extras)`` under ``name``.

    ``x`` is a float tensor ``(B, *S)`` in the model's layout, ``target`` a long tensor ``(B,)``; the
    attribution has x's shape. ``facts`` are the other :class:`MethodSpec` fields (``sign``, ``output``,
    ``modalities``, ``cost``, ``delegate``, ``overview``).
    """

    def deco(fn: Callable) -> Callable:
        if name in METHODS:
            raise ValueError(f"attribution method {name!r} is registered twice")
        spec = MethodSpec(name, fn, description, stochastic, **facts)
        if spec.sign not in SIGNS or spec.output not in OUTPUTS:
            raise ValueError(f"method {name!r}: sign must be one of {SIGNS}, output one of {OUTPUTS}")
        if not set(spec.modalities) <= set(MODALITIES):
            raise ValueError(f"method {name!r}: modalities must be among {MODALITIES}")
        METHODS[name] = spec
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
