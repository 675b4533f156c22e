"""CPU comparison: the cpu backend (C++) against its peers, side by side in one process.

The README's CPU figures (images/s, ratios vs kornia and scikit-image) come from this script.
Operations, on the same real CIFAR-10 test images (default 2,000: the first 200 of each class):
  blur+noise+SSIM   Gaussian blur sigma 1.0, then noise of variance 0.01, rounded to uint8, then SSIM
  noise+SSIM        noise of variance 0.01, rounded, then SSIM
  SSIM              SSIM alone, of each image against its JPEG (quality 8) copy
Contenders (bench/contenders.py): the cpu backend; the torch backend (iqals_fast's reference);
scikit-image, one image at a time; kornia, batched; pytorch-msssim's ssim, with the blur and noise in
plain PyTorch. Each gets uint8 images and returns distorted uint8 images and per-image SSIM,
conversions included. Torch-based contenders use torch's threads, the cpu backend as many.

Timing: torch.utils.benchmark.Timer, `--rounds` interleaved rounds: each round times every contender
in turn with ``blocked_autorange(min_run_time=MIN_ROUND_S)`` (its block-size calibration call, not
counted, is the warm-up), so that load from other processes on the machine falls on all of them
alike; a round's time per call is that measurement's mean. Reported: images/s of the median round
(and of the best), and the cpu backend's ratio to each peer.

    python bench/compare_cpu.py                       # writes bench/results/cpu-<machine>.{json,md}
    python bench/compare_cpu.py --n 500 --rounds 3 --no-write
    python bench/compare_cpu.py --n 20 --rounds 1 --out /tmp/cmp    # a quick check of the script

bench/ops/bench_distort_and_score.py and bench_ssim.py time the same contenders with pytest-benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from contenders import (
    ARCHIVE,
    CONTENDERS,
    JPEG_QUALITY,
    OPS,
    RESULTS,
    SEED,
    SIGMA,
    VAR,
    images,
    machine,
    machine_label,
    prepare,
)
from torch.utils.benchmark import Timer

MIN_ROUND_S = 0.25  # each contender runs at least this long in each round
TIMER = f"torch.utils.benchmark.Timer.blocked_autorange(min_run_time={MIN_ROUND_S})"


def measure(data: dict, ops: dict, contenders: dict, rounds: int, log=print) -> dict:
    n = len(data["x"])
    results = {}
    for op, kw in ops.items():
        timers = {c: Timer("fn(data, **kw)", globals={"fn": fn, "data": data, "kw": kw},
                           num_threads=torch.get_num_threads(), label=op, sub_label=c)
                  for c, fn in contenders.items()}
        times = {c: [] for c in contenders}
        calls = {c: [] for c in contenders}
        for _ in range(rounds):
            for c, timer in timers.items():
                m = timer.blocked_autorange(min_run_time=MIN_ROUND_S)
                times[c].append(m.mean)
                calls[c].append(m.number_per_run * len(m.raw_times))
        rows = {}
        for c, ts in times.items():
            rows[c] = {"seconds": ts, "calls": calls[c], "median_s": statistics.median(ts), "best_s": min(ts),
                       "images_per_s": n / statistics.median(ts), "best_images_per_s": n / min(ts)}
        if "cpu" in rows:
            for c in rows:
                rows[c]["cpu_ratio"] = rows["cpu"]["images_per_s"] / rows[c]["images_per_s"]
        results[op] = rows
        log(f"{op}: " + ", ".join(f"{c} {r['images_per_s']:,.0f}/s" for c, r in rows.items()))
    return results


def markdown(results: dict, m: dict, n: int, rounds: int, load: tuple, source: str) -> str:
    lines = [f"# CPU backend vs peers on {n:,} {source}", "",
             f"Machine: {m['cpu_model']}, {m['logical_cores']} logical cores; torch threads {m['torch_threads']}; "
             f"kernels: {m['kernels_isa']}. Load average before/after: {load[0]:.2f} / {load[1]:.2f}.",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
             f"Median of {rounds} rounds (each round runs every contender in turn, for at least {MIN_ROUND_S} s; "
             f"`{TIMER}`); best round in the next column.",
             "Ratio = cpu backend images/s / contender images/s.", ""]
    targets = [("blur+noise+SSIM", "kornia", 25), ("blur+noise+SSIM", "scikit-image", 60), ("SSIM", "scikit-image", 40)]
    checks = [f"{op} >= {goal}x {peer}: {results[op][peer]['cpu_ratio']:.1f}x "
              f"({'met' if results[op][peer]['cpu_ratio'] >= goal else 'NOT met'})"
              for op, peer, goal in targets if op in results and peer in results[op] and "cpu" in results[op]]
    if checks:
        lines += ["Targets of issue 3: " + "; ".join(checks) + ".", ""]
    for op, rows in results.items():
        lines += [f"## {op}", "", "| contender | images/s (median) | images/s (best) | cpu backend ratio |",
                  "|---|---:|---:|---:|"]
        for c, r in rows.items():
            ratio = "1" if c == "cpu" else (f"{r['cpu_ratio']:.1f}x" if "cpu_ratio" in r else "")
            lines.append(f"| {c} | {r['images_per_s']:,.0f} | {r['best_images_per_s']:,.0f} | {ratio} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="images (default 2000)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of: "
                    + ", ".join(CONTENDERS))
    ap.add_argument("--data", default=str(ARCHIVE), help="the CIFAR-10 JPEG archive (default $IQALS_CIFAR_JPEG or "
                    "../shared/data/cifar10-jpeg.tar.gz), or 'generated' for generated images")
    ap.add_argument("--label", help="machine label for the result files (default: from the CPU model)")
    ap.add_argument("--out", default=str(RESULTS), help="directory for the result files (default bench/results)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    chosen = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CONTENDERS]
    if unknown:
        ap.error(f"unknown contenders {unknown}; choose from {list(CONTENDERS)}")
    try:
        x, source = images(args.n, args.data)
    except FileNotFoundError as e:
        ap.error(str(e))

    m = machine()
    data = prepare(x)
    load0 = os.getloadavg()[0]
    results = measure(data, OPS, {c: CONTENDERS[c] for c in chosen}, args.rounds)
    load1 = os.getloadavg()[0]
    md = markdown(results, m, len(data["x"]), args.rounds, (load0, load1), source)
    print()
    print(md)
    if not args.no_write:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"cpu-{args.label or machine_label(m)}"
        record = {"machine": m, "images": len(data["x"]), "source": source, "rounds": args.rounds,
                  "load_average": [load0, load1], "timer": TIMER,
                  "params": {"sigma": SIGMA, "var": VAR, "jpeg_quality": JPEG_QUALITY, "seed": SEED},
                  "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": results}
        stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
        stem.with_suffix(".md").write_text(md + "\n")
        print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
