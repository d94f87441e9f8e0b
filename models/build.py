"""Rebuild the bundled models deterministically on CPU (about a minute): ``python models/build.py``.

digits.onnx
    A small CNN trained on scikit-learn's bundled 8x8 digits, upsampled 4x to 32x32 (nearest), pixel
    values scaled to [0, 1]. Input ``image`` float32 [batch, 1, 32, 32]; output ``logits`` [batch, 10].
    Held-out accuracy is printed and written to ``models/digits.json``.

Sample inputs for the demo go to ``models/samples/digits.npy`` (the first 8 held-out images) and PNGs.
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


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    x_tr, y_tr, x_te, y_te = digits_data()
    model = train(DigitsCNN(), x_tr, y_tr)
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean())
    export(model, torch.from_numpy(x_te[:2]), HERE / "digits.onnx")
    (HERE / "digits.json").write_text(
        json.dumps({"test_accuracy": round(acc, 4), "n_test": len(y_te)}, indent=1) + "\n"
    )
    samples = HERE / "samples"
    samples.mkdir(exist_ok=True)
    np.save(samples / "digits.npy", x_te[:8])
    from PIL import Image

    for i in range(8):
        Image.fromarray((x_te[i, 0] * 255).round().astype(np.uint8)).save(
            samples / f"digit_{i}_label{y_te[i]}.png"
        )
    print(f"digits.onnx: held-out accuracy {acc:.4f} on {len(y_te)} images")


if __name__ == "__main__":
    main()
