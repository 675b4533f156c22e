"""The C++ kernels (csrc/, the module iqals_fast._C) beyond the operation tests (tests/ops/, backend
``cpu``): every instruction set, thread count, batch split and layout computes the same bits, calls from
Python threads, and the bindings' checks, which protect memory (dtype, contiguity, shapes that agree,
sizes the kernels' buffers hold); the value rules are Python's (iqals_fast/ops/checks.py, tested in
tests/ops/)."""

import re
import threading

import numpy as np
import pytest
import torch
from ops.helpers import lrn_formula

from iqals_fast.config import BLUR_TRUNCATE, SSIM, gaussian_taps
from iqals_fast.model import LRN_ALPHA, LRN_BETA, LRN_BIAS, LRN_DEPTH_RADIUS
from iqals_fast.ops.api import lrn

_C = pytest.importorskip("iqals_fast._C", reason="the C++ extension was not built")
SSIM_TAPS = np.asarray(gaussian_taps(SSIM.sigma, SSIM.truncate))
TF = dict(radius=LRN_DEPTH_RADIUS, bias=LRN_BIAS, alpha=LRN_ALPHA, beta=LRN_BETA)
LRN_SHAPES = [(2, 64, 16, 16), (3, 5, 7, 9), (1, 1, 8, 8), (2, 13, 1, 1), (2, 64, 33, 31), (1, 70, 3, 65)]


def c_distort(x, kind, p, seed=0, ids=None, score=True, **kw):
    sigma, var = {"blur": (p, None), "noise": (None, p), "blur+noise": p}[kind]
    return _C.distort_and_score(
        x, blur_taps=None if sigma is None else np.asarray(gaussian_taps(sigma, BLUR_TRUNCATE)), noise_var=var,
        seed=seed, ids=ids, ssim_taps=SSIM_TAPS if score else None, c1=SSIM.c1, c2=SSIM.c2, **kw)


def c_ssim(x, y, **kw):
    return _C.ssim(x, y, taps=SSIM_TAPS, c1=SSIM.c1, c2=SSIM.c2, **kw)


# --- distort_and_score, ssim: independence of threads, batch split, instruction set; concurrency ---

@pytest.mark.data
def test_results_identical_for_any_thread_count_and_batch_split(real_images):
    x, ids = real_images, np.arange(1000, 1000 + len(real_images), dtype=np.int64)
    ref, ref_s = c_distort(x, "blur+noise", (1.2, 0.02), seed=9, ids=ids, threads=1)
    for threads in (2, 3, 7):
        out, s = c_distort(x, "blur+noise", (1.2, 0.02), seed=9, ids=ids, threads=threads)
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(s, ref_s)
    for cut in (1, 77, 199):
        a, sa = c_distort(x[:cut], "blur+noise", (1.2, 0.02), seed=9, ids=ids[:cut])
        b, sb = c_distort(x[cut:], "blur+noise", (1.2, 0.02), seed=9, ids=ids[cut:])
        np.testing.assert_array_equal(np.concatenate([a, b]), ref)
        np.testing.assert_array_equal(np.concatenate([sa, sb]), ref_s)
    # order inside the batch does not matter either: noise follows the image's id
    perm = np.random.default_rng(0).permutation(len(x))
    out, s = c_distort(x[perm], "blur+noise", (1.2, 0.02), seed=9, ids=ids[perm], threads=2)
    np.testing.assert_array_equal(out, ref[perm])
    np.testing.assert_array_equal(s, ref_s[perm])


@pytest.mark.parametrize("hw", [(8, 8), (33, 47), (100, 37)])
def test_every_instruction_set_computes_the_same_bits(gen, hw):
    x = gen(5, *hw, seed=3)
    score = min(hw) >= SSIM.win
    ref = c_distort(x, "blur+noise", (0.7, 0.005), seed=1, score=score, isa=_C.isas()[-1])
    for isa in _C.isas():
        out = c_distort(x, "blur+noise", (0.7, 0.005), seed=1, score=score, isa=isa)
        np.testing.assert_array_equal(out[0], ref[0])
        if score:
            np.testing.assert_array_equal(out[1], ref[1])
            np.testing.assert_array_equal(c_ssim(x, out[0], isa=isa), ref[1])


def test_concurrent_calls_from_python_threads(gen):
    x = gen(64, 32, 32)
    ref = c_distort(x, "blur+noise", (1.0, 0.01), seed=4)
    results = [None] * 4

    def work(i):
        results[i] = c_distort(x, "blur+noise", (1.0, 0.01), seed=4, threads=2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out, s in results:
        np.testing.assert_array_equal(out, ref[0])
        np.testing.assert_array_equal(s, ref[1])


def test_defaults_do_nothing_but_copy(gen):
    x = gen(3, 32, 32)
    out, s = _C.distort_and_score(x)  # nothing to do: a copy, no score
    np.testing.assert_array_equal(out, x)
    assert s is None


# --- the bindings' checks: what protects memory ----------------------------------------------------

def _bad(**kw):
    args = dict(images=np.zeros((2, 16, 16, 3), np.uint8), blur_taps=np.asarray(gaussian_taps(1.0, 4.0)),
                noise_var=0.01, seed=0, ids=None, ssim_taps=SSIM_TAPS, c1=SSIM.c1, c2=SSIM.c2)
    args.update(kw)
    images = args.pop("images")
    return lambda: _C.distort_and_score(images, **args)


@pytest.mark.parametrize(
    "call,exc,msg",
    [
        (_bad(images=np.zeros((2, 16, 16, 3), np.float32)), TypeError, "images must have dtype uint8"),
        (_bad(images=[[1, 2, 3]]), TypeError, "images must be a numpy array"),
        (_bad(images=np.zeros((2, 16, 16), np.uint8)), ValueError, "N x H x W x 3"),
        (_bad(images=np.zeros((2, 16, 16, 4), np.uint8)), ValueError, "N x H x W x 3"),
        (_bad(images=np.zeros((2, 16, 16, 3), np.uint8)[:, ::2]), ValueError, "C-contiguous"),
        (_bad(images=np.zeros((2, 10, 16, 3), np.uint8)), ValueError, "SSIM needs images of at least 11 x 11"),
        (_bad(noise_var="0.1"), TypeError, "noise_var must be a real number"),
        (_bad(blur_taps=np.array([0.5, 0.5])), ValueError, "odd number of taps"),
        (_bad(blur_taps=np.array([1, 2, 1])), TypeError, "blur_taps must be a float array"),
        (_bad(ssim_taps=np.ones(65) / 65), ValueError, "at most 63 taps"),
        (_bad(c2=None), TypeError, "c2 must be a real number"),
        (_bad(seed=1.5), TypeError, "seed must be an integer"),
        (_bad(ids=np.array([0, 1, 2])), ValueError, "one id per image (2)"),
        (_bad(ids=np.array([0.0, 1.0])), TypeError, "ids must be an integer array"),
        (_bad(threads=-2), ValueError, "threads must lie in [0, 4096]"),
        (_bad(isa="avx9000"), ValueError, "isa must be 'best' or one this CPU runs"),
        (lambda: c_ssim(np.zeros((2, 16, 16, 3), np.uint8), np.zeros((2, 16, 17, 3), np.uint8)), ValueError,
         "must have the same shape"),
        (lambda: c_ssim(np.zeros((2, 10, 40, 3), np.uint8), np.zeros((2, 10, 40, 3), np.uint8)), ValueError,
         "SSIM needs images of at least 11 x 11 pixels"),
        (lambda: c_ssim(np.zeros((2, 16, 16, 3), np.int8), np.zeros((2, 16, 16, 3), np.uint8)), TypeError,
         "reference must have dtype uint8"),
        (lambda: _C.philox(np.zeros(3, np.int64), 0, 0), TypeError, "counters must be a 1-D uint32 array"),
        (lambda: _C.normals(0, 0, 2**32 - 1, 2), ValueError, "first + count <= 2**32"),
    ],
)
def test_bad_input_raises_a_clear_error(call, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        call()


# --- LRN: every instruction set, thread count and layout ------------------------------------------

def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    a, b = a.detach(), b.detach().to(a.dtype)
    torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-6 * float(b.abs().max()))


def _formula_grad(x: torch.Tensor, dy: torch.Tensor, **p) -> torch.Tensor:
    xd = x.double().requires_grad_()
    (lrn_formula(xd, p["radius"], p["bias"], p["alpha"], p["beta"]) * dy.double()).sum().backward()
    return xd.grad


@pytest.mark.parametrize("shape", LRN_SHAPES)
@pytest.mark.parametrize("scale", [1.0, 40.0])  # 40: the window sum dominates the bias
def test_lrn_kernels_of_every_isa_match_formula_and_autograd(shape, scale):
    g = torch.Generator().manual_seed(hash(shape) % 2**31)
    x = torch.randn(shape, generator=g) * scale
    dy = torch.randn(shape, generator=g)
    ref = lrn_formula(x.double(), **TF)
    grad = _formula_grad(x, dy, **TF)
    for isa in _C.isas():
        _close(torch.from_numpy(_C.lrn_forward(x.numpy(), isa=isa, **TF)), ref)
        _close(torch.from_numpy(_C.lrn_backward(x.numpy(), dy.numpy(), isa=isa, **TF)), grad)


def test_lrn_same_bits_for_any_isa_and_thread_count():
    x = torch.randn(5, 64, 9, 17) * 10
    dy = torch.randn_like(x)
    base_y = _C.lrn_forward(x.numpy(), threads=1, isa="sse2", **TF)
    base_dx = _C.lrn_backward(x.numpy(), dy.numpy(), threads=1, isa="sse2", **TF)
    for isa in _C.isas():
        for threads in (1, 2, 3, 7):
            np.testing.assert_array_equal(_C.lrn_forward(x.numpy(), threads=threads, isa=isa, **TF), base_y)
            np.testing.assert_array_equal(_C.lrn_backward(x.numpy(), dy.numpy(), threads=threads, isa=isa, **TF), base_dx)


@pytest.mark.parametrize("shape", LRN_SHAPES)
def test_lrn_channels_last_layout_gives_the_same_bits(shape):
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
    yt = lrn(xt, **TF, backend="cpu")
    if x.shape[1] > 1 and x.shape[2] * x.shape[3] > 1:
        assert yt.is_contiguous(memory_format=torch.channels_last) and not yt.is_contiguous()
    (g,) = torch.autograd.grad(yt, xt, dy)
    torch.testing.assert_close(g.contiguous(), torch.from_numpy(_C.lrn_backward(x.numpy(), dy.numpy(), **TF)),
                               rtol=0, atol=0)


def test_lrn_bad_input_gives_clear_errors():
    x = np.zeros((2, 4, 3, 3), np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32, got float64"):
        _C.lrn_forward(x.astype(np.float64), **TF)
    with pytest.raises(ValueError, match=r"x must be 4-D \(N x C x H x W, or N x H x W x C\), got \(4, 3, 3\)"):
        _C.lrn_forward(x[0], **TF)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.lrn_forward(x[:, :, :, ::2], **TF)
    with pytest.raises(ValueError, match="radius must lie in"):  # it sizes the kernels' scratch
        _C.lrn_forward(x, **{**TF, "radius": -1})
    with pytest.raises(TypeError, match="bias must be a real number"):
        _C.lrn_forward(x, **{**TF, "bias": "1"})
    with pytest.raises(ValueError, match="x and dy must have the same shape"):
        _C.lrn_backward(x, x[:1], **TF)
