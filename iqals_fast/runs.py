"""The run directory: everything one training run leaves on disk, and how it is read back.

    RUN/config.json     the options, the strategy's name, the protocol, the dataset, the versions
    RUN/checkpoint.pt   model + optimizer state, epochs done, history, options (written atomically)
    RUN/stage1.pt       the weights at the end of the first lr stage (epoch ``lr_step_epochs``), when the
                        protocol has a second stage: what a fine-tuned IQA-LS run starts from
    RUN/metrics.jsonl   one line per epoch (loss, accuracy, seconds, mean quality per level)
    RUN/eval.json       what ``iqals-fast eval`` measured (evaluate.py owns its layout)
    RUN/.lock           while a training process writes the run: its pid and host (:func:`lock`)

A fine-tuned run (``TrainConfig.finetune_from``: the same-seed 0-1 label counterpart of an IQA-LS
strategy, same protocol and data, checked by :func:`check_finetune_source`) is a run of its own: it
starts from the source's stage1.pt at epoch ``lr_step_epochs`` and holds the metrics and checkpoints
of the epochs after it only.

Every read of a checkpoint (and of stage1.pt) goes through :func:`load_checkpoint` (the one ``torch.load`` of the
package, ``weights_only=True``: a checkpoint holds tensors, numbers, strings, lists and dicts, so
loading one runs no code), every read of config.json through :func:`load_run_config`; both check
what they read and name the file in their error. Every write goes through ``_io``'s atomic writes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
import re
import socket
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from . import distributed
from ._io import atomic_write_bytes, save_json, save_text
from .config import STRATEGIES, STRATEGY_PAIRS, Protocol
from .data.sources import Dataset
from .distributed import World
from .model import PaperCNN

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
EVAL = "eval.json"
LOCK = ".lock"
STAGE1 = "stage1.pt"
CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "history", "config")
SNAPSHOT_KEYS = ("model", "epoch", "config")
"""What stage1.pt holds: the weights alone (plain SGD keeps no optimizer state), the epoch and the options."""
CONFIG_KEYS = {"strategy": int, "data": str, "epochs": int, "seed": int, "strategy_name": str, "dataset": dict}
"""What config.json must hold (and of which type) for a run to be resumed, evaluated or reported."""
NAMED_DATA = ("synthetic", "cifar10")
"""``--data`` values that name a dataset rather than a path (``data.sources.load``)."""


class RunError(ValueError):
    """A run directory or its options cannot be used as asked."""


def check_device(device) -> torch.device:
    """``device`` as a torch.device, or a ValueError naming it when this machine cannot compute on it
    (no CUDA build, no GPU, a bad index or name, a device without data such as ``meta``): the one check
    train, eval and bench share. A small tensor is made, added to and read back, as the model needs."""
    try:
        dev = torch.device(device)
        torch.zeros(1, device=dev).add_(1).cpu()
    except (RuntimeError, AssertionError, NotImplementedError, ValueError) as e:
        raise ValueError(f"--device {str(device)!r} is not usable here: {e}") from None
    return dev


def load_run_config(run: Path) -> dict:
    """``RUN/config.json``, checked: a JSON object with the keys ``CONFIG_KEYS`` (a RunError naming the file if not)."""
    p = Path(run) / CONFIG
    if not p.is_file():
        raise RunError(f"{run} is not a training run (no {CONFIG})")
    try:
        cfg = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{p} is not valid JSON ({e}): the run's config is damaged") from None
    if not isinstance(cfg, dict):
        raise RunError(f"{p} holds a JSON {type(cfg).__name__}, not the run's config (a JSON object)")
    bad = [k for k, t in CONFIG_KEYS.items() if not isinstance(cfg.get(k), t) or (t is int and isinstance(cfg[k], bool))]
    ds = cfg.get("dataset")
    if isinstance(ds, dict) and not (isinstance(ds.get("checksum"), str) and isinstance(ds.get("classes"), list)):
        bad.append("dataset.checksum/classes")
    if bad:
        raise RunError(f"{p} lacks or mistypes {', '.join(bad)}: the run's config is damaged")
    return cfg


def data_spec(cfg: dict) -> str:
    """The ``--data`` a run was trained on, as config.json records it: the resolved path where there is one
    (``dataset.path``), so that it does not depend on the current directory."""
    return cfg["dataset"].get("path") or cfg["data"]


def resolve_data(spec) -> str:
    """``spec`` with a path made absolute (a dataset name such as ``synthetic`` as it is)."""
    s = str(spec)
    return s if s in NAMED_DATA else str(Path(s).expanduser().resolve())


def load_checkpoint(path: Path, map_location="cpu", keys=CHECKPOINT_KEYS) -> dict:
    """A checkpoint's state, loaded with ``weights_only=True`` (no code runs) and checked: a dict with the keys
    ``keys`` (``CHECKPOINT_KEYS``; ``SNAPSHOT_KEYS`` for stage1.pt) and finite weights. Anything else (a file that
    would run code to load, a truncated, empty or foreign file) is a RunError naming ``path``."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on foreign pickle protocols: the error below says it all
            state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise RunError(f"{path}: no such checkpoint") from None
    except Exception as e:  # noqa: BLE001 (whatever the file is, it is not a checkpoint this package can use)
        raise RunError(f"{path} is not a readable checkpoint ({_why(e)}); nothing in it was run") from None
    if not isinstance(state, dict) or any(k not in state for k in keys):
        got = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise RunError(f"{path} is not a checkpoint of this package: expected the keys {list(keys)}, got {got}")
    model, epoch = state["model"], state["epoch"]
    types = {"optimizer": dict, "history": list, "config": dict}
    if not (isinstance(model, dict) and all(isinstance(v, torch.Tensor) for v in model.values())
            and isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0
            and all(isinstance(state[k], t) for k, t in types.items() if k in keys)):
        raise RunError(f"{path} is not a checkpoint of this package: its {', '.join(keys)} "
                       "has the wrong type")
    bad = [k for k, v in model.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise RunError(f"{path} holds non-finite weights ({', '.join(bad[:3])}): the run diverged; it cannot be "
                       "resumed or evaluated")
    return state


def _why(e: Exception) -> str:
    """The gist of torch.load's error (its messages run to paragraphs)."""
    text = " ".join(str(e).split())
    if "Weights only load failed" in text:
        m = (re.search(r"(Trying to load unsupported .*?)\.(?:\s|$)", text)
             or re.search(r"WeightsUnpickler error:\s*(.*?)(?:\s+was not an allowed global|\s+Please use"
                          r"|\s+Check the documentation|$)", text))
        detail = m.group(1) if m and m.group(1) else "an object that is not a tensor, number, string, list or dict"
        return f"refused by the weights-only loader: {detail}"
    first = text.split(". ")[0][:160]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def restore(path: Path, state: dict, model: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> None:
    """Load a checked checkpoint's weights (and optimizer state) into ``model`` (``opt``); a RunError naming
    ``path`` when they do not fit (other shapes, other layers)."""
    try:
        model.load_state_dict(state["model"])
        if opt is not None:
            opt.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()
        raise RunError(f"{path} does not fit the model: {' '.join(first[:3])[:300]}") from None


def check_same_run(run: Path, cfg: dict, state: dict, keys) -> None:
    """config.json and checkpoint.pt of ``run`` must come from the same run (agree on ``keys``)."""
    ck = state["config"]
    diff = [k for k in keys if k in cfg and k in ck and cfg[k] != ck[k]]
    if diff:
        raise RunError(f"{run}: {CONFIG} and {CHECKPOINT} come from different runs ("
                       + ", ".join(f"{k} {cfg[k]!r} vs {ck[k]!r}" for k in diff) + ")")


def save_checkpoint(run: Path, state: dict) -> None:
    atomic_write_bytes(Path(run) / CHECKPOINT, lambda f: torch.save(state, f))


def write_metrics(run: Path, history: list[dict]) -> None:
    """``metrics.jsonl``: the whole history, one JSON line per epoch (rewritten atomically each epoch); strict
    JSON (a non-finite number is an error, never a bare NaN)."""
    save_text(Path(run) / METRICS, "".join(json.dumps(r, allow_nan=False) + "\n" for r in history))


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / METRICS).read_text().splitlines()]


def finished(run: Path, epochs: int) -> bool:
    """True when ``run`` holds a checkpoint of at least ``epochs`` epochs (a damaged one is a RunError)."""
    ck = Path(run) / CHECKPOINT
    return ck.is_file() and load_checkpoint(ck)["epoch"] >= epochs


def describe(strategy, protocol, ds: Dataset, data=None) -> dict:
    """What config.json records beside the options: the strategy's name, the protocol, the training data
    (with ``data``, the ``--data`` given: ``dataset.path``, resolved, which eval and figures read it from)."""
    d = {"source": ds.source, "checksum": ds.checksum, "classes": list(ds.classes), "n_train": int(len(ds.train_y)),
         "image_size": int(ds.train_x.shape[1])}
    if data is not None:
        d["path"] = resolve_data(data)
    return {"strategy_name": strategy.name, "protocol": asdict(protocol), "dataset": d}


def open_run(run: Path, cfg, description: dict, model: torch.nn.Module, opt: torch.optim.Optimizer, *, resume: bool,
             world: World) -> tuple[int, list[dict]]:
    """Open ``run`` for training with the options ``cfg`` (a TrainConfig): ``(epochs done, history)``.

    A new run: writes config.json (the options, ``description``, the versions) and returns ``(0, [])``; a new
    fine-tuned run (``cfg.finetune_from``) loads the source's stage1.pt into ``model`` (the optimizer starts
    fresh: plain SGD has no state) and returns ``(its epoch, [])``, refusing a source that is not its
    counterpart (:func:`check_finetune_source`).
    ``resume``: restores ``model`` and ``opt`` from the checkpoint and returns its epochs and history.
    Refuses (RunError) to overwrite a run without ``resume``, to resume without a checkpoint, from a damaged
    config.json or checkpoint, on other data (``dataset.checksum``; the same data under another path is
    fine), and with options that change the result (``cfg.RESULT_KEYS``; ``cfg.RESULT_DEFAULTS``: what a run
    written before a key existed used). Removes the temporary files an interrupted write left. Under
    torchrun rank 0 alone reads and writes the directory; every rank gets its verdict and state.
    (Training holds :func:`lock` around this and the epochs.)"""
    run = Path(run)
    state, path, error = None, None, None
    if world.main:
        try:
            state, path = _open(run, cfg, description, resume)
            if state is not None:
                restore(path, state, model, opt if path.name == CHECKPOINT else None)
        except RunError as e:
            error = str(e)
    state, path, error = distributed.broadcast((state, path, error), world)
    if error:
        raise RunError(error)
    if state is None:
        return 0, []
    if not world.main:
        restore(path, state, model, opt if path.name == CHECKPOINT else None)
    return state["epoch"], state["history"]


def _open(run: Path, cfg, description: dict, resume: bool) -> tuple[dict | None, Path | None]:
    ckpt_path = run / CHECKPOINT
    if run.exists() and not run.is_dir():
        raise RunError(f"--out {run} is a file, not a run directory")
    remove_stale_temp_files(run)
    if ckpt_path.exists() and not resume:
        raise RunError(f"{run} already holds a run: pass --resume to continue it, or choose another --out")
    if resume and not ckpt_path.exists():
        raise RunError(f"--resume: no checkpoint in {run}")
    if resume:
        config = load_run_config(run)
        state = load_checkpoint(ckpt_path)
        check_same_run(run, config, state, cfg.RESULT_KEYS)
        old = {**cfg.RESULT_DEFAULTS, **state["config"]}
        diff = {k: (old.get(k), getattr(cfg, k)) for k in cfg.RESULT_KEYS if old.get(k) != getattr(cfg, k)}
        if diff:
            raise RunError(f"--resume: options differ from the run in {run}: " +
                           ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in diff.items()))
        was, now = config["dataset"]["checksum"], description["dataset"]["checksum"]
        if was != now:
            raise RunError(f"--resume: the data at {cfg.data} differ from the run's ({config['data']}): "
                           f"checksum {now} != {was}")
        return state, ckpt_path
    source, extra = None, {}
    if cfg.finetune_from:
        source, snap = check_finetune_source(cfg, description)
        extra = {"finetune_source": {"run": str(source.parent.resolve()), "snapshot": STAGE1, "epoch": snap["epoch"]}}
    run.mkdir(parents=True, exist_ok=True)
    save_json(run / CONFIG, {**asdict(cfg), **description, "versions": versions(), **extra})
    if source is None:
        return None, None
    return {"model": snap["model"], "epoch": snap["epoch"], "history": []}, source


def stage1_end(protocol: Protocol) -> int | None:
    """The epochs done at the end of the first lr stage (``lr_step_epochs``), or None when the run has one stage."""
    return protocol.lr_step_epochs if protocol.lr_step_epochs < protocol.epochs else None


def check_finetune_source(cfg, description: dict) -> tuple[Path, dict]:
    """The stage-1 snapshot a fine-tuned run ``cfg`` starts from: ``(RUN/stage1.pt, its state)``. A RunError
    naming the run or file unless ``cfg.finetune_from`` is the 0-1 label counterpart of ``cfg.strategy``
    (``config.STRATEGY_PAIRS``) with the same seed, protocol (``description["protocol"]``) and data (checksum),
    the protocol has a second lr stage, and the run's stage1.pt holds that stage's end."""
    src, s = Path(cfg.finetune_from), cfg.strategy
    zo = next((a for a, b in STRATEGY_PAIRS.values() if b == s), None)
    if zo is None:
        raise RunError(f"--finetune-from: strategy {s} ({STRATEGIES[s].name}) is not an IQA-LS strategy; fine-tuning "
                       "starts an IQA-LS strategy (" + ", ".join(str(b) for _, b in STRATEGY_PAIRS.values())
                       + ") from its 0-1 label run (" + ", ".join(str(a) for a, _ in STRATEGY_PAIRS.values()) + ")")
    src_cfg = load_run_config(src)
    if src_cfg["strategy"] != zo or src_cfg["seed"] != cfg.seed:
        raise RunError(f"--finetune-from {src} is strategy {src_cfg['strategy']} seed {src_cfg['seed']}: strategy {s} "
                       f"seed {cfg.seed} fine-tunes strategy {zo} ({STRATEGIES[zo].name}) of the same seed")
    want = json.loads(json.dumps(description["protocol"]))
    diff = sorted(k for k in want if src_cfg.get("protocol", {}).get(k) != want[k])
    if diff:
        raise RunError(f"--finetune-from {src} was trained with another protocol ("
                       + ", ".join(f"{k} {src_cfg.get('protocol', {}).get(k)!r} vs {want[k]!r}" for k in diff) + ")")
    if src_cfg["dataset"]["checksum"] != description["dataset"]["checksum"]:
        raise RunError(f"--finetune-from {src} was trained on other data (checksum {src_cfg['dataset']['checksum']} "
                       f"!= {description['dataset']['checksum']})")
    end = stage1_end(Protocol(**{**want, "mixture": tuple(want["mixture"])}))
    if end is None:
        raise RunError(f"--finetune-from: the protocol has a single lr stage ({want['epochs']} epochs, lr step every "
                       f"{want['lr_step_epochs']}): there is no stage after the first to fine-tune in")
    snap = src / STAGE1
    if not snap.is_file():
        raise RunError(f"--finetune-from {src}: no {STAGE1} (its weights at epoch {end}, the end of the first lr "
                       "stage): it has not reached that epoch, or was trained before stage-1 snapshots were saved")
    state = load_checkpoint(snap, keys=SNAPSHOT_KEYS)
    got = (state["epoch"], state["config"].get("strategy"), state["config"].get("seed"))
    if got != (end, zo, cfg.seed):
        raise RunError(f"{snap} holds epoch {got[0]} of strategy {got[1]} seed {got[2]}, not epoch {end} of strategy "
                       f"{zo} seed {cfg.seed}: it is not this run's stage-1 snapshot")
    return snap, state


TEMP_OF = (CHECKPOINT, METRICS, CONFIG, STAGE1)
"""The files training writes atomically: an interrupted write leaves ``.NAME.*.tmp`` (``_io.atomic_write_bytes``)."""


def remove_stale_temp_files(run: Path) -> list[Path]:
    """Remove the temporary files a killed write of the checkpoint, metrics or config left in ``run``
    (safe only while holding the run's lock, or with no writer)."""
    stale = [p for name in TEMP_OF for p in Path(run).glob(f".{name}.*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def save(run: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, history: list[dict], cfg) -> None:
    """After an epoch: at the end of the first lr stage (``stage1_end``) stage1.pt first, then the checkpoint
    (model, optimizer, epochs done, history, options), then metrics.jsonl. A failed write (a full disk, say) is
    a RunError naming the file; the previous checkpoint stays whole. (stage1.pt before the checkpoint: a run
    killed between the two redoes the epoch and writes it again.)"""
    run = Path(run)
    epoch = history[-1]["epoch"]
    kept = (f"{run / CHECKPOINT} still holds epoch {history[-2]['epoch']}" if len(history) > 1 else "nothing was saved")
    if epoch == stage1_end(cfg.protocol()):
        try:
            atomic_write_bytes(run / STAGE1, lambda f: torch.save(
                {"model": model.state_dict(), "epoch": epoch, "config": asdict(cfg)}, f))
        except OSError as e:
            raise RunError(f"epoch {epoch}: {run / STAGE1} could not be written: {os_error_message(e)}; {kept} (free "
                           "space, then continue with --resume)") from None
    try:
        save_checkpoint(run, {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                              "history": history, "config": asdict(cfg)})
    except OSError as e:
        raise RunError(f"epoch {epoch}: the checkpoint could not be written: {os_error_message(e)}; {kept} (free space, "
                       "then continue with --resume)") from None
    try:
        write_metrics(run, history)
    except OSError as e:
        raise RunError(f"epoch {epoch}: {METRICS} could not be written: {os_error_message(e)}; {run / CHECKPOINT} holds "
                       f"epoch {epoch} (free space, then continue with --resume, which rewrites {METRICS})") from None


def os_error_message(e: OSError) -> str:
    """An OSError in words: what failed, whether the disk is full, the file."""
    full = " (the disk is full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return f"{e.strerror or e}{full}" + (f": {e.filename}" if e.filename else "")


def load_model(run: Path, device: str | torch.device = "cpu") -> tuple[PaperCNN, dict]:
    """The trained model of ``run`` (in eval mode, on ``device``) and its config.json."""
    model, cfg, _ = load_trained(run, device)
    return model, cfg


def load_trained(run: Path, device: str | torch.device = "cpu") -> tuple[PaperCNN, dict, dict]:
    """``load_model``'s model and config, and the checkpoint's state; every file checked (RunError naming it)."""
    cfg = load_run_config(run)
    ckpt = Path(run) / CHECKPOINT
    if not ckpt.is_file():
        raise RunError(f"{run}: no {CHECKPOINT}; train it first")
    state = load_checkpoint(ckpt, map_location=device)
    check_same_run(Path(run), cfg, state, ("strategy", "seed", "epochs", "train_subset", "transform", "iqa"))
    ds = cfg["dataset"]
    model = PaperCNN(len(ds["classes"]), ds.get("image_size", 32), seed=cfg["seed"])
    restore(ckpt, state, model)
    if state["epoch"] < cfg["epochs"]:
        print(f"warning: {run} is unfinished ({state['epoch']} of {cfg['epochs']} epochs)")
    return model.to(device).eval(), cfg, state


# ---------------------------------------------------------------------------------------------------
# One writer at a time


class _Lock:
    """The exclusive lock of a run directory: ``RUN/.lock`` held with ``flock`` on an open descriptor (the
    kernel drops it when the process ends, however it ends), the holder's pid, host and start time in it."""

    def __init__(self, run: Path):
        self.run, self.path, self.fd = run, run / LOCK, None
        top = run
        while not top.parent.exists() and top.parent != top:
            top = top.parent
        self.created = [] if run.exists() else [run, *[q for q in run.parents if q == top or top in q.parents]]
        self.new_run = False  # set by the trainer: a failure before the first checkpoint removes what it wrote

    def acquire(self) -> _Lock:
        try:
            self.run.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _holder(fd)
                    os.close(fd)
                    raise RunError(f"{self.run} is in use by another training process ({holder}; {self.path}): "
                                   "wait for it to end, or choose another --out") from None
                try:  # the last holder may have removed the file between our open and flock: lock the one on disk
                    if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                        break
                except FileNotFoundError:
                    pass
                os.close(fd)
        except OSError as e:
            raise RunError(f"cannot lock the run directory {self.run}: {os_error_message(e)}") from None
        self.fd = fd
        old = _holder(fd, default="")
        if old:  # a lock file whose flock nobody holds: its process ended without removing it
            print(f"note: {self.path} was left by a process that is gone ({old}); taking it over", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                   "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n").encode(), 0)
        return self

    def release(self, failed: bool) -> None:
        if self.fd is None:
            return
        try:
            if failed and self.new_run and not (self.run / CHECKPOINT).exists():
                for name in (CONFIG, METRICS, STAGE1):  # a new run that saved no epoch: leave no half-made directory
                    (self.run / name).unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)  # while still held: a waiting opener sees another inode and retries
        finally:
            os.close(self.fd)
            self.fd = None
        if failed:
            for d in self.created:  # the directories this lock made, if nothing else was put in them
                try:
                    d.rmdir()
                except OSError:
                    break


def _holder(fd: int, default: str = "an unknown process") -> str:
    try:
        h = json.loads(os.pread(fd, 4096, 0).decode() or "null")
        return f"pid {h['pid']} on {h['host']}, since {h.get('since', '?')}"
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        return default


@contextlib.contextmanager
def lock(run: Path, world: World | None = None):
    """Hold the run directory's exclusive lock (``RUN/.lock``; rank 0 under torchrun) while training writes it.

    A second writer gets a RunError naming the holder's pid and host; a lock left by a killed process (its
    flock is gone with it) is taken over. On exit the lock file is removed; after a failure so are the
    directories the lock created and, for a new run that saved no epoch (``new_run``), its config and
    metrics: no half-made run directory is left. Yields the lock (``None`` on ranks other than 0)."""
    world, held, error = world or World(), None, None
    if world.main:
        try:
            held = _Lock(Path(run)).acquire()
        except RunError as e:
            error = str(e)
    error = distributed.broadcast(error, world)
    if error:
        raise RunError(error)
    ok = False
    try:
        yield held
        ok = True
    finally:
        if held is not None:
            held.release(failed=not ok)


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
