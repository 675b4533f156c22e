"""Backend ``cpu``: the C++ kernels of csrc/ (the compiled module ``iqals_fast._C``) for CPU tensors.

Ops: ``distort_and_score`` and ``ssim`` (csrc/distort_and_score.cpp), ``lrn`` (csrc/lrn.cpp, as the
custom ops ``iqals_fast::lrn`` / ``iqals_fast::lrn_backward``, so that autograd and ``torch.compile``
without a graph break both use the kernels). Where the module was not built (a plain source
checkout), :func:`available` is False and the dispatch table skips this backend.

Tensors reach the kernels as numpy views (``Tensor.numpy()`` shares memory; only a non-contiguous
tensor is copied first; bfloat16 ones, for the LRN, as uint16 views of their bits). The constants
(blur and SSIM taps, C1, C2) come from ``iqals_fast.config``.
The kernels use ``torch.get_num_threads()`` threads, one image per thread at a time; results do not
depend on the thread count. The LRN kernels are about 9-10x faster than PyTorch's composite, forward
plus backward, on a 100 x 64 x 16 x 16 batch (bench/results/pipeline-cpu-*.md).
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import BLUR_TRUNCATE, SSIM, gaussian_taps
from . import reference

try:
    from .. import _C
except ImportError:  # not built: the torch backend serves CPU tensors
    _C = None

_SSIM_TAPS = np.asarray(gaussian_taps(SSIM.sigma, SSIM.truncate))
_SSIM_TAPS.flags.writeable = False


def available() -> bool:
    """Whether the extension ``iqals_fast._C`` was built and imports."""
    return _C is not None


def supports(device: torch.device) -> bool:
    return device.type == "cpu" and _C is not None


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy array sharing the CPU tensor's memory (copied only if not contiguous)."""
    return t.contiguous().numpy()


def distort_and_score(images, sigma, var, seed, ids, score):
    out, scores = _C.distort_and_score(
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


# -- LRN: custom ops, so that autograd and torch.compile (without a graph break) both use the kernels --


def _lrn_call(fn, tensors, **params):
    """Run an LRN kernel on float32 or bfloat16 NCHW tensors (all of the first one's dtype) in their own
    layout: channels_last ones as N x H x W x C arrays (no copy), the rest as NCHW-contiguous ones; the
    result keeps the first tensor's layout and dtype. bfloat16 travels as its bits, a uint16 view (numpy
    has no bfloat16): no copy, no conversion; the kernels compute in float32 and round what they write."""
    bf16 = tensors[0].dtype == torch.bfloat16
    tensors = [t.detach().to(tensors[0].dtype) for t in tensors]
    tensors = [t.view(torch.uint16) for t in tensors] if bf16 else tensors
    cl = tensors[0].is_contiguous(memory_format=torch.channels_last) and not tensors[0].is_contiguous()
    if cl:
        arrays = [t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).numpy() for t in tensors]
        out = torch.from_numpy(fn(*arrays, channels_last=True, bf16=bf16, threads=torch.get_num_threads(),
                                  **params)).permute(0, 3, 1, 2)
    else:
        out = torch.from_numpy(fn(*map(_numpy, tensors), channels_last=False, bf16=bf16,
                                  threads=torch.get_num_threads(), **params))
    return out.view(torch.bfloat16) if bf16 else out


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
    """float32 and bfloat16 (what bf16 autocast hands the LRN: ReLU and max-pool of a bf16 convolution)
    straight through the kernels, bfloat16 in and out, float32 inside; float16 through a float32 copy;
    float64 on the reference, which keeps its precision."""
    if x.dtype == torch.float64:
        return reference.lrn(x, radius, bias, alpha, beta)
    if x.dtype == torch.float16:
        return lrn_op(x.float(), radius, bias, alpha, beta).to(x.dtype)
    return lrn_op(x, radius, bias, alpha, beta)
