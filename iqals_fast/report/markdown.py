"""The reproduction report: ``report.md`` and the files beside it, from evaluated runs.

``write_report`` lays out the protocol, data, machine and versions, Table 2 (the paper's value beside
ours in every cell), the figures, the paper's claims computed on the paper's numbers and on ours side
by side (``claims``), and, where every eval.json holds them, the CIFAR-10-C and calibration sections (``extended_sections``); with another IQA measure than SSIM, its comparison
with SSIM and 0-1 labels (``measure_section``, also ``measures.md`` / ``.csv``). ``extended_reports``
writes the tables and figures those sections show.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import torch

from .._io import save_text
from ..config import KINDS, LEVEL_NUMBERS, PRISTINE_STRATEGY, STRATEGIES, STRATEGY_PAIRS, ReproProtocol
from ..runs import read_metrics, versions
from .figures import confidence_ssim_figure, corruption_figure, curve_figure, curves, reliability_figure
from .tables import (
    SET_NAMES,
    aggregate,
    calibration_table,
    corruption_errors,
    corruption_table,
    csv_text,
    has_extended,
    load_evals,
    paper_aggregate,
    write_text,
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


LABELS_CLAIM = "IQA-LS beats 0-1 labels"


def claim_quantities(agg: dict) -> list[tuple[str, str, str, float]]:
    """The numbers behind the paper's claims, computed on ``agg`` (``aggregate``'s shape: ours, or the paper's
    through ``paper_aggregate``): ``(mixture, claim, quantity, value in points)``, for each mixture whose
    strategies (and strategy 1) are all in ``agg``."""
    p, out = PRISTINE_STRATEGY, []

    def d(a, b, names):
        return float(np.mean([agg[a][n][0] - agg[b][n][0] for n in names]))

    for kind, (zo, ls) in STRATEGY_PAIRS.items():
        if not all(x in agg for x in (p, zo, ls)):
            continue
        single = kind in KINDS
        dist = [f"{kind}{lv}" for lv in LEVEL_NUMBERS] if single else list(SET_NAMES[1:])
        mix, lab = f"{STRATEGIES[zo].name} − Pristine", f"{STRATEGIES[ls].name} − {STRATEGIES[zo].name}"
        where = f"mean of the {kind} sets" if single else "mean of the nine distorted sets"
        out += [(kind, f"mixing helps on {'them' if single else 'distorted images'}", f"{mix}, {where}",
                 d(zo, p, dist)),
                (kind, "mixing costs on pristine", f"{mix}, pristine", d(zo, p, ["pristine"]))]
        groups = ([("pristine", ["pristine"])] + [(n, [n]) for n in dist] if single else
                  [("pristine", ["pristine"]), ("mean of levels 1-2", [n for n in dist if n[-1] in "12"]),
                   ("mean of level 3", [n for n in dist if n[-1] == "3"])])
        out += [(kind, LABELS_CLAIM, f"{lab}, {g}", d(ls, zo, names)) for g, names in groups]
    return out


def claims(evals: list[dict], paper: dict | None = None, finetuned: list[dict] = ()) -> list[str]:
    """The paper's claims computed on the paper's numbers and on ours side by side (a Markdown table): ours as
    the mean over seeds and per seed, and whether ours has the paper's sign. With ``finetuned`` evals, the
    IQA-LS comparisons once more with the fine-tuned runs in place of the from-scratch ones."""
    seeds = sorted({e["seed"] for e in evals})

    def quantities(es, ft=()):
        agg = aggregate(es)
        agg.update(aggregate(list(ft)))
        return {(k, c, q): v for k, c, q, v in claim_quantities(agg)}

    ours = quantities(evals)
    if not ours:
        return []
    theirs = {(k, c, q): v for k, c, q, v in claim_quantities(paper_aggregate(paper))} if paper else {}
    rows = [(key, key, v, [quantities([e for e in evals if e["seed"] == sd]).get(key) for sd in seeds])
            for key, v in ours.items()]
    tuned = {e["strategy"] for e in finetuned}
    if tuned:
        ft = quantities(evals, finetuned)
        rows += [((k, "IQA-LS fine-tuned from 0-1 labels beats 0-1 labels", q), (k, c, q), v,
                  [quantities([e for e in evals if e["seed"] == sd], [e for e in finetuned if e["seed"] == sd]).get(
                      (k, c, q)) for sd in seeds])
                 for (k, c, q), v in ft.items() if c == LABELS_CLAIM and STRATEGY_PAIRS[k][1] in tuned]

    def num(v):
        return "—" if v is None else f"{v:+.2f}"

    lines = ["| claim | quantity (points) | paper | ours | ours per seed (" + ", ".join(map(str, seeds))
             + ") | sign as the paper's |", "|---|---|---|---|---|---|"]
    for (k, c, q), key, v, vs in rows:
        t = theirs.get(key)
        same = "—" if t is None else "(paper 0)" if t == 0 else "yes" if np.sign(v) == np.sign(t) else "no"
        lines.append(f"| **{k}**: {c} | {q} | {num(t)} | {num(v)} | {', '.join(num(x) for x in vs)} | {same} |")
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
        write_text(out, "measures.md", text)
        write_text(out, "measures.csv", csv_text(rows))
    return text


def binomial_line(evals: list[dict]) -> str:
    """The binomial standard error of one pristine accuracy on the test images the runs were evaluated on
    (at their mean accuracy), and of a difference of two runs' accuracies; empty when eval.json lacks ``n``."""
    ns = {e["results"]["pristine"].get("n") for e in evals}
    if len(ns) != 1 or None in ns:
        return ""
    (n,) = ns
    acc = float(np.mean([e["results"]["pristine"]["accuracy"] for e in evals]))
    se = 100 * float(np.sqrt(acc * (1 - acc) / n))
    return (f"Binomial standard error of one accuracy on these {n:,} test images: {se:.2f} points (at the mean "
            f"pristine accuracy, {100 * acc:.1f}%); of a difference between two runs about {se * np.sqrt(2):.2f} "
            "(less where both err on the same images).")


def curve_section(out: Path, runs) -> str:
    """The training curves (``curves.png``, written here) of the runs that logged one (``--curve-every``), with each
    run's last point; empty when none did."""
    data = curves(runs)
    if not data:
        return ""
    curve_figure(runs, out)
    lines = ["| run | epochs logged | last epoch | training accuracy | test accuracy (pristine) | true-class confidence |",
             "|---|---|---|---|---|---|"]
    for name, rows in sorted(data.items()):
        m = rows[-1]
        lines.append(f"| {name} | {len(rows)} | {m['epoch']} | {100 * m['train_acc']:.2f} | {100 * m['test_acc']:.2f} "
                     f"| {m['train_conf_true']:.3f} |")
    return ("\n## Training curves\n\nPristine test accuracy (all the test images the curve was logged on), the "
            "epoch's training accuracy and the mean true-class confidence on a fixed set of training images, as "
            "`metrics.jsonl` logs them:\n\n![Training curves](curves.png)\n\n" + "\n".join(lines) + "\n")


def write_report(out: Path, p: ReproProtocol, runs, ds, seeds, wall: float, command: str, iqa: str = "ssim",
                 ssim_runs=(), paper: dict | None = None, finetuned_runs=()) -> Path:
    """report.md in ``out`` from the evaluated ``runs`` (from scratch) and ``finetuned_runs`` (``--finetune``),
    beside the table2.md, figures and extended tables already written there; ``paper``: the paper's numbers
    (``load_paper``) for the claims, None for ours alone."""
    evals, tuned = load_evals(runs), load_evals(finetuned_runs)
    agg = aggregate(evals)
    train_s = sum(r["seconds"] for run in [*runs, *finetuned_runs] for r in read_metrics(run))
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
| training time | {train_s / 60:.1f} min in all ({len(runs) + len(tuned)} runs); this command's wall time {wall / 60:.1f} min (finished runs are not retrained) |

## Table 2

{(out / 'table2.md').read_text()}
## Figures

![Figure 3](figure3.png)

![Figure 4](figure4.png)
{curve_section(out, [*runs, *finetuned_runs])}
## The paper's claims, on the paper's numbers and on ours

{chr(10).join(claims(evals, paper, tuned)) or '(needs strategy 1 and both strategies of a mixture)'}

Seed-to-seed spread: {f'median std {np.median(spread):.2f} points, max {np.max(spread):.2f}' if spread else 'one seed only, so no spread measured; differences under about 1 point should not be read as effects'}.
{binomial_line(evals)}
{extra}{extended_sections(out, evals)}
Each run's options, metrics per epoch and evaluation are in `{where}` (`config.json`,
`metrics.jsonl`, `eval.json`); the checkpoints are not committed.
"""
    save_text(out / "report.md", text)
    return out / "report.md"
