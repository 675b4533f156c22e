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

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed, runs
from .config import PAPER, get_strategy
from .data.mixture import epoch_batches, mean_quality, training_cache
from .data.sources import Dataset, load
from .distributed import World, world
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
    iqa: str = "ssim"  # the IQA measure behind IQA-LS's scores: ssim | ms-ssim-small | gmsd | psnr (ops/iqa.py)
    # How fast, not what: these change float rounding at most, so a run may be resumed with others.
    # None = the measured default for the device (``speed``; bench/results/train-*.md has the numbers).
    compile: bool | None = None  # torch.compile the step (CUDA graphs on GPU)
    channels_last: bool | None = None
    bf16: bool = False  # bf16 autocast of the CNN on CUDA (the loss stays float32)

    def speed(self, device: torch.device) -> tuple[bool, bool]:
        """(compile, channels_last) for ``device``. On CPU: eager and channels_last. With the C++ LRN the
        eager step is faster than the compiled one (inductor's generated max-pool and ReLU backward
        loops cost more than the fusions save), and channels_last makes PyTorch's max-pool about 5x
        faster. On CUDA: compiled with CUDA graphs (a batch of 100 is launch-bound), NCHW."""
        cuda = torch.device(device).type == "cuda"
        return (cuda if self.compile is None else self.compile,
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
        dev = check_device(self.device)
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

    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / f"strategy{self.strategy}-seed{self.seed}"

    # Options that change the result: a resumed run must agree on all of them. The data are compared by
    # their checksum (config.json's dataset.checksum), not by the --data string: moved data resume, changed don't.
    RESULT_KEYS = ("strategy", "epochs", "train_subset", "seed", "transform", "batch_size", "lr_step_epochs", "iqa")
    RESULT_DEFAULTS = {"iqa": "ssim"}  # what a run written before the key existed used


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
    What ``torch.compile`` compiles (one graph: tests/test_train.py checks that nothing breaks it)."""
    bf16 = cfg.bf16 and device.type == "cuda"
    fmt = torch.channels_last if cfg.speed(device)[1] else torch.contiguous_format

    def forward(x_u8, labels, on_true):
        x = standardize(x_u8).contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = net(x)
        loss = loss_fn(logits.float(), labels, on_true)
        return loss, (logits.argmax(1) == labels).sum()

    return forward


def make_step(model: PaperCNN, opt: torch.optim.Optimizer, loss_fn, cfg: TrainConfig, device: torch.device,
              w: World):
    """One SGD step on a batch of uint8 images: forward (make_forward), backward, update.

    Returns ``step(x_u8, labels, on_true) -> (loss, number correct)``, both detached. With
    compilation (``cfg.speed``) the forward and loss are one ``torch.compile`` graph (AOTAutograd compiles the
    backward too; the fused loss and the LRN kernels are custom ops inside it, not graph breaks); on
    CUDA the graph is replayed as a CUDA graph ("reduce-overhead"), since a batch of 100 is launch-bound.
    """
    net = model
    if w.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = make_forward(net, loss_fn, cfg, device)
    compiled = cfg.speed(device)[0]
    cudagraphs = compiled and device.type == "cuda"
    if compiled:
        forward = torch.compile(forward, mode="reduce-overhead" if cudagraphs else None, dynamic=False)

    def step(x_u8, labels, on_true):
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss, correct = forward(x_u8, labels, on_true)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach().clone(), correct.clone()

    return step


def train(cfg: TrainConfig, *, resume: bool = False, dataset: Dataset | None = None, progress: bool = True,
          stop_after: int | None = None) -> Path:
    """Train ``cfg.strategy``; return the run directory. ``stop_after`` ends early after that many
    epochs (as an interruption would), leaving a resumable checkpoint. Under torchrun, every rank
    calls this (see distributed.py); rank 0 alone touches the run directory, holding its lock
    (``runs.lock``) from before it is opened until the last epoch is saved. Everything that can be
    checked (options, device, backend, data) is checked before the directory is made."""
    cfg.validate()
    strategy, protocol, run, w = get_strategy(cfg.strategy), cfg.protocol(), cfg.run_dir(), world()
    ds = (dataset if dataset is not None else load(cfg.data)).subset(cfg.train_subset, cfg.seed)
    if (last := len(ds.train_y) % cfg.batch_size) % w.size:
        # a rank with an empty (or smaller) share of the last batch would average NaN (or unequal means) into DDP
        raise ValueError(f"the last batch holds {last} of the {len(ds.train_y)} training images, which {w.size} "
                         f"processes cannot split evenly: choose --train-subset or --batch-size so that it can")
    device = distributed.setup(w, torch.device(cfg.device))
    model = PaperCNN(ds.num_classes, ds.train_x.shape[1], seed=cfg.seed)
    model = (model.to(memory_format=torch.channels_last) if cfg.speed(device)[1] else model).to(device)
    opt = make_optimizer(model, protocol.lr, protocol.weight_decay)
    _, loss_fn = dispatch.resolve("soft_label_mse", cfg.backend, device)  # once: no host syncs per step
    cache = training_cache(ds.train_x, device, cfg.backend, cfg.iqa)
    with runs.lock(run, w) as held:
        start, history = runs.open_run(run, cfg, runs.describe(strategy, protocol, ds, cfg.data), model, opt,
                                       resume=resume, world=w)
        if held is not None:
            held.new_run = not resume
        step = make_step(model, opt, loss_fn, cfg, device, w)
        n, end = len(ds.train_y), protocol.epochs if stop_after is None else min(protocol.epochs, start + stop_after)
        try:
            with _Progress(cfg, (protocol.epochs - start) * -(-n // cfg.batch_size), progress and w.main) as bar:
                for epoch in range(start, end):
                    t0, lr = time.perf_counter(), protocol.lr_at(epoch)
                    for g in opt.param_groups:
                        g["lr"] = lr
                    batches = epoch_batches(cache, ds, strategy, seed=cfg.seed, epoch=epoch, batch_size=cfg.batch_size,
                                            transform=cfg.transform, mixture=protocol.mixture, rank=w.rank,
                                            size=w.size, device=device)
                    t_data = time.perf_counter() - t0
                    model.train()
                    loss_sum = torch.zeros((), device=device)
                    correct = torch.zeros((), device=device, dtype=torch.int64)
                    for b, (images, labels, targets) in enumerate(batches):
                        loss, c = step(images, labels, targets)
                        loss_sum += loss * len(labels)
                        correct += c
                        bar.step(epoch, b, len(batches), loss)
                    totals = distributed.all_reduce_sum(
                        torch.cat([loss_sum[None].double(), correct[None].double(), batches.quality_sums()]), w)
                    dt = time.perf_counter() - t0
                    history.append({"epoch": epoch + 1, "lr": lr, "loss": float(totals[0]) / n,
                                    "train_acc": float(totals[1]) / n, "seconds": dt, "data_seconds": t_data,
                                    "images_per_s": n / dt, "mean_ssim": mean_quality(totals[2:])})
                    _check_finite(history, model, run)  # per epoch, before the save: never a NaN checkpoint
                    if w.main:
                        runs.save(run, model, opt, history, cfg)
        except KeyboardInterrupt:
            if w.main:
                print(f"\ninterrupted: {len(history)} of {protocol.epochs} epochs are saved in {run}"
                      + ("; continue with --resume" if history else " (nothing to resume: a new run is removed)"))
            raise
    return run


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

    def __init__(self, cfg: TrainConfig, total: int, enabled: bool):
        self.bar = tqdm(total=total, desc=f"strategy {cfg.strategy}", unit="batch", disable=not enabled,
                        dynamic_ncols=True)
        self.batch_size, self.shown = cfg.batch_size, 0.0

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
            bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss):.4f}", img_s=f"{bar.n * self.batch_size / el:.0f}")
