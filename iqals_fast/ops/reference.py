"""The torch reference of every operation: plain batched PyTorch (CPU or CUDA), backend ``torch``.

Every fast backend is tested against these functions (docs/ops.md lists which test checks what):

- blur: :func:`gaussian_blur` (separable Gaussian as banded matrices, :func:`band_matrix`);
- noise: :func:`iqals_fast.ops.noise.normals` (the Philox scheme, written once in ``noise.py``);
- rounding: :func:`to_uint8` (what an 8-bit file holds);
- :func:`distort_and_score` (blur, noise, one rounding, optionally SSIM) and :func:`ssim` (float64);
- :func:`jpeg`: PIL (libjpeg) over a thread pool (PIL releases the GIL while it encodes and decodes);
- :func:`soft_label_mse`: Eq. 1 with the Eq. 2 target;
- :func:`lrn`: TensorFlow's LRN across channels by PyTorch's composite.

The signatures are the dispatch table's (``ops/dispatch.py``): arguments already checked by the
public entry points (``ops/checks.py``).

A separable filter along one axis of length L is a matrix: ``y = A x`` with A banded. The border
rule is folded into A ("nearest": taps that fall outside are added to the edge pixel's column;
"valid": only the L - 2r rows whose window lies inside). Filtering a batch of H x W planes is then
two batched matmuls, ``A_h @ X @ A_w^T``, which BLAS runs far faster than a 1-channel conv2d.
"""

from __future__ import annotations

import functools
import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import BLUR_TRUNCATE, SSIM, gaussian_taps
from .noise import normals

CHUNK = 512  # images per step: keeps the float temporaries cache-sized on CPU


# -- blur ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=128)
def band_matrix(sigma: float, truncate: float, length: int, mode: str, dtype: torch.dtype, device: str) -> torch.Tensor:
    """The (out x length) matrix of a 1-D Gaussian filter with the border rule folded in."""
    taps = gaussian_taps(sigma, truncate)
    r = (len(taps) - 1) // 2
    if mode == "nearest":
        rows = range(length)
    elif mode == "valid":
        if length < 2 * r + 1:
            raise ValueError(f"a valid {2 * r + 1}-tap filter needs at least {2 * r + 1} pixels, got {length}")
        rows = range(r, length - r)
    else:
        raise ValueError(f"mode must be 'nearest' or 'valid', got {mode!r}")
    a = torch.zeros(len(rows), length, dtype=torch.float64)
    for i, c in enumerate(rows):
        for k, w in enumerate(taps):
            a[i, min(max(c + k - r, 0), length - 1)] += w
    return a.to(dtype=dtype, device=device)


def planes(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 N x H x W x C -> dtype N x C x H x W on the [0, 1] scale."""
    return images.permute(0, 3, 1, 2).to(dtype) / 255.0


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float, mode: str) -> torch.Tensor:
    """Separable Gaussian filter of ... x H x W planes (see the module docstring for ``mode``)."""
    h, w = x.shape[-2:]
    ah = band_matrix(float(sigma), float(truncate), h, mode, x.dtype, str(x.device))
    aw = band_matrix(float(sigma), float(truncate), w, mode, x.dtype, str(x.device))
    return ah @ x @ aw.T


# -- rounding ------------------------------------------------------------------------------------


def to_uint8(x01: torch.Tensor) -> torch.Tensor:
    """What an 8-bit image would hold: clip to [0, 1], scale by 255, round half to even."""
    return torch.round(x01.clamp(0.0, 1.0) * 255.0).to(torch.uint8)


# -- SSIM ----------------------------------------------------------------------------------------


def ssim_planes(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of N x C x H x W planes on the [0, 1] scale -> N (mean over channels and the crop).

    Only window positions wholly inside the image enter the mean (skimage crops (win-1)/2 pixels
    from each side), so a "valid" filter is exact. The five moments are filtered as one stack, in the
    planes' dtype: :func:`ssim` passes float64, as skimage computes. (In float32, E[x^2] - E[x]^2 leaves
    a residue of a few ulps of E[x^2] that C2 = 9e-4 amplifies where a window is flat: up to 1.6e-4 off
    skimage on flat image pairs, even with the values shifted to [-0.5, 0.5]. In float64 the residue is
    ~1e-16 and the result within ~1e-12 of skimage on every input.)
    """
    m = gaussian_blur(torch.stack([x, y, x * x, y * y, x * y]), SSIM.sigma, SSIM.truncate, mode="valid")
    ux, uy, mxx, myy, mxy = m.unbind(0)
    vx, vy, vxy = mxx - ux * ux, myy - uy * uy, mxy - ux * uy
    c1, c2 = SSIM.c1, SSIM.c2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def ssim(reference: torch.Tensor, distorted: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (float32 N) of uint8 N x H x W x 3 images, computed in float64."""
    out = torch.empty(reference.shape[0], dtype=torch.float32, device=reference.device)
    step = max(1, min(CHUNK, CHUNK * 32 * 32 // (reference.shape[1] * reference.shape[2])))  # ~CIFAR chunks' memory
    for i in range(0, reference.shape[0], step):
        sl = slice(i, i + step)
        out[sl] = ssim_planes(planes(reference[sl], torch.float64), planes(distorted[sl], torch.float64)).float()
    return out


# -- distort (blur, noise, one rounding) and score -----------------------------------------------


def _distort(images, sigma, var, seed, ids):
    n, h, w, c = images.shape
    y = planes(images, torch.float32)
    if sigma is not None:
        y = gaussian_blur(y, sigma, BLUR_TRUNCATE, mode="nearest")
    y = y.permute(0, 2, 3, 1)
    if var is not None:
        y = y + float(var) ** 0.5 * normals(seed, ids, h, w, c)
    return to_uint8(y)


def distort_and_score(images, sigma, var, seed, ids, score):
    """Gaussian blur (sigma or None) then noise (variance or None), rounded once; SSIM if ``score``."""
    out = torch.empty_like(images, memory_format=torch.contiguous_format)
    for i in range(0, images.shape[0], CHUNK):
        sl = slice(i, i + CHUNK)
        out[sl] = _distort(images[sl], sigma, var, seed, ids[sl])
    return out, (ssim(images, out) if score else None)


# -- JPEG ----------------------------------------------------------------------------------------


def _jpeg_one(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img, mode="RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """PIL's ``save(format="JPEG", quality=q)`` and decode, per image, on the images' device."""
    arr = images.cpu().numpy()
    workers = min(len(arr), os.cpu_count() or 1) or 1
    with ThreadPoolExecutor(workers) as pool:
        out = np.stack(list(pool.map(lambda im: _jpeg_one(im, quality), arr))) if len(arr) else arr.copy()
    return torch.from_numpy(out).to(images.device)


# -- the loss ------------------------------------------------------------------------------------


def soft_label_mse(logits: torch.Tensor, labels: torch.Tensor, on_true: torch.Tensor) -> torch.Tensor:
    """Eq. 1 with the Eq. 2 target: mean over the batch of sum_k (softmax(z)_k - q_k)^2."""
    k = logits.shape[1]
    # half-precision logits are promoted; float32 and float64 keep their precision
    p = torch.softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=1)
    on_true = on_true.to(p.dtype)
    off = (1.0 - on_true) / (k - 1)
    q = off[:, None].expand(-1, k).clone()
    q.scatter_(1, labels[:, None].long(), on_true[:, None])
    return ((p - q) ** 2).sum(dim=1).mean()


# -- LRN -----------------------------------------------------------------------------------------


def lrn(x: torch.Tensor, radius: int, bias: float, alpha: float, beta: float) -> torch.Tensor:
    """TensorFlow's ``tf.nn.lrn``: ``x_c / (bias + alpha * sum_{|j - c| <= radius} x_j^2) ** beta``.

    By ``F.local_response_norm`` (pads, squares, ``avg_pool3d``), which divides its alpha by the
    window size: hence ``alpha * size``. On CUDA ``torch.compile`` fuses it into one kernel. bfloat16
    and float16 inputs (autocast) are computed in float32 and returned in their dtype, on every device
    (PyTorch has no bfloat16 ``avg_pool3d`` on CPU, and float32 sums keep the window sum's precision).
    """
    n = 2 * radius + 1
    if x.dtype in (torch.bfloat16, torch.float16):
        return F.local_response_norm(x.float(), size=n, alpha=alpha * n, beta=beta, k=bias).to(x.dtype)
    return F.local_response_norm(x, size=n, alpha=alpha * n, beta=beta, k=bias)
