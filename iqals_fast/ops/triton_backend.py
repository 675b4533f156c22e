"""The Triton backend: the fused kernels of ``iqals_fast.kernels`` behind the dispatch signatures.

Registers ``distort_score``, ``ssim`` and ``soft_label_mse`` for backend "triton" only if ``triton``
imports. It runs on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1`` was set before the
kernels were defined (the Triton interpreter: slow, for tests without a GPU).

The loss is differentiable two ways that share the same forward launch (loss and gradient for a unit
upstream gradient) and the same backward (one multiply by the upstream gradient, on the device):
- eager: a ``torch.autograd.Function`` (the least Python between the caller and the kernel);
- under ``torch.compile``: the custom op ``iqals_fast::soft_label_mse`` (``torch.library``, with a
  fake implementation and a registered autograd formula), which the compiler traces without a graph
  break.
Both capture in a CUDA graph once warmed up (no host sync; the kernel's scratch is allocated on the
first call and reused).
The gradient with respect to the on-true targets (scores) is not computed: they are data.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import torch

from . import dispatch

try:
    import triton  # noqa: F401
except ImportError:  # no Triton in this installation: the backend does not register
    triton = None


def _import_kernels():
    """``iqals_fast.kernels``: shipped in the wheel; in a bare source checkout, the top-level kernels/."""
    try:
        return importlib.import_module("iqals_fast.kernels")
    except ModuleNotFoundError:
        src = Path(__file__).resolve().parents[2] / "kernels"
        if not (src / "__init__.py").is_file():
            raise
        spec = importlib.util.spec_from_file_location(
            "iqals_fast.kernels", src / "__init__.py", submodule_search_locations=[str(src)]
        )
        mod = importlib.util.module_from_spec(spec)
        sys.modules["iqals_fast.kernels"] = mod
        spec.loader.exec_module(mod)
        return mod


if triton is not None:
    _import_kernels()
    from iqals_fast.kernels import distort_ssim as _ds
    from iqals_fast.kernels import soft_label_mse as _sl

    INTERPRETED = type(_ds.distort_ssim_kernel).__name__ == "InterpretedFunction"
    """True when the kernels were defined under TRITON_INTERPRET=1 (they then run on CPU tensors)."""

    def supports(device: torch.device) -> bool:
        if device.type == "cuda":
            return True
        return device.type == "cpu" and INTERPRETED and os.environ.get("TRITON_INTERPRET") == "1"

    # -- images ---------------------------------------------------------------------------------

    def distort_score(images, sigma, var, seed, ids, score):
        std = None if var is None else float(var) ** 0.5
        return _ds.distort_ssim(images, None if sigma is None else float(sigma), std, seed, ids, score)

    def ssim(reference, distorted):
        return _ds.distort_ssim(reference, score=True, distorted=distorted)[1]

    # -- the loss: custom op (for torch.compile) -------------------------------------------------

    @torch.library.custom_op("iqals_fast::soft_label_mse", mutates_args=())
    def soft_label_mse_op(logits: torch.Tensor, labels: torch.Tensor, on_true: torch.Tensor,
                          store_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, dloss/dlogits for a unit upstream gradient in the logits' dtype; empty unless store_grad)."""
        return _sl.soft_label_mse_fwd(logits, labels, on_true, store_grad)

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
        return _sl.soft_label_mse_bwd(grad, grad_loss), None, None, None

    soft_label_mse_op.register_autograd(_backward, setup_context=_setup_context)

    # -- the loss: eager autograd -----------------------------------------------------------------

    class _SoftLabelMSE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, labels, on_true):
            loss, grad = _sl.soft_label_mse_fwd(logits, labels, on_true, ctx.needs_input_grad[0])
            ctx.save_for_backward(grad)
            return loss

        @staticmethod
        def backward(ctx, grad_loss):
            (grad,) = ctx.saved_tensors
            return _sl.soft_label_mse_bwd(grad, grad_loss), None, None

    def soft_label_mse(logits, labels, on_true):
        if torch.compiler.is_compiling():
            store = torch.is_grad_enabled() and logits.requires_grad
            return soft_label_mse_op(logits, labels, on_true, store)[0]
        return _SoftLabelMSE.apply(logits, labels, on_true)

    for _op, _fn in (("distort_score", distort_score), ("ssim", ssim), ("soft_label_mse", soft_label_mse)):
        dispatch.register(_op, "triton", _fn, supports)
