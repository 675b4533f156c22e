"""The reproduction report: ``report.md`` and the files beside it, from evaluated runs.

``write_report`` lays out the protocol, data, machine and versions, Table 2, the figures, the paper's
claims checked on the numbers (``claims``), and, where every eval.json holds them, the CIFAR-10-C and
calibration sections (``extended_sections``); with another IQA measure than SSIM, its comparison
with SSIM and 0-1 labels (``measure_section``, also ``measures.md`` / ``.csv``). ``extended_reports``
writes the tables and figures those sections show.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import torch

from .._io import save_text
from ..config import KINDS, PRISTINE_STRATEGY, STRATEGIES, STRATEGY_PAIRS, ReproProtocol
from ..runs import read_metrics, versions
from .figures import confidence_ssim_figure, corruption_figure, reliability_figure
from .tables import (
    SET_NAMES,
    _csv,
    _write,
    aggregate,
    calibration_table,
    corruption_errors,
    corruption_table,
    has_extended,
    load_evals,
)


def extended_reports(runs, out_dir) -> list[Path]:
    """corruptions.md/.csv, calibration.md/.csv and the three new figures, when every run's eval.json has them."""
    evals = load_evals(runs)
    if not has_extended(evals):
        return []
    out = Path(out_dir)
    corruption_table(evals, out)
    calibration_table(evals, out)
    return [out / "corruptions.md", out / "calibration.md", reliability_figure(evals, out),
            confidence_ssim_figure(evals, out), corruption_figure(evals, out)]


def claims(agg: dict) -> list[str]:
    """The paper's claims, checked on the numbers (mean over seeds), one line each."""
    lines = []

    def acc(s, n):
        return agg[s][n][0]

    p = PRISTINE_STRATEGY
    for kind in KINDS:
        zo, ls = STRATEGY_PAIRS[kind]
        if not all(x in agg for x in (p, zo, ls)):
            continue
        dist = [f"{kind}{lv}" for lv in (1, 2, 3)]
        gain = np.mean([acc(zo, n) - acc(p, n) for n in dist])
        cost = acc(zo, "pristine") - acc(p, "pristine")
        rec = {n: acc(ls, n) - acc(zo, n) for n in ["pristine", *dist]}
        lines.append(
            f"- **{kind}**: mixing ({STRATEGIES[zo].name} vs Pristine) changes accuracy on the {kind} test sets by "
            f"{gain:+.2f} points on average and on the pristine set by {cost:+.2f}; IQA-LS vs 0-1 labels on the same "
            "mixture: " + ", ".join(f"{n} {v:+.2f}" for n, v in rec.items()) + "."
        )
    zo, ls = STRATEGY_PAIRS["all3"]
    if all(x in agg for x in (p, zo, ls)):
        dist = [n for n in SET_NAMES if n != "pristine"]
        lines.append(
            f"- **all3**: MIX_all3 vs Pristine on the nine distorted sets {np.mean([acc(zo, n) - acc(p, n) for n in dist]):+.2f}"
            f" on average, pristine {acc(zo, 'pristine') - acc(p, 'pristine'):+.2f}; IQA-LS vs 0-1 labels: pristine "
            f"{acc(ls, 'pristine') - acc(zo, 'pristine'):+.2f}, levels 1-2 "
            f"{np.mean([acc(ls, n) - acc(zo, n) for n in dist if n[-1] in '12']):+.2f}, level 3 "
            f"{np.mean([acc(ls, n) - acc(zo, n) for n in dist if n[-1] == '3']):+.2f}."
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


def robustness_lines(evals: list[dict]) -> list[str]:
    """mCE of each mixture and IQA-LS against 0-1 labels, per seed, one line each."""
    base = {e["seed"]: e for e in evals if e["strategy"] == PRISTINE_STRATEGY}
    by = {(e["strategy"], e["seed"]): e for e in evals}
    seeds = sorted(base)
    out = []
    for kind, (zo, ls) in STRATEGY_PAIRS.items():
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
    for kind, (zo, ls) in STRATEGY_PAIRS.items():
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
        for rec in read_metrics(run):
            for k, v in rec.get("mean_ssim", {}).items():
                vals.setdefault(k, []).append(v)
    return {k: float(np.mean(v)) for k, v in vals.items()}


def measure_section(evals: list[dict], ssim_evals: list[dict], iqa: str, runs, ssim_runs, out: Path | None = None
                    ) -> str:
    """IQA-LS scored with ``iqa`` against SSIM and against 0-1 labels, mean over seeds: Table 2 accuracy
    (pristine, mean of each kind's three levels), mCE (strategy 1 of the same seed as baseline), ECE;
    and the mean q each measure gives the training levels. Writes measures.md/.csv into ``out``."""
    base = {e["seed"]: e for e in evals if e["strategy"] == PRISTINE_STRATEGY}
    kinds = KINDS
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
    for zo, ls in STRATEGY_PAIRS.values():
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
        _write(out, "measures.md", text)
        _write(out, "measures.csv", _csv(rows))
    return text


def write_report(out: Path, p: ReproProtocol, runs, ds, seeds, wall: float, command: str, iqa: str = "ssim",
                 ssim_runs=()) -> Path:
    evals = load_evals(runs)
    agg = aggregate(evals)
    train_s = sum(r["seconds"] for run in runs for r in read_metrics(run))
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
    save_text(out / "report.md", text)
    return out / "report.md"
