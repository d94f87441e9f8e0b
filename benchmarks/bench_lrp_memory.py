"""Peak memory of one LRP call against one forward+backward of the same converted graph (issue 27: LRP's
peak ≤ 1.3x the forward+backward's).

    python benchmarks/bench_lrp_memory.py
    python benchmarks/bench_lrp_memory.py --models resnet18 vgg16 --out /tmp/memory.md

Each measurement runs in a fresh process with ``MALLOC_MMAP_THRESHOLD_=65536`` (large blocks are mapped and
returned to the system when freed, so the resident size follows what is alive): the model is loaded and the
call made once (the LRP graph is built, the weights are touched), then the kernel's high-water mark is reset
(``/proc/self/clear_refs``) and the call made again; the call's peak is ``VmHWM`` minus ``VmRSS`` before it:
what the call itself holds at its worst, weights excluded. CPU; on a CUDA machine the same comparison would
read ``torch.cuda.max_memory_allocated``.

Cases: ResNet-18 on 8 images 224x224 and VGG-16 on 4 (``epsilon`` on all layers, ``epsilon_plus``, ``epsilon_gamma_box``)
and a 6-layer token-id BERT (width 384) on 16 texts of 128 tokens with masks (AttnLRP, CP-LRP); each against
the first row of its model: a plain forward+backward of the converted module (ResNet), the ``gradient``
method through the embedding cut (BERT: one forward and backward). Results go to ``benchmarks/results/lrp_memory.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent

CNN_CASES = [
    ("fwd+bwd (converted module)", None),
    ("gradient", {}),
    ("lrp epsilon (all layers)", {"composite": "epsilon_plus", "rules": {"Conv": "epsilon"}}),
    ("lrp epsilon_plus", {"composite": "epsilon_plus"}),
    ("lrp epsilon_gamma_box", {"composite": "epsilon_gamma_box", "low": -3.0, "high": 3.0}),
]
#: images per call of each CNN
IMAGES = {"resnet18": 8, "vgg16": 4}
CASES = {
    "resnet18": CNN_CASES,
    "vgg16": CNN_CASES,
    "bert": [
        ("gradient (the fwd+bwd)", {}),
        ("lrp attnlrp", {"composite": "attnlrp"}),
        ("lrp cp_lrp", {"composite": "cp_lrp"}),
    ],
}


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(key)


def _build(name: str, tmp: str):
    import numpy as np
    import torch

    path = os.path.join(tmp, f"{name}.onnx")
    if name in IMAGES:
        import torchvision

        torch.manual_seed(0)
        net = getattr(torchvision.models, name)(weights=None).eval()
        x = torch.randn(IMAGES[name], 3, 224, 224, generator=torch.Generator().manual_seed(1)).clamp(-3, 3)
        if not os.path.exists(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(net, (x[:1],), path, dynamo=False, opset_version=17, input_names=["x"],
                                  dynamic_axes={"x": {0: "b"}})  # fmt: skip
        return path, x.numpy()
    sys.path.insert(0, str(HERE))
    import bench_lrp_tokens as tok

    ids, mask = tok._inputs(16, 128)
    if not os.path.exists(path):
        tok.export_bert(tok._model(), path)
    return path, {"input_ids": ids, "attention_mask": np.asarray(mask)}


def worker(name: str, index: int, tmp: str) -> None:
    import gc

    import torch

    import onnx_explain as oe

    torch.set_num_threads(1)
    path, x = _build(name, tmp)
    m = oe.load(path)
    label, kw = CASES[name][index]
    n = len(x["input_ids"]) if isinstance(x, dict) else len(x)
    if kw is None:  # the converted module itself: one forward and one backward at the input
        module = m.torch_module()
        xt = torch.as_tensor(x)

        def call():
            z = xt.clone().requires_grad_(True)
            torch.autograd.grad(module(z)[:, 0].sum(), z)
    else:
        method = "gradient" if label.startswith("gradient") else "lrp"

        def call():
            oe.explain(m, x, method, target=0, batch_size=n, **kw)

    call()
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    call()
    peak = _status("VmHWM")
    print(json.dumps({"label": label, "before": before, "peak": peak, "extra": peak - before}))


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--out", default=str(HERE / "results" / "lrp_memory.md"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    rows = []
    for name in args.models:
        cases = CASES[name]
        _build(name, tmp)  # once, outside the measured processes
        for i in range(len(cases)):
            p = subprocess.run([sys.executable, __file__, "--worker", name, str(i), tmp], capture_output=True,
                               text=True, env=env)  # fmt: skip
            if p.returncode != 0:
                print(p.stderr[-2000:], file=sys.stderr)
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            rows.append((name, r))
            print(name, r, flush=True)
    lines = [
        "# LRP peak memory against one forward+backward",
        "",
        f"Machine: {os.cpu_count()} CPU cores, CPU. Peak = the call's resident high-water mark minus the "
        "resident size before it (weights and the built LRP graph excluded), fresh process per row, "
        "`MALLOC_MMAP_THRESHOLD_=65536`; one thread. ResNet-18: 8 images 224x224; VGG-16: 4; BERT: 6 layers x 384, 16 "
        "texts x 128 tokens with masks (token ids through the embedding cut). Command: "
        "`python benchmarks/bench_lrp_memory.py`",
        "",
        "| model | call | peak (MiB) | / fwd+bwd |",
        "|---|---|---|---|",
    ]
    base = {}
    for name, r in rows:
        base.setdefault(name, r["extra"])  # the first row of a model: its forward+backward
        ratio = f"{r['extra'] / base[name]:.2f}" if base.get(name) else "–"
        lines.append(f"| {name} | {r['label']} | {r['extra'] / 2**20:.0f} | {ratio} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
