"""The public operations: distort, ssim, distort_and_score and lrn. Argument checks (``checks.py``),
then the implementation the dispatch table picks (``dispatch.py``); the loss and the soft labels are
in ``labels.py``, the other quality measures in ``iqa.py``."""

from __future__ import annotations

import torch

from . import checks, dispatch


def _run(images, kind, p, seed, ids, backend, score):
    t, back = checks.as_images(images, min_side=checks.MIN_SCORE_SIDE if score else checks.MIN_SIDE)
    ids_t = checks.check_seed_ids(seed, ids, t.shape[0], t.device)
    if kind == "jpeg":
        (_, jpeg), scorer = dispatch.resolve_jpeg(backend, t.device, score)
        out = jpeg(t, p)
        s = scorer[1](t, out) if score else None
        return back(out), (back(s) if score else None)
    sigma, var = {"blur": (p, None), "noise": (None, p), "blur+noise": p}[kind]
    _, fn = dispatch.resolve("distort_and_score", backend, t.device)
    out, s = fn(t, sigma, var, seed, ids_t, score)
    return back(out), (back(s) if score else None)


def distort(images, kind: str, level: int | None = None, *, param=None, seed: int = 0, ids=None,
            backend: str = "auto"):
    """Distort uint8 N x H x W x 3 images (numpy or torch) as an 8-bit file would hold them.

    kind: "blur" (Gaussian, sigma), "noise" (white Gaussian, variance on the [0, 1] scale), "jpeg"
    (libjpeg quality) or "blur+noise"; level 1-3 takes the paper's parameter (``iq.LEVELS``), or
    give ``param`` explicitly. Noise depends only on (seed, ids[i], channel, row, column); ``ids``
    defaults to 0..N-1. Images must be at least 8 x 8. Returns the same type, shape and device as
    ``images``.

    >>> import numpy as np, iqals_fast as iq
    >>> x = np.zeros((2, 32, 32, 3), np.uint8)
    >>> iq.distort(x, "noise", 1, seed=7).shape
    (2, 32, 32, 3)
    """
    return _run(images, kind, checks.distortion_param(kind, level, param), seed, ids, backend, score=False)[0]


def distort_and_score(images, kind: str, level: int | None = None, *, param=None, seed: int = 0, ids=None,
                      backend: str = "auto"):
    """``(distort(images, ...), ssim(images, distorted))`` in one call (fused where a backend can).
    Images must be at least 11 x 11 (the SSIM window)."""
    return _run(images, kind, checks.distortion_param(kind, level, param), seed, ids, backend, score=True)


def ssim(reference, distorted, *, backend: str = "auto"):
    """Per-image SSIM (float32, length N) of uint8 N x H x W x 3 images scaled to [0, 1].

    Wang et al. 2004 exactly as ``skimage.metrics.structural_similarity(x, y, channel_axis=-1,
    data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``: 11-tap
    Gaussian window, K1 = 0.01, K2 = 0.03, population covariance, the map cropped by 5 pixels per
    side and averaged over the three channels. Images must be at least 11 x 11.
    """
    x, back = checks.as_images(reference, "reference", min_side=checks.MIN_SCORE_SIDE)
    y, _ = checks.as_images(distorted, "distorted", min_side=checks.MIN_SCORE_SIDE)
    checks.same_shape(x, y, "reference", "distorted")
    _, fn = dispatch.resolve("ssim", backend, x.device)
    return back(fn(x, y))


def lrn(x: torch.Tensor, radius: int, bias: float, alpha: float, beta: float, backend: str = "auto") -> torch.Tensor:
    """TensorFlow's ``tf.nn.lrn`` of an N x C x H x W float tensor across channels (differentiable):

        s_c = bias + alpha * sum_{|j - c| <= radius} x_j^2,     y_c = x_c * s_c ** -beta

    (TF's alpha multiplies the sum itself; PyTorch's ``local_response_norm`` divides its alpha by the
    window size.) On CPU the C++ kernels of csrc/lrn.cpp (backend ``cpu``), elsewhere PyTorch's
    composite (``torch``, the reference, fused by ``torch.compile`` on CUDA).
    """
    checks.lrn_input(x)
    checks.lrn_params(radius, bias, alpha, beta)
    _, fn = dispatch.resolve("lrn", backend, x.device)
    return fn(x, radius, bias, alpha, beta)
