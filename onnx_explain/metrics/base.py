"""The evaluation engine: a batched score function on onnxruntime, named baselines, orderings, the
metric registry. Every metric is a stateless function that stacks all its perturbed inputs and streams
them through the model in chunks of ``batch_size`` (memory follows the batch size, not the steps)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import OptionError

__all__ = ["METRICS", "Predictor", "make_baseline", "rank", "register_metric"]


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Predictor:
    """``F(X) -> scores (N, C)`` in an explicit output space, run in chunks.

    Parameters
    ----------
    model : Model or callable
        An :class:`onnx_explain.Model` (onnxruntime, one cached session) or any ``f(ndarray) -> ndarray``.
    output : {'logit', 'prob', 'output'}
        ``logit``: before a final Softmax/LogSoftmax (the output itself when there is none); ``prob``: the
        softmax of the logits; ``output``: what the model returns.
    batch_size : int
        Rows per model call.
    """

    def __init__(self, model, output: str = "logit", batch_size: int = 64):
        if output not in ("logit", "prob", "output"):
            raise OptionError(f"output must be 'logit', 'prob' or 'output', not {output!r}")
        self.model = model
        self.output = output
        self.batch_size = int(batch_size)
        self.calls = 0  # number of model calls made (each on up to batch_size rows)

    def _raw(self, x: np.ndarray) -> np.ndarray:
        from ..model import Model

        self.calls += 1
        if isinstance(self.model, Model):
            space = "output" if self.output == "output" else "logit"
            return self.model.predict(x, batch_size=len(x), space=space)
        return np.asarray(self.model(x))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = np.concatenate(
            [self._raw(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        )
        out = out.reshape(len(x), -1).astype(np.float64)
        return softmax(out) if self.output == "prob" else out

    def stream(
        self, n_rows: int, make_rows: Callable[[int, int], np.ndarray]
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(start, stop, scores)`` for rows built chunk by chunk by ``make_rows(start, stop)``."""
        for start in range(0, n_rows, self.batch_size):
            stop = min(n_rows, start + self.batch_size)
            out = self._raw(make_rows(start, stop)).reshape(stop - start, -1).astype(np.float64)
            yield start, stop, softmax(out) if self.output == "prob" else out

    def target_scores(self, n_rows: int, make_rows, targets: np.ndarray) -> np.ndarray:
        """f_c of every row, where ``targets[r]`` is row r's class."""
        out = np.empty(n_rows)
        for a, b, s in self.stream(n_rows, make_rows):
            out[a:b] = s[np.arange(b - a), targets[a:b]]
        return out


def make_baseline(x: np.ndarray, baseline, rng: np.random.Generator | None = None) -> np.ndarray:
    """Replacement values of x's shape for a named baseline (docs/methods.md §1.5).

    ``'zero'``; a number; per-channel values (length C); an array; ``'uniform'`` (U[0, 1) per element, or
    ``('uniform', low, high)``); ``'blur'`` (RISE's 11x11, σ=5 Gaussian, zero padding); ``'quantus_black'``,
    ``'quantus_white'``, ``'quantus_mean'`` (min/max/mean of each sample: for the *current* array in the
    Quantus-compatible curves, see :func:`quantus_fill`).
    """
    if baseline is None or (isinstance(baseline, str) and baseline == "zero"):
        return np.zeros_like(x)
    if isinstance(baseline, (int, float, np.floating)):
        return np.full_like(x, float(baseline))
    if (isinstance(baseline, str) and baseline == "uniform") or (
        isinstance(baseline, tuple) and baseline[:1] == ("uniform",)
    ):
        low, high = (baseline[1], baseline[2]) if isinstance(baseline, tuple) else (0.0, 1.0)
        rng = rng or np.random.default_rng(0)
        return rng.uniform(low, high, size=x.shape).astype(x.dtype)
    if isinstance(baseline, str) and baseline == "blur":
        import torch

        from ..methods.integrated_gradients import blur

        return blur(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))).numpy().astype(x.dtype)
    if isinstance(baseline, str) and baseline.startswith("quantus_"):
        flat = x.reshape(len(x), -1)
        fn = {"quantus_black": np.min, "quantus_white": np.max, "quantus_mean": np.mean}[baseline]
        return (
            np.broadcast_to(fn(flat, axis=1).reshape(-1, *([1] * (x.ndim - 1))), x.shape)
            .astype(x.dtype)
            .copy()
        )
    if isinstance(baseline, str):
        raise OptionError(f"unknown baseline {baseline!r}")
    b = np.asarray(baseline, dtype=x.dtype)
    if b.ndim == 1 and x.ndim > 2 and b.shape[0] == x.shape[1]:
        b = b.reshape(1, -1, *([1] * (x.ndim - 2)))
    return np.broadcast_to(b, x.shape).copy()


def rank(importance: np.ndarray, order: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """Per-row permutation of the columns: ``morf`` (descending), ``lerf`` (ascending), ``random``.

    Sorting is stable: ties go to the lower flat index first (for LeRF too).
    """
    if order == "morf":
        return np.argsort(-importance, axis=1, kind="stable")
    if order == "lerf":
        return np.argsort(importance, axis=1, kind="stable")
    if order == "random":
        rng = rng or np.random.default_rng(0)
        return np.stack([rng.permutation(importance.shape[1]) for _ in range(len(importance))])
    raise OptionError(f"order must be 'morf', 'lerf' or 'random', not {order!r}")


AGGREGATORS = {
    "sum": lambda a: a.sum(1),
    "sum_abs": lambda a: np.abs(a).sum(1),
    "mean": lambda a: a.mean(1),
    "mean_abs": lambda a: np.abs(a).mean(1),
    "max_abs": lambda a: np.abs(a).max(1),
    "l2": lambda a: np.sqrt((a * a).sum(1)),
}


def channel_map(a: np.ndarray, x_shape: tuple, agg: str = "sum") -> np.ndarray:
    """An attribution of ``(B, C, *spatial)``, ``(B, 1, *spatial)`` or ``(B, *spatial)`` reduced to
    ``(B, *spatial)`` by ``agg`` over channels (docs/methods.md §1.3)."""
    a = np.asarray(a, dtype=np.float64)
    if a.shape == tuple(x_shape):
        return AGGREGATORS[agg](a)
    if a.ndim == len(x_shape) and a.shape[1] == 1:
        return a[:, 0]
    if a.shape == (x_shape[0], *x_shape[2:]):
        return a
    raise OptionError(f"attribution of shape {a.shape} does not fit the input {tuple(x_shape)}")


def full_attribution(a: np.ndarray, x_shape: tuple) -> np.ndarray:
    """The attribution broadcast to x's shape (as Quantus does for fewer channels)."""
    a = np.asarray(a, dtype=np.float64)
    if a.shape == tuple(x_shape):
        return a
    if a.ndim == len(x_shape) - 1:
        a = a[:, None]
    return np.broadcast_to(a, x_shape)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    fn: Callable
    description: str
    score: str  # the key of the per-sample summary
    higher_is_better: bool | Callable[[dict], bool]
    needs_explainer: bool = False

    def better(self, options: dict) -> bool:
        return self.higher_is_better(options) if callable(self.higher_is_better) else self.higher_is_better


METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, description: str, score: str, higher_is_better, needs_explainer: bool = False):
    """Register a metric ``fn(predictor, x, a, target, rng, **options) -> dict`` under ``name``."""

    def deco(fn):
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        METRICS[name] = MetricSpec(name, fn, description, score, higher_is_better, needs_explainer)
        return fn

    return deco


def trapezoid(y: np.ndarray, dx: float) -> np.ndarray:
    """Trapezoid rule along the last axis."""
    return (y[..., 1:] + y[..., :-1]).sum(-1) * dx / 2
