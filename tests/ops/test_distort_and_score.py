"""distort_and_score: every backend against the torch reference and scikit-image, on generated and real
images, fused and not, for any layout, batch and size.

Correct means (docs/ops.md): a fast backend's bytes equal the reference's except where float rounding
lands on the other side of .5 (one level, a fraction of the bytes below the backend's bound), its
fused score within 1e-5 of the reference's SSIM of the same bytes, within 1e-4 of skimage's.
"""

import numpy as np
import pytest
import torch

import iqals_fast as iq
from iqals_fast.ops import reference

from .helpers import assert_bytes_close, batch, numpy, only_these_compile_on_cuda, sk_ssim

OP = "distort_and_score"

SHAPES = [(8, 8), (11, 11), (11, 13), (16, 40), (32, 32), (33, 47), (64, 64), (100, 17), (100, 37)]
"""Single tiles (16 and 32 padded), tiles along one axis and both axes with halos (Triton), odd sizes."""
KINDS = [("blur", 1.0), ("noise", 0.01), ("blur+noise", (1.0, 0.01)), ("blur", 0.7), ("noise", 0.005)]
REAL_KINDS = [("blur+noise", (1.0, 0.01)), ("blur", 0.7), ("noise", 0.02), ("blur", 1.2), ("blur", 1.0), ("noise", 0.01)]
CUDA_SHAPES = {(8, 8), (11, 11), (32, 32), (33, 47), (64, 64), (100, 17)}
CUDA_ALL_KINDS = {(32, 32), (33, 47)}
"""Triton on CUDA, where each tile geometry and mode compiles anew: single tiles (16 and 32 padded),
tiles along one axis and both axes with halos (64 x 64: the larger-tile path), every kind on a single
tile and on tiles with halos, blur + noise on the others."""
BYTES_VS_REFERENCE = {"cpu": dict(max_fraction=1e-3, at_least=2), "triton": dict(max_fraction=1e-4, at_least=2)}
"""Generated images: the fraction of bytes one level off the reference's, or at most 2 of them: the
interpreter runs 2 images, so an 11 x 11 case has 726 bytes and one boundary byte is already 1.4e-3.
(Triton 3.9's interpreter, blur 1.0 + noise 0.01 on 11 x 11: one byte 165 where the float32 reference
has 166; its float64 value is 165.49998, so Triton's byte is the correctly rounded one.)"""
FUSED_EQUALS_ALONE = {"torch", "cpu"}
"""Backends whose fused score is bit for bit their SSIM alone of the same bytes."""


def _sigma_var(kind, p):
    return {"blur": (p, None), "noise": (None, p), "blur+noise": p}[kind]


@pytest.mark.against_reference
@pytest.mark.parametrize("hw", SHAPES, ids=[f"{h}x{w}" for h, w in SHAPES])
@pytest.mark.parametrize("kind,p", KINDS, ids=[f"{k}-{p}" for k, p in KINDS])
def test_agrees_with_reference(gen, backend, impl, device, hw, kind, p):
    only_these_compile_on_cuda(backend, device, hw in CUDA_SHAPES and (hw in CUDA_ALL_KINDS or kind == "blur+noise"))
    x = batch(torch.from_numpy(gen(4, *hw, seed=7)).to(device), backend, device, 2)
    ids = torch.tensor([2**32 - 1, 7, 0, 12345], device=device)[: len(x)]
    sigma, var = _sigma_var(kind, p)
    score = min(hw) >= 11
    out, s = impl(x, sigma, var, 2**32 - 3, ids, score)
    ref, _ = reference.distort_and_score(x, sigma, var, 2**32 - 3, ids, False)
    assert out.dtype == torch.uint8 and out.device == x.device
    assert_bytes_close(out, ref, **BYTES_VS_REFERENCE.get(backend, dict(max_fraction=1e-12)))
    if score:
        assert s.dtype == torch.float32
        torch.testing.assert_close(s.cpu(), reference.ssim(x, out).cpu(), rtol=0, atol=1e-5)
    else:
        assert s is None


@pytest.mark.parametrize("hw", [(11, 13), (32, 32), (33, 47), (64, 64), (100, 37)])
@pytest.mark.parametrize("kind,p", KINDS[:3], ids=[k for k, _ in KINDS[:3]])
def test_fused_score_matches_skimage(gen, backend, device, hw, kind, p):
    only_these_compile_on_cuda(backend, device, hw in CUDA_ALL_KINDS)
    x = batch(gen(3, *hw, seed=hw[0]), backend, device, 2)
    t = torch.from_numpy(x).to(device)
    out, s = iq.distort_and_score(t, kind, param=p, seed=3, backend=backend)
    np.testing.assert_allclose(numpy(s), sk_ssim(x, numpy(out)), atol=1e-4, rtol=0)
    if backend in FUSED_EQUALS_ALONE:
        np.testing.assert_array_equal(numpy(iq.ssim(t, out, backend=backend)), numpy(s))  # fused == SSIM alone


@pytest.mark.data
@pytest.mark.against_reference
@pytest.mark.parametrize("kind,p", REAL_KINDS, ids=[f"{k}-{p}" for k, p in REAL_KINDS])
def test_agrees_with_reference_on_real_images(real_images, backend, device, kind, p):
    x = torch.from_numpy(batch(real_images, backend, device, 6)).to(device)
    ids = torch.arange(1000, 1000 + len(x), device=device)
    out, s = iq.distort_and_score(x, kind, param=p, seed=2024, ids=ids, backend=backend)
    ref, ref_s = iq.distort_and_score(x, kind, param=p, seed=2024, ids=ids, backend="torch")
    assert out.device == x.device and out.dtype == torch.uint8 and s.dtype == torch.float32
    assert_bytes_close(out, ref, max_fraction=1e-4)
    # the score of the bytes this backend wrote (a byte on the other side of .5 moves SSIM by ~1e-5 itself)
    torch.testing.assert_close(s.cpu(), reference.ssim(x, out).cpu(), rtol=0, atol=1e-5)
    # its SSIM of the reference's bytes is the reference's score; where the bytes agree, so does the fused one
    torch.testing.assert_close(iq.ssim(x, ref, backend=backend).cpu(), ref_s.cpu(), rtol=0, atol=1e-5)
    same = (out == ref).flatten(1).all(dim=1).cpu()
    if backend == "cpu":
        assert same.double().mean() > 0.9
    torch.testing.assert_close(s.cpu()[same], ref_s.cpu()[same], rtol=0, atol=1e-5)
    # no score asked: the same bytes
    np.testing.assert_array_equal(numpy(iq.distort(x, kind, param=p, seed=2024, ids=ids, backend=backend)), numpy(out))


@pytest.mark.data
def test_fused_score_matches_skimage_on_real_images(real_images, backend, device):
    x = batch(real_images, backend, device, 6)
    for kind in ("blur", "noise", "jpeg", "blur+noise"):
        for lvl in (1, 2, 3):
            y, s = iq.distort_and_score(torch.from_numpy(x).to(device), kind, lvl, seed=4, backend=backend)
            assert s.dtype == torch.float32
            np.testing.assert_allclose(numpy(s), sk_ssim(x, numpy(y)), atol=1e-4, rtol=0)


def test_equals_separate_calls(gen, backend, device):
    only_these_compile_on_cuda(backend, device, False)  # on CUDA: test_agrees_with_reference_on_real_images
    x = batch(gen(5, 40, 36), backend, device, 2)
    t = torch.from_numpy(x).to(device)
    for kind in ("blur", "noise", "jpeg", "blur+noise"):
        y, s = iq.distort_and_score(t, kind, 2, seed=3, backend=backend)
        np.testing.assert_array_equal(numpy(y), numpy(iq.distort(t, kind, 2, seed=3, backend=backend)))
        atol = 0.0 if backend in FUSED_EQUALS_ALONE or kind == "jpeg" else 1e-5  # JPEG: the ssim op itself
        np.testing.assert_allclose(numpy(s), numpy(iq.ssim(t, y, backend=backend)), atol=atol, rtol=0)


def test_non_contiguous_and_torch_inputs(gen, backend, device):
    x = batch(gen(6, 40, 36), backend, device, 2)
    ref, ref_s = iq.distort_and_score(torch.from_numpy(x).to(device), "blur+noise", 2, seed=3, backend=backend)
    t = torch.from_numpy(x).to(device)
    views = [
        t.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1),  # channels-first storage
        torch.from_numpy(np.ascontiguousarray(np.concatenate([x, x], axis=2))).to(device)[:, :, :36],  # a crop
        torch.from_numpy(np.stack([x, x], axis=1).copy()).to(device)[:, 0],  # every other image
    ]
    for v in views:
        assert not v.is_contiguous()
        out, s = iq.distort_and_score(v, "blur+noise", 2, seed=3, backend=backend)
        np.testing.assert_array_equal(numpy(out), numpy(ref))
        np.testing.assert_array_equal(numpy(s), numpy(ref_s))
    flipped = np.ascontiguousarray(x[:, ::-1])
    if device.type == "cpu":  # negative strides (numpy only)
        out, _ = iq.distort_and_score(x[:, ::-1], "blur+noise", 2, seed=3, backend=backend)
        np.testing.assert_array_equal(out, iq.distort_and_score(flipped, "blur+noise", 2, seed=3, backend=backend)[0])
    # a strided crop of a larger batch against the reference
    base = torch.from_numpy(gen(4, 20, 24, seed=9)).to(device)
    v = base[::2, :, 2:22]
    out, s = iq.distort_and_score(v, "blur+noise", param=(1.0, 0.01), seed=0, backend=backend)
    r_out, _ = iq.distort_and_score(v.contiguous(), "blur+noise", param=(1.0, 0.01), seed=0, backend="torch")
    assert_bytes_close(out, r_out, max_fraction=1e-4, at_least=2)
    torch.testing.assert_close(s.cpu(), reference.ssim(v, out).cpu(), rtol=0, atol=1e-5)


def test_edge_cases(gen, impl, device):
    """Variance 0 adds nothing; an empty batch; nothing to do (a copy, no score); one pixel blurs to itself."""
    x = torch.from_numpy(gen(3, 32, 32)).to(device)
    ids = torch.arange(3, device=device)
    plain = impl(x, 1.0, None, 0, ids, True)
    zero_var = impl(x, 1.0, 0.0, 0, ids, True)
    np.testing.assert_array_equal(numpy(zero_var[0]), numpy(plain[0]))
    out, s = impl(x[:0], 1.0, 0.01, 0, ids[:0], True)
    assert out.shape == (0, 32, 32, 3) and s.shape == (0,)
    out, s = impl(x, None, None, 0, ids, False)
    np.testing.assert_array_equal(numpy(out), numpy(x))
    assert s is None
    tiny = torch.from_numpy(gen(2, 1, 1)).to(device)
    np.testing.assert_array_equal(numpy(impl(tiny, 3.0, None, 0, ids[:2], False)[0]), numpy(tiny))


@pytest.mark.slow
@pytest.mark.against_reference
def test_large_odd_image(gen, backend, impl, device):
    """257 x 300 (over 256 on both sides, odd): 9 x 11 Triton tiles with halos."""
    x = torch.from_numpy(gen(1, 257, 300, seed=257)).to(device)
    ids = torch.tensor([5], device=device)
    out, s = impl(x, 1.2, 0.01, 3, ids, True)
    r_out, _ = reference.distort_and_score(x, 1.2, 0.01, 3, ids, False)
    assert_bytes_close(out, r_out, **BYTES_VS_REFERENCE.get(backend, dict(max_fraction=1e-12)))
    torch.testing.assert_close(s.cpu(), reference.ssim(x, out).cpu(), rtol=0, atol=1e-5)


def test_bad_input_is_named(gen):
    with pytest.raises(ValueError, match="at least 11 x 11"):
        iq.distort_and_score(gen(2, 9, 9), "blur", 1)
    with pytest.raises(ValueError, match="backend 'dali' is not available for 'distort_and_score'"):
        iq.distort_and_score(gen(2, 16, 16), "blur", 1, backend="dali")
