"""CPU benchmark: the cpu backend (C++) against its peers, side by side in one process.

Operations, on the same real CIFAR-10 test images (default 2,000: the first 200 of each class):
  blur+noise+SSIM   Gaussian blur sigma 1.0, then noise of variance 0.01, rounded to uint8, then SSIM
  noise+SSIM        noise of variance 0.01, rounded, then SSIM
  SSIM              SSIM alone, of each image against its JPEG (quality 8) copy
Contenders: the cpu backend; the torch backend (iqals_fast's reference); scikit-image, one image at a
time (filters.gaussian, util.random_noise, metrics.structural_similarity); kornia, batched
(filters.gaussian_blur2d, metrics.ssim with padding="valid"); pytorch-msssim's ssim, with the blur
and noise in plain PyTorch. Each gets uint8 images and returns distorted uint8 images and per-image
SSIM, conversions included. Torch-based contenders use torch's threads, the cpu backend as many.

Timing: `--rounds` rounds after a warm-up call; each round times every contender in turn, so that
load from other processes on the machine falls on all of them alike, and repeats a fast
contender's call to last at least MIN_ROUND_S (time per call = round time / calls). Reported:
images/s of the median round (and of the best), and the cpu backend's ratio to each peer.

    python bench/compare_cpu.py                       # writes bench/results/cpu-<machine>.{json,md}
    python bench/compare_cpu.py --n 500 --rounds 3 --no-write

bench/test_bench_ops.py times the same contenders with pytest-benchmark.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import math
import os
import platform
import re
import statistics
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import iqals_fast as iq
from iqals_fast.config import BLUR_TRUNCATE, SSIM, gaussian_taps

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = Path(os.environ.get("IQALS_CIFAR_JPEG", ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
RESULTS = Path(__file__).resolve().parent / "results"
SIGMA, VAR, JPEG_QUALITY, SEED = 1.0, 0.01, 8, 2024
MIN_ROUND_S = 0.25  # a fast contender repeats its call within a round to run at least this long

OPS = {
    "blur+noise+SSIM": dict(sigma=SIGMA, var=VAR),
    "noise+SSIM": dict(sigma=None, var=VAR),
    "SSIM": dict(ssim_only=True),
}


# --- data ---------------------------------------------------------------------------------------

def load_images(n: int, archive: Path = ARCHIVE) -> np.ndarray:
    """The first n test images of the CIFAR-10 JPEG archive, classes interleaved: uint8 n x 32 x 32 x 3."""
    from PIL import Image

    per_class = -(-n // 10)
    found: dict[str, list[tuple[str, bytes]]] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) >= 3 and parts[-3] == "test" and parts[-1].endswith(".jpg"):
                found.setdefault(parts[-2], []).append((parts[-1], tar.extractfile(m).read()))
    lists = [sorted(found[c])[:per_class] for c in sorted(found)]
    images = []
    for i in range(per_class):
        for lst in lists:
            if i < len(lst):
                with Image.open(io.BytesIO(lst[i][1])) as im:
                    images.append(np.asarray(im.convert("RGB")))
    return np.stack(images[:n])


def prepare(x: np.ndarray) -> dict:
    """Every contender's input, built once: the images (numpy and torch) and their JPEG copies."""
    y = iq.distort(x, "jpeg", param=JPEG_QUALITY)
    return {"x": x, "t": torch.from_numpy(x), "jpeg": y, "tjpeg": torch.from_numpy(y)}


# --- contenders ---------------------------------------------------------------------------------

def iqals(backend):
    def run(d, sigma=None, var=None, ssim_only=False):
        if ssim_only:
            return iq.ssim(d["t"], d["tjpeg"], backend=backend)
        kind, p = ("blur+noise", (sigma, var)) if sigma else ("noise", var)
        return iq.distort_and_score(d["t"], kind, param=p, seed=SEED, backend=backend)

    return run


def skimage_loop(d, sigma=None, var=None, ssim_only=False):
    from skimage.filters import gaussian
    from skimage.metrics import structural_similarity
    from skimage.util import random_noise

    rng = np.random.default_rng(SEED)
    x = d["x"]
    out, scores = np.empty_like(x), np.empty(len(x))
    for i, im in enumerate(x):
        ref = im / 255.0
        if ssim_only:
            dist = d["jpeg"][i] / 255.0
        else:
            f = gaussian(ref, sigma=sigma, channel_axis=-1, mode="nearest", truncate=BLUR_TRUNCATE) if sigma else ref
            f = random_noise(f, mode="gaussian", var=var, rng=rng)  # clips to [0, 1]
            out[i] = np.round(f * 255)
            dist = out[i] / 255.0
        scores[i] = structural_similarity(ref, dist, channel_axis=-1, data_range=1.0, gaussian_weights=True,
                                          sigma=SSIM.sigma, use_sample_covariance=False)
    return out, scores


def _planes(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2).float() / 255.0


def _noisy_rounded(y: torch.Tensor, var: float, gen: torch.Generator) -> torch.Tensor:
    y = y + var**0.5 * torch.randn(y.shape, generator=gen)
    return torch.round(y.clamp(0, 1) * 255) / 255


def kornia_batched(d, sigma=None, var=None, ssim_only=False):
    import kornia

    x = _planes(d["t"])
    if ssim_only:
        y = _planes(d["tjpeg"])
    else:
        y = x
        if sigma:
            k = 2 * int(BLUR_TRUNCATE * sigma + 0.5) + 1
            y = kornia.filters.gaussian_blur2d(y, (k, k), (sigma, sigma), border_type="replicate")
        y = _noisy_rounded(y, var, torch.Generator().manual_seed(SEED))
    # kornia's window: 11 taps, sigma 1.5, as SSIMConfig; "valid" = skimage's crop
    return y, kornia.metrics.ssim(x, y, SSIM.win, max_val=1.0, padding="valid").mean(dim=(1, 2, 3))


def msssim_torch(d, sigma=None, var=None, ssim_only=False):
    import pytorch_msssim

    x = _planes(d["t"])
    if ssim_only:
        y = _planes(d["tjpeg"])
    else:
        y = x
        if sigma:  # separable depthwise convolution, edge pixels replicated
            k = torch.tensor(gaussian_taps(sigma, BLUR_TRUNCATE), dtype=torch.float32)
            r = (len(k) - 1) // 2
            y = F.pad(y, (r, r, r, r), mode="replicate")
            y = F.conv2d(y, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
            y = F.conv2d(y, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
        y = _noisy_rounded(y, var, torch.Generator().manual_seed(SEED))
    return y, pytorch_msssim.ssim(x, y, data_range=1.0, size_average=False, win_size=SSIM.win, win_sigma=SSIM.sigma)


CONTENDERS = {
    "cpu": iqals("cpu"),
    "torch": iqals("torch"),
    "scikit-image": skimage_loop,
    "kornia": kornia_batched,
    "pytorch-msssim": msssim_torch,
}
PEERS = [c for c in CONTENDERS if c != "cpu"]


# --- machine ------------------------------------------------------------------------------------

def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for dist in ("iqals-fast", "torch", "numpy", "scikit-image", "kornia", "pytorch-msssim", "pillow"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    from iqals_fast import _C

    return {"cpu_model": model, "logical_cores": os.cpu_count(), "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(), "kernels_isa": _C.isas()[0], "versions": versions}


def machine_label(m: dict) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", m["cpu_model"].lower()).strip("-")
    slug = re.sub(r"-(\d+)-core-processor$|-processor$", "", slug)
    return f"{slug}-{m['logical_cores']}c"


# --- measurement --------------------------------------------------------------------------------

def measure(data: dict, ops: dict, contenders: dict, rounds: int, log=print) -> dict:
    n = len(data["x"])
    results = {}
    for op, kw in ops.items():
        times = {c: [] for c in contenders}
        calls = {}
        for c, fn in contenders.items():  # warm-up (imports, caches, thread pools), then calls per round
            fn(data, **kw)
            t0 = time.perf_counter()
            fn(data, **kw)
            calls[c] = max(1, math.ceil(MIN_ROUND_S / (time.perf_counter() - t0)))
        for _ in range(rounds):
            for c, fn in contenders.items():
                t0 = time.perf_counter()
                for _ in range(calls[c]):
                    fn(data, **kw)
                times[c].append((time.perf_counter() - t0) / calls[c])
        rows = {}
        for c, ts in times.items():
            rows[c] = {"seconds": ts, "median_s": statistics.median(ts), "best_s": min(ts),
                       "images_per_s": n / statistics.median(ts), "best_images_per_s": n / min(ts)}
        if "cpu" in rows:
            for c in rows:
                rows[c]["cpu_ratio"] = rows["cpu"]["images_per_s"] / rows[c]["images_per_s"]
        results[op] = rows
        log(f"{op}: " + ", ".join(f"{c} {r['images_per_s']:,.0f}/s" for c, r in rows.items()))
    return results


def markdown(results: dict, m: dict, n: int, rounds: int, load: tuple) -> str:
    lines = [f"# CPU backend vs peers on {n:,} real CIFAR-10 test images", "",
             f"Machine: {m['cpu_model']}, {m['logical_cores']} logical cores; torch threads {m['torch_threads']}; "
             f"kernels: {m['kernels_isa']}. Load average before/after: {load[0]:.2f} / {load[1]:.2f}.",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
             f"Median of {rounds} rounds (each round runs every contender in turn, for at least {MIN_ROUND_S} s); "
             "best round in the next column.",
             "Ratio = cpu backend images/s / contender images/s.", ""]
    targets = [("blur+noise+SSIM", "kornia", 25), ("blur+noise+SSIM", "scikit-image", 60), ("SSIM", "scikit-image", 40)]
    checks = [f"{op} >= {goal}x {peer}: {results[op][peer]['cpu_ratio']:.1f}x "
              f"({'met' if results[op][peer]['cpu_ratio'] >= goal else 'NOT met'})"
              for op, peer, goal in targets if op in results and peer in results[op] and "cpu" in results[op]]
    if checks:
        lines += ["Targets of issue 3: " + "; ".join(checks) + ".", ""]
    for op, rows in results.items():
        lines += [f"## {op}", "", "| contender | images/s (median) | images/s (best) | cpu backend ratio |",
                  "|---|---:|---:|---:|"]
        for c, r in rows.items():
            ratio = "1" if c == "cpu" else f"{r['cpu_ratio']:.1f}x"
            lines.append(f"| {c} | {r['images_per_s']:,.0f} | {r['best_images_per_s']:,.0f} | {ratio} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="images (default 2000)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of: "
                    + ", ".join(CONTENDERS))
    ap.add_argument("--label", help="machine label for the result files (default: from the CPU model)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    chosen = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CONTENDERS]
    if unknown:
        ap.error(f"unknown contenders {unknown}; choose from {list(CONTENDERS)}")
    if not ARCHIVE.is_file():
        ap.error(f"CIFAR-10 archive not found at {ARCHIVE} (set IQALS_CIFAR_JPEG)")

    m = machine()
    data = prepare(load_images(args.n))
    load0 = os.getloadavg()[0]
    results = measure(data, OPS, {c: CONTENDERS[c] for c in chosen}, args.rounds)
    load1 = os.getloadavg()[0]
    md = markdown(results, m, len(data["x"]), args.rounds, (load0, load1))
    print()
    print(md)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = RESULTS / f"cpu-{args.label or machine_label(m)}"
        record = {"machine": m, "images": len(data["x"]), "rounds": args.rounds, "load_average": [load0, load1],
                  "params": {"sigma": SIGMA, "var": VAR, "jpeg_quality": JPEG_QUALITY, "seed": SEED},
                  "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": results}
        stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
        stem.with_suffix(".md").write_text(md + "\n")
        print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
