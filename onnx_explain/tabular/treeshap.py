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

__all__ = ["MODES", "TABLE_BUDGET", "TABLE_SLOTS", "TreeShap", "engine_key"]

MODES = ("interventional", "path_dependent")
#: paths with at most this many distinct features are tabulated (2^d patterns)
TABLE_SLOTS = 8
#: numbers the pattern tables may hold (float64: 256 MB)
TABLE_BUDGET = 1 << 25
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


def engine_key(mode: str, background: np.ndarray) -> tuple:
    """The cache key of the :class:`TreeShap` of ``background`` rows in ``mode`` (their bytes' digest)."""
    import hashlib

    bg = np.ascontiguousarray(background)
    return (mode, bg.shape, bg.dtype.str, hashlib.blake2b(bg.tobytes(), digest_size=16).hexdigest())


def _bits(p: np.ndarray, k: int) -> np.ndarray:
    """``(..., k)`` float 0/1 bits of integer patterns ``p``."""
    return ((p[..., None].astype(np.int64) >> np.arange(k)) & 1).astype(np.float64)


class TreeShap:
    """Exact TreeSHAP of a :class:`~onnx_explain.tabular.trees.Trees` ensemble against ``background``.

    Paths are grouped by their number of distinct features d. Groups are tabulated (2^d patterns × d
    values per path) in increasing d while the tables fit :data:`TABLE_BUDGET` numbers; the other paths
    are computed for each block of rows with the same closed forms. A row's class only reads the paths
    whose leaves weigh that class (a multiclass LightGBM grows one tree per class per round).

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
        d = p.n_slots
        # background rows reaching each leaf: one walk down each tree per row
        node_count = np.zeros(len(trees.feature))
        for i in range(0, len(bg), 1024):
            np.add.at(node_count, trees.leaves(bg[i : i + 1024]).reshape(-1), 1.0)
        reach = node_count[p.leaf]
        self.z = self.bg_patterns = None
        if mode == "path_dependent":
            self.z = self._zero_fractions(reach)  # (L, S)
            self.prob = np.where(np.arange(self.z.shape[1]) < d[:, None], self.z, 1.0).prod(1)
        else:
            self.prob = reach / len(bg)
            self.bg_patterns = np.concatenate(
                [p.patterns(trees, bg[i : i + 256]) for i in range(0, len(bg), 256)]
            ).astype(np.int64)  # (n_bg, L)
        self.expected = self.prob @ p.values + trees.base  # (n_outputs,)
        # tables: {d: (leaves, first table row of each, table (rows, d))}, smallest d first, within budget
        self.tables: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        used = 0
        tabulated = np.zeros(len(d), dtype=bool)
        for k in np.unique(d):
            k = int(k)
            leaves = np.flatnonzero(d == k)
            size = len(leaves) * (1 << k) * max(k, 1)
            if k > TABLE_SLOTS or used + size > TABLE_BUDGET:
                break
            used += size
            tabulated[leaves] = True
            self.tables[k] = (leaves, np.arange(len(leaves)) * (1 << k), self._tabulate(leaves, k))
        self.long = np.flatnonzero(~tabulated)  # computed for each block of rows
        self.n_features = max(trees.n_features, 1)
        self._maps: dict = {}

    def _tabulate(self, leaves: np.ndarray, k: int) -> np.ndarray:
        """``(len(leaves) * 2^k, k)``: the unit game's slot values for every pattern of every leaf."""
        P = 1 << k
        if k == 0:
            return np.zeros((len(leaves), 0))
        out = np.empty((len(leaves), P, k))
        bits = _bits(np.arange(P), k)  # (P, k)
        step = max(1, (1 << 22) // (P * k * k))
        for i in range(0, len(leaves), step):
            part = leaves[i : i + step]
            if self.mode == "path_dependent":
                out[i : i + step] = product_game(bits[None, :, :], self.z[part, None, :k])
            else:
                pats = self.bg_patterns[:, part]  # (n_bg, leaves)
                flat = (np.arange(len(part))[None, :] * P + pats).reshape(-1)
                hist = np.bincount(flat, minlength=len(part) * P).reshape(len(part), P) / self.n_background
                g = binary_game_table(k)  # (px, pz, s)
                out[i : i + step] = (hist @ g.transpose(1, 0, 2).reshape(P, P * k)).reshape(len(part), P, k)
        return out.reshape(len(leaves) * P, k)

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

    def _feature_map(self, leaves: np.ndarray, k: int):
        """``(len(leaves) * k, features)`` sparse one-hot of each slot's feature."""
        key = (leaves.tobytes(), k)
        if key not in self._maps:
            flat = self.paths.slot_feature[leaves, :k].reshape(-1)
            rows = np.flatnonzero(flat >= 0)
            self._maps[key] = sp.csr_matrix(
                (np.ones(len(rows)), (rows, flat[rows])), shape=(len(leaves) * k, self.n_features)
            )
        return self._maps[key]

    def _long_values(self, pat: np.ndarray, leaves: np.ndarray, k: int) -> np.ndarray:
        """``(rows, len(leaves), k)`` slot values of untabulated paths with k slots for patterns ``pat``."""
        ox = _bits(pat, k)  # (rows, leaves, k)
        if self.mode == "path_dependent":
            return product_game(ox, self.z[leaves, :k][None])
        # interventional: the binary game against every background row, averaged (closed form)
        f = np.array([factorial(j) for j in range(k + 1)], dtype=np.float64)
        px = pat.astype(np.int64)[:, None, :]  # (rows, 1, leaves)
        full = self.paths.full[leaves][None, None, :]
        out = np.zeros(ox.shape)
        step = max(1, (1 << 22) // max(len(leaves) * len(px), 1))
        for i in range(0, self.n_background, step):
            pz = self.bg_patterns[i : i + step, leaves][None]  # (1, bg, leaves)
            only_x, only_z = px & ~pz, pz & ~px
            reached = (px | pz) == full
            a = sum((only_x >> j) & 1 for j in range(k))
            b = sum((only_z >> j) & 1 for j in range(k))
            pos = np.where(reached & (a > 0), f[np.maximum(a - 1, 0)] * f[b] / f[a + b], 0.0)
            neg = np.where(reached & (b > 0), f[a] * f[np.maximum(b - 1, 0)] / f[a + b], 0.0)
            for j in range(k):
                out[..., j] += (((only_x >> j) & 1) * pos - ((only_z >> j) & 1) * neg).sum(1)
        return out / self.n_background

    def shap_values(self, x: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(φ (rows, columns), expected value (rows,), margin (rows,))`` of margin column ``outputs[i]``
        for each row ``x[i]``; Σφ + expected = margin."""
        t, p = self.trees, self.paths
        x = t.check_rows(x)
        outputs = np.asarray(outputs, dtype=np.int64).reshape(-1)
        phi = np.zeros((len(x), x.shape[1]))
        margin = np.empty(len(x))
        for c in np.unique(outputs):
            rows_c = np.flatnonzero(outputs == c)
            value = p.values[:, c]
            groups = []  # (leaves, table rows or None, table or None, k): the paths that weigh class c
            for k, (leaves, first, table) in self.tables.items():
                on = value[leaves] != 0
                if on.any():
                    groups.append((leaves[on], first[on], table, k))
            long_c = self.long[value[self.long] != 0]
            for k in np.unique(p.n_slots[long_c]):
                groups.append((long_c[p.n_slots[long_c] == k], None, None, int(k)))
            width = sum(len(g[0]) * max(g[3], 1) for g in groups) + 1
            step = max(1, _BLOCK // width)
            for i in range(0, len(rows_c), step):
                r = rows_c[i : i + step]
                xs = x[r]
                res = np.zeros((len(r), self.n_features))
                reached = np.zeros(len(r))
                for leaves, first, table, k in groups:
                    pat = p.patterns(t, xs, leaves)  # (r, leaves)
                    reached += (pat == p.full[leaves]) @ value[leaves]
                    if k == 0:
                        continue
                    if table is not None:
                        vals = table[first[None, :] + pat]  # (r, leaves, k)
                    else:
                        vals = self._long_values(pat, leaves, k)
                    vals = vals * value[leaves][None, :, None]
                    res += (self._feature_map(leaves, k).T @ vals.reshape(len(r), -1).T).T
                phi[r, : self.n_features] = res
                margin[r] = reached + t.base[c]
        return phi, self.expected[outputs], margin
