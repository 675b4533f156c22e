"""``iqals-fast reproduce``: train the strategies of Table 2, evaluate them, write the report.

Orchestration only: the protocols are ``config.PROTOCOLS`` (``paper``; ``small``, which fits in well
under 90 minutes on a 2-core CPU; ``medium``, the full data over the schedule ``protocol_rule`` decides),
training is ``train.train``, evaluation ``evaluate.evaluate`` and the report ``report.write_report``.
Table 2 and the report show the paper's numbers beside ours (``report.load_paper``; ``paper_csv``
replaces them, ``show_paper=False`` hides them).

Every run lives in ``OUT/runs/strategy<N>-seed<S>``; an interrupted reproduction resumes: finished
runs are skipped, unfinished ones continue from their last checkpoint. On CUDA (``fleet=None``; or with
``--fleet``) the from-scratch runs train together as fleets (``fleet.py``: one grouped network, each run's
directory as it would be alone); on CPU one after another unless asked.

``--iqa M`` (M other than ``ssim``) scores IQA-LS's training images with another quality measure
(``ops/iqa.py``). Its IQA-LS runs (strategies 3, 5, 7, 9) live in ``OUT/runs/strategy<N>-seed<S>-<M>``
and its report, tables and figures in ``OUT/iqa-<M>/``, so they never collide with the SSIM ones.
Runs with 0-1 labels (1, 2, 4, 6, 8) use no quality score: they are the SSIM runs, in the same
directories. Asked for, they are trained (or found finished) there; not asked for, those already
evaluated in ``OUT/runs`` are put in the report beside the new runs, and the SSIM IQA-LS runs of the
same seeds are compared with the new measure's.

``--finetune`` adds the fine-tuning ablation: each IQA-LS strategy asked for (3, 5, 7, 9) once more,
started from the same-seed 0-1 label run of its mixture (2, 4, 6, 8; trained too if not asked for) at
the end of that run's first lr stage (its ``stage1.pt``), then trained with IQA-LS labels for the rest
of the schedule, in ``OUT/runs/strategy<N>-seed<S>-finetune``; Table 2 shows these as rows of their own
(``3 ft``) and the claims section compares them with 0-1 labels too. A fine-tuned run holds the metrics
of its own epochs only (those after the first stage).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .config import CORRUPTION_SETS, DEFAULT_PROTOCOL, PAPER, PROTOCOLS, STRATEGIES, STRATEGY_PAIRS, TEST_SETS, ReproProtocol
from .data.sources import load
from .evaluate import corruption_sets, evaluate, needs_eval, test_sets
from .fleet import train_fleet
from .ops.iqa import check_measure
from .report import extended_reports, figure3, figure4, load_paper, table, write_report
from .runs import CHECKPOINT, METRICS, check_device, finished, load_checkpoint, read_metrics
from .train import TrainConfig, train

__all__ = ["PROTOCOLS", "ReproProtocol", "RuleVerdict", "compared_runs", "done", "evaluate_runs", "protocol_rule",
           "report_dir", "reproduce", "rule_text", "run_name"]


def run_name(strategy: int, seed: int, iqa: str = "ssim", finetune: bool = False) -> str:
    """``strategy<N>-seed<S>``, with ``-<iqa>`` for an IQA-LS strategy scored by a measure other than SSIM
    (a 0-1 label run uses no quality score, so every measure shares the SSIM run), and ``-finetune`` for an
    IQA-LS run fine-tuned from its 0-1 label counterpart."""
    name = f"strategy{strategy}-seed{seed}"
    name = f"{name}-{iqa}" if iqa != "ssim" and STRATEGIES[strategy].iqa_ls else name
    return f"{name}-finetune" if finetune else name


def report_dir(out: Path, iqa: str = "ssim") -> Path:
    """Where the report goes: OUT for SSIM, OUT/iqa-<M> for another measure."""
    return Path(out) if iqa == "ssim" else Path(out) / f"iqa-{iqa}"


# ----------------------------------------------------------------------------------------------
# The rule that fixes the ``medium`` protocol's length, and its evidence

PROTOCOL_EVIDENCE = Path(__file__).resolve().parents[1] / "results/medium/protocol-run/strategy1-seed0-curve.jsonl"
"""Strategy 1, seed 0 on the full archive, 60 epochs of the paper's staircase (x0.1 after epochs 20 and 40): one
row per epoch with ``train_acc`` (metrics.jsonl's), ``test_acc`` (all 10,000 pristine test images) and
``train_conf_true``. Written by ``research/medium_protocol_run.py`` (see the README beside it); in a source checkout.

The verdict on it (``python -m iqals_fast.reproduce``, 2026-12-02): training accuracy 99.13% in epoch 60 (>= 98%);
pristine test accuracy over epochs 41-60 rises by +0.10 points on its least-squares line, under one binomial
standard error (0.41 points at 78.1% on 10,000 images): the rule holds, so ``medium`` is 60 epochs. Training
accuracy passed 98% at epoch 24 (4 epochs into the second stage) and test accuracy stayed within 77.6-78.2% from
epoch 23 on; 60 is the only schedule tried, so a shorter one (e.g. 45, steps after 15 and 30) might also
meet the rule."""

MEMORISED_TRAIN_ACC = 0.98
"""The rule's training accuracy: at least 98% in the run's last epoch."""
RULE_MAX_EPOCHS = 150
"""The longest schedule the rule may choose (7.5M training images per run); if 150 epochs do not meet it, 150."""


@dataclass(frozen=True)
class RuleVerdict:
    """What ``protocol_rule`` found: ``holds`` True / False, or None while the curve is unfinished."""

    holds: bool | None
    epochs: int  # the schedule tested
    logged: int  # the last epoch the curve holds
    train_acc: float  # in the last epoch logged
    window: tuple[int, int]  # first and last epoch of the last third with a test accuracy
    rise: float  # least-squares rise of test accuracy over the window, points
    standard_error: float  # binomial standard error of one test accuracy, points
    text: str

    def __str__(self) -> str:
        return self.text


def protocol_rule(curve=PROTOCOL_EVIDENCE, protocol: ReproProtocol = PROTOCOLS["medium"], n_test: int = 10_000
                  ) -> RuleVerdict:
    """The rule that decided the ``medium`` schedule, applied to strategy 1 seed 0's learning curve.

    ``curve``: a JSON-lines file of epoch rows (``PROTOCOL_EVIDENCE``, or a run directory's metrics.jsonl as
    ``curve_every`` logs it) with ``epoch``, ``train_acc`` and, on some or all rows, ``test_acc`` (fractions).
    Rows with ``lr`` must follow ``protocol``'s staircase (lr 0.1, x0.1 every ``lr_step_epochs``): the curve is
    a run of the schedule it judges, not a prefix of a longer one. A schedule of ``epochs`` epochs puts
    strategy 1 in the memorisation regime when, over the whole run:

    1. its training accuracy (``train_acc``, the epoch's running accuracy on what it trained on: the lower,
       stricter of the two training accuracies logged) is at least 98% in the last epoch; and
    2. its pristine test accuracy is no longer rising over the last third of the run (the epochs after
       ``2 * epochs / 3``): the least-squares line through the test accuracies logged there rises by less,
       from the window's first epoch to its last, than the binomial standard error of one accuracy measured
       on ``n_test`` images, sqrt(p (1 - p) / n) at the window's mean accuracy p (0.41 points at 78% on
       10,000): a gain that one measurement's noise could make is not a gain. The fitted line, not the
       last-minus-first difference, so that one noisy epoch does not decide.

    The shortest ``epochs`` (at most ``RULE_MAX_EPOCHS``) for which it holds is the schedule; decided on
    strategy 1 seed 0 alone, before any IQA-LS run. ``holds`` is None while the curve lacks epochs."""
    path = Path(curve)
    path = path / METRICS if path.is_dir() else path
    epochs, schedule = protocol.epochs, PAPER.scaled(protocol.epochs, None, protocol.lr_step_epochs)
    if not 1 <= epochs <= RULE_MAX_EPOCHS:
        raise ValueError(f"the rule chooses among schedules of 1-{RULE_MAX_EPOCHS} epochs, got {epochs}")
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a learning curve (JSON lines): {e}") from None
    rows = [r for r in rows if r.get("epoch", 0) <= epochs]
    if not rows or any("epoch" not in r or "train_acc" not in r for r in rows):
        raise ValueError(f"{path}: need rows with epoch and train_acc (and test_acc)")
    off = [(r["epoch"], r["lr"]) for r in rows if "lr" in r and not math.isclose(r["lr"], schedule.lr_at(r["epoch"] - 1))]
    if off:
        (e, lr), *_ = off
        raise ValueError(f"{path}: epoch {e} was trained at lr {lr:g}, not at the {epochs}-epoch schedule's "
                         f"{schedule.lr_at(e - 1):g} (x{schedule.lr_decay:g} every {schedule.lr_step_epochs} epochs): "
                         "the curve is not a run of this schedule")
    logged, train_acc = rows[-1]["epoch"], rows[-1]["train_acc"]
    start = 2 * epochs / 3
    pts = [(r["epoch"], r["test_acc"]) for r in rows if r["epoch"] > start and r.get("test_acc") is not None]
    rise, se, window = math.nan, math.nan, (pts[0][0], pts[-1][0]) if pts else (0, 0)
    if len(pts) >= 3:
        x = [e for e, _ in pts]
        y = [100 * a for _, a in pts]
        mx, my = sum(x) / len(x), sum(y) / len(y)
        slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
        rise = slope * (x[-1] - x[0])
        se = 100 * math.sqrt(my / 100 * (1 - my / 100) / n_test)
    memorised, flat = train_acc >= MEMORISED_TRAIN_ACC, rise < se
    head = (f"{path.name}: {epochs}-epoch schedule, curve logged to epoch {logged}; training accuracy "
            f"{100 * train_acc:.2f}% (need >= {100 * MEMORISED_TRAIN_ACC:.0f}%)")
    if logged < epochs:
        return RuleVerdict(None, epochs, logged, train_acc, window, rise, se,
                           f"{head}; undecided: the run has {epochs - logged} epochs to go (test accuracy over the "
                           f"last third, epochs {math.floor(start) + 1}-{epochs}, is judged when it is done)")
    if len(pts) < 3:
        raise ValueError(f"{path}: fewer than 3 test accuracies in the last third of the run (epochs > {start:g})")
    holds = memorised and flat
    verdict = ("holds: the schedule is long enough" if holds else
               f"fails: {'training accuracy below 98%; ' if not memorised else ''}"
               f"{'test accuracy still rising; ' if not flat else ''}a longer schedule is needed"
               + (f" (at most {RULE_MAX_EPOCHS} epochs)" if epochs < RULE_MAX_EPOCHS else
                  f"; {RULE_MAX_EPOCHS} epochs are the limit: take {RULE_MAX_EPOCHS}"))
    text = (f"{head}; test accuracy over epochs {window[0]}-{window[1]} ({len(pts)} points) rises by {rise:+.2f} "
            f"points on its least-squares line (need < {se:.2f}, one binomial standard error at {my:.1f}% on "
            f"{n_test:,} images): {verdict}")
    return RuleVerdict(holds, epochs, logged, train_acc, window, rise, se, text)


def reproduce(protocol: str = DEFAULT_PROTOCOL, *, data: str = TrainConfig.data, out: str | Path = "results",
              seeds=(0,), strategies=tuple(STRATEGIES), device: str = TrainConfig.device,
              backend: str = TrainConfig.backend, paper_csv=None, show_paper: bool = True, progress: bool = True,
              command: str = "iqals-fast reproduce", iqa: str = TrainConfig.iqa, finetune: bool = False,
              fleet: bool | None = None, report_only: bool = False, compare: str | Path | None = None) -> Path:
    """Train (or find finished), evaluate and report the runs asked for; the path of report.md.

    ``report_only``: train nothing; the report holds the runs asked for that are finished (evaluated first
    where their eval.json is missing or old) and lists the others. ``compare``: a reproduction directory of
    another protocol (``DIR/runs/strategy<N>-seed<S>``, evaluated), whose claims the report sets beside these
    (``--compare results`` for ``small`` beside ``medium``)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
    check_measure(iqa)
    p = PROTOCOLS[protocol]
    paper = load_paper(paper_csv) if show_paper else None  # a bad --paper file fails before any training
    other = compared_runs(compare, iqa) if compare is not None else None  # and a bad --compare
    out = Path(out)
    t0 = time.perf_counter()
    ds = load(data)

    def config(s, seed, finetune_from=None):
        m = iqa if STRATEGIES[s].iqa_ls else "ssim"  # 0-1 labels: the measure is unused, the SSIM run is it
        return TrainConfig(strategy=s, data=data, epochs=p.epochs, train_subset=p.train_subset, seed=seed,
                           device=device, backend=backend, lr_step_epochs=p.lr_step_epochs,
                           out=str(out / "runs" / run_name(s, seed, m, finetune_from is not None)), iqa=m,
                           curve_every=p.curve_every, finetune_from=finetune_from)

    missing: list[str] = []

    def get(cfg):
        if not report_only:
            return _train(cfg, ds, p, progress)
        run = cfg.run_dir()
        if done(run, p.epochs):
            return run
        missing.append(run.name)
        return None

    if not report_only and (fleet if fleet is not None else check_device(device).type == "cuda"):
        _train_fleets([config(s, seed) for seed in seeds for s in strategies], ds, p, progress)  # the loop finds them
    runs, tuned = [], []
    for seed in seeds:
        for s in strategies:
            runs.append(get(config(s, seed)))
        if finetune:  # the ablation: IQA-LS from its 0-1 label run's stage-1 weights (trained first if not asked for)
            for zo, ls in STRATEGY_PAIRS.values():
                if ls in strategies:
                    source = get(config(zo, seed))
                    runs += [] if source in runs else [source]
                    if source is not None or not report_only:
                        tuned.append(get(config(ls, seed, finetune_from=str(source))))
                    else:
                        missing.append(run_name(ls, seed, iqa, finetune=True))
    runs, tuned = [r for r in runs if r is not None], [r for r in tuned if r is not None]
    missing = list(dict.fromkeys(missing))
    if not runs:
        raise ValueError(f"--report-only: none of the runs asked for is finished in {out / 'runs'} "
                           f"(missing: {', '.join(missing)})")
    evaluate_runs(runs + tuned, ds, p.test_subset, device=device, backend=backend, progress=progress)
    ssim_runs = []
    if iqa != "ssim":
        # the 0-1 label runs not asked for, where already evaluated, complete the comparison (never retrained)
        asked = {(s, sd) for sd in seeds for s in strategies}
        runs += [r for sd in seeds for s in STRATEGIES if not STRATEGIES[s].iqa_ls and (s, sd) not in asked
                 for r in [out / "runs" / run_name(s, sd)] if not needs_eval(r, "all") and r not in runs]
        ssim_runs = [r for sd in seeds for s in strategies if STRATEGIES[s].iqa_ls
                     for r in [out / "runs" / run_name(s, sd)] if not needs_eval(r, "all")]
    rep = report_dir(out, iqa)
    rep.mkdir(parents=True, exist_ok=True)
    table(runs + tuned, paper_csv, out_dir=rep, show_paper=show_paper)
    figure3(runs, rep)
    # the committed report must not carry dataset pixels: Figure 4 without the thumbnails
    figure4(runs, rep, dataset=ds, device=device, show_images=False)
    extended_reports(runs, rep)
    write_report(rep, p, runs, ds, seeds, wall=time.perf_counter() - t0, command=command, iqa=iqa,
                 ssim_runs=ssim_runs, paper=paper, finetuned_runs=tuned, rule=rule_text(p, out),
                 compare=other, missing=missing)
    return rep / "report.md"


def done(run: Path, epochs: int) -> bool:
    """A run the report can hold without training: finished (its checkpoint at ``epochs``), or committed without
    its checkpoint (metrics.jsonl reaching ``epochs`` and a current eval.json)."""
    if finished(run, epochs):
        return True
    if (run / CHECKPOINT).is_file() or not (run / METRICS).is_file() or needs_eval(run, "all"):
        return False
    return max((r["epoch"] for r in read_metrics(run)), default=0) >= epochs


def compared_runs(compare: str | Path, iqa: str = "ssim") -> tuple[str, list[Path]]:
    """``(protocol name, evaluated runs)`` of the reproduction directory ``compare``, for ``--compare``: its
    ``runs/strategy<N>-seed<S>`` (the measure's IQA-LS runs with ``iqa``) that hold an eval.json, their protocol
    named from config.json (``PROTOCOLS`` by epochs and training subset; else the directory's name). A
    ValueError naming the directory when it holds none."""
    root = Path(compare)
    runs = sorted(r for r in (root / "runs").glob("strategy*-seed*")
                  if (r / "eval.json").is_file() and r.name == _parse_name(r.name, iqa))
    if not runs:
        raise ValueError(f"--compare {compare}: no evaluated runs (runs/strategy<N>-seed<S>/eval.json) in it")
    cfg = json.loads((runs[0] / "config.json").read_text()) if (runs[0] / "config.json").is_file() else {}
    prot = cfg.get("protocol", {})
    name = next((n for n, q in PROTOCOLS.items()
                 if q.epochs == prot.get("epochs") and q.train_subset == prot.get("train_subset")), root.name)
    return name, runs


def _parse_name(name: str, iqa: str) -> str | None:
    """The name ``run_name`` gives a from-scratch run of the strategy and seed ``name`` starts with
    (``strategy<N>-seed<S>``) scored with ``iqa``; None for a name of another shape."""
    try:
        head, seed = name.split("-")[:2]
        s, sd = int(head.removeprefix("strategy")), int(seed.removeprefix("seed"))
        return run_name(s, sd, iqa) if s in STRATEGIES else None
    except ValueError:
        return None


def rule_text(p: ReproProtocol, out: Path) -> str:
    """For ``medium``: what ``protocol_rule`` says of the protocol run's curve (``PROTOCOL_EVIDENCE`` in a source
    checkout, else OUT's strategy 1 seed 0 run), with the rule itself in a sentence; else empty."""
    if p.name != "medium":
        return ""
    curve = PROTOCOL_EVIDENCE if PROTOCOL_EVIDENCE.is_file() else Path(out) / "runs" / run_name(1, 0) / METRICS
    if not curve.is_file():
        return ""
    try:
        verdict = protocol_rule(curve, p)
    except ValueError as e:
        return f"the rule (`reproduce.protocol_rule`) could not be applied: {e}"
    return (f"decided on strategy 1 seed 0 alone, before any IQA-LS run, by `reproduce.protocol_rule` (training "
            f"accuracy at least {100 * MEMORISED_TRAIN_ACC:.0f}% in the last epoch, and pristine test accuracy no "
            f"longer rising over the last third: its least-squares rise under one binomial standard error; at most "
            f"{RULE_MAX_EPOCHS} epochs). On its evidence: {verdict}.")


def _train(cfg: TrainConfig, ds, p: ReproProtocol, progress: bool) -> Path:
    """Train ``cfg`` unless its run is finished (an unfinished one resumes from its checkpoint); its directory."""
    run = cfg.run_dir()
    if not finished(run, p.epochs):
        train(cfg, resume=(run / CHECKPOINT).is_file(), dataset=ds, progress=progress)
    return run


def _train_fleets(cfgs: list[TrainConfig], ds, p: ReproProtocol, progress: bool) -> None:
    """Train the unfinished runs of ``cfgs`` as fleets (``fleet.train_fleet``): one fleet for each epoch their
    checkpoints are at (0: new runs), since the runs of a fleet resume together."""
    by_start: dict[int, list[TrainConfig]] = {}
    for c in cfgs:
        run = c.run_dir()
        if not finished(run, p.epochs):
            ck = run / CHECKPOINT
            by_start.setdefault(load_checkpoint(ck)["epoch"] if ck.is_file() else 0, []).append(c)
    for start, group in sorted(by_start.items()):
        train_fleet(group, resume=start > 0, dataset=ds, progress=progress)


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


if __name__ == "__main__":  # python -m iqals_fast.reproduce [CURVE]: the medium protocol's rule, on its evidence
    print(protocol_rule(*(sys.argv[1:2] or [PROTOCOL_EVIDENCE])))
