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

``--iqa M`` (M other than ``ssim``) scores IQA-LS's training images with another quality measure
(``ops/iqa.py``). Its IQA-LS runs (strategies 3, 5, 7, 9) live in ``OUT/runs/strategy<N>-seed<S>-<M>``
and its report, tables and figures in ``OUT/iqa-<M>/``, so they never collide with the SSIM ones.
Runs with 0-1 labels (1, 2, 4, 6, 8) use no quality score: they are the SSIM runs, in the same
directories. Asked for, they are trained (or found finished) there; not asked for, those already
evaluated in ``OUT/runs`` are put in the report beside the new runs, and the SSIM IQA-LS runs of the
same seeds are compared with the new measure's.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import STRATEGIES
from .data.sources import atomic_write_bytes, load
from .evaluate import CORRUPTION_SETS, TEST_SETS, corruption_sets, evaluate, needs_eval, test_sets
from .ops.iqa import check_measure
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


def run_name(strategy: int, seed: int, iqa: str = "ssim") -> str:
    """``strategy<N>-seed<S>``, with ``-<iqa>`` for an IQA-LS strategy scored by a measure other than SSIM
    (a 0-1 label run uses no quality score, so every measure shares the SSIM run)."""
    name = f"strategy{strategy}-seed{seed}"
    return f"{name}-{iqa}" if iqa != "ssim" and STRATEGIES[strategy].iqa_ls else name


def report_dir(out: Path, iqa: str = "ssim") -> Path:
    """Where the report goes: OUT for SSIM, OUT/iqa-<M> for another measure."""
    return Path(out) if iqa == "ssim" else Path(out) / f"iqa-{iqa}"


def reproduce(protocol: str = "small", *, data: str = "cifar10", out: str | Path = "results", seeds=(0,),
              strategies=tuple(STRATEGIES), device: str = "cpu", backend: str = "auto", paper_csv=None,
              progress: bool = True, command: str = "iqals-fast reproduce", iqa: str = "ssim") -> Path:
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
    check_measure(iqa)
    p = PROTOCOLS[protocol]
    out = Path(out)
    t0 = time.perf_counter()
    ds = load(data)
    runs = []
    for seed in seeds:
        for s in strategies:
            m = iqa if STRATEGIES[s].iqa_ls else "ssim"  # 0-1 labels: the measure is unused, the SSIM run is it
            cfg = TrainConfig(strategy=s, data=data, epochs=p.epochs, train_subset=p.train_subset, seed=seed,
                              device=device, backend=backend, lr_step_epochs=p.lr_step_epochs,
                              out=str(out / "runs" / run_name(s, seed, m)), iqa=m)
            run = cfg.run_dir()
            if not _finished(run, p.epochs):
                train(cfg, resume=(run / CHECKPOINT).is_file(), dataset=ds, progress=progress)
            runs.append(run)
    evaluate_runs(runs, ds, p.test_subset, device=device, backend=backend, progress=progress)
    ssim_runs = []
    if iqa != "ssim":
        # the 0-1 label runs not asked for, where already evaluated, complete the comparison (never retrained)
        asked = {(s, sd) for sd in seeds for s in strategies}
        runs += [r for sd in seeds for s in STRATEGIES if not STRATEGIES[s].iqa_ls and (s, sd) not in asked
                 for r in [out / "runs" / run_name(s, sd)] if not needs_eval(r, "all")]
        ssim_runs = [r for sd in seeds for s in strategies if STRATEGIES[s].iqa_ls
                     for r in [out / "runs" / run_name(s, sd)] if not needs_eval(r, "all")]
    rep = report_dir(out, iqa)
    rep.mkdir(parents=True, exist_ok=True)
    table(runs, paper_csv, out_dir=rep)
    figure3(runs, rep)
    # the committed report must not carry dataset pixels: Figure 4 without the thumbnails
    figure4(runs, rep, dataset=ds, device=device, show_images=False)
    extended_reports(runs, rep)
    write_report(rep, p, runs, ds, seeds, wall=time.perf_counter() - t0, command=command, iqa=iqa,
                 ssim_runs=ssim_runs)
    return rep / "report.md"


def evaluate_runs(runs, ds, test_subset: int | None, *, device: str = "cpu", backend: str = "auto",
                  progress: bool = False) -> None:
    """Evaluate every run whose eval.json is missing or older than the current layout (both suites);
    the test sets are computed once and shared."""
    todo = [r for r in runs if needs_eval(r, "all")]
    if not todo:
        return
    sub = ds.test_subset(test_subset)
    with tqdm(total=len(TEST_SETS) - 1 + len(CORRUPTION_SETS), desc="test sets", unit="set",
              disable=not progress, dynamic_ncols=True) as bar:
        sets, corr = test_sets(sub, backend, bar), corruption_sets(sub, backend, bar)
    for r in todo:
        evaluate(r, device=device, backend=backend, dataset=ds, sets=sets, corruptions=corr, test_subset=test_subset,
                 progress=progress)


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


def mean_quality(runs) -> dict[str, float]:
    """Mean training quality q per level (``mean_ssim`` in metrics.jsonl holds the run's measure), over
    the runs' epochs."""
    vals: dict[str, list] = {}
    for run in runs:
        for line in (Path(run) / "metrics.jsonl").read_text().splitlines():
            for k, v in json.loads(line).get("mean_ssim", {}).items():
                vals.setdefault(k, []).append(v)
    return {k: float(np.mean(v)) for k, v in vals.items()}


def measure_section(evals: list[dict], ssim_evals: list[dict], iqa: str, runs, ssim_runs, out: Path | None = None
                    ) -> str:
    """IQA-LS scored with ``iqa`` against SSIM and against 0-1 labels, mean over seeds: Table 2 accuracy
    (pristine, mean of each kind's three levels), mCE (strategy 1 of the same seed as baseline), ECE;
    and the mean q each measure gives the training levels. Writes measures.md/.csv into ``out``."""
    base = {e["seed"]: e for e in evals if e["strategy"] == 1}
    kinds = ("blur", "noise", "jpeg")
    cols = ["pristine", *(f"{k} 1-3" for k in kinds), "mCE", "ECE clean", "ECE T2 distorted"]

    def row(es):
        v = {"pristine": [100 * e["results"]["pristine"]["accuracy"] for e in es]}
        for k in kinds:
            v[f"{k} 1-3"] = [100 * np.mean([e["results"][f"{k}{lv}"]["accuracy"] for lv in (1, 2, 3)]) for e in es]
        v["mCE"] = [corruption_errors(e, base[e["seed"]])["mCE"] for e in es
                    if e.get("corruptions") and e["seed"] in base]
        v["ECE clean"] = [100 * e["results"]["pristine"]["ece"] for e in es]
        v["ECE T2 distorted"] = [100 * np.mean([e["results"][n]["ece"] for n in SET_NAMES[1:]]) for e in es]
        return {c: (float(np.mean(x)) if x else float("nan"), len(x)) for c, x in v.items()}

    lines = [f"| # | labels | seeds | {' | '.join(cols)} |", "|---|---|---|" + "---|" * len(cols)]
    rows = []
    for zo, ls in _pairs().values():
        for s, lab, es in ((zo, "0-1", [e for e in evals if e["strategy"] == zo]),
                           (ls, "IQA-LS ssim", [e for e in ssim_evals if e["strategy"] == ls]),
                           (ls, f"IQA-LS {iqa}", [e for e in evals if e["strategy"] == ls])):
            if not es:
                continue
            r = row(es)
            lines.append(f"| {s} | {lab} | {','.join(str(e['seed']) for e in es)} | "
                         + " | ".join("—" if not np.isfinite(r[c][0]) else f"{r[c][0]:.2f}" for c in cols) + " |")
            rows += [{"strategy": s, "labels": lab, "seeds": len(es), "quantity": c, "mean": round(r[c][0], 4)}
                     for c in cols]
    levels = [f"{k}{lv}" for k in kinds for lv in (1, 2, 3)]
    qs = {"ssim": mean_quality(ssim_runs), iqa: mean_quality(runs)}
    qlines = ["| measure | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels)]
    for m, q in qs.items():
        if q:
            qlines.append(f"| {m} | " + " | ".join(f"{q[n]:.3f}" if n in q else "—" for n in levels) + " |")
    text = f"""Accuracy (%) on Table 2's test sets (pristine; mean of the three levels of each kind), mCE over the
CIFAR-10-C severities (strategy 1 of the same seed = 100) and ECE (%, 15 bins), mean over the seeds listed.
0-1 label runs use no quality score: they are the SSIM report's runs.

{chr(10).join(lines)}

Mean quality q = T(measure) that IQA-LS put on the true class, per training level (metrics.jsonl's
`mean_ssim`, which holds the run's measure; mean over epochs and runs):

{chr(10).join(qlines)}
"""
    if out is not None:
        from .report import _csv, _write

        _write(out, "measures.md", text)
        _write(out, "measures.csv", _csv(rows))
    return text


def write_report(out: Path, p: ReproProtocol, runs, ds, seeds, wall: float, command: str, iqa: str = "ssim",
                 ssim_runs=()) -> Path:
    evals = load_evals(runs)
    agg = aggregate(evals)
    train_s = sum(r["seconds"] for run in runs for r in
                  (json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()))
    v = versions()
    spread = [sd for d in agg.values() for (_, sd, k) in d.values() if k > 1]
    title, where, extra = "", "runs/strategy<N>-seed<S>/", ""
    if iqa != "ssim":
        title = f", IQA-LS scored with `{iqa}`"
        where = f"../runs/strategy<N>-seed<S>-{iqa}/ (IQA-LS) and ../runs/strategy<N>-seed<S>/ (0-1 labels)"
        extra = (f"\n## IQA-LS with `{iqa}` against SSIM\n\n"
                 + measure_section(evals, load_evals(ssim_runs), iqa, [r for r in runs if r.name.endswith(iqa)],
                                   ssim_runs, out))
    text = f"""# Table 2 reproduction: protocol `{p.name}`{title}

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
{extra}{extended_sections(out, evals)}
Each run's options, metrics per epoch and evaluation are in `{where}` (`config.json`,
`metrics.jsonl`, `eval.json`); the checkpoints are not committed.
"""
    atomic_write_bytes(out / "report.md", lambda f: f.write(text.encode()))
    return out / "report.md"
