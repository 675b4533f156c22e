"""Training one strategy of Table 2, top to bottom.

    data -> epoch plan (60/15/15/10, drawn from (seed, epoch)) -> distort + SSIM -> soft labels
         -> PaperCNN -> soft-label MSE (Eq. 1) -> SGD (+ L2 on fc1, fc2) -> atomic checkpoint

Everything random derives from ``--seed`` and the epoch number (the model's initialisation, each
epoch's mixture, its noise and its batch order), so a run interrupted and resumed with
``--resume`` ends with the same weights as an uninterrupted one (on the same CPU).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .config import KINDS, PAPER, get_strategy
from .data.mixture import DistortionCache, epoch_data, epoch_plan
from .data.sources import Dataset, atomic_write_bytes, load
from .distributed import World, world
from .model import PaperCNN, standardize
from .ops import dispatch
from .ops.iqa import check_measure
from .ops.labels import apply_transform, parse_transform

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"


class RunError(ValueError):
    """A run directory or its options cannot be used as asked."""


def check_device(device) -> torch.device:
    """``device`` as a torch.device, or a ValueError naming it when this machine cannot allocate on it
    (no CUDA build, no GPU, a bad index or name): the one check train, eval and bench share."""
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as e:
        raise ValueError(f"--device {str(device)!r} is not usable here: {e}") from None
    return dev


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
        check_device(self.device)

    def protocol(self):
        return PAPER.scaled(self.epochs, self.train_subset, self.lr_step_epochs)

    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / f"strategy{self.strategy}-seed{self.seed}"

    # Options that change the result: a resumed run must agree on all of them.
    RESULT_KEYS = ("strategy", "data", "epochs", "train_subset", "seed", "transform", "batch_size", "lr_step_epochs",
                   "iqa")
    RESULT_DEFAULTS = {"iqa": "ssim"}  # what a run written before the key existed used


def _save_json(path: Path, obj) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def _save_checkpoint(path: Path, state: dict) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def make_optimizer(model: PaperCNN, lr: float, weight_decay: float) -> torch.optim.SGD:
    decayed = {id(p) for p in model.decayed_parameters()}
    return torch.optim.SGD(
        [
            {"params": [p for p in model.parameters() if id(p) in decayed], "weight_decay": weight_decay},
            {"params": [p for p in model.parameters() if id(p) not in decayed], "weight_decay": 0.0},
        ],
        lr=lr,
    )


def load_run_config(run: Path) -> dict:
    p = Path(run) / CONFIG
    if not p.is_file():
        raise RunError(f"{run} is not a training run (no {CONFIG})")
    return json.loads(p.read_text())


def make_cache(images: np.ndarray, cfg: TrainConfig, device: torch.device) -> DistortionCache:
    """The per-dataset distortion cache. On CUDA the images, the cached blur/JPEG copies and each
    epoch's noise (the Triton kernel) stay on the GPU: no host round trip per epoch. (JPEG copies come
    from the dispatched JPEG: DALI's CPU operator where installed, else PIL; the same bytes.)"""
    on = torch.from_numpy(images).to(device) if device.type == "cuda" else images
    return DistortionCache(on, backend=cfg.backend, iqa=cfg.iqa)


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
    calls this (see distributed.py); rank 0 alone touches the run directory."""
    cfg.validate()
    strategy = get_strategy(cfg.strategy)
    protocol = cfg.protocol()
    run = cfg.run_dir()
    ckpt_path = run / CHECKPOINT
    w = world()
    if cfg.batch_size % w.size:
        raise ValueError(f"--batch-size {cfg.batch_size} must be a multiple of the number of processes ({w.size}): "
                         "each step's batch is split evenly between them")
    device = distributed.setup(w, torch.device(cfg.device))

    ds = (dataset if dataset is not None else load(cfg.data)).subset(cfg.train_subset, cfg.seed)
    model = PaperCNN(ds.num_classes, ds.train_x.shape[1], seed=cfg.seed)
    if cfg.speed(device)[1]:
        model = model.to(memory_format=torch.channels_last)
    model = model.to(device)
    opt = make_optimizer(model, protocol.lr, protocol.weight_decay)

    # Rank 0 checks and reads the run directory; the others get its verdict and state.
    state, error = None, None
    if w.main:
        try:
            state = _open_run(cfg, run, ckpt_path, resume, ds, strategy, protocol)
        except RunError as e:
            error = str(e)
    state, error = distributed.broadcast((state, error), w)
    if error:
        raise RunError(error)
    start, history = 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = state["epoch"], state["history"]

    # Checked once here, not every step: the dispatched loss itself runs on device without host syncs.
    _, loss_fn = dispatch.resolve("soft_label_mse", cfg.backend, device)
    cache = make_cache(ds.train_x, cfg, device)
    n = len(ds.train_y)
    local_batch = cfg.batch_size // w.size
    steps = -(-n // cfg.batch_size)
    step = make_step(model, opt, loss_fn, cfg, device, w)
    end = protocol.epochs if stop_after is None else min(protocol.epochs, start + stop_after)
    bar = tqdm(total=(protocol.epochs - start) * steps, desc=f"strategy {cfg.strategy}", unit="batch",
               disable=not (progress and w.main), dynamic_ncols=True)
    try:
        for epoch in range(start, end):
            t0 = time.perf_counter()
            lr = protocol.lr_at(epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            plan = epoch_plan(n, strategy.kinds, cfg.seed, epoch, protocol.mixture)
            order = np.random.default_rng(np.random.SeedSequence([cfg.seed, epoch, 2])).permutation(n)
            # Step b's batch is order[b*B:(b+1)*B]; this rank takes every size-th image of it, i.e.
            # positions p of the order with p % size == rank (B is a multiple of size).
            mine = order[w.rank::w.size]
            x, s = epoch_data(cache, plan, mine)  # numpy, or tensors on the device (DALI on a GPU)
            s_np = np.asarray(s.cpu() if isinstance(s, torch.Tensor) else s)  # N floats, once per epoch
            _check_scores(s_np, epoch)
            x = torch.as_tensor(x, device=device)
            labels = torch.from_numpy(ds.train_y[mine]).to(device)
            scores = torch.as_tensor(s, device=device) if strategy.iqa_ls else torch.ones(len(mine), device=device)
            on_true = apply_transform(scores, cfg.transform, ds.num_classes)
            t_data = time.perf_counter() - t0
            model.train()
            shown = 0.0
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            for b in range(steps):
                sl = slice(b * local_batch, (b + 1) * local_batch)
                loss, c = step(x[sl], labels[sl], on_true[sl])
                loss_sum += loss * len(labels[sl])
                correct += c
                bar.update(1)
                if not bar.disable and (time.perf_counter() - shown > 0.5 or b == steps - 1):
                    # float(loss) waits for the device: twice a second, not every few steps
                    shown = time.perf_counter()
                    el = bar.format_dict["elapsed"] or 1e-9
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss):.4f}",
                                    img_s=f"{bar.n * cfg.batch_size / el:.0f}")
            sums = _ssim_sums(s_np, plan, mine, device)
            totals = distributed.all_reduce_sum(torch.cat([loss_sum[None].double(), correct[None].double(), sums]), w)
            dt = time.perf_counter() - t0
            rec = {"epoch": epoch + 1, "lr": lr, "loss": float(totals[0]) / n, "train_acc": float(totals[1]) / n,
                   "seconds": dt, "data_seconds": t_data, "images_per_s": n / dt,
                   "mean_ssim": {f"{k}{lvl}": float(totals[2 + 2 * j] / totals[3 + 2 * j])
                                 for j, (k, lvl) in enumerate(_KIND_LEVELS) if totals[3 + 2 * j] > 0}}
            history.append(rec)
            if w.main:
                _save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                             "epoch": epoch + 1, "history": history, "config": asdict(cfg)})
                atomic_write_bytes(run / METRICS,
                                   lambda f: f.write("".join(json.dumps(r) + "\n" for r in history).encode()))
    except KeyboardInterrupt:
        bar.close()
        done = history[-1]["epoch"] if history else 0
        if w.main:
            print(f"\ninterrupted: {done} of {protocol.epochs} epochs are saved in {run}; continue with --resume")
        raise
    bar.close()
    return run


_KIND_LEVELS = tuple((k, lvl) for k in KINDS for lvl in (1, 2, 3))


def _ssim_sums(s_np: np.ndarray, plan, mine: np.ndarray, device) -> torch.Tensor:
    """(sum of scores, count) per (kind, level) over this rank's images, float64, for all_reduce."""
    kind, level = plan.kind[mine], plan.level[mine]
    out = []
    for i, _ in enumerate(KINDS):
        for lvl in (1, 2, 3):
            sel = (kind == i) & (level == lvl)
            out += [float(s_np[sel].astype(np.float64).sum()), float(sel.sum())]
    return torch.tensor(out, dtype=torch.float64, device=device)


def _check_scores(s: np.ndarray, epoch: int) -> None:
    bad = ~((s >= 0) & (s <= 1))  # NaN too
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise RuntimeError(f"epoch {epoch + 1}: a quality score outside [0, 1] ({s[i]!r}); the scoring backend is wrong")


def _open_run(cfg: TrainConfig, run: Path, ckpt_path: Path, resume: bool, ds: Dataset, strategy, protocol):
    """Check the run directory against --resume; return the checkpoint's state to resume from, or None
    after writing a new run's config.json."""
    if ckpt_path.exists() and not resume:
        raise RunError(f"{run} already holds a run: pass --resume to continue it, or choose another --out")
    if resume and not ckpt_path.exists():
        raise RunError(f"--resume: no checkpoint in {run}")
    if resume:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        old = {**TrainConfig.RESULT_DEFAULTS, **state["config"]}
        diff = {k: (old.get(k), getattr(cfg, k)) for k in TrainConfig.RESULT_KEYS if old.get(k) != getattr(cfg, k)}
        if diff:
            raise RunError(f"--resume: options differ from the run in {run}: " +
                           ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in diff.items()))
        return state
    run.mkdir(parents=True, exist_ok=True)
    _save_json(run / CONFIG, {**asdict(cfg), "strategy_name": strategy.name, "protocol": asdict(protocol),
                              "dataset": {"source": ds.source, "checksum": ds.checksum,
                                          "classes": list(ds.classes), "n_train": int(len(ds.train_y)),
                                          "image_size": int(ds.train_x.shape[1])},
                              "versions": versions()})
    return None


def load_model(run: Path, device: str | torch.device = "cpu") -> tuple[PaperCNN, dict]:
    cfg = load_run_config(run)
    ckpt = Path(run) / CHECKPOINT
    if not ckpt.is_file():
        raise RunError(f"{run}: no {CHECKPOINT}; train it first")
    state = torch.load(ckpt, map_location=device, weights_only=False)
    ds = cfg["dataset"]
    model = PaperCNN(len(ds["classes"]), ds.get("image_size", 32), seed=cfg["seed"])
    model.load_state_dict(state["model"])
    if state["epoch"] < cfg["epochs"]:
        print(f"warning: {run} is unfinished ({state['epoch']} of {cfg['epochs']} epochs)")
    return model.to(device).eval(), cfg


def versions() -> dict:
    import platform

    import numpy
    import PIL

    from . import __version__

    return {"iqals_fast": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "pillow": PIL.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "processor": _cpu_name()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()
