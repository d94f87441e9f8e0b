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
from .target_spec import class_indices, is_box_target, parse_target

__all__ = [
    "BOX_LAYOUTS",
    "TARGETS",
    "Resolved",
    "is_box_target",
    "parse_target",
    "register_target",
    "resolve",
    "resolve_targets",
]


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
    per_unit: bool = False  # ``fn`` also takes the rows' unit ids (a per-sample reference)
    out_shape: tuple = ()  # an output row's shape

    def select(self, out: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """The scalar of each row ``(R,)`` from its output ``out`` ``(R, *out_shape)`` and unit ids."""
        flat = out.reshape(out.shape[0], -1)
        if self.index is not None:
            return flat.gather(1, self.index[units].reshape(-1, 1)).squeeze(1)
        if self.weights is not None:
            return (flat * self.weights[units].to(flat.dtype)).sum(1)
        return (self.fn(out, units) if self.per_unit else self.fn(out)).reshape(-1)

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
    target = parse_target(target)
    for kind, (matches, fn) in TARGETS.items():
        if matches(target, tuple(out_shape)):
            res = fn(target, tuple(out_shape), B, outputs)
            res.out_shape = tuple(out_shape)
            res.samples = res.samples.to(device)
            for name in ("index", "weights"):
                if getattr(res, name) is not None:
                    setattr(res, name, getattr(res, name).to(device))
            res.info.setdefault("target_kind", kind)
            return res
    raise InputDataError(
        f"target {target!r} does not fit an output of shape [B, {', '.join(map(str, out_shape))}]"
    )


def _score_axes(out_shape: tuple) -> list[int]:
    return [a for a, d in enumerate(out_shape) if d != 1]


def _is_class_spelling(t) -> bool:
    return (
        t is None or isinstance(t, (int, np.integer, str, list, np.ndarray, torch.Tensor)) and not callable(t)
    )


# ----------------------------------------------------------------------------- class
def resolve_targets(target, scores: torch.Tensor) -> tuple[torch.Tensor, int | None]:
    """Targets per sample from ``target`` and the scores ``(B, C)``.

    ``None`` or ``'predicted'``: the top-1 class; an int (or its string): that class for every sample;
    a sequence of B ints: one per sample; ``'top:K'``: the K best classes, returned as ``(B, K)`` with K.
    """
    B, C = scores.shape
    if target is None or (isinstance(target, str) and target == "predicted"):
        return scores.argmax(1), None
    if isinstance(target, str) and target.startswith("top:"):
        k = int(target[4:])
        if not 1 <= k <= C:
            raise InputDataError(f"target {target!r}: K must be between 1 and the {C} classes")
        return scores.topk(k, dim=1).indices, k
    if isinstance(target, torch.Tensor):
        target = target.cpu().numpy()
    return torch.as_tensor(class_indices(target, B, C), device=scores.device), None


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
    elif isinstance(idx[-1], slice):  # 'all' on the last axis too: the sum over it
        classes = np.full(B, -1)
    else:
        classes = np.full(B, idx[-1])
    cells = [grid[(*lead, slice(None) if c < 0 else int(c))].reshape(-1) for c in classes]
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
    if len(out_shape) not in (2, 3):
        raise InputDataError(
            f"a mask target needs a segmentation output (B, C, H, W), (B, H, W, C) or a map (B, H, W), not "
            f"[B, {', '.join(map(str, out_shape))}]"
        )
    m = target["mask"]
    channels_last = False
    if len(out_shape) == 2:  # one map without a channel axis (a sigmoid text-detection map)
        C, (H, W) = 1, out_shape
    else:
        C, H, W = out_shape
        given = np.shape(m)[-2:] if not isinstance(m, str) else None
        if given is not None and given != (H, W) and given == tuple(out_shape[:2]):
            (H, W, C), channels_last = out_shape, True  # (B, H, W, C): Keras/TF segmenters
    c = target.get("class")
    if c is None:
        c = 0 if C == 1 else 1  # a one-channel map's only channel; else the foreground class 1
    if not isinstance(c, (int, np.integer)) or not 0 <= c < C:
        raise InputDataError(
            f"a mask target needs 'class': an index below the output's {C} classes, not {c!r}"
        )
    m = target["mask"]
    if isinstance(m, str) and m == "predicted":
        if C == 1:
            raise InputDataError("mask='predicted' needs an output with several classes; give the mask")
        out = outputs().reshape(B, H, W, C).movedim(-1, 1) if channels_last else outputs().reshape(B, C, H, W)
        mask = (out.argmax(1) == int(c)).cpu().numpy()
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
    if channels_last:
        weights = weights.permute(0, 2, 3, 1).contiguous()
    pixels = mask.reshape(B, -1).sum(1)
    info = {"target": f"mask of class {int(c)}", "mask_pixels": pixels, "mask": np.array(mask, dtype=bool)}
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
    _only(target, {"dot", "cosine", "pool", "real_tokens"})
    kind = "dot" if "dot" in target else "cosine"
    r = torch.as_tensor(np.asarray(target[kind], dtype=np.float64).reshape(-1))
    pool = target.get("pool")
    if len(out_shape) > 1 and all(d == 1 for d in out_shape[:-1]):
        out_shape = out_shape[-1:]  # (B, 1, 1, D): an embedding with singleton axes (Keras/tf2onnx)
    elif len(out_shape) > 2 and sum(d != 1 for d in out_shape[:-1]) == 1:
        out_shape = (next(d for d in out_shape[:-1] if d != 1), out_shape[-1])
    if len(out_shape) == 2 and pool not in ("mean", "cls"):
        raise InputDataError(
            f"an output of shape [B, {out_shape[0]}, {out_shape[1]}] needs pool='mean' or 'cls'"
        )
    if len(out_shape) not in (1, 2):
        raise InputDataError(f"an embedding target needs a (B, D) or (B, L, D) output, not [B, {out_shape}]")
    D = out_shape[-1]
    if r.numel() != D:
        raise InputDataError(f"the reference vector has {r.numel()} values; the embedding has {D}")

    real = target.get("real_tokens")  # (B, L): 1 for real tokens, 0 for pads (the attention mask)

    def embed(out, units):
        out = out.reshape(len(out), *out_shape)
        if out.dim() != 3:
            return out
        if pool != "mean":
            return out[:, 0]
        if real is None or real.shape[1] != out.shape[1]:
            return out.mean(1)
        w = real.to(out.device, out.dtype)[units]  # the rows' own samples' masks: pads take no part
        return (out * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True).clamp_min(1)

    def fn(out, units):
        e = embed(out, units)
        ref = r.to(e.dtype).to(e.device)
        dot = e @ ref
        if kind == "dot":
            return dot
        norm = e.norm(dim=1) * ref.norm()
        return torch.where(norm > 0, dot / norm.clamp_min(torch.finfo(e.dtype).tiny), torch.zeros_like(dot))

    how = f", {pool} pooling" + (" over real tokens" if pool == "mean" and real is not None else "")
    info = {"target": f"{kind} with a reference of {D} values" + (how if pool else "")}
    return Resolved("embedding", torch.arange(B), fn=fn, record=np.full(B, -1), info=info, per_unit=True)


def with_real_tokens(target, companions: dict, B: int):
    """An embedding target with mean pooling gets the attention mask of its samples (``real_tokens``), so
    that the mean is over each text's real tokens and a text's result never depends on the other texts
    padded into its batch; any other target is returned as it is."""
    t = parse_target(target)
    if not (isinstance(t, dict) and ("dot" in t or "cosine" in t) and t.get("pool") == "mean"):
        return target
    for name, v in (companions or {}).items():
        v = torch.as_tensor(v)
        if "mask" in name.lower() and v.dim() == 2 and v.shape[0] == B:
            return {**t, "real_tokens": (v != 0)}
    return target


def _only(target: dict, keys: set) -> None:
    unknown = sorted(set(target) - keys)
    if unknown:
        raise InputDataError(f"target keys {unknown} are not understood here (allowed: {sorted(keys)})")


# ----------------------------------------------------------------------------- detector boxes (D-RISE)
#: box layouts: raw YOLO (cx, cy, w, h, [objectness], class scores) with anchors on the last or first
#: axis; ``xyxy`` — (B, N, 4+C): boxes x1y1x2y2 then class scores (a (boxes, scores) output pair joined by
#: :func:`join_box_outputs`); ``post_nms`` — (B, K, 6): kept detections ``[x1, y1, x2, y2, score, class]``
BOX_LAYOUTS = ("anchors_last", "anchors_first", "xyxy", "post_nms")


def _proposals(out: torch.Tensor, layout: str, objectness: bool):
    """(boxes xyxy (R, A, 4), class scores (R, A, C) or None, objectness (R, A), labels (R, A) or None) of a
    detector's output rows in ``layout``. Post-NMS rows carry a score and a label instead of class scores:
    the label is an index (no gradient), the gradient flows through the kept boxes and their scores."""
    if layout == "post_nms":
        return out[..., :4], None, out[..., 4], out[..., 5].detach()
    if layout == "xyxy":
        obj = out[..., 4] if objectness else torch.ones_like(out[..., 0])
        return out[..., :4], out[..., 4 + objectness :], obj, None
    rows = out if layout == "anchors_last" else out.transpose(1, 2)  # (R, 4+[1]+C, A)
    cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    obj = rows[:, 4] if objectness else torch.ones_like(cx)
    cls = rows[:, 5:] if objectness else rows[:, 4:]
    return boxes, cls.transpose(1, 2), obj, None


def _looks_post_nms(at_x: torch.Tensor) -> bool:
    """A (B, K, 6) output at x whose rows read as kept detections: integral non-negative labels, scores in
    [0, 1], x2 >= x1 and y2 >= y1 (raw (B, A, 4+2) outputs have a class score where the label would be)."""
    lab, score = at_x[..., 5], at_x[..., 4]
    return bool(
        (lab == lab.round()).all()
        and (lab >= 0).all()
        and ((score >= 0) & (score <= 1)).all()
        and (at_x[..., 2] >= at_x[..., 0]).all()
        and (at_x[..., 3] >= at_x[..., 1]).all()
    )


def _iou(ref: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of reference boxes ``(R, 4)`` with every proposal ``(R, A, 4)`` (continuous coordinates)."""
    lt = torch.maximum(ref[:, None, :2], boxes[..., :2])
    rb = torch.minimum(ref[:, None, 2:], boxes[..., 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area = lambda b: (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)  # noqa: E731
    union = area(ref)[:, None] + area(boxes) - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def _layout_of(out_shape, given, at_x: Callable[[], torch.Tensor]) -> tuple[str, str]:
    """(layout, how it was chosen) of a detector output ``(B, *out_shape)``."""
    if given in BOX_LAYOUTS:
        return given, "given"
    if given not in (None, "auto"):
        raise InputDataError(
            f"layout must be 'auto', 'anchors_last' (B, 4+C, A), 'anchors_first' (B, A, 4+C), 'xyxy' "
            f"(B, N, 4+C) or 'post_nms' (B, K, 6), not {given!r}"
        )
    if len(out_shape) != 2:
        raise InputDataError(
            f"a box target needs a detector output (B, 4+C, A), (B, A, 4+C) or post-NMS (B, K, 6), not "
            f"[B, {', '.join(map(str, out_shape))}]"
        )
    k, a = out_shape
    if a == 6 and _looks_post_nms(at_x()):
        return "post_nms", "detected: last axis 6 holding [x1, y1, x2, y2, score, integral class]"
    if k < a:
        return "anchors_last", f"detected: {k} values per proposal on axis 1, {a} proposals on axis 2"
    return "anchors_first", f"detected: {a} values per proposal on axis 2, {k} proposals on axis 1"


def _box_geometry(target, out_shape, at_x) -> dict:
    """How a box target reads the output: its layout (and how it was found), objectness, the number of
    classes (None for post-NMS labels), the background column and the anchor mode, each checked."""
    layout, how = _layout_of(out_shape, target.get("layout"), lambda: at_x)
    objectness = bool(target.get("objectness", False)) and layout != "post_nms"
    per = out_shape[0] if layout == "anchors_last" else out_shape[1]
    n_cls = None if layout == "post_nms" else per - 4 - objectness
    if (n_cls is not None and n_cls < 1) or (layout == "post_nms" and per < 6):
        raise InputDataError(
            f"a {layout} output of shape [B, {', '.join(map(str, out_shape))}] holds no class scores"
        )
    bg = target.get("background")
    if bg is not None and (n_cls is None or not isinstance(bg, (int, np.integer)) or not 0 <= bg < n_cls):
        raise InputDataError(
            f"background must be the index of a class-score column (below {n_cls}), not {bg!r}"
            if n_cls is not None
            else "background applies to class scores, not to post-NMS labels"
        )
    anchor = target.get("anchor", "max")
    if anchor not in ("max", "fixed"):
        raise InputDataError(f"anchor must be 'max' or 'fixed', not {anchor!r}")
    return {"layout": layout, "how": how, "objectness": objectness, "n_cls": n_cls, "background": bg,
            "anchor": anchor}  # fmt: skip


def _proposals_of(out: torch.Tensor, g: dict):
    """(boxes, class vectors, objectness, labels) of an output; SSD's background column takes no part in
    the class vector (METHODS §1.6)."""
    b, c_, o, lab = _proposals(out, g["layout"], g["objectness"])
    if g["background"] is not None:
        keep = torch.ones(c_.shape[-1], dtype=c_.dtype, device=c_.device)
        keep[int(g["background"])] = 0
        c_ = c_ * keep
    return b, c_, o, lab


def _reference_detection(target, g: dict, boxes, cls, obj, labels, B: int):
    """``(reference boxes (B, 4), classes (B,))``: the k-th best proposal at ``x`` (``detection``), or the
    given box and class, checked."""
    n_cls, bg = g["n_cls"], g["background"]
    if "detection" in target:
        k = target["detection"]
        conf = (cls.max(-1).values if cls is not None else 1.0) * obj
        order = conf.argsort(dim=1, descending=True, stable=True)
        if not isinstance(k, (int, np.integer)) or not 0 <= k < order.shape[1]:
            raise InputDataError(
                f"detection must be an index below the {order.shape[1]} proposals, not {k!r}"
            )
        j = order[:, int(k)]
        ref = boxes[torch.arange(B), j]
        classes = (
            cls[torch.arange(B), j].argmax(-1) if cls is not None else labels[torch.arange(B), j]
        ).long()
        return ref, classes
    ref = torch.as_tensor(np.asarray(target["box"], dtype=np.float64)).reshape(-1, 4)
    if ref.shape[0] not in (1, B) or not (ref[:, 2:] > ref[:, :2]).all():
        raise InputDataError(
            f"box must be [x1, y1, x2, y2] with x2 > x1 and y2 > y1 (or one per sample), not {target['box']!r}"
        )
    c = target.get("class")
    if not isinstance(c, (int, np.integer)) or not 0 <= c < (n_cls if n_cls is not None else np.inf):
        below = f"an index below the {n_cls} classes" if n_cls is not None else "a class index (>= 0)"
        raise InputDataError(f"a box target needs 'class': {below}, not {c!r}")
    if bg is not None and int(c) == int(bg):
        raise InputDataError(f"class {c} is the background column: explain an object class")
    return ref.expand(B, 4), torch.full((B,), int(c))


def _d_rise_similarity(boxes, cls, obj, labels, ref, classes) -> torch.Tensor:
    """``IoU(ref, box_j) · cos(class vectors) · O_j`` per row and proposal, ``(R, A)``."""
    iou = _iou(ref.to(boxes.dtype), boxes)
    if labels is not None:  # post-NMS: the one-hot classes' cosine is 1 for the same label, else 0
        cos = (labels.round() == classes.to(labels.device)[:, None]).to(boxes.dtype)
    else:
        pc = cls.gather(2, classes.to(cls.device)[:, None, None].expand(-1, cls.shape[1], 1)).squeeze(2)
        norm = cls.norm(dim=-1)
        cos = torch.where(norm > 0, pc / norm.clamp_min(1e-12), torch.zeros_like(pc))
    return iou * cos * obj


@register_target("box", is_box_target)
def _box(target, out_shape, B, outputs) -> Resolved:
    """The D-RISE similarity of a reference detection (box ``L_t`` in pixels x1y1x2y2, class ``c``) with the
    proposals ``j`` of each output row: ``S = max_j IoU(L_t, L_j) · cos(P_t, P_j) · O_j`` (METHODS §1.6;
    ``O_j = 1`` without objectness). Post-NMS rows ``[x1, y1, x2, y2, score, class]`` have a label, not a
    class vector: ``cos`` is ``[class_j = c]`` and ``O_j`` the kept score (the kept indices are constant, the
    gradient flows through the kept boxes and scores). ``{'detection': k}`` takes the k-th best proposal at
    ``x`` as the reference; ``anchor='fixed'`` keeps the proposal matched at ``x`` instead of the max;
    ``background=k`` leaves class-score column k (SSD's background) out of the class vectors."""
    _only(target, {"box", "class", "detection", "layout", "objectness", "anchor", "background", "source"})
    at_x = outputs().reshape(B, *out_shape).to(torch.float64)
    g = _box_geometry(target, out_shape, at_x)

    def proposals(out):
        return _proposals_of(out, g)

    boxes, cls, obj, labels = proposals(at_x)
    ref, classes = _reference_detection(target, g, boxes, cls, obj, labels, B)
    s0 = _d_rise_similarity(boxes, cls, obj, labels, ref, classes)
    matched = s0.argmax(1)
    rows0 = torch.arange(B)
    best = s0[rows0, matched]
    iou0 = _iou(ref, boxes)[rows0, matched]
    if (best <= 0).any():
        bad = int(torch.nonzero(best <= 0)[0])
        raise InputDataError(
            f"sample {bad}: no proposal overlaps the reference box with that class (similarity 0)"
        )

    def fn(out, units=None):
        b, c_, o, lab = proposals(out)
        rows = torch.arange(out.shape[0], device=out.device) if units is None else units
        s = _d_rise_similarity(b, c_, o, lab, ref.to(out.device)[rows.cpu()], classes[rows.cpu()])
        if g["anchor"] == "fixed":
            return s.gather(1, matched.to(out.device)[rows.cpu()][:, None]).squeeze(1)
        return s.max(1).values

    layout, how = g["layout"], g["how"]
    if "source" in target:  # what prepare_box_target made of the model's outputs
        how = f"{how}; {target['source']}"
    info = {"target": "box (D-RISE similarity)", "layout": layout, "layout_from": how,
            "matched_proposal": matched.numpy(), "matched_box": boxes[rows0, matched].numpy(),
            "matched_iou": iou0.numpy(), "reference_box": ref.numpy().copy(), "similarity_at_x": best.numpy()}  # fmt: skip
    return Resolved("box", torch.arange(B), fn=fn, record=classes.numpy(), info=info, per_unit=True)
