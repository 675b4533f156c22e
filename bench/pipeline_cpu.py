"""CPU throughput of the data side of training, and of the LRN op, side by side with their references.

    python bench/pipeline_cpu.py [--data ../shared/data/cifar10-jpeg.tar.gz] [--n 2000] [--out bench/results]

Rows (real CIFAR-10 training images, or ``--data synthetic``; best and median of --repeats calls):
  - a strategy-9 epoch's data (``epoch_data``): the first epoch (blur/JPEG caches built) and a later
    one (fresh noise only), auto backend;
  - ``distort_and_score`` of each kind at level 2, torch backend (the reference) against auto;
  - the model's LRN (tf.nn.lrn, Table 1's parameters), forward + backward on a layer-1-sized batch
    (100 x 64 x 16 x 16, NCHW and channels_last): PyTorch's composite against the dispatched C++ op.
The training step itself (model only, and the whole pipeline through train()) is timed by
``iqals-fast bench`` (bench/results/train-*.md).

Prints a Markdown table and writes ``pipeline-cpu-<machine>.json`` / ``.md`` into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from _timing import timed  # bench/ is sys.path[0] when run as a script

import iqals_fast as iq
from iqals_fast.config import KINDS
from iqals_fast.data.mixture import DistortionCache, epoch_data, epoch_plan
from iqals_fast.data.sources import load
from iqals_fast.model import LRN_ALPHA, LRN_BETA, LRN_BIAS, LRN_DEPTH_RADIUS
from iqals_fast.ops.lrn import lrn
from iqals_fast.train import versions

LRN_SHAPE = (100, 64, 16, 16)  # layer 1's LRN input at batch 100
LRN_UNIT = "batches of " + " x ".join(map(str, LRN_SHAPE))


def lrn_fwd_bwd(x: torch.Tensor, backend: str) -> None:
    x = x.detach().requires_grad_()
    y = lrn(x, LRN_DEPTH_RADIUS, LRN_BIAS, LRN_ALPHA, LRN_BETA, backend)
    y.backward(torch.ones_like(y))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz"))
    ap.add_argument("--n", type=int, default=2000, help="training images used")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()

    ds = load(args.data if Path(args.data).exists() or args.data == "synthetic" else "synthetic").subset(args.n)
    n = len(ds.train_y)
    rows = {}  # what -> units/s (best, median), unit, the reference row's name or None

    def row(name, fn, count, unit="images", ref=None):
        best, med = timed(fn, args.repeats)
        rows[name] = {"best": count / best, "median": count / med, "unit": unit, "vs": ref}

    def first_epoch():
        cache = DistortionCache(ds.train_x)  # a fresh cache: blur/JPEG included in the cost
        return epoch_data(cache, epoch_plan(n, KINDS, 0, 0))

    row("strategy-9 epoch data, first epoch (blur/JPEG caches built)", first_epoch, n)
    cache = DistortionCache(ds.train_x)
    epoch_data(cache, epoch_plan(n, KINDS, 0, 0))
    row("strategy-9 epoch data, later epoch (noise only)", lambda: epoch_data(cache, epoch_plan(n, KINDS, 0, 1)), n)
    for kind in KINDS + ("blur+noise",):
        ref = f"distort_and_score {kind} level 2, torch backend"
        for backend, name in (("torch", ref), ("auto", f"distort_and_score {kind} level 2, auto backend")):
            row(name, lambda k=kind, b=backend: iq.distort_and_score(ds.train_x, k, 2, backend=b), n,
                ref=None if backend == "torch" else ref)

    x = torch.randn(LRN_SHAPE, generator=torch.Generator().manual_seed(0)).relu()
    for layout, xl in (("NCHW", x), ("channels_last", x.contiguous(memory_format=torch.channels_last))):
        ref = f"LRN fwd+bwd {layout}, torch composite"
        row(ref, lambda xl=xl: lrn_fwd_bwd(xl, "torch"), 1, LRN_UNIT, None)
        row(f"LRN fwd+bwd {layout}, dispatched (C++)", lambda xl=xl: lrn_fwd_bwd(xl, "auto"), 1, LRN_UNIT, ref)

    md = ["| what | per s (median) | per s (best) | unit | vs reference (median) |", "|---|---:|---:|---|---:|"]
    for name, r in rows.items():
        ratio = f"{r['median'] / rows[r['vs']]['median']:.1f}x" if r["vs"] else ""
        md.append(f"| {name} | {r['median']:,.0f} | {r['best']:,.0f} | {r['unit']} | {ratio} |")
    machine = (f"{versions()['processor']}, {os.cpu_count()} cores, "
               f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    text = (f"# CPU data pipeline and LRN throughput\n\n{machine}; {n} images from {ds.source}\n"
            f"backends available: distort_score {iq.backends('distort_score')}\n"
            f"Median and best of {args.repeats} calls after a warm-up. The training step: `iqals-fast bench` "
            "(train-*.md).\n\n" + "\n".join(md) + "\n")
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "-".join(versions()["processor"].lower().split()[:2]) + f"-{os.cpu_count()}c"
    (out / f"pipeline-cpu-{tag}.md").write_text(text)
    (out / f"pipeline-cpu-{tag}.json").write_text(json.dumps(
        {"machine": machine, "versions": versions(), "n": n, "data": ds.source, "rows": rows,
         "backends": iq.backends("distort_score"), "date": time.strftime("%Y-%m-%d %H:%M")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
