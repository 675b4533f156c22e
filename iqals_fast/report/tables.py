"""Table 2 and the tables beyond it (CIFAR-10-C severities and mCE, calibration), from evaluated runs.

Each table is returned as Markdown and, given ``out_dir``, written there as ``.md`` and ``.csv``;
cells are ``mean ± std over seeds`` (``_cell``). Table 2 shows the paper's value and our difference
in every cell: the paper's Table 2 ships with the package (``paper_table2.csv``, see ``load_paper``);
``--paper FILE.csv`` replaces it, ``--no-paper`` hides it. Runs fine-tuned from their 0-1 label
counterpart (``train --finetune-from``) are rows of their own (``3 ft``), never seeds of the
from-scratch strategy.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections import defaultdict
from importlib import resources
from pathlib import Path

import numpy as np

from .._io import save_text
from ..config import (
    CORRUPTION_SETS,
    CORRUPTIONS,
    PRISTINE_STRATEGY,
    SEVERITIES,
    STRATEGIES,
    STRATEGY_PAIRS,
    TEST_SET_NAMES,
)
from ..evaluate import EVAL_VERSION
from ..runs import CONFIG, EVAL, load_run_config

SET_NAMES = TEST_SET_NAMES
DISTORTED = SET_NAMES[1:]


PAPER_TABLE = "paper_table2.csv"
"""The paper's Table 2 as package data (``iqals_fast/report/paper_table2.csv``): all nine strategies on the
pristine test set and the nine distorted ones, accuracy in percent, as printed in Table 2 of Chen, Lin, Wang,
Xu, Li, *Image Quality Assessment Guided Deep Neural Networks Training* (three decimals there, percent
here; the paper's column "JPGE" is JPEG). Copied from the project's ``shared/paper/table2.csv``."""


def load_evals(runs) -> list[dict]:
    """The eval.json of each run, each run once: a directory given twice (under any path) is one run, not two
    seeds (a note on stderr says so), and two directories of the same strategy, seed, measure and start get a
    note. Each eval gets ``finetuned``: True when the run's config.json has a ``finetune_from``."""
    out, seen, same = [], {}, {}
    for r in runs:
        p = Path(r) / EVAL
        if not p.is_file():
            raise FileNotFoundError(f"{r}: no {EVAL}; run `iqals-fast eval {r}` first")
        key = p.resolve()
        if key in seen:
            print(f"note: {r} is {seen[key]} given again; counted once", file=sys.stderr)
            continue
        seen[key] = r
        try:
            e = json.loads(p.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{p} is not valid JSON ({err}): evaluate the run again") from None
        e["finetuned"] = (Path(r) / CONFIG).is_file() and bool(load_run_config(r).get("finetune_from"))
        run_id = (e.get("strategy"), e.get("seed"), e.get("iqa", "ssim"), e["finetuned"])
        if run_id in same:
            print(f"note: {same[run_id]} and {r} are both strategy {run_id[0]}, seed {run_id[1]} ({run_id[2]}"
                  f"{', fine-tuned' if run_id[3] else ''}): each counts as a seed", file=sys.stderr)
        same.setdefault(run_id, r)
        out.append(e)
    return out


def load_paper(path=None) -> dict[tuple[int, str], float]:
    """Paper numbers from a CSV with columns strategy,test_set,accuracy (percent, in [0, 100]); ``path`` None:
    the paper's Table 2 shipped with the package (``PAPER_TABLE``)."""
    if path is None:
        with resources.as_file(resources.files(__package__) / PAPER_TABLE) as shipped:
            return load_paper(shipped)
    table = {}
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            try:
                s, t, a = int(row["strategy"]), row["test_set"], float(row["accuracy"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}:{i}: need columns strategy,test_set,accuracy, got {row}") from None
            if s not in STRATEGIES or t not in SET_NAMES:
                raise ValueError(f"{path}:{i}: unknown strategy {s} or test set {t!r} (known: {list(SET_NAMES)})")
            if not 0 <= a <= 100:  # (a NaN fails too)
                raise ValueError(f"{path}:{i}: accuracy {row['accuracy']} is not a percentage in [0, 100]")
            table[(s, t)] = a
    return table


def paper_aggregate(paper: dict[tuple[int, str], float]) -> dict[int, dict[str, tuple[float, float, int]]]:
    """The paper's numbers in ``aggregate``'s shape (one "seed", no spread): strategies with all ten sets."""
    return {s: {n: (paper[(s, n)], 0.0, 1) for n in SET_NAMES} for s in sorted(STRATEGIES)
            if all((s, n) in paper for n in SET_NAMES)}


def split_finetuned(evals: list[dict]) -> tuple[list[dict], list[dict]]:
    """(from-scratch evals, fine-tuned evals), as ``load_evals`` marked them."""
    return [e for e in evals if not e.get("finetuned")], [e for e in evals if e.get("finetuned")]


def aggregate(evals: list[dict], part: str = "results", names=None, key: str = "accuracy",
              scale: float = 100.0) -> dict[int, dict[str, tuple[float, float, int]]]:
    """strategy -> test set -> (mean, std over seeds, number of seeds) of ``key`` (accuracy in % by default)
    on the sets ``names`` of ``part`` (``results``: Table 2's sets; ``corruptions``)."""
    names = SET_NAMES if names is None and part == "results" else names
    acc: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for e in evals:
        for name in names if names is not None else e[part]:
            v = e[part][name][key]
            acc[e["strategy"]][name].append(np.nan if v is None else scale * v)
    return {s: {n: (float(np.mean(v)), float(np.std(v)), len(v)) for n, v in d.items()} for s, d in sorted(acc.items())}


def finetuned_label(strategy: int) -> tuple[str, str]:
    """(row number, name) of a fine-tuned IQA-LS row: ``3 ft``, ``MIX_blur + IQA-LS, fine-tuned from 2``."""
    source = next((zo for zo, ls in STRATEGY_PAIRS.values() if ls == strategy), None)
    return f"{strategy} ft", f"{STRATEGIES[strategy].name}, fine-tuned from {source}"


def table(runs, paper_csv=None, out_dir=None, *, show_paper: bool = True) -> str:
    """Table 2's layout in Markdown, ours with the paper's value and our difference in every cell (the shipped
    paper table, or ``paper_csv``; none with ``show_paper=False``); also CSV with ``out_dir``. Fine-tuned runs
    follow as their own rows."""
    scratch, tuned = split_finetuned(load_evals(runs))
    paper = load_paper(paper_csv) if show_paper else {}
    lines = ["| # | strategy | " + " | ".join(SET_NAMES) + " |", "|---|---|" + "---|" * len(SET_NAMES)]
    rows, spread = [], False
    for agg, ft in ((aggregate(scratch), False), (aggregate(tuned), True)):
        for s, d in agg.items():
            number, name = finetuned_label(s) if ft else (str(s), STRATEGIES[s].name)
            cells = []
            for n in SET_NAMES:
                m, sd, k = d[n]
                spread |= k > 1
                cell = f"{m:.2f}" + (f" ± {sd:.2f}" if k > 1 else "")
                if (s, n) in paper:
                    cell += f" ({paper[(s, n)]:.2f}, {m - paper[(s, n)]:+.2f})"
                cells.append(cell)
                rows.append({"strategy": s, "name": name, "test_set": n, "accuracy": round(m, 4),
                             "std": round(sd, 4), "seeds": k, "paper": paper.get((s, n), ""),
                             "difference": round(m - paper[(s, n)], 4) if (s, n) in paper else "",
                             "finetuned": int(ft)})
            lines.append(f"| {number} | {name} | " + " | ".join(cells) + " |")
    source = "its Table 2, shipped with iqals_fast" if paper_csv is None else f"from {Path(paper_csv).name}"
    note = ("\nAccuracy (%) on the pristine test set and the nine distorted ones"
            + (" (mean ± std over seeds)" if spread else "") + ". "
            + (f"Cells: ours (paper, ours - paper); the paper's values: {source}." if paper else "")
            + (" Rows `N ft`: IQA-LS fine-tuned from the same-seed 0-1 label run at the end of its first lr stage."
               if tuned else ""))
    md = "\n".join(lines) + "\n" + note.rstrip() + "\n"
    if out_dir is not None:
        write_text(out_dir, "table2.md", md)
        write_text(out_dir, "table2.csv", csv_text(rows))
    return md


# ---------------------------------------------------------------------------------------------------
# Beyond Table 2: the CIFAR-10-C severities, calibration and confidence against image quality.


def has_extended(evals: list[dict]) -> bool:
    """True when every eval.json holds the calibration metrics and the corruptions suite."""
    return bool(evals) and all(e.get("eval_version", 1) >= EVAL_VERSION and e.get("corruptions") for e in evals)


def _stats(vals) -> tuple[float, float, int]:
    v = [x for x in vals if x is not None and np.isfinite(x)]
    return (float(np.mean(v)), float(np.std(v)), len(v)) if v else (float("nan"), float("nan"), 0)


def _per_seed(evals: list[dict], fn) -> dict[int, tuple[float, float, int]]:
    """strategy -> (mean, std, seeds) of fn(eval), one value per evaluated run (seed)."""
    by: dict[int, list] = defaultdict(list)
    for e in evals:
        by[e["strategy"]].append(fn(e))
    return {s: _stats(v) for s, v in sorted(by.items())}


def _cell(t: tuple[float, float, int], digits: int = 2) -> str:
    m, sd, k = t
    if k == 0:
        return "—"
    return f"{m:.{digits}f}" + (f" ± {sd:.{digits}f}" if k > 1 else "")


def write_text(out_dir, name: str, text: str) -> None:
    if out_dir is not None:
        save_text(Path(out_dir) / name, text)


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def corruption_errors(e: dict, base: dict) -> dict[str, float]:
    """Hendrycks and Dietterich's corruption errors of one run against a baseline run (strategy 1):
    CE_c = sum_s E_{s,c} / sum_s E^base_{s,c}, relative CE_c = sum_s (E_{s,c} - E_clean) /
    sum_s (E^base_{s,c} - E^base_clean), in %; mCE and relative mCE their means over corruptions."""
    out = {}
    clean, bclean = 1 - e["results"]["pristine"]["accuracy"], 1 - base["results"]["pristine"]["accuracy"]
    for c in CORRUPTIONS:
        err = np.array([1 - e["corruptions"][f"{c}-{s}"]["accuracy"] for s in SEVERITIES])
        berr = np.array([1 - base["corruptions"][f"{c}-{s}"]["accuracy"] for s in SEVERITIES])
        out[f"CE {c}"] = 100 * err.sum() / berr.sum()
        d = (berr - bclean).sum()
        out[f"relative CE {c}"] = 100 * (err - clean).sum() / d if d > 0 else float("nan")
    out["mCE"] = float(np.mean([out[f"CE {c}"] for c in CORRUPTIONS]))
    out["relative mCE"] = float(np.mean([out[f"relative CE {c}"] for c in CORRUPTIONS]))
    return out


def corruption_table(evals: list[dict], out_dir=None) -> str:
    """Accuracy at the CIFAR-10-C severities, its mean per corruption, and mCE against strategy 1
    (per seed: strategy 1 of the same seed is the baseline). Writes corruptions.md/.csv with out_dir."""
    base = {e["seed"]: e for e in evals if e["strategy"] == PRISTINE_STRATEGY}
    acc = aggregate(evals, "corruptions", CORRUPTION_SETS)
    clean = aggregate(evals)
    means = {c: _per_seed(evals, lambda e, c=c: 100 * np.mean([e["corruptions"][f"{c}-{s}"]["accuracy"]
                                                                 for s in SEVERITIES])) for c in CORRUPTIONS}
    allmean = _per_seed(evals, lambda e: 100 * np.mean([e["corruptions"][n]["accuracy"] for n in CORRUPTION_SETS]))
    ce = {k: _per_seed(evals, lambda e, k=k: corruption_errors(e, base[e["seed"]])[k] if e["seed"] in base else None)
          for k in ["mCE", "relative mCE"] + [f"CE {c}" for c in CORRUPTIONS]}
    short = {"gaussian_noise": "noise", "gaussian_blur": "blur", "jpeg_compression": "JPEG"}
    lines = ["| # | strategy | clean | " + " | ".join(f"{short[c]} (mean of 5)" for c in CORRUPTIONS)
             + " | all 15 | mCE | relative mCE |", "|---|---|" + "---|" * (len(CORRUPTIONS) + 4)]
    rows = []
    for s in acc:
        lines.append(f"| {s} | {STRATEGIES[s].name} | {_cell(clean[s]['pristine'])} | "
                     + " | ".join(_cell(means[c][s]) for c in CORRUPTIONS)
                     + f" | {_cell(allmean[s])} | {_cell(ce['mCE'][s], 1)} | {_cell(ce['relative mCE'][s], 1)} |")
        for n in CORRUPTION_SETS:
            rows.append({"strategy": s, "name": STRATEGIES[s].name, "quantity": f"accuracy {n}",
                         "mean": round(acc[s][n][0], 4), "std": round(acc[s][n][1], 4), "seeds": acc[s][n][2]})
        for q, t in [*((f"accuracy {c} mean", means[c][s]) for c in CORRUPTIONS), ("accuracy all mean", allmean[s]),
                     *((k, v[s]) for k, v in ce.items())]:
            rows.append({"strategy": s, "name": STRATEGIES[s].name, "quantity": q, "mean": round(t[0], 4),
                         "std": round(t[1], 4), "seeds": t[2]})
    sev = ["", "Accuracy (%) per severity:", "",
           "| # | strategy | " + " | ".join(f"{short[c]} {k}" for c in CORRUPTIONS for k in SEVERITIES) + " |",
           "|---|---|" + "---|" * len(CORRUPTION_SETS)]
    for s in acc:
        sev.append(f"| {s} | {STRATEGIES[s].name} | " + " | ".join(f"{acc[s][n][0]:.2f}" for n in CORRUPTION_SETS) + " |")
    params = "; ".join(f"{short[c]} " + " ".join(str(p) for p in ps) for c, (_, ps) in CORRUPTIONS.items())
    md = ("\n".join(lines) + "\n\nAccuracy (%) on the CIFAR-10-C severities 1-5 made by our own ops (parameters in our "
          f"units: {params}; noise as variance = sigma^2), mean ± std over seeds; mCE and relative mCE (%) are "
          "Hendrycks and Dietterich's corruption errors with strategy 1 of the same seed as the baseline "
          "(100 = as strategy 1; lower is better). Relative mCE divides by strategy 1's own drop from clean accuracy: "
          "where that drop is small (a few tenths of a point) it is unstable and its seed-to-seed spread is large.\n"
          + "\n".join(sev) + "\n")
    write_text(out_dir, "corruptions.md", md)
    write_text(out_dir, "corruptions.csv", csv_text(rows))
    return md


CAL_METRICS = (("ece", "ECE (%)", 100.0, 2), ("nll", "NLL", 1.0, 3), ("brier", "Brier", 1.0, 3),
               ("mean_confidence", "confidence, predicted class", 1.0, 3),
               ("mean_true_class_confidence", "confidence, true class", 1.0, 3),
               ("spearman_true_conf_ssim", "Spearman(true-class confidence, SSIM)", 1.0, 3))


def _mean_over(e: dict, part: str, names, key: str, scale: float = 1.0):
    v = [e[part][n][key] for n in names]
    return None if any(x is None for x in v) else scale * float(np.mean(v))


def calibration_table(evals: list[dict], out_dir=None) -> str:
    """Summary of calibration and confidence (Markdown); with out_dir also calibration.md (every metric on
    every test set) and calibration.csv."""
    groups = (("clean", "results", ["pristine"]), ("Table 2 distorted", "results", DISTORTED),
              ("CIFAR-10-C", "corruptions", CORRUPTION_SETS))
    col = {(k, g): _per_seed(evals, lambda e, k=k, p=p, ns=ns, sc=sc: _mean_over(e, p, ns, k, sc))
           for k, _, sc, _ in CAL_METRICS[:5] for g, p, ns in groups}
    digits = {k: d for k, _, _, d in CAL_METRICS}
    pooled = {k: _per_seed(evals, lambda e, k=k: e["pooled"].get(k, {}).get("spearman_true_conf_ssim"))
              for k in ("table2", "all")}
    within = _per_seed(evals, lambda e: float(np.median(
        [e["results"][n]["spearman_true_conf_ssim"] for n in DISTORTED]
        + [e["corruptions"][n]["spearman_true_conf_ssim"] for n in CORRUPTION_SETS])))
    strategies = sorted({e["strategy"] for e in evals})
    a = ["| # | strategy | " + " | ".join(f"{t} {g}" for k, t, _, _ in CAL_METRICS[:3] for g, _, _ in groups) + " |",
         "|---|---|" + "---|" * 9]
    for s in strategies:
        a.append(f"| {s} | {STRATEGIES[s].name} | "
                 + " | ".join(_cell(col[(k, g)][s], digits[k]) for k, _, _, _ in CAL_METRICS[:3] for g, _, _ in groups)
                 + " |")
    b = ["| # | strategy | conf. predicted, clean | conf. predicted, T2 distorted | conf. true, clean "
         "| conf. true, T2 distorted | ρ pooled, Table 2 sets | ρ pooled, all 25 sets | ρ within a set (median of 24) |",
         "|---|---|" + "---|" * 7]
    for s in strategies:
        b.append(f"| {s} | {STRATEGIES[s].name} | "
                 + " | ".join(_cell(col[(k, g)][s], 3) for k in ("mean_confidence", "mean_true_class_confidence")
                              for g in ("clean", "Table 2 distorted"))
                 + f" | {_cell(pooled['table2'][s], 3)} | {_cell(pooled['all'][s], 3)} | {_cell(within[s], 3)} |")
    summary = ("Calibration (mean ± std over seeds; the distorted columns average the nine distorted Table 2 sets, "
               "the CIFAR-10-C columns the fifteen severities of noise, blur and JPEG):\n\n" + "\n".join(a)
               + "\n\nConfidence (T2 = Table 2) and its Spearman correlation ρ with SSIM: pooled over every (image, test "
               "set) pair, and within each distorted test set (the median over the 9 + 15 sets):\n\n" + "\n".join(b) + "\n")
    # the full tables: every metric on every test set
    names = [("results", n) for n in SET_NAMES] + [("corruptions", n) for n in CORRUPTION_SETS]
    full, rows = ["# Calibration and confidence on every test set", "",
                  "Mean over seeds (std in calibration.csv). ECE: 15 equal-width confidence bins. Spearman: "
                  "between each image's true-class confidence and its SSIM (undefined on the pristine set).", ""], []
    for k, title, sc, d in CAL_METRICS:
        agg = {part: aggregate(evals, part, [n for p, n in names if p == part], k, sc)
               for part in ("results", "corruptions")}
        full += [f"## {title}", "", "| # | " + " | ".join(n for _, n in names) + " |", "|---|" + "---|" * len(names)]
        for s in strategies:
            full.append(f"| {s} | " + " | ".join("—" if np.isnan(agg[p][s][n][0]) else f"{agg[p][s][n][0]:.{d}f}"
                                                  for p, n in names) + " |")
            rows += [{"strategy": s, "name": STRATEGIES[s].name, "test_set": n, "metric": k,
                      "mean": "" if np.isnan(agg[p][s][n][0]) else round(agg[p][s][n][0], 5),
                      "std": "" if np.isnan(agg[p][s][n][1]) else round(agg[p][s][n][1], 5), "seeds": agg[p][s][n][2]}
                     for p, n in names]
        full.append("")
    write_text(out_dir, "calibration.md", "\n".join(full))
    write_text(out_dir, "calibration.csv", csv_text(rows))
    return summary
