"""CPU throughput of the training pipeline: model-only steps, a whole strategy-9 epoch, distort_and_score.

    python bench/pipeline_cpu.py [--data ../shared/data/cifar10-jpeg.tar.gz] [--n 2000] [--out bench/results]

Prints a Markdown table and writes ``pipeline-cpu-<machine>.json`` / ``.md`` into --out. Numbers are
images per second on real CIFAR-10 training images (or ``--data synthetic``), median of repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import iqals_fast as iq
from iqals_fast.config import KINDS, PAPER
from iqals_fast.data.mixture import DistortionCache, epoch_data, epoch_plan
from iqals_fast.data.sources import load
from iqals_fast.model import PaperCNN, standardize
from iqals_fast.train import make_optimizer, versions


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up."""
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def train_steps(x: torch.Tensor, y: torch.Tensor, s: torch.Tensor, steps: int, batch: int = 100) -> None:
    model = PaperCNN()
    opt = make_optimizer(model, PAPER.lr, PAPER.weight_decay)
    for b in range(steps):
        i = slice((b * batch) % len(y), (b * batch) % len(y) + batch)
        loss = iq.soft_label_mse(model(standardize(x[i])), y[i], s[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz"))
    ap.add_argument("--n", type=int, default=2000, help="training images used")
    ap.add_argument("--steps", type=int, default=10, help="train steps per timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()

    ds = load(args.data if Path(args.data).exists() or args.data == "synthetic" else "synthetic").subset(args.n)
    n = len(ds.train_y)
    x = torch.from_numpy(ds.train_x)
    y = torch.from_numpy(ds.train_y)
    s = torch.ones(n)
    rows = {}
    t = timed(lambda: train_steps(x, y, s, args.steps), args.repeats)
    rows["train step, model only (eager, batch 100)"] = args.steps * 100 / t

    def epoch():
        cache = DistortionCache(ds.train_x)  # a fresh cache: blur/JPEG included in the cost
        plan = epoch_plan(n, KINDS, 0, 0)
        return epoch_data(cache, plan)

    t = timed(epoch, args.repeats)
    rows["strategy-9 epoch data, first epoch (blur/JPEG cache built, auto backend)"] = n / t
    cache = DistortionCache(ds.train_x)
    epoch_data(cache, epoch_plan(n, KINDS, 0, 0))
    t = timed(lambda: epoch_data(cache, epoch_plan(n, KINDS, 0, 1)), args.repeats)
    rows["strategy-9 epoch data, later epochs (noise only, auto backend)"] = n / t
    for backend in ("torch", "auto"):
        for kind in KINDS + ("blur+noise",):
            t = timed(lambda k=kind, b=backend: iq.distort_and_score(ds.train_x, k, 2, backend=b), args.repeats)
            rows[f"distort_and_score {kind} level 2 ({backend} backend)"] = n / t

    md = ["| what | images/s |", "|---|---|"] + [f"| {k} | {v:,.0f} |" for k, v in rows.items()]
    machine = (f"{versions()['processor']}, {os.cpu_count()} cores, "
               f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    text = f"# CPU pipeline throughput\n\n{machine}; {n} images from {ds.source}\n" \
           f"backends available: {iq.backends('distort_score')}\n\n" + "\n".join(md) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "-".join(versions()["processor"].lower().split()[:2]) + f"-{os.cpu_count()}c"
    (out / f"pipeline-cpu-{tag}.md").write_text(text)
    (out / f"pipeline-cpu-{tag}.json").write_text(json.dumps(
        {"machine": machine, "versions": versions(), "n": n, "data": ds.source, "images_per_s": rows,
         "backends": iq.backends("distort_score"), "date": time.strftime("%Y-%m-%d %H:%M")}, indent=2) + "\n")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
