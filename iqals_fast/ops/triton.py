"""Backend ``triton``: the fused kernels of ``iqals_fast.kernels`` behind the dispatch signatures.

Ops: ``distort_and_score`` and ``ssim`` (kernels/distort_and_score.py), ``soft_label_mse``
(kernels/soft_label_mse.py). :func:`available` says whether ``triton`` is installed (without
importing it); the kernels are imported, and so defined, on first use. They run on CUDA tensors, and
on CPU tensors when ``TRITON_INTERPRET=1`` was set before they were defined (the Triton interpreter:
slow, for tests without a GPU) and is set at the call (:func:`supports`).

The constants (blur and SSIM taps, C1, C2) come from ``iqals_fast.config``; the kernels' configuration
is ``kernels.distort_and_score.DEFAULT``.

The loss is differentiable two ways that share the same forward launch (loss and gradient for a unit
upstream gradient) and the same backward (one multiply by the upstream gradient, on the device):
- eager: a ``torch.autograd.Function`` (the least Python between the caller and the kernel);
- under ``torch.compile``: the custom op ``iqals_fast::soft_label_mse`` (``torch.library``, with a
  fake implementation and a registered autograd formula), which the compiler traces without a graph
  break.
Both capture in a CUDA graph once warmed up (no host sync; the kernel's scratch is allocated on the
first call and reused). The gradient with respect to the on-true targets (scores) is not computed:
they are data.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from types import ModuleType

import torch

from ..config import BLUR_TRUNCATE, SSIM, gaussian_taps

SSIM_TAPS = tuple(gaussian_taps(SSIM.sigma, SSIM.truncate))
C1_255 = (SSIM.k1 * 255.0) ** 2  # C1 and C2 on the kernel's 0..255 scale
C2_255 = (SSIM.k2 * 255.0) ** 2


@functools.cache
def available() -> bool:
    """Whether ``triton`` is installed here (not imported)."""
    return importlib.util.find_spec("triton") is not None


@functools.cache
def kernels() -> tuple[ModuleType, ModuleType]:
    """(kernels.distort_and_score, kernels.soft_label_mse), imported (the @triton.jit kernels defined) once."""
    from ..kernels import distort_and_score, soft_label_mse

    return distort_and_score, soft_label_mse


def interpreted() -> bool:
    """Whether the kernels were defined under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
    return type(kernels()[0].distort_and_score_kernel).__name__ == "InterpretedFunction"


@functools.cache
def _importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # installed but broken here: the next backend serves
        return False
    return True


def supports(device: torch.device) -> bool:
    if not available():
        return False
    if device.type == "cuda":
        return _importable()
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1" and interpreted()


@functools.lru_cache(maxsize=64)
def _blur_taps(sigma: float) -> tuple[float, ...]:
    return tuple(gaussian_taps(sigma, BLUR_TRUNCATE))


# -- images ---------------------------------------------------------------------------------------


def distort_and_score(images, sigma, var, seed, ids, score):
    kds = kernels()[0]
    return kds.distort_and_score(
        images, None if sigma is None else _blur_taps(float(sigma)), None if var is None else float(var) ** 0.5,
        seed, ids, score, SSIM_TAPS, C1_255, C2_255)


def ssim(reference, distorted):
    kds = kernels()[0]
    return kds.distort_and_score(reference, None, None, 0, None, True, SSIM_TAPS, C1_255, C2_255,
                                 distorted=distorted)[1]


# -- the loss: custom op (for torch.compile) ---------------------------------------------------------


@torch.library.custom_op("iqals_fast::soft_label_mse", mutates_args=())
def soft_label_mse_op(logits: torch.Tensor, labels: torch.Tensor, on_true: torch.Tensor,
                      store_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, dloss/dlogits for a unit upstream gradient in the logits' dtype; empty unless store_grad)."""
    return kernels()[1].soft_label_mse_fwd(logits, labels, on_true, store_grad)


@soft_label_mse_op.register_fake
def _(logits, labels, on_true, store_grad):
    loss = logits.new_empty((), dtype=torch.float32)
    grad = logits.new_empty(tuple(logits.shape) if store_grad else (0,))
    return loss, grad


def _setup_context(ctx, inputs, output):
    _, _, _, store_grad = inputs
    _, grad = output
    ctx.mark_non_differentiable(grad)
    ctx.save_for_backward(grad)
    ctx.store_grad = store_grad


def _backward(ctx, grad_loss, _grad_grad):
    if not ctx.store_grad:
        raise RuntimeError("soft_label_mse was called with store_grad=False; it has no gradient to give")
    (grad,) = ctx.saved_tensors
    return kernels()[1].soft_label_mse_bwd(grad, grad_loss), None, None, None


soft_label_mse_op.register_autograd(_backward, setup_context=_setup_context)


# -- the loss: eager autograd ------------------------------------------------------------------------


class _SoftLabelMSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, on_true):
        loss, grad = kernels()[1].soft_label_mse_fwd(logits, labels, on_true, ctx.needs_input_grad[0])
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return kernels()[1].soft_label_mse_bwd(grad, grad_loss), None, None


def soft_label_mse(logits, labels, on_true):
    if torch.compiler.is_compiling():
        store = torch.is_grad_enabled() and logits.requires_grad
        return soft_label_mse_op(logits, labels, on_true, store)[0]
    return _SoftLabelMSE.apply(logits, labels, on_true)
