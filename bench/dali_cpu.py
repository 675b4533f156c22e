"""The DALI CPU path against the plain path on this machine: JPEG cache build, decoding, epoch data.

    python bench/dali_cpu.py [--data ../shared/data/cifar10-jpeg.tar.gz] [--n 5000] [--repeats 5]
                             [--out bench/results]

Uses the first ``--n`` training images of the class-folder archive (``n / 10`` per class, or
``synthetic`` data where the archive is absent). Every timing is repeated ``--repeats`` times after
a warm-up; the table gives the best and the median (the machine may be shared). Writes
``dali-cpu-<machine>.json`` / ``.md`` into ``--out``. Checks, before timing, that both paths give
the same bytes and scores.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
from _timing import timed  # bench/ is sys.path[0] when run as a script
from PIL import Image

import iqals_fast as iq
from iqals_fast.config import KINDS, LEVELS
from iqals_fast.data import dali
from iqals_fast.data.mixture import DistortionCache, epoch_data, epoch_plan
from iqals_fast.data.sources import synthetic


def machine() -> tuple[str, str, int]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    cores = os.cpu_count() or 1
    slug = "-".join(model.lower().replace("(r)", "").replace("(tm)", "").split()[:2]) + f"-{cores}c"
    return model, slug, cores


def read_archive(path: Path, n: int) -> tuple[np.ndarray, np.ndarray, dict[str, list[tuple[str, bytes]]]]:
    """The first n / 10 training files of each class: decoded (PIL) images, labels and raw bytes."""
    per = n // 10
    raw: dict[str, list[tuple[str, bytes]]] = {}
    with tarfile.open(path, "r:gz") as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) >= 3 and parts[-3] == "train":
                lst = raw.setdefault(parts[-2], [])
                if len(lst) < per:
                    lst.append((parts[-1], tar.extractfile(m).read()))
    for c in raw:
        raw[c].sort()
    classes = sorted(raw)
    x = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for c in classes for _, b in raw[c]])
    y = np.repeat(np.arange(len(classes)), [len(raw[c]) for c in classes])
    return x, y, raw


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz"))
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10, help="epochs in the whole-run comparison")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    if not dali.available():
        sys.exit("NVIDIA DALI is not installed: pip install nvidia-dali-cuda120")

    data = Path(args.data)
    if data.is_file():
        x, _, raw = read_archive(data, args.n)
        source = f"{data} (first {args.n // 10} training images per class)"
    else:
        x, raw = synthetic(args.n, 10).train_x, None
        source = "synthetic"
    n = len(x)
    model, slug, cores = machine()
    rows: list[tuple[str, float, float]] = []  # (what, best s, median s)

    def add(what, fn):
        best, med = timed(fn, args.repeats)
        rows.append((what, best, med))
        print(f"{what}: best {best * 1e3:.1f} ms, median {med * 1e3:.1f} ms", flush=True)

    # 1. JPEG alone and the whole JPEG cache (3 levels, JPEG + SSIM), plain (PIL) vs DALI CPU
    for q in LEVELS.jpeg:
        assert np.array_equal(dali.jpeg(x, q), iq.distort(x, "jpeg", param=q, backend="torch")), q
    add("JPEG q=8, PIL thread pool (plain path)", lambda: iq.distort(x, "jpeg", param=8, backend="torch"))
    add("JPEG q=8, DALI CPU", lambda: dali.jpeg(x, 8, device="cpu"))
    add("JPEG cache, 3 levels + SSIM, plain (DistortionCache)",
        lambda: [DistortionCache(x).get("jpeg", lvl, np.arange(n), 0) for lvl in (1, 2, 3)])
    add("JPEG cache, 3 levels + SSIM, DALI CPU (DaliDistortionCache)",
        lambda: [dali.DaliDistortionCache(x).get("jpeg", lvl, np.arange(n), 0) for lvl in (1, 2, 3)])

    # 2. decoding the JPEG files: PIL (as sources.load, thread pool) vs DALI's file reader + decoder
    if raw is not None:
        from concurrent.futures import ThreadPoolExecutor

        from iqals_fast.data.sources import _decode

        blobs = [b for c in sorted(raw) for _, b in raw[c]]
        with tempfile.TemporaryDirectory() as tmp:
            for c, files in raw.items():
                d = Path(tmp) / "train" / c
                d.mkdir(parents=True)
                for name, b in files:
                    (d / name).write_bytes(b)

            def pil_decode():
                with ThreadPoolExecutor(cores) as pool:
                    return np.stack(list(pool.map(lambda b: _decode(b, "bench"), blobs)))

            assert np.array_equal(dali.read_split(tmp, "train")[0], pil_decode())
            add("decode files, PIL thread pool (plain path)", pil_decode)
            add("decode files, DALI file reader + CPU decoder", lambda: dali.read_split(tmp, "train"))

    # 3. epoch data over a short run: blur/JPEG once (precompute) or only the chosen images each epoch
    for strategy, kinds in ((7, ("jpeg",)), (9, KINDS)):
        plans = [epoch_plan(n, kinds, 0, e) for e in range(args.epochs)]
        a = epoch_data(DistortionCache(x), plans[0])
        b = dali.dali_epoch_data(dali.DaliDistortionCache(x), plans[0])
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])

        def run(make, fn=dali.dali_epoch_data, plans=plans):
            c = make()
            for p in plans:
                fn(c, p)

        add(f"strategy {strategy}, {args.epochs} epochs of data, plain (cached blur/JPEG)",
            lambda: run(lambda: DistortionCache(x), epoch_data))
        add(f"strategy {strategy}, {args.epochs} epochs of data, DALI, cached blur/JPEG",
            lambda: run(lambda: dali.DaliDistortionCache(x)))
        add(f"strategy {strategy}, {args.epochs} epochs of data, DALI, chosen images only each epoch",
            lambda: run(lambda: dali.DaliDistortionCache(x, precompute=False)))

    import nvidia.dali as nd

    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())

    head = (f"{model}, {cores} cores (`lscpu`); torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"nvidia-dali {nd.__version__}, Python {platform.python_version()}\n\n"
            f"Data: {n} real CIFAR-10 images, {source}.\n\n"
            f"Command: `python bench/dali_cpu.py --n {args.n} --repeats {args.repeats} --epochs {args.epochs}`; "
            f"best and median of {args.repeats} runs after a warm-up (shared machine: the best is the "
            "least disturbed). Both paths were checked to give identical bytes and scores first. "
            f"Load average at the end (1 / 5 / 15 min): {load}.\n")
    lines = [f"# DALI CPU path vs plain path\n\n{head}", "| what | best ms | median ms | images/s (best) |",
             "|---|---:|---:|---:|"]
    for what, best, med in rows:
        per = n * (3 if "3 levels" in what else args.epochs if "epochs" in what else 1)
        lines.append(f"| {what} | {best * 1e3:,.1f} | {med * 1e3:,.1f} | {per / best:,.0f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"dali-cpu-{slug}.md").write_text("\n".join(lines) + "\n")
    (out / f"dali-cpu-{slug}.json").write_text(json.dumps(
        {"machine": model, "cores": cores, "n": n, "source": source, "repeats": args.repeats,
         "rows": [{"what": w, "best_s": b, "median_s": m} for w, b, m in rows]}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
