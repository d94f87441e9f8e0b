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

__all__ = ["METHODS", "Draws", "Explanation", "MethodSpec", "RuntimeScorer", "Scorer", "register_method"]


class Scorer:
    """``f`` of a torch module for the rows a method builds, evaluated in chunks of ``batch_size`` rows.

    A method never sees classes or companion inputs. It receives ``target`` as *keys*: a long tensor
    with one entry per explained unit (a sample, or a (sample, class) pair of a ``top:K`` target), and
    copies a unit's key to every row it builds from that unit (noisy copies, integration steps ...).
    The scorer maps a row's key to what is explained (the class whose score is ``f``) and to the
    companion inputs of the row's sample (an attention mask, token type ids ...), so every row runs
    with its own sample's companions.

    Parameters
    ----------
    module : torch.nn.Module
        Maps a batch ``(R, *S)`` to scores ``(R, C)`` (or ``(R, ...)``, flattened to ``(R, C)``). With
        companions it is called as ``module(x, companions)``, ``companions`` a dict of per-row tensors.
    batch_size : int
        Rows per forward/backward pass: peak memory depends on it, results do not.
    layout : {'NCHW', 'NHWC', 'NHW'}, optional
        The image layout of the module's input (:func:`onnx_explain.signature.image_layout`); None for
        a tensor that is not an image.
    classes : tensor, optional
        The class of each unit ``(U,)`` (keys index it); default: keys are classes (a plain module used
        directly, as in the tests of the methods).
    samples : tensor, optional
        The sample of each unit ``(U,)`` (keys index it); default: the unit itself.
    companions : dict of str to tensor, optional
        Per-sample values ``(B, ...)`` of the module's other inputs.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        batch_size: int = 64,
        layout: str | None = None,
        classes: torch.Tensor | None = None,
        samples: torch.Tensor | None = None,
        companions: dict | None = None,
        target=None,
    ):
        if batch_size < 1:
            raise OptionError("batch_size must be at least 1")
        self.module = module
        self.batch_size = int(batch_size)
        self.layout = layout
        self.channel_axis = channel_axis(layout)  # where per-channel values (baselines, bounds) go
        self.target = target  # a resolved target (onnx_explain.targets.Resolved): keys are its units
        self._classes = target.index if target is not None else classes
        self._samples = target.samples if target is not None else samples
        self.companions = dict(companions or {})
        self.out_shape: tuple | None = None  # one output row's shape, seen on the first pass
        # classes still -1 are the predicted ones, read from the first output of their row (reads_inputs)
        self.predict_on_pass = False

    # ------------------------------------------------------------------ keys
    def classes(self, keys: torch.Tensor) -> torch.Tensor:
        """The explained element of each row with ``keys``: its flat index in the flattened output row
        (the class of a classifier)."""
        if self.target is not None and self._classes is None:
            from ..errors import OnnxExplainError

            raise OnnxExplainError(
                f"this method needs one output element per explained scalar; the {self.target.kind} target "
                f"{self.target.info.get('target', '')!s} is not one (use a gradient method)"
            )
        return keys if self._classes is None else self._classes[keys]

    def samples(self, keys: torch.Tensor) -> torch.Tensor:
        """The sample each row with ``keys`` belongs to."""
        return keys if self._samples is None else self._samples[keys]

    def companion_rows(self, keys: torch.Tensor | None) -> dict:
        """The companion inputs of the rows with ``keys`` (the sample's own values, row by row)."""
        if not self.companions:
            return {}
        if keys is None:
            raise OptionError("rows with companion inputs need their keys (the sample each row comes from)")
        owner = self.samples(keys)
        return {name: v[owner] for name, v in self.companions.items()}

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """The module's scores ``(R, C)`` for rows ``x`` (one chunk; no chunking, gradients flow)."""
        comp = self.companion_rows(keys)
        out = self.module(x, comp) if comp else self.module(x)
        self.out_shape = tuple(out.shape[1:])
        return out.reshape(out.shape[0], -1)

    _out = forward

    def select(self, out: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """``f`` of every row: its unit's scalar of ``out`` ``(R, F)`` (the flattened output rows)."""
        if self.target is not None and self._classes is None:
            return self.target.select(out.reshape(out.shape[0], *self.out_shape), keys)
        if self.predict_on_pass:
            todo = self._classes[keys] < 0
            if bool(todo.any()):  # the row is the explained input: its arg-max is the predicted class
                self._classes[keys[todo]] = out.detach().reshape(len(out), -1)[todo].argmax(1)
        return out.gather(1, self.classes(keys).reshape(-1, 1)).squeeze(1)

    # ------------------------------------------------------------------ passes
    @torch.no_grad()
    def scores(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """All scores ``(R, C)`` of rows ``x`` (with their ``keys`` when there are companions), chunked."""
        n = self.batch_size
        return torch.cat(
            [
                self.forward(x[i : i + n], None if keys is None else keys[i : i + n])
                for i in range(0, len(x), n)
            ]
        )

    @torch.no_grad()
    def score(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """``f`` of every row ``(R,)``, chunked."""
        n = self.batch_size
        return torch.cat(
            [
                self.select(self.forward(x[i : i + n], keys[i : i + n]), keys[i : i + n])
                for i in range(0, len(x), n)
            ]
        )

    def grad_chunk(self, x: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(∂f/∂x, f(x)) for one chunk of rows, in one forward and one backward pass."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            sel = self.select(self.forward(x, keys), keys)
            if not sel.requires_grad:  # the explained output does not depend on the explained input at all
                from ..errors import InputSpecError

                raise InputSpecError(
                    "the explained output does not depend on the explained input (its gradient is not "
                    "defined): explain another input (--input-name) or output (--output-name)"
                )
            (grad,) = torch.autograd.grad(sel.sum(), x, allow_unused=True)
        return (torch.zeros_like(x) if grad is None else grad.detach()), sel.detach()

    def map_rows(
        self,
        n_rows: int,
        make_rows: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
        consume: Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], None],
    ) -> None:
        """Stream ``n_rows`` rows through the gradient in chunks of ``batch_size``.

        ``make_rows(start, stop)`` builds the inputs and keys of rows ``[start, stop)`` (so the rows,
        noise included, never all exist at once); ``consume(start, stop, rows, grad, score)`` folds the
        chunk's results into the caller's accumulators.
        """
        for start in range(0, n_rows, self.batch_size):
            stop = min(n_rows, start + self.batch_size)
            rows, keys = make_rows(start, stop)
            grad, score = self.grad_chunk(rows, keys)
            consume(start, stop, rows, grad, score)


class RuntimeScorer(Scorer):
    """The scorer of the black-box methods: onnxruntime on the file itself (one cached session), no
    torch graph and no gradient. Same keys as :class:`Scorer`; rows are cast to the input's dtype, so
    token ids stay integers. The methods' side of the one row runner,
    :meth:`onnx_explain.runtime.Runner.run` (the metrics' side is
    :class:`onnx_explain.metrics.base.Predictor`): a row's key names its sample.

    Parameters
    ----------
    model : Model
    batch_size : int
        Rows per onnxruntime call.
    layout : str, optional
    space : {'logit', 'output'}
        The output space scored.
    classes, samples : tensor, optional
        As for :class:`Scorer`.
    companions : dict of str to numpy.ndarray, optional
        Per-sample values ``(B, ...)`` of the other inputs.
    """

    def __init__(self, model, batch_size=64, layout=None, space="logit", classes=None, samples=None,
                 companions=None, target=None):  # fmt: skip
        super().__init__(None, batch_size, layout, classes, samples, None, target)
        self.model = model
        self.name = model.space_name(space)
        self.dtype = np.dtype(model.input.dtype)
        self.companions = {k: np.asarray(v) for k, v in (companions or {}).items()}
        self.calls = 0  # onnxruntime calls made

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        rows = x.detach().cpu().numpy().astype(self.dtype, copy=False)
        owner = None
        if self.companions:
            if keys is None:
                raise OptionError(
                    "rows with companion inputs need their keys (the sample each row comes from)"
                )
            owner = self.samples(keys).cpu().numpy()
        self.calls += 1
        out = self.model.runtime.run(self.name, rows, len(rows), self.companions, owner)
        self.out_shape = tuple(out.shape[1:])
        return torch.from_numpy(np.ascontiguousarray(out.reshape(len(out), -1))).to(x.device)

    _out = forward

    def grad_chunk(self, x, keys):
        from ..errors import OnnxExplainError

        raise OnnxExplainError("a black-box method asked for a gradient: onnxruntime gives none")


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
    layout: str | None = None  # the input's image layout ('NCHW', 'NHWC', 'NHW'), for drawing
    #: each sample's real tokens when the input was text (:func:`onnx_explain.explain_text`): the notebook
    #: view and :meth:`plot` label the scores with them
    tokens: list | None = None

    def heatmap(self, index: int = 0, k: int = 0, sign: str | None = None, aggregate: str = "sum",
                percentile: float = 99.0) -> np.ndarray:  # fmt: skip
        """Sample ``index``'s map (class ``k`` of a ``top:K`` result) as the command line draws it: 2-D in
        [-1, 1] (signed) or [0, 1] (``sign='abs'``; default: the method's own), channels aggregated and
        outliers capped at ``percentile`` (:func:`onnx_explain.heatmap.heat_map`)."""
        from ..heatmap import heat_map

        a = np.asarray(self.attribution[index])
        if _is_top_k(self):
            a = a[k]
        sign = sign or (METHODS[self.method].sign if self.method in METHODS else "signed")
        return heat_map(a, self.layout, aggregate, sign, percentile)

    def plot(self, x=None, index: int = 0, sign: str | None = None, ax=None):
        """Draw sample ``index`` with matplotlib: the input (when ``x``, the explained batch, is given) and
        its heatmap in the command line's colours, or bars for a 1-D attribution (tokens, table columns).

        Returns
        -------
        matplotlib.figure.Figure
        """
        import matplotlib.pyplot as plt

        from ..heatmap import CMAPS, RANGES, display_image, plot_shapes, target_shapes

        sign = sign or (METHODS[self.method].sign if self.method in METHODS else "signed")
        a = np.asarray(self.attribution[index])
        title = f"{self.method}, target {np.asarray(self.target[index]).tolist()}"
        if _is_top_k(self):
            a = a[0]
        if a.ndim == 1:
            names = self._token_names(index, len(a))
            a = a[: len(names)] if names is not None else a
            fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(max(4, 0.3 * len(a)), 2.5))
            ax.bar(np.arange(len(a)), a, color=np.where(a >= 0, "#d62728", "#1f77b4"))
            if names is not None:
                ax.set_xticks(np.arange(len(a)), names, rotation=60, fontsize=8)
            ax.set_title(title)
            return fig
        h = self.heatmap(index, sign=sign)
        panels = 2 if x is not None else 1
        if ax is None:
            fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.2), squeeze=False)
            axes = list(axes[0])
        else:
            fig, axes = ax.figure, [ax] * panels
        if x is not None:
            img = display_image(np.asarray(x[index] if isinstance(x, np.ndarray) else x), self.layout)
            axes[0].imshow(img, cmap="gray" if img.ndim == 2 else None)
            axes[0].set_axis_off()
        lo, hi = RANGES[sign]
        im = axes[-1].imshow(h, cmap=CMAPS[sign], vmin=lo, vmax=hi)
        plot_shapes(axes[-1], target_shapes(self.extras, index))  # a box target's boxes, a mask's outline
        axes[-1].set_title(title, fontsize=9)
        axes[-1].set_axis_off()
        fig.colorbar(im, ax=axes[-1], fraction=0.046)
        return fig

    def _token_names(self, index: int, n: int) -> list[str] | None:
        """Sample ``index``'s real tokens (padding left out), or None when the input was not text."""
        if self.tokens is None:
            return None
        return [str(t) for t in self.tokens[index]][:n]

    def _repr_html_(self, max_items: int = 8) -> str:
        """A notebook view: per sample its target, score and heatmap (PNG), or coloured values for 1-D
        attributions."""
        import base64
        import html

        from ..heatmap import colorize, draw_shapes, png_bytes, target_shapes

        sign = METHODS[self.method].sign if self.method in METHODS else "signed"
        cells = []
        for b in range(min(len(self.attribution), max_items)):
            a = np.asarray(self.attribution[b])
            if _is_top_k(self):
                a = a[0]
            head = f"<small>{html.escape(str(np.asarray(self.target[b]).tolist()))}: {np.asarray(self.score[b]).round(4).tolist()}</small>"
            if a.ndim >= 2:
                h = self.heatmap(b, sign=sign)
                k = max(1, 128 // max(h.shape))
                tile = np.kron(colorize(h, sign), np.ones((k, k, 1), np.uint8))
                png = base64.b64encode(
                    png_bytes(draw_shapes(tile, target_shapes(self.extras, b), k))
                ).decode()
                cells.append(f"<td>{head}<br><img src='data:image/png;base64,{png}'></td>")
            else:
                names = self._token_names(b, len(a))
                if names is None:
                    names = [str(i) for i in range(len(a))]
                a = a[: len(names)]
                top = float(np.abs(a).max()) or 1.0
                spans = "".join(
                    f"<span title='{v:.4g}' style='background:rgba({255 if v > 0 else 0},0,{0 if v > 0 else 255},"
                    f"{abs(v) / top:.3f});padding:0 4px'>{html.escape(t)}</span>"
                    for t, v in zip(names, a, strict=False)
                )
                cells.append(f"<td>{head}<br>{spans}</td>")
        more = (
            f"<p>… {len(self.attribution) - max_items} more</p>" if len(self.attribution) > max_items else ""
        )
        return (f"<div><b>{html.escape(self.method)}</b> {html.escape(str(self.attribution.shape))}"
                f"<table><tr>{''.join(cells)}</tr></table>{more}</div>")  # fmt: skip


def _is_top_k(e: Explanation) -> bool:
    """A ``top:K`` result: ``(B, K, *S)`` attributions with ``(B, K)`` classes."""
    t = np.asarray(e.target)
    kind = e.extras.get("target_kind", "class")
    return (
        kind == "class" and t.ndim == 2 and np.ndim(e.attribution) > 2 and e.attribution.shape[:2] == t.shape
    )


SIGNS = ("signed", "abs")
MODALITIES = ("image", "table", "tokens")
#: the output spaces a method explains: the logits before a final Softmax/LogSoftmax, or the output as is
OUTPUTS = ("logit", "output")
#: how a noise scale ``sigma`` is read (SmoothGrad, SmoothTaylor)
NOISES = ("relative", "absolute")
#: what a method runs on: the converted torch graph, or onnxruntime on the file (black-box methods)
BACKENDS = ("torch", "onnxruntime")
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
        one-line description (the CLI's help). ``target`` holds the keys of the explained units (see
        :class:`Scorer`).
    stochastic : bool
        Draws random numbers (seeded by ``seed``). Its draws must not depend on the batch (:class:`Draws`):
        a sample's result is the one it gets alone, so batch runs group items for every method.
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
    backend : {'torch', 'onnxruntime'}
        What it runs on: the converted torch graph (gradients, LRP), or onnxruntime on the file itself
        (black-box methods: a :class:`RuntimeScorer`; they work where the graph does not convert).
    reads_inputs : bool
        Its rows are the explained inputs themselves, each scored once (gradient, gradient × input): a
        predicted class is then read from that pass's own output instead of a separate forward pass.
    estimator : str, optional
        The estimator it reads out of the graph (``'trees'``, ``'linear'``): it applies to such graphs
        only, and is never offered for others.
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
    backend: str = "torch"
    reads_inputs: bool = False
    estimator: str | None = None

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

    ``x`` is a float tensor ``(B, *S)`` in the model's layout, ``target`` a long tensor ``(B,)`` of keys
    (:class:`Scorer`: copy a row's key with it; ``scorer.classes(keys)`` gives classes); the attribution
    has x's shape. ``facts`` are the other :class:`MethodSpec` fields (``sign``, ``output``,
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
        if spec.backend not in BACKENDS:
            raise ValueError(f"method {name!r}: backend must be one of {BACKENDS}")
        METHODS[name] = spec
        return fn

    return deco


def runtime_methods(exact: str | None = None) -> list[str]:
    """The registered methods that run on onnxruntime alone (they work where the graph does not convert);
    those that read an estimator from the graph (:attr:`MethodSpec.estimator`) only when it is ``exact``
    (the method :func:`onnx_explain.tabular.exact_method` found for the model)."""
    return [
        name
        for name, spec in METHODS.items()
        if spec.backend == "onnxruntime" and (spec.estimator is None or name == exact)
    ]


def make_generator(seed, device="cpu") -> torch.Generator:
    """A torch Generator from a seed, a Generator (returned as is) or None (seed 0: reproducible by default)."""
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator(device=device)
    g.manual_seed(0 if seed is None else int(seed))
    return g


class Draws:
    """Standard normal draws indexed by copy: the ``j``-th noisy copy (or root) of *every* sample gets the
    ``j``-th draw, made from the call's generator alone.

    A sample's result then depends on nothing but itself and the seed — not on ``batch_size``, not on
    which samples share its batch, not on where it sits in the batch — so explaining a batch equals
    explaining each sample alone (batch runs may group stochastic methods), and a sample re-explained
    inside a metric's stack of perturbed copies gets the noise it got first.
    """

    def __init__(self, generator: torch.Generator, shape, dtype, device):
        self.base = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        self.shape, self.dtype, self.device = tuple(shape), dtype, device
        self._g = torch.Generator(device=device)

    def draw(self, j: int) -> torch.Tensor:
        """The ``j``-th draw."""
        self._g.manual_seed((self.base + 0x9E3779B97F4A7C15 * (int(j) + 1)) % 2**63)
        return torch.randn(self.shape, generator=self._g, dtype=self.dtype, device=self.device)

    def rows(self, copies: torch.Tensor) -> torch.Tensor:
        """The draws of copy indices ``copies`` ``(R,)``, stacked ``(R, *shape)``."""
        return torch.stack([self.draw(j) for j in copies.tolist()])


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
