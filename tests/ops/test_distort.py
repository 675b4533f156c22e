"""distort: blur, noise and the 8-bit rounding, every backend against scikit-image, and the argument rules.

Correct means (docs/ops.md): blur = ``skimage.filters.gaussian(x, sigma, mode="nearest", truncate=4)``,
noise = ``skimage.util.random_noise(mode="gaussian")`` for the same normals (the Philox scheme), then
clip and round half to even to 8 bits: equal bytes except where float32 and float64 fall either side
of a .5 boundary (one level, rarely).
"""

import numpy as np
import pytest
import torch
from skimage.util import random_noise

import iqals_fast as iq
from iqals_fast.config import BLUR_TRUNCATE, SSIM, gaussian_taps
from iqals_fast.ops.noise import normals
from iqals_fast.ops.reference import gaussian_blur, planes

from .helpers import assert_bytes_close, batch, numpy, on, only_these_compile_on_cuda, sk_blur

OP = "distort_and_score"

SHAPES = [(8, 8), (11, 13), (32, 32), (33, 47), (64, 64), (100, 37)]
BLUR_CASES = [(hw, sigma) for hw in SHAPES for sigma in iq.LEVELS.blur] + [
    ((100, 17), 0.7), ((32, 32), 0.3), ((32, 32), 3.0)]  # the extreme radii: 1 and 12 taps each side
CUDA_BLUR_CASES = {((32, 32), 1.0), ((33, 47), 1.2), ((100, 17), 0.7), ((8, 8), 1.0), ((32, 32), 0.3), ((32, 32), 3.0)}
"""Triton on CUDA: one blur kernel per geometry; these cover single tiles, tiles with halos, both radii."""
BLUR_BYTES = {"torch": dict(max_fraction=1e-3), "cpu": dict(max_fraction=1e-3, at_least=2), "triton": {}}
"""Bytes against skimage's float64 blur, rounded: within one level everywhere, and fewer than 1e-3 of
them off (the C++ kernels: or at most 2 in a small batch; Triton: the level bound alone)."""


@pytest.mark.parametrize("hw", SHAPES)
@pytest.mark.parametrize("sigma", iq.LEVELS.blur)
def test_reference_blur_matches_skimage_before_rounding(gen, hw, sigma):
    x = gen(3, *hw, seed=hw[0])
    ours = gaussian_blur(planes(torch.from_numpy(x), torch.float32), sigma, BLUR_TRUNCATE, "nearest")
    np.testing.assert_allclose(ours.permute(0, 2, 3, 1).numpy(), sk_blur(x, sigma), atol=1e-5, rtol=0)


@pytest.mark.parametrize("hw,sigma", BLUR_CASES, ids=[f"{h}x{w}-{s}" for (h, w), s in BLUR_CASES])
def test_blur_matches_skimage(gen, backend, device, hw, sigma):
    """fp16's power-of-two tap scaling (Triton) must hold at the extreme radii too."""
    only_these_compile_on_cuda(backend, device, (hw, sigma) in CUDA_BLUR_CASES)
    x = gen(3, *hw, seed=hw[0])
    out = iq.distort(on(x, device), "blur", param=sigma, backend=backend)
    assert_bytes_close(out, np.round(sk_blur(x, sigma) * 255), **BLUR_BYTES.get(backend, {}))


@pytest.mark.data
def test_blur_matches_skimage_on_real_images(real_images, backend, device):
    x = batch(real_images, backend, device, 50)
    for lvl, sigma in enumerate(iq.LEVELS.blur, start=1):
        out = iq.distort(torch.from_numpy(x).to(device), "blur", lvl, backend=backend)
        assert_bytes_close(out, np.round(sk_blur(x, sigma) * 255), **BLUR_BYTES.get(backend, {}))


def test_blur_taps_are_a_normalised_symmetric_gaussian():
    """The taps every backend filters with (config.gaussian_taps): odd, symmetric, finite, >= 0, sum 1."""
    for sigma, truncate in [(s, BLUR_TRUNCATE) for s in (*iq.LEVELS.blur, 0.3, 3.0)] + [(SSIM.sigma, SSIM.truncate)]:
        t = np.asarray(gaussian_taps(sigma, truncate))
        assert len(t) % 2 == 1 and len(t) == 2 * int(truncate * sigma + 0.5) + 1
        assert np.isfinite(t).all() and (t >= 0).all() and np.array_equal(t, t[::-1])
        assert abs(t.sum() - 1) < 1e-12
    assert len(gaussian_taps(SSIM.sigma, SSIM.truncate)) == SSIM.win


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
def test_noise_is_skimage_random_noise_for_the_same_normals(gen, backend, device, hw, var):
    only_these_compile_on_cuda(backend, device, hw != (8, 8))
    x = gen(2, *hw)
    seed, ids = 11, np.array([3, 9])
    out = numpy(iq.distort(on(x, device), "noise", param=var, seed=seed, ids=ids, backend=backend))
    z = normals(seed, torch.from_numpy(ids), *hw).numpy().astype(np.float64)
    for i in range(2):
        ref = random_noise(x[i], mode="gaussian", var=var, rng=_FixedNormals(z[i]), clip=True)
        scaled = ref * 255
        diff = np.abs(out[i].astype(int) - np.round(scaled).astype(int))
        # exact, except where float32 and float64 fall either side of a rounding boundary
        near_half = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-4
        assert diff.max() <= 1 and not (diff[~near_half] > 0).any()


@pytest.mark.data
def test_noise_statistics_on_real_images(real_images, backend, device):
    out = numpy(iq.distort(torch.from_numpy(real_images).to(device), "noise", 3, seed=0, backend=backend)).astype(float)
    x = real_images.astype(float)
    inner = (x > 60) & (x < 195)  # far from clipping
    resid = (out - x)[inner] / 255
    assert abs(resid.mean()) < 2e-3 and abs(resid.var() - 0.02) < 1e-3


def test_reference_blur_plus_noise_is_blur_then_noise_rounded_once(gen):
    x = gen(3, 32, 32)
    y = iq.distort(x, "blur+noise", param=(1.0, 0.01), seed=2, backend="torch")
    blurred = gaussian_blur(planes(torch.from_numpy(x), torch.float32), 1.0, BLUR_TRUNCATE, "nearest").permute(0, 2, 3, 1)
    ref = torch.round((blurred + 0.1 * normals(2, torch.arange(3), 32, 32)).clamp(0, 1) * 255).to(torch.uint8)
    np.testing.assert_array_equal(y, ref.numpy())


def test_types_shapes_and_non_contiguous_input(gen, backend, device):
    x = gen(4, 32, 32)
    nc = np.ascontiguousarray(np.concatenate([x, x], axis=2))[:, :, ::2]  # a strided view
    assert not nc.flags.c_contiguous
    if device.type == "cpu":
        np.testing.assert_array_equal(iq.distort(nc, "blur", 1, backend=backend),
                                      iq.distort(np.ascontiguousarray(nc), "blur", 1, backend=backend))
        ro = x.copy()
        ro.flags.writeable = False
        assert iq.distort(ro, "blur", 1, backend=backend).shape == x.shape
    t = iq.distort(torch.from_numpy(x).to(device).permute(0, 2, 1, 3), "noise", 1, backend=backend)
    assert isinstance(t, torch.Tensor) and t.shape == (4, 32, 32, 3) and t.device == device


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
        (lambda x: iq.distort(x, "noise", param="0.1x"), ValueError, "variance must be a real number"),
        (lambda x: iq.distort(x, "jpeg", param=0), ValueError, "JPEG quality"),
        (lambda x: iq.distort(x, "noise", 1, seed=-1), ValueError, "seed"),
        (lambda x: iq.distort(x, "noise", 1, seed=2**32), ValueError, r"seed must be an integer in \[0, 2\*\*32\)"),
        (lambda x: iq.distort(x, "noise", 1, seed=1.5), ValueError, "seed must be an integer"),
        (lambda x: iq.distort(x, "noise", 1, ids=[0]), ValueError, "one id per image"),
        (lambda x: iq.distort(x, "noise", 1, ids=[0, -1]), ValueError, r"ids must lie in \[0, 2\*\*32\)"),
        (lambda x: iq.distort(x, "noise", 1, ids=[0.0, 1.0]), ValueError, "ids must be a 1-D integer array"),
        (lambda x: iq.distort(x, "noise", 1, backend="cuda"), ValueError, "backend must be"),
        (lambda x: iq.distort([[1]], "noise", 1), TypeError, "numpy array or torch tensor"),
    ],
)
def test_bad_input_is_named(gen, call, exc, msg):
    with pytest.raises(exc, match=msg):
        call(gen(2, 32, 32))


def test_non_finite_parameters_are_rejected_before_any_backend(gen, backend):
    x = gen(2, 16, 16)
    for kind, param in [("blur", float("nan")), ("noise", float("inf")), ("blur+noise", (1.0, float("nan")))]:
        with pytest.raises(ValueError, match="must be finite"):
            iq.distort(x, kind, param=param, backend=backend)
