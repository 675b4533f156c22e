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

    def _lrn_call(fn, tensors, **params):
        """Run an LRN kernel on NCHW tensors in their own layout: channels_last ones as N x H x W x C arrays
        (no copy), the rest as NCHW-contiguous ones; the result keeps the first tensor's layout."""
        cl = tensors[0].is_contiguous(memory_format=torch.channels_last) and not tensors[0].is_contiguous()
        if cl:
            arrays = [t.detach().contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).numpy()
                      for t in tensors]
            return torch.from_numpy(fn(*arrays, channels_last=True, threads=torch.get_num_threads(),
                                       **params)).permute(0, 3, 1, 2)
        arrays = [_numpy(t.detach()) for t in tensors]
        return torch.from_numpy(fn(*arrays, channels_last=False, threads=torch.get_num_threads(), **params))

    @torch.library.custom_op("iqals_fast::lrn", mutates_args=(), device_types="cpu")
    def lrn_op(x: torch.Tensor, radius: int, bias: float, alpha: float, beta: float) -> torch.Tensor:
        return _lrn_call(_C.lrn_forward, [x], radius=radius, bias=bias, alpha=alpha, beta=beta)

    @torch.library.custom_op("iqals_fast::lrn_backward", mutates_args=(), device_types="cpu")
    def lrn_backward_op(x: torch.Tensor, dy: torch.Tensor, radius: int, bias: float, alpha: float,
                        beta: float) -> torch.Tensor:
        return _lrn_call(_C.lrn_backward, [x, dy], radius=radius, bias=bias, alpha=alpha, beta=beta)

    def _like(x: torch.Tensor) -> torch.Tensor:
        cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return torch.empty_like(x, memory_format=torch.channels_last if cl else torch.contiguous_format)

    @lrn_op.register_fake
    def _(x, radius, bias, alpha, beta):
        return _like(x)

    @lrn_backward_op.register_fake
    def _(x, dy, radius, bias, alpha, beta):
        return _like(x)

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
