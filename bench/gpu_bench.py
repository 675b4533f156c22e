"""GPU benchmark of the Triton backend: blur+noise+SSIM on 50,000 real CIFAR-10 images, and the loss.

Run from the repository root (bench/gpu_check.sh does, after installing and testing):

    python bench/gpu_bench.py --device cuda --n 50000 --out bench/results
    python bench/gpu_bench.py --device cuda --n 50000 --quick    # what matters only (bench/gpu_quick.sh)
    TRITON_INTERPRET=1 python bench/gpu_bench.py --device cpu --n 200 --tiny   # dry run of every code path

Steps (each guarded: one failing step records its error and the others still run):
  env      device name, torch / triton / library versions
  images   decode the CIFAR-10 training JPEGs ($IQALS_CIFAR_JPEG, default .data/cifar10-jpeg.tar.gz)
  distort  blur(1.0) + noise(0.01) + SSIM: Triton fused kernel (iqals_fast/kernels/distort_and_score.py:
           its DEFAULT configuration and its CANDIDATES: dot mode, programs per SM, warps, register cap,
           isolated dots, stacked moments) vs the torch backend (ops/reference.py), kornia,
           pytorch-msssim, torchmetrics, fused-ssim where they import; SSIM-only timings too; parity of
           the Triton result against the torch backend (--quick: no torchmetrics / IEEE dots); "adopt":
           the fastest candidate >= 3% faster than the default with the default's bytes and scores
           (``adoption``), the one to make the DEFAULT by hand, or None and why
  loss     soft-label MSE forward + backward, K = 10, B in 100 .. 65536, in two regimes:
           "dispatched": each step called from Python (autograd.grad included) - what an eager
           training loop pays, dominated by host overhead at small B; "graphed": forward + backward
           captured once in a CUDA graph and replayed - what a graphed training step pays (the
           kernels, not Python), once with one step per replay (each replay's launch cost is
           included) and once "amortized" with --graph-steps steps per replay (the kernels' time
           per step, as inside a larger graphed training step). Triton (autograd.Function; the
           torch.library custom op when dispatched) vs eager PyTorch autograd of the reference.
Timings: CUDA events around `repeats` calls after `warmup` calls; median (and min) per call.
Writes one JSON (everything measured) to --out (default $OUT or bench/results) and prints a table.
More steps (training throughput) can be appended to STEPS.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tarfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from iqals_fast.kernels.distort_and_score import CANDIDATES

ROOT = Path(__file__).resolve().parents[1]
SIGMA, VAR, SEED = 1.0, 0.01, 2024


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def timeit(fn, device, warmup=3, repeats=10, inner=1):
    """Median and min seconds per call of fn() (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            a.record()
            for _ in range(inner):
                fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3 / inner)
        else:
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - t) / inner)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats, "inner": inner}


def _try_import(name):
    try:
        return __import__(name, fromlist=["_"])
    except Exception as e:  # not installed here (no network on the GPU machine): skip cleanly
        return f"not importable: {type(e).__name__}: {e}"


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------


def step_env(ctx):
    import triton

    dev = ctx["device"]
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "interpreter": os.environ.get("TRITON_INTERPRET") == "1",
    }
    for lib in ("kornia", "pytorch_msssim", "torchmetrics", "fused_ssim", "fussim", "skimage"):
        m = _try_import(lib)
        info[lib] = getattr(m, "__version__", "installed") if not isinstance(m, str) else None
    return info


def _decode(blobs):
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])


def step_images(ctx):
    n = ctx["args"].n
    path = Path(os.environ.get("IQALS_CIFAR_JPEG", ROOT / ".data" / "cifar10-jpeg.tar.gz"))
    t0 = time.perf_counter()
    if path.is_file():
        blobs = []
        with tarfile.open(path, "r:gz") as tar:
            for m in tar:
                parts = m.name.split("/")
                if m.isfile() and len(parts) >= 3 and parts[-3] == "train" and parts[-1].endswith(".jpg"):
                    blobs.append((m.name, tar.extractfile(m).read()))
        blobs.sort()
        blobs = [b for _, b in blobs[:n]]
        chunks = [blobs[i:i + 1000] for i in range(0, len(blobs), 1000)]
        # spawn, not fork: CUDA is already initialised in this process
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(16, os.cpu_count() or 1), mp_context=spawn) as pool:
            images = np.concatenate(list(pool.map(_decode, chunks)))
        source = str(path)
    else:  # no archive: generated images, and the JSON says so
        sys.path.insert(0, str(ROOT / "bench"))
        from contenders import generated_images

        images = generated_images(n, 32, 32, seed=0)
        source = f"generated (archive not found at {path})"
    ctx["images"] = torch.from_numpy(images).to(ctx["device"])
    return {"n": int(images.shape[0]), "shape": list(images.shape), "source": source,
            "decode_s": time.perf_counter() - t0}


# CANDIDATES: the fused kernel's configurations timed beside its DEFAULT, in order (each compiles once,
# ~2-5 s), from iqals_fast/kernels/distort_and_score.py; why each: research/triton-tuning.md.
SSIM_ONLY_CANDIDATES = ("stack_pps3_w4_r168", "fp16_pps4_w2", "iso_pps3_w4_r168", "stack_iso_pps2_w8_r128",
                        "iso_pps4_w4_r128", "iso_pps2_w8_r128", "fp16_pps4_w4", "fp16_pps2_w8")
"""The candidates also timed in score-only mode (there, with no blur, stack_iso is stack's code)."""


def step_distort(ctx):
    from iqals_fast.kernels import distort_and_score as kds
    from iqals_fast.ops import reference as ref
    from iqals_fast.ops import triton as adapter
    from iqals_fast.ops.noise import normals
    from iqals_fast.ops.reference import gaussian_blur, planes

    blur_taps = adapter._blur_taps(SIGMA)
    window = (adapter.SSIM_TAPS, adapter.C1_255, adapter.C2_255)

    def fused(config=None):
        return kds.distort_and_score(x, blur_taps, std, SEED, ids, True, *window, config=config)

    def score_only(config=None):
        return kds.distort_and_score(x, None, None, 0, None, True, *window, distorted=y8, config=config)

    args, dev, x = ctx["args"], ctx["device"], ctx["images"]
    n = x.shape[0]
    ids = torch.arange(n, device=dev)
    std = VAR**0.5
    res = {"n": n, "sigma": SIGMA, "var": VAR, "timings": {}, "ssim_only": {}, "errors": {},
           "default_config": dataclasses.asdict(kds.DEFAULT),
           "candidates": {name: dataclasses.asdict(c) for name, c in CANDIDATES.items()}}
    tm = res["timings"]
    rep = dict(warmup=args.warmup, repeats=args.repeats)

    checkpoint = ctx.get("checkpoint", lambda partial: None)

    def run(table, name, fn, **kw):
        try:
            table[name] = timeit(fn, dev, **{**rep, **kw})
            table[name]["images_per_s"] = n / table[name]["median_s"]
            print(f"  {name}: {table[name]['median_s'] * 1e3:.3f} ms", flush=True)  # in the log if cut short
        except Exception as e:
            res["errors"][name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        checkpoint(res)

    def same_as_default(entry, call, d_out, d_s):
        """What a candidate (call() -> (images, scores)) changes in the default's results on all n images:
        a faster configuration can become the default only if it gives the same bytes (and scores to
        float rounding)."""
        try:
            out, s = call()
            if d_out is not None:
                d = (out.int() - d_out.int()).abs()
                entry["bytes_max_diff_vs_default"] = int(d.max())
                entry["bytes_frac_diff_vs_default"] = float((d > 0).double().mean())
            entry["ssim_max_abs_diff_vs_default"] = float((s - d_s).abs().max())
        except Exception as e:
            entry["parity_error"] = f"{type(e).__name__}: {e}"

    # -- Triton fused kernel: the default configuration, then the candidates (and what each changes)
    run(tm, "triton", fused)
    d_out, d_s = fused() if "triton" in tm else (None, None)
    for name, cfg in list(CANDIDATES.items())[:args.max_candidates]:
        run(tm, f"triton_{name}", lambda cfg=cfg: fused(cfg))
        if f"triton_{name}" in tm and d_s is not None:
            same_as_default(tm[f"triton_{name}"], lambda cfg=cfg: fused(cfg), d_out, d_s)
    del d_out, d_s
    if not args.quick:
        run(tm, "triton_ieee", lambda: fused(dataclasses.replace(kds.DEFAULT, dot="ieee")))
    # -- the torch backend on the same device (the reference)
    run(tm, "torch_backend", lambda: ref.distort_and_score(x, SIGMA, VAR, SEED, ids, True))

    # -- parity of the fused kernel with the reference on all n images
    out, s = fused()
    r_out, r_s = ref.distort_and_score(x, SIGMA, VAR, SEED, ids, True)
    d = (out.int() - r_out.int()).abs()
    res["parity_vs_torch_backend"] = {
        "bytes_max_diff": int(d.max()), "bytes_frac_diff": float((d > 0).double().mean()),
        "ssim_max_abs_diff_vs_reference_pipeline": float((s - r_s).abs().max()),
        "ssim_max_abs_diff_same_bytes": float((s - ref.ssim(x, out)).abs().max()),
        "ssim_mean": float(s.mean()),
    }
    del out, r_out, d

    # -- third-party pipelines: the same work (blur, noise, round to 8 bits, SSIM vs pristine)
    xf = planes(x, torch.float32).reshape(n, 3, 32, 32)
    z = normals(SEED, ids, 32, 32).permute(0, 3, 1, 2).contiguous()
    win = 2 * int(4.0 * SIGMA + 0.5) + 1

    def q8(v):
        return torch.round(v.clamp(0, 1) * 255) / 255

    kornia = _try_import("kornia")
    if not isinstance(kornia, str):
        def kornia_pipe():
            y = q8(kornia.filters.gaussian_blur2d(xf, (win, win), (SIGMA, SIGMA), border_type="replicate") + std * z)
            return kornia.metrics.ssim(xf, y, 11, max_val=1.0, padding="valid").mean(dim=(1, 2, 3))
        run(tm, "kornia", kornia_pipe)
        run(res["ssim_only"], "kornia",
            lambda: kornia.metrics.ssim(xf, xf, 11, max_val=1.0, padding="valid").mean(dim=(1, 2, 3)))
    else:
        res["errors"]["kornia"] = kornia

    def torch_blur_noise():
        return q8(gaussian_blur(xf, SIGMA, 4.0, mode="nearest") + std * z)

    msssim = _try_import("pytorch_msssim")
    if not isinstance(msssim, str):
        run(tm, "pytorch_msssim(+torch blur)",
            lambda: msssim.ssim(xf, torch_blur_noise(), data_range=1.0, size_average=False, win_size=11, win_sigma=1.5))
        run(res["ssim_only"], "pytorch_msssim",
            lambda: msssim.ssim(xf, xf, data_range=1.0, size_average=False, win_size=11, win_sigma=1.5))
    else:
        res["errors"]["pytorch_msssim"] = msssim

    tmetrics = _try_import("torchmetrics.functional") if not args.quick else "skipped (--quick)"
    if not isinstance(tmetrics, str):
        def tm_pipe():
            return tmetrics.structural_similarity_index_measure(
                xf, torch_blur_noise(), gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0,
                reduction="none")
        run(tm, "torchmetrics(+torch blur)", tm_pipe)
    else:
        res["errors"]["torchmetrics"] = tmetrics

    for mod in ("fused_ssim", "fussim"):
        fs = _try_import(mod) if not args.quick else "skipped (--quick)"
        if isinstance(fs, str):
            res["errors"][mod] = fs
            continue
        f = getattr(fs, "fused_ssim", None) or getattr(fs, "ssim", None)
        if f is None or dev.type != "cuda":
            res["errors"][mod] = "no fused_ssim/ssim function, or not on CUDA"
            continue
        run(tm, f"{mod}(+torch blur)", lambda f=f: f(torch_blur_noise(), xf, padding="valid", train=False))

    # -- SSIM only (images distorted elsewhere, e.g. JPEG): the fused kernel's score-only mode
    y8 = ref.distort_and_score(x, SIGMA, VAR, SEED, ids, False)[0]
    run(res["ssim_only"], "triton", score_only)
    d_s = score_only()[1] if "triton" in res["ssim_only"] else None
    for name in SSIM_ONLY_CANDIDATES[:args.max_candidates]:
        cfg = CANDIDATES[name]
        run(res["ssim_only"], f"triton_{name}", lambda cfg=cfg: score_only(cfg))
        if f"triton_{name}" in res["ssim_only"] and d_s is not None:
            same_as_default(res["ssim_only"][f"triton_{name}"], lambda cfg=cfg: score_only(cfg), None, d_s)
    run(res["ssim_only"], "torch_backend", lambda: ref.ssim(x, y8))

    base = tm.get("triton", {}).get("median_s")
    for t in tm.values():
        t["triton_speedup"] = (t["median_s"] / base) if base else None
    best = min((v["median_s"], k) for k, v in tm.items() if k.startswith("triton"))
    res["best_triton"] = {"config": best[1], "ms": best[0] * 1e3, "images_per_s": n / best[0],
                          **{k: v for k, v in tm[best[1]].items() if k.endswith("_vs_default")}}
    so = [(v["median_s"], k) for k, v in res["ssim_only"].items() if k.startswith("triton")]
    if so:
        res["best_triton_ssim_only"] = {"config": min(so)[1], "ms": min(so)[0] * 1e3}
    for peer in ("kornia", "pytorch_msssim(+torch blur)"):
        if peer in tm:
            res["best_triton"][f"x_{peer.split('(')[0]}"] = tm[peer]["median_s"] / best[0]
    res["adopt"] = adoption(tm, bytes_must_match=True)
    res["adopt_ssim_only"] = adoption(res["ssim_only"], bytes_must_match=False)
    return res


ADOPT_MIN_SPEEDUP = 1.03
"""A candidate replaces the default only if at least this much faster (timings vary by ~1-2% between runs)."""
ADOPT_SSIM_TOL = 2e-6
"""Scores "match" within float32 rounding of a differently ordered sum: a few ulps of values in [0, 1]."""


def adoption(table, *, bytes_must_match):
    """The candidate configuration to adopt as the fused kernel's DEFAULT: the fastest one at least
    ADOPT_MIN_SPEEDUP faster than the default whose images are the default's bytes exactly (0 bytes differ)
    and whose SSIM scores equal the default's within ADOPT_SSIM_TOL; None (with the reason) otherwise. The
    benchmark only says so: the change is made in iqals_fast/kernels/distort_and_score.py, by hand."""
    base = table.get("triton", {}).get("median_s")
    if not base:
        return {"config": None, "why": "the default configuration was not timed"}
    ok, rejected = [], {}
    for name, t in table.items():
        if not name.startswith("triton_") or name == "triton_ieee":
            continue
        speedup = base / t["median_s"]
        same_bytes = not bytes_must_match or t.get("bytes_max_diff_vs_default") == 0
        same_scores = t.get("ssim_max_abs_diff_vs_default", float("inf")) <= ADOPT_SSIM_TOL
        if speedup >= ADOPT_MIN_SPEEDUP and same_bytes and same_scores:
            ok.append((speedup, name))
        elif speedup >= ADOPT_MIN_SPEEDUP:
            rejected[name] = {"speedup": speedup, "bytes_max_diff": t.get("bytes_max_diff_vs_default"),
                              "ssim_max_abs_diff": t.get("ssim_max_abs_diff_vs_default"), **(
                                  {"parity_error": t["parity_error"]} if "parity_error" in t else {})}
    if not ok:
        return {"config": None, "why": f"no candidate is {ADOPT_MIN_SPEEDUP}x the default with the same bytes and "
                                       "scores", "faster_but_different": rejected}
    speedup, name = max(ok)
    return {"config": name.removeprefix("triton_"), "speedup_vs_default": speedup,
            "faster_but_different": rejected}


def graphed(step, dev, per_graph=1):
    """Capture step() (forward + backward) `per_graph` times in a row in one CUDA graph, after a
    warm-up on a side stream; returns (graph, the last step's static outputs)."""
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        for _ in range(3):  # compiles, allocates the kernel's scratch, warms the allocator
            step()
    torch.cuda.current_stream(dev).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(per_graph):
            out = step()
    torch.cuda.synchronize(dev)
    return graph, out


def step_loss(ctx):
    from iqals_fast.ops import reference as ref
    from iqals_fast.ops import triton as tbk

    args, dev = ctx["args"], ctx["device"]
    k = 10
    res = {"k": k, "by_batch": {}, "graphed": {}, "graphed_per_graph": args.graph_steps,
           "graphed_amortized": {}, "errors": {}}
    for b in args.loss_batches:
        g = torch.Generator(device="cpu").manual_seed(b)
        z = (torch.randn(b, k, generator=g) * 3).to(dev).requires_grad_()
        y = torch.randint(0, k, (b,), generator=g).to(dev)
        t = torch.rand(b, generator=g).to(dev)

        def step(fn, z=z, y=y, t=t):
            loss = fn(z, y, t)
            return torch.autograd.grad(loss, z)[0]

        fns = {
            "eager": ref.soft_label_mse,
            "triton": tbk.soft_label_mse,
            "triton_custom_op": lambda a, b_, c: tbk.soft_label_mse_op(a, b_, c, True)[0],
        }
        inner = (50 if b <= 10000 else 10) if dev.type == "cuda" else 1
        row = {}
        ref_grad = step(fns["eager"])
        # -- Python-dispatched: each step from Python
        for name, fn in fns.items():
            try:
                gr = step(fn)
                err = float((gr - ref_grad).abs().max())
                row[name] = {**timeit(lambda fn=fn: step(fn), dev, warmup=args.warmup, repeats=args.repeats,
                                      inner=inner), "grad_max_abs_diff": err}
            except Exception as e:
                res["errors"][f"{name}@{b}"] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
        for name in row:
            if "eager" in row:
                row[name]["speedup_vs_eager"] = row["eager"]["median_s"] / row[name]["median_s"]
        res["by_batch"][str(b)] = row
        # -- graphed: forward + backward captured once, replayed (CUDA only)
        if dev.type != "cuda":
            continue
        # one step per graph (each replay pays the graph launch), then args.graph_steps steps per
        # graph: the time per step is the kernels' own, as inside a larger graphed training step
        for key, per_graph in (("graphed", 1), ("graphed_amortized", args.graph_steps)):
            grow = {}
            for name in ("eager", "triton"):
                try:
                    graph, gr = graphed(lambda fn=fns[name]: step(fn), dev, per_graph)
                    graph.replay()
                    err = float((gr - ref_grad).abs().max())
                    t = timeit(graph.replay, dev, warmup=args.warmup, repeats=args.repeats,
                               inner=max(1, inner * 4 // per_graph))
                    t["median_s"] /= per_graph
                    t["min_s"] /= per_graph
                    grow[name] = {**t, "steps_per_replay": per_graph, "grad_max_abs_diff": err}
                    del graph
                except Exception as e:
                    res["errors"][f"{key}_{name}@{b}"] = f"{type(e).__name__}: {e}"
                    traceback.print_exc()
            if "eager" in grow and "triton" in grow:
                grow["triton"]["speedup_vs_eager"] = grow["eager"]["median_s"] / grow["triton"]["median_s"]
            res[key][str(b)] = grow
    return res


STEPS = {"env": step_env, "images": step_images, "distort": step_distort, "loss": step_loss}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


NAMES = ("eager", "triton", "triton_custom_op")


def print_table(results):
    env = results.get("env", {})
    print(f"\n# {env.get('device_name')}  torch {env.get('torch')}  triton {env.get('triton')}")
    d = results.get("distort")
    if isinstance(d, dict) and "timings" in d:
        print(f"\nblur({SIGMA}) + noise({VAR}) + SSIM, {d['n']} images (median of repeats)")
        print("default config:", d.get("default_config"), " best:", d.get("best_triton"))
        print(f"{'implementation':34s} {'ms':>10s} {'images/s':>14s} {'x slower than triton':>22s}"
              f" {'bytes != default':>17s} {'max |dSSIM|':>12s}")
        for name, t in sorted(d["timings"].items(), key=lambda kv: kv[1]["median_s"]):
            ratio = t.get("triton_speedup") or 0
            par = (f" {t['bytes_frac_diff_vs_default']:17.2e} {t['ssim_max_abs_diff_vs_default']:12.2e}"
                   if "bytes_frac_diff_vs_default" in t else "")
            print(f"{name:34s} {t['median_s'] * 1e3:10.3f} {t['images_per_s']:14.0f} {ratio:22.1f}{par}")
        print("SSIM only:", ", ".join(f"{k} {v['median_s'] * 1e3:.3f} ms" for k, v in d["ssim_only"].items()))
        print("parity vs torch backend:", d.get("parity_vs_torch_backend"))
        for key in ("adopt", "adopt_ssim_only"):
            if d.get(key):
                print(f"{key}:", d[key])
        if d.get("errors"):
            print("skipped/errors:", d["errors"])
    lo = results.get("loss")
    if isinstance(lo, dict) and "by_batch" in lo:
        print(f"\nsoft-label MSE forward + backward, K = {lo['k']} (microseconds per step)")
        print(f"{'B':>7s} {'eager':>10s} {'triton':>10s} {'speedup':>8s} {'custom op':>10s} {'speedup':>8s}")
        for b, row in lo["by_batch"].items():
            us = {nm: row[nm]["median_s"] * 1e6 if nm in row else float("nan") for nm in NAMES}
            sp = {nm: row[nm].get("speedup_vs_eager", float("nan")) if nm in row else float("nan") for nm in NAMES}
            print(f"{b:>7s} {us['eager']:10.1f} {us['triton']:10.1f} {sp['triton']:8.2f} "
                  f"{us['triton_custom_op']:10.1f} {sp['triton_custom_op']:8.2f}")
        for key, title in (("graphed", "one step per CUDA graph replay (the replay's launch included)"),
                           ("graphed_amortized", f"{lo.get('graphed_per_graph')} steps per CUDA graph replay "
                                                 "(the kernels' own time)")):
            if not lo.get(key):
                continue
            print(f"\nthe same, forward + backward captured in a CUDA graph: {title}; microseconds per step")
            print(f"{'B':>7s} {'eager':>10s} {'triton':>10s} {'speedup':>8s}")
            for b, row in lo[key].items():
                e = row.get("eager", {}).get("median_s", float("nan")) * 1e6
                tr = row.get("triton", {}).get("median_s", float("nan")) * 1e6
                print(f"{b:>7s} {e:10.2f} {tr:10.2f} {row.get('triton', {}).get('speedup_vs_eager', float('nan')):8.2f}")
        if lo.get("errors"):
            print("errors:", lo["errors"])
    for name, v in results.items():
        if isinstance(v, dict) and "error" in v:
            print(f"step {name} FAILED: {v['error']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--n", type=int, default=50000, help="number of CIFAR-10 training images")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "results"))
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {list(STEPS)}")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--loss-batches", default="100,1000,10000,65536")
    p.add_argument("--graph-steps", type=int, default=20,
                   help="loss steps captured per CUDA graph in the amortized graphed regime")
    p.add_argument("--max-candidates", type=int, default=None,
                   help="time only the first N candidate configurations (a CPU dry run: each takes a minute there)")
    p.add_argument("--tiny", action="store_true", help="CPU dry run: 1 warm-up, 2 repeats, small loss batches")
    p.add_argument("--quick", action="store_true",
                   help="only what the targets need: no torchmetrics / fused-ssim / IEEE-dot timings")
    args = p.parse_args(argv)
    args.loss_batches = [int(v) for v in args.loss_batches.split(",")]
    if args.tiny:
        args.warmup, args.repeats, args.loss_batches = 1, 2, [100, 1000]
    dev = torch.device(args.device)
    if dev.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        p.error("on CPU the Triton kernels need TRITON_INTERPRET=1 (set before starting Python)")
    ctx = {"args": args, "device": dev}
    results = {"argv": sys.argv[1:], "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = None

    def save():  # the JSON, replaced atomically: a run cut short keeps what it measured
        nonlocal path
        if path is None:
            tag = results.get("env", {}).get("device_name", dev.type).replace(" ", "_").replace("/", "_")
            path = out / f"gpu_bench_{tag}_{time.strftime('%Y%m%d-%H%M%S')}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=2, default=str))
        os.replace(tmp, path)

    for name in args.steps.split(","):
        if name not in STEPS:
            p.error(f"unknown step {name!r}; known: {list(STEPS)}")
        t0 = time.perf_counter()
        print(f"--- step {name}", flush=True)

        def checkpoint(partial, name=name):  # a step's results so far, saved (it may be cut short)
            results[name] = {**partial, "partial": True}
            save()

        ctx["checkpoint"] = checkpoint
        try:
            results[name] = STEPS[name](ctx)
        except Exception as e:  # record and go on: the other steps still run
            traceback.print_exc()
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        results[name]["step_seconds"] = time.perf_counter() - t0
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        save()
    print_table(results)
    print(f"\nwrote {path}")
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
