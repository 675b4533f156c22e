"""The cpu backend (C++ kernels, iqals_fast._C): parity with scikit-image and the torch backend,
independence of threads, batch split and instruction set, and clear errors at its boundary."""

import re
import threading

import numpy as np
import pytest
import torch
from skimage.filters import gaussian
from skimage.metrics import structural_similarity

import iqals_fast as iq
from iqals_fast import _C  # CI builds the extension: a missing module fails this file
from iqals_fast.config import BLUR_TRUNCATE, SSIM, gaussian_taps
from iqals_fast.ops import dispatch, noise, torch_backend

SHAPES = [(8, 8), (11, 13), (32, 32), (33, 47), (64, 64), (100, 37)]
SSIM_SHAPES = [s for s in SHAPES if min(s) >= SSIM.win]
SSIM_TAPS = np.asarray(gaussian_taps(SSIM.sigma, SSIM.truncate))
KINDS = [("blur", 1.0), ("noise", 0.01), ("blur+noise", (1.0, 0.01))]


def sk_ssim(a, b):
    return np.array([structural_similarity(x / 255.0, y / 255.0, channel_axis=-1, data_range=1.0, gaussian_weights=True,
                                           sigma=1.5, use_sample_covariance=False) for x, y in zip(a, b)])


def sk_blur(a, sigma):
    return np.stack([gaussian(x / 255.0, sigma=sigma, channel_axis=-1, mode="nearest", truncate=BLUR_TRUNCATE) for x in a])


def c_distort(x, kind, p, seed=0, ids=None, score=True, **kw):
    sigma, var = {"blur": (p, None), "noise": (None, p), "blur+noise": p}[kind]
    return _C.distort_score(
        x, blur_taps=None if sigma is None else np.asarray(gaussian_taps(sigma, BLUR_TRUNCATE)), noise_var=var,
        seed=seed, ids=ids, ssim_taps=SSIM_TAPS if score else None, c1=SSIM.c1, c2=SSIM.c2, **kw)


def c_ssim(x, y, **kw):
    return _C.ssim(x, y, taps=SSIM_TAPS, c1=SSIM.c1, c2=SSIM.c2, **kw)


def torch_distort(x, kind, p, seed=0, ids=None, score=True):
    sigma, var = {"blur": (p, None), "noise": (None, p), "blur+noise": p}[kind]
    ids = torch.arange(len(x)) if ids is None else torch.from_numpy(ids)
    out, s = torch_backend.distort_score(torch.from_numpy(x), sigma, var, seed, ids, score)
    return out.numpy(), (s.numpy() if score else None)


def assert_close_bytes(a, b, max_fraction):
    """Within one level; bytes that differ (a value on a rounding boundary) are under max_fraction
    of all, or at most 2 in a small batch."""
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1, f"bytes differ by {diff.max()} levels"
    assert (diff > 0).sum() <= max(2, max_fraction * diff.size), f"{(diff > 0).mean():.2e} of the bytes differ"


# --- the noise scheme ---------------------------------------------------------------------------

@pytest.mark.parametrize("isa", _C.isas())
def test_philox_words_identical_to_noise_py(isa):
    rng = np.random.default_rng(1)
    counters = np.concatenate([rng.integers(0, 2**32, 997, dtype=np.uint32), np.array([0, 1, 2**32 - 1], np.uint32)])
    for img_id, seed in [(0, 0), (7, 123456789), (2**32 - 1, 2**32 - 1)]:
        w0, w1 = _C.philox(counters, img_id, seed, isa=isa)
        r0, r1, _, _ = noise.philox4x32(torch.from_numpy(counters.astype(np.int64)), 0, 0, 0, img_id, seed)
        np.testing.assert_array_equal(w0, r0.numpy())
        np.testing.assert_array_equal(w1, r1.numpy())


@pytest.mark.parametrize("isa", _C.isas())
def test_normals_agree_with_noise_py_to_float_rounding(isa):
    h, w = 33, 47  # the offsets of a whole odd-sized image, plus a tail shorter than a vector
    for img_id, seed in [(0, 0), (5, 77), (2**32 - 1, 2**31)]:
        z = _C.normals(seed, img_id, 0, h * w * 3, isa=isa)
        ref = noise.normals(seed, torch.tensor([img_id]), h, w).numpy().ravel()
        np.testing.assert_allclose(z, ref, rtol=1e-6, atol=1e-6)
        assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05


# --- parity with scikit-image -------------------------------------------------------------------

@pytest.mark.parametrize("hw", SHAPES)
@pytest.mark.parametrize("sigma", iq.LEVELS.blur)
def test_blur_matches_skimage(gen, hw, sigma):
    x = gen(3, *hw, seed=hw[1])
    out, _ = c_distort(x, "blur", sigma, score=False)
    assert_close_bytes(out, np.round(sk_blur(x, sigma) * 255), 1e-3)


def test_blur_matches_skimage_on_real_images(real_images):
    for sigma in iq.LEVELS.blur:
        out, _ = c_distort(real_images, "blur", sigma, score=False)
        assert_close_bytes(out, np.round(sk_blur(real_images, sigma) * 255), 1e-3)


@pytest.mark.parametrize("hw", SSIM_SHAPES)
@pytest.mark.parametrize("kind,p", KINDS)
def test_ssim_matches_skimage(gen, hw, kind, p):
    x = gen(3, *hw, seed=hw[0])
    out, s = c_distort(x, kind, p, seed=3)
    np.testing.assert_allclose(s, sk_ssim(x, out), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(c_ssim(x, out), s)  # fused score == SSIM alone


def test_ssim_matches_skimage_on_real_images(real_images):
    y = iq.distort(real_images, "jpeg", 2)
    np.testing.assert_allclose(c_ssim(real_images, y), sk_ssim(real_images, y), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(c_ssim(real_images, real_images), np.ones(len(real_images), np.float32))


# --- agreement with the torch backend ----------------------------------------------------------

@pytest.mark.parametrize("hw", SHAPES)
@pytest.mark.parametrize("kind,p", KINDS)
def test_distortions_agree_with_torch_backend(gen, hw, kind, p):
    x = gen(4, *hw, seed=7)
    ids = np.array([0, 5, 2**32 - 1, 12345], np.int64)
    out, _ = c_distort(x, kind, p, seed=11, ids=ids, score=False)
    ref, _ = torch_distort(x, kind, p, seed=11, ids=ids, score=False)
    assert_close_bytes(out, ref, 1e-3)


@pytest.mark.parametrize("kind,p", KINDS + [("noise", 0.02), ("blur", 1.2)])
def test_distort_and_score_agree_with_torch_backend_on_real_images(real_images, kind, p):
    out, s = c_distort(real_images, kind, p, seed=2024)
    ref, ref_s = torch_distort(real_images, kind, p, seed=2024)
    assert_close_bytes(out, ref, 1e-4)
    # SSIM of the same images agrees to 1e-5; the fused scores agree wherever the bytes do
    np.testing.assert_allclose(c_ssim(real_images, np.ascontiguousarray(ref)), ref_s, atol=1e-5, rtol=0)
    same = (out == ref).all(axis=(1, 2, 3))
    assert same.mean() > 0.9
    np.testing.assert_allclose(s[same], ref_s[same], atol=1e-5, rtol=0)


@pytest.mark.parametrize("hw", SSIM_SHAPES)
def test_ssim_agrees_with_torch_backend(gen, hw):
    x, y = gen(4, *hw, seed=1), gen(4, *hw, seed=2)
    ref = torch_backend.ssim(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(c_ssim(x, y), ref, atol=1e-5, rtol=0)


def test_public_api_dispatches_to_cpu(real_images, gen):
    assert "cpu" in iq.backends("distort_score") and "cpu" in iq.backends("ssim")
    assert dispatch.resolve("distort_score", "auto", torch.device("cpu"))[0] == "cpu"
    assert dispatch.resolve("ssim", "auto", torch.device("cpu"))[0] == "cpu"
    x = real_images[:50]
    for kind, level in [("blur", 1), ("noise", 2), ("blur+noise", 3), ("jpeg", 2)]:
        out, s = iq.distort_and_score(x, kind, level, seed=5, backend="cpu")
        ref, ref_s = iq.distort_and_score(x, kind, level, seed=5, backend="torch")
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and s.dtype == np.float32
        assert_close_bytes(out, ref, 1e-4)
        same = (out == ref).all(axis=(1, 2, 3))
        np.testing.assert_allclose(s[same], ref_s[same], atol=1e-5, rtol=0)
    t = torch.from_numpy(gen(2, 16, 16))
    assert isinstance(iq.distort(t, "noise", 1, backend="cpu"), torch.Tensor)


# --- independence of threads, batch split, instruction set; concurrency ------------------------

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


# --- inputs: layouts, edge cases, errors --------------------------------------------------------

def test_non_contiguous_and_torch_inputs(gen):
    x = gen(6, 40, 36)
    ref, ref_s = iq.distort_and_score(x, "blur+noise", 2, seed=3, backend="cpu")
    t = torch.from_numpy(x)
    views = [
        t.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1),  # channels-first storage
        torch.from_numpy(np.ascontiguousarray(np.concatenate([x, x], axis=2)))[:, :, :36],  # a crop
        torch.from_numpy(np.stack([x, x], axis=1).copy())[:, 0],  # every other image
    ]
    for v in views:
        assert not v.is_contiguous()
        out, s = iq.distort_and_score(v, "blur+noise", 2, seed=3, backend="cpu")
        np.testing.assert_array_equal(out.numpy(), ref)
        np.testing.assert_array_equal(s.numpy(), ref_s)
    out, s = iq.distort_and_score(x[:, ::-1], "blur+noise", 2, seed=3, backend="cpu")  # negative strides
    np.testing.assert_array_equal(out, c_distort(np.ascontiguousarray(x[:, ::-1]), "blur+noise", (1.0, 0.01), seed=3)[0])


def test_edge_cases(gen):
    x = gen(3, 32, 32)
    plain = c_distort(x, "blur", 1.0)
    zero_var = c_distort(x, "blur+noise", (1.0, 0.0))
    np.testing.assert_array_equal(zero_var[0], plain[0])  # variance 0 adds nothing
    out, s = c_distort(x[:0], "blur+noise", (1.0, 0.01))
    assert out.shape == (0, 32, 32, 3) and s.shape == (0,)
    out, s = _C.distort_score(x)  # nothing to do: a copy, no score
    np.testing.assert_array_equal(out, x)
    assert s is None
    tiny = gen(2, 1, 1)
    np.testing.assert_array_equal(c_distort(tiny, "blur", 3.0, score=False)[0], tiny)  # one pixel blurs to itself


def _bad(**kw):
    args = dict(images=np.zeros((2, 16, 16, 3), np.uint8), blur_taps=np.asarray(gaussian_taps(1.0, 4.0)),
                noise_var=0.01, seed=0, ids=None, ssim_taps=SSIM_TAPS, c1=SSIM.c1, c2=SSIM.c2)
    args.update(kw)
    images = args.pop("images")
    return lambda: _C.distort_score(images, **args)


@pytest.mark.parametrize(
    "call,exc,msg",
    [
        (_bad(images=np.zeros((2, 16, 16, 3), np.float32)), TypeError, "images must have dtype uint8"),
        (_bad(images=[[1, 2, 3]]), TypeError, "images must be a numpy array"),
        (_bad(images=np.zeros((2, 16, 16), np.uint8)), ValueError, "N x H x W x 3"),
        (_bad(images=np.zeros((2, 16, 16, 4), np.uint8)), ValueError, "N x H x W x 3"),
        (_bad(images=np.zeros((2, 16, 16, 3), np.uint8)[:, ::2]), ValueError, "C-contiguous"),
        (_bad(images=np.zeros((2, 10, 16, 3), np.uint8)), ValueError, "SSIM needs images of at least 11 x 11"),
        (_bad(noise_var=float("nan")), ValueError, "noise_var must be finite"),
        (_bad(noise_var=-1.0), ValueError, "noise_var must be finite and >= 0"),
        (_bad(noise_var="0.1"), TypeError, "noise_var must be a real number"),
        (_bad(blur_taps=np.array([0.25, float("nan"), 0.25])), ValueError, "blur_taps must be finite"),
        (_bad(blur_taps=np.array([0.5, 0.5])), ValueError, "odd number of taps"),
        (_bad(blur_taps=np.array([0.2, 0.5, 0.3])), ValueError, "blur_taps must be symmetric"),
        (_bad(blur_taps=np.array([1, 2, 1])), TypeError, "blur_taps must be a float array"),
        (_bad(ssim_taps=np.ones(65) / 65), ValueError, "at most 63 taps"),
        (_bad(c1=float("inf")), ValueError, "c1 must be finite and > 0"),
        (_bad(c2=None), TypeError, "c2 must be a real number"),
        (_bad(seed=-1), ValueError, "seed must lie in [0, 2**32)"),
        (_bad(seed=2**32), ValueError, "seed must lie in [0, 2**32)"),
        (_bad(seed=1.5), TypeError, "seed must be an integer"),
        (_bad(ids=np.array([0, 1, 2])), ValueError, "one id per image (2)"),
        (_bad(ids=np.array([0, -1])), ValueError, "ids must lie in [0, 2**32)"),
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


def test_public_api_rejects_non_finite_parameters_for_cpu(gen):
    x = gen(2, 16, 16)
    for kind, param in [("blur", float("nan")), ("noise", float("inf")), ("blur+noise", (1.0, float("nan")))]:
        with pytest.raises(ValueError, match="must be finite"):
            iq.distort(x, kind, param=param, backend="cpu")
