"""Where LRP's time goes: torch's profiler over one ``oe.explain`` call of LRP and of gradient × input on the
same converted model, per aten op (the kernels both run, and what LRP adds), one thread.

    python benchmarks/profile_lrp.py --model bert            # BERT-base on float embeddings, AttnLRP
    python benchmarks/profile_lrp.py --model vit --composite cp_lrp
    python benchmarks/profile_lrp.py --model resnet18 --composite epsilon_plus

Prints a markdown table (``benchmarks/results/lrp.md`` keeps the current one): CPU milliseconds per op for
each call, the difference, and the op's share of LRP's extra time. The LRP graph is built on a warm-up call;
the profiled calls are the second ones.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _model(name: str, tmp: str):
    import torch

    sys.path.insert(0, str(HERE))
    if name in ("bert", "vit"):
        import bench_lrp_transformer as bt

        net, x = bt.build(name)
        path = f"{tmp}/{name}.onnx"
        bt.export(net, x, path)
        return path, x.numpy()
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)).clamp(-2.5, 2.5)
    path = f"{tmp}/{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), path, dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "b"}})  # fmt: skip
    return path, x.numpy()


def _profile(fn) -> dict:
    from torch.profiler import profile

    fn()
    with profile() as p:
        fn()
    out = defaultdict(lambda: [0, 0.0])
    for e in p.key_averages():
        if e.key.startswith(("aten::", "_")) or "Backward" in e.key:
            out[e.key][0] += e.count
            out[e.key][1] += e.self_cpu_time_total / 1e3
    return out


def main() -> None:
    import torch

    import onnx_explain as oe

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bert", choices=["bert", "vit", "resnet18", "vgg16"])
    ap.add_argument("--composite", default=None, help="default: attnlrp for transformers, epsilon_plus else")
    ap.add_argument("--rows", type=int, default=14)
    args = ap.parse_args()
    torch.set_num_threads(1)
    path, x = _model(args.model, tempfile.mkdtemp())
    m = oe.load(path)
    t = int(oe.explain(m, x, "gradient").target[0])
    kw = {"composite": args.composite} if args.composite else {}
    if args.composite and "box" in args.composite:  # z^B's bounds: the input's own range
        kw.update(low=float(np.min(x)), high=float(np.max(x)))
    base = _profile(lambda: oe.explain(m, x, "gradient_x_input", target=t))
    lrp = _profile(lambda: oe.explain(m, x, "lrp", target=t, **kw))
    total_b = sum(v[1] for v in base.values())
    total_l = sum(v[1] for v in lrp.values())
    extra = total_l - total_b
    keys = sorted(set(base) | set(lrp), key=lambda k: -(lrp.get(k, [0, 0])[1] - base.get(k, [0, 0])[1]))
    lines = [
        "| op | calls (gxi / LRP) | gxi ms | LRP ms | LRP − gxi ms | share of LRP's extra |",
        "|---|---|---|---|---|---|",
    ]
    for k in keys[: args.rows]:
        b, l_ = base.get(k, [0, 0.0]), lrp.get(k, [0, 0.0])
        d = l_[1] - b[1]
        lines.append(f"| `{k}` | {b[0]} / {l_[0]} | {b[1]:.1f} | {l_[1]:.1f} | {d:+.1f} | "
                     f"{d / extra:.0%} |" if extra > 0 else f"| `{k}` | {b[0]} / {l_[0]} | {b[1]:.1f} | {l_[1]:.1f} | {d:+.1f} | – |")  # fmt: skip
    lines.append(f"| **total** (self CPU) | | {total_b:.1f} | {total_l:.1f} | {extra:+.1f} | |")
    print(
        f"{args.model}, LRP {args.composite or 'auto'} vs gradient x input, one thread, CPU ms of one call\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
