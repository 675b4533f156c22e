"""lrn: TensorFlow's local response normalisation across channels, every backend against the formula
written out (``helpers.lrn_formula``, in float64) and its autograd, and the argument rules.

Correct means (docs/ops.md): forward and gradient within rtol 2e-6 (about 16 float32 ulps; the C++
kernels sum and raise to the power differently from the float64 formula) with an absolute floor of
1e-6 of the largest value; the model's forward with TF's parameters within 1e-5 of TF's formula.
The C++ kernels' own properties (every instruction set, thread count and layout, the same bits) are
in tests/kernels/test_csrc.py.

bfloat16 (what bf16 autocast hands the LRN): every backend against the float32 reference on the same
bfloat16-valued inputs, within one bfloat16 rounding (below); the C++ kernels' bfloat16 path is, bit for
bit, the bfloat16 rounding of their float32 result, on every instruction set, thread count and layout,
and runs without a conversion copy.
"""

import numpy as np
import pytest
import torch

from iqals_fast.model import LRN_ALPHA, LRN_BETA, LRN_BIAS, LRN_DEPTH_RADIUS, PaperCNN, lrn_tf, standardize
from iqals_fast.ops import dispatch, reference
from iqals_fast.ops.api import lrn
from iqals_fast.ops.cpu import _C

from .helpers import lrn_formula

OP = "lrn"
TF = dict(radius=LRN_DEPTH_RADIUS, bias=LRN_BIAS, alpha=LRN_ALPHA, beta=LRN_BETA)
SHAPES = [(2, 64, 16, 16), (3, 5, 7, 9), (1, 1, 8, 8), (2, 13, 1, 1), (2, 64, 33, 31), (1, 70, 3, 65)]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    a, b = a.detach(), b.detach().to(a.dtype)
    torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-6 * float(b.abs().max()))


def formula_grad(x: torch.Tensor, dy: torch.Tensor, **p) -> torch.Tensor:
    xd = x.double().requires_grad_()
    (lrn_formula(xd, p["radius"], p["bias"], p["alpha"], p["beta"]) * dy.double()).sum().backward()
    return xd.grad


def forward_backward(x, dy, backend, **p):
    xt = x.clone().requires_grad_()
    y = lrn(xt, **p, backend=backend)
    (g,) = torch.autograd.grad(y, xt, dy)
    return y, g


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [1.0, 40.0])  # 40: the window sum dominates the bias
def test_matches_formula_and_autograd(backend, device, shape, scale):
    g = torch.Generator().manual_seed(hash(shape) % 2**31)
    x = torch.randn(shape, generator=g) * scale
    dy = torch.randn(shape, generator=g)
    y, grad = forward_backward(x.to(device), dy.to(device), backend, **TF)
    close(y.cpu(), lrn_formula(x.double(), **TF))
    close(grad.cpu(), formula_grad(x, dy, **TF))


@pytest.mark.parametrize("p", [dict(radius=2, bias=2.0, alpha=1e-2, beta=0.5),
                               dict(radius=0, bias=1.0, alpha=0.3, beta=1.3)])
def test_other_parameters_take_the_general_power(backend, device, p):
    x = torch.randn(2, 11, 5, 5) * 3
    dy = torch.randn_like(x)
    y, grad = forward_backward(x.to(device), dy.to(device), backend, **p)
    close(y.cpu(), lrn_formula(x.double(), **p))
    close(grad.cpu(), formula_grad(x, dy, **p))


def test_model_lrn_matches_the_tensorflow_formula(backend, device):
    """tf.nn.lrn(depth_radius=4, bias=1, alpha=0.001/9, beta=0.75): sqr_sum over c-4..c+4, then
    x / (1 + 0.001/9 * sqr_sum) ** 0.75 (PyTorch's own alpha is divided by the window: n = 9)."""
    x = (torch.rand(2, 64, 5, 7) * 20).to(device)
    torch.testing.assert_close(lrn_tf(x, backend).double().cpu(), lrn_formula(x.double(), 4, 1.0, 0.001 / 9, 0.75).cpu(),
                               rtol=1e-5, atol=0)


def test_float64_gradient_matches_formula_autograd(backend, device):
    x = (torch.rand(2, 16, 3, 3, dtype=torch.float64) * 10).to(device).requires_grad_()
    g1 = torch.autograd.grad(lrn_tf(x, backend).sum(), x)[0]
    g2 = torch.autograd.grad(lrn_formula(x, **TF).sum(), x)[0]
    torch.testing.assert_close(g1, g2)


def test_backends_agree():
    assert dispatch.resolve("lrn", "auto", torch.device("cpu"))[0] == "cpu"
    x = (torch.randn(4, 64, 16, 16) * 5).requires_grad_()
    y_cpu = lrn(x, **TF, backend="cpu")
    y_torch = lrn(x, **TF, backend="torch")
    close(y_cpu, y_torch)
    dy = torch.randn_like(x)
    (g_cpu,) = torch.autograd.grad(y_cpu, x, dy)
    (g_torch,) = torch.autograd.grad(y_torch, x, dy)
    torch.testing.assert_close(g_cpu, g_torch, rtol=1e-5, atol=1e-6 * float(g_torch.abs().max()))


def test_non_contiguous_half_and_double_inputs(backend, device):
    base = torch.randn(3, 64, 8, 8) * 4
    ref = lrn_formula(base.double(), **TF)
    x = base.to(device)
    close(lrn(x.to(memory_format=torch.channels_last), **TF, backend=backend).cpu(), ref)
    close(lrn(x[:, :, ::2, 1::2], **TF, backend=backend).cpu(), ref[:, :, ::2, 1::2])
    for half in (torch.bfloat16, torch.float16):  # computed in float32, returned in the input's dtype
        y16 = lrn(x.to(half), **TF, backend=backend)
        assert y16.dtype == half
        torch.testing.assert_close(y16.float().cpu(), ref.float(), rtol=1e-2, atol=1e-2)
    y64 = lrn(x.double(), **TF, backend=backend)  # float64 keeps its precision (the reference)
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.cpu(), ref, rtol=1e-12, atol=0)


@pytest.mark.backends("cpu")
def test_custom_op_registration_is_consistent(backend):
    """torch.library.opcheck: fake tensor, schema, autograd registration and AOT dispatch of the op."""
    x = (torch.randn(2, 16, 4, 4) * 3).requires_grad_()
    torch.library.opcheck(torch.ops.iqals_fast.lrn.default, (x, 4, 1.0, 0.001 / 9, 0.75))
    dy = torch.randn(2, 16, 4, 4)
    torch.library.opcheck(torch.ops.iqals_fast.lrn_backward.default, (x.detach(), dy, 4, 1.0, 0.001 / 9, 0.75))
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.iqals_fast.lrn.default, (xc, 4, 1.0, 0.001 / 9, 0.75))
    for xb in (x.detach().bfloat16().requires_grad_(), xc.detach().bfloat16().requires_grad_()):
        torch.library.opcheck(torch.ops.iqals_fast.lrn.default, (xb, 4, 1.0, 0.001 / 9, 0.75))
        torch.library.opcheck(torch.ops.iqals_fast.lrn_backward.default,
                              (xb.detach(), dy.bfloat16(), 4, 1.0, 0.001 / 9, 0.75))


def test_model_gradients_agree_between_backends():
    """(Seeded input: unseeded, about 1 random batch in 30 exceeded these bounds in conv1.)"""
    g = torch.Generator().manual_seed(0)
    x = standardize(torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8, generator=g))
    grads = {}
    for backend in ("cpu", "torch"):
        m = PaperCNN(seed=3, lrn_backend=backend)
        m(x).square().sum().backward()
        grads[backend] = {k: p.grad for k, p in m.named_parameters()}
    for k, g in grads["torch"].items():
        torch.testing.assert_close(grads["cpu"][k], g, rtol=1e-4, atol=1e-6 * float(g.abs().max()), msg=k)


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(x=torch.zeros(2, 4, 3, 3, dtype=torch.int32)), "lrn needs a floating-point N x C x H x W tensor"),
        (dict(x=torch.zeros(4, 3, 3)), "lrn needs"),
        (dict(radius=-1), r"radius must lie in \[0, 4096\]"),
        (dict(radius=1.5), "radius must lie in"),
        (dict(bias=0.0), "bias must be finite and > 0"),
        (dict(alpha=float("nan")), "alpha must be finite"),
        (dict(beta=float("inf")), "beta must be finite"),
        (dict(backend="triton"), "backend 'triton' is not available for 'lrn'"),
    ],
)
def test_bad_input_gives_clear_errors(kw, msg):
    args = {"x": torch.zeros(2, 4, 3, 3), **TF, **kw}
    with pytest.raises(ValueError, match=msg):
        lrn(**args)


# -- bfloat16 ------------------------------------------------------------------------------------

# One rounding to bfloat16 (8 significant bits, to nearest) moves a value by at most 2^-9 of itself;
# rtol 2^-8 leaves as much again for the float32 computation before it (~16 float32 ulps, 2e-6, the
# float32 tests' bound, is far inside). The absolute floor is the float32 tests' own (1e-6 of the
# largest value): where a gradient cancels (dy * s^-beta - 2 alpha beta x sum), float32's error is
# relative to the terms, not to their small difference.
BF16_RTOL = 2.0**-8


def close_bf16(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == torch.bfloat16
    a, b = a.detach().float(), b.detach().float()
    torch.testing.assert_close(a, b, rtol=BF16_RTOL, atol=1e-6 * float(b.abs().max()))


def bf16_inputs(shape, scale, layout=torch.contiguous_format):
    """bfloat16 x and dy, and the same values in float32 (exact: every bfloat16 is a float32)."""
    g = torch.Generator().manual_seed(hash((shape, scale)) % 2**31)
    x = (torch.randn(shape, generator=g) * scale).bfloat16().contiguous(memory_format=layout)
    dy = torch.randn(shape, generator=g).bfloat16().contiguous(memory_format=layout)
    return x, dy


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [1.0, 40.0])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_bf16_matches_the_float32_reference_on_bf16_inputs(backend, device, shape, scale, layout):
    x, dy = bf16_inputs(shape, scale, layout)
    y, grad = forward_backward(x.to(device), dy.to(device), backend, **TF)
    assert y.dtype == grad.dtype == torch.bfloat16
    x32 = x.float().requires_grad_()
    y32 = reference.lrn(x32, **TF)  # float32, on the very values the bfloat16 call saw
    (g32,) = torch.autograd.grad(y32, x32, dy.float())
    close_bf16(y.cpu(), y32)
    close_bf16(grad.cpu(), g32)


@pytest.mark.parametrize("shape", SHAPES)
def test_bf16_kernels_round_the_float32_kernels_result_bit_for_bit(shape):
    """Every instruction set, thread count and layout: bfloat16 in, float32 inside, one rounding out."""
    if _C is None:
        pytest.skip("the C++ extension is not built")
    x, dy = bf16_inputs(shape, 20.0)
    bits = lambda t: t.view(torch.uint16).numpy()  # noqa: E731
    nhwc = lambda t: t.permute(0, 2, 3, 1).contiguous()  # noqa: E731
    want_y = torch.from_numpy(_C.lrn_forward(x.float().numpy(), **TF)).bfloat16()
    want_dx = torch.from_numpy(_C.lrn_backward(x.float().numpy(), dy.float().numpy(), **TF)).bfloat16()
    for isa in _C.isas():
        for threads in (1, 2, 3):
            kw = dict(bf16=True, isa=isa, threads=threads, **TF)
            np.testing.assert_array_equal(_C.lrn_forward(bits(x), **kw), bits(want_y))
            np.testing.assert_array_equal(_C.lrn_backward(bits(x), bits(dy), **kw), bits(want_dx))
            np.testing.assert_array_equal(_C.lrn_forward(bits(nhwc(x)), channels_last=True, **kw),
                                          bits(nhwc(want_y)))
            np.testing.assert_array_equal(_C.lrn_backward(bits(nhwc(x)), bits(nhwc(dy)), channels_last=True, **kw),
                                          bits(nhwc(want_dx)))


@pytest.mark.backends("cpu")
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_bf16_runs_without_conversion_copies(backend, layout):
    """bfloat16 goes to the kernels as it is, forward and backward: no float32 copy of x, y, dy or dx
    (aten::_to_copy / copy_), the output in the input's layout."""
    x, dy = bf16_inputs((4, 64, 16, 16), 5.0, layout)
    x.requires_grad_()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        y = lrn(x, **TF, backend=backend)
        (g,) = torch.autograd.grad(y, x, dy)
    names = {e.name for e in prof.events()}
    assert {"iqals_fast::lrn", "iqals_fast::lrn_backward"} <= names
    assert not names & {"aten::_to_copy", "aten::copy_", "aten::clone"}, sorted(names)
    assert y.dtype == g.dtype == torch.bfloat16
    assert y.is_contiguous(memory_format=layout) and g.is_contiguous(memory_format=layout)


def test_bf16_kernel_rounds_as_torch_does():
    """To nearest, ties to even; inf, NaN, -0 and subnormals kept. With radius 0 and alpha 0, s = bias and
    y = x * bias^-beta: beta = 0 gives y = x exactly, beta = -1 and x = 1 give y = bias, any float32."""
    if _C is None:
        pytest.skip("the C++ extension is not built")

    def run(x: torch.Tensor, bias: float, beta: float) -> torch.Tensor:
        bits = x.bfloat16().view(torch.uint16).numpy().reshape(1, -1, 1, 1)
        out = _C.lrn_forward(bits, radius=0, bias=bias, alpha=0.0, beta=beta, bf16=True)
        return torch.from_numpy(out).view(torch.bfloat16).flatten()

    special = torch.tensor([1.0, float("inf"), -float("inf"), 3.0e38, -0.0, 1e-40, -2.5])
    y = run(special, 1.0, 0.0)
    assert torch.equal(y.view(torch.uint16), special.bfloat16().view(torch.uint16))
    assert run(torch.tensor([float("nan")]), 1.0, 0.0).isnan().all()
    # 1 + 2^-8 and 1 + 3 * 2^-8 lie halfway between two bfloat16 values (their ulp at 1 is 2^-7): to the even one
    for v, want in [(1 + 2.0**-8, 1.0), (1 + 3 * 2.0**-8, 1 + 2.0**-6), (1 + 2.0**-8 + 2.0**-20, 1 + 2.0**-7),
                    (3.14159, float(torch.tensor(3.14159).bfloat16()))]:
        got = run(torch.ones(1), v, -1.0)
        assert float(got) == want == float(torch.tensor(v).bfloat16()), (v, float(got))
