"""Targets beyond (B, C) classifiers (docs/methods.md §1.6): a tagger's element, a sum over positions, a
callable, and the refusal of a class-only target on an output that is not one score per class.

Oracle: autograd of the same scalar on the torch source.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_gradients_match, export

import onnx_explain as oe
from onnx_explain.errors import InputDataError

L, D, C = 6, 4, 3


class _Tagger(torch.nn.Module):
    """(B, L, D) features -> (B, L, C) per-position scores, positions mixed by a bidirectional GRU."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = torch.nn.GRU(D, 5, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(10, C)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    src = _Tagger().eval()
    x = np.random.default_rng(0).standard_normal((3, L, D)).astype(np.float32)
    path = export(src, torch.from_numpy(x), tmp_path_factory.mktemp("tag") / "tagger.onnx", "legacy")
    return src, oe.load(path), x


def _autograd(src, x, scalar):
    xt = torch.from_numpy(x).requires_grad_(True)
    scalar(src(xt)).sum().backward()
    return xt.grad.numpy()


def test_position_and_class_equals_autograd_of_that_element(tagger):
    src, model, x = tagger
    r = oe.explain(model, x, "gradient", target=(2, 1), output="output")
    assert_gradients_match(r.attribution, _autograd(src, x, lambda o: o[:, 2, 1]))
    np.testing.assert_array_equal(r.target, [[2, 1]] * 3)
    assert r.extras["target_kind"] == "element"
    with torch.no_grad():
        np.testing.assert_allclose(r.score, src(torch.from_numpy(x))[:, 2, 1].numpy(), rtol=1e-4, atol=1e-6)
    # the command line's spelling, negative indices, and 'predicted' at a position
    same = oe.explain(model, x, "gradient", target="-4,1", output="output")
    np.testing.assert_allclose(same.attribution, r.attribution)
    pred = oe.explain(model, x, "gradient", target=(4, "predicted"), output="output")
    with torch.no_grad():
        best = src(torch.from_numpy(x))[:, 4].argmax(1).numpy()
    np.testing.assert_array_equal(pred.target[:, 1], best)
    want = _autograd(src, x, lambda o: o[torch.arange(3), 4, torch.as_tensor(best)])
    assert_gradients_match(pred.attribution, want)


def test_all_positions_sum_and_integrated_gradients_complete(tagger):
    src, model, x = tagger
    r = oe.explain(model, x, "gradient", target=("all", 2), output="output")
    assert_gradients_match(r.attribution, _autograd(src, x, lambda o: o[:, :, 2].sum(1)))
    np.testing.assert_array_equal(r.target, [[-1, 2]] * 3)
    ig = oe.explain(model, x, "integrated_gradients", target=("all", 0), output="output", n_steps=64)
    with torch.no_grad():
        f = src(torch.from_numpy(x))[:, :, 0].sum(1) - src(torch.zeros(3, L, D))[:, :, 0].sum(1)
    np.testing.assert_allclose(ig.attribution.reshape(3, -1).sum(1), f.numpy(), rtol=1e-3, atol=1e-4)


def test_a_callable_target_equals_autograd_of_the_function(tagger):
    src, model, x = tagger

    def margin(out):  # class 0 minus class 1, averaged over positions
        return (out[:, :, 0] - out[:, :, 1]).mean(1)

    r = oe.explain(model, x, "smoothgrad", target=margin, output="output", n_samples=1, sigma=0.0)
    assert_gradients_match(r.attribution, _autograd(src, x, margin))
    with torch.no_grad():
        np.testing.assert_allclose(r.score, margin(src(torch.from_numpy(x))).numpy(), rtol=1e-4, atol=1e-6)


def test_a_class_alone_is_refused_where_the_output_has_several_axes(tagger):
    _, model, x = tagger
    for target in (None, "predicted", 1, "top:2", [0, 1, 2]):
        with pytest.raises(InputDataError, match=r"not one score per class.*target=\(position, class\)"):
            oe.explain(model, x, "gradient", target=target, output="output")
    with pytest.raises(InputDataError, match="needs 2"):
        oe.explain(model, x, "gradient", target=(1, 2, 0), output="output")
    with pytest.raises(InputDataError, match="part 0 must be an index below 6"):
        oe.explain(model, x, "gradient", target=(6, 0), output="output")
    with pytest.raises(InputDataError, match="one score per row"):
        oe.explain(model, x, "gradient", target=lambda o: o.sum(), output="output")
    # LRP of a sum over positions: its backward pass is linear in the seed, so it is the sum of the
    # positions' own LRP
    total = oe.explain(model, x, "lrp", target=("all", 0), output="output", fallback="gradient")
    parts = [
        oe.explain(model, x, "lrp", target=(p, 0), output="output", fallback="gradient") for p in range(6)
    ]
    np.testing.assert_allclose(total.attribution, sum(e.attribution for e in parts), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(total.score, sum(e.score for e in parts), rtol=1e-5)


def test_the_command_line_explains_an_element(tagger, tmp_path):
    from click.testing import CliRunner

    from onnx_explain.cli import main

    _, model, x = tagger
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out"
    args = ["explain", str(model.path), str(tmp_path / "x.npy"), "-m", "gradient", "-t", "2,predicted",
            "--output", "output", "-o", str(out)]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    want = oe.explain(model, x, "gradient", target=(2, "predicted"), output="output")
    for b in range(3):
        with np.load(out / f"x_{b:03d}.npz") as z:
            np.testing.assert_allclose(z["attribution"], want.attribution[b], rtol=1e-6)
            np.testing.assert_array_equal(z["target"], want.target[b])
    res = CliRunner().invoke(main, [*args[:5], "-t", "1", *args[7:]])
    assert res.exit_code != 0 and "not one score per class" in res.output


# ----------------------------------------------------------------------------- masks and embeddings
class _FCN(torch.nn.Module):
    """(B, 3, 8, 8) -> (B, 4, 8, 8) per-pixel class scores."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.c1, self.c2 = torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.tanh(self.c1(x)))


class _Embedder(torch.nn.Module):
    """(B, L, D) -> (B, L, E) token embeddings."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.fc = torch.nn.Linear(D, 5)

    def forward(self, x):
        return torch.tanh(self.fc(x)) + x.mean(1, keepdim=True) @ self.fc.weight.T


def test_a_mask_target_equals_autograd_of_the_masked_sum(tmp_path):
    src = _FCN().eval()
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    model = oe.load(export(src, torch.from_numpy(x), tmp_path / "fcn.onnx", "legacy"))
    mask = np.zeros((8, 8), bool)
    mask[2:5, 3:7] = True
    r = oe.explain(model, x, "gradient", target={"mask": mask, "class": 2}, output="output")
    want = _autograd(src, x, lambda o: (o[:, 2] * torch.from_numpy(mask)).sum((1, 2)))
    assert_gradients_match(r.attribution, want)
    with torch.no_grad():
        frozen = src(torch.from_numpy(x)).argmax(1) == 1  # the predicted region, fixed at x
    p = oe.explain(model, x, "gradient", target={"mask": "predicted", "class": 1}, output="output")
    assert_gradients_match(p.attribution, _autograd(src, x, lambda o: (o[:, 1] * frozen).sum((1, 2))))
    np.testing.assert_array_equal(p.extras["mask_pixels"], frozen.sum((1, 2)).numpy())
    with pytest.raises(InputDataError, match="the mask has shape \\[4, 4\\]"):
        oe.explain(model, x, "gradient", target={"mask": np.ones((4, 4), bool), "class": 2}, output="output")
    with pytest.raises(InputDataError, match="'class': an index below the output's 4 classes"):
        oe.explain(model, x, "gradient", target={"mask": mask, "class": 4}, output="output")


def test_deletion_of_a_mask_target_is_reported_inside_and_outside_the_mask(tmp_path):
    """METHODS §3.10: a segmenter's deletion curve, and the same curve replacing only the mask's pixels,
    then only the others; each equals a plain loop that replaces ceil(t/n · |region|) pixels of the region,
    most relevant first, and scores Σ M · O_c on onnxruntime."""
    import onnxruntime as ort

    src = _FCN().eval()
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    path = export(src, torch.from_numpy(x), tmp_path / "fcn.onnx", "legacy")
    model = oe.load(path)
    mask = np.zeros((8, 8), bool)
    mask[1:5, 2:7] = True  # 20 pixels
    target = {"mask": mask, "class": 2}
    a = oe.explain(model, x, "gradient_x_input", target=target, output="output").attribution
    r = oe.evaluate(model, x, a, "deletion", target=target, n_steps=8)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sal = a.sum(1).reshape(2, -1)
    for where, region in (("inside", mask), ("outside", ~mask)):
        inside = region.reshape(-1)
        n_in = int(inside.sum())
        want = np.empty((2, 9))
        for b in range(2):
            order = [p for p in np.argsort(-sal[b], kind="stable") if inside[p]]
            for t in range(9):
                xt = x[b].reshape(3, -1).copy()
                xt[:, order[: int(np.ceil(t / 8 * n_in - 1e-9))]] = 0.0  # the zero substrate
                out = sess.run(None, {sess.get_inputs()[0].name: xt.reshape(1, 3, 8, 8)})[0][0, 2]
                want[b, t] = (out * mask).sum()
        np.testing.assert_allclose(r[f"curve_{where}"], want, rtol=1e-5, atol=1e-5)
        auc = (want.sum(1) - want[:, 0] / 2 - want[:, -1] / 2) / 8
        np.testing.assert_allclose(r[f"auc_{where}"], auc, rtol=1e-5, atol=1e-6)
    # the whole image as the region is plain deletion when the steps divide the pixels evenly
    whole = oe.evaluate(model, x, a, "deletion", target=target, n_steps=8, region=np.ones((8, 8), bool))
    np.testing.assert_allclose(whole["curve"], r["curve"], rtol=1e-6)
    with pytest.raises(oe.OptionError, match="region has shape"):
        oe.evaluate(model, x, a, "deletion", target=target, region=np.ones((4, 4), bool))


def test_embedding_targets_equal_autograd_of_dot_and_cosine(tmp_path):
    src = _Embedder().eval()
    x = np.random.default_rng(4).standard_normal((3, L, D)).astype(np.float32)
    model = oe.load(export(src, torch.from_numpy(x), tmp_path / "emb.onnx", "legacy"))
    ref = np.random.default_rng(5).standard_normal(5)
    rt = torch.from_numpy(ref).float()
    r = oe.explain(model, x, "gradient", target={"dot": ref, "pool": "mean"}, output="output")
    assert_gradients_match(r.attribution, _autograd(src, x, lambda o: o.mean(1) @ rt))
    c = oe.explain(model, x, "gradient", target={"cosine": ref, "pool": "cls"}, output="output")
    cos = torch.nn.functional.cosine_similarity
    assert_gradients_match(c.attribution, _autograd(src, x, lambda o: cos(o[:, 0], rt[None], dim=1)))
    with torch.no_grad():
        np.testing.assert_allclose(c.score, cos(src(torch.from_numpy(x))[:, 0], rt[None], dim=1), rtol=1e-4)
    with pytest.raises(InputDataError, match="needs pool='mean' or 'cls'"):
        oe.explain(model, x, "gradient", target={"dot": ref}, output="output")
    with pytest.raises(InputDataError, match="the reference vector has 3 values; the embedding has 5"):
        oe.explain(model, x, "gradient", target={"dot": ref[:3], "pool": "mean"}, output="output")


# ----------------------------------------------------------------------------- detector boxes
class _GridDetector(torch.nn.Module):
    """A 16×16 image, a 4×4 grid of anchors: anchor j's box is its own 4×4 cell (fixed) and its two class
    scores depend only on its cell's pixels (a pooled-cell construction), YOLO raw layout (B, 4+C, A)."""

    def __init__(self, anchors_first=False):
        super().__init__()
        torch.manual_seed(3)
        self.head = torch.nn.Conv2d(1, 2, 1)
        centres = (torch.arange(4.0) * 4 + 2).repeat_interleave(4), (torch.arange(4.0) * 4 + 2).repeat(4)
        self.register_buffer(
            "boxes", torch.stack([centres[1], centres[0], torch.full((16,), 4.0), torch.full((16,), 4.0)])
        )
        self.anchors_first = anchors_first

    def forward(self, x):
        cls = torch.sigmoid(self.head(torch.nn.functional.avg_pool2d(x, 4))).flatten(2)  # (B, 2, 16)
        out = torch.cat([self.boxes.expand(x.shape[0], 4, 16), cls], dim=1)
        return out.transpose(1, 2) if self.anchors_first else out


@pytest.mark.parametrize("anchors_first", [False, True], ids=["anchors_last", "anchors_first"])
def test_a_box_target_explains_its_own_cell_and_matches_the_right_anchor(anchors_first, tmp_path):
    src = _GridDetector(anchors_first).eval()
    x = np.random.default_rng(6).standard_normal((2, 1, 16, 16)).astype(np.float32)
    model = oe.load(export(src, torch.from_numpy(x), tmp_path / "det.onnx", "legacy"))
    box = [8.0, 4.0, 12.0, 8.0]  # the cell of row 1, column 2: anchor 1·4 + 2 = 6
    r = oe.explain(model, x, "gradient", target={"box": box, "class": 1}, output="output")
    assert r.extras["layout"] == ("anchors_first" if anchors_first else "anchors_last")
    np.testing.assert_array_equal(r.extras["matched_proposal"], [6, 6])
    np.testing.assert_allclose(r.extras["matched_iou"], 1.0)
    inside = np.zeros((16, 16), bool)
    inside[4:8, 8:12] = True
    assert (r.attribution[:, 0][:, ~inside] == 0).all() and (r.attribution[:, 0][:, inside] != 0).all()

    def similarity(o):  # IoU 1 with anchor 6 (0 elsewhere), O = 1: cos(one-hot class 1, P_6)
        p = (o.transpose(1, 2) if anchors_first else o)[:, 4:, 6]
        return p[:, 1] / p.norm(dim=1)

    assert_gradients_match(r.attribution, _autograd(src, x, similarity))
    best = oe.explain(model, x, "gradient", target={"detection": 0}, output="output")
    with torch.no_grad():
        o = src(torch.from_numpy(x))
        cls = (o.transpose(1, 2) if anchors_first else o)[:, 4:]
    np.testing.assert_array_equal(best.extras["matched_proposal"], cls.max(1).values.argmax(1).numpy())
    with pytest.raises(InputDataError, match="no proposal overlaps the reference box"):
        oe.explain(model, x, "gradient", target={"box": [100, 100, 110, 110], "class": 0}, output="output")
    with pytest.raises(InputDataError, match="'class': an index below the 2 classes"):
        oe.explain(model, x, "gradient", target={"box": box, "class": 2}, output="output")


def test_command_line_spellings_of_the_dict_targets(tmp_path):
    from onnx_explain.targets import parse_target

    assert parse_target("box:8,4,12,8:1") == {"box": [8.0, 4.0, 12.0, 8.0], "class": 1}
    assert parse_target("detection:0") == {"detection": 0}
    np.save(tmp_path / "r.npy", np.arange(5.0))
    d = parse_target(f"dot:{tmp_path / 'r.npy'}:mean")
    assert d["pool"] == "mean" and (d["dot"] == np.arange(5.0)).all()
    from PIL import Image

    Image.fromarray((np.eye(4) * 255).astype(np.uint8)).save(tmp_path / "m.png")
    m = parse_target(f"mask:{tmp_path / 'm.png'}:2")
    assert m["class"] == 2 and (m["mask"] == np.eye(4, dtype=bool)).all()
    for bad in ("box:1,2,3", "mask:/nope.png", "frobnicate:3"):
        with pytest.raises(InputDataError):
            parse_target(bad)


def test_metrics_score_a_box_target_on_every_perturbed_input(tmp_path):
    src = _GridDetector().eval()
    x = np.random.default_rng(7).standard_normal((2, 1, 16, 16)).astype(np.float32)
    model = oe.load(export(src, torch.from_numpy(x), tmp_path / "det.onnx", "legacy"))
    target = {"box": [8.0, 4.0, 12.0, 8.0], "class": 1}
    a = np.zeros_like(x)
    a[:, 0, 4:8, 8:12] = 1.0 + np.arange(16).reshape(4, 4)  # the cell first (MoRF), the rest tied at 0
    r = oe.evaluate(model, x, a, "pixel_flipping", target=target, pixels_per_step=16, baseline=0.0)
    d = oe.evaluate(model, x, a, "deletion", target=target, n_steps=4)
    assert d["output"] == "output"  # a box has no probabilities: deletion scores the model's output

    def similarity(z):
        with torch.no_grad():
            p = src(torch.from_numpy(z))[:, 4:, 6]
        return (p[:, 1] / p.norm(dim=1)).numpy()

    gone = x.copy()
    gone[:, 0, 4:8, 8:12] = 0.0
    np.testing.assert_allclose(r["curve"][:, 0], similarity(x), rtol=1e-5)
    np.testing.assert_allclose(r["curve"][:, 1], similarity(gone), rtol=1e-5)
    np.testing.assert_allclose(
        r["curve"][:, 2:], similarity(gone)[:, None].repeat(r["curve"].shape[1] - 2, 1), rtol=1e-5
    )  # fmt: skip  (other cells do not change this box's score)
    with pytest.raises(oe.OptionError, match="output='prob' has no meaning for a box target"):
        oe.evaluate(model, x, a, "deletion", target=target, output="prob")


def test_drise_scores_masks_by_the_box_similarity(tmp_path):
    src = _GridDetector().eval()
    x = np.random.default_rng(8).standard_normal((1, 1, 16, 16)).astype(np.float32)
    model = oe.load(export(src, torch.from_numpy(x), tmp_path / "det.onnx", "legacy"))
    masks = (np.random.default_rng(9).random((40, 16, 16)) < 0.5).astype(np.float64)
    target = {"box": [8.0, 4.0, 12.0, 8.0], "class": 1}
    r = oe.explain(model, x, "drise", target=target, masks=masks, batch_size=7)
    with torch.no_grad():  # D-RISE by hand: s_i = similarity of the box on x ⊙ M_i (anchor 6, IoU 1)
        p = src(torch.from_numpy(x * masks[:, None].astype(np.float32)))[:, 4:, 6].double()
    s = (p[:, 1] / p.norm(dim=1)).numpy()
    sal = np.einsum("n,nhw->hw", s, masks) / masks.sum(0)
    np.testing.assert_allclose(r.attribution[0, 0], sal / np.abs(sal).max(), rtol=1e-5)
    with pytest.raises(oe.OptionError, match="drise explains a detector box"):
        oe.explain(model, x, "drise", target=(4, 6), masks=masks)  # an element, not a box


# ----------------------------------------------------------------------------- (boxes, scores) pairs, post-NMS
def _cell_boxes(x):
    """Each of the 16 cells' box x1y1x2y2 (B, 16, 4), shifted by up to one pixel by its own cell's mean (the
    boxes depend on the image too, so the IoU carries gradient)."""
    pooled = torch.nn.functional.avg_pool2d(x, 4).flatten(2).transpose(1, 2)  # (B, 16, 1)
    j = torch.arange(16.0)
    x1, y1 = (j % 4) * 4, (j // 4) * 4
    base = torch.stack([x1, y1, x1 + 4, y1 + 4], dim=1)  # (16, 4)
    return base + torch.tanh(pooled)


class _PairDetector(torch.nn.Module):
    """Two outputs: boxes (B, 16, 4) xyxy and class scores (B, 16, 2) or (B, 2, 16), each anchor's from its
    own 4×4 cell."""

    def __init__(self, scores_last=False):
        super().__init__()
        torch.manual_seed(3)
        self.head = torch.nn.Conv2d(1, 2, 1)
        self.scores_last = scores_last

    def forward(self, x):
        cls = torch.sigmoid(self.head(torch.nn.functional.avg_pool2d(x, 4))).flatten(2)  # (B, 2, 16)
        return _cell_boxes(x), cls if self.scores_last else cls.transpose(1, 2)


class _PostNMS(torch.nn.Module):
    """The pair detector's 16 proposals reduced to K = 3 kept detections [x1, y1, x2, y2, score, class]
    (B, 3, 6) by a top-K on the best class score: the kept indices carry no gradient, the kept boxes and
    scores do (what NMS followed by a fixed-size pad gives)."""

    def __init__(self):
        super().__init__()
        self.pair = _PairDetector()

    def forward(self, x):
        boxes, cls = self.pair(x)
        score, label = cls.max(-1)
        kept = score.topk(3, dim=1).indices
        b = boxes.gather(1, kept[..., None].expand(-1, -1, 4))
        return torch.cat([b, score.gather(1, kept)[..., None], label.gather(1, kept)[..., None].float()], -1)


def _iou_torch(ref, boxes):
    lt, rb = torch.maximum(ref[:2], boxes[..., :2]), torch.minimum(ref[2:], boxes[..., 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return inter / ((ref[2] - ref[0]) * (ref[3] - ref[1]) + area - inter)


def _export_multi(src, x, path, names):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(src, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=names, dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    return path


@pytest.mark.parametrize("scores_last", [False, True], ids=["scores_BNC", "scores_BCN"])
def test_a_boxes_scores_pair_is_joined_and_explained_as_autograd_of_the_similarity(scores_last, tmp_path):
    from onnx_explain.detectors import box_output_pair, prepare_box_target

    src = _PairDetector(scores_last).eval()
    x = np.random.default_rng(7).standard_normal((2, 1, 16, 16)).astype(np.float32)
    model = oe.load(_export_multi(src, torch.from_numpy(x), tmp_path / "pair.onnx", ["boxes", "scores"]),
                    output="boxes")  # fmt: skip
    assert box_output_pair(model) == ("boxes", "scores", "anchors_last" if scores_last else "anchors_first")
    box = [8.0, 4.0, 12.0, 8.0]  # cell 6's box before its shift
    joined, target = prepare_box_target(model, {"box": box, "class": 1})
    r = oe.explain(joined, x, "gradient", target=target, output="output")
    assert (
        r.extras["layout"] == "xyxy"
        and r.extras["layout_from"] == "given; the (boxes, scores) outputs joined"
    )
    ref = torch.tensor(box)

    def similarity(xt):  # max over proposals of IoU · cos(one-hot class 1, P_j)
        boxes, cls = src(xt)
        cls = cls.transpose(1, 2) if scores_last else cls
        return (_iou_torch(ref, boxes) * cls[..., 1] / cls.norm(dim=-1)).max(1).values

    xt = torch.from_numpy(x).requires_grad_(True)
    s = similarity(xt)
    s.sum().backward()
    with torch.no_grad():
        boxes = src(torch.from_numpy(x))[0]
        want_match = (_iou_torch(ref, boxes) * src(torch.from_numpy(x))[1].transpose(1, 2)[..., 1]
                      if scores_last else _iou_torch(ref, boxes) * src(torch.from_numpy(x))[1][..., 1])  # fmt: skip
    np.testing.assert_array_equal(r.extras["matched_proposal"], [6, 6])
    np.testing.assert_allclose(r.extras["matched_box"], boxes[:, 6].numpy(), rtol=1e-6)
    np.testing.assert_allclose(r.score, s.detach().numpy(), rtol=1e-5)
    assert_gradients_match(r.attribution, xt.grad.numpy())
    assert (want_match.argmax(1) == 6).all()
    bg = oe.explain(joined, x, "gradient", target={**target, "background": 0}, output="output")
    with torch.no_grad():  # column 0 left out: the class vector is (0, p1), its cosine with class 1 is 1
        np.testing.assert_allclose(bg.score, _iou_torch(ref, boxes).max(1).values.numpy(), rtol=1e-5)
    with pytest.raises(InputDataError, match="class 0 is the background column"):
        oe.explain(joined, x, "gradient", target={**target, "class": 0, "background": 0}, output="output")
    with pytest.raises(InputDataError, match="no proposal overlaps the reference box"):
        oe.explain(joined, x, "gradient", target={"box": [100, 100, 110, 110], "class": 0, "layout": "xyxy"},
                   output="output")  # fmt: skip


def test_post_nms_detections_pass_gradient_through_the_kept_boxes_and_scores(tmp_path):
    src = _PostNMS().eval()
    x = np.random.default_rng(8).standard_normal((2, 1, 16, 16)).astype(np.float32)
    x[:, :, 4:8, 8:12] -= 2.0  # cell 6 is kept first in both samples (the head weights are negative)
    model = oe.load(_export_multi(src, torch.from_numpy(x), tmp_path / "nms.onnx", ["dets"]))
    with torch.no_grad():
        dets = src(torch.from_numpy(x))
    k = int((dets[0, :, :4] - _cell_boxes(torch.from_numpy(x))[0, 6]).abs().sum(1).argmin())
    c = int(dets[0, k, 5])
    box = [8.0, 4.0, 12.0, 8.0]
    r = oe.explain(model, x, "gradient", target={"box": box, "class": c}, output="output")
    assert r.extras["layout"] == "post_nms" and r.extras["layout_from"].startswith("detected")
    ref = torch.tensor(box)

    def similarity(xt):  # IoU · [label = c] · score, max over the kept detections (indices as at x)
        d = src(xt)
        return (_iou_torch(ref, d[..., :4]) * (d[..., 5] == c) * d[..., 4]).max(1).values

    xt = torch.from_numpy(x).requires_grad_(True)
    s = similarity(xt)
    s.sum().backward()
    assert r.extras["matched_proposal"][0] == k
    np.testing.assert_allclose(r.score, s.detach().numpy(), rtol=1e-5)
    assert_gradients_match(r.attribution, xt.grad.numpy())
    inside = np.zeros((16, 16), bool)
    inside[4:8, 8:12] = True  # the matched detection's box and score come from its own cell only
    assert (r.attribution[:, 0][:, ~inside] == 0).all()
    with pytest.raises(InputDataError, match="no proposal overlaps the reference box"):
        oe.explain(model, x, "gradient", target={"box": [100, 100, 110, 110], "class": c}, output="output")


def _with_nms(pair_path, path):
    """The pair detector's graph followed by NonMaxSuppression (3 boxes per class, IoU 0.5) and the kept
    detections [x1, y1, x2, y2, score, class] as its only output (1, M, 6) — a post-NMS export."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(pair_path))
    g = m.graph

    def const(name, v, t):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, t, [len(v)], v))

    g.node.extend([
        helper.make_node("Transpose", ["scores"], ["scores_T"], perm=[0, 2, 1]),
        const("max_k", [3], TensorProto.INT64), const("iou_t", [0.5], TensorProto.FLOAT),
        helper.make_node("NonMaxSuppression", ["boxes", "scores_T", "max_k", "iou_t"], ["sel"]),
        const("bj", [0, 2], TensorProto.INT64), const("cj", [1], TensorProto.INT64),
        helper.make_node("Gather", ["sel", "bj"], ["sel_box"], axis=1),
        helper.make_node("GatherND", ["boxes", "sel_box"], ["kept_boxes"]),
        helper.make_node("GatherND", ["scores_T", "sel"], ["kept_scores_flat"]),
        helper.make_node("Unsqueeze", ["kept_scores_flat", "cj"], ["kept_scores"]),
        helper.make_node("Gather", ["sel", "cj"], ["kept_class_i"], axis=1),
        helper.make_node("Cast", ["kept_class_i"], ["kept_class"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["kept_boxes", "kept_scores", "kept_class"], ["dets_2d"], axis=1),
        const("zero", [0], TensorProto.INT64),
        helper.make_node("Unsqueeze", ["dets_2d", "zero"], ["dets"]),
    ])  # fmt: skip
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("dets", TensorProto.FLOAT, [1, "kept", 6]))
    onnx.save(m, str(path))
    return path


def test_a_graph_with_nms_is_explained_on_its_proposals_before_nms(tmp_path):
    from onnx_explain.detectors import prepare_box_target

    src = _PairDetector().eval()
    x = np.random.default_rng(7).standard_normal((2, 1, 16, 16)).astype(np.float32)
    pair = _export_multi(src, torch.from_numpy(x), tmp_path / "pair.onnx", ["boxes", "scores"])
    model = oe.load(_with_nms(pair, tmp_path / "nms.onnx"))
    box = [8.0, 4.0, 12.0, 8.0]
    cut, target = prepare_box_target(model, {"box": box, "class": 1})
    assert [n.op_type for n in cut.proto.graph.node].count("NonMaxSuppression") == 0
    r = oe.explain(
        cut, x, "gradient", target=target, output="output"
    )  # a batch: NMS's inputs are batch-first
    assert r.extras["layout"] == "xyxy" and "NonMaxSuppression" in r.extras["layout_from"]
    ref = torch.tensor(box)
    xt = torch.from_numpy(x).requires_grad_(True)
    boxes, cls = src(xt)
    s = (_iou_torch(ref, boxes) * cls[..., 1] / cls.norm(dim=-1)).max(1).values
    s.sum().backward()
    np.testing.assert_array_equal(r.extras["matched_proposal"], [6, 6])
    np.testing.assert_allclose(r.score, s.detach().numpy(), rtol=1e-5)
    assert_gradients_match(r.attribution, xt.grad.numpy())
    with torch.no_grad():  # the cut graph's output is NMS's inputs, as onnxruntime computes them
        b, c = src(torch.from_numpy(x))
    np.testing.assert_allclose(cut.predict(x), torch.cat([b, c], 2).numpy(), rtol=1e-5, atol=1e-6)
    dets = model.predict(x[:1])[0]  # the file itself: kept detections, each one of the proposals
    assert 1 <= len(dets) <= 6 and dets.shape[1] == 6
    for d in dets:
        j = int(np.abs(b[0].numpy() - d[:4]).sum(1).argmin())
        np.testing.assert_allclose(d[:5], [*b[0, j].numpy(), c[0, j, int(d[5])]], rtol=1e-5)


def test_all_on_the_last_axis_sums_it(tagger):
    _, model, x = tagger
    whole = oe.explain(model, x, "gradient", target=("all", "all"), output="output")
    parts = [
        oe.explain(model, x, "gradient", target=("all", c), output="output") for c in range(whole_c(model, x))
    ]
    np.testing.assert_allclose(whole.attribution, sum(e.attribution for e in parts), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(whole.score, model.predict(x).reshape(len(x), -1).sum(1), rtol=1e-4)


def whole_c(model, x) -> int:
    return int(model.predict(x).shape[-1])


class _Tagger(torch.nn.Module):
    """x (B, L, 4) -> per-position scores (B, L, 3), the way token taggers export with a symbolic L."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(4, 6, 3, padding=1)
        self.out = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.conv(x.transpose(1, 2))).transpose(1, 2))


class _FlatTagger(_Tagger):
    def forward(self, x):
        return super().forward(x).flatten(1)


@pytest.mark.parametrize("target", ["2,1", (3, 0)])
def test_metrics_read_an_output_with_a_symbolic_axis_as_explain_does(target, tmp_path):
    # an output [B, L, C] with L symbolic: evaluate resolves the target on the rows' own shape (before: "the
    # output [B, 18] needs 1 part"), and scores what the same network with its output flattened scores for
    # the flat index of that element
    import warnings

    x = np.random.default_rng(0).standard_normal((3, 6, 4)).astype(np.float32)
    pos, cls = (2, 1) if target == "2,1" else target
    got = {}
    for net, flat in ((_Tagger().eval(), False), (_FlatTagger().eval(), True)):
        path = tmp_path / f"tagger_{flat}.onnx"
        dyn = {"x": {0: "b", 1: "len"}, "y": {0: "b", 1: "len"}}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.from_numpy(x),), str(path), dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y"], dynamic_axes=dyn)  # fmt: skip
        m = oe.load(path)
        t = pos * 3 + cls if flat else target
        e = oe.explain(m, x, "gradient_x_input", target=t)
        got[flat] = (e.attribution, oe.evaluate(m, x, e.attribution, "deletion", target=t)["scores"])
    np.testing.assert_allclose(got[False][0], got[True][0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got[False][1], got[True][1], rtol=1e-6, atol=1e-7)
