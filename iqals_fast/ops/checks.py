"""The value rules of every operation, stated once; the public entry points (``api``, ``labels``,
``iqa``, ``dali.jpeg``) apply them before anything reaches a backend.

Images are uint8 N x H x W x 3 (RGB, channels last), numpy or torch, any device. Sizes:

- ``MIN_SIDE`` (8): what distorting needs (blur, noise, JPEG);
- ``MIN_SCORE_SIDE`` (the SSIM window, 11): what scoring needs (SSIM averages a "valid" filter).

The backends trust these rules: the C++ bindings and the Triton launchers check only what protects
memory or the kernels' own preconditions (dtype, contiguity, shapes that agree, an SSIM window that
fits the image when scoring; any size distorts).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..config import KINDS, LEVELS, SSIM
from .noise import MAX_U32

MIN_SIDE = 8
"""Smallest height and width an image may have to be distorted."""
MIN_SCORE_SIDE = SSIM.win
"""Smallest height and width an image may have to be scored (the SSIM window: 11)."""

DISTORT_KINDS = KINDS + ("blur+noise",)
"""``blur+noise`` blurs, then adds noise, then rounds once (param = (sigma, variance))."""


# -- images ------------------------------------------------------------------------------------


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


# -- seeds and image ids -------------------------------------------------------------------------


def check_seed_ids(seed, ids, n: int, device) -> torch.Tensor:
    """Validate the seed and image ids; return ids as an int64 tensor of length n on ``device``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_U32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    if ids is None:
        return torch.arange(n, dtype=torch.int64, device=device)
    t = torch.as_tensor(ids)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.ndim != 1 or t.numel() != n:
        raise ValueError(
            f"ids must be a 1-D integer array with one id per image ({n}), got dtype {t.dtype} "
            f"and shape {tuple(t.shape)}"
        )
    t = t.to(torch.int64)
    if n and (int(t.min()) < 0 or int(t.max()) > MAX_U32):
        raise ValueError("ids must lie in [0, 2**32)")
    return t.to(device)


# -- distortion parameters -----------------------------------------------------------------------


def distortion_param(kind: str, level, param):
    """The parameter of ``kind`` from a level (1-3, the paper's) or an explicit ``param``."""
    if kind not in DISTORT_KINDS:
        raise ValueError(f"kind must be one of {DISTORT_KINDS}, got {kind!r}")
    if (level is None) == (param is None):
        raise ValueError(f"give exactly one of level (1-3) or param for kind {kind!r}")
    if level is not None:
        if kind == "blur+noise":
            return (LEVELS.param("blur", level), LEVELS.param("noise", level))
        return LEVELS.param(kind, level)
    if kind == "blur+noise":
        try:
            sigma, var = param
        except (TypeError, ValueError):
            raise ValueError(f"param for 'blur+noise' must be (sigma, variance), got {param!r}") from None
        return (real("sigma", sigma, positive=True), real("variance", var))
    if kind == "jpeg":
        if isinstance(param, bool) or not isinstance(param, int) or not 1 <= param <= 100:
            raise ValueError(f"JPEG quality must be an integer in [1, 100], got {param!r}")
        return param
    return real("sigma" if kind == "blur" else "variance", param, positive=kind == "blur")


def real(name, v, positive=False) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {v!r}") from None
    if not math.isfinite(f) or f < 0 or (positive and f == 0):
        raise ValueError(f"{name} must be finite and {'> 0' if positive else '>= 0'}, got {v!r}")
    return f


def jpeg_qualities(quality, n: int) -> np.ndarray:
    """One int32 JPEG quality in [1, 100] per image, from one integer or one per image."""
    q = np.asarray(quality)
    if q.dtype == bool or not np.issubdtype(q.dtype, np.integer) or q.ndim > 1 or (q.ndim == 1 and len(q) != n):
        raise ValueError(f"quality must be an integer in [1, 100] or one integer per image, got {quality!r}")
    if q.size and (q.min() < 1 or q.max() > 100):
        raise ValueError(f"JPEG quality must lie in [1, 100], got {quality!r}")
    return np.broadcast_to(q.astype(np.int32), (n,))


# -- labels and the loss -------------------------------------------------------------------------


def labels_scores(labels, scores, num_classes):
    """(int labels, float scores) as tensors: 1-D, one score in [0, 1] per label in [0, num_classes)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    lab = torch.as_tensor(labels)
    if lab.dtype.is_floating_point or lab.dtype == torch.bool or lab.ndim != 1:
        raise ValueError(f"labels must be a 1-D integer array, got dtype {lab.dtype}, shape {tuple(lab.shape)}")
    sc = torch.as_tensor(scores)
    if not sc.dtype.is_floating_point:
        sc = sc.to(torch.float32)
    if sc.shape != lab.shape:
        raise ValueError(f"scores must have one value per label: shape {tuple(sc.shape)} vs labels {tuple(lab.shape)}")
    if lab.numel():
        if int(lab.min()) < 0 or int(lab.max()) >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(lab.min())}, {int(lab.max())}]")
        bad = ~((sc >= 0) & (sc <= 1))  # NaN compares False
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"scores must lie in [0, 1]; scores[{i}] = {float(sc[i])!r}")
    return lab, sc


def logits(x) -> None:
    """A 2-D floating-point tensor of at least one row: the loss is a mean over the batch, and the mean
    of an empty batch (NaN, with a gradient) is no loss."""
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point or x.ndim != 2:
        raise ValueError(
            "logits must be a 2-D floating-point torch tensor (batch x classes), got "
            f"{type(x).__name__} {getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"logits hold an empty batch (shape {tuple(x.shape)}): the loss is a mean over at least one image")


# -- LRN ---------------------------------------------------------------------------------------


MAX_LRN_RADIUS = 4096


def lrn_input(x) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.dtype.is_floating_point:
        raise ValueError(f"lrn needs a floating-point N x C x H x W tensor, got {getattr(x, 'dtype', type(x))} "
                         f"{tuple(getattr(x, 'shape', ()))}")


def lrn_params(radius, bias, alpha, beta) -> None:
    """radius an integer in [0, 4096]; bias finite and > 0; alpha finite and >= 0; beta finite."""
    if isinstance(radius, bool) or not isinstance(radius, int) or not 0 <= radius <= MAX_LRN_RADIUS:
        raise ValueError(f"radius must lie in [0, {MAX_LRN_RADIUS}], got {radius!r}")
    real("bias", bias, positive=True)
    real("alpha", alpha)
    try:
        ok = math.isfinite(float(beta))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"beta must be finite, got {beta!r}")
