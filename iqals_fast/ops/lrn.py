"""Local response normalisation across channels, TensorFlow's ``tf.nn.lrn``: the model's hot spot on CPU.

    s_c = bias + alpha * sum_{|j - c| <= radius} x_j^2,     y_c = x_c * s_c ** -beta

(TF's alpha multiplies the sum itself; PyTorch's ``local_response_norm`` divides its alpha by the
window size, so the torch backend passes ``alpha * size``.)

Backends, chosen at the one dispatch point (op ``"lrn"``):

- ``torch``: ``F.local_response_norm``, PyTorch's composite (pads, squares, ``avg_pool3d``). The
  reference, and the path on CUDA, where ``torch.compile`` fuses it into one generated kernel.
- ``cpu``: the C++ kernels of ``csrc/lrn.cpp`` (forward, and a backward that recomputes the window
  sums), wrapped as the custom ops ``iqals_fast::lrn`` / ``iqals_fast::lrn_backward`` so autograd
  and ``torch.compile`` (no graph break) both use them. About 9-10x faster than the composite,
  forward plus backward, on a 100 x 64 x 16 x 16 batch (``bench/pipeline_cpu.py``, results in
  ``bench/results/pipeline-cpu-*.md``).

``lrn_reference`` is the formula written out, for tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dispatch


def lrn_reference(x: torch.Tensor, radius: int, bias: float, alpha: float, beta: float) -> torch.Tensor:
    """The formula itself: an explicit sum over the depth window (for tests)."""
    sq = x * x
    c = x.shape[1]
    acc = torch.zeros_like(x)
    for d in range(-radius, radius + 1):
        lo, hi = max(0, -d), min(c, c - d)
        acc[:, lo:hi] += sq[:, lo + d:hi + d]
    return x / (bias + alpha * acc) ** beta


def lrn_torch(x: torch.Tensor, radius: int, bias: float, alpha: float, beta: float) -> torch.Tensor:
    n = 2 * radius + 1
    return F.local_response_norm(x, size=n, alpha=alpha * n, beta=beta, k=bias)


def lrn(x: torch.Tensor, radius: int, bias: float, alpha: float, beta: float, backend: str = "auto") -> torch.Tensor:
    """TF's LRN of an N x C x H x W float tensor, by the backend the dispatch point picks for its device."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.dtype.is_floating_point:
        raise ValueError(f"lrn needs a floating-point N x C x H x W tensor, got {getattr(x, 'dtype', type(x))} "
                         f"{tuple(getattr(x, 'shape', ()))}")
    _, fn = dispatch.resolve("lrn", backend, x.device)
    return fn(x, radius, bias, alpha, beta)

