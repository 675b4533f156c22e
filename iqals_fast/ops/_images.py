"""Boundary checks shared by every operation: uint8 N x H x W x 3 images, numpy or torch."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

MIN_SIDE = 8


def as_images(images, name: str = "images", min_side: int = MIN_SIDE):
    """Return (uint8 torch tensor N x H x W x 3, function turning a result back into the input's type).

    Numpy arrays are wrapped without a copy; torch tensors are used as they are (any device,
    any strides). Everything else, or a wrong dtype or shape, raises a ValueError/TypeError
    naming ``name``.
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"{name} must have dtype uint8, got numpy {images.dtype}")
        ok = images.flags.writeable and all(st >= 0 for st in images.strides)
        t = torch.from_numpy(images if ok else np.array(images))
        back: Callable = lambda r: r.cpu().numpy() if isinstance(r, torch.Tensor) else r  # noqa: E731
    elif isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise TypeError(f"{name} must have dtype uint8, got torch {images.dtype}")
        t = images
        back = lambda r: r  # noqa: E731
    else:
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(images).__name__}")
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"{name} must have shape N x H x W x 3 (RGB, channels last), got {tuple(t.shape)}")
    if t.shape[1] < min_side or t.shape[2] < min_side:
        raise ValueError(
            f"{name} must be at least {min_side} x {min_side} pixels, got H x W = {t.shape[1]} x {t.shape[2]}"
        )
    return t, back


def same_shape(a: torch.Tensor, b: torch.Tensor, an: str, bn: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{an} and {bn} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"{an} and {bn} must be on the same device, got {a.device} and {b.device}")


def to_uint8(x01: torch.Tensor) -> torch.Tensor:
    """What an 8-bit image would hold: clip to [0, 1], scale by 255, round half to even."""
    return torch.round(x01.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
