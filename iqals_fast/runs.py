"""The run directory: everything one training run leaves on disk, and how it is read back.

    RUN/config.json     the options, the strategy's name, the protocol, the dataset, the versions
    RUN/checkpoint.pt   model + optimizer state, epochs done, history, options (written atomically)
    RUN/metrics.jsonl   one line per epoch (loss, accuracy, seconds, mean quality per level)
    RUN/eval.json       what ``iqals-fast eval`` measured (evaluate.py owns its layout)

Every read of a checkpoint goes through :func:`load_checkpoint` (the one ``torch.load`` of the
package), every write through ``_io``'s atomic writes.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from pathlib import Path

import torch

from . import distributed
from ._io import atomic_write_bytes, save_json, save_text
from .data.sources import Dataset
from .distributed import World
from .model import PaperCNN

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
EVAL = "eval.json"


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


def load_run_config(run: Path) -> dict:
    p = Path(run) / CONFIG
    if not p.is_file():
        raise RunError(f"{run} is not a training run (no {CONFIG})")
    return json.loads(p.read_text())


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """A checkpoint's state dict. (``weights_only=False``: the history and options are plain Python
    objects; a checkpoint is trusted like code.)"""
    return torch.load(path, map_location=map_location, weights_only=False)


def save_checkpoint(run: Path, state: dict) -> None:
    atomic_write_bytes(Path(run) / CHECKPOINT, lambda f: torch.save(state, f))


def write_metrics(run: Path, history: list[dict]) -> None:
    """``metrics.jsonl``: the whole history, one JSON line per epoch (rewritten atomically each epoch)."""
    save_text(Path(run) / METRICS, "".join(json.dumps(r) + "\n" for r in history))


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / METRICS).read_text().splitlines()]


def finished(run: Path, epochs: int) -> bool:
    """True when ``run`` holds a checkpoint of at least ``epochs`` epochs."""
    ck = Path(run) / CHECKPOINT
    return ck.is_file() and load_checkpoint(ck)["epoch"] >= epochs


def describe(strategy, protocol, ds: Dataset) -> dict:
    """What config.json records beside the options: the strategy's name, the protocol, the training data."""
    return {"strategy_name": strategy.name, "protocol": asdict(protocol),
            "dataset": {"source": ds.source, "checksum": ds.checksum, "classes": list(ds.classes),
                        "n_train": int(len(ds.train_y)), "image_size": int(ds.train_x.shape[1])}}


def open_run(run: Path, cfg, description: dict, model: torch.nn.Module, opt: torch.optim.Optimizer, *, resume: bool,
             world: World) -> tuple[int, list[dict]]:
    """Open ``run`` for training with the options ``cfg`` (a TrainConfig): ``(epochs done, history)``.

    A new run: writes config.json (the options, ``description``, the versions) and returns ``(0, [])``.
    ``resume``: restores ``model`` and ``opt`` from the checkpoint and returns its epochs and history.
    Refuses (RunError) to overwrite a run without ``resume``, to resume without a checkpoint, and to
    resume with options that change the result (``cfg.RESULT_KEYS``; ``cfg.RESULT_DEFAULTS``: what a run
    written before a key existed used). Under torchrun rank 0 alone reads and writes the directory; every
    rank gets its verdict and state."""
    state, error = None, None
    if world.main:
        try:
            state = _open(Path(run), cfg, description, resume)
        except RunError as e:
            error = str(e)
    state, error = distributed.broadcast((state, error), world)
    if error:
        raise RunError(error)
    if state is None:
        return 0, []
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return state["epoch"], state["history"]


def _open(run: Path, cfg, description: dict, resume: bool) -> dict | None:
    ckpt_path = run / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise RunError(f"{run} already holds a run: pass --resume to continue it, or choose another --out")
    if resume and not ckpt_path.exists():
        raise RunError(f"--resume: no checkpoint in {run}")
    if resume:
        state = load_checkpoint(ckpt_path)
        old = {**cfg.RESULT_DEFAULTS, **state["config"]}
        diff = {k: (old.get(k), getattr(cfg, k)) for k in cfg.RESULT_KEYS if old.get(k) != getattr(cfg, k)}
        if diff:
            raise RunError(f"--resume: options differ from the run in {run}: " +
                           ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in diff.items()))
        return state
    run.mkdir(parents=True, exist_ok=True)
    save_json(run / CONFIG, {**asdict(cfg), **description, "versions": versions()})
    return None


def save(run: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, history: list[dict], cfg) -> None:
    """After an epoch: the checkpoint (model, optimizer, epochs done, history, options), then metrics.jsonl."""
    save_checkpoint(run, {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": history[-1]["epoch"],
                          "history": history, "config": asdict(cfg)})
    write_metrics(run, history)


def load_model(run: Path, device: str | torch.device = "cpu") -> tuple[PaperCNN, dict]:
    cfg = load_run_config(run)
    ckpt = Path(run) / CHECKPOINT
    if not ckpt.is_file():
        raise RunError(f"{run}: no {CHECKPOINT}; train it first")
    state = load_checkpoint(ckpt, map_location=device)
    ds = cfg["dataset"]
    model = PaperCNN(len(ds["classes"]), ds.get("image_size", 32), seed=cfg["seed"])
    model.load_state_dict(state["model"])
    if state["epoch"] < cfg["epochs"]:
        print(f"warning: {run} is unfinished ({state['epoch']} of {cfg['epochs']} epochs)")
    return model.to(device).eval(), cfg


def versions() -> dict:
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
    return platform.processor()
