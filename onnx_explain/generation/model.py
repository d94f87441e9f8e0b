"""A generative export on disk: its graphs (decoder, or encoder + decoder), tokenizer and generation settings.

:func:`load_generative` takes a model folder as Optimum, onnxruntime-genai or transformers.js write it (or a
single decoder ``.onnx``) and recognises its layout (:mod:`onnx_explain.generation.layout`). Generation
runs on onnxruntime with the KV cache (:mod:`onnx_explain.generation.generate`); attribution runs on the
converted graph of the decoder without cache (:mod:`onnx_explain.generation.attribute`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..errors import InputFileError, InputSpecError, ModelLoadError
from .layout import DecoderIO, decoder_io, encoder_io

#: decoder files, in the order they are preferred for generation (one graph for every step first)
DECODER_FILES = ("model.onnx", "decoder_model_merged.onnx", "decoder_model.onnx")
ENCODER_FILE = "encoder_model.onnx"
WITH_PAST_FILE = "decoder_with_past_model.onnx"
_NP = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
}


@dataclass
class GenerationSettings:
    """Token ids that steer generation, read from ``generation_config.json``, ``config.json`` or
    ``genai_config.json`` (the first that gives each)."""

    eos: list[int] = field(default_factory=list)
    bos: int | None = None
    pad: int | None = None
    decoder_start: int | None = None
    max_length: int | None = None

    @property
    def pad_id(self) -> int:
        if self.pad is not None:
            return self.pad
        return self.eos[0] if self.eos else 0


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{path}: not a readable JSON file ({exc})") from None


def _ids(v) -> list[int]:
    if v is None:
        return []
    return [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]


def _settings(folder: Path) -> tuple[GenerationSettings, dict]:
    s = GenerationSettings()
    genai: dict = {}
    sources = []
    for name in ("generation_config.json", "config.json"):
        if (folder / name).is_file():
            sources.append(_read_json(folder / name))
    if (folder / "genai_config.json").is_file():
        genai = _read_json(folder / "genai_config.json")
        m = genai.get("model", {})
        sources.append(
            {**m, "max_length": genai.get("search", {}).get("max_length", m.get("context_length"))}
        )
    for src in sources:
        if not s.eos:
            s.eos = _ids(src.get("eos_token_id"))
        for attr, key in (("bos", "bos_token_id"), ("pad", "pad_token_id"),
                          ("decoder_start", "decoder_start_token_id"), ("max_length", "max_length")):  # fmt: skip
            if getattr(s, attr) is None and isinstance(src.get(key), int):
                setattr(s, attr, int(src[key]))
    return s, genai


class GenerativeModel:
    """A decoder (or encoder-decoder) export: its graphs, layout and settings.

    Attributes
    ----------
    kind : {'decoder', 'encoder-decoder'}
    folder : Path
    decoder : Path
        The graph generation runs (with cache when it has one).
    decoder_io : DecoderIO
        Its inputs and outputs.
    first_decoder : Path or None
        The graph of the first step where the cached graph cannot take an empty cache (Optimum's
        ``decoder_model.onnx`` beside ``decoder_with_past_model.onnx``).
    attribution_decoder : Path
        The graph attributed: run once over the whole sequence, without cache (empty past, or the merged
        graph's no-cache branch).
    encoder : Path or None
    settings : GenerationSettings
    tokenizer : Path or None
        ``tokenizer.json`` beside the graphs.
    """

    def __init__(self, path, device: str = "auto"):
        path = Path(path)
        if not path.exists():
            raise InputFileError(f"{path}: no such file or folder")
        self.device = device
        self._sessions: dict = {}
        self._explained: dict = {}
        folder = path if path.is_dir() else path.parent
        self.settings, genai = _settings(folder)
        #: onnxruntime-genai's decoder section (head size, KV heads where the file names its dims)
        self.genai = genai.get("model", {}).get("decoder", {})
        self.first_decoder = None
        self.encoder = None
        if path.is_file():
            decoder = path
        else:
            graphs = folder
            if not any(folder.glob("*.onnx")) and (folder / "onnx").is_dir():
                graphs = folder / "onnx"  # transformers.js keeps its graphs in onnx/
            decoder = None
            named = genai.get("model", {}).get("decoder", {}).get("filename")
            if named:
                decoder = graphs / named
            else:
                decoder = next((graphs / n for n in DECODER_FILES if (graphs / n).is_file()), None)
            if decoder is None:
                raise ModelLoadError(
                    f"{folder}: no decoder graph (looked for {', '.join(DECODER_FILES)} and genai_config.json)"
                )
            if (graphs / ENCODER_FILE).is_file():
                self.encoder = graphs / ENCODER_FILE
            if decoder.name == "decoder_model.onnx" and (graphs / WITH_PAST_FILE).is_file():
                self.first_decoder, decoder = decoder, graphs / WITH_PAST_FILE
        self.folder = folder
        self.kind = "encoder-decoder" if self.encoder is not None else "decoder"
        self.decoder = decoder
        self.decoder_io = self._io(decoder)
        first = self.first_decoder or decoder
        plain = decoder.parent / "decoder_model.onnx"
        if decoder.name == "decoder_model_merged.onnx" and plain.is_file():
            first = plain  # the same weights without the merged graph's If: attributed as is
        self.attribution_decoder = first
        self.attribution_io = self._io(first)
        self.first_decoder_io = self.attribution_io if self.first_decoder is not None else None
        if self.kind == "encoder-decoder":
            if self.attribution_io.encoder_states is None:
                raise InputSpecError(
                    f"{first}: an encoder-decoder's decoder takes no 'encoder_hidden_states'"
                )
            self.encoder_io = encoder_io(self._proto(self.encoder), str(self.encoder))
        elif self.attribution_io.encoder_states is not None:
            raise ModelLoadError(
                f"{decoder}: the decoder reads encoder states, but no {ENCODER_FILE} is beside it"
            )
        #: the vocabulary size (the logits' last dim; None where the file leaves it free)
        self.vocab = self.attribution_io.vocab
        tok = folder / "tokenizer.json"
        self.tokenizer = tok if tok.is_file() else None

    def _proto(self, path: Path) -> onnx.ModelProto:
        try:
            return onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf's own errors
            raise ModelLoadError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None

    def _io(self, path: Path) -> DecoderIO:
        return decoder_io(self._proto(path), str(path))

    def describe(self) -> dict:
        """What ``info`` shows: the kind, the graphs and their layouts, the settings."""
        out = {
            "kind": self.kind,
            "generation graph": f"{self.decoder.name}: {self.decoder_io.describe()}",
            "attributed graph": f"{self.attribution_decoder.name} (run once over the whole sequence, no cache)",
            "eos": self.settings.eos,
            "tokenizer": str(self.tokenizer) if self.tokenizer else None,
        }
        if self.first_decoder is not None:
            out["first step"] = self.first_decoder.name
        if self.encoder is not None:
            out["encoder"] = self.encoder.name
        return out

    # -- onnxruntime --------------------------------------------------------------------------------------
    def session(self, path: Path):
        """One onnxruntime session per graph, made on first use."""
        from ..runtime import make_session

        if path not in self._sessions:
            self._sessions[path] = make_session(str(path), self.device, source=str(path))
        return self._sessions[path]

    # -- the attributed graph -----------------------------------------------------------------------------
    def empty_cache(self, io: DecoderIO, batch: int, encoder_length: int = 0) -> dict:
        """Zero-length past tensors ``(B, heads, 0, head_dim)`` (an encoder's cross-attention past has the
        encoder's length: the no-cache branch ignores it), and the merged graph's branch flag off."""
        feeds = {}
        for c in io.cache:
            heads, dim = c.shape[1], c.shape[3] if len(c.shape) == 4 else None
            if not isinstance(heads, int) and self.genai.get("num_key_value_heads"):
                heads = int(self.genai["num_key_value_heads"])  # onnxruntime-genai leaves the dims named
            if not isinstance(dim, int) and self.genai.get("head_size"):
                dim = int(self.genai["head_size"])
            if len(c.shape) != 4 or not isinstance(heads, int) or not isinstance(dim, int):
                raise InputSpecError(
                    f"{self.decoder}: the cache input {c.name!r} has shape {c.shape}, not (batch, heads, "
                    "sequence, head_dim) with fixed heads and head_dim"
                )
            length = encoder_length if c.part == "cross" else 0
            feeds[c.name] = np.zeros((batch, heads, length, dim), _NP.get(c.dtype, np.float32))
        if io.branch:
            feeds[io.branch] = np.zeros((1,), bool)
        return feeds

    def explained(self):
        """The attributed decoder as an :class:`onnx_explain.Model`: token ids explained, the logits the
        output, an empty cache fixed (loaded once)."""
        from ..model import load

        if "decoder" not in self._explained:
            io = self.attribution_io
            fixed = {k: v for k, v in self.empty_cache(io, 1).items() if not any(
                c.name == k and c.part == "cross" for c in io.cache)}  # fmt: skip
            batch_axes = {c.name: 0 for c in io.cache if c.part == "cross"}
            self._explained["decoder"] = load(
                self.attribution_decoder, input=io.ids, output=io.logits, fixed_inputs=fixed or None,
                device=self.device, batch_axes=batch_axes or None,
            )  # fmt: skip
        return self._explained["decoder"]

    def explained_encoder(self):
        """The encoder as an :class:`onnx_explain.Model` (token ids explained, hidden states the output)."""
        from ..model import load

        if "encoder" not in self._explained:
            ids, _, hidden = self.encoder_io
            self._explained["encoder"] = load(self.encoder, input=ids, output=hidden, device=self.device)
        return self._explained["encoder"]


def load_generative(path, device: str = "auto") -> GenerativeModel:
    """Load a generative export: a model folder (Optimum's ``model.onnx`` or ``decoder_model_merged.onnx``,
    ``encoder_model.onnx`` + ``decoder_model.onnx`` / ``decoder_with_past_model.onnx``, an onnxruntime-genai
    folder with ``genai_config.json``, transformers.js's ``onnx/`` subfolder) or one decoder ``.onnx``.

    Parameters
    ----------
    path : str or Path
    device : {'auto', 'cpu', 'cuda'}
        onnxruntime's provider for generation.

    Returns
    -------
    GenerativeModel

    Raises
    ------
    InputFileError, ModelLoadError, InputSpecError
        Missing files; a graph that is not a decoder; a layout the generation loop cannot feed.
    """
    return GenerativeModel(path, device)
