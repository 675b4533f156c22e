"""LRN (ops/lrn.py): the C++ kernels of csrc/lrn.cpp against the formula, autograd and the torch backend.

Tolerances: the kernels compute in float32 with a different summation and power than the float64
formula, so each value may differ by a few float32 ulps: rtol 2e-6 (about 16 ulps) on the forward
and on the gradient, whose two terms partly cancel, an absolute floor of 1e-6 of the largest value.
"""

import numpy as np
import pytest
import torch

from iqals_fast.model import LRN_ALPHA, LRN_BETA, LRN_BIAS, LRN_DEPTH_RADIUS, PaperCNN, standardize
from iqals_fast.ops import dispatch
from iqals_fast.ops.lrn import lrn, lrn_reference

_C = pytest.importorskip("iqals_fast._C")
TF = dict(radius=LRN_DEPTH_RADIUS, bias=LRN_BIAS, alpha=LRN_ALPHA, beta=LRN_BETA)
SHAPES = [(2, 64, 16, 16), (3, 5, 7, 9), (1, 1, 8, 8), (2, 13, 1, 1), (2, 64, 33, 31), (1, 70, 3, 65)]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    a, b = a.detach(), b.detach().to(a.dtype)
    torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-6 * float(b.abs().max()))


def _ref_grad(x: torch.Tensor, dy: torch.Tensor, **p) -> torch.Tensor:
    xd = x.double().requires_grad_()
    (lrn_reference(xd, p["radius"], p["bias"], p["alpha"], p["beta"]) * dy.double()).sum().backward()
    return xd.grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [1.0, 40.0])  # 40: the window sum dominates the bias
def test_kernels_match_formula_and_autograd(shape, scale):
    g = torch.Generator().manual_seed(hash(shape) % 2**31)
    x = torch.randn(shape, generator=g) * scale
    dy = torch.randn(shape, generator=g)
    ref = lrn_reference(x.double(), **TF)
    grad = _ref_grad(x, dy, **TF)
    for isa in _C.isas():
        _close(torch.from_numpy(_C.lrn_forward(x.numpy(), isa=isa, **TF)), ref)
        _close(torch.from_numpy(_C.lrn_backward(x.numpy(), dy.numpy(), isa=isa, **TF)), grad)


@pytest.mark.parametrize("p", [dict(radius=2, bias=2.0, alpha=1e-2, beta=0.5),
                               dict(radius=0, bias=1.0, alpha=0.3, beta=1.3)])
def test_other_parameters_take_the_general_power(p):
    x = torch.randn(2, 11, 5, 5) * 3
    dy = torch.randn_like(x)
    _close(torch.from_numpy(_C.lrn_forward(x.numpy(), **p)), lrn_reference(x.double(), **p))
    _close(torch.from_numpy(_C.lrn_backward(x.numpy(), dy.numpy(), **p)), _ref_grad(x, dy, **p))


def test_same_bits_for_any_isa_and_thread_count():
    x = torch.randn(5, 64, 9, 17) * 10
    dy = torch.randn_like(x)
    base_y = _C.lrn_forward(x.numpy(), threads=1, isa="sse2", **TF)
    base_dx = _C.lrn_backward(x.numpy(), dy.numpy(), threads=1, isa="sse2", **TF)
    for isa in _C.isas():
        for threads in (1, 2, 3, 7):
            np.testing.assert_array_equal(_C.lrn_forward(x.numpy(), threads=threads, isa=isa, **TF), base_y)
            np.testing.assert_array_equal(_C.lrn_backward(x.numpy(), dy.numpy(), threads=threads, isa=isa, **TF), base_dx)


@pytest.mark.parametrize("shape", SHAPES)
def test_channels_last_layout_gives_the_same_bits(shape):
    """The NHWC kernels (channels_last tensors, no layout copy) compute exactly what the NCHW ones do."""
    x = torch.randn(shape) * 20
    dy = torch.randn(shape)
    nhwc = lambda t: t.permute(0, 2, 3, 1).contiguous().numpy()  # noqa: E731
    for isa in _C.isas():
        for threads in (1, 2):
            y = _C.lrn_forward(x.numpy(), isa=isa, threads=threads, **TF)
            y_cl = _C.lrn_forward(nhwc(x), channels_last=True, isa=isa, threads=threads, **TF)
            np.testing.assert_array_equal(y_cl, nhwc(torch.from_numpy(y)))
            dx = _C.lrn_backward(x.numpy(), dy.numpy(), isa=isa, threads=threads, **TF)
            dx_cl = _C.lrn_backward(nhwc(x), nhwc(dy), channels_last=True, isa=isa, threads=threads, **TF)
            np.testing.assert_array_equal(dx_cl, nhwc(torch.from_numpy(dx)))
    xt = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    yt = lrn(xt, **TF)
    if x.shape[1] > 1 and x.shape[2] * x.shape[3] > 1:
        assert yt.is_contiguous(memory_format=torch.channels_last) and not yt.is_contiguous()
    (g,) = torch.autograd.grad(yt, xt, dy)
    torch.testing.assert_close(g.contiguous(), torch.from_numpy(_C.lrn_backward(x.numpy(), dy.numpy(), **TF)),
                               rtol=0, atol=0)


def test_dispatch_picks_the_kernels_on_cpu_and_both_backends_agree():
    assert dispatch.resolve("lrn", "auto", torch.device("cpu"))[0] == "cpu"
    x = (torch.randn(4, 64, 16, 16) * 5).requires_grad_()
    y_cpu = lrn(x, **TF, backend="cpu")
    y_torch = lrn(x, **TF, backend="torch")
    _close(y_cpu, y_torch)
    dy = torch.randn_like(x)
    (g_cpu,) = torch.autograd.grad(y_cpu, x, dy)
    (g_torch,) = torch.autograd.grad(y_torch, x, dy)
    torch.testing.assert_close(g_cpu, g_torch, rtol=1e-5, atol=1e-6 * float(g_torch.abs().max()))


def test_non_contiguous_half_and_double_inputs():
    base = torch.randn(3, 64, 8, 8) * 4
    ref = lrn_reference(base.double(), **TF)
    _close(lrn(base.to(memory_format=torch.channels_last), **TF), ref)  # NCHW-contiguous copy inside
    _close(lrn(base[:, :, ::2, 1::2], **TF), ref[:, :, ::2, 1::2])
    y16 = lrn(base.bfloat16(), **TF)
    assert y16.dtype == torch.bfloat16  # computed in float32, returned in the input's dtype
    torch.testing.assert_close(y16.float(), ref.float(), rtol=1e-2, atol=1e-2)
    y64 = lrn(base.double(), **TF)  # float64 keeps its precision (the torch backend)
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64, ref, rtol=1e-12, atol=0)


def test_custom_op_registration_is_consistent():
    """torch.library.opcheck: fake tensor, schema, autograd registration and AOT dispatch of the op."""
    x = (torch.randn(2, 16, 4, 4) * 3).requires_grad_()
    torch.library.opcheck(torch.ops.iqals_fast.lrn.default, (x, 4, 1.0, 0.001 / 9, 0.75))
    dy = torch.randn(2, 16, 4, 4)
    torch.library.opcheck(torch.ops.iqals_fast.lrn_backward.default, (x.detach(), dy, 4, 1.0, 0.001 / 9, 0.75))
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.iqals_fast.lrn.default, (xc, 4, 1.0, 0.001 / 9, 0.75))


def test_model_gradients_agree_between_backends():
    x = standardize(torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8))
    grads = {}
    for backend in ("cpu", "torch"):
        m = PaperCNN(seed=3, lrn_backend=backend)
        m(x).square().sum().backward()
        grads[backend] = {k: p.grad for k, p in m.named_parameters()}
    for k, g in grads["torch"].items():
        torch.testing.assert_close(grads["cpu"][k], g, rtol=1e-4, atol=1e-6 * float(g.abs().max()), msg=k)


def test_bad_input_gives_clear_errors():
    x = np.zeros((2, 4, 3, 3), np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32, got float64"):
        _C.lrn_forward(x.astype(np.float64), **TF)
    with pytest.raises(ValueError, match=r"x must be 4-D \(N x C x H x W, or N x H x W x C\), got \(4, 3, 3\)"):
        _C.lrn_forward(x[0], **TF)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.lrn_forward(x[:, :, :, ::2], **TF)
    with pytest.raises(ValueError, match="radius must lie in"):
        _C.lrn_forward(x, **{**TF, "radius": -1})
    with pytest.raises(ValueError, match="bias must be finite and > 0"):
        _C.lrn_forward(x, **{**TF, "bias": 0.0})
    with pytest.raises(ValueError, match="alpha must be finite"):
        _C.lrn_forward(x, **{**TF, "alpha": float("nan")})
    with pytest.raises(ValueError, match="x and dy must have the same shape"):
        _C.lrn_backward(x, x[:1], **TF)
    with pytest.raises(ValueError, match="lrn needs a floating-point N x C x H x W tensor"):
        lrn(torch.zeros(2, 4, 3, 3, dtype=torch.int32), **TF)
    with pytest.raises(ValueError, match="lrn needs"):
        lrn(torch.zeros(4, 3, 3), **TF)
