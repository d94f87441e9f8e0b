"""The synthetic ``shapes`` dataset: the class is the shape of the one red object; 2-3 distractor shapes in
other colours and background noise surround it. Every image comes with the ground-truth mask of the red
object, so explanations can be scored for localisation. Deterministic for a seed; numpy only.

Classes: 0 square, 1 disc, 2 triangle, 3 cross. Images: float32 (3, 32, 32) in [0, 1].
"""

from __future__ import annotations

import numpy as np

CLASSES = ("square", "disc", "triangle", "cross")
SIZE = 32


def _shape_mask(kind: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    dy, dx = yy - cy, xx - cx
    if kind == 0:
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if kind == 1:
        return dy * dy + dx * dx <= r * r
    if kind == 2:
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    return ((np.abs(dy) <= r) & (np.abs(dx) <= r // 3)) | ((np.abs(dx) <= r) & (np.abs(dy) <= r // 3))


def make_shapes(n: int, seed: int = 0):
    """(images (n, 3, 32, 32), labels (n,), masks (n, 32, 32) bool) with the given seed."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, 3, SIZE, SIZE), np.float32)
    y = rng.integers(0, len(CLASSES), n)
    masks = np.zeros((n, SIZE, SIZE), bool)
    palette = np.array([[0.1, 0.4, 1.0], [0.1, 0.9, 0.2], [1.0, 0.9, 0.1], [0.8, 0.2, 0.9], [0.2, 0.9, 0.9]])
    for i in range(n):
        img = rng.uniform(0.0, 0.25, (3, SIZE, SIZE))
        taken = np.zeros((SIZE, SIZE), bool)
        objects = [(int(y[i]), np.array([1.0, 0.1, 0.1]), True)]
        for _ in range(rng.integers(2, 4)):
            objects.append((int(rng.integers(0, 4)), palette[rng.integers(0, len(palette))], False))
        for kind, colour, is_target in objects:
            for _ in range(50):  # place without overlapping earlier objects
                r = int(rng.integers(4, 7))
                cy, cx = rng.integers(r + 1, SIZE - r - 1, 2)
                m = _shape_mask(kind, cy, cx, r)
                if not (m & taken).any():
                    break
            taken |= m
            img[:, m] = (colour * rng.uniform(0.8, 1.0))[:, None]
            if is_target:
                masks[i] = m
        x[i] = img
    return x, y, masks
