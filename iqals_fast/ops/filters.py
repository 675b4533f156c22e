"""Separable Gaussian filtering of image planes in plain PyTorch (the reference backend's core).

A separable filter along one axis of length L is a matrix: ``y = A x`` with A banded. The border
rule is folded into A ("nearest": taps that fall outside are added to the edge pixel's column;
"valid": only the L - 2r rows whose window lies inside). Filtering a batch of H x W planes is then
two batched matmuls, ``A_h @ X @ A_w^T``, which BLAS runs far faster than a 1-channel conv2d.
"""

from __future__ import annotations

import functools

import torch

from ..config import gaussian_taps


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
