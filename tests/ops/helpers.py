"""Comparisons the operation tests share: scikit-image's SSIM and blur, byte agreement, batch sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.filters import gaussian
from skimage.metrics import structural_similarity

from iqals_fast.config import BLUR_TRUNCATE, SSIM
from iqals_fast.ops.labels import soft_label_mse


def sk_ssim(a, b) -> np.ndarray:
    """skimage's Gaussian-window SSIM per image, the definition ``iq.ssim`` follows."""
    return np.array([structural_similarity(x / 255.0, y / 255.0, channel_axis=-1, data_range=1.0, gaussian_weights=True,
                                           sigma=SSIM.sigma, use_sample_covariance=False, K1=SSIM.k1, K2=SSIM.k2)
                     for x, y in zip(np.asarray(a), np.asarray(b), strict=True)])


def sk_blur(a, sigma) -> np.ndarray:
    """skimage's Gaussian blur per image (a 4-D array would be blurred across the batch too), [0, 1]."""
    return np.stack([gaussian(x / 255.0, sigma=sigma, channel_axis=-1, mode="nearest", truncate=BLUR_TRUNCATE)
                     for x in np.asarray(a)])


def on(x, device) -> torch.Tensor:
    """A numpy batch as a torch tensor on ``device`` (the tests' --device)."""
    return torch.from_numpy(np.asarray(x)).to(device)


def numpy(a) -> np.ndarray:
    return a.cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def assert_bytes_close(a, b, max_fraction: float | None = None, at_least: int = 0) -> None:
    """uint8 images within one level, where float rounding lands on the other side of .5; and, given
    ``max_fraction``, fewer than that fraction of the bytes differ (or at most ``at_least`` of them)."""
    d = np.abs(numpy(a).astype(int) - numpy(b).astype(int))
    assert d.max(initial=0) <= 1, f"bytes differ by up to {d.max()} levels"
    if max_fraction is not None:
        n = int((d > 0).sum())
        assert n < max_fraction * d.size or n <= at_least, f"{n / d.size:.2e} of the bytes differ (< {max_fraction:.0e})"


def interpreted(backend: str, device: torch.device) -> bool:
    """The Triton kernels in the interpreter: about 0.1 s per scored 32 x 32 image."""
    return backend == "triton" and device.type == "cpu"


def batch(x, backend: str, device: torch.device, small: int):
    """x, or its first ``small`` images in the Triton interpreter."""
    return x[:small] if interpreted(backend, device) else x


def lrn_formula(x: torch.Tensor, radius: int, bias: float, alpha: float, beta: float) -> torch.Tensor:
    """TensorFlow's LRN written out as tf.nn.lrn documents it: an explicit sum over the depth window,
    ``x_c / (bias + alpha * sum_{|j - c| <= radius} x_j^2) ** beta`` (differentiable; use float64)."""
    sq = x * x
    c = x.shape[1]
    acc = torch.zeros_like(x)
    for d in range(-radius, radius + 1):
        lo, hi = max(0, -d), min(c, c - d)
        acc[:, lo:hi] += sq[:, lo + d:hi + d]
    return x / (bias + alpha * acc) ** beta


def only_these_compile_on_cuda(backend: str, device: torch.device, allowed: bool) -> None:
    """On CUDA each new tile geometry or mode of the Triton kernel compiles anew (seconds each), so the
    GPU run of these tests, sized to its time, checks a case only where ``allowed``; the interpreter
    checks every case."""
    if backend == "triton" and device.type == "cuda" and not allowed:
        pytest.skip("Triton on CUDA: this case's kernel compiles anew; its geometry and mode are covered by others")


LOSS_TOL = {torch.float32: dict(loss=1e-6, grad=2e-5), torch.bfloat16: dict(loss=1e-6, grad=1e-2)}
"""Loss atol; gradient tolerance relative to the largest |gradient| (bf16: its 8-bit mantissa)."""


def loss_case(b, k, dtype, device, seed=0):
    """Logits (B x K, scaled by 4), labels and scores, a quarter of them 1 (0-1 labels)."""
    g = torch.Generator().manual_seed(seed + 31 * b + k)
    z = (torch.randn(b, k, generator=g) * 4).to(dtype).to(device)
    y = torch.randint(0, k, (b,), generator=g).to(device)
    s = torch.rand(b, generator=g).to(device)
    s[: b // 4] = 1.0  # some 0-1 labels
    return z, y, s


def eager_loss(z, y, s, transform):
    """The reference's loss and its autograd gradient."""
    zr = z.detach().clone().requires_grad_()
    loss = soft_label_mse(zr, y, s, transform, backend="torch")
    loss.backward()
    return loss.detach(), zr.grad


def check_loss(loss, grad, r_loss, r_grad, dtype):
    tol = LOSS_TOL[dtype]
    assert loss.dtype == torch.float32 and loss.ndim == 0 and grad.dtype == dtype
    torch.testing.assert_close(loss.cpu(), r_loss.cpu(), rtol=1e-6, atol=tol["loss"])
    scale = float(r_grad.float().abs().max()) or 1.0
    torch.testing.assert_close(grad.float().cpu(), r_grad.float().cpu(), rtol=0, atol=tol["grad"] * scale)
