"""``explain-generation``'s batch: prompts from the command line or a file, generated in batches on
onnxruntime, each item explained and written to its own folder, a manifest line per item.

Layout of ``--out``: ``<NNNNN>/explanation.json``, ``attribution.npz``, ``view.html`` per item (written
whole or not at all), ``manifest.jsonl`` (one line per item: its prompt, continuation, folder, or its
error), ``summary.json`` (the run's settings and counts). One bad item is reported and the rest finish.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputFileError, OnnxExplainError

#: prompts generated together (left-padded) before their items are explained
GENERATE_CHUNK = 16


@dataclass
class Item:
    prompt: str
    continuation: str | None = None
    contrast: str | None = None


def read_prompts(path: Path) -> list[Item]:
    """A ``.txt`` (one prompt per non-empty line) or a ``.jsonl`` (objects with ``prompt`` — or ``text`` —
    and optional ``continuation`` and ``contrast``)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: prompts file not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix.lower() != ".jsonl":
        items = [Item(line) for line in lines if line.strip()]
    else:
        items = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                prompt = rec.get("prompt", rec.get("text"))
                if not isinstance(prompt, str):
                    raise KeyError
            except (json.JSONDecodeError, KeyError, AttributeError):
                raise InputFileError(
                    f"{path}: line {i + 1} is not a JSON object with a 'prompt' (or 'text') string"
                ) from None
            items.append(Item(prompt, rec.get("continuation"), rec.get("contrast")))
    if not items:
        raise InputFileError(f"{path}: no prompts in the file")
    return items


def explain_generation_items(gm, items: list[Item], out_dir: Path, tokenizer=None, **kwargs) -> dict:
    """Explain every item into ``out_dir``; returns the summary (also written as ``summary.json``)."""
    from ..generation import explain_generation
    from .io import JsonlAppender, atomic_write_bytes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.jsonl"
    manifest.unlink(missing_ok=True)
    log = JsonlAppender(manifest)
    ok = failed = 0
    try:
        for a in range(0, len(items), GENERATE_CHUNK):
            chunk = items[a : a + GENERATE_CHUNK]
            results = _explain_chunk(gm, chunk, tokenizer, kwargs, explain_generation)
            for k, (item, result) in enumerate(zip(chunk, results, strict=True)):
                index = a + k
                record = {"index": index, "prompt": item.prompt}
                if isinstance(result, OnnxExplainError):
                    record["error"] = str(result).splitlines()[0]
                    failed += 1
                else:
                    folder = out_dir / f"{index:05d}"
                    result.save(folder)
                    record.update(
                        continuation=result.continuation, folder=folder.name, targets=len(result.targets)
                    )
                    ok += 1
                log.append(record)
    finally:
        log.close()
    summary = {
        "model": str(gm.folder), "kind": gm.kind, "items": len(items), "explained": ok, "failed": failed,
        "method": kwargs.get("method"), "options": {k: v for k, v in kwargs.items() if k != "method"},
    }  # fmt: skip
    atomic_write_bytes(out_dir / "summary.json", json.dumps(summary, indent=1, default=str).encode())
    return summary


def _explain_chunk(gm, chunk: list[Item], tokenizer, kwargs, explain_generation) -> list:
    """Each item's explanation or its error. Items without a continuation are generated together; an item
    whose batch fails is retried alone, so that one bad prompt does not take the others with it."""
    kw = dict(kwargs)
    free = [i for i, it in enumerate(chunk) if it.continuation is None and it.contrast is None]
    out: list = [None] * len(chunk)
    if len(free) > 1:
        try:
            got = explain_generation(gm, [chunk[i].prompt for i in free], tokenizer, **kw)
            for i, e in zip(free, got, strict=True):
                e.prompt = chunk[i].prompt
                out[i] = e
        except OnnxExplainError:
            pass  # retried one by one below
    for i, it in enumerate(chunk):
        if out[i] is not None:
            continue
        try:
            out[i] = explain_generation(gm, it.prompt, tokenizer, continuation=it.continuation,
                                        **{**kw, **({"contrast": it.contrast} if it.contrast else {})})  # fmt: skip
        except OnnxExplainError as exc:
            out[i] = exc
    return out
