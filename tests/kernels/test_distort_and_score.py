"""The fused Triton kernel (iqals_fast/kernels/distort_and_score.py) beyond its default: every dot mode,
the candidate configurations bench/gpu_bench.py times, the launcher's checks. (The default
configuration on every shape, against the reference and skimage: tests/ops/.)"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from ops.helpers import assert_bytes_close, sk_ssim

import iqals_fast as iq
from iqals_fast.ops import reference

ROOT = Path(__file__).resolve().parents[2]
kds = pytest.importorskip("iqals_fast.kernels.distort_and_score") if importlib.util.find_spec("triton") else None
if kds is None:
    pytest.skip("triton is not installed", allow_module_level=True)
from iqals_fast.ops import triton as adapter  # noqa: E402

INTERPRET = not torch.cuda.is_available()
NON_DEFAULT_DOTS = sorted(set(kds.DOT_MODES) - {kds.DEFAULT.dot})
ALL_DOTS_ON_CUDA = {"test_ssim_of_jpeg_images"}
"""On CUDA every dot mode compiles each kernel configuration anew (a few seconds each), so the GPU run
checks the non-default modes in these tests only; the interpreter checks all of them everywhere."""


@pytest.fixture(params=NON_DEFAULT_DOTS)
def dot_mode(request, triton_device, monkeypatch):
    """Each dot precision of the kernel but the default (tests/ops runs the default)."""
    if triton_device.type == "cuda" and request.node.originalname not in ALL_DOTS_ON_CUDA:
        pytest.skip(f"dot mode {request.param} is checked on CUDA by {sorted(ALL_DOTS_ON_CUDA)}")
    monkeypatch.setattr(kds, "DEFAULT", dataclasses.replace(kds.DEFAULT, dot=request.param))
    return request.param


def launch(x, sigma, var, seed, ids, score, config=None, distorted=None):
    """The launcher with the adapter's constants (ops/triton.py), in a given configuration."""
    return kds.distort_and_score(x, None if sigma is None else adapter._blur_taps(sigma),
                                 None if var is None else var**0.5, seed, ids, score, adapter.SSIM_TAPS,
                                 adapter.C1_255, adapter.C2_255, distorted=distorted, config=config)


KIND_PARAMS = [("blur+noise", (1.0, 0.01)), ("blur", 0.7), ("noise", 0.02), ("blur", 1.2)]


@pytest.mark.data
@pytest.mark.parametrize("kind,param", KIND_PARAMS, ids=[f"{k}-{p}" for k, p in KIND_PARAMS])
def test_distort_real_vs_reference(real_images, triton_device, dot_mode, kind, param):
    x = torch.from_numpy(real_images[:6]).to(triton_device)
    ids = torch.arange(1000, 1006)
    out, s = iq.distort_and_score(x, kind, param=param, seed=12345, ids=ids, backend="triton")
    r_out, _ = iq.distort_and_score(x, kind, param=param, seed=12345, ids=ids, backend="torch")
    assert out.device == x.device and out.dtype == torch.uint8 and s.dtype == torch.float32
    assert_bytes_close(out, r_out, max_fraction=1e-4)
    # SSIM of the bytes this kernel wrote (a byte on the other side of .5 moves SSIM by ~1e-5 itself)
    torch.testing.assert_close(s.cpu(), reference.ssim(x, out).cpu(), rtol=0, atol=1e-5)
    d = iq.distort(x, kind, param=param, seed=12345, ids=ids, backend="triton")  # no score: same bytes
    assert_bytes_close(d, out, max_fraction=1e-12)


@pytest.mark.data
def test_ssim_of_jpeg_images(real_images, triton_device, dot_mode):
    """Score-only mode (the image was distorted elsewhere): vs the reference and skimage."""
    x_np = real_images[10:16]
    x = torch.from_numpy(x_np).to(triton_device)
    y = reference.jpeg(x, 8)
    s = iq.ssim(x, y, backend="triton")
    torch.testing.assert_close(s.cpu(), reference.ssim(x, y).cpu(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(s.cpu().numpy(), sk_ssim(x_np, y.cpu().numpy()), rtol=0, atol=1e-4)
    torch.testing.assert_close(iq.ssim(x, x, backend="triton").cpu(), torch.ones(6), rtol=0, atol=1e-6)


KERNEL_CONFIGS = [dict(isolate_dots=True), dict(isolate_dots=True, num_warps=8, maxnreg=128),
                  dict(num_warps=2, maxnreg=0), dict(stack_moments=True),
                  dict(stack_moments=True, isolate_dots=True), dict(stack_moments=True, dot="tf32"),
                  dict(stack_moments=True, isolate_dots=True, num_warps=8, maxnreg=128),
                  dict(stack_moments=True, dot="ieee")]
"""The kinds of candidate configurations bench/gpu_bench.py times beside the default (research/triton-tuning.md)."""


@pytest.mark.parametrize("cfg", KERNEL_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_kernel_configurations_vs_reference(gen, triton_device, cfg):
    """Each configuration computes what the default does: the reference's bytes and its SSIM of them,
    single tiles (32 x 32; 11 x 16, a 16 x 16 tile) and tiles with halos (33 x 47; the last two not on
    CUDA, where each geometry compiles anew), fused and score-only."""
    config = dataclasses.replace(kds.DEFAULT, **cfg)
    for h, w in ((32, 32),) + (((11, 16), (33, 47)) if INTERPRET else ()):
        x = torch.from_numpy(gen(3, h, w, seed=h + w)).to(triton_device)
        ids = torch.tensor([3, 1, 4], device=triton_device)
        out, s = launch(x, 1.0, 0.01, 77, ids, True, config)
        r_out, _ = reference.distort_and_score(x, 1.0, 0.01, 77, ids, False)
        assert_bytes_close(out, r_out, max_fraction=1e-4)
        torch.testing.assert_close(s.cpu(), reference.ssim(x, out).cpu(), rtol=0, atol=1e-5)
        d_out, d_s = launch(x, 1.0, 0.01, 77, ids, True)  # the default configuration
        if INTERPRET and config.dot == kds.DEFAULT.dot:
            # the same arithmetic in numpy: identical; on a GPU the SSIM sum's order may differ
            assert torch.equal(out, d_out)
            if config.stack_moments != kds.DEFAULT.stack_moments:
                # the window's two products associated the other way
                torch.testing.assert_close(s, d_s, rtol=0, atol=1e-6)
            else:
                assert torch.equal(s, d_s)
        torch.testing.assert_close(launch(x, None, None, 0, None, True, config, distorted=r_out)[1].cpu(),
                                   reference.ssim(x, r_out).cpu(), rtol=0, atol=1e-5)


def test_benchmark_candidates_are_valid_configurations():
    """The candidates (the GPU run that may change the default) are configurations with values the kernel
    accepts, and bench/gpu_bench.py's score-only ones are among them: a typo there would only show on the
    GPU machine, in its limited time."""
    spec = importlib.util.spec_from_file_location("_gpu_bench", ROOT / "bench" / "gpu_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.CANDIDATES is kds.CANDIDATES
    for name, c in kds.CANDIDATES.items():
        assert isinstance(c, kds.Config), name
        assert c.dot in kds.DOT_MODES, name
        assert c.num_warps in (1, 2, 4, 8, 16) and c.programs_per_sm >= 1, name
        assert c.maxnreg in (None, 0) or 24 <= c.maxnreg <= 255, name
    assert set(bench.SSIM_ONLY_CANDIDATES) <= set(kds.CANDIDATES)
    assert kds.DEFAULT == kds.Config()


@pytest.mark.parametrize("hw", [(11, 16), (32, 32), (33, 47)])
def test_scoring_changes_no_byte(gen, triton_device, hw):
    """Scoring shifts each plane by its SSIM shift and reads the shift outside the image (Stage 6): the
    distorted bytes are those of the distortion alone, bit for bit, single tiles and tiles with halos.
    (On CUDA each geometry compiles anew: 32 x 32 only.)"""
    if triton_device.type == "cuda" and hw != (32, 32):
        pytest.skip("Triton on CUDA: this geometry compiles anew")
    x = torch.from_numpy(gen(3, *hw, seed=5)).to(triton_device)
    x[0, : hw[0] // 2] = 255  # a flat, saturated half: the shift is no longer the constant 127.5
    ids = torch.tensor([7, 8, 9], device=triton_device)
    for sigma, var in ((1.0, None), (None, 0.02), (1.2, 0.01)):
        out, s = launch(x, sigma, var, 99, ids, True)
        alone, none = launch(x, sigma, var, 99, ids, False)
        assert none is None and torch.equal(out, alone)
        torch.testing.assert_close(s.cpu(), reference.ssim(x, out).cpu(), rtol=0, atol=1e-5)


def test_launcher_rejects_bad_input(triton_device):
    x = torch.zeros(1, 16, 16, 3, dtype=torch.uint8, device=triton_device)
    with pytest.raises(ValueError, match="uint8"):
        launch(x.float(), None, None, 0, None, True)
    with pytest.raises(ValueError, match="at least 11"):
        launch(x[:, :10], 1.0, None, 0, None, True)
    with pytest.raises(ValueError, match="only scored"):
        launch(x, 1.0, None, 0, None, True, distorted=x)
    with pytest.raises(ValueError, match="dot must be one of"):
        kds.Config(dot="fp8")
