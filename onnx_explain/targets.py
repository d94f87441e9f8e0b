"""What is explained: the scalar ``t_b`` of each sample's output (docs/methods.md §1.6).

A target is resolved once per call against the explained output's shape ``(B, *O)`` into *units* — one
per explained scalar (a sample, or a (sample, class) pair of ``top:K``) — and a way to read each unit's
scalar from an output row:

- an element of the output: its flat index in the flattened ``O`` (a class of a ``(B, C)`` classifier, or
  ``(position, class)`` of a tagger's ``(B, L, C)``) — every method and metric reads it the same way;
- a weighted sum over the output (``('all', class)``: class c summed over every position);
- a callable of the output rows.

An output with more than one non-trivial axis has no "predicted class" and no flat class index: a
target that names only a class there is refused (the former flat arg-max over a detector's
``(1, 22, 2100)`` output explained its largest box coordinate). Kinds are registered in :data:`TARGETS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import InputDataError

__all__ = ["TARGETS", "Resolved", "register_target", "resolve"]


@dataclass
class Resolved:
    """A target resolved against an output of shape ``(B, *out_shape)``.

    Attributes
    ----------
    kind : str
        The registered kind (``'class'``, ``'element'``, ``'callable'``).
    samples : tensor
        The sample of each unit ``(U,)``.
    index : tensor or None
        The flat index of each unit's element in the flattened output row ``(U,)``.
    weights : tensor or None
        Each unit's weights over the flattened output row ``(U, F)``: ``t = Σ w · O``.
    fn : callable or None
        ``fn(out) -> (R,)`` on output rows ``(R, *out_shape)`` (the same for every unit).
    k : int or None
        Units per sample (``top:K``), else None.
    record : numpy.ndarray
        What :attr:`Explanation.target` reports per sample: classes ``(B,)`` / ``(B, K)``, or the explained
        element's indices ``(B, len(out_shape))``; ``-1`` for a callable.
    info : dict
        Facts for the result's extras (``target_kind``, the element's spelling ...).
    """

    kind: str
    samples: torch.Tensor
    index: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    fn: Callable | None = None
    k: int | None = None
    record: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def select(self, out: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """The scalar of each row ``(R,)`` from its output ``out`` ``(R, *out_shape)`` and unit ids."""
        flat = out.reshape(out.shape[0], -1)
        if self.index is not None:
            return flat.gather(1, self.index[units].reshape(-1, 1)).squeeze(1)
        if self.weights is not None:
            return (flat * self.weights[units].to(flat.dtype)).sum(1)
        return self.fn(out).reshape(-1)

    @property
    def one_element(self) -> bool:
        """Each unit is one element of the output (its flat index is :attr:`index`)."""
        return self.index is not None


#: kind -> (matches(target, out_shape) -> bool, resolve(target, out_shape, B, outputs) -> Resolved)
TARGETS: dict[str, tuple[Callable, Callable]] = {}


def register_target(kind: str, matches: Callable) -> Callable:
    """Register ``resolve(target, out_shape, B, outputs) -> Resolved`` for targets ``matches`` accepts;
    ``outputs()`` gives the unperturbed outputs ``(B, *out_shape)`` when the target needs them."""

    def deco(fn):
        if kind in TARGETS:
            raise ValueError(f"target kind {kind!r} is registered twice")
        TARGETS[kind] = (matches, fn)
        return fn

    return deco


def resolve(target, out_shape: tuple, B: int, outputs: Callable[[], torch.Tensor], device="cpu") -> Resolved:
    """Resolve ``target`` for a batch of ``B`` samples whose output rows have shape ``out_shape``.

    Raises
    ------
    InputDataError
        A target that does not fit the output (a class of an output that is not one score vector, an
        index out of range, the wrong number of per-sample targets ...), in one line.
    """
    target = _parse(target)
    for kind, (matches, fn) in TARGETS.items():
        if matches(target, tuple(out_shape)):
            res = fn(target, tuple(out_shape), B, outputs)
            res.samples = res.samples.to(device)
            for name in ("index", "weights"):
                if getattr(res, name) is not None:
                    setattr(res, name, getattr(res, name).to(device))
            res.info.setdefault("target_kind", kind)
            return res
    raise InputDataError(
        f"target {target!r} does not fit an output of shape [B, {', '.join(map(str, out_shape))}]"
    )


def _parse(target):
    """The command line's spellings: ``'3,predicted'``, ``'all,5'`` -> tuples; the rest as given."""
    if isinstance(target, str) and "," in target:
        parts = [p.strip() for p in target.split(",")]
        return tuple(p if p in ("predicted", "all") else _int(p, target) for p in parts)
    return target


def _int(v, whole):
    try:
        return int(v)
    except ValueError:
        raise InputDataError(
            f"target {whole!r}: each part is an index, 'predicted' (last) or 'all', not {v!r}"
        ) from None


def _score_axes(out_shape: tuple) -> list[int]:
    return [a for a, d in enumerate(out_shape) if d != 1]


def _is_class_spelling(t) -> bool:
    return (
        t is None or isinstance(t, (int, np.integer, str, list, np.ndarray, torch.Tensor)) and not callable(t)
    )


# ----------------------------------------------------------------------------- class
def _class_matches(target, out_shape) -> bool:
    if not _is_class_spelling(target):
        return False
    if len(_score_axes(out_shape)) > 1:
        raise InputDataError(
            f"the explained output has shape [B, {', '.join(map(str, out_shape))}]: it is not one score per "
            "class, so a class alone (or 'predicted') does not say what to explain; give the element, e.g. "
            "target=(position, class) / --target 3,predicted ('all' sums an axis), or a callable"
        )
    return True


@register_target("class", _class_matches)
def _class(target, out_shape, B, outputs) -> Resolved:
    from .explainer import resolve_targets

    C = int(np.prod(out_shape, dtype=np.int64))
    if target is None or (isinstance(target, str) and (target == "predicted" or target.startswith("top:"))):
        scores = outputs().reshape(B, -1)
    else:
        scores = torch.zeros(B, C)
    classes, k = resolve_targets(target, scores)
    samples = torch.arange(B, device=classes.device)
    return Resolved(
        "class",
        samples if k is None else samples.repeat_interleave(k),
        index=classes.reshape(-1),
        k=k,
        record=classes.cpu().numpy(),
    )


# ----------------------------------------------------------------------------- element (position × class)
def _element_matches(target, out_shape) -> bool:
    if not isinstance(target, tuple):
        return False
    if len(target) != len(out_shape):
        raise InputDataError(
            f"target {target!r} has {len(target)} part(s); the output [B, {', '.join(map(str, out_shape))}] "
            f"needs {len(out_shape)} (an index, 'all' or, last, 'predicted' per axis)"
        )
    return True


@register_target("element", _element_matches)
def _element(target, out_shape, B, outputs) -> Resolved:
    idx = []
    for axis, (t, d) in enumerate(zip(target, out_shape, strict=True)):
        last = axis == len(out_shape) - 1
        if t == "predicted" and last:
            idx.append(None)
        elif t == "all":
            idx.append(slice(None))
        elif isinstance(t, (int, np.integer)) and -d <= t < d:
            idx.append(int(t) % d)
        else:
            raise InputDataError(
                f"target {target!r}: part {axis} must be an index below {d}, 'all'"
                + (" or 'predicted'" if last else "")
                + f", not {t!r}"
            )
    F = int(np.prod(out_shape, dtype=np.int64))
    grid = np.arange(F).reshape(out_shape)
    lead = tuple(i for i in idx[:-1])
    if idx[-1] is None:  # the class with the highest score at that element (summed over 'all' axes)
        scores = outputs().reshape(B, *out_shape)[(slice(None), *lead)]
        scores = scores.reshape(B, -1, out_shape[-1]).sum(1)
        classes = scores.argmax(1).cpu().numpy()
    else:
        classes = np.full(B, idx[-1])
    cells = [grid[(*lead, int(c))].reshape(-1) for c in classes]
    record = np.array([[(-1 if isinstance(i, slice) else i) for i in lead] + [int(c)] for c in classes])
    info = {"target": ",".join("all" if isinstance(i, slice) else str(i) for i in lead) + ",class"}
    if all(len(c) == 1 for c in cells):
        return Resolved("element", torch.arange(B), index=torch.as_tensor([c[0] for c in cells]), record=record,
                        info=info)  # fmt: skip
    weights = torch.zeros(B, F)
    for b, c in enumerate(cells):
        weights[b, torch.as_tensor(c)] = 1.0
    return Resolved("element", torch.arange(B), weights=weights, record=record, info=info)


# ----------------------------------------------------------------------------- callable
@register_target("callable", lambda target, out_shape: callable(target))
def _callable(target, out_shape, B, outputs) -> Resolved:
    def fn(out):
        t = target(out)
        if not isinstance(t, torch.Tensor) or t.shape != (out.shape[0],):
            raise InputDataError(
                f"a callable target must return a torch tensor of one score per row ({out.shape[0]},), "
                f"got {type(t).__name__} {tuple(getattr(t, 'shape', ()))}"
            )
        return t

    return Resolved("callable", torch.arange(B), fn=fn, record=np.full(B, -1))


# ----------------------------------------------------------------------------- segmentation mask
def _mask_matches(target, out_shape) -> bool:
    return isinstance(target, dict) and "mask" in target


@register_target("mask", _mask_matches)
def _mask(target, out_shape, B, outputs) -> Resolved:
    """``Σ_hw M · O[b, c]`` over a pixel mask of a ``(B, C, H, W)`` output (METHODS §1.6): ``M`` a boolean
    ``(H, W)`` or per-sample ``(B, H, W)`` array; without one (``mask='predicted'``), the pixels whose
    predicted class is ``c`` at ``x`` (frozen there)."""
    _only(target, {"mask", "class"})
    if len(out_shape) != 3:
        raise InputDataError(
            f"a mask target needs a segmentation output (B, C, H, W), not [B, {', '.join(map(str, out_shape))}]"
        )
    C, H, W = out_shape
    c = target.get("class")
    if not isinstance(c, (int, np.integer)) or not 0 <= c < C:
        raise InputDataError(
            f"a mask target needs 'class': an index below the output's {C} classes, not {c!r}"
        )
    m = target["mask"]
    if isinstance(m, str) and m == "predicted":
        mask = (outputs().reshape(B, C, H, W).argmax(1) == int(c)).cpu().numpy()
    else:
        mask = np.asarray(m)
        if mask.shape == (H, W):
            mask = np.broadcast_to(mask, (B, H, W))
        if mask.shape != (B, H, W):
            raise InputDataError(
                f"the mask has shape {list(np.shape(m))}; the output's pixels are ({H}, {W}) (or ({B}, {H}, {W}))"
            )
    weights = torch.zeros(B, C, H, W)
    weights[:, int(c)] = torch.as_tensor(mask.astype(np.float32))
    pixels = mask.reshape(B, -1).sum(1)
    info = {"target": f"mask of class {int(c)}", "mask_pixels": pixels}
    return Resolved(
        "mask", torch.arange(B), weights=weights.reshape(B, -1), record=np.full(B, int(c)), info=info
    )


# ----------------------------------------------------------------------------- embeddings
def _embedding_matches(target, out_shape) -> bool:
    return isinstance(target, dict) and ("dot" in target or "cosine" in target)


@register_target("embedding", _embedding_matches)
def _embedding(target, out_shape, B, outputs) -> Resolved:
    """``⟨e_b, r⟩`` (``{'dot': r}``) or the cosine (``{'cosine': r}``, 0 when a norm is 0) of the embedding
    ``e_b``: the output row ``(B, D)``, or ``(B, L, D)`` pooled by ``'pool'`` (``'mean'`` or ``'cls'``, the
    first position)."""
    _only(target, {"dot", "cosine", "pool"})
    kind = "dot" if "dot" in target else "cosine"
    r = torch.as_tensor(np.asarray(target[kind], dtype=np.float64).reshape(-1))
    pool = target.get("pool")
    if len(out_shape) == 2 and pool not in ("mean", "cls"):
        raise InputDataError(
            f"an output of shape [B, {out_shape[0]}, {out_shape[1]}] needs pool='mean' or 'cls'"
        )
    if len(out_shape) not in (1, 2):
        raise InputDataError(f"an embedding target needs a (B, D) or (B, L, D) output, not [B, {out_shape}]")
    D = out_shape[-1]
    if r.numel() != D:
        raise InputDataError(f"the reference vector has {r.numel()} values; the embedding has {D}")

    def embed(out):
        if out.dim() == 3:
            return out.mean(1) if pool == "mean" else out[:, 0]
        return out

    def fn(out):
        e = embed(out)
        ref = r.to(e.dtype).to(e.device)
        dot = e @ ref
        if kind == "dot":
            return dot
        norm = e.norm(dim=1) * ref.norm()
        return torch.where(norm > 0, dot / norm.clamp_min(torch.finfo(e.dtype).tiny), torch.zeros_like(dot))

    info = {"target": f"{kind} with a reference of {D} values" + (f", {pool} pooling" if pool else "")}
    return Resolved("embedding", torch.arange(B), fn=fn, record=np.full(B, -1), info=info)


def _only(target: dict, keys: set) -> None:
    unknown = sorted(set(target) - keys)
    if unknown:
        raise InputDataError(f"target keys {unknown} are not understood here (allowed: {sorted(keys)})")
