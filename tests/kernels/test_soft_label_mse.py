"""The fused loss kernel (iqals_fast/kernels/soft_label_mse.py) beyond the op's tests (tests/ops/
test_soft_label_mse.py): rows walked in blocks of K, the in-kernel reduction over many programs
(deterministic, equal to the host's), one program storing the mean itself."""

from __future__ import annotations

import importlib.util

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

from ops.helpers import check_loss, eager_loss, loss_case

from iqals_fast.kernels import soft_label_mse as ksl


@pytest.mark.parametrize("k,block_k", [(1000, 128), (37, 16), (3001, 1024)])
def test_loss_blocked_over_k(triton_device, k, block_k):
    z, y, s = loss_case(5, k, torch.float32, triton_device)
    r_loss, r_grad = eager_loss(z, y, s, "identity")
    loss, g = ksl.soft_label_mse_fwd(z, y, s, True, block_k=block_k)
    grad = ksl.soft_label_mse_bwd(g, torch.ones((), device=triton_device))
    check_loss(loss, grad, r_loss, r_grad, torch.float32)


def test_loss_many_programs_deterministic(triton_device):
    """The in-kernel reduction over many programs: right, bitwise repeatable, same as the host reduction."""
    b = 65536 if triton_device.type == "cuda" else 3000
    z, y, s = loss_case(b, 10, torch.float32, triton_device)
    r_loss, _ = eager_loss(z, y, s, "identity")
    losses = [ksl.soft_label_mse_fwd(z, y, s, False)[0] for _ in range(5)]
    for loss in losses:
        assert torch.equal(loss, losses[0])
    torch.testing.assert_close(losses[0].cpu(), r_loss.cpu(), rtol=1e-6, atol=1e-6)
    host = ksl.soft_label_mse_fwd(z, y, s, False, reduce_in_kernel=False)[0]
    torch.testing.assert_close(host.cpu(), losses[0].cpu(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("b", [100, 256])
def test_loss_single_program(triton_device, b):
    """B <= BLOCK_B (256 at K = 10): one program, which stores the mean itself (no partials, no atomics)."""
    z, y, s = loss_case(b, 10, torch.float32, triton_device)
    assert b <= ksl.ELEMENTS_PER_PROGRAM // 16  # BLOCK_B at K = 10 (BLOCK_K 16): one program
    r_loss, r_grad = eager_loss(z, y, s, "identity")
    loss, g = ksl.soft_label_mse_fwd(z, y, s, True)
    check_loss(loss, ksl.soft_label_mse_bwd(g, torch.ones((), device=triton_device)), r_loss, r_grad, torch.float32)
    assert torch.equal(ksl.soft_label_mse_fwd(z, y, s, False)[0], loss)
    host = ksl.soft_label_mse_fwd(z, y, s, False, reduce_in_kernel=False)[0]
    torch.testing.assert_close(host.cpu(), loss.cpu(), rtol=1e-6, atol=1e-7)
