"""The torch backend: plain batched PyTorch, CPU or CUDA alike. The reference for every fast path.

JPEG has no PyTorch encoder, so its reference is PIL (libjpeg), run over a thread pool: PIL
releases the GIL while it encodes and decodes.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from ..config import BLUR_TRUNCATE, SSIM
from . import dispatch
from ._images import to_uint8
from .filters import gaussian_blur, planes
from .lrn import lrn_torch
from .noise import normals

CHUNK = 512  # images per step: keeps the float temporaries cache-sized on CPU


def ssim_planes(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of N x C x H x W planes on the [0, 1] scale -> N (mean over channels and the crop).

    Only window positions wholly inside the image enter the mean (skimage crops (win-1)/2 pixels
    from each side), so a "valid" filter is exact. The five moments are filtered as one stack.
    Values are shifted by -0.5 first: the (co)variances are shift invariant and the float32
    cancellation in E[x^2] - E[x]^2 shrinks fourfold.
    """
    xs, ys = x - 0.5, y - 0.5
    m = gaussian_blur(torch.stack([xs, ys, xs * xs, ys * ys, xs * ys]), SSIM.sigma, SSIM.truncate, mode="valid")
    mx, my, mxx, myy, mxy = m.unbind(0)
    vx, vy, vxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    ux, uy = mx + 0.5, my + 0.5
    c1, c2 = SSIM.c1, SSIM.c2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def ssim(reference: torch.Tensor, distorted: torch.Tensor) -> torch.Tensor:
    out = torch.empty(reference.shape[0], dtype=torch.float32, device=reference.device)
    for i in range(0, reference.shape[0], CHUNK):
        sl = slice(i, i + CHUNK)
        out[sl] = ssim_planes(planes(reference[sl], torch.float32), planes(distorted[sl], torch.float32))
    return out


def _distort(images, sigma, var, seed, ids):
    n, h, w, c = images.shape
    y = planes(images, torch.float32)
    if sigma is not None:
        y = gaussian_blur(y, sigma, BLUR_TRUNCATE, mode="nearest")
    y = y.permute(0, 2, 3, 1)
    if var is not None:
        y = y + float(var) ** 0.5 * normals(seed, ids, h, w, c)
    return to_uint8(y)


def distort_score(images, sigma, var, seed, ids, score):
    out = torch.empty_like(images, memory_format=torch.contiguous_format)
    for i in range(0, images.shape[0], CHUNK):
        sl = slice(i, i + CHUNK)
        out[sl] = _distort(images[sl], sigma, var, seed, ids[sl])
    return out, (ssim(images, out) if score else None)


def _jpeg_one(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img, mode="RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    arr = images.cpu().numpy()
    workers = min(len(arr), os.cpu_count() or 1) or 1
    with ThreadPoolExecutor(workers) as pool:
        out = np.stack(list(pool.map(lambda im: _jpeg_one(im, quality), arr))) if len(arr) else arr.copy()
    return torch.from_numpy(out).to(images.device)


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


def _any(device: torch.device) -> bool:
    return True


for _op, _fn in (("distort_score", distort_score), ("ssim", ssim), ("jpeg", jpeg), ("soft_label_mse", soft_label_mse),
                 ("lrn", lrn_torch)):
    dispatch.register(_op, "torch", _fn, _any)
