"""``iqals-fast reproduce``: train the nine strategies of Table 2, evaluate them, write the report.

Protocols:

- ``paper``: 2,000 epochs on the full training set, lr 0.1 x0.1 every 350 epochs, full test set.
- ``small``: fits in well under 90 minutes on a 2-core CPU (about 360 training images/s there,
  eager): a class-balanced 8,000-image training subset, 10 epochs (800 SGD steps of 100), and a
  class-balanced 5,000-image test subset. The paper's schedule scaled to 10 epochs would cut the
  learning rate after 2 epochs and leave 80% of this short run at lr <= 0.01, where the model
  barely moves; instead the small protocol keeps lr 0.1 for 7 epochs and 0.01 for the last 3
  (a step at 70% of the run). Chosen from the training loss alone, never from test accuracy.

Every run lives in ``OUT/runs/strategy<N>-seed<S>``; an interrupted reproduction resumes: finished
runs are skipped, unfinished ones continue from their last checkpoint.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import STRATEGIES
from .data.sources import atomic_write_bytes, load
from .evaluate import corruption_sets, evaluate, needs_eval, test_sets
from .report import (
    SET_NAMES,
    aggregate,
    calibration_table,
    corruption_errors,
    extended_reports,
    figure3,
    figure4,
    has_extended,
    load_evals,
    table,
)
from .train import CHECKPOINT, TrainConfig, train, versions


@dataclass(frozen=True)
class ReproProtocol:
    name: str
    epochs: int
    train_subset: int | None
    lr_step_epochs: int | None
    test_subset: int | None


PROTOCOLS = {
    "paper": ReproProtocol("paper", 2000, None, None, None),
    "small": ReproProtocol("small", 10, 8000, 7, 5000),
}


def _finished(run: Path, epochs: int) -> bool:
    ck = run / CHECKPOINT
    return ck.is_file() and torch.load(ck, map_location="cpu", weights_only=False)["epoch"] >= epochs


def reproduce(protocol: str = "small", *, data: str = "cifar10", out: str | Path = "results", seeds=(0,),
              strategies=tuple(STRATEGIES), device: str = "cpu", backend: str = "auto", paper_csv=None,
              progress: bool = True, command: str = "iqals-fast reproduce") -> Path:
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
    p = PROTOCOLS[protocol]
    out = Path(out)
    t0 = time.perf_counter()
    ds = load(data)
    runs = []
    for seed in seeds:
        for s in strategies:
            cfg = TrainConfig(strategy=s, data=data, epochs=p.epochs, train_subset=p.train_subset, seed=seed,
                              device=device, backend=backend, lr_step_epochs=p.lr_step_epochs,
                              out=str(out / "runs" / f"strategy{s}-seed{seed}"))
            run = cfg.run_dir()
            if not _finished(run, p.epochs):
                train(cfg, resume=(run / CHECKPOINT).is_file(), dataset=ds, progress=progress)
            runs.append(run)
    evaluate_runs(runs, ds, p.test_subset, device=device, backend=backend)
    table(runs, paper_csv, out_dir=out)
    figure3(runs, out)
    # the committed report must not carry dataset pixels: Figure 4 without the thumbnails
    figure4(runs, out, dataset=ds, device=device, show_images=False)
    extended_reports(runs, out)
    write_report(out, p, runs, ds, seeds, wall=time.perf_counter() - t0, command=command)
    return out / "report.md"


def evaluate_runs(runs, ds, test_subset: int | None, *, device: str = "cpu", backend: str = "auto") -> None:
    """Evaluate every run whose eval.json is missing or older than the current layout (both suites);
    the test sets are computed once and shared."""
    todo = [r for r in runs if needs_eval(r, "all")]
    if not todo:
        return
    sub = ds.test_subset(test_subset)
    sets, corr = test_sets(sub, backend), corruption_sets(sub, backend)
    for r in todo:
        evaluate(r, device=device, backend=backend, dataset=ds, sets=sets, corruptions=corr, test_subset=test_subset)


def claims(agg: dict) -> list[str]:
    """The paper's claims, checked on the numbers (mean over seeds), one line each."""
    lines = []

    def acc(s, n):
        return agg[s][n][0]

    pairs = {"blur": (2, 3), "noise": (4, 5), "jpeg": (6, 7)}
    for kind, (zo, ls) in pairs.items():
        if not all(x in agg for x in (1, zo, ls)):
            continue
        dist = [f"{kind}{lv}" for lv in (1, 2, 3)]
        gain = np.mean([acc(zo, n) - acc(1, n) for n in dist])
        cost = acc(zo, "pristine") - acc(1, "pristine")
        rec = {n: acc(ls, n) - acc(zo, n) for n in ["pristine", *dist]}
        lines.append(
            f"- **{kind}**: mixing ({STRATEGIES[zo].name} vs Pristine) changes accuracy on the {kind} test sets by "
            f"{gain:+.2f} points on average and on the pristine set by {cost:+.2f}; IQA-LS vs 0-1 labels on the same "
            "mixture: " + ", ".join(f"{n} {v:+.2f}" for n, v in rec.items()) + "."
        )
    if all(x in agg for x in (1, 8, 9)):
        dist = [n for n in SET_NAMES if n != "pristine"]
        lines.append(
            f"- **all3**: MIX_all3 vs Pristine on the nine distorted sets {np.mean([acc(8, n) - acc(1, n) for n in dist]):+.2f}"
            f" on average, pristine {acc(8, 'pristine') - acc(1, 'pristine'):+.2f}; IQA-LS vs 0-1 labels: pristine "
            f"{acc(9, 'pristine') - acc(8, 'pristine'):+.2f}, levels 1-2 "
            f"{np.mean([acc(9, n) - acc(8, n) for n in dist if n[-1] in '12']):+.2f}, level 3 "
            f"{np.mean([acc(9, n) - acc(8, n) for n in dist if n[-1] == '3']):+.2f}."
        )
    return lines


def extended_sections(out: Path, evals: list[dict]) -> str:
    """The report's sections beyond Table 2 (empty if some run's eval.json predates them)."""
    if not has_extended(evals):
        return ""
    cal = calibration_table(evals)
    lines = robustness_lines(evals)
    return f"""
## Robustness at the CIFAR-10-C severities

The severities 1-5 of Hendrycks and Dietterich's CIFAR-10-C for Gaussian noise, Gaussian blur and JPEG,
made by our own ops on the same test images (`iqals-fast eval --suite corruptions`). The other twelve
CIFAR-10-C corruptions are not included: no maintained package computes them with CIFAR-10-C's parameters
(see `results/README.md`).

{(out / 'corruptions.md').read_text()}
![Accuracy against CIFAR-10-C severity](corruptions.png)

{chr(10).join(lines)}

## Calibration and confidence

{cal}
Every metric on every test set: [calibration.md](calibration.md) (and `calibration.csv`).

![Reliability diagrams](reliability.png)

![Confidence against SSIM](figure4_ssim.png)

{chr(10).join(calibration_lines(evals))}
"""


def _pairs():
    return {"blur": (2, 3), "noise": (4, 5), "jpeg": (6, 7), "all3": (8, 9)}


def robustness_lines(evals: list[dict]) -> list[str]:
    """mCE of each mixture and IQA-LS against 0-1 labels, per seed, one line each."""
    base = {e["seed"]: e for e in evals if e["strategy"] == 1}
    by = {(e["strategy"], e["seed"]): e for e in evals}
    seeds = sorted(base)
    out = []
    for kind, (zo, ls) in _pairs().items():
        if not all((x, sd) in by for x in (zo, ls) for sd in seeds) or not seeds:
            continue
        m = {x: [corruption_errors(by[(x, sd)], base[sd])["mCE"] for sd in seeds] for x in (zo, ls)}
        out.append(f"- **{kind}**: mCE {STRATEGIES[zo].name} {np.mean(m[zo]):.1f}, {STRATEGIES[ls].name} "
                   f"{np.mean(m[ls]):.1f} (IQA-LS minus 0-1 labels per seed: "
                   + ", ".join(f"{b - a:+.1f}" for a, b in zip(m[zo], m[ls])) + ").")
    return out


def calibration_lines(evals: list[dict]) -> list[str]:
    """ECE and the confidence-SSIM correlation, IQA-LS against 0-1 labels, per seed."""
    by = {(e["strategy"], e["seed"]): e for e in evals}
    seeds = sorted({e["seed"] for e in evals})
    out = []
    for kind, (zo, ls) in _pairs().items():
        if not all((x, sd) in by for x in (zo, ls) for sd in seeds):
            continue

        def d(f, zo=zo, ls=ls):
            return [f(by[(ls, sd)]) - f(by[(zo, sd)]) for sd in seeds]

        ece_clean = d(lambda e: 100 * e["results"]["pristine"]["ece"])
        ece_dist = d(lambda e: 100 * np.mean([e["results"][n]["ece"] for n in SET_NAMES[1:]]))
        rho = d(lambda e: e["pooled"]["all"]["spearman_true_conf_ssim"])
        conf = d(lambda e: e["results"]["pristine"]["mean_true_class_confidence"])
        out.append(f"- **{kind}** (IQA-LS minus 0-1 labels, per seed): ECE clean "
                   + ", ".join(f"{v:+.2f}" for v in ece_clean) + " points, ECE Table 2 distorted "
                   + ", ".join(f"{v:+.2f}" for v in ece_dist) + "; true-class confidence on clean images "
                   + ", ".join(f"{v:+.3f}" for v in conf) + "; pooled Spearman(confidence, SSIM) "
                   + ", ".join(f"{v:+.3f}" for v in rho) + ".")
    return out


def write_report(out: Path, p: ReproProtocol, runs, ds, seeds, wall: float, command: str) -> Path:
    evals = load_evals(runs)
    agg = aggregate(evals)
    train_s = sum(r["seconds"] for run in runs for r in
                  (json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()))
    v = versions()
    spread = [sd for d in agg.values() for (_, sd, k) in d.values() if k > 1]
    text = f"""# Table 2 reproduction: protocol `{p.name}`

Produced by `{command}`.

| | |
|---|---|
| protocol | {p.epochs} epochs, training subset {p.train_subset or 'all'} images, lr 0.1 x0.1 every {p.lr_step_epochs or 'paper-scaled'} epochs, batch 100, test subset {p.test_subset or 'all 10,000'} images |
| data | {ds.source}, sha256 {ds.checksum} |
| seeds | {', '.join(map(str, seeds))} |
| machine | {v['processor']} ({v['machine']}), {torch.get_num_threads()} torch threads |
| versions | iqals_fast {v['iqals_fast']}, torch {v['torch']}, numpy {v['numpy']}, pillow {v['pillow']}, python {v['python']}, {platform.system()} |
| training time | {train_s / 60:.1f} min in all ({len(runs)} runs); this command's wall time {wall / 60:.1f} min (finished runs are not retrained) |

## Table 2

{(out / 'table2.md').read_text()}
## Figures

![Figure 3](figure3.png)

![Figure 4](figure4.png)

## The paper's claims, on these numbers

{chr(10).join(claims(agg)) or '(needs strategies 1-9)'}

Seed-to-seed spread: {f'median std {np.median(spread):.2f} points, max {np.max(spread):.2f}' if spread else 'one seed only, so no spread measured; differences under about 1 point should not be read as effects'}.
{extended_sections(out, evals)}
Each run's options, metrics per epoch and evaluation are in `runs/strategy<N>-seed<S>/` (`config.json`,
`metrics.jsonl`, `eval.json`); the checkpoints are not committed.
"""
    atomic_write_bytes(out / "report.md", lambda f: f.write(text.encode()))
    return out / "report.md"
