"""Rebuild the bundled models deterministically on CPU (a minute or two): ``python models/build.py``.

digits.onnx
    A small CNN trained on scikit-learn's bundled 8x8 digits, upsampled 4x to 32x32 (nearest), pixel
    values scaled to [0, 1]. Input ``image`` float32 [batch, 1, 32, 32]; output ``logits`` [batch, 10].
digits_noise.onnx
    The same network trained with Gaussian input noise (σ = 0.5), the SmoothGrad paper's "training with
    noise" experiment.
shapes.onnx
    A residual CNN (BatchNorm kept in the graph, residual Add, max and global average pooling) on the
    synthetic ``shapes`` data (``models/shapes_data.py``): the class is the shape of the red object.
    Input ``image`` float32 [batch, 3, 32, 32] in [0, 1]; output ``logits`` [batch, 4].
wine.onnx
    An MLP on scikit-learn's bundled wine data, standardisation inside the graph. Input ``features``
    float32 [batch, 13]; output ``logits`` [batch, 3].

Held-out accuracies go to ``models/<name>.json``; sample inputs for the demo to ``models/samples/``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
SEED = 0


def digits_data(upsample: int = 4):
    """(x_train, y_train, x_test, y_test): digits split 1347/450 with a fixed permutation."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    x = np.kron(x, np.ones((upsample, upsample), dtype=np.float32))[:, None]
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(SEED).permutation(len(x))
    x, y = x[idx], y[idx]
    return x[:1347], y[:1347], x[1347:], y[1347:]


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 12, noise: float = 0.0) -> nn.Module:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), 64):
            b = perm[start : start + 64]
            xb = xt[b]
            if noise:
                xb = xb + noise * torch.randn(xb.shape, generator=gen)
            loss = nn.functional.cross_entropy(model(xb), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def export(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the legacy exporter, on purpose
    torch.onnx.export(
        model, (example,), str(path), dynamo=False, opset_version=17,
        input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )  # fmt: skip


def _export_keep_bn(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export with BatchNormalization kept as nodes (no constant folding), to exercise BN handling."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.onnx.export(
        model, (example,), str(path), dynamo=False, opset_version=17, do_constant_folding=False,
        input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )  # fmt: skip


class ShapesNet(nn.Module):
    """conv-BN-ReLU stem, one residual block, max pooling, a second block, global average pooling."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                    nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))  # fmt: skip
        self.pool = nn.MaxPool2d(2)
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                    nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32))  # fmt: skip
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(self.block1(h) + h)
        h = self.expand(self.pool(h))
        h = torch.relu(self.block2(h) + h)
        return self.head(torch.nn.functional.adaptive_avg_pool2d(h, 1).flatten(1))


class WineMLP(nn.Module):
    """Standardisation inside the graph (Sub, Div by constants), then a ReLU MLP."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.net = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def wine_data():
    """(x_train, y_train, x_test, y_test): scikit-learn's wine data split 130/48 with a fixed permutation."""
    from sklearn.datasets import load_wine

    d = load_wine()
    idx = np.random.default_rng(SEED).permutation(len(d.target))
    x, y = d.data[idx].astype(np.float32), d.target[idx].astype(np.int64)
    return x[:130], y[:130], x[130:], y[130:]


def shapes_data():
    """(x_train, y_train, x_test, y_test, masks_test) of the synthetic shapes data (seeds 1 and 2)."""
    import sys

    sys.path.insert(0, str(HERE))
    from shapes_data import make_shapes

    xs, ys, _ = make_shapes(4000, seed=1)
    xt, yt, mt = make_shapes(500, seed=2)
    return xs, ys.astype(np.int64), xt, yt.astype(np.int64), mt


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def _record(name: str, acc: float, n: int) -> None:
    (HERE / f"{name}.json").write_text(
        json.dumps({"test_accuracy": round(acc, 4), "n_test": n}, indent=1) + "\n"
    )
    print(f"{name}.onnx: held-out accuracy {acc:.4f} on {n}")


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    samples = HERE / "samples"
    samples.mkdir(exist_ok=True)

    x_tr, y_tr, x_te, y_te = digits_data()
    model = train(DigitsCNN(), x_tr, y_tr)
    export(model, torch.from_numpy(x_te[:2]), HERE / "digits.onnx")
    _record("digits", _accuracy(model, x_te, y_te), len(y_te))
    torch.manual_seed(SEED)
    noisy = train(DigitsCNN(), x_tr, y_tr, noise=0.5)
    export(noisy, torch.from_numpy(x_te[:2]), HERE / "digits_noise.onnx")
    _record("digits_noise", _accuracy(noisy, x_te, y_te), len(y_te))
    np.save(samples / "digits.npy", x_te[:8])
    from PIL import Image

    for i in range(8):
        Image.fromarray((x_te[i, 0] * 255).round().astype(np.uint8)).save(
            samples / f"digit_{i}_label{y_te[i]}.png"
        )

    xs, ys, xs_te, ys_te, masks_te = shapes_data()
    torch.manual_seed(SEED)
    shapes = train(ShapesNet(), xs, ys, epochs=8)
    _export_keep_bn(shapes, torch.from_numpy(xs_te[:2]), HERE / "shapes.onnx")
    _record("shapes", _accuracy(shapes, xs_te, ys_te), len(ys_te))
    np.save(samples / "shapes.npy", xs_te[:8])
    np.save(samples / "shapes_masks.npy", masks_te[:8])

    w_tr, wy_tr, w_te, wy_te = wine_data()
    torch.manual_seed(SEED)
    wine = train(WineMLP(w_tr.mean(0), w_tr.std(0)), w_tr, wy_tr, epochs=150)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.onnx.export(wine, (torch.from_numpy(w_te[:2]),), str(HERE / "wine.onnx"), dynamo=False, opset_version=17,
                      input_names=["features"], output_names=["logits"],
                      dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}})  # fmt: skip
    _record("wine", _accuracy(wine, w_te, wy_te), len(wy_te))
    np.savetxt(
        samples / "wine.csv",
        w_te[:8],
        delimiter=",",
        fmt="%.4f",
        header=",".join(f"f{i}" for i in range(13)),
        comments="",
    )
    # the demo's data ship inside the package (onnx-explain demo runs from any folder): keep them identical
    import shutil

    data = HERE.parent / "onnx_explain" / "data"
    shutil.copyfile(HERE / "digits.onnx", data / "digits.onnx")
    shutil.copyfile(samples / "digits.npy", data / "digits.npy")


if __name__ == "__main__":
    main()
