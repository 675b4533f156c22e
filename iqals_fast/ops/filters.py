"""Separable Gaussian filtering of image planes in plain PyTorch (the reference backend's core)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..config import gaussian_taps


@functools.lru_cache(maxsize=64)
def _taps(sigma: float, truncate: float, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.tensor(gaussian_taps(sigma, truncate), dtype=torch.float64).to(dtype=dtype, device=device)


def planes(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 N x H x W x C -> dtype (N*C) x 1 x H x W on the [0, 1] scale."""
    n, h, w, c = images.shape
    return (images.permute(0, 3, 1, 2).reshape(n * c, 1, h, w).to(dtype)) / 255.0


def unplanes(x: torch.Tensor, n: int, c: int) -> torch.Tensor:
    """(N*C) x 1 x H x W -> N x H x W x C."""
    _, _, h, w = x.shape
    return x.reshape(n, c, h, w).permute(0, 2, 3, 1)


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float, mode: str) -> torch.Tensor:
    """Separable Gaussian filter of B x P x H x W planes.

    mode "nearest": borders replicate the edge pixel (scipy's mode="nearest"), output H x W.
    mode "valid": only window positions wholly inside the plane, output (H-2r) x (W-2r).
    """
    k = _taps(float(sigma), float(truncate), x.dtype, str(x.device))
    r = (k.numel() - 1) // 2
    b, p, h, w = x.shape
    y = x.reshape(b * p, 1, h, w)
    if mode == "nearest":
        y = F.pad(y, (r, r, r, r), mode="replicate")
    elif mode != "valid":
        raise ValueError(f"mode must be 'nearest' or 'valid', got {mode!r}")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.reshape(b, p, y.shape[-2], y.shape[-1])
