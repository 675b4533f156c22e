"""``iqals-fast bench``: training throughput, side by side in one run.

Model-only rows time the SGD step alone on a fixed batch of uint8 images (standardise, forward, Eq. 1
loss, backward, update), exactly as ``train`` builds it (``train.make_step``):

- ``eager, plain PyTorch``: the network written plainly in PyTorch's own ops (composite
  ``F.local_response_norm``, padded max-pool; ``PaperCNN.forward_reference``), eager, NCHW: the
  baseline, what a user would write; and the same compiled;
- ``eager`` / ``compiled`` (``torch.compile``; CUDA graphs on GPU), each NCHW and channels_last,
  with the fast forward (the dispatched LRN: the C++ kernels on CPU, PyTorch's composite on CUDA);
- on CUDA also ``compiled, channels_last + bf16``;
- the row ``iqals-fast train`` runs on this device (``TrainConfig.speed``) is marked.

The pipeline row runs the real ``train()`` of strategy 9 (data, mixture, distortions, SSIM scores,
soft labels, steps, the checkpoint of every epoch) for a few epochs and reports the median of the
epochs after the first (the first pays for the compiler and the per-dataset blur/JPEG cache, which
are reported apart). Rounds of the model-only variants are interleaved so a noisy machine hurts all
alike; each figure is the median over rounds. Each round is one ``torch.utils.benchmark.Timer.timeit``
of ``--steps`` steps (it synchronises the GPU around the timed steps, runs a couple of untimed
steps first and keeps torch's thread count as it is set).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.benchmark import Timer

from ._io import save_json, save_text
from .data.sources import load
from .distributed import World
from .model import PaperCNN
from .ops import dispatch
from .runs import check_device, read_metrics, versions
from .train import TrainConfig, make_optimizer, make_step, train

BASELINE = "eager, plain PyTorch"


def _variants(device: torch.device) -> list[tuple[str, bool, TrainConfig]]:
    """(row name, plain PyTorch network?, config). The first is the baseline: the network written
    plainly in PyTorch's own ops (``PaperCNN.forward_reference``), eager, NCHW."""
    base = TrainConfig(device=str(device), compile=False, channels_last=False)
    out = [(BASELINE, True, base), ("compiled, plain PyTorch", True, replace(base, compile=True)),
           ("eager, dispatched LRN", False, base),
           ("eager, dispatched LRN, channels_last", False, replace(base, channels_last=True)),
           ("compiled, dispatched LRN", False, replace(base, compile=True)),
           ("compiled, dispatched LRN, channels_last", False, replace(base, compile=True, channels_last=True))]
    if device.type == "cuda":
        out.append(("compiled, channels_last + bf16", False, replace(base, compile=True, channels_last=True, bf16=True)))
    return out


def default_variant(device: torch.device) -> str:
    """The model-only row that ``iqals-fast train`` runs on this device (``TrainConfig.speed``)."""
    compile_, cl = TrainConfig().speed(device)
    return f"{'compiled' if compile_ else 'eager'}, dispatched LRN{', channels_last' if cl else ''}"


def model_only(images: np.ndarray, labels: np.ndarray, device: torch.device, *, batch: int = 100, steps: int = 20,
               rounds: int = 5, warmup: int = 3) -> dict[str, dict]:
    """images/s of the training step alone for each variant (median over interleaved rounds)."""
    x = torch.from_numpy(images[:batch]).to(device)
    y = torch.from_numpy(labels[:batch]).to(device)
    on_true = torch.linspace(0.6, 1.0, len(y), device=device)
    _, loss_fn = dispatch.resolve("soft_label_mse", "auto", device)
    timers, warmup_s = {}, {}
    for name, plain, cfg in _variants(device):
        model = PaperCNN(seed=0, reference=plain)
        if cfg.speed(device)[1]:
            model = model.to(memory_format=torch.channels_last)
        model = model.to(device)
        opt = make_optimizer(model, 0.01, 0.004)
        step = make_step(model, opt, loss_fn, cfg, device, World())
        t = time.perf_counter()
        for _ in range(warmup):  # the compiler runs here (a one-off wall time, not a benchmark)
            step(x, y, on_true)
        _sync(device)
        warmup_s[name] = time.perf_counter() - t
        timers[name] = Timer("step(x, y, on_true)", globals={"step": step, "x": x, "y": y, "on_true": on_true},
                             num_threads=torch.get_num_threads(), description=name)
    times: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            times[name].append(timer.timeit(steps).times[0] * steps)  # seconds for ``steps`` steps
    return {name: {"images_per_s": len(y) * steps / statistics.median(ts), "warmup_s": warmup_s[name],
                   "rounds_images_per_s": [len(y) * steps / t for t in ts]} for name, ts in times.items()}


def pipeline(data: str, device: torch.device, *, n: int, epochs: int) -> dict:
    """Strategy 9 trained for real on n images: images/s per epoch (data + distortions + scores + steps)."""
    ds = load(data)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(strategy=9, data=data, epochs=epochs, train_subset=n, device=str(device),
                          lr_step_epochs=epochs, out=str(Path(tmp) / "run"))  # train's default speed settings
        run = train(cfg, dataset=ds, progress=False)
        hist = read_metrics(run)
    later = hist[1:] or hist
    compile_, cl = cfg.speed(device)
    return {"n": n, "epochs": epochs, "compile": compile_, "channels_last": cl,
            "images_per_s": statistics.median(h["images_per_s"] for h in later),
            "data_seconds_per_epoch": statistics.median(h["data_seconds"] for h in later),
            "first_epoch_seconds": hist[0]["seconds"], "first_epoch_data_seconds": hist[0]["data_seconds"],
            "epochs_images_per_s": [h["images_per_s"] for h in hist]}


def run_bench(data: str = "synthetic", device: str = "cpu", *, n: int = 5000, epochs: int = 3, steps: int = 20,
              rounds: int = 5, out: str | Path | None = None, pipeline_run: bool = True) -> dict:
    dev = check_device(device)
    ds = load(data)
    res = {"device": _device_name(dev), "threads": torch.get_num_threads(), "data": ds.source, "versions": versions(),
           "batch": 100, "default": default_variant(dev),
           "model_only": model_only(ds.train_x, ds.train_y, dev, steps=steps, rounds=rounds)}
    if pipeline_run:
        res["pipeline"] = pipeline(data, dev, n=min(n, len(ds.train_y)), epochs=epochs)
    res["table"] = table(res)
    if out is not None:
        out = Path(out)
        save_json(out, res)
        save_text(out.with_suffix(".md"), res["table"])
    return res


def table(res: dict) -> str:
    mo = res["model_only"]
    base = mo[BASELINE]["images_per_s"]
    default = mo[res["default"]]["images_per_s"]
    lines = [f"Training throughput, batch {res['batch']}, {res['device']} ({res['threads']} threads), "
             f"data {res['data']}", "", f"| what | images/s | vs {BASELINE} | vs train's default model-only |",
             "|---|---|---|---|"]
    for name, r in mo.items():
        mark = " **(train's default)**" if name == res["default"] else ""
        lines.append(f"| model only, {name}{mark} | {r['images_per_s']:,.0f} | {r['images_per_s'] / base:.2f}x | "
                     f"{r['images_per_s'] / default:.2f} |")
    if "pipeline" in res:
        p = res["pipeline"]
        lines.append(f"| full strategy-9 pipeline ({p['n']:,} images, epochs 2-{p['epochs']}, "
                     f"{'compiled' if p['compile'] else 'eager'}{', channels_last' if p['channels_last'] else ''}) | "
                     f"{p['images_per_s']:,.0f} | {p['images_per_s'] / base:.2f}x | {p['images_per_s'] / default:.2f} |")
        lines += ["", f"Pipeline: {p['data_seconds_per_epoch']:.3f} s of data work per epoch; the first epoch took "
                      f"{p['first_epoch_seconds']:.1f} s ({p['first_epoch_data_seconds']:.1f} s of it building the "
                      "blur/JPEG cache), compiler included."]
    lines += ["", "Warm-up (compilation) per variant: " +
              ", ".join(f"{k} {v['warmup_s']:.1f} s" for k, v in mo.items())]
    return "\n".join(lines) + "\n"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return versions()["processor"]
