"""The input/output layout of a generative ONNX export, read from its names and shapes.

Recognised (docs/methods.md §2.11):

- a decoder: ``input_ids`` (+ ``attention_mask``, ``position_ids``) and a KV cache
  ``past_key_values.{i}.key/value`` -> ``logits`` and ``present.{i}.key/value`` (Optimum, onnxruntime-genai,
  transformers.js); a merged decoder's ``use_cache_branch``; a decoder without cache (``input_ids`` ->
  ``logits`` of shape ``(batch, sequence, vocab)``);
- the decoder of an encoder-decoder (``encoder_hidden_states`` / ``encoder_attention_mask`` inputs,
  ``past_key_values.{i}.decoder.key`` and ``.encoder.key``), and its encoder (``input_ids`` ->
  ``last_hidden_state``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import onnx

from ..errors import InputSpecError

_PAST = re.compile(r"^past(?:_key_values)?[._](\d+)[._](?:(decoder|encoder)[._])?(key|value)$")
_PRESENT = re.compile(r"^present[._](\d+)[._](?:(decoder|encoder)[._])?(key|value)$")
IDS_NAMES = ("input_ids", "decoder_input_ids", "ids", "tokens")
MASK_NAMES = ("attention_mask", "decoder_attention_mask")
POSITION_NAMES = ("position_ids",)
BRANCH_NAMES = ("use_cache_branch",)
ENCODER_STATES = ("encoder_hidden_states",)
ENCODER_MASK = ("encoder_attention_mask",)


@dataclass
class CacheEntry:
    """One past tensor: its input name, the present output that feeds it next step, and its shape."""

    name: str
    present: str | None
    layer: int
    part: str  # 'self' or 'cross' (an encoder-decoder's encoder keys)
    kind: str  # 'key' or 'value'
    shape: list  # dims: an int, or the dim's name
    dtype: int


@dataclass
class DecoderIO:
    """What a decoder graph takes and gives (names), read from the file."""

    ids: str
    logits: str
    mask: str | None = None
    positions: str | None = None
    branch: str | None = None
    encoder_states: str | None = None
    encoder_mask: str | None = None
    cache: list[CacheEntry] = field(default_factory=list)
    presents: list[str] = field(default_factory=list)  # every present.* output (a first step's included)
    others: list[str] = field(default_factory=list)  # inputs none of the above: refused for now
    vocab: int | None = None  # the logits' last dim, where the file fixes it

    @property
    def has_cache(self) -> bool:
        return bool(self.cache)

    def describe(self) -> str:
        parts = [f"ids {self.ids!r}"]
        if self.mask:
            parts.append(f"mask {self.mask!r}")
        if self.positions:
            parts.append(f"positions {self.positions!r}")
        if self.encoder_states:
            parts.append(f"encoder states {self.encoder_states!r}")
        if self.cache:
            layers = len({c.layer for c in self.cache})
            self_cache = [c for c in self.cache if c.part == "self"]
            heads = self_cache[0].shape[1] if self_cache else "?"
            parts.append(f"KV cache: {layers} layers x {heads} heads (seq axis 2)")
        else:
            parts.append("no KV cache")
        if self.branch:
            parts.append(f"merged decoder ({self.branch!r})")
        return f"decoder -> {self.logits!r}: " + ", ".join(parts)


def _dims(v: onnx.ValueInfoProto) -> list:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in v.type.tensor_type.shape.dim
    ]


def decoder_io(proto: onnx.ModelProto, source: str = "<model>") -> DecoderIO:
    """The :class:`DecoderIO` of a decoder graph.

    Raises
    ------
    InputSpecError
        The graph is not a decoder: no token-id input, or no ``(batch, sequence, vocab)`` logits output.
    """
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    outputs = {o.name: o for o in proto.graph.output}
    names = [i.name for i in inputs]
    ids = next((n for n in IDS_NAMES if n in names), None)
    if ids is None:
        raise InputSpecError(
            f"{source}: not a generative export: no token-id input (looked for {', '.join(IDS_NAMES)}; "
            f"the inputs are {', '.join(names)})"
        )
    logits = "logits" if "logits" in outputs else None
    if logits is None:
        three = [o for o in proto.graph.output if len(_dims(o)) == 3]
        if len(three) != 1:
            raise InputSpecError(
                f"{source}: not a generative export: no 'logits' output of shape (batch, sequence, vocab)"
            )
        logits = three[0].name
    if len(_dims(outputs[logits])) != 3:
        raise InputSpecError(f"{source}: the output {logits!r} is not (batch, sequence, vocab) logits")
    last = _dims(outputs[logits])[-1]
    io = DecoderIO(ids=ids, logits=logits, vocab=last if isinstance(last, int) and last > 0 else None)
    presents = {}
    for o in proto.graph.output:
        m = _PRESENT.match(o.name)
        if m:
            presents[(int(m.group(1)), m.group(2) or "decoder", m.group(3))] = o.name
    for i in inputs:
        n = i.name
        if n == ids:
            continue
        m = _PAST.match(n)
        if m:
            layer, which, kind = int(m.group(1)), m.group(2) or "decoder", m.group(3)
            io.cache.append(
                CacheEntry(
                    n, presents.get((layer, which, kind)), layer, "cross" if which == "encoder" else "self",
                    kind, _dims(i), i.type.tensor_type.elem_type,
                )
            )  # fmt: skip
        elif n in MASK_NAMES and io.mask is None:
            io.mask = n
        elif n in POSITION_NAMES:
            io.positions = n
        elif n in BRANCH_NAMES:
            io.branch = n
        elif n in ENCODER_STATES:
            io.encoder_states = n
        elif n in ENCODER_MASK:
            io.encoder_mask = n
        else:
            io.others.append(n)
    if io.others:
        raise InputSpecError(
            f"{source}: the decoder input {io.others[0]!r} is none a generation loop knows how to feed "
            "(token ids, attention mask, position ids, past_key_values.*, use_cache_branch, encoder states)"
        )
    io.presents = list(presents.values())
    missing = [c.name for c in io.cache if c.present is None and c.part == "self"]
    if missing:
        raise InputSpecError(f"{source}: the cache input {missing[0]!r} has no matching present.* output")
    return io


def encoder_io(proto: onnx.ModelProto, source: str = "<model>") -> tuple[str, str | None, str]:
    """(ids, mask or None, hidden states output) of an encoder graph."""
    inits = {i.name for i in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in inits]
    ids = next((n for n in IDS_NAMES if n in names), None)
    if ids is None:
        raise InputSpecError(f"{source}: the encoder has no token-id input (its inputs: {', '.join(names)})")
    mask = next((n for n in MASK_NAMES if n in names), None)
    outs = [o.name for o in proto.graph.output]
    hidden = "last_hidden_state" if "last_hidden_state" in outs else outs[0]
    return ids, mask, hidden
