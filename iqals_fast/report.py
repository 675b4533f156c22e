"""Table 2 and Figures 3 and 4 from evaluated runs.

The paper's own Table 2 values are not shipped: this project could not obtain a copy of them
to check against, and a made-up column is worse than none. Pass them with ``--paper FILE.csv``
(columns ``strategy,test_set,accuracy``, accuracy in percent) to see them beside ours with the
differences.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .config import KINDS, STRATEGIES
from .data.sources import atomic_write_bytes
from .evaluate import EVAL, TEST_SETS, test_set_name

SET_NAMES = [test_set_name(k, lvl) for k, lvl in TEST_SETS]


def load_evals(runs) -> list[dict]:
    out = []
    for r in runs:
        p = Path(r) / EVAL
        if not p.is_file():
            raise FileNotFoundError(f"{r}: no {EVAL}; run `iqals-fast eval {r}` first")
        out.append(json.loads(p.read_text()))
    return out


def load_paper(path) -> dict[tuple[int, str], float]:
    """Paper numbers from a CSV with columns strategy,test_set,accuracy (percent)."""
    table = {}
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            try:
                s, t, a = int(row["strategy"]), row["test_set"], float(row["accuracy"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}:{i}: need columns strategy,test_set,accuracy, got {row}") from None
            if s not in STRATEGIES or t not in SET_NAMES:
                raise ValueError(f"{path}:{i}: unknown strategy {s} or test set {t!r} (known: {SET_NAMES})")
            table[(s, t)] = a
    return table


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


def table(runs, paper_csv=None, out_dir=None) -> str:
    """Table 2's layout in Markdown (ours, and the paper's with differences when given); also CSV."""
    agg = aggregate(load_evals(runs))
    paper = load_paper(paper_csv) if paper_csv else {}
    lines = ["| # | strategy | " + " | ".join(SET_NAMES) + " |", "|---|---|" + "---|" * len(SET_NAMES)]
    rows = []
    for s, d in agg.items():
        cells = []
        for n in SET_NAMES:
            m, sd, k = d[n]
            cell = f"{m:.2f}" + (f" ± {sd:.2f}" if k > 1 else "")
            if (s, n) in paper:
                cell += f" ({paper[(s, n)]:.2f}, {m - paper[(s, n)]:+.2f})"
            cells.append(cell)
            rows.append({"strategy": s, "name": STRATEGIES[s].name, "test_set": n, "accuracy": round(m, 4),
                         "std": round(sd, 4), "seeds": k, "paper": paper.get((s, n), ""),
                         "difference": round(m - paper[(s, n)], 4) if (s, n) in paper else ""})
        lines.append(f"| {s} | {STRATEGIES[s].name} | " + " | ".join(cells) + " |")
    note = ("\nAccuracy (%) on the pristine test set and the nine distorted ones"
            + (" (mean ± std over seeds)" if any(v[2] > 1 for d in agg.values() for v in d.values()) else "") + ". "
            + ("Cells: ours (paper, ours - paper)." if paper else
               "The paper's values are not shipped with this project; pass --paper FILE.csv to compare."))
    md = "\n".join(lines) + "\n" + note + "\n"
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_bytes(out / "table2.md", lambda f: f.write(md.encode()))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        atomic_write_bytes(out / "table2.csv", lambda f: f.write(buf.getvalue().encode()))
    return md


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_fig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))


def figure3(runs, out: Path) -> Path:
    """Accuracy against distortion level per kind: IQA-LS (solid) vs 0-1 labels (dashed), on the
    single-kind mixture and on MIX_all3; the pristine-trained baseline dotted."""
    plt = _plt()
    agg = aggregate(load_evals(runs))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=False)
    levels = [0, 1, 2, 3]
    colours = {"single": "tab:blue", "all3": "tab:orange"}
    for ax, kind in zip(axes, KINDS):
        names = ["pristine"] + [f"{kind}{lvl}" for lvl in (1, 2, 3)]
        base_single = {"blur": 2, "noise": 4, "jpeg": 6}[kind]
        for label, s0, colour in ((STRATEGIES[base_single].name, base_single, colours["single"]),
                                  ("MIX_all3", 8, colours["all3"])):
            for s, style, suffix in ((s0, "--", " (0-1 labels)"), (s0 + 1, "-", " + IQA-LS")):
                if s in agg:
                    ax.plot(levels, [agg[s][n][0] for n in names], style, marker="o", color=colour, label=label + suffix)
        if 1 in agg:
            ax.plot(levels, [agg[1][n][0] for n in names], ":", marker=".", color="k", label="Pristine (strategy 1)")
        ax.set_title({"blur": "Gaussian blur", "noise": "White Gaussian noise", "jpeg": "JPEG"}[kind])
        ax.set_xticks(levels, ["pristine", "1", "2", "3"])
        ax.set_xlabel("distortion level")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("Figure 3: accuracy against distortion level")
    path = Path(out) / "figure3.png"
    _save_fig(fig, path)
    plt.close(fig)
    return path


FIG4_SIGMAS = tuple(np.round(np.arange(0.0, 2.01, 0.25), 2))
FIG4_CLASSES = (0, 1, 2, 3)
"""Figure 4 shows the first test image of each of these classes (fixed in advance, not chosen on results)."""


def figure4(runs, out: Path, *, data: str | None = None, device: str = "cpu", dataset=None,
            show_images: bool = True) -> Path:
    """The model's confidence in the true class of a few test images as Gaussian blur grows.

    ``show_images=False`` leaves the images out (titles only), for reports that must not carry a
    dataset's pixels."""
    from .data.sources import load
    from .evaluate import predict
    from .ops.api import distort
    from .train import load_model

    plt = _plt()
    runs = [Path(r) for r in runs]
    by_strategy = {}
    for r in runs:  # one run per strategy (the first given) is enough for a per-image figure
        cfg = json.loads((r / "config.json").read_text())
        by_strategy.setdefault(cfg["strategy"], r)
    cfg0 = json.loads((runs[0] / "config.json").read_text())
    ds = dataset if dataset is not None else load(data or cfg0["data"])
    picks = [int(np.flatnonzero(ds.test_y == c)[0]) for c in FIG4_CLASSES if (ds.test_y == c).any()]
    imgs, ys = ds.test_x[picks], ds.test_y[picks]
    series = {}
    for s, r in sorted(by_strategy.items()):
        model, _ = load_model(r, device)
        conf = []
        for sg in FIG4_SIGMAS:
            x = imgs if sg == 0 else distort(imgs, "blur", param=float(sg))
            conf.append(predict(model, x, device)[np.arange(len(ys)), ys])
        series[s] = np.stack(conf, 1)  # images x sigmas
    rows = 2 if show_images else 1
    fig, axes = plt.subplots(rows, len(picks), figsize=(3.2 * len(picks), 6.2 if show_images else 3.8),
                             gridspec_kw={"height_ratios": [1, 1.4]} if show_images else None, squeeze=False)
    for j in range(len(picks)):
        title = f"test #{picks[j]}: {ds.classes[ys[j]]}"
        if show_images:
            axes[0, j].imshow(imgs[j], interpolation="nearest")
            axes[0, j].set_title(title)
            axes[0, j].axis("off")
        else:
            axes[-1, j].set_title(title)
        for s, c in series.items():
            style = "-" if STRATEGIES[s].iqa_ls else ("--" if STRATEGIES[s].mixed else ":")
            axes[-1, j].plot(FIG4_SIGMAS, c[j], style, marker=".", label=f"{s}: {STRATEGIES[s].name}")
        axes[-1, j].set_xlabel("blur sigma")
        axes[-1, j].set_ylim(0, 1)
        axes[-1, j].grid(alpha=0.3)
    axes[-1, 0].set_ylabel("confidence in the true class")
    axes[-1, -1].legend(fontsize=7, loc="upper right")
    fig.suptitle("Figure 4: confidence in the true class as blur grows")
    path = Path(out) / "figure4.png"
    _save_fig(fig, path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------
# Beyond Table 2: the CIFAR-10-C severities, calibration and confidence against image quality.

DISTORTED = SET_NAMES[1:]


def has_extended(evals: list[dict]) -> bool:
    """True when every eval.json holds the calibration metrics and the corruptions suite."""
    from .evaluate import EVAL_VERSION

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


def _write(out_dir, name: str, text: str) -> None:
    if out_dir is not None:
        atomic_write_bytes(Path(out_dir) / name, lambda f: f.write(text.encode()))


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def corruption_errors(e: dict, base: dict) -> dict[str, float]:
    """Hendrycks and Dietterich's corruption errors of one run against a baseline run (strategy 1):
    CE_c = sum_s E_{s,c} / sum_s E^base_{s,c}, relative CE_c = sum_s (E_{s,c} - E_clean) /
    sum_s (E^base_{s,c} - E^base_clean), in %; mCE and relative mCE their means over corruptions."""
    from .evaluate import CORRUPTIONS, SEVERITIES

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
    from .evaluate import CORRUPTION_SETS, CORRUPTIONS, SEVERITIES

    base = {e["seed"]: e for e in evals if e["strategy"] == 1}
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
    _write(out_dir, "corruptions.md", md)
    _write(out_dir, "corruptions.csv", _csv(rows))
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
    from .evaluate import CORRUPTION_SETS

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
    _write(out_dir, "calibration.md", "\n".join(full))
    _write(out_dir, "calibration.csv", _csv(rows))
    return summary


def _sum_bins(evals: list[dict], strategy: int, field: str, sets) -> dict[str, np.ndarray]:
    tot = None
    for e in evals:
        if e["strategy"] != strategy:
            continue
        for part, n in sets:
            b = {k: np.asarray(v, np.float64) for k, v in e[part][n][field].items()}
            tot = b if tot is None else {k: tot[k] + b[k] for k in tot}
    return tot


def _style(s: int) -> str:
    return "-" if STRATEGIES[s].iqa_ls else ("--" if STRATEGIES[s].mixed else ":")


def reliability_figure(evals: list[dict], out: Path, min_count: int = 20) -> Path:
    """A reliability diagram per strategy (seeds pooled): clean, Table 2's distorted sets, CIFAR-10-C; bins
    holding fewer than ``min_count`` images are left out of the curves (not of the ECE)."""
    from .evaluate import CORRUPTION_SETS
    from .metrics import ECE_BINS, ece_from_bins

    plt = _plt()
    strategies = sorted({e["strategy"] for e in evals})
    cols = min(3, len(strategies))
    rows_n = -(-len(strategies) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 3.4 * rows_n), squeeze=False)
    groups = (("clean", [("results", "pristine")], "k"),
              ("Table 2 distorted", [("results", n) for n in DISTORTED], "tab:blue"),
              ("CIFAR-10-C", [("corruptions", n) for n in CORRUPTION_SETS], "tab:orange"))
    for ax, s in zip(axes.flat, strategies):
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8)
        for label, sets, colour in groups:
            b = _sum_bins(evals, s, "reliability", sets)
            m = b["count"] >= min_count
            ax.plot(b["conf_sum"][m] / b["count"][m], b["correct"][m] / b["count"][m], marker="o", ms=3, color=colour,
                    label=f"{label} (ECE {100 * ece_from_bins(b['count'], b['conf_sum'], b['correct']):.1f}%)")
        ax.set_title(f"{s}: {STRATEGIES[s].name}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left")
    for ax in axes.flat[len(strategies):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("mean confidence (predicted class)")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    fig.suptitle(f"Reliability diagrams ({ECE_BINS} confidence bins, seeds pooled; bins with >= {min_count} images)")
    fig.tight_layout()
    path = Path(out) / "reliability.png"
    _save_fig(fig, path)
    plt.close(fig)
    return path


def confidence_ssim_figure(evals: list[dict], out: Path, min_count: int = 50) -> Path:
    """Figure 4 over the whole test set: mean true-class confidence (and accuracy) against SSIM, every
    (image, test set) pair of the 25 test sets pooled in 20 SSIM bins, seeds pooled."""
    from .evaluate import CORRUPTION_SETS
    from .metrics import SSIM_BINS

    plt = _plt()
    sets = [("results", n) for n in SET_NAMES] + [("corruptions", n) for n in CORRUPTION_SETS]
    centres = (np.arange(SSIM_BINS) + 0.5) / SSIM_BINS
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for s in sorted({e["strategy"] for e in evals}):
        b = _sum_bins(evals, s, "by_ssim", sets)
        m = b["count"] >= min_count
        lab = f"{s}: {STRATEGIES[s].name}"
        axes[0].plot(centres[m], b["conf_sum"][m] / b["count"][m], _style(s), marker=".", label=lab)
        axes[1].plot(centres[m], 100 * b["correct"][m] / b["count"][m], _style(s), marker=".", label=lab)
    axes[0].plot([0, 1], [0, 1], color="0.6", lw=0.8, label="T(s) = s: IQA-LS's target")
    axes[0].set_ylabel("mean confidence in the true class")
    axes[0].set_ylim(0, 1)
    axes[1].set_ylabel("accuracy (%)")
    for ax in axes:
        ax.set_xlabel(f"SSIM of the test image (bins of {1 / SSIM_BINS:.2f}; pristine images at 1)")
        ax.set_xlim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Figure 4 over the whole test set: 25 test sets pooled, bins with >= {min_count} images")
    path = Path(out) / "figure4_ssim.png"
    _save_fig(fig, path)
    plt.close(fig)
    return path


def corruption_figure(evals: list[dict], out: Path) -> Path:
    """Accuracy against CIFAR-10-C severity (0 = clean) per corruption, one line per strategy."""
    from .evaluate import CORRUPTIONS, SEVERITIES

    plt = _plt()
    clean = aggregate(evals)
    acc = aggregate(evals, "corruptions", [f"{c}-{s}" for c in CORRUPTIONS for s in SEVERITIES])
    fig, axes = plt.subplots(1, len(CORRUPTIONS), figsize=(4.3 * len(CORRUPTIONS), 3.8))
    for ax, c in zip(axes, CORRUPTIONS):
        for s in acc:
            ax.plot([0, *SEVERITIES], [clean[s]["pristine"][0]] + [acc[s][f"{c}-{k}"][0] for k in SEVERITIES], _style(s),
                    marker=".", label=f"{s}: {STRATEGIES[s].name}")
        ax.set_title(c.replace("_", " "))
        ax.set_xlabel("CIFAR-10-C severity (0 = clean)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=6, loc="lower left")
    fig.suptitle("Accuracy at the CIFAR-10-C severities (mean over seeds)")
    path = Path(out) / "corruptions.png"
    _save_fig(fig, path)
    plt.close(fig)
    return path


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
