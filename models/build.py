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
textcls.onnx
    A 2-layer transformer encoder (d = 64, 4 heads, LayerNorm, GELU, CLS pooling) on synthetic sentiment
    sentences (:func:`textcls_data`): the class (negative, neutral, positive) is the sign of the summed
    polarity of the sentiment words, "not" flipping and "very" doubling the next one, so the tokens that
    matter are known. Inputs ``input_ids`` and ``attention_mask`` int64 [batch, sequence]; output
    ``logits`` [batch, 3]. Its WordLevel tokenizer goes to ``textcls_tokenizer.json``, sample texts to
    ``textcls_texts.txt``.

Held-out accuracies go to ``models/<name>.json``; sample inputs for the demo to ``models/samples/``.
``python models/build.py textcls`` rebuilds one target (``digits``, ``shapes``, ``wine``, ``textcls``).
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


# --- textcls: a transformer text classifier on synthetic sentiment sentences ------------------------------

TEXT_CLASSES = ("negative", "neutral", "positive")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
POSITIVE = ("good", "great", "excellent", "wonderful", "superb", "brilliant", "charming", "delightful")
NEGATIVE = ("bad", "awful", "terrible", "poor", "boring", "dull", "weak", "dreadful")
NEGATORS = ("not", "never")
INTENSIFIERS = ("very", "really", "truly")
FILLERS = ("the", "a", "this", "that", "film", "movie", "plot", "acting", "story", "music", "cast", "script",
           "ending", "scenes", "actors", "director", "was", "is", "were", "and", "but", "with", "of", "it",
           "i", "we", "found", "thought", "seemed", "felt", "cinema", "ticket", "popcorn", "sunday", "long",
           "short", "new", "old", "red", "second", "half", "overall", "today", "friends", "sequel")  # fmt: skip
TEXT_MAX_LENGTH = 64


def sentiment_score(words) -> int:
    """The synthetic task's rule: each sentiment word counts ±1, doubled by an intensifier right before
    it, negated by a negator right before that (``not very good`` = −2); every other word counts 0."""
    total = 0
    for i, w in enumerate(words):
        p = 1 if w in POSITIVE else -1 if w in NEGATIVE else 0
        if not p:
            continue
        j = i - 1
        if j >= 0 and words[j] in INTENSIFIERS:
            p, j = 2 * p, j - 1
        if j >= 0 and words[j] in NEGATORS:
            p = -p
        total += p
    return total


def text_label(words) -> int:
    """0 negative, 1 neutral (no sentiment, or it cancels), 2 positive."""
    return int(np.sign(sentiment_score(words))) + 1


def textcls_sentences(n: int, seed: int, mask_rate: float = 0.0) -> list[list[str]]:
    """``n`` sentences of 3–14 words: 0–3 sentiment phrases ([negator] [intensifier] word) among neutral
    fillers, some fillers preceded by a stray negator or intensifier (distractors that change nothing).
    With ``mask_rate``, half the sentences get each word replaced by [MASK] or [UNK] with that
    probability (the label is computed after, so a model learns what a removed word means)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.choice(4, p=[0.2, 0.4, 0.3, 0.1]))
        phrases = []
        for _ in range(k):
            ph = []
            if rng.random() < 0.3:
                ph.append(str(rng.choice(NEGATORS)))
            if rng.random() < 0.3:
                ph.append(str(rng.choice(INTENSIFIERS)))
            ph.append(str(rng.choice(POSITIVE if rng.random() < 0.5 else NEGATIVE)))
            phrases.append(ph)
        used = sum(len(p) for p in phrases)
        n_fill = int(rng.integers(max(0, 3 - used), max(1, 15 - used)))
        for _ in range(n_fill):
            ph = [str(rng.choice(FILLERS))]
            if rng.random() < 0.1:
                ph.insert(0, str(rng.choice(NEGATORS + INTENSIFIERS)))
            phrases.append(ph)
        phrases = [phrases[i] for i in rng.permutation(len(phrases))]
        words = [w for p in phrases for w in p][:14]
        if mask_rate and rng.random() < 0.5:
            words = [str(rng.choice(["[MASK]", "[UNK]"])) if rng.random() < mask_rate else w for w in words]
        out.append(words)
    return out


def textcls_data(n: int, seed: int, mask_rate: float = 0.0) -> tuple[list[str], np.ndarray]:
    """(texts, labels) of the synthetic sentiment task; held-out data: ``textcls_data(2000, seed=2)``."""
    sents = textcls_sentences(n, seed, mask_rate)
    return [" ".join(s) for s in sents], np.array([text_label(s) for s in sents], np.int64)


def textcls_tokenizer():
    """A WordLevel ``tokenizers`` tokenizer over the task's words: lower-cased, split on whitespace and
    punctuation, ``[CLS] text [SEP]``; ids 0–4 are [PAD] [UNK] [CLS] [SEP] [MASK]."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    words = list(SPECIAL_TOKENS) + sorted(set(POSITIVE + NEGATIVE + NEGATORS + INTENSIFIERS + FILLERS))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def encode_texts(tok, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask ``(n, L)``, padded with [PAD] (id 0) to the longest text."""
    encs = tok.encode_batch(texts)
    L = max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), L), np.int64)
    mask = np.zeros((len(encs), L), np.int64)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return ids, mask


class EncoderBlock(nn.Module):
    """Post-LN transformer block (BERT's order): self-attention, Add, LayerNorm, GELU MLP, Add, LayerNorm.
    Attention is written out (MatMul, Softmax, MatMul) so that the ONNX graph shows every product."""

    def __init__(self, d: int, heads: int, ff: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))

    def forward(self, h, bias):
        B, L, d = h.shape
        dh = d // self.heads

        def split(t):
            return t.reshape(B, L, self.heads, dh).transpose(1, 2)

        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        p = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5 + bias, dim=-1)
        a = self.o((p @ v).transpose(1, 2).reshape(B, L, d))
        h = self.ln1(h + a)
        return self.ln2(h + self.ff(h))


class TextClassifier(nn.Module):
    """Token + position embeddings, LayerNorm, encoder blocks, a linear head on the [CLS] position.
    Padded positions get −1e4 added to their attention logits (exp underflows to exactly 0 in float32, so
    a text alone and in a padded batch give the same logits)."""

    def __init__(self, vocab: int, d: int = 64, heads: int = 4, layers: int = 2, ff: int = 128,
                 max_len: int = TEXT_MAX_LENGTH, n_classes: int = 3):  # fmt: skip
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        self.ln = nn.LayerNorm(d)
        self.blocks = nn.ModuleList(EncoderBlock(d, heads, ff) for _ in range(layers))
        self.head = nn.Linear(d, n_classes)

    def forward(self, input_ids, attention_mask):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.ln(self.tok(input_ids) + self.pos(positions)[None])
        bias = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * -1e4
        for blk in self.blocks:
            h = blk(h, bias)
        return self.head(h[:, 0])


def train_textcls(epochs: int = 16, n_train: int = 30000):
    """(model, tokenizer, accuracy, n_test): trained on ``textcls_data(n_train, seed=1, mask_rate=0.15)``,
    scored on ``textcls_data(2000, seed=2)``."""
    tok = textcls_tokenizer()
    texts, y = textcls_data(n_train, seed=1, mask_rate=0.15)
    ids, mask = encode_texts(tok, texts)
    torch.manual_seed(SEED)
    model = TextClassifier(tok.get_vocab_size())
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    steps = epochs * -(-len(y) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    it, mt, yt = torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(yt), generator=gen)
        for start in range(0, len(yt), 64):
            b = perm[start : start + 64]
            loss = nn.functional.cross_entropy(model(it[b], mt[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    te_texts, te_y = textcls_data(2000, seed=2)
    te_ids, te_mask = encode_texts(tok, te_texts)
    with torch.no_grad():
        pred = model(torch.from_numpy(te_ids), torch.from_numpy(te_mask)).argmax(1).numpy()
    return model, tok, float((pred == te_y).mean()), len(te_y)


def build_textcls() -> None:
    model, tok, acc, n = train_textcls()
    names = ["input_ids", "attention_mask"]
    ids, mask = encode_texts(tok, ["the film was great", "not a very good plot and boring music"])
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.onnx.export(model, (torch.from_numpy(ids), torch.from_numpy(mask)), str(HERE / "textcls.onnx"),
                      dynamo=False, opset_version=17, input_names=names, output_names=["logits"],
                      dynamic_axes={**{k: {0: "batch", 1: "sequence"} for k in names},
                                    "logits": {0: "batch"}})  # fmt: skip
    tok.save(str(HERE / "textcls_tokenizer.json"))
    card = {
        "test_accuracy": round(acc, 4),
        "n_test": n,
        "held_out": "models/build.py textcls_data(2000, seed=2)",
        "classes": list(TEXT_CLASSES),
        "tokenizer": "textcls_tokenizer.json",
        "special_tokens": {t: tok.token_to_id(t) for t in SPECIAL_TOKENS},
        "max_length": TEXT_MAX_LENGTH,
        "rule": "class = sign of the summed polarity of sentiment words (±1; an intensifier right before "
        "doubles, a negator right before that negates) + 1",
    }
    (HERE / "textcls.json").write_text(json.dumps(card, indent=1) + "\n")
    print(f"textcls.onnx: held-out accuracy {acc:.4f} on {n}")
    texts, _ = textcls_data(8, seed=4)
    (HERE / "textcls_texts.txt").write_text("\n".join(texts) + "\n")


TARGETS = ("digits", "shapes", "wine", "textcls")


def main(targets=TARGETS) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    samples = HERE / "samples"
    samples.mkdir(exist_ok=True)

    if "digits" in targets:
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

    if "shapes" in targets:
        xs, ys, xs_te, ys_te, masks_te = shapes_data()
        torch.manual_seed(SEED)
        shapes = train(ShapesNet(), xs, ys, epochs=8)
        _export_keep_bn(shapes, torch.from_numpy(xs_te[:2]), HERE / "shapes.onnx")
        _record("shapes", _accuracy(shapes, xs_te, ys_te), len(ys_te))
        np.save(samples / "shapes.npy", xs_te[:8])
        np.save(samples / "shapes_masks.npy", masks_te[:8])

    if "wine" in targets:
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

    if "digits" in targets:
        # the demo's data ship inside the package (onnx-explain demo runs from any folder): keep them identical
        import shutil

        data = HERE.parent / "onnx_explain" / "data"
        shutil.copyfile(HERE / "digits.onnx", data / "digits.onnx")
        shutil.copyfile(samples / "digits.npy", data / "digits.npy")

    if "textcls" in targets:
        torch.manual_seed(SEED)
        build_textcls()


if __name__ == "__main__":
    import sys

    unknown = set(sys.argv[1:]) - set(TARGETS)
    if unknown:
        sys.exit(f"unknown target(s) {', '.join(sorted(unknown))}; choose from {', '.join(TARGETS)}")
    main(tuple(sys.argv[1:]) or TARGETS)
