"""What the benchmarks run: the images, iqals_fast's backends and the peers a user would pick instead.

Shared by bench/compare_cpu.py (the README's CPU figures) and the pytest-benchmark benchmarks in
bench/ops/ (through bench/conftest.py's fixtures). A library module, not a script: it times nothing.

Images: the CIFAR-10 test images of the shared JPEG archive (``$IQALS_CIFAR_JPEG``, default
``../shared/data/cifar10-jpeg.tar.gz``), classes interleaved; where the archive is absent, smooth
generated images of the same shape (results then say "generated").

Contenders take ``prepare(x)``'s dict and the operation's keywords (``OPS``), and return distorted
uint8 images (or None for SSIM alone) and per-image SSIM, conversions included:
  cpu / torch      iqals_fast's backends, through the public API (``iq.distort_and_score``, ``iq.ssim``)
  scikit-image     one image at a time (filters.gaussian, util.random_noise, metrics.structural_similarity)
  kornia           batched (filters.gaussian_blur2d, metrics.ssim with padding="valid" = skimage's crop)
  pytorch-msssim   its ssim, with the blur (separable depthwise convolution) and noise in plain PyTorch
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import platform
import re
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import iqals_fast as iq
from iqals_fast.config import BLUR_TRUNCATE, SSIM, gaussian_taps

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
ARCHIVE = Path(os.environ.get("IQALS_CIFAR_JPEG", ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
SIGMA, VAR, JPEG_QUALITY, SEED = 1.0, 0.01, 8, 2024

OPS = {
    "blur+noise+SSIM": dict(sigma=SIGMA, var=VAR),
    "noise+SSIM": dict(sigma=None, var=VAR),
    "SSIM": dict(ssim_only=True),
}
"""The compared operations: Gaussian blur sigma 1.0 then noise of variance 0.01, rounded to uint8
once, then SSIM; the noise alone, rounded, then SSIM; SSIM alone, of each image against its JPEG
(quality 8) copy."""


# --- images -------------------------------------------------------------------------------------

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


def generated_images(n: int, h: int = 32, w: int = 32, *, seed: int = 0) -> np.ndarray:
    """n smooth h x w colour images (random colours on a grid of 1/4 the size, upsampled, plus fine
    texture): uint8 n x h x w x 3."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(1, h // 4), max(1, w // 4), generator=g)
    coarse = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    x = 0.85 * coarse + 0.15 * torch.rand(n, 3, h, w, generator=g)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def images(n: int, data: str | Path | None = None) -> tuple[np.ndarray, str]:
    """(images, what they are): the archive's test images, or generated ones where data is "generated"
    or (data None) the archive is absent."""
    archive = ARCHIVE if data is None else Path(data)
    if str(data) != "generated" and archive.is_file():
        return load_images(n, archive), f"real CIFAR-10 test images ({archive.name})"
    if data is not None and str(data) != "generated":
        raise FileNotFoundError(f"CIFAR-10 archive not found at {archive} (set IQALS_CIFAR_JPEG, or use 'generated')")
    return generated_images(n), "generated images" + ("" if str(data) == "generated" else " (no CIFAR-10 archive)")


def prepare(x: np.ndarray) -> dict:
    """Every contender's input, built once: the images (numpy and torch) and their JPEG copies."""
    y = iq.distort(x, "jpeg", param=JPEG_QUALITY)
    return {"x": x, "t": torch.from_numpy(x), "jpeg": y, "tjpeg": torch.from_numpy(y)}


# --- contenders ---------------------------------------------------------------------------------

def iqals(backend: str):
    def run(d, sigma=None, var=None, ssim_only=False):
        if ssim_only:
            return None, iq.ssim(d["t"], d["tjpeg"], backend=backend)
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
    return (None if ssim_only else out), scores


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
"""Each contender's function; "cpu" is the one every ratio is taken against."""

PEER_MODULES = {"scikit-image": "skimage", "kornia": "kornia", "pytorch-msssim": "pytorch_msssim"}


def unavailable(contender: str) -> str | None:
    """Why a contender cannot run here (its package is missing, or the backend is not built), or None."""
    if contender in PEER_MODULES:
        import importlib.util

        return None if importlib.util.find_spec(PEER_MODULES[contender]) else f"{contender} is not installed"
    try:  # a backend runs if the public API accepts it for CPU tensors
        iq.ssim(np.zeros((1, SSIM.win, SSIM.win, 3), np.uint8), np.zeros((1, SSIM.win, SSIM.win, 3), np.uint8),
                backend=contender)
    except (ValueError, RuntimeError) as e:
        return f"backend {contender!r} cannot run on CPU here: {e}"
    return None


# --- machine ------------------------------------------------------------------------------------

def machine() -> dict:
    """The machine and the library versions a result was measured with."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for dist in ("iqals-fast", "torch", "numpy", "scikit-image", "kornia", "pytorch-msssim", "pillow",
                 "nvidia-dali-cuda120"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    try:
        from iqals_fast import _C

        isa = _C.isas()[0]
    except ImportError:
        isa = "none (C++ extension not built)"
    return {"cpu_model": model, "logical_cores": os.cpu_count(), "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(), "kernels_isa": isa, "versions": versions}


def machine_label(m: dict) -> str:
    """A file-name slug for the machine, e.g. ``amd-epyc-2c``."""
    slug = re.sub(r"[^a-z0-9]+", "-", m["cpu_model"].lower()).strip("-")
    slug = re.sub(r"-(\d+)-core-processor$|-processor$", "", slug)
    return f"{slug}-{m['logical_cores']}c"
