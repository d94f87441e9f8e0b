"""Exact TreeSHAP on the trees of an ONNX graph (:mod:`onnx_explain.tabular.trees`), in margin space.

Both of Lundberg et al.'s games are decomposed over root-to-leaf paths. On the path to leaf l, with unique
features (slots) s = 1..d, a row x either takes the path's way at every node on feature s (o_s = 1) or
not (o_s = 0). The path's contribution to the margin is a *product game*

    v_l(S) = value_l · Π_{s ∈ S} o_s · Π_{s ∉ S} z_s

- **path-dependent** (Lundberg 2020, Algorithm 2): z_s = the product over the path's nodes on feature s of
  cover(next node) / cover(node), the fraction of the cover that follows the path; the cover is counted
  on background data (ONNX trees store no sample counts), so the game is the tree's expectation over that
  data's node frequencies;
- **interventional** (against background rows b): z_s = o_s(b), averaged over the background.

Shapley values of a product game: φ_s = value · (o_s − z_s) · Σ_k k!(d−1−k)!/d! · e_k, with e_k the
coefficient of t^k in Π_{j≠s}(z_j + o_j t). A row's o's on a path form a d-bit *pattern*, so for paths of
up to :data:`TABLE_SLOTS` features the value of every pattern is tabulated once (2^d × d numbers per path;
for the interventional game, a histogram of the background's patterns times a fixed table of the
binary game), and explaining a row is a gather and a sum over its paths: vectorised over rows, with no
per-row Python loop, and independent of the background's size. Longer paths are computed row by row
block-wise with the same formulas. The expected value E is the game's value of the empty coalition:
Σ_l value_l Π_s z_s (+ the base values), so Σφ + E equals the margin exactly.
"""

from __future__ import annotations

from math import factorial

import numpy as np
import scipy.sparse as sp

from .trees import TreeModelError, Trees

__all__ = ["MODES", "TABLE_SLOTS", "TreeShap"]

MODES = ("interventional", "path_dependent")
#: paths with at most this many distinct features are tabulated (2^d patterns)
TABLE_SLOTS = 8
#: elements of the (rows, paths, slots) blocks held at once
_BLOCK = 1 << 23


def _weights(d: int) -> np.ndarray:
    """k!(d−1−k)!/d! for k = 0..d−1 (the Shapley weight of a coalition of size k among d players)."""
    return np.array([factorial(k) * factorial(d - 1 - k) / factorial(d) for k in range(d)])


def product_game(o: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Shapley values ``(..., d)`` of the unit product games ``v(S) = Π_{s∈S} o_s Π_{s∉S} z_s``, with o
    binary and 0 ≤ z ≤ 1: the product over all d factors is built once, and the factor of each slot is
    divided out (by z_s where o_s = 0; by synthetic division by (z_s + t) where o_s = 1, which only ever
    multiplies by z_s ≤ 1 and so does not grow rounding errors)."""
    d = o.shape[-1]
    shape = np.broadcast_shapes(o.shape, z.shape)
    if d == 0:
        return np.zeros(shape)
    w = _weights(d)
    o, z = np.broadcast_to(o, shape), np.broadcast_to(z, shape)
    p = np.zeros((d + 1, *shape[:-1]))  # coefficients of t^0 .. t^d, first axis
    p[0] = 1.0
    for j in range(d):
        zj, oj = z[..., j], o[..., j]
        p[1 : j + 2] = p[1 : j + 2] * zj + p[: j + 1] * oj
        p[0] = p[0] * zj
    out = np.empty(shape)
    for s in range(d):
        zs, os_ = z[..., s], o[..., s]
        # o_s = 1: p = (z_s + t) q, q of degree d - 1
        acc_one = np.zeros(shape[:-1])
        q = p[d].copy()
        acc_one += w[d - 1] * q
        for k in range(d - 1, 0, -1):
            q = p[k] - zs * q
            acc_one += w[k - 1] * q
        # o_s = 0: p = z_s q (q = 0 where z_s = 0: φ_s is 0 there anyway, o_s - z_s = 0)
        safe = np.where(zs > 0, zs, 1.0)
        acc_zero = np.tensordot(w, p[:d], axes=(0, 0)) / safe
        out[..., s] = (os_ - zs) * np.where(os_ > 0, acc_one, np.where(zs > 0, acc_zero, 0.0))
    return out


def binary_game_table(d: int) -> np.ndarray:
    """``G[px, pz, s]``: Shapley value of slot s when x's pattern is px and a background row's is pz (both
    binary): the leaf counts when every slot is taken by x or z; with A the slots only x takes and B those
    only z takes, φ_s = (|A|−1)!|B|!/(|A|+|B|)! for s ∈ A and −|A|!(|B|−1)!/(|A|+|B|)! for s ∈ B."""
    P = 1 << d
    p = np.arange(P)
    bits = (p[:, None] >> np.arange(d)) & 1  # (P, d)
    ox, oz = bits[:, None, :], bits[None, :, :]
    a = (ox & (1 - oz)).sum(-1)
    b = (oz & (1 - ox)).sum(-1)
    reach = (ox | oz).sum(-1) == d
    f = np.array([factorial(k) for k in range(d + 1)], dtype=np.float64)
    n = a + b
    pos = np.where(a > 0, f[np.maximum(a - 1, 0)] * f[b] / f[n], 0.0)
    neg = np.where(b > 0, f[a] * f[np.maximum(b - 1, 0)] / f[n], 0.0)
    g = np.where(ox & (1 - oz), pos[..., None], 0.0) - np.where(oz & (1 - ox), neg[..., None], 0.0)
    return np.where(reach[..., None], g, 0.0)


class TreeShap:
    """Exact TreeSHAP of a :class:`~onnx_explain.tabular.trees.Trees` ensemble against ``background``.

    Parameters
    ----------
    trees : Trees
        Summed trees (``AVERAGE`` folded in; ``MIN``/``MAX`` refused).
    background : numpy.ndarray
        ``(n, features)`` rows: the interventional game's reference rows, or the data the path-dependent
        game counts its cover on.
    mode : {'interventional', 'path_dependent'}
    """

    def __init__(self, trees: Trees, background: np.ndarray, mode: str = "interventional"):
        if mode not in MODES:
            raise TreeModelError(f"unknown TreeSHAP mode {mode!r}; choose one of {', '.join(MODES)}")
        if trees.aggregate != "SUM":
            raise TreeModelError(
                f"{trees.where()} aggregates its trees by {trees.aggregate}: not additive, no TreeSHAP"
            )
        self.trees, self.mode = trees, mode
        bg = trees.check_rows(background)
        if len(bg) == 0:
            raise TreeModelError("TreeSHAP needs at least one background row")
        self.n_background = len(bg)
        p = self.paths = trees.paths
        L = len(p.leaf)
        d = p.n_slots
        self.tabulated = d <= TABLE_SLOTS
        self.tab = np.flatnonzero(self.tabulated)
        self.long = np.flatnonzero(~self.tabulated)  # leaves computed row by row
        # background rows reaching each leaf: one walk down each tree per row
        node_count = np.zeros(len(trees.feature))
        for i in range(0, len(bg), 4096):
            np.add.at(node_count, trees.leaves(bg[i : i + 4096]).reshape(-1), 1.0)
        reach = node_count[p.leaf]
        bg_pat = None
        if mode == "path_dependent":
            z = self._zero_fractions(reach)  # (L, S)
            self.prob = np.where(np.arange(z.shape[1]) < d[:, None], z, 1.0).prod(1)
        else:
            z = None
            self.prob = reach / len(bg)
            bg_pat = np.concatenate([p.patterns(trees, bg[i : i + 1024]) for i in range(0, len(bg), 1024)])
        self.expected = self.prob @ p.values + trees.base  # (n_outputs,)
        # the tables of the short paths: one row per (leaf, pattern), one column per slot
        width = int(d[self.tab].max(initial=0)) or 1
        sizes = np.where(self.tabulated, np.int64(1) << d, 0)
        self.row_offset = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        table = np.zeros((int(sizes.sum()), width))
        self.table_leaf = np.repeat(np.arange(L), sizes)  # the leaf of each table row
        for k in np.unique(d[self.tab]):
            k = int(k)
            leaves = np.flatnonzero(self.tabulated & (d == k))
            P = 1 << k
            if k == 0:
                continue
            if mode == "path_dependent":
                bits = ((np.arange(P)[:, None] >> np.arange(k)) & 1).astype(np.float64)  # (P, k)
                vals = product_game(bits[None, :, :], z[leaves, None, :k])  # (leaves, P, k)
            else:
                flat = (np.arange(len(leaves))[None, :] * P + bg_pat[:, leaves].astype(np.int64)).reshape(-1)
                hist = np.bincount(flat, minlength=len(leaves) * P).reshape(len(leaves), P)
                g = binary_game_table(k)  # (px, pz, s)
                vals = ((hist / len(bg)) @ g.transpose(1, 0, 2).reshape(P, P * k)).reshape(len(leaves), P, k)
            rows = self.row_offset[leaves][:, None] + np.arange(P)[None, :]
            table[rows.reshape(-1), :k] = vals.reshape(-1, k)
        self.table = table
        self._class_tables: dict = {}  # output -> table scaled by each leaf's value for that output
        self.z = z
        self.bg_patterns = bg_pat[:, self.long] if bg_pat is not None else None
        self.n_features = max(trees.n_features, 1)
        self._tab_map = self._feature_map(self.tab, width)
        S = p.slot_feature.shape[1]
        self._long_map = self._feature_map(self.long, S)

    def _feature_map(self, leaves: np.ndarray, width: int):
        """``(len(leaves) * width, features)`` sparse one-hot of each slot's feature."""
        p = self.paths
        sf = p.slot_feature[leaves, :width] if width <= p.slot_feature.shape[1] else None
        if sf is None:
            sf = np.full((len(leaves), width), -1)
            sf[:, : p.slot_feature.shape[1]] = p.slot_feature[leaves]
        flat = sf.reshape(-1)
        rows = np.flatnonzero(flat >= 0)
        return sp.csr_matrix(
            (np.ones(len(rows)), (rows, flat[rows])), shape=(len(leaves) * width, self.n_features)
        )

    def _zero_fractions(self, reach: np.ndarray) -> np.ndarray:
        """``z[l, s]``: the share of cover that follows leaf l's path at its nodes on slot s (0 where the
        background reaches a node no row reaches: that leaf then weighs nothing in the expectation)."""
        t, p = self.trees, self.paths
        cover = np.zeros(len(t.feature))
        np.add.at(cover, p.leaf, reach)
        valid = p.nodes >= 0
        np.add.at(cover, p.nodes[valid], np.broadcast_to(reach[:, None], p.nodes.shape)[valid])
        nxt = np.concatenate([p.nodes[:, 1:], np.full((len(p.leaf), 1), -1)], axis=1)
        depth = valid.sum(1)
        nxt[np.arange(len(p.leaf)), np.maximum(depth - 1, 0)] = np.where(depth > 0, p.leaf, -1)
        num = np.where(valid, cover[np.maximum(nxt, 0)], 1.0)
        den = np.where(valid, cover[np.maximum(p.nodes, 0)], 1.0)
        ratio = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        z = np.ones((len(p.leaf), p.slot_feature.shape[1]))
        for j in range(p.nodes.shape[1]):
            rows = np.flatnonzero(valid[:, j])
            z[rows, p.slot[rows, j]] *= ratio[rows, j]
        return z

    def _long_values(self, pat: np.ndarray) -> np.ndarray:
        """``(rows, len(long), S)`` slot values of the untabulated paths for patterns ``pat``."""
        p = self.paths
        S = p.slot_feature.shape[1]
        out = np.zeros((len(pat), len(self.long), S))
        d = p.n_slots[self.long]
        for k in np.unique(d):
            cols = np.flatnonzero(d == k)
            k = int(k)
            ox = ((pat[:, cols, None] >> np.arange(k)) & 1).astype(np.float64)  # (rows, leaves, k)
            if self.mode == "path_dependent":
                out[:, cols, :k] = product_game(ox, self.z[self.long[cols], None, :k].transpose(1, 0, 2))
            else:  # mean over the background of the binary game, by pattern
                for j, c in enumerate(cols):
                    zs, counts = np.unique(self.bg_patterns[:, c], return_counts=True)
                    oz = ((zs[:, None] >> np.arange(k)) & 1).astype(np.float64)  # (u, k)
                    vals = product_game(ox[:, j, None, :], oz[None, :, :])  # (rows, u, k)
                    out[:, c, :k] = (vals * counts[None, :, None]).sum(1) / self.n_background
        return out

    def _table_for(self, output: int) -> np.ndarray:
        if output not in self._class_tables:
            self._class_tables[output] = self.table * self.paths.values[self.table_leaf, output][:, None]
        return self._class_tables[output]

    def shap_values(self, x: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(φ (rows, columns), expected value (rows,), margin (rows,))`` of margin column ``outputs[i]``
        for each row ``x[i]``; Σφ + expected = margin."""
        t, p = self.trees, self.paths
        x = t.check_rows(x)
        outputs = np.asarray(outputs, dtype=np.int64).reshape(-1)
        phi = np.zeros((len(x), x.shape[1]))
        margin = np.empty(len(x))
        width = self.table.shape[1]
        step = max(1, _BLOCK // max(len(self.tab) * width + len(self.long) * p.slot_feature.shape[1], 1))
        for c in np.unique(outputs):
            rows_c = np.flatnonzero(outputs == c)
            table = self._table_for(int(c))
            value = p.values[:, c]
            for i in range(0, len(rows_c), step):
                r = rows_c[i : i + step]
                xs = x[r]
                res = np.zeros((len(r), self.n_features))
                reached = np.zeros(len(r))
                if len(self.tab):
                    pat = p.patterns(t, xs, self.tab)  # (r, tabulated leaves)
                    reached += (pat == p.full[self.tab]) @ value[self.tab]
                    vals = table[self.row_offset[self.tab][None, :] + pat]  # (r, leaves, width)
                    res += (self._tab_map.T @ vals.reshape(len(r), -1).T).T
                if len(self.long):
                    pat = p.patterns(t, xs, self.long)
                    reached += (pat == p.full[self.long]) @ value[self.long]
                    vals = self._long_values(pat) * value[self.long][None, :, None]
                    res += (self._long_map.T @ vals.reshape(len(r), -1).T).T
                phi[r, : self.n_features] = res
                margin[r] = reached + t.base[c]
        return phi, self.expected[outputs], margin
