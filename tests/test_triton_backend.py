"""The Triton backend against its references: skimage, the torch backend, autograd of the eager loss.

Without a GPU these run in the Triton interpreter on CPU tensors (slow: small batches). The
interpreter must be on when the kernels are *defined*, so this module turns TRITON_INTERPRET=1 on
while it imports the backend and restores the variable afterwards; a fixture turns it on again
around each test of this module only, so other modules' ``backend="auto"`` on CPU is unchanged. With
``--device cuda`` the same tests run the compiled kernels.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
INTERPRET = not torch.cuda.is_available()
"""No GPU: the kernels run in the Triton interpreter on CPU tensors."""


def _stdlib_interpreted() -> bool:
    import triton.language.random as tlr

    return type(tlr.randn).__name__ == "InterpretedFunction"


# Triton decides at import whether its own @jit functions (tl.randn, ...) are interpreted, and each
# kernel decides when it is defined. If something imported triton before this module without the
# interpreter (torch._dynamo does), these tests rerun in a fresh interpreter-mode process instead.
SUBPROCESS = INTERPRET and "triton" in sys.modules and not _stdlib_interpreted()
_saved = os.environ.get("TRITON_INTERPRET")
if INTERPRET and not SUBPROCESS:
    os.environ["TRITON_INTERPRET"] = "1"
try:
    pytest.importorskip("triton")
    from iqals_fast.ops import triton_backend as tbk  # defines the kernels (interpreted without a GPU)
finally:
    if _saved is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _saved

import iqals_fast as iq  # noqa: E402
from iqals_fast.config import BLUR_TRUNCATE, SSIM  # noqa: E402
from iqals_fast.ops import dispatch  # noqa: E402
from iqals_fast.ops import torch_backend as ref  # noqa: E402

if not hasattr(tbk, "supports"):
    pytest.skip("the Triton backend did not register", allow_module_level=True)

from iqals_fast.kernels import distort_ssim as kds  # noqa: E402
from iqals_fast.kernels import soft_label_mse as ksl  # noqa: E402

skimage_filters = pytest.importorskip("skimage.filters")
skimage_metrics = pytest.importorskip("skimage.metrics")


@pytest.fixture(autouse=True)
def _triton_on(request, device, monkeypatch):
    if SUBPROCESS and request.node.originalname != "test_in_fresh_interpreter_process":
        pytest.skip("triton was imported without the interpreter before this module: run in a subprocess")
    if device.type == "cpu":
        if not tbk.INTERPRETED and not SUBPROCESS:
            pytest.skip("the Triton kernels were compiled for a GPU in this process; run with --device cuda")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    elif device.type != "cuda":
        pytest.skip(f"no Triton backend for {device}")


ALL_DOTS_ON_CUDA = {"test_ssim_of_jpeg_images"}
"""On CUDA every dot mode compiles each kernel configuration anew (a few seconds each), so the GPU run
checks the non-default modes in these tests only; the interpreter checks all of them everywhere."""


@pytest.fixture(params=sorted(kds.DOT_MODES))
def dot_mode(request, device, monkeypatch):
    """Each dot precision of the distort/SSIM kernel (the default is kds.DEFAULT_DOT)."""
    if (device.type == "cuda" and request.param != kds.DEFAULT_DOT
            and request.node.originalname not in ALL_DOTS_ON_CUDA):
        pytest.skip(f"dot mode {request.param} is checked on CUDA by {sorted(ALL_DOTS_ON_CUDA)}")
    monkeypatch.setattr(kds, "DEFAULT_DOT", request.param)
    return request.param


def _bytes_agree(a: torch.Tensor, b: torch.Tensor, max_fraction: float = 1e-4):
    """uint8 images equal except, where float rounding lands on the other side of .5, by one level."""
    d = (a.cpu().int() - b.cpu().int()).abs()
    assert int(d.max()) <= 1, f"bytes differ by up to {int(d.max())}"
    frac = float((d > 0).double().mean())
    assert frac < max_fraction, f"{frac:.2e} of the bytes differ (allowed < {max_fraction:.0e})"


def _skimage_ssim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.array([
        skimage_metrics.structural_similarity(
            a / 255.0, b / 255.0, channel_axis=-1, data_range=1.0, gaussian_weights=True,
            sigma=SSIM.sigma, use_sample_covariance=False, K1=SSIM.k1, K2=SSIM.k2,
        )
        for a, b in zip(x, y, strict=True)
    ])


@pytest.mark.skipif(not SUBPROCESS, reason="this process runs the interpreter tests itself")
def test_in_fresh_interpreter_process(device):
    """The whole module in a new process started with TRITON_INTERPRET=1 (see SUBPROCESS)."""
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-p", "no:cacheprovider", "--device", "cpu"]
    r = subprocess.run(cmd, cwd=root, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------


def test_auto_prefers_triton(device):
    for op in ("distort_score", "ssim", "soft_label_mse"):
        assert dispatch.resolve(op, "auto", device)[0] == "triton"


# ---------------------------------------------------------------------------------------------
# Distort + score
# ---------------------------------------------------------------------------------------------

KIND_PARAMS = [("blur+noise", (1.0, 0.01)), ("blur", 0.7), ("noise", 0.02), ("blur", 1.2)]


@pytest.mark.data
@pytest.mark.parametrize("kind,param", KIND_PARAMS, ids=[f"{k}-{p}" for k, p in KIND_PARAMS])
def test_distort_score_real_vs_torch(real_images, device, dot_mode, kind, param):
    x = torch.from_numpy(real_images[:6]).to(device)
    ids = torch.arange(1000, 1006)
    out, s = iq.distort_and_score(x, kind, param=param, seed=12345, ids=ids, backend="triton")
    r_out, r_s = iq.distort_and_score(x, kind, param=param, seed=12345, ids=ids, backend="torch")
    assert out.device == x.device and out.dtype == torch.uint8 and s.dtype == torch.float32
    _bytes_agree(out, r_out)
    # SSIM of the bytes this kernel wrote (a byte on the other side of .5 moves SSIM by ~1e-5 itself)
    torch.testing.assert_close(s.cpu(), ref.ssim(x, out).cpu(), rtol=0, atol=1e-5)
    if device.type == "cuda" and kind != "blur+noise":
        return  # the score-free kernels of the single-distortion kinds compile in other tests on CUDA
    d = iq.distort(x, kind, param=param, seed=12345, ids=ids, backend="triton")  # no score: same bytes
    _bytes_agree(d, out, max_fraction=1e-12)


SHAPES = [(8, 8), (11, 11), (32, 32), (33, 47), (64, 64), (100, 17), (16, 40)]
CUDA_SHAPES = {(8, 8), (11, 11), (32, 32), (33, 47), (64, 64), (100, 17)}
"""On CUDA each tile geometry compiles anew; these cover single tiles (16 and 32 padded), multi-tile
along one axis and both axes with halos (64 x 64: the larger-tile path)."""
CUDA_ALL_KINDS = {(32, 32), (33, 47)}
"""On CUDA the blur-only and noise-only kernels of each geometry compile anew too: checked on these
(single tile, tiles with halos); the other shapes check blur + noise."""


@pytest.mark.parametrize("h,w", SHAPES, ids=[f"{h}x{w}" for h, w in SHAPES])
def test_distort_score_shapes_vs_torch(gen, device, h, w):
    if device.type == "cuda" and (h, w) not in CUDA_SHAPES:
        pytest.skip("tile geometry covered by the other shapes on CUDA (compile time)")
    x = torch.from_numpy(gen(2, h, w, seed=h * 1000 + w)).to(device)
    score = min(h, w) >= SSIM.win
    ids = torch.tensor([7, 2**32 - 1])
    kinds = ((1.0, 0.01), (0.7, None), (None, 0.005))
    if device.type == "cuda" and (h, w) not in CUDA_ALL_KINDS:
        kinds = kinds[:1]
    for sigma, var in kinds:
        out, s = tbk.distort_score(x, sigma, var, 2**32 - 3, ids.to(device), score)
        r_out, r_s = ref.distort_score(x, sigma, var, 2**32 - 3, ids.to(device), score)
        _bytes_agree(out, r_out)
        if score:
            torch.testing.assert_close(s.cpu(), ref.ssim(x, out).cpu(), rtol=0, atol=1e-5)
        else:
            assert s is None


@pytest.mark.slow
def test_distort_score_large_odd_image_vs_torch(gen, device):
    """The issue's upper size: 257 x 300 (over 256 on both sides, odd), 9 x 11 tiles with halos."""
    x = torch.from_numpy(gen(1, 257, 300, seed=257)).to(device)
    ids = torch.tensor([5], device=device)
    out, s = tbk.distort_score(x, 1.2, 0.01, 3, ids, True)
    r_out, _ = ref.distort_score(x, 1.2, 0.01, 3, ids, False)
    _bytes_agree(out, r_out)
    torch.testing.assert_close(s.cpu(), ref.ssim(x, out).cpu(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("h,w,sigma", [(32, 32, 1.0), (33, 47, 1.2), (100, 17, 0.7), (8, 8, 1.0),
                                       (32, 32, 0.3), (32, 32, 3.0)])
def test_blur_vs_skimage(gen, device, h, w, sigma):
    """Also the extreme radii (1 and 12 taps each side): fp16's power-of-two tap scaling must hold."""
    x = gen(2, h, w, seed=3)
    out, _ = tbk.distort_score(torch.from_numpy(x).to(device), sigma, None, 0, None, False)
    sk = np.stack([  # one image at a time: a 4-D array would be blurred across the batch too
        skimage_filters.gaussian(im / 255.0, sigma=sigma, mode="nearest", truncate=BLUR_TRUNCATE,
                                 channel_axis=-1, preserve_range=True)
        for im in x
    ])
    expect = np.clip(np.round(sk * 255.0), 0, 255)
    assert np.abs(out.cpu().numpy().astype(int) - expect).max() <= 1


@pytest.mark.data
def test_ssim_vs_skimage_real_and_generated(real_images, gen, device):
    for x_np in (real_images[6:10], gen(2, 33, 47, seed=5)):
        x = torch.from_numpy(x_np).to(device)
        out, s = iq.distort_and_score(x, "blur+noise", param=(1.0, 0.01), seed=1, backend="triton")
        np.testing.assert_allclose(s.cpu().numpy(), _skimage_ssim(x_np, out.cpu().numpy()), rtol=0, atol=1e-4)


@pytest.mark.data
def test_ssim_of_jpeg_images(real_images, device, dot_mode):
    """Score-only mode (the image was distorted elsewhere): vs the torch backend and skimage."""
    x_np = real_images[10:16]
    x = torch.from_numpy(x_np).to(device)
    y = ref.jpeg(x, 8)
    s = iq.ssim(x, y, backend="triton")
    torch.testing.assert_close(s.cpu(), ref.ssim(x, y).cpu(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(s.cpu().numpy(), _skimage_ssim(x_np, y.cpu().numpy()), rtol=0, atol=1e-4)
    torch.testing.assert_close(iq.ssim(x, x, backend="triton").cpu(), torch.ones(6), rtol=0, atol=1e-6)


def test_ssim_odd_sizes_generated(gen, device):
    # (100 x 17, tiled along one axis only, is the same code as 33 x 47's; on CUDA it is one compile more)
    for h, w in ((11, 11), (33, 47)) + (((100, 17),) if device.type == "cpu" else ()):
        x = torch.from_numpy(gen(2, h, w, seed=11)).to(device)
        y = torch.from_numpy(gen(2, h, w, seed=12)).to(device)
        torch.testing.assert_close(iq.ssim(x, y, backend="triton").cpu(), ref.ssim(x, y).cpu(), rtol=0, atol=1e-5)


def test_noise_is_a_pure_function_of_seed_and_id(gen, device):
    """Batch composition and order do not change an image's noise."""
    x = torch.from_numpy(gen(3, 16, 16, seed=2)).to(device)
    ids = torch.tensor([5, 9, 3])
    a = iq.distort(x, "noise", param=0.02, seed=4, ids=ids, backend="triton")
    b = iq.distort(x[[2, 0]], "noise", param=0.02, seed=4, ids=ids[[2, 0]], backend="triton")
    assert torch.equal(a[[2, 0]], b)
    c = iq.distort(x, "noise", param=0.02, seed=5, ids=ids, backend="triton")
    assert not torch.equal(a, c)


def test_distort_strided_input_and_empty_batch(gen, device):
    base = torch.from_numpy(gen(4, 20, 24, seed=9)).to(device)
    x = base[::2, :, 2:22]  # not contiguous
    out, s = tbk.distort_score(x, 1.0, 0.01, 0, torch.arange(2, device=device), True)
    r_out, r_s = ref.distort_score(x.contiguous(), 1.0, 0.01, 0, torch.arange(2, device=device), True)
    _bytes_agree(out, r_out)
    torch.testing.assert_close(s.cpu(), ref.ssim(x, out).cpu(), rtol=0, atol=1e-5)
    e_out, e_s = tbk.distort_score(base[:0], 1.0, None, 0, torch.arange(0, device=device), True)
    assert e_out.shape == (0, 20, 24, 3) and e_s.shape == (0,)


KERNEL_CONFIGS = [dict(isolate_dots=True), dict(isolate_dots=True, num_warps=8, maxnreg=128),
                  dict(num_warps=2, maxnreg=0), dict(stack_moments=True),
                  dict(stack_moments=True, isolate_dots=True), dict(stack_moments=True, dot="tf32"),
                  dict(stack_moments=True, isolate_dots=True, num_warps=8, maxnreg=128),
                  dict(stack_moments=True, dot="ieee")]
"""The candidate configurations bench/gpu_bench.py times beside the default (see kds' "Warps")."""


@pytest.mark.parametrize("cfg", KERNEL_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_kernel_configurations_vs_torch(gen, device, cfg):
    """Each configuration computes what the default does: the torch backend's bytes and its SSIM of them,
    single tiles (32 x 32; 11 x 16, a 16 x 16 tile) and tiles with halos (33 x 47; the last two not on
    CUDA, where each geometry compiles anew), fused and score-only."""
    for h, w in ((32, 32),) + (((11, 16), (33, 47)) if INTERPRET else ()):
        x = torch.from_numpy(gen(3, h, w, seed=h + w)).to(device)
        ids = torch.tensor([3, 1, 4], device=device)
        out, s = kds.distort_ssim(x, 1.0, 0.1, 77, ids, True, **cfg)
        r_out, _ = ref.distort_score(x, 1.0, 0.01, 77, ids, False)
        _bytes_agree(out, r_out)
        torch.testing.assert_close(s.cpu(), ref.ssim(x, out).cpu(), rtol=0, atol=1e-5)
        d_out, d_s = kds.distort_ssim(x, 1.0, 0.1, 77, ids, True)  # the default configuration
        if INTERPRET and cfg.get("dot", kds.DEFAULT_DOT) == kds.DEFAULT_DOT:
            # the same arithmetic in numpy: identical; on a GPU the SSIM sum's order may differ
            assert torch.equal(out, d_out)
            if cfg.get("stack_moments", kds.STACK_MOMENTS) != kds.STACK_MOMENTS:
                # the window's two products associated the other way
                torch.testing.assert_close(s, d_s, rtol=0, atol=1e-6)
            else:
                assert torch.equal(s, d_s)
        torch.testing.assert_close(kds.distort_ssim(x, distorted=r_out, **cfg)[1].cpu(), ref.ssim(x, r_out).cpu(),
                                   rtol=0, atol=1e-5)


def test_benchmark_candidates_are_valid_configurations():
    """bench/gpu_bench.py's candidates (the GPU run that may change the defaults) are launcher options the
    kernel knows, with values it accepts, and the score-only ones are among them: a typo there would
    only show on the GPU machine, in its limited time."""
    import inspect

    spec = importlib.util.spec_from_file_location("_gpu_bench", ROOT / "bench" / "gpu_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    params = inspect.signature(kds.distort_ssim).parameters
    for name, kw in bench.CANDIDATES.items():
        assert set(kw) <= set(params) - {"images", "sigma", "noise_std", "seed", "ids", "score", "distorted"}, name
        assert kw.get("dot", kds.DEFAULT_DOT) in kds.DOT_MODES, name
        assert kw.get("num_warps", 4) in (1, 2, 4, 8, 16) and kw.get("programs_per_sm", 1) >= 1, name
        assert kw.get("maxnreg") in (None, 0) or 24 <= kw["maxnreg"] <= 255, name
    assert set(bench.SSIM_ONLY_CANDIDATES) <= set(bench.CANDIDATES)


def test_launcher_rejects_bad_input(device):
    with pytest.raises(ValueError, match="uint8"):
        kds.distort_ssim(torch.zeros(1, 16, 16, 3, device=device))
    with pytest.raises(ValueError, match="at least 11"):
        kds.distort_ssim(torch.zeros(1, 10, 16, 3, dtype=torch.uint8, device=device), sigma=1.0)
    x = torch.zeros(1, 16, 16, 3, dtype=torch.uint8, device=device)
    with pytest.raises(ValueError, match="only scored"):
        kds.distort_ssim(x, sigma=1.0, distorted=x)


# ---------------------------------------------------------------------------------------------
# Soft-label MSE
# ---------------------------------------------------------------------------------------------

LOSS_TOL = {torch.float32: dict(loss=1e-6, grad=2e-5), torch.bfloat16: dict(loss=1e-6, grad=1e-2)}
"""Loss atol; gradient tolerance relative to the largest |gradient| (bf16: its 8-bit mantissa)."""


def _loss_case(b, k, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed + 31 * b + k)
    z = (torch.randn(b, k, generator=g) * 4).to(dtype).to(device)
    y = torch.randint(0, k, (b,), generator=g).to(device)
    s = torch.rand(b, generator=g).to(device)
    s[: b // 4] = 1.0  # some 0-1 labels
    return z, y, s


def _eager(z, y, s, transform):
    zr = z.detach().clone().requires_grad_()
    loss = iq.soft_label_mse(zr, y, s, transform, backend="torch")
    loss.backward()
    return loss.detach(), zr.grad


def _check_loss(loss, grad, r_loss, r_grad, dtype):
    tol = LOSS_TOL[dtype]
    assert loss.dtype == torch.float32 and loss.ndim == 0 and grad.dtype == dtype
    torch.testing.assert_close(loss.cpu(), r_loss.cpu(), rtol=1e-6, atol=tol["loss"])
    scale = float(r_grad.float().abs().max()) or 1.0
    torch.testing.assert_close(grad.float().cpu(), r_grad.float().cpu(), rtol=0, atol=tol["grad"] * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("k", [2, 10, 37, 1000])
@pytest.mark.parametrize("b", [1, 7, 100])
def test_loss_vs_eager_autograd(device, b, k, dtype):
    z, y, s = _loss_case(b, k, dtype, device)
    transform = "identity" if k != 37 else "power:2"
    r_loss, r_grad = _eager(z, y, s, transform)
    zt = z.detach().clone().requires_grad_()
    loss = iq.soft_label_mse(zt, y, s, transform, backend="triton")
    loss.backward()
    _check_loss(loss.detach(), zt.grad, r_loss, r_grad, dtype)


@pytest.mark.parametrize("k,block_k", [(1000, 128), (37, 16), (3001, 1024)])
def test_loss_blocked_over_k(device, k, block_k):
    z, y, s = _loss_case(5, k, torch.float32, device)
    r_loss, r_grad = _eager(z, y, s, "identity")
    loss, g = ksl.soft_label_mse_fwd(z, y, s, True, block_k=block_k)
    grad = ksl.soft_label_mse_bwd(g, torch.ones((), device=device))
    _check_loss(loss, grad, r_loss, r_grad, torch.float32)


def test_loss_many_programs_deterministic(device):
    """The in-kernel reduction over many programs: right, bitwise repeatable, same as the host reduction."""
    b = 65536 if device.type == "cuda" else 3000
    z, y, s = _loss_case(b, 10, torch.float32, device)
    r_loss, _ = _eager(z, y, s, "identity")
    losses = [ksl.soft_label_mse_fwd(z, y, s, False)[0] for _ in range(5)]
    for loss in losses:
        assert torch.equal(loss, losses[0])
    torch.testing.assert_close(losses[0].cpu(), r_loss.cpu(), rtol=1e-6, atol=1e-6)
    host = ksl.soft_label_mse_fwd(z, y, s, False, reduce_in_kernel=False)[0]
    torch.testing.assert_close(host.cpu(), losses[0].cpu(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("b", [100, 256])
def test_loss_single_program(device, b):
    """B <= BLOCK_B (256 at K = 10): one program, which stores the mean itself (no partials, no atomics)."""
    z, y, s = _loss_case(b, 10, torch.float32, device)
    assert b <= ksl.ELEMENTS_PER_PROGRAM // 16  # BLOCK_B at K = 10 (BLOCK_K 16): one program
    r_loss, r_grad = _eager(z, y, s, "identity")
    loss, g = ksl.soft_label_mse_fwd(z, y, s, True)
    _check_loss(loss, ksl.soft_label_mse_bwd(g, torch.ones((), device=device)), r_loss, r_grad, torch.float32)
    assert torch.equal(ksl.soft_label_mse_fwd(z, y, s, False)[0], loss)
    host = ksl.soft_label_mse_fwd(z, y, s, False, reduce_in_kernel=False)[0]
    torch.testing.assert_close(host.cpu(), loss.cpu(), rtol=1e-6, atol=1e-7)


def test_loss_strided_logits_and_no_grad(device):
    z, y, s = _loss_case(9, 20, torch.float32, device)
    zs = z[:, ::2]  # stride 2 along K
    r_loss, r_grad = _eager(zs, y % 10, s, "affine:0.5")
    zt = zs.detach().clone().t().contiguous().t().requires_grad_()  # column-major storage
    loss = iq.soft_label_mse(zt, y % 10, s, "affine:0.5", backend="triton")
    loss.backward()
    _check_loss(loss.detach(), zt.grad, r_loss, r_grad, torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(iq.soft_label_mse(zs, y % 10, s, "affine:0.5", backend="triton").cpu(),
                                   r_loss.cpu(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("b", [100, 1000])
def test_loss_cuda_graph_replay(device, b):
    """Forward + backward captured in a CUDA graph and replayed: the in-kernel reduction's counter
    resets itself, so every replay gives the eager result (new inputs copied into the static ones).
    The backend's function, as a graphed training step calls it (the public ``iq.soft_label_mse``
    validates labels and scores on the host first)."""
    if device.type != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    z, y, s = _loss_case(b, 10, torch.float32, device)  # one program; four (the in-kernel reduction)
    zs = z.detach().clone().requires_grad_()
    _, fn = dispatch.resolve("soft_label_mse", "triton", device)

    def step():
        loss = fn(zs, y, s)  # transform "identity": the on-true targets are the scores
        return loss.detach(), torch.autograd.grad(loss, zs)[0]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up: compile, allocate the kernel's scratch
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_loss, g_grad = step()
    for seed in (1, 2, 3):
        z2, _, _ = _loss_case(1000, 10, torch.float32, device, seed=seed)
        with torch.no_grad():
            zs.copy_(z2)
        graph.replay()
        r_loss, r_grad = _eager(z2, y, s, "identity")
        _check_loss(g_loss.clone(), g_grad.clone(), r_loss, r_grad, torch.float32)


def test_loss_custom_op_opcheck(device):
    z, y, s = _loss_case(6, 10, torch.float32, device)
    z.requires_grad_()
    torch.library.opcheck(tbk.soft_label_mse_op, (z, y, s, True))
    torch.library.opcheck(tbk.soft_label_mse_op, (z.detach(), y, s, False))


def test_loss_compiles_without_graph_breaks(device):
    """torch.compile traces the backend's loss (custom op + registered backward) as one graph.

    (The public ``iq.soft_label_mse`` validates labels and scores on the host first, which a
    compiled training step should do once outside the graph; this tests the op the dispatch returns.)
    """
    z, y, s = _loss_case(7, 10, torch.float32, device)
    _, fn = dispatch.resolve("soft_label_mse", "triton", device)

    def fwd(logits, labels, scores):
        return fn(logits * 2.0, labels, scores**2)

    zt = z.detach().clone().requires_grad_()
    explained = torch._dynamo.explain(fwd)(zt, y, s)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    assert "iqals_fast.soft_label_mse" in explained.graphs[0].code  # the custom op, traced as one node
    torch._dynamo.reset()
    loss = torch.compile(fwd, fullgraph=True, backend="aot_eager")(zt, y, s)
    loss.backward()
    zr = z.detach().clone().requires_grad_()
    r_loss = iq.soft_label_mse(zr * 2.0, y, s, "power:2", backend="torch")
    r_loss.backward()
    _check_loss(loss.detach(), zt.grad, r_loss.detach(), zr.grad, torch.float32)


def test_training_step_with_the_fused_loss_is_one_graph(device):
    """The step train() compiles (train.make_forward: standardise, CNN, loss) with this backend's fused
    loss traces as one graph: the loss (and, on CPU, the C++ LRN) are custom-op nodes, not graph breaks."""
    from iqals_fast.model import PaperCNN
    from iqals_fast.train import TrainConfig, make_forward

    _, fn = dispatch.resolve("soft_label_mse", "triton", device)
    model = PaperCNN(seed=0).to(device)
    fwd = make_forward(model, fn, TrainConfig(compile=True), device)
    x = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, device=device)
    y, s = torch.tensor([0, 1, 2, 3], device=device), torch.tensor([1.0, 0.9, 0.5, 0.7], device=device)
    explained = torch._dynamo.explain(fwd)(x, y, s)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    code = explained.graphs[0].code
    assert "iqals_fast.soft_label_mse" in code
    if device.type == "cpu":
        assert "iqals_fast.lrn" in code
    torch._dynamo.reset()
