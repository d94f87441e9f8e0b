"""Tree ensembles read out of an ONNX graph: ``TreeEnsembleClassifier`` / ``TreeEnsembleRegressor``
(``ai.onnx.ml`` 1–3, tensor attributes included) and ``TreeEnsemble`` (``ai.onnx.ml`` 5), as one set of
flat node arrays and root-to-leaf *paths*.

The ensemble is kept in **margin space**: ``margin[:, k] = base[k] + Σ_trees value(leaf, k)``, the scores
before ``post_transform``. onnxruntime's output is :meth:`Trees.finalize` of the margins, following its
kernels (``tree_ensemble_aggregator.h``, ``ml_common.h::write_scores``) to the letter, binary special cases
included: a binary classifier whose leaves carry one class writes ``[-s, s]`` (``[σ(-s), σ(s)]`` after
LOGISTIC) or, when every weight is positive, ``[1 - s, s]`` with no transform. Each column of the margin is
then an affine function of the tree sums, which is what TreeSHAP attributes
(:mod:`onnx_explain.tabular.treeshap`). ``AVERAGE`` is folded into the leaf values (1/n_trees); ``MIN``
and ``MAX`` are not additive: predicted, never attributed.

A node's decision ("x goes to the true child") is onnxruntime's: ``x ≤ t`` (``BRANCH_LEQ``), ``<``, ``≥``,
``>``, ``==``, ``!=`` or membership, or a missing value (NaN) where the node tracks missing values to the
true child. Thresholds compare in the precision onnxruntime uses: float attributes as float32, the
``*_as_tensor`` doubles as float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import InputDataError, OnnxExplainError

__all__ = ["TREE_OPS", "Trees", "read_trees", "tree_nodes"]

ML = "ai.onnx.ml"
TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble")
#: node modes (the opset-5 codes)
LEQ, LT, GTE, GT, EQ, NEQ, MEMBER, LEAF = range(8)
_MODES = {b"BRANCH_LEQ": LEQ, b"BRANCH_LT": LT, b"BRANCH_GTE": GTE, b"BRANCH_GT": GT, b"BRANCH_EQ": EQ,
          b"BRANCH_NEQ": NEQ, b"LEAF": LEAF}  # fmt: skip
_POST = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")
_AGGREGATE = ("AVERAGE", "SUM", "MIN", "MAX")  # opset-5 codes 0..3


class TreeModelError(OnnxExplainError):
    """The tree node cannot be read (inconsistent attributes, an unknown mode) or not attributed as asked."""


@dataclass
class Trees:
    """A tree ensemble in margin space.

    Attributes
    ----------
    feature, threshold, mode, true_child, false_child, missing_true : numpy.ndarray
        One entry per node of every tree (global indices; leaves have mode ``LEAF`` and children -1).
    members : dict of int to numpy.ndarray
        The value sets of ``BRANCH_MEMBER`` nodes.
    values : numpy.ndarray
        ``(n_nodes, n_outputs)``: what a leaf adds to each margin column (zero rows for branches).
    base : numpy.ndarray
        ``(n_outputs,)``: the margins of an input that reaches no weighted leaf.
    roots : numpy.ndarray
        The root node of each tree.
    post : str
        ``post_transform`` applied to the margins (``'NONE'``, ``'SOFTMAX'``, ``'LOGISTIC'``,
        ``'SOFTMAX_ZERO'``, ``'PROBIT'``), or ``'BINARY'``: onnxruntime's binary layout, already in the
        margins (their columns are the output, a LOGISTIC then applied column-wise when ``binary_logistic``).
    aggregate : str
        ``'SUM'`` (``AVERAGE`` folded into ``values``), ``'MIN'`` or ``'MAX'``.
    n_features : int
        Columns the trees read (the largest feature id + 1).
    op, node_name : str
        The ONNX op type and node name (for messages).
    labels : list
        The class labels of a classifier (None for a regressor).
    """

    feature: np.ndarray
    threshold: np.ndarray
    mode: np.ndarray
    true_child: np.ndarray
    false_child: np.ndarray
    missing_true: np.ndarray
    values: np.ndarray
    base: np.ndarray
    roots: np.ndarray
    post: str = "NONE"
    aggregate: str = "SUM"
    binary_logistic: bool = False
    members: dict = field(default_factory=dict)
    n_features: int = 0
    op: str = ""
    node_name: str = ""
    labels: list | None = None
    double: bool = False  # thresholds and sums in float64 (the *_as_tensor attributes)
    _paths: object = None

    @property
    def n_outputs(self) -> int:
        return self.values.shape[1]

    @property
    def n_trees(self) -> int:
        return len(self.roots)

    def where(self) -> str:
        return f"node {self.node_name!r} ({self.op})"

    # ------------------------------------------------------------------ decisions
    def check_rows(self, x: np.ndarray) -> np.ndarray:
        """``x`` as a (rows, features) float array the trees can read, or an :class:`InputDataError`."""
        x = np.asarray(x)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2:
            raise InputDataError(f"{self.where()} reads rows of features: got an array of shape {x.shape}")
        if x.shape[1] < self.n_features:
            raise InputDataError(
                f"{self.where()} reads feature {self.n_features - 1}: rows have {x.shape[1]} columns"
            )
        if x.dtype.kind not in "fiub":
            raise InputDataError(f"{self.where()} reads numbers: got dtype {x.dtype}")
        if self.double:
            return x.astype(np.float64, copy=False)
        return x.astype(np.float32, copy=False)

    def decisions(self, x: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """``(rows, len(nodes))`` bool: whether each row goes to the *true* child of each branch node."""
        return _decide(self, x[:, self.feature[nodes]], nodes)

    # ------------------------------------------------------------------ paths
    @property
    def paths(self) -> Paths:
        """The root-to-leaf paths (built once)."""
        if self._paths is None:
            self._paths = Paths.build(self)
        return self._paths

    def margins(self, x: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """``(rows, n_outputs)`` margins (float64) of rows ``x``, ``SUM`` aggregation only."""
        if self.aggregate != "SUM":
            raise TreeModelError(f"{self.where()} aggregates trees by {self.aggregate}: no additive margin")
        x = self.check_rows(x)
        p = self.paths
        out = np.empty((len(x), self.n_outputs))
        for i in range(0, len(x), chunk):
            reached = p.patterns(self, x[i : i + chunk]) == p.full  # (rows, leaves)
            out[i : i + chunk] = reached.astype(np.float64) @ p.values + self.base
        return out

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """``(rows, n_trees)``: the global index of the leaf each row reaches in each tree."""
        x = self.check_rows(x)
        node = np.repeat(self.roots[None, :], len(x), axis=0)
        for _ in range(len(self.feature)):
            branch = self.mode[node] != LEAF
            if not branch.any():
                return node
            r, t = np.nonzero(branch)
            n = node[r, t]
            go = _decide_pairs(self, x[r], n)
            node[r, t] = np.where(go, self.true_child[n], self.false_child[n])
        raise TreeModelError(f"{self.where()} has a cycle among its nodes")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """onnxruntime's scores output for rows ``x`` (float64), from the trees."""
        x = self.check_rows(x)
        if self.aggregate == "SUM":
            return self.finalize(self.margins(x))
        leaf = self.leaves(x)  # MIN / MAX over the trees' leaf values
        vals = self.values[leaf]  # (rows, trees, outputs)
        weighted = self._weighted[leaf]  # leaves without a weight for an output do not take part
        fill = np.inf if self.aggregate == "MIN" else -np.inf
        vals = np.where(weighted, vals, fill)
        agg = vals.min(axis=1) if self.aggregate == "MIN" else vals.max(axis=1)
        agg = np.where(np.isfinite(agg), agg, 0.0)
        return self.finalize(agg + self.base)

    _weighted: np.ndarray | None = None

    def finalize(self, m: np.ndarray) -> np.ndarray:
        """onnxruntime's output from margins ``m`` (its ``post_transform`` and binary layouts)."""
        m = np.asarray(m, dtype=np.float64)
        if self.post == "BINARY":
            return 1.0 / (1.0 + np.exp(-m)) if self.binary_logistic else m
        return post_transform(m, self.post)


def post_transform(m: np.ndarray, how: str) -> np.ndarray:
    """onnxruntime's ``write_scores`` on rows of margins ``m`` (one column: PROBIT only)."""
    from scipy.special import ndtri

    if how == "NONE":
        return m
    if how == "PROBIT":
        return ndtri(m)
    if m.shape[1] == 1:
        return m  # a single score: onnxruntime applies no other transform
    if how == "LOGISTIC":
        return 1.0 / (1.0 + np.exp(-m))
    if how == "SOFTMAX":
        e = np.exp(m - m.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if how == "SOFTMAX_ZERO":
        nz = m != 0
        e = np.where(nz, np.exp(m - np.where(nz, m, -np.inf).max(axis=1, keepdims=True)), 0.0)
        return e / np.maximum(e.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    raise TreeModelError(f"unknown post_transform {how!r}")


def _decide(trees: Trees, v: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """onnxruntime's decision (true child?) of node ``nodes[j]`` for the values ``v[..., j]`` of its feature:
    one comparison per mode present, membership, and missing values tracked to the true side."""
    thr = trees.threshold[nodes].astype(v.dtype)
    mode = trees.mode[nodes]
    out = np.zeros(v.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        for code, op in ((LEQ, np.less_equal), (LT, np.less), (GTE, np.greater_equal), (GT, np.greater),
                         (EQ, np.equal), (NEQ, np.not_equal)):  # fmt: skip
            cols = np.flatnonzero(mode == code)
            if len(cols):
                out[..., cols] = op(v[..., cols], thr[cols])
    for j in np.flatnonzero(mode == MEMBER):
        out[..., j] = np.isin(v[..., j], trees.members[int(nodes[j])])
    missing = trees.missing_true[nodes]
    if missing.any():
        out |= np.isnan(v) & missing
    return out


def _decide_pairs(trees: Trees, x: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Row i's decision at node ``nodes[i]`` (one node per row)."""
    return _decide(trees, x[np.arange(len(x)), trees.feature[nodes]][None], nodes)[0]


@dataclass
class Paths:
    """Every root-to-leaf path of the ensemble, with its *unique* features (slots).

    For leaf ``l``: ``nodes[l, :depth[l]]`` the branch nodes on its path, ``side[l, j]`` whether the path
    takes node j's true child, ``slot[l, j]`` the slot of node j's feature among ``slot_feature[l]``
    (``n_slots[l]`` unique features). A row's *pattern* on leaf l has bit s set when the row takes the
    path's way at every node on slot s's feature; it reaches the leaf when all bits are set (``full``).
    """

    leaf: np.ndarray  # (L,) global node index of the leaf
    tree: np.ndarray  # (L,) the tree it belongs to
    nodes: np.ndarray  # (L, D) branch nodes (padded with -1)
    side: np.ndarray  # (L, D) bool
    slot: np.ndarray  # (L, D) int (padded with 0)
    slot_feature: np.ndarray  # (L, S) int (padded with -1)
    n_slots: np.ndarray  # (L,)
    values: np.ndarray  # (L, n_outputs)
    full: np.ndarray  # (L,) int64: all n_slots bits set

    @classmethod
    def build(cls, trees: Trees) -> Paths:
        """All paths at once, vectorised over leaves (a LightGBM of 10⁴ trees has millions of them)."""
        n = len(trees.feature)
        branch = np.flatnonzero(trees.mode != LEAF)
        refs = np.bincount(np.concatenate([trees.true_child[branch], trees.false_child[branch]]), minlength=n)
        if (refs > 1).any():
            j = int(np.flatnonzero(refs > 1)[0])
            raise TreeModelError(
                f"{trees.where()}: node {j} has several parents (the graph is not a set of trees)"
            )
        parent = np.full(n, -1, dtype=np.int64)
        side_of = np.zeros(n, dtype=bool)  # whether a node is its parent's true child
        parent[trees.false_child[branch]] = branch
        parent[trees.true_child[branch]] = branch
        side_of[trees.true_child[branch]] = True
        tree_of = np.full(n, -1, dtype=np.int64)
        tree_of[trees.roots] = np.arange(len(trees.roots))
        leaf = np.flatnonzero(trees.mode == LEAF)
        # walk every leaf up to its root: depth first, then the path from the root down
        depth = np.zeros(len(leaf), dtype=np.int64)
        cur = leaf.copy()
        for _ in range(n + 1):
            up = parent[cur]
            moving = up >= 0
            if not moving.any():
                break
            depth += moving
            cur = np.where(moving, up, cur)
        else:
            raise TreeModelError(f"{trees.where()} has a cycle among its nodes")
        keep = tree_of[cur] >= 0  # leaves whose root is a tree root (no orphans)
        leaf, depth, root = leaf[keep], depth[keep], cur[keep]
        L, D = len(leaf), max(int(depth.max(initial=0)), 1)
        nodes = np.full((L, D), -1, dtype=np.int64)
        side = np.zeros((L, D), dtype=bool)
        child, pos = leaf.copy(), depth - 1
        for _ in range(D):
            up = parent[child]
            ok = (up >= 0) & (pos >= 0)
            rows = np.flatnonzero(ok)
            nodes[rows, pos[rows]] = up[rows]
            side[rows, pos[rows]] = side_of[child[rows]]
            child = np.where(ok, up, child)
            pos = pos - 1
        feat = np.where(nodes >= 0, trees.feature[np.maximum(nodes, 0)], -1)
        slot = np.zeros((L, D), dtype=np.int64)
        n_slots = np.zeros(L, dtype=np.int64)
        slot_feature = np.full((L, D), -1, dtype=np.int64)
        for j in range(D):  # a feature's slot: the order of its first appearance on the path
            f = feat[:, j]
            valid = f >= 0
            match = (feat[:, :j] == f[:, None]) & valid[:, None] if j else np.zeros((L, 0), dtype=bool)
            seen = match.any(1)
            first = match.argmax(1) if j else np.zeros(L, dtype=np.int64)
            new = valid & ~seen
            slot[:, j] = np.where(seen, slot[np.arange(L), first], np.where(new, n_slots, 0))
            slot_feature[np.flatnonzero(new), n_slots[new]] = f[new]
            n_slots += new
        S = max(int(n_slots.max(initial=0)), 1)
        if S > 62:
            raise TreeModelError(f"{trees.where()} has a path over {S} distinct features (62 at most)")
        return cls(
            leaf=leaf,
            tree=tree_of[root],
            nodes=nodes,
            side=side,
            slot=slot,
            slot_feature=slot_feature[:, :S],
            n_slots=n_slots,
            values=trees.values[leaf],
            full=(np.int64(1) << n_slots) - 1,
        )

    def patterns(self, trees: Trees, x: np.ndarray, leaves: np.ndarray | None = None) -> np.ndarray:
        """``(rows, L)`` patterns of rows ``x`` (already checked) on every path (or on paths ``leaves``):
        uint8 when those paths have at most 8 slots, else int64."""
        nodes, side, slot = self.nodes, self.side, self.slot
        full = self.full
        if leaves is not None:
            nodes, side, slot, full = nodes[leaves], side[leaves], slot[leaves], full[leaves]
        wide = (
            bool(len(full)) and int(self.n_slots.max() if leaves is None else self.n_slots[leaves].max()) > 8
        )
        dtype = np.int64 if wide else np.uint8
        branch = np.unique(nodes[nodes >= 0])
        if len(branch) == 0:
            return np.broadcast_to(full.astype(dtype), (len(x), len(full))).copy()
        pos = np.full(len(trees.feature), -1, dtype=np.int64)
        pos[branch] = np.arange(len(branch))
        dec = trees.decisions(x, branch)  # (rows, branch nodes)
        col = pos[np.maximum(nodes, 0)]
        bits = np.where(nodes >= 0, np.left_shift(1, slot), 0).astype(dtype)  # (L, D); padding: no bit
        bad = np.zeros((len(x), len(full)), dtype=dtype)
        for j in range(nodes.shape[1]):
            off = dec[:, col[:, j]] != side[None, :, j]  # (rows, L): the row leaves the path here
            bad |= off * bits[None, :, j]
        return full.astype(dtype)[None, :] & ~bad


# ---------------------------------------------------------------------------------------------- reading
def tree_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The tree-ensemble nodes of ``graph`` (top level)."""
    return [n for n in graph.node if n.domain == ML and n.op_type in TREE_OPS]


def node_attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        out[a.name] = v
    return out


def _pick(a: dict, name: str, default=None):
    """An attribute, its ``_as_tensor`` twin taking precedence (as float64)."""
    if name + "_as_tensor" in a:
        return np.asarray(a[name + "_as_tensor"], dtype=np.float64).reshape(-1), True
    if name in a:
        return np.asarray(a[name], dtype=np.float64).reshape(-1), False
    return (None if default is None else np.asarray(default, dtype=np.float64)), False


def attr_text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def read_trees(node: onnx.NodeProto) -> Trees:
    """The :class:`Trees` of one ``TreeEnsembleClassifier`` / ``TreeEnsembleRegressor`` / ``TreeEnsemble`` node."""
    if node.op_type == "TreeEnsemble":
        return _read_v5(node)
    a = node_attrs(node)
    where = f"node {node.name!r} ({node.op_type})"
    try:
        tree_ids = np.asarray(a["nodes_treeids"], dtype=np.int64)
        node_ids = np.asarray(a["nodes_nodeids"], dtype=np.int64)
        feature = np.asarray(a["nodes_featureids"], dtype=np.int64)
        modes = np.array([_MODES[m if isinstance(m, bytes) else m.encode()] for m in a["nodes_modes"]])
        true_ids = np.asarray(a["nodes_truenodeids"], dtype=np.int64)
        false_ids = np.asarray(a["nodes_falsenodeids"], dtype=np.int64)
    except KeyError as exc:
        raise TreeModelError(f"{where}: attribute or node mode {exc} is missing or unknown") from None
    threshold, double = _pick(a, "nodes_values", np.zeros(len(tree_ids)))
    n = len(tree_ids)
    if not all(len(v) == n for v in (node_ids, feature, modes, true_ids, false_ids, threshold)):
        raise TreeModelError(f"{where}: the nodes_* attributes differ in length")
    missing = np.asarray(a.get("nodes_missing_value_tracks_true", np.zeros(n)), dtype=bool)
    if len(missing) != n:
        missing = np.zeros(n, dtype=bool)
    base_key = int(node_ids.max(initial=0)) + 2
    keys = tree_ids * base_key + node_ids
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    if (np.diff(sorted_keys) == 0).any():
        raise TreeModelError(f"{where}: a (tree id, node id) pair appears twice")

    def lookup(t_ids, n_ids, what):
        k = np.asarray(t_ids, dtype=np.int64) * base_key + np.asarray(n_ids, dtype=np.int64)
        at = np.clip(np.searchsorted(sorted_keys, k), 0, len(sorted_keys) - 1)
        found = sorted_keys[at] == k if len(sorted_keys) else np.zeros(len(k), dtype=bool)
        if not found.all():
            j = int(np.flatnonzero(~found)[0])
            raise TreeModelError(
                f"{where}: {what} refers to node ({t_ids[j]}, {n_ids[j]}), which is not defined"
            )
        return order[at]

    def child(ids):
        out = np.full(n, -1, dtype=np.int64)
        b = np.flatnonzero(modes != LEAF)
        out[b] = lookup(tree_ids[b], ids[b], "a branch")
        return out

    true_child, false_child = child(true_ids), child(false_ids)
    classifier = node.op_type == "TreeEnsembleClassifier"
    prefix = "class" if classifier else "target"
    w_tree = np.asarray(a.get(f"{prefix}_treeids", []), dtype=np.int64)
    w_node = np.asarray(a.get(f"{prefix}_nodeids", []), dtype=np.int64)
    w_id = np.asarray(a.get(f"{prefix}_ids", []), dtype=np.int64)
    w_val, dw = _pick(a, f"{prefix}_weights", [])
    double = double or dw
    if classifier:
        labels = list(a.get("classlabels_int64s", [])) or [
            attr_text(s) for s in a.get("classlabels_strings", [])
        ]
        n_out = len(labels)
    else:
        labels = None
        n_out = int(a.get("n_targets", 1))
    if n_out < 1:
        raise TreeModelError(f"{where}: no class labels / targets")
    raw = np.zeros((n, n_out))
    has = np.zeros((n, n_out), dtype=bool)
    if not len(w_tree) == len(w_node) == len(w_id) == len(w_val):
        raise TreeModelError(f"{where}: the {prefix}_* attributes differ in length")
    if len(w_tree):
        if ((w_id < 0) | (w_id >= n_out)).any():
            raise TreeModelError(f"{where}: a leaf weight is for output {int(w_id.max())}; there are {n_out}")
        k = lookup(w_tree, w_node, "a leaf weight")
        np.add.at(raw, (k, w_id), w_val)
        has[k, w_id] = True
    base, db = _pick(a, "base_values", [])
    double = double or db
    post = attr_text(a.get("post_transform", b"NONE"))
    if post not in _POST:
        raise TreeModelError(f"{where}: unknown post_transform {post!r}")
    tree_set = np.unique(tree_ids)
    roots = lookup(tree_set, np.zeros(len(tree_set), dtype=np.int64), "a tree's root (node 0)")
    aggregate = "SUM" if classifier else attr_text(a.get("aggregate_function", b"SUM"))
    if aggregate not in _AGGREGATE:
        raise TreeModelError(f"{where}: unknown aggregate_function {aggregate!r}")
    trees = Trees(
        feature=np.where(modes == LEAF, 0, feature), threshold=threshold, mode=modes, true_child=true_child,
        false_child=false_child, missing_true=missing, values=raw, base=np.zeros(n_out), roots=roots,
        post=post, aggregate=aggregate, n_features=int(feature[modes != LEAF].max(initial=-1)) + 1,
        op=node.op_type, node_name=node.name, labels=labels, double=double,
    )  # fmt: skip
    trees._weighted = has
    if classifier:
        _classifier_layout(trees, raw, has, base, where, bool(np.all(w_val >= 0)))
    else:
        _regressor_layout(trees, base)
    return trees


def _regressor_layout(trees: Trees, base: np.ndarray) -> None:
    """onnxruntime's regressor: margins = Σ (or mean) + base values (one base value: added to target 0)."""
    if trees.aggregate == "AVERAGE":
        trees.values = trees.values / max(trees.n_trees, 1)
        trees.aggregate = "SUM"
    if len(base) == trees.n_outputs:
        trees.base = base.copy()


def _classifier_layout(trees: Trees, raw, has, base, where: str, all_positive: bool) -> None:
    """onnxruntime's classifier (``TreeAggregatorClassifier::FinalizeScores``) as margins."""
    n_out = trees.n_outputs
    used = has.any(axis=0)
    if n_out > 2:
        trees.base = np.zeros(n_out)
        trees.base[: min(len(base), n_out)] = base[:n_out]
        return
    if n_out != 2:
        raise TreeModelError(f"{where}: a classifier with {n_out} class label(s)")
    # onnxruntime decides per row whether class 1 was scored: supported when every leaf agrees
    leaves = trees.mode == LEAF
    if used[1] and not has[leaves, 1].all():
        raise TreeModelError(
            f"{where}: some leaves weight class 1 and others do not (onnxruntime's output then depends on "
            "the row in a way that is not a margin): not supported"
        )
    if len(base) == 2:
        if used[1]:  # onnxruntime: s1 = b1 + raw0, s0 = -s1 (raw1 is not read)
            v = raw[:, 0]
            trees.values = np.stack([-v, v], axis=1)
            trees.base = np.array([-base[1], base[1]])
        else:  # "binary as multiclass"
            trees.base = base[:2].copy()
        return
    if used[1]:  # both classes scored: a plain vector (+ base[0] on class 0)
        trees.base = np.array([base[0] if len(base) == 1 else 0.0, 0.0])
        return
    # one score s = raw0 (+ base[0]): onnxruntime's binary layouts
    s_base = base[0] if len(base) == 1 else 0.0
    v = raw[:, 0]
    if trees.post == "PROBIT":
        raise TreeModelError(
            f"{where}: a one-score binary classifier with PROBIT (one output column): not supported"
        )
    trees.values = np.stack([-v, v], axis=1)
    if int(used.sum()) == 1 and all_positive:  # [1 - s, s], no transform
        trees.base = np.array([1.0 - s_base, s_base])
        trees.post = "BINARY"
        return
    trees.base = np.array([-s_base, s_base])
    trees.binary_logistic = trees.post == "LOGISTIC"
    trees.post = "BINARY"


def _read_v5(node: onnx.NodeProto) -> Trees:
    """``TreeEnsemble`` (ai.onnx.ml 5): leaves are separate from branch nodes; modes are codes."""
    a = node_attrs(node)
    where = f"node {node.name!r} ({node.op_type})"
    try:
        feat = np.asarray(a["nodes_featureids"], dtype=np.int64)
        splits = np.asarray(a["nodes_splits"]).reshape(-1)
        modes = np.asarray(a["nodes_modes"], dtype=np.int64).reshape(-1)
        t_ids = np.asarray(a["nodes_truenodeids"], dtype=np.int64)
        f_ids = np.asarray(a["nodes_falsenodeids"], dtype=np.int64)
        t_leaf = np.asarray(a.get("nodes_trueleafs", np.zeros(len(feat))), dtype=bool)
        f_leaf = np.asarray(a.get("nodes_falseleafs", np.zeros(len(feat))), dtype=bool)
        roots = np.asarray(a["tree_roots"], dtype=np.int64)
        leaf_t = np.asarray(a["leaf_targetids"], dtype=np.int64)
        leaf_w = np.asarray(a["leaf_weights"], dtype=np.float64).reshape(-1)
    except KeyError as exc:
        raise TreeModelError(f"{where}: attribute {exc} is missing") from None
    double = splits.dtype == np.float64
    nb, nl = len(feat), len(leaf_t)
    if ((modes < 0) | (modes > MEMBER)).any():
        raise TreeModelError(f"{where}: unknown node mode code in {sorted(set(modes.tolist()))}")
    missing = np.asarray(a.get("nodes_missing_value_tracks_true", np.zeros(nb)), dtype=bool)
    n_out = int(a.get("n_targets", 1))
    # global layout: branch nodes first, then one leaf per reference to a leaf (a leaf referred to twice,
    # as the two sides of a one-leaf tree's root or from two trees, becomes two leaves: paths stay a tree)
    refs_t, refs_f = np.flatnonzero(t_leaf), np.flatnonzero(f_leaf)
    leaf_ids = np.concatenate([t_ids[refs_t], f_ids[refs_f]])
    if len(leaf_ids) and (leaf_ids.min() < 0 or leaf_ids.max() >= nl):
        raise TreeModelError(f"{where}: a node refers to leaf {int(leaf_ids.max())}; there are {nl}")
    n_leaves = len(leaf_ids)
    n = nb + n_leaves
    true_child = t_ids.copy()
    false_child = f_ids.copy()
    true_child[refs_t] = nb + np.arange(len(refs_t))
    false_child[refs_f] = nb + len(refs_t) + np.arange(len(refs_f))
    values = np.zeros((n, n_out))
    has = np.zeros((n, n_out), dtype=bool)
    if ((leaf_t < 0) | (leaf_t >= n_out)).any():
        raise TreeModelError(f"{where}: a leaf weight is for target {int(leaf_t.max())}; there are {n_out}")
    values[nb + np.arange(n_leaves), leaf_t[leaf_ids]] = leaf_w[leaf_ids]
    has[nb + np.arange(n_leaves), leaf_t[leaf_ids]] = True
    members = {}
    if (modes == MEMBER).any():
        mv = np.asarray(a.get("membership_values", []), dtype=np.float64).reshape(-1)
        sets = [g[~np.isnan(g)] for g in np.split(mv, np.flatnonzero(np.isnan(mv)) + 1)]  # NaN-separated
        for k, j in enumerate(np.flatnonzero(modes == MEMBER)):
            members[int(j)] = sets[k] if k < len(sets) else np.array([])
    trees = Trees(
        feature=np.concatenate([feat, np.zeros(n_leaves, dtype=np.int64)]),
        threshold=np.concatenate([splits.astype(np.float64), np.zeros(n_leaves)]),
        mode=np.concatenate([modes, np.full(n_leaves, LEAF)]),
        true_child=np.concatenate([true_child, np.full(n_leaves, -1)]),
        false_child=np.concatenate([false_child, np.full(n_leaves, -1)]),
        missing_true=np.concatenate([missing, np.zeros(n_leaves, dtype=bool)]), values=values, base=np.zeros(n_out),
        roots=roots, post=_POST[int(a.get("post_transform", 0))],
        aggregate=_AGGREGATE[int(a.get("aggregate_function", 1))], members=members,
        n_features=int(feat.max(initial=-1)) + 1, op=node.op_type, node_name=node.name, double=double,
    )  # fmt: skip
    trees._weighted = has
    _regressor_layout(trees, np.zeros(0))  # opset 5 has no base values
    return trees
