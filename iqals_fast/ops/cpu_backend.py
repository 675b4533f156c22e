"""The cpu backend: the C++ kernels of csrc/ (the compiled module ``iqals_fast._C``).

Registers ``distort_score``, ``ssim`` and ``lrn`` for CPU tensors at the dispatch point, where
``backend="auto"`` prefers it to the torch backend. Where the module was not built (a plain source
checkout), it registers nothing and the torch backend serves CPU tensors.

Tensors reach the kernels as numpy views (``Tensor.numpy()`` shares memory; only a non-contiguous
tensor is copied first). The constants (blur and SSIM taps, C1, C2) come from ``iqals_fast.config``.
The kernels use ``torch.get_num_threads()`` threads, one image per thread at a time; results do not
depend on the thread count.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import BLUR_TRUNCATE, SSIM, gaussian_taps
from . import dispatch
from .lrn import lrn_torch

try:
    from .. import _C
except ImportError:  # not built: the torch backend serves CPU tensors
    _C = None

_SSIM_TAPS = np.asarray(gaussian_taps(SSIM.sigma, SSIM.truncate))
_SSIM_TAPS.flags.writeable = False


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy array sharing the CPU tensor's memory (copied only if not contiguous)."""
    return t.contiguous().numpy()


def distort_score(images, sigma, var, seed, ids, score):
    out, scores = _C.distort_score(
        _numpy(images),
        blur_taps=None if sigma is None else np.asarray(gaussian_taps(float(sigma), BLUR_TRUNCATE)),
        noise_var=None if var is None else float(var),
        seed=int(seed),
        ids=_numpy(ids.to(torch.int64)),
        ssim_taps=_SSIM_TAPS if score else None,
        c1=SSIM.c1,
        c2=SSIM.c2,
        threads=torch.get_num_threads(),
    )
    return torch.from_numpy(out), (torch.from_numpy(scores) if score else None)


def ssim(reference, distorted):
    scores = _C.ssim(
        _numpy(reference), _numpy(distorted), taps=_SSIM_TAPS, c1=SSIM.c1, c2=SSIM.c2, threads=torch.get_num_threads()
    )
    return torch.from_numpy(scores)


def _on_cpu(device: torch.device) -> bool:
    return device.type == "cpu"


# -- LRN: custom ops, so that autograd and torch.compile (without a graph break) both use the kernels --

if _C is not None:

    @torch.library.custom_op("iqals_fast::lrn", mutates_args=(), device_types="cpu")
    def lrn_op(x: torch.Tensor, radius: int, bias: float, alpha: float, beta: float) -> torch.Tensor:
        y = _C.lrn_forward(_numpy(x.detach()), radius=radius, bias=bias, alpha=alpha, beta=beta,
                           threads=torch.get_num_threads())
        return torch.from_numpy(y)

    @torch.library.custom_op("iqals_fast::lrn_backward", mutates_args=(), device_types="cpu")
    def lrn_backward_op(x: torch.Tensor, dy: torch.Tensor, radius: int, bias: float, alpha: float,
                        beta: float) -> torch.Tensor:
        dx = _C.lrn_backward(_numpy(x.detach()), _numpy(dy.detach()), radius=radius, bias=bias, alpha=alpha,
                             beta=beta, threads=torch.get_num_threads())
        return torch.from_numpy(dx)

    @lrn_op.register_fake
    def _(x, radius, bias, alpha, beta):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @lrn_backward_op.register_fake
    def _(x, dy, radius, bias, alpha, beta):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    def _lrn_setup(ctx, inputs, output):
        x, ctx.radius, ctx.bias, ctx.alpha, ctx.beta = inputs
        ctx.save_for_backward(x)

    def _lrn_backward(ctx, dy):
        (x,) = ctx.saved_tensors
        return lrn_backward_op(x, dy, ctx.radius, ctx.bias, ctx.alpha, ctx.beta), None, None, None, None

    lrn_op.register_autograd(_lrn_backward, setup_context=_lrn_setup)

    def lrn(x, radius, bias, alpha, beta):
        if x.dtype == torch.float64:  # the kernels are float32; float64 keeps its precision on the reference
            return lrn_torch(x, radius, bias, alpha, beta)
        if x.dtype != torch.float32:  # bf16 / fp16 (autocast): computed in float32, returned in x's dtype
            return lrn_op(x.float(), radius, bias, alpha, beta).to(x.dtype)
        return lrn_op(x, radius, bias, alpha, beta)

    dispatch.register("distort_score", "cpu", distort_score, _on_cpu)
    dispatch.register("ssim", "cpu", ssim, _on_cpu)
    dispatch.register("lrn", "cpu", lrn, _on_cpu)
