"""Public image operations: distort, ssim, distort_and_score. Validation here, work in the backends."""

from __future__ import annotations

import math

from ..config import KINDS, LEVELS, SSIM
from . import dispatch
from ._images import MIN_SIDE, as_images, same_shape
from .noise import check_seed_ids

DISTORT_KINDS = KINDS + ("blur+noise",)
"""``blur+noise`` blurs, then adds noise, then rounds once (param = (sigma, variance))."""


def _param(kind: str, level, param):
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
        return (_check_real("sigma", sigma, positive=True), _check_real("variance", var))
    if kind == "jpeg":
        if isinstance(param, bool) or not isinstance(param, int) or not 1 <= param <= 100:
            raise ValueError(f"JPEG quality must be an integer in [1, 100], got {param!r}")
        return param
    return _check_real("sigma" if kind == "blur" else "variance", param, positive=kind == "blur")


def _check_real(name, v, positive=False):
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {v!r}") from None
    if not math.isfinite(f) or f < 0 or (positive and f == 0):
        raise ValueError(f"{name} must be finite and {'> 0' if positive else '>= 0'}, got {v!r}")
    return f


def _run(images, kind, p, seed, ids, backend, score):
    t, back = as_images(images, min_side=SSIM.win if score else MIN_SIDE)
    ids_t = check_seed_ids(seed, ids, t.shape[0], t.device)
    if kind == "jpeg":
        # JPEG has its own backends (dali, torch = PIL; the same bytes): a backend without one
        # (cpu, triton) takes the best JPEG there is, and its own SSIM.
        if backend != "auto" and backend not in dispatch.PREFERENCE:
            raise ValueError(f"backend must be 'auto' or one of {dispatch.PREFERENCE}, got {backend!r}")
        jpeg_backend = backend if backend in dispatch.backends("jpeg") else "auto"
        _, jpeg = dispatch.resolve("jpeg", jpeg_backend, t.device)
        out = jpeg(t, p)
        s = ssim(t, out, backend="auto" if backend == "dali" else backend) if score else None
        return back(out), (back(s) if score else None)
    sigma, var = {"blur": (p, None), "noise": (None, p), "blur+noise": p}[kind]
    _, fn = dispatch.resolve("distort_score", backend, t.device)
    out, s = fn(t, sigma, var, seed, ids_t, score)
    return back(out), (back(s) if score else None)


def distort(images, kind: str, level: int | None = None, *, param=None, seed: int = 0, ids=None,
            backend: str = "auto"):
    """Distort uint8 N x H x W x 3 images (numpy or torch) as an 8-bit file would hold them.

    kind: "blur" (Gaussian, sigma), "noise" (white Gaussian, variance on the [0, 1] scale), "jpeg"
    (libjpeg quality) or "blur+noise"; level 1-3 takes the paper's parameter (``iq.LEVELS``), or
    give ``param`` explicitly. Noise depends only on (seed, ids[i], channel, row, column); ``ids``
    defaults to 0..N-1. Returns the same type, shape and device as ``images``.

    >>> import numpy as np, iqals_fast as iq
    >>> x = np.zeros((2, 32, 32, 3), np.uint8)
    >>> iq.distort(x, "noise", 1, seed=7).shape
    (2, 32, 32, 3)
    """
    return _run(images, kind, _param(kind, level, param), seed, ids, backend, score=False)[0]


def distort_and_score(images, kind: str, level: int | None = None, *, param=None, seed: int = 0, ids=None,
                      backend: str = "auto"):
    """``(distort(images, ...), ssim(images, distorted))`` in one call (fused where a backend can)."""
    return _run(images, kind, _param(kind, level, param), seed, ids, backend, score=True)


def ssim(reference, distorted, *, backend: str = "auto"):
    """Per-image SSIM (float32, length N) of uint8 N x H x W x 3 images scaled to [0, 1].

    Wang et al. 2004 exactly as ``skimage.metrics.structural_similarity(x, y, channel_axis=-1,
    data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``: 11-tap
    Gaussian window, K1 = 0.01, K2 = 0.03, population covariance, the map cropped by 5 pixels per
    side and averaged over the three channels. Images must be at least 11 x 11.
    """
    x, back = as_images(reference, "reference", min_side=SSIM.win)
    y, _ = as_images(distorted, "distorted", min_side=SSIM.win)
    same_shape(x, y, "reference", "distorted")
    _, fn = dispatch.resolve("ssim", backend, x.device)
    return back(fn(x, y))
