"""Detector graphs edited for a box target (METHODS §1.6): a detector's (boxes, scores) output pair joined
into one ``(B, N, 4+C)`` output (:func:`join_box_outputs`), a graph cut at its NonMaxSuppression's inputs so
gradients explain the raw proposals (:func:`cut_at_nms`), and :func:`prepare_box_target`, which picks one
for a call. Resolving the box target on the joined output is :mod:`onnx_explain.targets`' job."""

from __future__ import annotations

from .errors import InputDataError
from .model import load
from .target_spec import is_box_target, parse_target

__all__ = ["box_output_pair", "cut_at_nms", "join_box_outputs", "prepare_box_target"]


def _dims(v) -> list:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in v.type.tensor_type.shape.dim
    ]


def _output_shapes(model) -> dict[str, list]:
    """Each tensor output's shape: as declared, or — where shape inference left an axis unknown and the model
    needs no per-sample companions — as onnxruntime gives it on a probe batch of 2."""
    shapes = {v.name: _dims(v) for v in model.proto.graph.output if v.type.HasField("tensor_type")}
    if (
        any(None in d[1:] or any(isinstance(a, str) for a in d[1:]) for d in shapes.values())
        and not model.companions
    ):
        probe = model.probe_batch(2)
        for name in shapes:
            try:
                shapes[name] = [shapes[name][0], *model.runtime.run(name, probe).shape[1:]]
            except Exception:  # noqa: BLE001 - an output that does not run on a probe keeps its declared shape
                pass
    return shapes


def box_output_pair(model) -> tuple[str, str, str] | None:
    """``(boxes, scores, scores layout)`` of a detector with two outputs: boxes ``(B, N, 4)`` x1y1x2y2 and
    class scores ``(B, N, C)`` (``'anchors_first'``) or ``(B, C, N)`` (``'anchors_last'``), found from the
    outputs' shapes (N must agree, C != N); None when the outputs are not such a pair."""
    shapes = _output_shapes(model)
    boxes = [n for n, d in shapes.items() if len(d) == 3 and d[2] == 4]
    for b in boxes:
        n = shapes[b][1]
        for s, d in shapes.items():
            if s == b or len(d) != 3 or n is None:
                continue
            if d[1] == n and d[2] != n:
                return b, s, "anchors_first"
            if d[2] == n and d[1] != n:
                return b, s, "anchors_last"
    return None


def join_box_outputs(model, boxes: str | None = None, scores: str | None = None):
    """A detector whose (boxes, scores) output pair is joined into one output ``(B, N, 4+C)``: boxes
    x1y1x2y2 then class scores — the ``'xyxy'`` layout of a box target (METHODS §1.6).

    Parameters
    ----------
    model : Model
        A detector with an output of boxes ``(B, N, 4)`` and one of class scores ``(B, N, C)`` or
        ``(B, C, N)``.
    boxes, scores : str, optional
        The two outputs' names; default: found from their shapes (:func:`box_output_pair`).

    Returns
    -------
    Model
        The same graph with one more node or two (a Transpose of ``(B, C, N)`` scores, a Concat), whose only
        output is ``boxes_scores``; the same explained input, fixed inputs and device.

    Raises
    ------
    InputDataError
        The outputs are not such a pair, in one line.
    """
    found = box_output_pair(model)
    names = _output_shapes(model)
    if boxes is None or scores is None:
        if found is None:
            raise InputDataError(
                "a box target on several outputs needs boxes (B, N, 4) and class scores (B, N, C) or (B, C, N); "
                f"the model's outputs are {', '.join(f'{n} {d}' for n, d in names.items())}"
            )
        boxes, scores, scores_layout = (boxes or found[0], scores or found[1], found[2])
    else:
        if boxes not in names or scores not in names:
            raise InputDataError(f"outputs {boxes!r} and {scores!r}: the model has {', '.join(names)}")
        by_proposal = names[scores][2] == names[boxes][1] != names[scores][1]
        scores_layout = "anchors_last" if by_proposal else "anchors_first"
    n = names[boxes][1]
    c = names[scores][2 if scores_layout == "anchors_first" else 1]
    return _joined(model, boxes, scores, scores_layout == "anchors_last", n, c)


def _joined(model, boxes: str, scores: str, scores_by_class: bool, n, c):
    """The model computing only ``boxes_scores`` = Concat(boxes, scores as (B, N, C)) on axis 2 (the nodes
    it does not need are dropped)."""
    import onnx
    from onnx import helper

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    g = proto.graph
    joined = "boxes_scores"
    src = scores
    if scores_by_class:
        src = scores + "__by_proposal"
        g.node.append(helper.make_node("Transpose", [scores], [src], perm=[0, 2, 1], name="join_scores_T"))
    g.node.append(helper.make_node("Concat", [boxes, src], [joined], axis=2, name="join_boxes_scores"))
    elem = next((v.type.tensor_type.elem_type for v in [*g.output, *g.value_info] if v.name == boxes), 1)
    del g.output[:]
    width = 4 + c if isinstance(c, int) else "classes_plus_4"
    g.output.append(
        helper.make_tensor_value_info(joined, elem, ["batch", n if n is not None else "proposals", width])
    )
    needed, keep = {joined}, []
    for node in reversed(list(g.node)):  # the nodes the joined output depends on (NMS and after: not)
        if needed & set(node.output):
            keep.append(node)
            needed |= {i for i in node.input if i}
            needed |= {i for a in node.attribute if a.g is not None for i in _graph_inputs(a.g)}
    del g.node[:]
    g.node.extend(reversed(keep))
    return load(proto, input=model.input.name, output=joined, fixed_inputs=model.fixed_inputs or None,
                device=model.device)  # fmt: skip


def _graph_inputs(g) -> set:
    """Names a subgraph (If/Loop body) reads from its outer scope."""
    return {i for node in g.node for i in node.input if i}


def cut_at_nms(model):
    """The detector's proposals before its NonMaxSuppression (METHODS §1.6: NMS selects by int64 indices,
    piecewise constant; gradients explain the raw proposals): NMS's boxes ``(B, N, 4)`` and scores
    ``(B, C, N)`` joined into ``(B, N, 4+C)``. Returns ``(model, layout)`` — ``'xyxy'``, or
    ``'anchors_first'`` (cx, cy, w, h) for ``center_point_box=1`` — or None without a NonMaxSuppression."""
    nms = [n for n in model.proto.graph.node if n.op_type == "NonMaxSuppression"]
    if len(nms) != 1:
        return None
    node = nms[0]
    centre = any(a.name == "center_point_box" and a.i == 1 for a in node.attribute)
    joined = _joined(model, node.input[0], node.input[1], True, None, None)
    return joined, ("anchors_first" if centre else "xyxy")


def prepare_box_target(model, target):
    """``(model, target)`` for a call: a box target on a detector with a NonMaxSuppression gets its
    proposals before NMS (:func:`cut_at_nms`; ``layout='post_nms'`` keeps the kept detections instead), one
    whose boxes and class scores are two outputs gets the joined model (:func:`join_box_outputs`) with
    ``layout='xyxy'`` — each built once per model; anything else is returned as it is."""
    t = parse_target(target)
    if not (is_box_target(t, ()) and hasattr(model, "proto")) or t.get("layout") == "post_nms":
        return model, target
    joined = model.derived.get("box_target")  # built and converted once per Model
    if joined is None:
        cut = cut_at_nms(model)
        if cut is not None:
            joined = (
                cut[0],
                cut[1],
                "the graph cut at its NonMaxSuppression's inputs (proposals before NMS)",
            )
        elif len(model.proto.graph.output) >= 2 and box_output_pair(model) is not None:
            joined = (join_box_outputs(model), "xyxy", "the (boxes, scores) outputs joined")
        else:
            return model, target
        model.derived["box_target"] = joined
    m, layout, how = joined
    return m, {**t, "layout": t.get("layout", layout), "source": how}
