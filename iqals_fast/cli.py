"""``iqals-fast``: train, evaluate and report the strategies of Table 2.

    iqals-fast train --strategy 9 --data ../shared/data/cifar10-jpeg.tar.gz --epochs 1 --train-subset 2000
    iqals-fast eval runs/strategy9-seed0
    iqals-fast table runs/*
    iqals-fast figures runs/*
    iqals-fast distort --data synthetic --kind blur --level 3 --out distorted/
"""

from __future__ import annotations

import argparse
import inspect
import shlex
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from . import train as training
from .config import KINDS, LEVEL_NUMBERS, PAPER, PRECISIONS, PROTOCOLS, STRATEGIES, SUITES
from .data.sources import load
from .evaluate import evaluate
from .inference import EVAL_PRECISIONS
from .ops.api import distort_and_score
from .ops.iqa import IQA_MEASURES
from .report import (
    calibration_table,
    confidence_ssim_figure,
    corruption_figure,
    corruption_table,
    figure3,
    figure4,
    has_extended,
    load_evals,
    reliability_figure,
    table,
)
from .reproduce import reproduce
from .runs import check_device, os_error_message
from .throughput import GROUPS, run_bench
from .train import TrainConfig

D = TrainConfig()
"""The defaults of ``iqals-fast train``; every other command's are those of the function it calls."""


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _strategy(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        v = None
    if v not in STRATEGIES:
        names = ", ".join(f"{k}={v.name}" for k, v in STRATEGIES.items())
        raise argparse.ArgumentTypeError(f"unknown strategy {s!r}; choose 1-9 ({names})")
    return v


def _default(fn, name: str):
    """The default of ``fn``'s parameter ``name``: a command's defaults are its function's."""
    return inspect.signature(fn).parameters[name].default


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iqals-fast", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train strategies of Table 2 (several strategies/seeds: as one fleet)")
    t.add_argument("--strategy", type=_strategy, nargs="+", default=[D.strategy], metavar="N",
                   help=f"1-9, Table 2's rows (default {D.strategy}: {STRATEGIES[D.strategy].name}); several, or several "
                        "--seed: every (strategy, seed) trained as one fleet (docs/fleets.md)")
    t.add_argument("--data", default=D.data, help="cifar10 | synthetic | dir or .tar.gz of CIFAR batches / class folders")
    t.add_argument("--epochs", type=_positive_int, default=D.epochs,
                   help=f"epochs (lr steps scale with it; paper: {PAPER.epochs})")
    t.add_argument("--train-subset", type=_positive_int, default=D.train_subset,
                   help="train on a class-balanced subset of N images")
    t.add_argument("--seed", type=int, nargs="+", default=[D.seed], metavar="S", help=f"default {D.seed}")
    t.add_argument("--device", default=D.device, help="torch device (cpu, cuda, cuda:1)")
    t.add_argument("--backend", default=D.backend, help="distortion/SSIM/loss backend: auto, torch, cpu, triton")
    t.add_argument("--transform", default=D.transform, help="IQA-LS transform T: identity | power:G | affine:A")
    t.add_argument("--iqa", default=D.iqa, choices=IQA_MEASURES,
                   help=f"IQA measure behind IQA-LS's scores (default {D.iqa}, the paper's; see iqals_fast/ops/iqa.py)")
    t.add_argument("--batch-size", type=_positive_int, default=D.batch_size)
    t.add_argument("--lr-step-epochs", type=_positive_int, default=D.lr_step_epochs,
                   help=f"lr x0.1 every N epochs (default: the paper's {PAPER.lr_step_epochs} of {PAPER.epochs}, "
                        "scaled with --epochs)")
    t.add_argument("--out", default=D.out, help="run directory (default runs/strategy<N>-seed<S>); for a fleet, the "
                                                "parent of its runs' OUT/strategy<N>-seed<S> (default runs)")
    t.add_argument("--curve-every", type=int, default=D.curve_every, metavar="N",
                   help="after every N-th epoch and the last, add the pristine test accuracy and the true-class "
                        "confidence and accuracy on 10,000 training images to metrics.jsonl (default 0: never)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    t.add_argument("--finetune-from", metavar="RUN", default=D.finetune_from,
                   help="IQA-LS fine-tuned: start from RUN (the same-seed 0-1 label run of this strategy's mixture, "
                        "same protocol and data) at the end of its first lr stage (RUN/stage1.pt)")
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=D.compile,
                   help="torch.compile the training step, with CUDA graphs on GPU (default: on for CUDA, off on "
                        "CPU, where the eager step with the C++ LRN is faster; see `iqals-fast bench`)")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=D.channels_last,
                   help="channels_last memory format for the CNN (default: on for CPU, off on CUDA)")
    t.add_argument("--graph", action=argparse.BooleanOptionalAction, default=D.graph,
                   help="the whole step (forward, backward, SGD update) as one CUDA graph, captured once (default: on "
                        "for CUDA in one process; --compile then compiles the forward inside it); on CPU the same "
                        "function, eagerly")
    t.add_argument("--precision", choices=PRECISIONS, default=D.precision,
                   help="bf16: autocast the CNN's convolutions and fully connected layers to bf16 (float32 weights "
                        "and loss); default: bf16 on a CPU with native bf16 (AVX512-BF16/AMX), fp32 on CUDA and "
                        "other CPUs; when resuming, the run's own")
    t.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="--precision bf16")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="test runs on the pristine and nine distorted test sets (writes RUN/eval.json)")
    e.add_argument("runs", nargs="+", type=Path)
    e.add_argument("--data", default=None, help="test data (default: the run's training data source)")
    e.add_argument("--device", default=_default(evaluate, "device"))
    e.add_argument("--backend", default=_default(evaluate, "backend"))
    e.add_argument("--test-subset", type=_positive_int, default=_default(evaluate, "test_subset"),
                   help="a class-balanced N test images")
    e.add_argument("--suite", choices=SUITES, default=_default(evaluate, "suite"),
                   help="table2: the ten sets of Table 2; corruptions: CIFAR-10-C severities 1-5 of noise, blur, "
                        "JPEG; all: both (default). Each set also gets calibration metrics")
    e.add_argument("--precision", choices=EVAL_PRECISIONS, default=_default(evaluate, "precision"),
                   help="fp32: exact; bf16: the CNN under bf16 autocast, a few predictions differ; checked: bf16, the "
                        "close calls redone in fp32, so fp32's predictions and accuracies (default on a CPU with "
                        "native bf16, else fp32; bench/results/eval-*.md)")
    e.add_argument("--batch", type=_positive_int, default=_default(evaluate, "batch"),
                   help="images a forward pass (fp32 outputs do not depend on it)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")

    tb = sub.add_parser("table", help="Table 2 from evaluated runs (Markdown; CSV with --out)")
    tb.add_argument("runs", nargs="+", type=Path)
    _paper_options(tb, None, True)
    tb.add_argument("--out", type=Path, default=None, help="also write table2.md and table2.csv here")

    f = sub.add_parser("figures", help="Figure 3 and Figure 4 (PNG) from evaluated runs")
    f.add_argument("runs", nargs="+", type=Path)
    f.add_argument("--out", type=Path, default=Path("figures"))
    f.add_argument("--data", default=None)
    f.add_argument("--device", default=_default(figure4, "device"))

    r = sub.add_parser("reproduce", help="train all nine strategies, evaluate, and write the Table 2 report")
    r.add_argument("--protocol", choices=tuple(PROTOCOLS), default=_default(reproduce, "protocol"),
                   help=f"paper: {PROTOCOLS['paper'].epochs} epochs, full data; small: fits in ~1 h on a 2-core CPU; "
                        f"medium: full data, {PROTOCOLS['medium'].epochs} epochs (see iqals_fast/config.py)")
    r.add_argument("--data", default=_default(reproduce, "data"))
    r.add_argument("--out", type=Path, default=Path(_default(reproduce, "out")))
    r.add_argument("--seeds", type=int, nargs="+", default=list(_default(reproduce, "seeds")))
    r.add_argument("--strategies", type=_strategy, nargs="+", default=list(_default(reproduce, "strategies")))
    r.add_argument("--device", default=_default(reproduce, "device"))
    r.add_argument("--backend", default=_default(reproduce, "backend"))
    _paper_options(r, _default(reproduce, "paper_csv"), _default(reproduce, "show_paper"))
    r.add_argument("--finetune", action="store_true",
                   help="also train each IQA-LS strategy fine-tuned from its same-seed 0-1 label run at the end of "
                        "that run's first lr stage (OUT/runs/strategy<N>-seed<S>-finetune; rows `N ft` in Table 2)")
    r.add_argument("--iqa", default=_default(reproduce, "iqa"), choices=IQA_MEASURES,
                   help=f"IQA measure behind IQA-LS's scores (default {_default(reproduce, 'iqa')}). Another measure's "
                        "IQA-LS runs go to "
                        "OUT/runs/strategy<N>-seed<S>-<iqa>, its report to OUT/iqa-<iqa>/; 0-1 label runs are shared")
    r.add_argument("--fleet", action=argparse.BooleanOptionalAction, default=_default(reproduce, "fleet"),
                   help="train the runs together as fleets, one grouped network (default: on CUDA; on CPU one run "
                        "after another)")
    r.add_argument("--report-only", action="store_true",
                   help="train nothing: the report from the runs asked for that are finished (evaluated first where "
                        "needed), listing the others")
    r.add_argument("--compare", type=Path, default=_default(reproduce, "compare"), metavar="DIR",
                   help="another protocol's reproduction directory (DIR/runs/strategy<N>-seed<S>, evaluated): the "
                        "report says which of its claims this one confirms or overturns (e.g. --compare results, "
                        "the small protocol's, beside --protocol medium)")
    r.add_argument("--no-progress", action="store_true")

    b = sub.add_parser("bench", help="training throughput side by side: eager, compiled, whole-step graph, fp32 / bf16, "
                                     "fleets, and the full strategy-9 pipeline")
    b.add_argument("--data", default=_default(run_bench, "data"),
                   help=f"images to time on (default {_default(run_bench, 'data')}; any --data spec)")
    b.add_argument("--device", default=_default(run_bench, "device"))
    b.add_argument("-n", type=_positive_int, default=_default(run_bench, "n"), help="training images of the pipeline run")
    b.add_argument("--epochs", type=_positive_int, default=_default(run_bench, "epochs"),
                   help="pipeline epochs (the first is not counted)")
    b.add_argument("--steps", type=_positive_int, default=_default(run_bench, "steps"), help="model-only steps per round")
    b.add_argument("--rounds", type=_positive_int, default=_default(run_bench, "rounds"),
                   help="interleaved rounds (median reported)")
    b.add_argument("--fleet", type=_positive_int, nargs="*", default=_default(run_bench, "fleets"), metavar="K",
                   help="fleets of K runs to time (default: 1 9 18 on CUDA, none on CPU; --fleet alone: none)")
    b.add_argument("--groups", nargs="*", choices=GROUPS, default=list(_default(run_bench, "groups")),
                   help="rows to time: single (one model, not compiled), compiled (each compiles for a minute or "
                        "more), fleet; the baseline always (default: all; --groups alone: the baseline only)")
    b.add_argument("--rows", nargs="+", default=list(_default(run_bench, "rows")), metavar="TEXT",
                   help="of those, only the rows whose name contains one of these (default: all)")
    b.add_argument("--warmup", type=_positive_int, default=_default(run_bench, "warmup"),
                   help="untimed steps per row before its rounds (the compiler or the graph capture runs there)")
    b.add_argument("--pipeline-fleet", type=_positive_int, nargs="*", default=list(_default(run_bench, "pipeline_fleets")),
                   metavar="K", help="also run the full pipeline as a fleet of K seeds of strategy 9 (default: none)")
    b.add_argument("--no-pipeline", action="store_true", help="model-only rows only")
    b.add_argument("--out", type=Path, default=None, help="write the results as JSON (and the table as .md beside it)")

    d = sub.add_parser("distort", help="write distorted copies of images to disk (PNG) to look at")
    d.add_argument("--data", default=_default(load, "spec"))
    d.add_argument("--split", choices=("train", "test"), default="test")
    d.add_argument("--kind", choices=KINDS + ("all",), default="all")
    d.add_argument("--level", type=int, choices=LEVEL_NUMBERS, default=None, help="default: all three")
    d.add_argument("-n", type=_positive_int, default=16, help="number of images")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", type=Path, default=Path("distorted"))
    return p


def _paper_options(parser, paper, show) -> None:
    """--paper FILE / --no-paper: the paper's Table 2 beside ours by default (shipped with the package)."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--paper", default=paper,
                   help="CSV of the paper's numbers (strategy,test_set,accuracy, percent) to show beside ours "
                        "(default: the paper's Table 2, shipped with the package)")
    g.add_argument("--no-paper", dest="show_paper", action="store_false", default=show,
                   help="show ours alone, without the paper's numbers")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args, argv)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"iqals-fast {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a permission, a path through a file: what failed, and where
        print(f"iqals-fast {args.command}: error: {os_error_message(e)}", file=sys.stderr)
        return 2


def _run(args, argv=None) -> int:
    if getattr(args, "device", None) is not None:  # every command that takes --device: one clear error
        check_device(args.device)
    if args.command == "train":
        fleet = len(args.strategy) * len(args.seed) > 1
        if fleet and args.finetune_from:
            raise ValueError("--finetune-from names one run to start from: fine-tune one strategy and seed at a time")
        cfgs = [TrainConfig(strategy=st, data=args.data, epochs=args.epochs, train_subset=args.train_subset,
                            seed=sd, device=args.device, backend=args.backend, transform=args.transform,
                            batch_size=args.batch_size, lr_step_epochs=args.lr_step_epochs, iqa=args.iqa,
                            out=str(Path(args.out or "runs") / f"strategy{st}-seed{sd}") if fleet else args.out,
                            finetune_from=args.finetune_from, curve_every=args.curve_every,
                            compile=args.compile, channels_last=args.channels_last, graph=args.graph,
                            precision=args.precision)
                for st in dict.fromkeys(args.strategy) for sd in dict.fromkeys(args.seed)]
        if fleet:
            from .fleet import train_fleet

            done = train_fleet(cfgs, resume=args.resume, progress=not args.no_progress)
            print(f"trained {len(done)} runs as one fleet in {Path(args.out or 'runs')}  (next: iqals-fast eval "
                  + " ".join(map(str, done)) + ")")
        else:
            run = training.train(cfgs[0], resume=args.resume, progress=not args.no_progress)
            print(f"trained: {run}  (next: iqals-fast eval {run})")
    elif args.command == "eval":
        memo = {}  # the test sets, distorted once for every run on the same test images
        for r in args.runs:
            res = evaluate(r, data=args.data, device=args.device, backend=args.backend, test_subset=args.test_subset,
                           suite=args.suite, progress=not args.no_progress, precision=args.precision,
                           batch=args.batch, memo=memo)
            for part in ("results", "corruptions"):
                if res[part]:
                    accs = "  ".join(f"{k} {100 * v['accuracy']:.2f}" for k, v in res[part].items())
                    print(f"{r}: {accs}")
    elif args.command == "table":
        print(table(args.runs, args.paper, args.out, show_paper=args.show_paper), end="")
        evals = load_evals(args.runs)
        if has_extended(evals):  # eval.json written by the current `iqals-fast eval` (both suites)
            print("\n" + corruption_table(evals, args.out) + "\n" + calibration_table(evals, args.out), end="")
    elif args.command == "figures":
        args.out.mkdir(parents=True, exist_ok=True)
        print(figure3(args.runs, args.out))
        print(figure4(args.runs, args.out, data=args.data, device=args.device))
        evals = load_evals(args.runs)
        if has_extended(evals):
            for fig in (reliability_figure, confidence_ssim_figure, corruption_figure):
                print(fig(evals, args.out))
    elif args.command == "reproduce":
        print(reproduce(args.protocol, data=args.data, out=args.out, seeds=tuple(args.seeds),
                        strategies=tuple(args.strategies), device=args.device, backend=args.backend,
                        paper_csv=args.paper, show_paper=args.show_paper, finetune=args.finetune,
                        progress=not args.no_progress, iqa=args.iqa, fleet=args.fleet,
                        report_only=args.report_only, compare=args.compare,
                        command=" ".join(["iqals-fast", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])))
    elif args.command == "bench":
        res = run_bench(args.data, args.device, n=args.n, epochs=args.epochs, steps=args.steps, rounds=args.rounds,
                        warmup=args.warmup, fleets=args.fleet, groups=tuple(args.groups), rows=tuple(args.rows),
                        pipeline_fleets=tuple(args.pipeline_fleet),
                        out=args.out, pipeline_run=not args.no_pipeline)
        print(res["table"], end="")
    elif args.command == "distort":
        _distort(args)
    return 0


def _distort(args) -> None:
    ds = load(args.data)
    x = (ds.test_x if args.split == "test" else ds.train_x)[: args.n]
    ids = np.arange(len(x))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [x]
    for i, im in enumerate(x):
        Image.fromarray(im).save(args.out / f"{i:04d}_pristine.png")
    for kind in KINDS if args.kind == "all" else (args.kind,):
        for lvl in LEVEL_NUMBERS if args.level is None else (args.level,):
            y, s = distort_and_score(x, kind, lvl, seed=args.seed, ids=ids)
            rows.append(y)
            for i, im in enumerate(y):
                Image.fromarray(im).save(args.out / f"{i:04d}_{kind}{lvl}_ssim{s[i]:.3f}.png")
    sheet = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    Image.fromarray(sheet).resize((sheet.shape[1] * 3, sheet.shape[0] * 3), Image.NEAREST).save(args.out / "sheet.png")
    print(f"wrote {len(rows) * len(x)} images and sheet.png (rows: pristine, then each kind and level) to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
