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

from .config import KINDS, PAPER, get_strategy
from .data.mixture import DistortionCache, epoch_data, epoch_plan
from .data.sources import Dataset, atomic_write_bytes, load
from .model import PaperCNN, standardize
from .ops.labels import parse_transform, soft_label_mse

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"


class RunError(ValueError):
    """A run directory or its options cannot be used as asked."""


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

    def validate(self) -> None:
        get_strategy(self.strategy)
        parse_transform(self.transform)
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"--seed must lie in [0, 2**32), got {self.seed}")
        self.protocol()
        try:
            torch.empty(0, device=self.device)
        except (RuntimeError, AssertionError) as e:
            raise ValueError(f"--device {self.device!r} is not usable here: {e}") from None

    def protocol(self):
        return PAPER.scaled(self.epochs, self.train_subset, self.lr_step_epochs)

    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / f"strategy{self.strategy}-seed{self.seed}"

    # Options that change the result: a resumed run must agree on all of them.
    RESULT_KEYS = ("strategy", "data", "epochs", "train_subset", "seed", "transform", "batch_size", "lr_step_epochs")


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


def train(cfg: TrainConfig, *, resume: bool = False, dataset: Dataset | None = None, progress: bool = True,
          stop_after: int | None = None) -> Path:
    """Train ``cfg.strategy``; return the run directory. ``stop_after`` ends early after that many
    epochs (as an interruption would), leaving a resumable checkpoint."""
    cfg.validate()
    strategy = get_strategy(cfg.strategy)
    protocol = cfg.protocol()
    run = cfg.run_dir()
    ckpt_path = run / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise RunError(f"{run} already holds a run: pass --resume to continue it, or choose another --out")
    if resume and not ckpt_path.exists():
        raise RunError(f"--resume: no checkpoint in {run}")
    device = torch.device(cfg.device)

    ds = (dataset if dataset is not None else load(cfg.data)).subset(cfg.train_subset, cfg.seed)
    model = PaperCNN(ds.num_classes, ds.train_x.shape[1], seed=cfg.seed).to(device)
    opt = make_optimizer(model, protocol.lr, protocol.weight_decay)
    start, history = 0, []
    if resume:
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        old = state["config"]
        diff = {k: (old.get(k), getattr(cfg, k)) for k in TrainConfig.RESULT_KEYS if old.get(k) != getattr(cfg, k)}
        if diff:
            raise RunError(f"--resume: options differ from the run in {run}: " +
                           ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in diff.items()))
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = state["epoch"], state["history"]
    else:
        run.mkdir(parents=True, exist_ok=True)
        _save_json(run / CONFIG, {**asdict(cfg), "strategy_name": strategy.name, "protocol": asdict(protocol),
                                  "dataset": {"source": ds.source, "checksum": ds.checksum,
                                              "classes": list(ds.classes), "n_train": int(len(ds.train_y)),
                                              "image_size": int(ds.train_x.shape[1])},
                                  "versions": versions()})

    cache = DistortionCache(ds.train_x, backend=cfg.backend)
    labels = torch.from_numpy(ds.train_y).to(device)
    n = len(ds.train_y)
    steps = -(-n // cfg.batch_size)
    end = protocol.epochs if stop_after is None else min(protocol.epochs, start + stop_after)
    bar = tqdm(total=(protocol.epochs - start) * steps, desc=f"strategy {cfg.strategy}", unit="batch",
               disable=not progress, dynamic_ncols=True)
    try:
        for epoch in range(start, end):
            t0 = time.perf_counter()
            lr = protocol.lr_at(epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            plan = epoch_plan(n, strategy.kinds, cfg.seed, epoch, protocol.mixture)
            x_np, s_np = epoch_data(cache, plan)
            t_data = time.perf_counter() - t0
            x = torch.from_numpy(x_np).to(device)
            scores = torch.from_numpy(s_np if strategy.iqa_ls else np.ones_like(s_np)).to(device)
            order = torch.from_numpy(np.random.default_rng(np.random.SeedSequence([cfg.seed, epoch, 2])).permutation(n))
            model.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            for b in range(steps):
                idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size].to(device)
                logits = model(standardize(x[idx]))
                loss = soft_label_mse(logits, labels[idx], scores[idx], cfg.transform, backend=cfg.backend)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach() * len(idx)
                correct += (logits.argmax(1) == labels[idx]).sum()
                bar.update(1)
                if b % 10 == 0 or b == steps - 1:
                    el = bar.format_dict["elapsed"] or 1e-9
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.4f}",
                                    img_s=f"{bar.n * cfg.batch_size / el:.0f}")
            dt = time.perf_counter() - t0
            rec = {"epoch": epoch + 1, "lr": lr, "loss": float(loss_sum) / n, "train_acc": float(correct) / n,
                   "seconds": dt, "data_seconds": t_data, "images_per_s": n / dt,
                   "mean_ssim": {f"{k}{lvl}": float(s_np[(plan.kind == i) & (plan.level == lvl)].mean())
                                 for i, k in enumerate(KINDS) for lvl in (1, 2, 3)
                                 if ((plan.kind == i) & (plan.level == lvl)).any()}}
            history.append(rec)
            _save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                         "epoch": epoch + 1, "history": history, "config": asdict(cfg)})
            atomic_write_bytes(run / METRICS, lambda f: f.write("".join(json.dumps(r) + "\n" for r in history).encode()))
    except KeyboardInterrupt:
        bar.close()
        done = history[-1]["epoch"] if history else 0
        print(f"\ninterrupted: {done} of {protocol.epochs} epochs are saved in {run}; continue with --resume")
        raise
    bar.close()
    return run


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
