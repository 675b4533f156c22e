"""``iqals-fast reproduce``: train the strategies of Table 2, evaluate them, write the report.

Orchestration only: the protocols are ``config.PROTOCOLS`` (``paper``; ``small``, which fits in well
under 90 minutes on a 2-core CPU), training is ``train.train``, evaluation ``evaluate.evaluate`` and
the report ``report.write_report``.

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

import time
from pathlib import Path

from tqdm.auto import tqdm

from .config import CORRUPTION_SETS, DEFAULT_PROTOCOL, PROTOCOLS, STRATEGIES, TEST_SETS, ReproProtocol
from .data.sources import load
from .evaluate import corruption_sets, evaluate, needs_eval, test_sets
from .ops.iqa import check_measure
from .report import extended_reports, figure3, figure4, table, write_report
from .runs import CHECKPOINT, finished
from .train import TrainConfig, train

__all__ = ["PROTOCOLS", "ReproProtocol", "evaluate_runs", "report_dir", "reproduce", "run_name"]


def run_name(strategy: int, seed: int, iqa: str = "ssim") -> str:
    """``strategy<N>-seed<S>``, with ``-<iqa>`` for an IQA-LS strategy scored by a measure other than SSIM
    (a 0-1 label run uses no quality score, so every measure shares the SSIM run)."""
    name = f"strategy{strategy}-seed{seed}"
    return f"{name}-{iqa}" if iqa != "ssim" and STRATEGIES[strategy].iqa_ls else name


def report_dir(out: Path, iqa: str = "ssim") -> Path:
    """Where the report goes: OUT for SSIM, OUT/iqa-<M> for another measure."""
    return Path(out) if iqa == "ssim" else Path(out) / f"iqa-{iqa}"


def reproduce(protocol: str = DEFAULT_PROTOCOL, *, data: str = TrainConfig.data, out: str | Path = "results",
              seeds=(0,), strategies=tuple(STRATEGIES), device: str = TrainConfig.device,
              backend: str = TrainConfig.backend, paper_csv=None, progress: bool = True,
              command: str = "iqals-fast reproduce", iqa: str = TrainConfig.iqa) -> Path:
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
            if not finished(run, p.epochs):
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
