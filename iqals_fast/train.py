"""Training one strategy of Table 2, top to bottom.

    data -> epoch plan (60/15/15/10, drawn from (seed, epoch)) -> distort + SSIM -> soft labels
         -> PaperCNN -> soft-label MSE (Eq. 1) -> SGD (+ L2 on fc1, fc2) -> atomic checkpoint

Everything random derives from ``--seed`` and the epoch number (the model's initialisation, each
epoch's mixture, its noise and its batch order), so a run interrupted and resumed with
``--resume`` ends with the same weights as an uninterrupted one, bit for bit when resumed on the
same CPU with the same number of threads (another thread count changes the float rounding: 1 and 2
threads differ by ~4e-8). The epoch's batches come from ``data/mixture.epoch_batches``; the run
directory (its lock, config, checkpoint and metrics) is ``runs.py``'s. A loss or weights that turn
non-finite stop the run at that epoch, the last good checkpoint kept.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed, runs, step_graph
from ._alloc import keep_freed_memory
from .config import PAPER, PRECISIONS, get_strategy
from .data.mixture import EpochBatches, epoch_batches, mean_quality, training_cache
from .data.sources import Dataset, load
from .distributed import World, world
from .inference import native_bf16, predict
from .model import PaperCNN, standardize
from .ops import dispatch
from .ops.iqa import check_measure
from .ops.labels import parse_transform
from .runs import check_device


@dataclass
class TrainConfig:
    strategy: int = 9
    data: str = "cifar10"
    epochs: int = PAPER.epochs
    train_subset: int | None = None
    seed: int = 0
    device: str = "cpu"
    backend: str = "auto"
    transform: str = "identity"
    batch_size: int = PAPER.batch_size
    lr_step_epochs: int | None = None  # None: the paper's 350-of-2000 step, scaled with --epochs
    out: str | None = None
    curve_every: int = 0  # after every N-th epoch and the last: test_acc, train_conf_true, train_acc_probe (0: none)
    iqa: str = "ssim"  # the IQA measure behind IQA-LS's scores: ssim | ms-ssim-small | gmsd | psnr (ops/iqa.py)
    # IQA-LS fine-tuned: start from this same-seed 0-1 label run's weights at the end of its first lr stage
    # (its stage1.pt) and train the epochs after it (runs.open_run; runs.check_finetune_source)
    finetune_from: str | None = None
    # "fp32" | "bf16": the CNN in float32, or under bf16 autocast (convolutions and fully connected layers in
    # bf16, float32 master weights, the loss in float32). None = the device's default (``default_precision``)
    # for a new run, the run's own when resuming; validate() settles it, config.json records it (a result key).
    precision: str | None = None
    # How fast, not what: these change float rounding at most, so a run may be resumed with others.
    # None = the measured default for the device (``speed``; bench/results/train-*.md has the numbers).
    compile: bool | None = None  # torch.compile the step (CUDA graphs on GPU)
    channels_last: bool | None = None
    graph: bool | None = None  # the whole step as one CUDA graph (iqals_fast/step_graph.py); None = on for CUDA

    def speed(self, device: torch.device) -> tuple[bool, bool]:
        """(compile, channels_last) for ``device``. On CPU: eager and channels_last. With the C++ LRN the
        eager step is faster than the compiled one (inductor's generated max-pool and ReLU backward
        loops cost more than the fusions save), and channels_last makes PyTorch's max-pool about 5x
        faster. On CUDA: NCHW, and the whole step one CUDA graph (``step_graph``; a batch of 100 is
        launch-bound) with the eager forward inside; compiled ("reduce-overhead") where the graph is off."""
        cuda = torch.device(device).type == "cuda"
        graphed = step_graph.graph_enabled(self, device, world().size)
        return ((cuda and not graphed) if self.compile is None else self.compile,
                (not cuda) if self.channels_last is None else self.channels_last)

    def validate(self) -> None:
        get_strategy(self.strategy)
        parse_transform(self.transform)
        check_measure(self.iqa)
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"--seed must lie in [0, 2**32), got {self.seed}")
        self.protocol()
        if self.precision not in (None, *PRECISIONS):
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        dev = check_device(self.device)
        self.precision = self.settle_precision(dev)
        dispatch.resolve("soft_label_mse", self.backend, dev)  # a backend that cannot train fails here, not mid-run
        run = self.run_dir()
        for q in (run, *run.parents):
            if q.exists() and not q.is_dir():
                raise ValueError(f"--out {run}: {q} is a file, not a directory")
        size = world().size
        if self.batch_size % size:
            raise ValueError(f"--batch-size {self.batch_size} must be a multiple of the number of processes ({size}): "
                             "each step's batch is split evenly between them")

    def protocol(self):
        return PAPER.scaled(self.epochs, self.train_subset, self.lr_step_epochs)

    def amp_dtype(self, device: torch.device) -> torch.dtype | None:
        """torch.bfloat16 when the CNN runs under bf16 autocast on ``device``, else None (float32). An unsettled
        precision (None: no validate(), as in ``iqals-fast bench``) is the device's default."""
        precision = self.precision if self.precision is not None else default_precision(torch.device(device))
        return torch.bfloat16 if precision == "bf16" else None

    def settle_precision(self, device: torch.device) -> str:
        """The precision this run trains in: ``precision`` if given, else the run's own if ``run_dir()`` holds a
        run to resume (config.json's ``precision``; a run from before the option: "fp32"), else that of the run
        it fine-tunes (``finetune_from``: the pair is one precision), else the device's default.

        A resume with an explicit other precision is refused (``RESULT_KEYS``: runs.open_run), not allowed: bf16
        changes every step's arithmetic (activations rounded to 8 bits, not the ~1e-8 of another thread count), a
        run's config.json records one precision for all its epochs (what evaluation and the bf16-vs-fp32 accuracy
        comparison read), and a mixed run would be neither. Resuming needs no flag."""
        if self.precision is not None:
            return self.precision
        for run in (self.run_dir(), *([Path(self.finetune_from)] if self.finetune_from else [])):
            if (run / runs.CHECKPOINT).is_file():
                try:
                    return runs.load_run_config(run).get("precision") or self.RESULT_DEFAULTS["precision"]
                except runs.RunError:
                    pass  # a damaged run: open_run (or the fine-tune check) names it; precision is not what is wrong
        return default_precision(device)

    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / f"strategy{self.strategy}-seed{self.seed}"

    # Options that change the result: a resumed run must agree on all of them. The data are compared by
    # their checksum (config.json's dataset.checksum), not by the --data string: moved data resume, changed don't.
    RESULT_KEYS = ("strategy", "epochs", "train_subset", "seed", "transform", "batch_size", "lr_step_epochs", "iqa",
                   "finetune_from", "precision")
    # what a run written before the key existed used (precision: the old ``bf16`` flag, which config.json files
    # still carry, was CUDA-only and off by default; no run here used it)
    RESULT_DEFAULTS = {"iqa": "ssim", "finetune_from": None, "precision": "fp32"}



def default_precision(device: torch.device) -> str:
    """The measured default: "bf16" on a CPU with native bf16 (its training step 1.6-1.8x float32's on 2 cores,
    docs/speed.md), "fp32" on CUDA (not measured there yet) and on other CPUs."""
    return "bf16" if torch.device(device).type == "cpu" and native_bf16() else "fp32"


def make_optimizer(model: PaperCNN, lr: float, weight_decay: float) -> torch.optim.SGD:
    decayed = {id(p) for p in model.decayed_parameters()}
    return torch.optim.SGD(
        [
            {"params": [p for p in model.parameters() if id(p) in decayed], "weight_decay": weight_decay},
            {"params": [p for p in model.parameters() if id(p) not in decayed], "weight_decay": 0.0},
        ],
        lr=lr,
    )


def make_forward(net: torch.nn.Module, loss_fn, cfg: TrainConfig, device: torch.device):
    """``forward(x_u8, labels, on_true) -> (loss, number correct)``: standardise, CNN, Eq. 1 loss.
    What ``torch.compile`` compiles (one graph: tests/test_train.py checks that nothing breaks it).
    The CNN runs under autocast to ``cfg.amp_dtype(device)``: with bf16 the convolutions and linear layers take
    bf16 copies of the float32 weights (whose gradients stay float32) and return bf16, so ReLU, max-pool and the
    LRN run in bf16 too (the C++ LRN reads and writes bf16, computing in float32); the standardisation before and
    the loss on ``logits.float()`` after are float32. (tests/test_precision.py checks each of these dtypes.)"""
    amp = cfg.amp_dtype(device)
    fmt = torch.channels_last if cfg.speed(device)[1] else torch.contiguous_format

    def forward(x_u8, labels, on_true):
        x = standardize(x_u8).contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = net(x)
        loss = loss_fn(logits.float(), labels, on_true)
        return loss, (logits.argmax(1) == labels).sum()

    return forward


def make_step(model: PaperCNN, opt: torch.optim.Optimizer, loss_fn, cfg: TrainConfig, device: torch.device,
              w: World):
    """One SGD step on a batch of uint8 images: forward (make_forward), backward, update.

    Returns ``step(x_u8, labels, on_true) -> (loss, number correct)``, both detached, built by
    ``step_graph.training_step`` on the path ``cfg`` asks for. With compilation (``cfg.speed``) the forward and
    loss are one ``torch.compile`` graph (AOTAutograd compiles the backward too; the fused loss and the LRN
    kernels are custom ops inside it, not graph breaks). With the whole-step graph (``cfg.graph``, on by default
    on CUDA) forward, backward and the SGD update are one CUDA graph (on CPU the same function, eagerly);
    otherwise ``opt.step()`` after the backward, on CUDA the compiled graph replayed as a CUDA graph.
    """
    net = model
    if w.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return step_graph.training_step(make_forward(net, loss_fn, cfg, device), opt, cfg, device, w.size)


def train(cfg: TrainConfig, *, resume: bool = False, dataset: Dataset | None = None, progress: bool = True,
          stop_after: int | None = None) -> Path:
    """Train ``cfg.strategy``; return the run directory. ``stop_after`` ends early after that many
    epochs (as an interruption would), leaving a resumable checkpoint. Under torchrun, every rank
    calls this (see distributed.py); rank 0 alone touches the run directory, holding its lock
    (``runs.lock``) from before it is opened until the last epoch is saved. Everything that can be
    checked (options, device, backend, data) is checked before the directory is made."""
    return train_runs([cfg], SingleTrainer, resume=resume, dataset=dataset, progress=progress,
                      stop_after=stop_after)[0]


class SingleTrainer:
    """One run's network, optimizer and step, as :func:`train_runs` asks of a trainer (``fleet.FleetTrainer`` is
    the other): ``models``/``opts`` per run (what the run directories restore), ``make_step(loss_fn)``,
    ``set_lr``, ``train()``, ``batches(epoch)`` (the step inputs from the runs' ``EpochBatches``) and ``runs()``
    (each run's model and optimizer with the weights now, to check and save)."""

    def __init__(self, cfgs: list[TrainConfig], datasets: list[Dataset], protocol, device: torch.device, w: World):
        (self.cfg,), (ds,) = cfgs, datasets
        model = PaperCNN(ds.num_classes, ds.train_x.shape[1], seed=self.cfg.seed)
        self.model = (model.to(memory_format=torch.channels_last) if self.cfg.speed(device)[1] else model).to(device)
        self.opt = make_optimizer(self.model, protocol.lr, protocol.weight_decay)
        self.models, self.opts, self.device, self.w = [self.model], [self.opt], device, w
        self.name = f"strategy {self.cfg.strategy}"

    def make_step(self, loss_fn):
        return make_step(self.model, self.opt, loss_fn, self.cfg, self.device, self.w)

    def set_lr(self, lr: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr

    def train(self) -> None:
        self.model.train()

    def batches(self, epoch: list[EpochBatches]) -> EpochBatches:
        return epoch[0]

    def runs(self) -> list[tuple[PaperCNN, torch.optim.Optimizer]]:
        return [(self.model, self.opt)]


def train_runs(cfgs: list[TrainConfig], trainer, *, resume: bool, dataset: Dataset | None, progress: bool,
               stop_after: int | None) -> list[Path]:
    """The training loop of one run (``train``) and of a fleet (``fleet.train_fleet``): ``trainer(cfgs, datasets,
    protocol, device, world)`` holds the network(s) (:class:`SingleTrainer`'s interface); every run has its own
    data, lock, run directory, history and checkpoint. Per epoch: each run's plan and batches, the trainer's
    steps, each run's metrics row (and learning-curve point), the finiteness check and the checkpoints."""
    keep_freed_memory()  # the step's buffers reused, not mapped and faulted in again each step (iqals_fast/_alloc.py)
    for c in cfgs:
        c.validate()
        if isinstance(c.curve_every, bool) or not isinstance(c.curve_every, int) or c.curve_every < 0:
            raise ValueError(f"--curve-every must be an integer >= 0 (0: no curve), got {c.curve_every!r}")
    cfg, protocol, w = cfgs[0], cfgs[0].protocol(), world()
    base = dataset if dataset is not None else load(cfg.data)
    subsets: dict[int, Dataset] = {}
    for c in cfgs:
        if c.seed not in subsets:
            subsets[c.seed] = base.subset(c.train_subset, c.seed)
    dss = [subsets[c.seed] for c in cfgs]
    if (last := len(dss[0].train_y) % cfg.batch_size) % w.size:
        # a rank with an empty (or smaller) share of the last batch would average NaN (or unequal means) into DDP
        raise ValueError(f"the last batch holds {last} of the {len(dss[0].train_y)} training images, which {w.size} "
                         f"processes cannot split evenly: choose --train-subset or --batch-size so that it can")
    device = distributed.setup(w, torch.device(cfg.device))
    net = trainer(cfgs, dss, protocol, device, w)
    _, loss_fn = dispatch.resolve("soft_label_mse", cfg.backend, device)  # once: no host syncs per step
    caches: dict[tuple[int, str], object] = {}
    for c, ds in zip(cfgs, dss):  # one distortion cache per image set and IQA measure, shared by the runs
        if (id(ds), c.iqa) not in caches:
            caches[id(ds), c.iqa] = training_cache(ds.train_x, device, c.backend, c.iqa)
    with contextlib.ExitStack() as locks:  # every run's lock, held from before its directory is opened to the end
        opened = []
        for c, ds, model, opt in zip(cfgs, dss, net.models, net.opts):
            held = locks.enter_context(runs.lock(c.run_dir(), w))
            opened.append(runs.open_run(c.run_dir(), c, runs.describe(get_strategy(c.strategy), protocol, ds, c.data),
                                        model, opt, resume=resume, world=w))
            if held is not None:
                held.new_run = not resume
        start, histories = _common_start(cfgs, [e for e, _ in opened]), [h for _, h in opened]
        step = net.make_step(loss_fn)
        n, end = len(dss[0].train_y), protocol.epochs if stop_after is None else min(protocol.epochs, start + stop_after)
        try:
            with _Progress(net.name, cfg.batch_size * len(cfgs), (protocol.epochs - start) * -(-n // cfg.batch_size),
                           progress and w.main) as bar:
                for epoch in range(start, end):
                    rows = _train_epoch(net, step, cfgs, dss, [caches[id(ds), c.iqa] for c, ds in zip(cfgs, dss)],
                                        protocol, epoch, device, w, bar)
                    for history, row in zip(histories, rows):
                        history.append(row)
                    _end_epoch(net, cfgs, dss, histories, protocol, device, w)
        except KeyboardInterrupt:
            if w.main:
                for c, history in zip(cfgs, histories):
                    print(f"\ninterrupted: {len(history)} of {protocol.epochs} epochs are saved in {c.run_dir()}"
                          + ("; continue with --resume" if history else " (nothing to resume: a new run is removed)"))
            raise
    return [c.run_dir() for c in cfgs]


def _common_start(cfgs: list[TrainConfig], starts: list[int]) -> int:
    """The epoch every run resumes from; runs trained together must all be at the same one (a RunError naming them)."""
    if len(set(starts)) > 1:
        raise runs.RunError("the runs of a fleet resume together, but their checkpoints are at different epochs: "
                            + ", ".join(f"{c.run_dir()} at epoch {s}" for c, s in zip(cfgs, starts))
                            + "; resume them separately (or in fleets of equal epochs)")
    return starts[0]


def _train_epoch(net, step, cfgs, dss, caches, protocol, epoch: int, device, w: World, bar) -> list[dict]:
    """One epoch of every run: its plan and batches (``epoch_batches``), the steps, and each run's metrics row."""
    t0, lr = time.perf_counter(), protocol.lr_at(epoch)
    net.set_lr(lr)
    epochs = [epoch_batches(cache, ds, get_strategy(c.strategy), seed=c.seed, epoch=epoch, batch_size=c.batch_size,
                            transform=c.transform, mixture=protocol.mixture, rank=w.rank, size=w.size, device=device)
              for c, ds, cache in zip(cfgs, dss, caches)]
    t_data = time.perf_counter() - t0
    net.train()
    loss_sum = torch.zeros(len(cfgs), device=device)
    correct = torch.zeros(len(cfgs), device=device, dtype=torch.int64)
    for b, (images, labels, targets) in enumerate(net.batches(epochs)):
        loss, c = step(images, labels, targets)  # per run (K), or one run's scalars
        loss_sum += loss * labels.shape[-1]
        correct += c
        bar.step(epoch, b, len(epochs[0]), loss)
    totals = [distributed.all_reduce_sum(torch.cat([loss_sum[i, None].double(), correct[i, None].double(),
                                                    batches.quality_sums()]), w) for i, batches in enumerate(epochs)]
    dt, n = time.perf_counter() - t0, len(dss[0].train_y)
    return [{"epoch": epoch + 1, "lr": lr, "loss": float(t[0]) / n, "train_acc": float(t[1]) / n, "seconds": dt,
             "data_seconds": t_data, "images_per_s": n / dt, "mean_ssim": mean_quality(t[2:])} for t in totals]


def _end_epoch(net, cfgs, dss, histories, protocol, device, w: World) -> None:
    """After an epoch: each run's learning-curve point (``curve_every``), the finiteness check, the checkpoint. A run
    that diverged stops the training (RunError); the other runs of a fleet keep this epoch's checkpoint."""
    epoch, failed = histories[0][-1]["epoch"], []
    for c, ds, history, (model, opt) in zip(cfgs, dss, histories, net.runs()):
        if w.main and c.curve_every and (epoch % c.curve_every == 0 or epoch == protocol.epochs):
            history[-1].update(learning_curve(model, ds, device))
        try:
            _check_finite(history, model, c.run_dir())  # per epoch, before the save: never a NaN checkpoint
        except runs.RunError as e:
            failed.append(str(e))
            continue
        if w.main:
            runs.save(c.run_dir(), model, opt, history, c)
    if failed and len(cfgs) == 1:
        raise runs.RunError(failed[0])
    if failed:
        raise runs.RunError(f"{len(failed)} of the fleet's {len(cfgs)} runs diverged: " + "; ".join(failed)
                            + f". The other runs saved epoch {epoch}: resume them without the diverged ones")


CURVE_PROBE = 10_000
"""Training images (at most) on which the learning curve measures confidence and accuracy."""


def learning_curve(model: PaperCNN, ds: Dataset, device) -> dict:
    """The learning curve's point now (issue 17; ``curve_every``): ``test_acc`` on the pristine test set, and in eval
    mode on a fixed probe of up to ``CURVE_PROBE`` pristine training images (``default_rng(0).choice``, as
    research/medium_protocol_run.py drew it) the mean softmax of the true class ``train_conf_true`` and the accuracy
    ``train_acc_probe``; ``curve_seconds`` what it took."""
    t = time.perf_counter()
    n = len(ds.train_y)
    probe = np.random.default_rng(0).choice(n, min(n, CURVE_PROBE), replace=False)
    model.eval()
    p_test = predict(model, ds.test_x, device)
    p_train = predict(model, ds.train_x[probe], device)
    model.train()
    y = ds.train_y[probe]
    return {"test_acc": float((p_test.argmax(1) == ds.test_y).mean()),
            "train_conf_true": float(p_train[np.arange(len(probe)), y].mean()),
            "train_acc_probe": float((p_train.argmax(1) == y).mean()), "curve_seconds": time.perf_counter() - t}


def _check_finite(history: list[dict], model: torch.nn.Module, run: Path) -> None:
    """Stop the run (RunError) when the epoch just trained left a non-finite loss or weights: before its
    checkpoint, so the last one saved stays the last good one. One host sync for all the weights; every
    rank sees the same all-reduced loss and the same weights, so every rank stops."""
    row = history[-1]
    finite_loss = math.isfinite(row["loss"])
    if finite_loss and bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):
        return
    history.pop()
    what = f"the loss is {row['loss']}" if not finite_loss else "the weights hold non-finite values"
    kept = (f"{run / runs.CHECKPOINT} keeps epoch {history[-1]['epoch']}, the last good one" if history
            else "no epoch was saved")
    raise runs.RunError(f"epoch {row['epoch']}: {what}: training stopped (diverged); {kept}")


class _Progress:
    """The training bar: one tick a step; the loss and images/s shown at an epoch's first and last step
    and twice a second between (``float(loss)`` waits for the device)."""

    def __init__(self, desc: str, batch_size: int, total: int, enabled: bool):
        self.bar = tqdm(total=total, desc=desc, unit="batch", disable=not enabled, dynamic_ncols=True)
        self.batch_size, self.shown = batch_size, 0.0  # images a step (all the runs of a fleet)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def step(self, epoch: int, b: int, steps: int, loss: torch.Tensor) -> None:
        bar = self.bar
        bar.update(1)
        if b == 0:
            self.shown = 0.0
        if not bar.disable and (time.perf_counter() - self.shown > 0.5 or b == steps - 1):
            self.shown = time.perf_counter()
            el = bar.format_dict["elapsed"] or 1e-9
            bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.mean()):.4f}",  # a fleet's: the runs' mean
                            img_s=f"{bar.n * self.batch_size / el:.0f}")
