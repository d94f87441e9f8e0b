"""The evaluation engine: a batched score function on onnxruntime, named baselines, orderings, the
metric registry. Every metric is a stateless function that stacks all its perturbed inputs and streams
them through the model in chunks of ``batch_size`` (memory follows the batch size, not the steps).

Metrics see images channel-first, ``(B, C, H, W)``, whatever the model's layout:
:func:`onnx_explain.evaluate` moves NHWC and NHW batches to that view, and the :class:`Predictor` moves
every perturbed batch back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .. import baselines
from ..errors import OptionError
from ..layout import from_channels_first
from ..options import accepted_options, check_options, option_defaults

__all__ = ["METRICS", "Predictor", "defined_scores", "make_baseline", "rank", "register_metric"]


#: the score spaces of :class:`Predictor`
OUTPUTS = ("logit", "prob", "output")


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Predictor:
    """``F(X) -> scores (N, C)`` in an explicit output space, run in chunks.

    The metrics' side of the one onnxruntime row runner, :meth:`onnx_explain.runtime.Runner.run` (the
    methods' side is :class:`onnx_explain.methods.base.RuntimeScorer`): the metrics build their rows
    sample-major, so a row's sample follows from its position, where a method's row carries a key.

    Parameters
    ----------
    model : Model or callable
        An :class:`onnx_explain.Model` (onnxruntime, one cached session) or any ``f(ndarray) -> ndarray``.
    output : {'logit', 'prob', 'output'}
        ``logit``: before a final Softmax/LogSoftmax (the output itself when there is none); ``prob``: the
        softmax of the logits; ``output``: what the model returns.
    batch_size : int
        Rows per model call.
    layout : {'NCHW', 'NHWC', 'NHW'}, optional
        The model's image layout when the metrics hand it channel-first rows (:mod:`onnx_explain.layout`):
        every row is moved back to it before the call. None: rows go to the model as they are.
    companions : dict of str to numpy.ndarray, optional
        Per-sample values ``(B, ...)`` of the model's other inputs (an attention mask ...). Rows are
        sample-major — a call on ``B·n`` rows holds n rows of each sample in turn, as every metric builds
        them — so row ``r`` runs with sample ``r // n``'s values. Only the explained input is perturbed.
    """

    def __init__(
        self,
        model,
        output: str = "logit",
        batch_size: int = 64,
        layout: str | None = None,
        companions: dict | None = None,
    ):
        if output not in OUTPUTS:
            raise OptionError(f"output must be one of {', '.join(map(repr, OUTPUTS))}, not {output!r}")
        self.model = model
        if output == "prob" and _ends_in_sigmoid(model):
            output = "output"  # the model's own sigmoid is the probability (a softmax of one logit is 1)
        self.output = output
        self.batch_size = int(batch_size)
        self.layout = layout
        self.companions = dict(companions or {})
        #: a resolved target that is not one output element (onnx_explain.targets): each row's output is
        #: then its sample's scalar, one column (set by onnx_explain.evaluate)
        self.scalar = None
        self.calls = 0  # number of model calls made (each on up to batch_size rows)

    def _owner(self, n_rows: int) -> int:
        """Rows per sample of a sample-major call on ``n_rows`` rows."""
        B = len(next(iter(self.companions.values()))) if self.companions else len(self.scalar.samples)
        if n_rows % B:
            raise OptionError(
                f"{n_rows} rows do not split over the {B} samples whose companion inputs they need"
            )
        return n_rows // B

    def _raw(self, x: np.ndarray, start: int = 0, per: int = 1) -> np.ndarray:
        out = self._model_out(x, start, per)
        if self.scalar is None:
            return out
        import torch

        units = torch.as_tensor(np.arange(start, start + len(x)) // per)
        rows = torch.from_numpy(np.ascontiguousarray(out)).reshape(len(x), *self.scalar.out_shape)
        return self.scalar.select(rows, units).detach().numpy().reshape(-1, 1)

    def _model_out(self, x: np.ndarray, start: int = 0, per: int = 1) -> np.ndarray:
        from ..model import Model

        self.calls += 1
        x = from_channels_first(x, self.layout)
        if isinstance(self.model, Model):
            space = "output" if self.output == "output" else "logit"
            if self.companions:  # batch-first companions (split_inputs), each row with its sample's
                owner = np.arange(start, start + len(x)) // per
                xv = self.model.validate_input(x)
                return self.model.runtime.run(
                    self.model.space_name(space), xv, len(xv), self.companions, owner
                )
            return self.model.predict(x, batch_size=len(x), space=space)
        return np.asarray(self.model(x))

    def rows(self, x: np.ndarray) -> np.ndarray:
        """The model's output rows for ``x`` (the metrics' channel-first view), batch first and in the
        output's own shape (not flattened, no softmax: the logits for ``output='prob'``), ``batch_size``
        rows per run."""
        return np.concatenate(
            [self._model_out(x[i : i + self.batch_size], i, 1) for i in range(0, len(x), self.batch_size)]
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        per = self._owner(len(x)) if self.companions or self.scalar is not None else 1
        out = np.concatenate(
            [self._raw(x[i : i + self.batch_size], i, per) for i in range(0, len(x), self.batch_size)]
        )
        out = out.reshape(len(x), -1).astype(np.float64)
        return softmax(out) if self.output == "prob" else out

    def stream(
        self, n_rows: int, make_rows: Callable[[int, int], np.ndarray]
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(start, stop, scores)`` for rows built chunk by chunk by ``make_rows(start, stop)``."""
        per = self._owner(n_rows) if self.companions or self.scalar is not None else 1
        for start in range(0, n_rows, self.batch_size):
            stop = min(n_rows, start + self.batch_size)
            out = self._raw(make_rows(start, stop), start, per).reshape(stop - start, -1).astype(np.float64)
            yield start, stop, softmax(out) if self.output == "prob" else out

    def target_scores(self, n_rows: int, make_rows, targets: np.ndarray) -> np.ndarray:
        """f_c of every row, where ``targets[r]`` is row r's class."""
        out = np.empty(n_rows)
        for a, b, s in self.stream(n_rows, make_rows):
            out[a:b] = s[np.arange(b - a), targets[a:b]]
        return out


def make_baseline(x: np.ndarray, baseline, rng: np.random.Generator | None = None) -> np.ndarray:
    """Replacement values of x's shape for a named baseline (:mod:`onnx_explain.baselines`; x is in the
    metrics' channel-first view, so per-channel values go along axis 1)."""
    return baselines.make_baseline(x, baseline, rng, channel_axis=1)


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


#: the inputs every metric function takes before its options
_INPUTS = ("predictor", "x", "a", "target", "rng")
_EVALUATE_ARGS = ("explainer", "seed")
MODALITIES = ("image", "table", "tokens")


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric and the facts :func:`onnx_explain.evaluate`, the batch runs, the audit and
    the CLI read from it (none of them names a metric).

    Attributes
    ----------
    name, fn, description
        The registry key, ``fn(predictor, x, a, target, rng, **options) -> dict`` and a one-line
        description (the CLI's help).
    score : str
        The key of the per-sample summary in the result.
    higher_is_better : bool or callable
        The direction, or ``f(options) -> bool`` when an option decides it (MoRF vs LeRF).
    needs_explainer : bool
        It re-explains perturbed inputs (``explainer=``).
    needs_model : bool
        It runs the model (False: it reads the attributions, or re-explains through its explainer only).
    output : {'logit', 'prob', 'output'}
        Its default score space (RISE's deletion and insertion score probabilities).
    modalities : tuple of {'image', 'table', 'tokens'}
        The inputs it is defined for.
    stochastic : bool
        Its default settings draw random numbers (seeded by ``seed``).
    cost : str
        Model calls per sample, in words (``'n_steps forward'``).
    overview : tuple of modalities
        The inputs for which it belongs to a quick overview (the audit's default metrics).
    input_options : tuple of str
        Options whose arrays are laid out like the input (explicit baselines, perturbations): given in
        the model's layout, moved to the channel-first view with the input.
    """

    name: str
    fn: Callable
    description: str
    score: str
    higher_is_better: bool | Callable[[dict], bool]
    needs_explainer: bool = False
    needs_model: bool = True
    output: str = "logit"
    modalities: tuple[str, ...] = ("image", "table")
    stochastic: bool = False
    cost: str = "forward"
    overview: tuple[str, ...] = ()
    input_options: tuple[str, ...] = ()

    def better(self, options: dict) -> bool:
        return self.higher_is_better(options) if callable(self.higher_is_better) else self.higher_is_better

    @property
    def options(self) -> list[str]:
        """Its option names, in signature order (``explainer`` and ``seed`` are arguments of
        :func:`onnx_explain.evaluate`, not options)."""
        return [k for k in accepted_options(self.fn, _INPUTS)[0] if k not in _EVALUATE_ARGS]

    @property
    def takes_seed(self) -> bool:
        return "seed" in accepted_options(self.fn, _INPUTS)[0]

    def defaults(self) -> dict:
        return {k: v for k, v in option_defaults(self.fn, _INPUTS).items() if k not in _EVALUATE_ARGS}

    def check_options(self, given: dict) -> dict:
        """``given``, checked: a key it does not take raises
        :class:`~onnx_explain.options.UnknownOptionError`."""
        check_options(given, self.options, f"metric {self.name!r}")
        return dict(given)


#: name -> MetricSpec; the CLI's --metric choices come from here
METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, description: str, score: str, higher_is_better, needs_explainer: bool = False,
                    **facts):  # fmt: skip
    """Register a metric ``fn(predictor, x, a, target, rng, **options) -> dict`` under ``name``.

    ``x`` and a full-shape ``a`` reach it channel-first (``(B, C, H, W)`` for every image layout);
    ``facts`` are the other :class:`MetricSpec` fields. Rows handed to the predictor or the explainer are
    sample-major (all rows of sample 0, then of sample 1 ..., the same number each), so that each runs with
    its own sample's companion inputs.
    """

    def deco(fn):
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        spec = MetricSpec(name, fn, description, score, higher_is_better, needs_explainer, **facts)
        if spec.output not in OUTPUTS:
            raise ValueError(f"metric {name!r}: output must be one of {OUTPUTS}")
        if not set(spec.modalities) <= set(MODALITIES) or not set(spec.overview) <= set(spec.modalities):
            raise ValueError(f"metric {name!r}: modalities and overview must be among {MODALITIES}")
        METRICS[name] = spec
        return fn

    return deco


def defined_scores(r: dict) -> dict:
    """A metric result's scores as written to reports: ``per_item`` floats with None for an undefined
    score (JSON has no NaN), ``mean`` over the defined ones (None when there is none) and, when some are
    undefined, ``undefined``: the metric's own reason or a count."""
    scores = np.asarray(r["scores"], dtype=np.float64).reshape(-1)
    ok = np.isfinite(scores)
    out = {
        "mean": float(scores[ok].mean()) if ok.any() else None,
        "per_item": [float(v) if k else None for v, k in zip(scores, ok, strict=True)],
    }
    if not ok.all():
        out["undefined"] = r.get("undefined") or f"{int((~ok).sum())} of {len(scores)} item(s) have no score"
    return out


def trapezoid(y: np.ndarray, dx: float) -> np.ndarray:
    """Trapezoid rule along the last axis."""
    return (y[..., 1:] + y[..., :-1]).sum(-1) * dx / 2


def _ends_in_sigmoid(model) -> bool:
    """True for an onnx_explain Model whose explained output is a Sigmoid's (its logit is that input)."""
    sig = getattr(model, "signature", None)
    if sig is None or sig.logit_name is None:
        return False
    node = next((n for n in model.proto.graph.node if sig.output.name in n.output), None)
    return node is not None and node.op_type == "Sigmoid"
