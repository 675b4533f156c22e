"""Parity of the public operations (torch backend) with scikit-image and PIL, on real and generated images."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.filters import gaussian
from skimage.metrics import structural_similarity
from skimage.util import random_noise

import iqals_fast as iq
from iqals_fast.config import BLUR_TRUNCATE
from iqals_fast.ops.filters import gaussian_blur, planes
from iqals_fast.ops.noise import normals

SHAPES = [(8, 8), (11, 13), (32, 32), (33, 47), (64, 64), (100, 37)]
SSIM_SHAPES = [s for s in SHAPES if min(s) >= 11]
BACKEND = "torch"


def sk_ssim(a, b):
    return np.array([structural_similarity(x / 255.0, y / 255.0, channel_axis=-1, data_range=1.0, gaussian_weights=True,
                                           sigma=1.5, use_sample_covariance=False) for x, y in zip(a, b)])


def sk_blur(a, sigma):
    return np.stack([gaussian(x / 255.0, sigma=sigma, channel_axis=-1, mode="nearest", truncate=4.0) for x in a])


@pytest.mark.parametrize("hw", SHAPES)
@pytest.mark.parametrize("sigma", iq.LEVELS.blur)
def test_blur_matches_skimage(gen, hw, sigma):
    x = gen(3, *hw, seed=hw[0])
    ref = sk_blur(x, sigma)
    # before rounding: within 1e-5 on the [0, 1] scale
    ours = gaussian_blur(planes(torch.from_numpy(x), torch.float32), sigma, BLUR_TRUNCATE, "nearest")
    np.testing.assert_allclose(ours.permute(0, 2, 3, 1).numpy(), ref, atol=1e-5, rtol=0)
    # after rounding: within one level (float32 vs float64 at a .5 boundary), and almost always equal
    out = iq.distort(x, "blur", param=sigma, backend=BACKEND)
    diff = np.abs(out.astype(int) - np.round(ref * 255).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_blur_matches_skimage_on_real_images(real_images):
    for lvl, sigma in enumerate(iq.LEVELS.blur, start=1):
        out = iq.distort(real_images, "blur", lvl, backend=BACKEND)
        ref = np.round(sk_blur(real_images, sigma) * 255).astype(int)
        diff = np.abs(out.astype(int) - ref)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


class _FixedNormals(np.random.Generator):
    """A numpy Generator whose normal() returns given standard normals, to drive skimage's random_noise."""

    def __init__(self, z):
        super().__init__(np.random.PCG64(0))
        self.z = z

    def normal(self, loc=0.0, scale=1.0, size=None):
        assert size == self.z.shape
        return loc + scale * self.z


@pytest.mark.parametrize("hw", [(8, 8), (32, 32), (33, 47)])
@pytest.mark.parametrize("var", iq.LEVELS.noise)
def test_noise_is_skimage_random_noise_for_the_same_normals(gen, hw, var):
    x = gen(2, *hw)
    seed, ids = 11, np.array([3, 9])
    out = iq.distort(x, "noise", param=var, seed=seed, ids=ids, backend=BACKEND)
    z = normals(seed, torch.from_numpy(ids), *hw).numpy().astype(np.float64)
    for i in range(2):
        ref = random_noise(x[i], mode="gaussian", var=var, rng=_FixedNormals(z[i]), clip=True)
        scaled = ref * 255
        diff = np.abs(out[i].astype(int) - np.round(scaled).astype(int))
        # exact, except where float32 and float64 fall either side of a rounding boundary
        near_half = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-4
        assert diff.max() <= 1 and not (diff[~near_half] > 0).any()


def test_noise_statistics_on_real_images(real_images):
    out = iq.distort(real_images, "noise", 3, seed=0, backend=BACKEND).astype(float)
    x = real_images.astype(float)
    inner = (x > 60) & (x < 195)  # far from clipping
    resid = (out - x)[inner] / 255
    assert abs(resid.mean()) < 2e-3 and abs(resid.var() - 0.02) < 1e-3


@pytest.mark.parametrize("hw", SHAPES)
@pytest.mark.parametrize("q", iq.LEVELS.jpeg + (75,))
def test_jpeg_is_pil_bit_exact(gen, hw, q):
    x = gen(2, *hw)
    out = iq.distort(x, "jpeg", param=q, backend=BACKEND)
    for a, b in zip(x, out):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=q)
        np.testing.assert_array_equal(b, np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))


def test_jpeg_on_real_images_and_torch_input(real_images):
    x = real_images[:20]
    out = iq.distort(torch.from_numpy(x), "jpeg", 3)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
    for a, b in zip(x, out.numpy()):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=iq.LEVELS.jpeg[2])
        np.testing.assert_array_equal(b, np.asarray(Image.open(io.BytesIO(buf.getvalue()))))


@pytest.mark.parametrize("hw", SSIM_SHAPES)
@pytest.mark.parametrize("kind", ["blur", "noise", "jpeg"])
def test_ssim_matches_skimage(gen, hw, kind):
    x = gen(3, *hw, seed=7)
    y = iq.distort(x, kind, 2, seed=1)
    np.testing.assert_allclose(iq.ssim(x, y, backend=BACKEND), sk_ssim(x, y), atol=1e-4, rtol=0)


def test_ssim_matches_skimage_on_real_images(real_images):
    x = real_images
    for kind in ("blur", "noise", "jpeg"):
        for lvl in (1, 2, 3):
            y, s = iq.distort_and_score(x, kind, lvl, seed=4, backend=BACKEND)
            assert s.dtype == np.float32
            np.testing.assert_allclose(s, sk_ssim(x, y), atol=1e-4, rtol=0)


def test_ssim_invariants(gen):
    x = gen(4, 32, 32)
    np.testing.assert_allclose(iq.ssim(x, x), 1.0, atol=1e-6)
    y = iq.distort(x, "noise", 3)
    np.testing.assert_allclose(iq.ssim(x, y), iq.ssim(y, x), atol=1e-6)  # symmetric
    assert (iq.ssim(x, y) < iq.ssim(x, iq.distort(x, "noise", 1))).all()  # more noise, lower SSIM


def test_distort_and_score_equals_separate_calls(gen):
    x = gen(5, 40, 36)
    for kind in ("blur", "noise", "jpeg", "blur+noise"):
        y, s = iq.distort_and_score(x, kind, 2, seed=3, backend=BACKEND)
        np.testing.assert_array_equal(y, iq.distort(x, kind, 2, seed=3, backend=BACKEND))
        np.testing.assert_allclose(s, iq.ssim(x, y, backend=BACKEND), atol=1e-7)


def test_blur_plus_noise_is_blur_then_noise_rounded_once(gen):
    x = gen(3, 32, 32)
    y = iq.distort(x, "blur+noise", param=(1.0, 0.01), seed=2, backend=BACKEND)
    blurred = gaussian_blur(planes(torch.from_numpy(x), torch.float32), 1.0, BLUR_TRUNCATE, "nearest").permute(0, 2, 3, 1)
    ref = torch.round((blurred + 0.1 * normals(2, torch.arange(3), 32, 32)).clamp(0, 1) * 255).to(torch.uint8)
    np.testing.assert_array_equal(y, ref.numpy())


def test_types_shapes_and_non_contiguous_input(gen):
    x = gen(4, 32, 32)
    nc = np.ascontiguousarray(np.concatenate([x, x], axis=2))[:, :, ::2]  # a strided view
    assert not nc.flags.c_contiguous
    np.testing.assert_array_equal(iq.distort(nc, "blur", 1), iq.distort(np.ascontiguousarray(nc), "blur", 1))
    t = iq.distort(torch.from_numpy(x).permute(0, 2, 1, 3), "noise", 1)
    assert isinstance(t, torch.Tensor) and t.shape == (4, 32, 32, 3)
    ro = x.copy()
    ro.flags.writeable = False
    assert iq.distort(ro, "blur", 1).shape == x.shape


@pytest.mark.parametrize(
    "call,exc,msg",
    [
        (lambda x: iq.distort(x.astype(np.float32), "blur", 1), TypeError, "uint8"),
        (lambda x: iq.distort(x[..., :2], "blur", 1), ValueError, "N x H x W x 3"),
        (lambda x: iq.distort(x[0], "blur", 1), ValueError, "N x H x W x 3"),
        (lambda x: iq.distort(x[:, :7], "blur", 1), ValueError, "at least 8 x 8"),
        (lambda x: iq.distort(x, "fog", 1), ValueError, "kind must be one of"),
        (lambda x: iq.distort(x, "blur", 4), ValueError, "level must be 1, 2 or 3"),
        (lambda x: iq.distort(x, "blur"), ValueError, "exactly one of level"),
        (lambda x: iq.distort(x, "blur", param=float("nan")), ValueError, "sigma must be finite"),
        (lambda x: iq.distort(x, "noise", param=-0.1), ValueError, "variance must be finite"),
        (lambda x: iq.distort(x, "jpeg", param=0), ValueError, "JPEG quality"),
        (lambda x: iq.distort(x, "noise", 1, seed=-1), ValueError, "seed"),
        (lambda x: iq.distort(x, "noise", 1, ids=[0]), ValueError, "one id per image"),
        (lambda x: iq.distort(x, "noise", 1, backend="cuda"), ValueError, "backend must be"),
        (lambda x: iq.distort([[1]], "noise", 1), TypeError, "numpy array or torch tensor"),
        (lambda x: iq.ssim(x, x[:, :, :30]), ValueError, "same shape"),
        (lambda x: iq.ssim(x[:, :10], x[:, :10]), ValueError, "at least 11 x 11"),
        (lambda x: iq.distort_and_score(x[:, :9, :9], "blur", 1), ValueError, "at least 11 x 11"),
    ],
)
def test_bad_input_is_named(gen, call, exc, msg):
    with pytest.raises(exc, match=msg):
        call(gen(2, 32, 32))
