"""The reproduction report: ``report.md`` and the files beside it, from evaluated runs.

``write_report`` lays out the protocol, data, machine and versions, Table 2 (the paper's value beside
ours in every cell), the figures, the paper's claims computed on the paper's numbers and on ours side
by side (``claims``), the verdict on IQA-LS against 0-1 labels with its seed spread and binomial error
(``verdict_section``), what another protocol said that this one confirms or overturns
(``comparison_section``), and, where every eval.json holds them, the CIFAR-10-C and calibration sections (``extended_sections``); with another IQA measure than SSIM, its comparison
with SSIM and 0-1 labels (``measure_section``, also ``measures.md`` / ``.csv``). ``extended_reports``
writes the tables and figures those sections show.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import torch

from .._io import save_text
from ..config import KINDS, LEVEL_NUMBERS, PRISTINE_STRATEGY, PROTOCOLS, STRATEGIES, STRATEGY_PAIRS, ReproProtocol
from ..metrics import unpack_correct
from ..runs import load_run_config, read_metrics, versions
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


def paired_claim_quantities(evals: list[dict]) -> dict[tuple[str, str, str], float]:
    """``claim_quantities`` on our runs, each the mean of its per-seed values over the seeds that hold every run
    it needs (a difference within a seed: a strategy with more seeds than another does not shift it); where no
    seed holds them all, the difference of each strategy's mean over its own seeds."""
    seeds = sorted({e["seed"] for e in evals})
    per = [{(k, c, q): v for k, c, q, v in claim_quantities(aggregate([e for e in evals if e["seed"] == sd]))}
           for sd in seeds]
    out = {}
    for k, c, q, v in claim_quantities(aggregate(evals)):
        vals = [p[(k, c, q)] for p in per if (k, c, q) in p]
        out[(k, c, q)] = float(np.mean(vals)) if vals else v
    return out


def claims(evals: list[dict], paper: dict | None = None, finetuned: list[dict] = ()) -> list[str]:
    """The paper's claims computed on the paper's numbers and on ours side by side (a Markdown table): ours per
    seed and their mean (over the seeds holding every run the quantity needs; where none does, the difference of
    each strategy's mean over its seeds, marked "unpaired"), and whether ours has the paper's sign. With
    ``finetuned`` evals, the IQA-LS comparisons once more with the fine-tuned runs in place of the from-scratch
    ones, on the seeds that have a fine-tuned run (per seed: — for the others)."""
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
    for kind, (_, ls) in STRATEGY_PAIRS.items():
        # each fine-tuned mixture only on the seeds it was fine-tuned on: a seed without its fine-tuned run is no
        # evidence about fine-tuning (and must not stand in for it with the from-scratch run)
        mine = [e for e in finetuned if e["strategy"] == ls]
        ft_seeds = sorted({e["seed"] for e in mine})
        if not ft_seeds:
            continue
        base = [e for e in evals if e["seed"] in ft_seeds]
        by_seed = {sd: quantities([e for e in base if e["seed"] == sd], [e for e in mine if e["seed"] == sd])
                   for sd in ft_seeds}
        rows += [((k, "IQA-LS fine-tuned from 0-1 labels beats 0-1 labels", q), (k, c, q), v,
                  [by_seed[sd].get((k, c, q)) if sd in by_seed else None for sd in seeds])
                 for (k, c, q), v in quantities(base, mine).items() if c == LABELS_CLAIM and k == kind]

    def num(v):
        return "—" if v is None else f"{v:+.2f}"

    lines = ["| claim | quantity (points) | paper | ours | ours per seed (" + ", ".join(map(str, seeds))
             + ") | sign as the paper's |", "|---|---|---|---|---|---|"]
    for (k, c, q), key, v, vs in rows:
        paired = [x for x in vs if x is not None]
        v = float(np.mean(paired)) if paired else v
        t = theirs.get(key)
        same = "—" if t is None else "(paper 0)" if t == 0 else "yes" if np.sign(v) == np.sign(t) else "no"
        lines.append(f"| **{k}**: {c} | {q} | {num(t)} | {num(v)}{'' if paired else ' (unpaired)'} | "
                     f"{', '.join(num(x) for x in vs)} | {same} |")
    return lines


VERDICT_Z = 2.0
"""A difference counts as an effect when it exceeds ``VERDICT_Z`` times its error (``label_effects``)."""

GROUPS = ("pristine", "levels 1-2", "level 3")
"""The test-set groups of the verdict: the pristine set, the mild levels (1 and 2) of the mixture's kinds, level 3."""


def _group_sets(kind: str) -> dict[str, list[str]]:
    kinds = [kind] if kind in KINDS else list(KINDS)
    return {"pristine": ["pristine"], "levels 1-2": [f"{k}{lv}" for k in kinds for lv in (1, 2)],
            "level 3": [f"{k}3" for k in kinds]}


def label_effects(evals: list[dict]) -> list[dict]:
    """IQA-LS minus 0-1 labels (accuracy, points) for each mixture whose two strategies have runs of the same
    seeds, on each of ``GROUPS`` (mean accuracy over the group's sets).

    Each row: ``kind``, ``group``, ``seeds``, ``per_seed`` (the difference, seed by seed), ``mean``, ``spread``
    (the standard deviation of the per-seed differences, ddof 1; None with one seed), ``binomial`` (the error
    the finite test set puts on ``mean``), ``paired``, ``error`` (sqrt(binomial^2 + spread^2 / seeds); the
    binomial part alone with one seed) and ``verdict``: "IQA-LS" or "0-1" when ``|mean| > VERDICT_Z * error``,
    else "within error".

    ``binomial``, ``paired`` True: where every eval.json records which images each run got right (``correct``)
    on the same test images, the exact paired standard error: d_i, image i's right-minus-wrong difference
    averaged over the group's sets and the seeds, has mean ``mean`` and standard error std(d) / sqrt(n). It
    counts only the images the two runs disagree on and the correlation between the group's sets (the same
    images distorted). ``paired`` False (older eval.json): the unpaired bound, sqrt(p0 (1 - p0) / n +
    p1 (1 - p1) / n) per set, averaged over the group's sets as if fully correlated and not reduced over
    seeds, which share the test images; larger than the paired error, since two models err on many of the
    same images."""
    by = {(e["strategy"], e["seed"]): e for e in evals}
    rows = []
    for kind, (zo, ls) in STRATEGY_PAIRS.items():
        seeds = sorted(sd for (s, sd) in by if s == zo and (ls, sd) in by)
        if not seeds:
            continue
        for group, names in _group_sets(kind).items():
            def acc(s, sd, n):
                return by[(s, sd)]["results"][n]["accuracy"]

            diffs = [100 * float(np.mean([acc(ls, sd, n) - acc(zo, sd, n) for n in names])) for sd in seeds]
            pairs = [by[(s, sd)] for sd in seeds for s in (zo, ls)]
            paired = _paired_se(pairs, names)
            binomial = paired if paired is not None else _unpaired_se(pairs, names, seeds)
            spread = float(np.std(diffs, ddof=1)) if len(seeds) > 1 else None
            mean = float(np.mean(diffs))
            parts = [x for x in (binomial, None if spread is None else spread / np.sqrt(len(seeds))) if x is not None]
            error = float(np.sqrt(sum(x * x for x in parts))) if parts else None
            verdict = ("within error" if error is None or abs(mean) <= VERDICT_Z * error else
                       "IQA-LS" if mean > 0 else "0-1")
            rows.append({"kind": kind, "group": group, "seeds": seeds, "per_seed": diffs, "mean": mean,
                         "spread": spread, "binomial": binomial, "paired": paired is not None, "error": error,
                         "verdict": verdict})
    return rows


def _paired_se(pairs: list[dict], names: list[str]) -> float | None:
    """The paired standard error (points) of the mean IQA-LS-minus-0-1 difference over ``names`` and the seeds:
    ``pairs`` = [0-1 eval, IQA-LS eval] seed by seed; None unless all record ``correct`` on the same images."""
    res = [e["results"][n] for e in pairs for n in names]
    if any("correct" not in r or "n" not in r for r in res) or len({e.get("test_checksum") for e in pairs}) != 1:
        return None
    n = res[0]["n"]
    if any(r["n"] != n for r in res) or n < 2:
        return None
    d = np.zeros(n)
    for zo, ls in zip(pairs[::2], pairs[1::2]):
        for name in names:
            d += (unpack_correct(ls["results"][name]["correct"], n).astype(np.float64)
                  - unpack_correct(zo["results"][name]["correct"], n))
    d /= len(names) * len(pairs) // 2
    return 100 * float(np.std(d, ddof=1) / np.sqrt(n))


def _unpaired_se(pairs: list[dict], names: list[str], seeds) -> float | None:
    """The unpaired bound (``label_effects``), mean over seeds; None where an eval.json lacks ``n``."""
    ses = []
    for zo, ls in zip(pairs[::2], pairs[1::2]):
        per = []
        for name in names:
            k = zo["results"][name].get("n")
            if k is None:
                return None
            per.append(np.sqrt(sum(e["results"][name]["accuracy"] * (1 - e["results"][name]["accuracy"])
                                   for e in (zo, ls)) / k))
        ses.append(100 * float(np.mean(per)))
    return float(np.mean(ses))


def verdict_section(evals: list[dict], finetuned: list[dict] = ()) -> str:
    """The verdict on IQA-LS against 0-1 labels (``label_effects``): a table with each difference, its seed spread
    and binomial error, and a paragraph in the direction the numbers show; with ``finetuned`` evals, the
    fine-tuned runs against 0-1 labels too. Empty when no mixture has both of its strategies."""
    sets = [("from scratch", label_effects(evals))]
    if finetuned:
        zero_one = [e for e in evals if not STRATEGIES[e["strategy"]].iqa_ls]
        sets.append(("fine-tuned from 0-1 labels", label_effects(zero_one + list(finetuned))))
    if not sets[0][1]:
        return ""

    def num(v, f="+.2f"):
        return "—" if v is None else format(v, f)

    lines = ["| IQA-LS | mixture | test sets | seeds | IQA-LS − 0-1 (points) | per seed | seed spread (std) | "
             "binomial error | error | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, rows in sets:
        for r in rows:
            lines.append(f"| {label} | {r['kind']} | {r['group']} | {','.join(map(str, r['seeds']))} | "
                         f"**{r['mean']:+.2f}** | {', '.join(f'{d:+.2f}' for d in r['per_seed'])} | "
                         f"{num(r['spread'], '.2f')} | {num(r['binomial'], '.2f')}{'' if r['paired'] else ' *'} | "
                         f"{num(r['error'], '.2f')} | "
                         f"{r['verdict'] if r['verdict'] == 'within error' else r['verdict'] + ' better'} |")
    unpaired = any(not r["paired"] for _, rows in sets for r in rows)
    text = [
        "IQA-LS minus 0-1 labels, the same mixture and seed, mean accuracy over each group of test sets. The error "
        "combines the binomial error of that difference on these test images (paired: from the images the two runs "
        "disagree on, as eval.json records which each got right) with the seed spread over the square root of the "
        f"number of seeds; a difference counts when it exceeds {VERDICT_Z:g} errors. All comparisons share the test "
        "images, so the signs of several comparisons are not independent evidence; the seed spread is the part of "
        "the error that training again would change."
        + (" \\* the unpaired bound: these eval.json files do not record which images each run got right, so the "
           "error treats the two runs' mistakes as independent, an overestimate." if unpaired else ""),
        "", *lines, ""]
    text.append("\n\n".join(_verdict_paragraph(label, rows) for label, rows in sets))
    return "\n".join(text) + "\n"


def _verdict_paragraph(label: str, rows: list[dict]) -> str:
    """One paragraph: the paper's claim (IQA-LS better by 1-4 points on pristine and mildly distorted images) and
    level 3, judged on ``rows``, in the direction they show."""
    out = []
    one_seed = all(len(r["seeds"]) == 1 for r in rows)
    for title, groups in (("pristine and mildly distorted images (the paper's claim: +1 to +4 points)",
                           ("pristine", "levels 1-2")), ("level 3", ("level 3",))):
        rs = [r for r in rows if r["group"] in groups]
        if not rs:
            continue
        n = {v: sum(r["verdict"] == v for r in rs) for v in ("IQA-LS", "0-1", "within error")}
        mean = float(np.mean([r["mean"] for r in rs]))
        where = {v: ", ".join(f"{r['kind']} {r['group']}" for r in rs if r["verdict"] == v) for v in n}
        direction = ("IQA-LS is better in every comparison" if n["IQA-LS"] == len(rs) else
                     "0-1 labels are better in every comparison" if n["0-1"] == len(rs) else
                     "no difference is resolved" if n["within error"] == len(rs) else
                     "; ".join(f"{label} on {where[v]}" for v, label in (
                         ("IQA-LS", "IQA-LS better"), ("0-1", "0-1 labels better"), ("within error", "within error"))
                         if where[v]))
        each = [d for r in rs for d in r["per_seed"]]
        pos = sum(d > 0 for d in each)
        every = "the" if len(each) == 1 else f"all {len(each)}"
        signs = (f"{every} per-seed difference{'s are' if len(each) > 1 else ' is'} positive" if pos == len(each) else
                 f"{every} per-seed difference{'s are' if len(each) > 1 else ' is'} negative"
                 if pos == 0 and all(d < 0 for d in each) else f"{pos} of {len(each)} per-seed differences are positive")
        out.append(f"on {title}: {direction} ({n['IQA-LS']} of {len(rs)} comparison{'s' * (len(rs) > 1)} "
                   f"favour{'s' * (len(rs) == 1)} IQA-LS beyond {VERDICT_Z:g} errors, {n['0-1']} favour"
                   f"{'s' * (n['0-1'] == 1)} 0-1 labels, {n['within error']} {'is' if n['within error'] == 1 else 'are'} "
                   f"within error; mean difference {mean:+.2f} points; {signs})")
    caveat = (" One seed only: the error holds the test set's binomial noise but not the seed-to-seed spread, so "
              "read these effects as provisional until a second seed is in."
              if one_seed else "")
    return f"**Verdict, IQA-LS {label}**: " + "; ".join(out) + "." + caveat


def comparison_section(evals: list[dict], other: list[dict], other_name: str, name: str,
                       paper: dict | None = None) -> str:
    """What protocol ``other_name`` (its evals ``other``) said that this one (``name``, ``evals``) confirms or
    overturns: each strategy both hold, its pristine and mean distorted accuracy under each (mean over seeds);
    then the paper's claims on both (``paired_claim_quantities``), each marked "confirms" (the same sign) or
    "overturns". Empty when they share no strategy."""
    now, before = aggregate(evals), aggregate(other)
    common = [s for s in now if s in before]
    if not common:
        return ""

    def dist(a):
        return float(np.mean([a[n][0] for n in SET_NAMES[1:]]))

    lines = [f"| # | strategy | pristine, `{other_name}` | pristine, `{name}` | mean distorted, `{other_name}` | "
             f"mean distorted, `{name}` |", "|---|---|---|---|---|---|"]
    for s in common:
        lines.append(f"| {s} | {STRATEGIES[s].name} | {before[s]['pristine'][0]:.2f} | {now[s]['pristine'][0]:.2f} | "
                     f"{dist(before[s]):.2f} | {dist(now[s]):.2f} |")
    tests = ", ".join(f"`{m}` {f'{PROTOCOLS[m].test_subset:,}' if PROTOCOLS[m].test_subset else 'all 10,000'}"
                      for m in (other_name, name) if m in PROTOCOLS)
    text = f"Accuracy (%), mean over each protocol's seeds, each on its own test images ({tests}).\n\n"
    text += "\n".join(lines) + "\n"
    ours, was = paired_claim_quantities(evals), paired_claim_quantities(other)
    theirs = {(k, c, q): v for k, c, q, v in claim_quantities(paper_aggregate(paper))} if paper else {}
    keys = [k for k in ours if k in was]
    if not keys:
        return text + (f"\nThe paper's claims need strategy 1 and both strategies of a mixture under both "
                       f"protocols; `{name}` does not have them yet.\n")
    rows = [f"| claim | quantity (points) | paper | `{other_name}` | `{name}` | `{name}` on `{other_name}` |",
            "|---|---|---|---|---|---|"]
    n = {"confirms": 0, "overturns": 0}
    for key in keys:
        a, b, t = was[key], ours[key], theirs.get(key)
        word = "confirms" if np.sign(a) == np.sign(b) else "overturns"
        n[word] += 1
        rows.append(f"| **{key[0]}**: {key[1]} | {key[2]} | {'—' if t is None else f'{t:+.2f}'} | {a:+.2f} | "
                    f"{b:+.2f} | {word} |")
    return (text + f"\n`{name}` confirms the sign of {n['confirms']} and overturns {n['overturns']} of the "
            f"{len(keys)} claim quantities `{other_name}` measured:\n\n" + "\n".join(rows) + "\n")


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
            "`metrics.jsonl` logs them, one panel per strategy:\n\n![Training curves](curves.png)\n\n" + "\n".join(lines) + "\n")


def trained_on(*run_lists) -> str:
    """The processors the runs were trained on (their config.json's ``versions``), with how many runs each."""
    n: dict[str, int] = {}
    for r in (r for rs in run_lists for r in rs):
        cpu = load_run_config(r).get("versions", {}).get("processor") or "an unrecorded processor"
        n[cpu] = n.get(cpu, 0) + 1
    return ", ".join(f"{cpu} ({k} run{'s' * (k != 1)})" for cpu, k in n.items()) or "—"


def write_report(out: Path, p: ReproProtocol, runs, ds, seeds, wall: float, command: str, iqa: str = "ssim",
                 ssim_runs=(), paper: dict | None = None, finetuned_runs=(), rule: str = "", compare=None,
                 missing=()) -> Path:
    """report.md in ``out`` from the evaluated ``runs`` (from scratch) and ``finetuned_runs`` (``--finetune``),
    beside the table2.md, figures and extended tables already written there; ``paper``: the paper's numbers
    (``load_paper``) for the claims, None for ours alone. ``rule``: the verdict of the rule that fixed the
    protocol's length (``reproduce.protocol_rule``), shown under the protocol; ``compare``: ``(name, runs)`` of
    another protocol, whose claims are set beside these (``comparison_section``); ``missing``: the names of the
    runs asked for and not yet finished, listed at the top."""
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
    missing_text = (f"\n**Incomplete**: {len(missing)} of the runs asked for are not finished yet and are not in this "
                    "report: " + ", ".join(f"`{m}`" for m in missing) + ".\n" if missing else "")
    rule_text = f"\nThe protocol's length: {rule}\n" if rule else ""
    verdict = verdict_section(evals, tuned)
    verdict_text = f"\n## Verdict: IQA-LS against 0-1 labels\n\n{verdict}" if verdict else ""
    compare_text = ""
    if compare is not None:
        other_name, other_runs = compare
        section = comparison_section(evals, load_evals(other_runs), other_name, p.name, paper)
        if section:
            compare_text = f"\n## What `{other_name}` said that `{p.name}` confirms or overturns\n\n{section}"
    text = f"""# Table 2 reproduction: protocol `{p.name}`{title}

Produced by `{command}`.

| | |
|---|---|
| protocol | {p.epochs} epochs, training subset {p.train_subset or 'all'} images, lr 0.1 x0.1 every {p.lr_step_epochs or 'paper-scaled'} epochs, batch 100, test subset {p.test_subset or 'all 10,000'} images |
| data | {ds.source}, sha256 {ds.checksum} |
| seeds | {', '.join(map(str, seeds))} |
| machine | written on {v['processor']} ({v['machine']}), {torch.get_num_threads()} torch threads; the runs trained on {trained_on(runs, finetuned_runs)} |
| versions | iqals_fast {v['iqals_fast']}, torch {v['torch']}, numpy {v['numpy']}, pillow {v['pillow']}, python {v['python']}, {platform.system()} |
| training time | {train_s / 60:.1f} min in all ({len(runs) + len(tuned)} runs); this command's wall time {wall / 60:.1f} min (finished runs are not retrained) |
{missing_text}{rule_text}
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
{verdict_text}{compare_text}{extra}{extended_sections(out, evals)}
Each run's options, metrics per epoch and evaluation are in `{where}` (`config.json`,
`metrics.jsonl`, `eval.json`); the checkpoints are not committed.
"""
    save_text(out / "report.md", text)
    return out / "report.md"
