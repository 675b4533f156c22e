"""Figures 3 and 4 and the figures beyond Table 2 (reliability, confidence against SSIM, CIFAR-10-C), as PNG."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from .._io import atomic_write_bytes
from ..config import (
    CORRUPTION_SETS,
    CORRUPTIONS,
    FIG4_SIGMAS,
    KINDS,
    PRISTINE_STRATEGY,
    SEVERITIES,
    STRATEGIES,
    STRATEGY_PAIRS,
)
from ..data.sources import load
from ..evaluate import figure4_confidence, figure4_picks
from ..metrics import ECE_BINS, SSIM_BINS, ece_from_bins
from ..runs import CHECKPOINT, EVAL, METRICS, data_spec, load_model, load_run_config, read_metrics
from .tables import DISTORTED, SET_NAMES, aggregate, load_evals


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
        for (zo, ls), colour in ((STRATEGY_PAIRS[kind], colours["single"]), (STRATEGY_PAIRS["all3"], colours["all3"])):
            label = STRATEGIES[zo].name
            for s, style, suffix in ((zo, "--", " (0-1 labels)"), (ls, "-", " + IQA-LS")):
                if s in agg:
                    ax.plot(levels, [agg[s][n][0] for n in names], style, marker="o", color=colour, label=label + suffix)
        p = PRISTINE_STRATEGY
        if p in agg:
            ax.plot(levels, [agg[p][n][0] for n in names], ":", marker=".", color="k",
                    label=f"{STRATEGIES[p].name} (strategy {p})")
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


"""Figure 4 shows the first test image of each of these classes (fixed in advance, not chosen on results)."""


def figure4(runs, out: Path, *, data: str | None = None, device: str = "cpu", dataset=None,
            show_images: bool = True) -> Path | None:
    """The model's confidence in the true class of a few test images as Gaussian blur grows.

    Each strategy's curve comes from its first run that has it: the ``figure4`` record of its eval.json (on the
    same test images), else its checkpoint. A strategy with neither (a committed run evaluated before eval.json
    recorded it, whose checkpoint is not committed) is left out and named in the figure's title. With no
    strategy to draw, nothing is written (an earlier figure4.png stays, and a note says so) and None is returned.
    ``show_images=False`` leaves the images out (titles only), for reports that must not carry a
    dataset's pixels."""
    plt = _plt()
    runs = [Path(r) for r in runs]
    by_strategy: dict[int, list[Path]] = {}
    for r in runs:
        by_strategy.setdefault(load_run_config(r)["strategy"], []).append(r)
    cfg0 = load_run_config(runs[0])
    ds = dataset if dataset is not None else load(data or data_spec(cfg0))
    picks = figure4_picks(ds)
    imgs, ys = ds.test_x[picks], ds.test_y[picks]
    series, missing = {}, []
    for s, rs in sorted(by_strategy.items()):
        for r in rs:
            rec = _figure4_record(r, ds, picks)
            if rec is not None:
                series[s] = rec
                break
            if (r / CHECKPOINT).is_file():
                series[s] = np.asarray(figure4_confidence(load_model(r, device)[0], ds, device)["confidence"])
                break
        else:
            missing.append(s)
    if not series:
        print(f"note: Figure 4 not drawn: no run of strategies {', '.join(map(str, missing))} has its checkpoint or "
              f"a figure4 record in eval.json")
        return None
    if missing:
        print(f"note: Figure 4 leaves out strategies {', '.join(map(str, missing))}: no run of theirs has its "
              "checkpoint or a figure4 record in eval.json")
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
    title = "Figure 4: confidence in the true class as blur grows"
    if missing:
        title += f"\n(strategies {', '.join(map(str, missing))} not drawn: neither checkpoint nor figure4 record)"
    fig.suptitle(title, y=1.08 if missing else 0.98)
    path = Path(out) / "figure4.png"
    _save_fig(fig, path)
    plt.close(fig)
    return path


def _figure4_record(run: Path, ds, picks: list[int]) -> np.ndarray | None:
    """The ``figure4`` confidences of ``run``'s eval.json (images x sigmas), where measured on ``ds``'s test images
    at these picks and sigmas; else None."""
    try:
        e = json.loads((run / EVAL).read_text())
    except (OSError, ValueError):
        return None
    rec = e.get("figure4") if isinstance(e, dict) else None
    if (not isinstance(rec, dict) or e.get("test_checksum") != ds.checksum or e.get("n_test") != len(ds.test_y)
            or rec.get("picks") != picks or rec.get("sigmas") != list(FIG4_SIGMAS)):
        return None
    conf = np.asarray(rec.get("confidence"), np.float64)
    return conf if conf.shape == (len(picks), len(FIG4_SIGMAS)) else None


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


def curves(runs) -> dict[str, list[dict]]:
    """Run name -> its metrics.jsonl rows that hold a learning-curve point (``test_acc``: ``--curve-every``), for
    the runs that logged one."""
    out = {}
    for r in runs:
        rows = [m for m in read_metrics(r) if m.get("test_acc") is not None] if (Path(r) / METRICS).is_file() else []
        if rows:
            out[Path(r).name] = rows
    return out


def curve_panels(runs) -> dict[int, list[tuple[str, list[dict]]]]:
    """``curves`` by strategy (each run's config.json): strategy -> [(the run's name after ``strategy<N>-``, e.g.
    ``seed1-finetune``, its curve rows)], sorted by that name."""
    data, panels = curves(runs), {}
    for r in runs:
        if Path(r).name in data:
            s = load_run_config(r)["strategy"]
            panels.setdefault(s, []).append((Path(r).name.removeprefix(f"strategy{s}-"), data[Path(r).name]))
    return {s: sorted(rs, key=lambda x: x[0]) for s, rs in sorted(panels.items())}


def curve_figure(runs, out: Path) -> Path | None:
    """The training curves (``curves.png``): one panel per strategy (its config.json's), holding each of its runs
    (a colour per seed and variant: the run name after ``strategy<N>-``): pristine test accuracy (solid), training
    accuracy (dashed) and mean true-class confidence on the training images, in percent (dotted), against the
    epoch; None when no run logged a curve."""
    by_strategy = curve_panels(runs)
    if not by_strategy:
        return None
    variants = sorted({v for rs in by_strategy.values() for v, _ in rs})
    colour = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    plt = _plt()
    n = len(by_strategy)
    cols = min(3, n)
    rows_ = -(-n // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(4.2 * cols, 3.1 * rows_), sharex=True, sharey=True, squeeze=False)
    for ax, (s, rs) in zip(axes.flat, by_strategy.items()):
        for v, rows in rs:
            ep = [m["epoch"] for m in rows]
            ax.plot(ep, [100 * m["test_acc"] for m in rows], "-", color=colour[v])
            ax.plot(ep, [100 * m["train_acc"] for m in rows], "--", color=colour[v])
            ax.plot(ep, [100 * m["train_conf_true"] for m in rows], ":", color=colour[v])
        ax.set_title(f"{s}: {STRATEGIES[s].name}", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("%")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colour[v], label=v) for v in variants] + [
        Line2D([], [], color="0.3", linestyle=ls, label=what)
        for ls, what in (("-", "test accuracy (pristine)"), ("--", "training accuracy"),
                         (":", "true-class confidence, training images (x100)"))]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0))
    fig.tight_layout(rect=(0, 0.04 * (1 + (len(handles) - 1) // 4) / rows_, 1, 1))
    _save_fig(fig, Path(out) / "curves.png")
    plt.close(fig)
    return Path(out) / "curves.png"
