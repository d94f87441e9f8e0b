"""``onnx-explain concepts``'s files: the inputs read as the other commands read them,
:func:`onnx_explain.concepts.concept_examples`, then ``concepts.json`` (per channel its examples, best
first), ``heatmaps.npz`` and one figure per channel (each example with its conditional heatmap)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from .io import atomic_write_bytes, read_items

__all__ = ["run_concepts"]


def run_concepts(model, inputs, out_dir, layer, channels=None, *, mode="relevance", top=8, max_target="sum",
                 abs_norm=True, composite="epsilon_plus", batch_size=32, max_items=None) -> dict:  # fmt: skip
    """Search the files ``inputs`` for each channel's examples and write them into ``out_dir``; returns
    the JSON written (``concepts.json``)."""
    from ..concepts import concept_examples
    from ..errors import InputDataError, InputSpecError
    from ..model import load
    from .io import Preprocess

    m = load(model)
    items = [it for it in read_items(inputs, Preprocess.from_model(m.input, None), m.input,
                                     [i.name for i in m.inputs], batch_first=m.signature.to_batch_first)
             if not it.error]  # fmt: skip
    rows, names, skipped = [], [], {}
    for it in items[:max_items] if max_items else items:
        try:  # one input the model cannot take is reported; the others are searched
            rows.append(m.validate_input(np.asarray(it.x)[None])[0])
            names.append(it.name)
        except (InputDataError, InputSpecError) as exc:
            skipped[it.name] = str(exc).splitlines()[0]
    if not rows:
        raise InputDataError(f"no input could be read: nothing to search ({len(skipped)} skipped)")
    x = np.stack(rows)
    r = concept_examples(m, x, layer, channels, mode=mode, top=top, max_target=max_target, abs_norm=abs_norm,
                         composite=composite, batch_size=batch_size)  # fmt: skip
    out = {
        "model": str(model), "layer": {k: r["layer"][k] for k in ("tensor", "node", "op", "shape")},
        "mode": mode, "max_target": max_target, "abs_norm": abs_norm, "composite": composite, "items": len(x),
        "skipped": skipped,
        "channels": {
            str(int(c)): [
                {"item": names[i], "score": float(r["score"][k, j]), "location": int(r["location"][k, j]),
                 "target": int(r["target"][i])}
                for k, i in enumerate(r["index"][:, j])
            ]
            for j, c in enumerate(r["channels"])
        },
    }  # fmt: skip
    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / "concepts.json", json.dumps(out, indent=1).encode())
    buf = io.BytesIO()
    np.savez_compressed(buf, heatmap=r["heatmap"], index=r["index"], channels=r["channels"], score=r["score"])
    atomic_write_bytes(out_dir / "heatmaps.npz", buf.getvalue())
    if m.layout is not None:
        for j, c in enumerate(r["channels"]):
            atomic_write_bytes(out_dir / f"channel_{int(c)}.png", _figure(x, r, j, names, m.layout))
    return out


def _figure(x, r, j: int, names: list, layout: str) -> bytes:
    """One channel: each example (top row) over its conditional heatmap (bottom row)."""
    from ..heatmap import display_image, heat_map
    from ..report import png_bytes

    idx = r["index"][:, j]

    def fig(plt):
        f, axes = plt.subplots(2, len(idx), figsize=(1.8 * len(idx), 3.8), squeeze=False)
        for k, i in enumerate(idx):
            img = display_image(x[i], layout)
            axes[0, k].imshow(img, cmap="gray" if img.ndim == 2 else None)
            axes[0, k].set_title(f"{names[i]}\n{r['score'][k, j]:.3g}", fontsize=7)
            axes[1, k].imshow(
                heat_map(r["heatmap"][k, j], layout, "sum", "signed"), cmap="bwr", vmin=-1, vmax=1
            )
            for ax in axes[:, k]:
                ax.axis("off")
        f.suptitle(f"channel {int(r['channels'][j])}: {r['mode']} maximisation", fontsize=9)
        return f

    return png_bytes(fig)
