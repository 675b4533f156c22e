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


def aggregate(evals: list[dict]) -> dict[int, dict[str, tuple[float, float, int]]]:
    """strategy -> test set -> (mean accuracy %, std over seeds %, number of seeds)."""
    acc: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for e in evals:
        for name in SET_NAMES:
            acc[e["strategy"]][name].append(100.0 * e["results"][name]["accuracy"])
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
