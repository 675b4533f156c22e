"""``iqals-fast bench``: training throughput, side by side in one run.

Model-only rows time the SGD step alone on a fixed batch of 100 uint8 images per run (standardise,
forward, Eq. 1 loss, backward, update), exactly as ``train`` builds it (``train.make_step``; for a
fleet ``fleet.make_fleet_step``). Each row's name says how it runs:

- ``eager`` / ``compiled`` (``torch.compile``; "reduce-overhead" CUDA graphs on GPU), or on CUDA the
  ``whole-step graph`` (``step_graph``: forward, backward and SGD update one CUDA graph) with an eager or
  a compiled forward inside (on CPU, ``whole-step function``: the same function, eagerly);
- ``plain PyTorch`` (``PaperCNN.forward_reference``: composite LRN, padded max-pool, what a user would
  write) or ``dispatched LRN`` (the fast forward: the C++ LRN on CPU, PyTorch's composite on CUDA);
- the memory format, and the precision (``fp32``: float32 throughout, on CUDA with cuDNN's default TF32
  convolutions; ``bf16``: the CNN under bf16 autocast, ``TrainConfig.precision``);
- ``fleet of K``: K runs stacked as one grouped network (``fleet.FleetCNN``), images/s counted over all
  K runs (K x 100 images a step).

Ratios are to the baseline (eager, plain PyTorch, fp32, one model) and to "today's default", the step
``train`` ran before the speed work of issue 16 (CPU: eager, dispatched LRN, channels_last, fp32; CUDA:
compiled with CUDA graphs, NCHW, fp32); the row ``train`` runs now (``TrainConfig()``'s defaults) is
marked. The pipeline rows run the real ``train()`` (or ``train_fleet``) of strategy 9 (data, mixture,
distortions, SSIM scores, soft labels, steps, the checkpoint of every epoch) for a few epochs and
report the median of the epochs after the first (which pays for the compiler and the per-dataset
blur/JPEG cache, reported apart). Rounds of the model-only rows are interleaved so a noisy machine
hurts all alike; each figure is the median over rounds. Each round is one
``torch.utils.benchmark.Timer.timeit`` of ``--steps`` steps (it synchronises the GPU around the timed
steps, runs a couple of untimed steps first and keeps torch's thread count as it is set). A row that
fails to build or run records its error and the others still run.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
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
from .step_graph import graph_enabled
from .train import TrainConfig, make_optimizer, make_step, train

BATCH = 100
GROUPS = ("single", "compiled", "fleet")
"""Row groups ``--groups`` selects: one model without torch.compile; anything compiled (a minute or more of
compilation per row); fleets without torch.compile."""


@dataclass(frozen=True)
class Variant:
    cfg: TrainConfig
    plain: bool = False  # PaperCNN.forward_reference instead of the fast forward
    k: int = 0  # 0: one PaperCNN; K >= 1: a fleet of K

    def settings(self, device: torch.device) -> tuple:
        """What the row runs, resolved for ``device``: (plain, k, compiled, channels_last, graph, bf16)."""
        compiled, cl = self.cfg.speed(device)
        return (self.plain, self.k, compiled, cl, graph_enabled(self.cfg, device), self.cfg.amp_dtype(device) is not None)

    def name(self, device: torch.device) -> str:
        plain, k, compiled, cl, graph, bf16 = self.settings(device)
        if graph:
            mode = (f"whole-step {'graph' if device.type == 'cuda' else 'function'}, "
                    f"{'compiled' if compiled else 'eager'} forward")
        else:
            mode = "compiled" if compiled else "eager"
        parts = [mode, "plain PyTorch" if plain else "dispatched LRN"] + (["channels_last"] if cl else [])
        return (f"fleet of {k}: " if k else "") + ", ".join(parts + ["bf16" if bf16 else "fp32"])

    def group(self, device: torch.device) -> str:
        return "compiled" if self.settings(device)[2] else "fleet" if self.k else "single"


def today(device: torch.device) -> Variant:
    """The step ``train`` ran before issue 16's speed work: fp32; CPU eager, channels_last; CUDA compiled, NCHW."""
    cuda = device.type == "cuda"
    return Variant(TrainConfig(device=str(device), compile=cuda, channels_last=not cuda, graph=False, precision="fp32"))


def default(device: torch.device, k: int = 0) -> Variant:
    """The step ``train`` runs now: ``TrainConfig()``'s defaults (precision: the device's default)."""
    return Variant(TrainConfig(device=str(device)), k=k)


def variants(device: torch.device, fleets: tuple[int, ...] = ()) -> list[Variant]:
    """The rows, the baseline first, then the most telling (a run cut short keeps those); duplicates (the same
    resolved settings) dropped. CPU: today's default, the new default, bf16, compiled, the whole-step function.
    CUDA: the whole-step graph (eager, then compiled forward), today's compiled step, eager, in fp32 and bf16.
    Then each fleet of K (CUDA: the whole-step graph, eager and compiled forward; CPU: eager) in fp32 and bf16."""
    cuda = device.type == "cuda"
    fp32 = TrainConfig(device=str(device), compile=False, channels_last=False, graph=False, precision="fp32")
    bf16 = replace(fp32, precision="bf16")
    out = [Variant(fp32, plain=True), today(device), default(device)]
    if cuda:
        for flags in (dict(graph=True), dict(graph=True, compile=True), dict(compile=True), {},
                      dict(graph=True, channels_last=True)):
            out += [Variant(replace(fp32, **flags)), Variant(replace(bf16, **flags))]
    else:
        cl = dict(channels_last=True)
        for flags in ({}, dict(compile=True), dict(graph=True)):
            out += [Variant(replace(fp32, **cl, **flags)), Variant(replace(bf16, **cl, **flags))]
        out.append(Variant(fp32))
    out.append(Variant(replace(fp32, compile=True), plain=True))
    for k in fleets:
        out.append(default(device, k))
        base = dict(graph=True) if cuda else dict(channels_last=True)
        for flags in (base, dict(base, compile=True)):
            out += [Variant(replace(fp32, **flags), k=k), Variant(replace(bf16, **flags), k=k)]
    seen, rows = set(), []
    for v in out:
        if (key := v.settings(device)) not in seen:
            seen.add(key)
            rows.append(v)
    return rows


def _build(v: Variant, device: torch.device, loss_fn, x, y, on_true):
    """(step, its inputs, images per step) of a row, as train / train_fleet build it."""
    cl = v.cfg.speed(device)[1]
    if not v.k:
        model = PaperCNN(seed=0, reference=v.plain)
        model = (model.to(memory_format=torch.channels_last) if cl else model).to(device)
        opt = make_optimizer(model, 0.01, 0.004)
        return make_step(model, opt, loss_fn, v.cfg, device, World()), (x, y, on_true), len(y)
    from .fleet import FleetCNN, make_fleet_step

    fleet = FleetCNN.stack([PaperCNN(seed=s).to(device) for s in range(v.k)])
    fleet = fleet.to(memory_format=torch.channels_last) if cl else fleet
    opt = make_optimizer(fleet, 0.01, 0.004)
    step = make_fleet_step(fleet, opt, loss_fn, [v.cfg] * v.k, device)
    rep = [t.expand(v.k, *t.shape).contiguous() for t in (x, y, on_true)]  # each run its own copy of the batch
    return step, tuple(rep), v.k * len(y)


def model_only(images: np.ndarray, labels: np.ndarray, device: torch.device, *, fleets: tuple[int, ...] = (),
               groups: tuple[str, ...] = GROUPS, rows: tuple[str, ...] = (), steps: int = 20, rounds: int = 5,
               warmup: int = 3, saved=None) -> dict[str, dict]:
    """images/s of the training step alone for each row (median over rounds): the rows of ``groups`` (and, if
    given, whose names contain one of ``rows``), the baseline always. Each row is built, warmed up and timed
    once in turn, then the other rounds interleave the rows; ``saved(res)`` is called after each row and round
    (a run cut short keeps what it measured). A row that fails records ``error`` instead."""
    x = torch.from_numpy(images[:BATCH]).to(device)
    y = torch.from_numpy(labels[:BATCH]).to(device)
    on_true = torch.linspace(0.6, 1.0, len(y), device=device)
    _, loss_fn = dispatch.resolve("soft_label_mse", "auto", device)
    baseline = variants(device)[0].name(device)
    res, timers, saved = {}, {}, saved or (lambda res: None)

    def timed(name):
        t = timers[name].timeit(steps).times[0] * steps  # seconds for ``steps`` steps
        r = res[name]
        r.setdefault("rounds_images_per_s", []).append(r["images_per_step"] * steps / t)
        r["images_per_s"] = statistics.median(r["rounds_images_per_s"])

    for v in variants(device, fleets):
        name = v.name(device)
        if name != baseline and (v.group(device) not in groups or rows and not any(r in name for r in rows)):
            continue
        try:
            step, inputs, per_step = _build(v, device, loss_fn, x, y, on_true)
            t = time.perf_counter()
            for _ in range(warmup):  # the compiler (or the graph capture) runs here: a one-off wall time
                step(*inputs)
            _sync(device)
            res[name] = {"runs": max(v.k, 1), "images_per_step": per_step, "warmup_s": time.perf_counter() - t,
                         "settings": dict(zip(("plain", "k", "compile", "channels_last", "graph", "bf16"),
                                              v.settings(device)))}
            timers[name] = Timer("step(*inputs)", globals={"step": step, "inputs": inputs},
                                 num_threads=torch.get_num_threads(), description=name)
            timed(name)
        except Exception as e:  # one row's failure (a compiler on a new machine, memory) must not lose the others
            traceback.print_exc()
            res[name] = {"error": f"{type(e).__name__}: {e}"}
            timers.pop(name, None)
        saved(res)
    for _ in range(rounds - 1):
        for name in timers:
            timed(name)
        saved(res)
    return res


def pipeline(data: str, device: torch.device, *, n: int, epochs: int, k: int = 0) -> dict:
    """Strategy 9 trained for real on n images with train's defaults (k >= 1: a fleet of k seeds, train_fleet):
    images/s per epoch (data + distortions + scores + steps + checkpoints), over all runs of a fleet."""
    ds = load(data)
    with tempfile.TemporaryDirectory() as tmp:
        cfgs = [TrainConfig(strategy=9, data=data, epochs=epochs, train_subset=n, device=str(device), seed=s,
                            lr_step_epochs=epochs, out=str(Path(tmp) / f"run{s}")) for s in range(max(k, 1))]
        if k:
            from .fleet import train_fleet

            run = train_fleet(cfgs, dataset=ds, progress=False)[0]
        else:
            run = train(cfgs[0], dataset=ds, progress=False)
        hist = read_metrics(run)
    later, runs = hist[1:] or hist, max(k, 1)
    return {"n": n, "epochs": epochs, "runs": runs, "row": default(device, k).name(device),
            "images_per_s": runs * statistics.median(h["images_per_s"] for h in later),
            "data_seconds_per_epoch": statistics.median(h["data_seconds"] for h in later),
            "first_epoch_seconds": hist[0]["seconds"], "first_epoch_data_seconds": hist[0]["data_seconds"],
            "epochs_images_per_s": [runs * h["images_per_s"] for h in hist]}


def run_bench(data: str = "synthetic", device: str = "cpu", *, n: int = 5000, epochs: int = 3, steps: int = 20,
              rounds: int = 5, warmup: int = 3, fleets: tuple[int, ...] | None = None, groups: tuple[str, ...] = GROUPS,
              rows: tuple[str, ...] = (), pipeline_fleets: tuple[int, ...] = (), out: str | Path | None = None,
              pipeline_run: bool = True) -> dict:
    """Every row side by side (``model_only``), then the pipeline rows (one run; each of ``pipeline_fleets``);
    ``fleets`` None: 1, 9 and 18 on CUDA, none on CPU (a fleet of 18 steps 1,800 images at a time). With ``out``,
    the JSON (and the table as .md beside it) is rewritten after every row, round and pipeline."""
    dev = check_device(device)
    fleets = ((1, 9, 18) if dev.type == "cuda" else ()) if fleets is None else tuple(fleets)
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise ValueError(f"--groups: unknown {bad}; choose from {', '.join(GROUPS)}")
    ds = load(data)
    res = {"device": _device_name(dev), "threads": torch.get_num_threads(), "data": ds.source, "versions": versions(),
           "batch": BATCH, "baseline": variants(dev)[0].name(dev), "today": today(dev).name(dev),
           "default": default(dev).name(dev), "tf32": _tf32(dev), "model_only": {}}

    def save(model_only=None):  # after every row, round and pipeline: a run cut short keeps what it measured
        if model_only is not None:
            res["model_only"] = model_only
        res["table"] = table(res)
        if out is not None:
            save_json(Path(out), res)
            save_text(Path(out).with_suffix(".md"), res["table"])

    model_only(ds.train_x, ds.train_y, dev, fleets=fleets, groups=groups, rows=rows, steps=steps, rounds=rounds,
               warmup=warmup, saved=save)
    if pipeline_run:
        res["pipeline"] = []
        for k in (0, *pipeline_fleets):
            res["pipeline"].append(pipeline(data, dev, n=min(n, len(ds.train_y)), epochs=epochs, k=k))
            save()
    save()
    return res


def table(res: dict) -> str:
    mo = res["model_only"]
    base, now = (mo.get(res[key], {}).get("images_per_s") for key in ("baseline", "today"))

    def ratio(v, ref):
        return f"{v / ref:.2f}x" if ref else "-"

    lines = [f"Training throughput, batch {res['batch']} per run, {res['device']} ({res['threads']} threads), "
             f"data {res['data']}", "", f"Baseline: {res['baseline']}. Today's default (before issue 16): "
             f"{res['today']}. Marked: the step `iqals-fast train` runs now.", "",
             "| what | images/s | vs baseline | vs today's default |", "|---|---:|---:|---:|"]
    for name, r in mo.items():
        mark = " **(train's default)**" if name == res["default"] else ""
        if "error" in r:
            lines.append(f"| model only, {name}{mark} | failed: {r['error'][:120]} | | |")
            continue
        v = r["images_per_s"]
        lines.append(f"| model only, {name}{mark} | {v:,.0f} | {ratio(v, base)} | {ratio(v, now)} |")
    notes = []
    for p in res.get("pipeline", []):
        v, model = p["images_per_s"], mo.get(p["row"], {}).get("images_per_s")
        fleet = f", fleet of {p['runs']}" if p["runs"] > 1 else ""
        lines.append(f"| full strategy-9 pipeline{fleet} "
                     f"({p['n']:,} images, epochs 2-{p['epochs']}, {p['row']}) | {v:,.0f} | {ratio(v, base)} | "
                     f"{ratio(v, now)} |")
        notes.append(f"Pipeline ({p['runs']} run{'s' if p['runs'] > 1 else ''}): {ratio(v, model)} of its model-only "
                     f"row; {p['data_seconds_per_epoch']:.3f} s of data work per epoch; the first epoch took "
                     f"{p['first_epoch_seconds']:.1f} s ({p['first_epoch_data_seconds']:.1f} s of it building the "
                     "blur/JPEG cache), compiler included.")
    lines += ["", *notes] if notes else []
    if res.get("tf32"):
        lines += ["", f"fp32 on CUDA: {res['tf32']}."]
    lines += ["", "Warm-up (compilation, graph capture) per row: " +
              ", ".join(f"{k} {v['warmup_s']:.1f} s" for k, v in mo.items() if "warmup_s" in v)]
    return "\n".join(lines) + "\n"


def _tf32(device: torch.device) -> str | None:
    if device.type != "cuda":
        return None
    return (f"convolutions {'TF32' if torch.backends.cudnn.allow_tf32 else 'fp32'} (cuDNN), matmuls "
            f"{'TF32' if torch.backends.cuda.matmul.allow_tf32 else 'fp32'}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return versions()["processor"]
