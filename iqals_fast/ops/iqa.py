"""IQA measures for IQA-LS beyond SSIM, with torch reference implementations, and their maps T into (0, 1].

The paper labels a distorted image with its SSIM and remarks that other IQA measures fit the same
framework. Here each measure ``m`` comes with a documented quality score ``q = T(m)`` in (0, 1],
q = 1 for an undistorted image, which Eq. 2 then puts on the true class (the ``--transform``
option, e.g. ``power:G``, still applies on top of q):

==================  =========================================================  ==============================
``--iqa``           measure (full reference, RGB uint8 images scaled to [0, 1])  T: quality in (0, 1]
==================  =========================================================  ==============================
``ssim``            SSIM, scikit-image's Gaussian-window SSIM (``iq.ssim``),     q = SSIM (the paper)
                    averaged over R, G, B; the fast backends compute it
``ms-ssim-small``   MS-SSIM on 3 scales (32, 16, 8 px for CIFAR), 7 x 7          q = max(MS-SSIM, 1e-6)
                    Gaussian window (sigma 1.0), weights Wang et al.'s first
                    three (0.0448, 0.2856, 0.3001) normalised to sum 1; per
                    channel, as ``piq.multi_scale_ssim``, averaged over R, G, B
``gmsd``            GMSD (Xue et al. 2013) as ``piq.gmsd``: luma (YIQ Y), 2x2   q = 1 - 2 GMSD
                    average-pool, Prewitt gradients, c = 170 / 255^2, standard
                    deviation of the gradient-magnitude-similarity map
``psnr``            PSNR over all pixels and channels (= skimage's               q = min(PSNR, 48.13 dB) / 48.13 dB
                    ``peak_signal_noise_ratio`` with data_range 1)
==================  =========================================================  ==============================

Why these, for 32 x 32 images:

- MS-SSIM's usual 5 scales with an 11-tap window need images of at least (11 - 1) * 2^4 + 1 = 161
  pixels. Three scales of a 32-pixel image need a window of at most (32 - 1) / 4 + 1 = 8.75 taps,
  so 7; sigma 1.0 keeps +-3 sigma inside those 7 taps (skimage's SSIM window keeps +-3.3 sigma).
  The coarsest scale (8 x 8) then has 2 x 2 window positions: it measures little more than the
  mean and contrast of the whole thumbnail, which is what MS-SSIM's coarsest scale is for.
- GMSD's map is a standard deviation of values in (0, 1], so GMSD < 1/2 and q = 1 - 2 GMSD lies
  in (0, 1]; q = 1 when the similarity map is flat (identical images). On 32 x 32 images GMSD works
  on a 16 x 16 luma image, after piq's 2 x 2 downsampling.
- PSNR has no upper bound (identical images: +inf). 48.13 dB = 20 log10(255) is the PSNR of an
  error of one grey level at every pixel, the resolution of an 8-bit image: at or above it q = 1.
  PSNR is far harsher than SSIM on blur (level 1 gives q ~ 0.6 where SSIM gives ~ 0.93): its
  labels are much softer.

All computations run in float32 on the images' device. The ``torch`` reference is the only
backend for the non-SSIM measures (the ``cpu``/``triton`` backends keep SSIM).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .api import ssim
from .checks import as_images, same_shape
from .reference import planes

IQA_MEASURES = ("ssim", "ms-ssim-small", "gmsd", "psnr")

MS_SSIM_SMALL_WEIGHTS = (0.0448, 0.2856, 0.3001)
MS_SSIM_SMALL_WINDOW = 7
MS_SSIM_SMALL_SIGMA = 1.0
MS_SSIM_MIN_SIDE = (MS_SSIM_SMALL_WINDOW - 1) * 2 ** (len(MS_SSIM_SMALL_WEIGHTS) - 1) + 1  # 25
GMSD_C = 170.0 / 255.0**2
PSNR_CEILING_DB = 20.0 * math.log10(255.0)  # 48.13 dB: one grey level of error everywhere
Q_FLOOR = 1e-6
_K1, _K2 = 0.01, 0.03


def check_measure(measure: str) -> str:
    if measure not in IQA_MEASURES:
        raise ValueError(f"unknown IQA measure {measure!r}: choose one of {', '.join(IQA_MEASURES)}")
    return measure


def _pair(reference, distorted, min_side: int):
    x, back = as_images(reference, "reference", min_side=min_side)
    y, _ = as_images(distorted, "distorted", min_side=min_side)
    same_shape(x, y, "reference", "distorted")
    return planes(x, torch.float32), planes(y, torch.float32), back


def _gauss2d(size: int, sigma: float, device) -> torch.Tensor:
    c = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2.0
    g = torch.exp(-(c**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).to(torch.float32)


def ms_ssim_small_planes(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MS-SSIM of N x C x H x W planes on [0, 1] -> N (see the module docstring)."""
    n, c = x.shape[:2]
    w = torch.tensor(MS_SSIM_SMALL_WEIGHTS, dtype=torch.float32, device=x.device)
    w = w / w.sum()
    k = _gauss2d(MS_SSIM_SMALL_WINDOW, MS_SSIM_SMALL_SIGMA, x.device).expand(c, 1, -1, -1)
    c1, c2 = _K1**2, _K2**2
    vals = []
    for level in range(len(w)):
        if level:
            p = max(x.shape[2] % 2, x.shape[3] % 2)
            if p:
                x = F.pad(x, [p, 0, p, 0], mode="replicate")
                y = F.pad(y, [p, 0, p, 0], mode="replicate")
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        mx, my = F.conv2d(x, k, groups=c), F.conv2d(y, k, groups=c)
        vx = F.conv2d(x * x, k, groups=c) - mx * mx
        vy = F.conv2d(y * y, k, groups=c) - my * my
        vxy = F.conv2d(x * y, k, groups=c) - mx * my
        cs = (2 * vxy + c2) / (vx + vy + c2)
        if level < len(w) - 1:
            vals.append(cs.mean((-1, -2)))
        else:
            vals.append(((2 * mx * my + c1) / (mx * mx + my * my + c1) * cs).mean((-1, -2)))
    v = torch.relu(torch.stack(vals))  # levels x N x C
    return torch.prod(v ** w.view(-1, 1, 1), 0).mean(1)


def gmsd_planes(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """GMSD of N x 3 x H x W planes on [0, 1] -> N, as piq.gmsd computes it."""
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x, y = (x * luma).sum(1, keepdim=True), (y * luma).sum(1, keepdim=True)
    p = max(x.shape[2] % 2, x.shape[3] % 2)
    x, y = F.pad(x, [0, p, 0, p]), F.pad(y, [0, p, 0, p])
    x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    pw = torch.tensor([[-1.0, 0.0, 1.0]] * 3, dtype=x.dtype, device=x.device) / 3.0
    kern = torch.stack([pw, pw.t()]).unsqueeze(1)  # 2 x 1 x 3 x 3

    def mag(z):
        return torch.sqrt((F.conv2d(z, kern, padding=1) ** 2).sum(1))

    gx, gy = mag(x), mag(y)
    gms = (2 * gx * gy + GMSD_C) / (gx * gx + gy * gy + GMSD_C)
    return gms.flatten(1).std(1, unbiased=False)


def psnr_planes(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of N x C x H x W planes on [0, 1] -> N; +inf for identical images."""
    mse = ((x.double() - y.double()) ** 2).flatten(1).mean(1)
    return (10.0 * torch.log10(1.0 / mse)).to(torch.float32)


_RAW = {"ms-ssim-small": (ms_ssim_small_planes, MS_SSIM_MIN_SIDE), "gmsd": (gmsd_planes, 2), "psnr": (psnr_planes, 1)}


def iqa_measure(reference, distorted, measure: str, *, backend: str = "auto"):
    """The raw measure per image (float32, length N): SSIM, MS-SSIM, GMSD (0 = identical) or PSNR (dB).

    uint8 N x H x W x 3 images, numpy or torch; returns the input's type. ``backend`` matters for
    SSIM only (the others are torch reference code).
    """
    check_measure(measure)
    if measure == "ssim":
        return ssim(reference, distorted, backend=backend)
    fn, min_side = _RAW[measure]
    x, y, back = _pair(reference, distorted, min_side)
    return back(torch.cat([fn(x[i:i + 1024], y[i:i + 1024]) for i in range(0, len(x), 1024)]) if len(x)
                else torch.zeros(0, device=x.device))


def quality_from_measure(values, measure: str):
    """T: the raw measure -> quality q in (0, 1] (numpy or torch in, same out)."""
    check_measure(measure)
    t = torch.as_tensor(values, dtype=torch.float32)
    if measure == "ssim":
        q = t
    elif measure == "ms-ssim-small":
        q = t.clamp(Q_FLOOR, 1.0)
    elif measure == "gmsd":
        q = (1.0 - 2.0 * t).clamp(Q_FLOOR, 1.0)
    else:
        q = (t.clamp(max=PSNR_CEILING_DB) / PSNR_CEILING_DB).clamp(Q_FLOOR, 1.0)
    return q if isinstance(values, torch.Tensor) else q.numpy()


def iqa_quality(reference, distorted, measure: str, *, backend: str = "auto"):
    """q = T(measure(reference, distorted)) in (0, 1] per image: the score IQA-LS puts on the true class."""
    return quality_from_measure(iqa_measure(reference, distorted, measure, backend=backend), measure)
