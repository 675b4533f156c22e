"""Distort and score in one pass: Gaussian blur and/or white noise, round to uint8, SSIM vs the pristine image.

Reference (``iqals_fast.ops.torch_backend.distort_score``), per image and channel, in plain PyTorch:
blur (separable, edge-replicate border) -> write -> add noise -> write -> round -> write -> SSIM
moments (five blurred planes) -> write -> SSIM map -> mean: about 12 full-image round trips through
global memory. Here one program reads each pristine uint8 tile once, keeps everything in registers
and writes only the distorted uint8 tile and one float per image (3 + 3 bytes per pixel in all).

Maths, per channel, on the 0..255 scale:

1. Blur as matrices. A separable Gaussian with the replicate border folded in is a banded matrix:
   ``blur(X) = A_r X A_c^T`` with ``A[o, i] = sum_t w_t [clamp(o + t - R, 0, n - 1) == i]`` (taps at
   the edge pile onto the edge pixel, which is what mode="nearest" means). Two ``tl.dot``.
2. Noise: ``+ 255 sqrt(var) z`` with ``z = tl.randn(seed << 32 | id, (row * W + col) * 3 + c)``:
   the documented scheme of ``iqals_fast.ops.noise``, Philox integers identical on every backend.
3. Round: clip to [0, 255], round half to even (``(v + 1.5 * 2**23) - 1.5 * 2**23`` in float32, exact
   for 0 <= v < 2**22), store uint8.
4. SSIM: the local moments of the valid window are ``B M B^T`` with ``B[m, j] = g[j - m]``
   (0 <= j - m < 11) on x - 127.5 and y - 127.5 (shifting leaves (co)variances unchanged and shrinks
   float32 cancellation in E[x^2] - E[x]^2). The formula needs only sigma_x^2 + sigma_y^2, so four
   moments suffice: E[x], E[y], E[x^2 + y^2], E[xy] (eight matrix products); then Wang et al.'s formula with
   C1 = (K1 * 255)^2, C2 = (K2 * 255)^2 and a masked sum over the valid positions.

Precision of the dots. Three modes (``DOT``), all float32-accurate except where noted:

- ``"fp16"`` (the default): tensor-core fp16 products with float32 accumulation. fp16 and TF32 both
  carry 11 significant bits, but fp16 runs at twice TF32's rate and takes half the registers. Each
  float32 operand f is split as ``f = hi + lo + O(2**-24 |f|)`` with hi = fp16(f), lo = fp16(f - hi)
  (round to nearest), and ``a b ~ a_lo b_hi + a_hi b_lo + a_hi b_hi`` (a_lo b_lo < 2**-24 |a b|
  dropped): three products; products of 11-bit significands are exact in the float32 accumulator.
  Pixels (0..255) and shifted pixels (half integers below 128) are exact in fp16, so their products
  take two dots; squares and cross products of shifted pixels are quarter integers below 2**14,
  exact as hi + lo. fp16's narrow exponent is handled by scaling: the filter matrices are split
  after multiplying by a power of two 2**s (chosen on the host so the smallest tap's lo part is a
  normal number and the largest product stays far below 65504) and the results multiplied by 2**-s,
  both exact.
- ``"tf32"``: the same split on TF32 operands, by bit masking (hi = x rounded to 11 significant
  bits, lo = the rest rounded the same way); half fp16's rate and twice its registers.
- ``"ieee"``: ``input_precision="ieee"`` (float32 FMA on CUDA cores).
The splits are written out (not ``input_precision="tf32x3"``) so the Triton interpreter runs the same
arithmetic and CPU tests check it.

Registers. The eight split filter matrices stay in registers for the program's whole batch loop; the
channel loop is a loop (not unrolled) so one channel's planes are live at a time. (The first version
held twelve float32 matrices and unrolled the channels: 255 registers and 1.6 KB of spills per
thread on sm_90, which is what made the fused kernel four times slower than score-only.)

Warps. Triton lays out a dot's warps by a heuristic: when a dot's result feeds another dot (a
chain, as here: every product feeds the next), it puts all warps along the rows. A 32-row tile has
only two 16-row MMA blocks, so with 4 warps each block is computed twice (warps 2 and 3 repeat warps 0
and 1), and so is every elementwise step in that layout; 8 warps compute it four times. The SASS shows
it (``python bench/sass_stats.py``: sm_90, triton 3.6 as on the GPU machine, and 3.9): the fused kernel
issues 216 MMAs per channel and warp where 108 suffice, and needs 249 registers (3.6; 21 spill
instructions in the channel loop at the 168 cap).
``ISOLATE_DOTS`` puts each dot alone in a loop of one trip whose count is a runtime argument (so no
compiler pass folds it): the heuristic looks for chained dots within one region only, so it then
splits 4 warps 2 x 2 (8 warps 2 x 4), no block is repeated: 108 MMAs per channel and warp, no spills
in the channel loop at the 168 cap, nor at 8 warps and 128 registers (32-40 bytes of stack outside it).
The trip count is min(one, 1), so the compiler drops the loop (a bare runtime count was unrolled by
ptxas, 8 copies of every dot). It costs more barriers: layout changes between dots now cross warps (49
per channel against 19 under 3.6). Which configuration is faster is measured on the GPU
(bench/gpu_bench.py's CANDIDATES); the defaults below are the fastest measured so far.

Stacked moments. ``STACK_MOMENTS`` computes the four moments in two products instead of eight:
F = [xs | ys | xs^2 + ys^2 | xs ys] (PDH x 4 PDW), G = B_r F, then G's four column blocks stacked as
rows (4 PDH x PDW) times B_c^T: each block is B_r F_j B_c^T, associated the other way round. Two
chained dots instead of eight mean 3 layout changes per channel where there were about 12, and the
second product's 4 PDH >= 64 rows qualify for Hopper's warpgroup MMA (wgmma), which reads B_c^T from
shared memory. Isolation (above) is then needed for the blur's dots only: the stacked ones repeat
nothing. ``bench/sass_stats.py`` (sm_90, triton 3.6), one image's issued instructions: score only
12,324 against 19,800; fused 26,364 with the blur's dots isolated against the default's 47,172 (26,904
with isolation alone); layout-change barriers per channel 14 against 19 (49 with isolation alone).
Triton 3.9 compiles the default tighter (36,972) and the others about the same
(bench/results/sass-sm90-triton3.{6,9}.md; bench/results/sass-sm90-vs-h200.md sets them beside the
H200 timings: 0.106-0.109 ms per thousand per image at 12 warps per SM, i.e. 2.8-2.9 ms for 50,000
images if barriers cost nothing; not yet timed).

Tiling. Images up to 32 x 32 are one tile (16 or 32 padded, masks for the rest); larger ones are cut
into 32 x 32 distorted tiles that overlap by the SSIM window minus one (10 pixels), each reading a
pristine tile with a halo of R (the blur radius) padded to a power of two. A tile writes only the
pixels it owns, and its SSIM sum goes to a per-(image, tile) slot that the launcher adds up in a fixed
order (deterministic, no atomics). Launches are persistent along the batch: a program builds its four
matrices once and loops over images.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from iqals_fast.config import BLUR_TRUNCATE, SSIM, gaussian_taps

TILE = 32  # largest distorted tile side (power of two); images up to TILE x TILE are a single tile
MIN_TILE = 16  # tl.dot needs every dimension >= 16
SHIFT = 127.5  # half the 8-bit range: SSIM moments are taken on x - SHIFT
RINT_MAGIC = 12582912.0  # 1.5 * 2**23: (v + M) - M rounds a float32 0 <= v < 2**22 half to even


# ---------------------------------------------------------------------------------------------
# Stage helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _split_tf32(x):
    """x = hi + lo + O(2**-24 |x|), hi and lo exactly representable in TF32 (rounded, unbiased)."""
    hi = ((x.to(tl.int32, bitcast=True) + 0x1000) & -8192).to(tl.float32, bitcast=True)
    lo = (((x - hi).to(tl.int32, bitcast=True) + 0x1000) & -8192).to(tl.float32, bitcast=True)
    return hi, lo


@triton.jit
def _split_f16(x):
    """x = hi + lo + O(2**-24 |x|) with hi, lo fp16 (round to nearest), for |x| well inside fp16's range."""
    hi = x.to(tl.float16)
    lo = (x - hi.to(tl.float32)).to(tl.float16)
    return hi, lo


@triton.jit
def _prep(m, scale, DOT: tl.constexpr):
    """A constant float32 matrix as the (hi, lo) pair the dots take (fp16: of m * scale; ieee: (m, m))."""
    if DOT == 0:
        hi, lo = _split_f16(m * scale)
    elif DOT == 1:
        hi, lo = _split_tf32(m)
    else:
        hi = m
        lo = m
    return hi, lo


@triton.jit
def _dot(a, b, acc, DOT: tl.constexpr):
    """acc + a @ b: TF32 inputs (DOT 1), IEEE float32 (DOT 2), fp16 inputs (DOT 0)."""
    if DOT == 1:
        acc = tl.dot(a, b, acc, input_precision="tf32")
    elif DOT == 2:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _mma(a, b, acc, one, DOT: tl.constexpr, ISOLATE: tl.constexpr):
    """acc + a @ b; ISOLATE: the dot alone in a loop of ``one`` (a runtime 1) trip, which the compiler
    does not see as part of a chain of dots, so it splits the warps over both output dimensions
    (see "Warps" in the module docstring)."""
    if ISOLATE:
        for _ in range(tl.minimum(one, 1)):
            acc = _dot(a, b, acc, DOT)
    else:
        acc = _dot(a, b, acc, DOT)
    return acc


@triton.jit
def _mma3(a_hi, a_lo, b_hi, b_lo, acc, one, DOT: tl.constexpr, ISOLATE: tl.constexpr):
    """acc + a @ b from split operands: a_lo b_hi + a_hi b_lo + a_hi b_hi (a_lo b_lo, below 2**-22 of
    a b, dropped), smallest terms first."""
    acc = _mma(a_lo, b_hi, acc, one, DOT, ISOLATE)
    acc = _mma(a_hi, b_lo, acc, one, DOT, ISOLATE)
    return _mma(a_hi, b_hi, acc, one, DOT, ISOLATE)


@triton.jit
def _split(x, DOT: tl.constexpr):
    """x as the (hi, lo) pair of the dot's input type: fp16 (DOT 0) or TF32 (DOT 1)."""
    if DOT == 0:
        hi, lo = _split_f16(x)
    else:
        hi, lo = _split_tf32(x)
    return hi, lo


@triton.jit
def _dot_xm(x, m_hi, m_lo, inv_scale, one, DOT: tl.constexpr, X_EXACT: tl.constexpr, ISOLATE: tl.constexpr):
    """x @ m for a constant matrix m given as its split; X_EXACT: x is exact in fp16 / TF32."""
    acc = tl.zeros((x.shape[0], m_hi.shape[1]), dtype=tl.float32)
    if DOT == 2:
        acc = _mma(x, m_hi, acc, one, DOT, ISOLATE)
    else:
        if X_EXACT:
            xe = x.to(tl.float16) if DOT == 0 else x
            acc = _mma(xe, m_lo, acc, one, DOT, ISOLATE)
            acc = _mma(xe, m_hi, acc, one, DOT, ISOLATE)
        else:
            x_hi, x_lo = _split(x, DOT)
            acc = _mma3(x_hi, x_lo, m_hi, m_lo, acc, one, DOT, ISOLATE)
        if DOT == 0:
            acc = acc * inv_scale
    return acc


@triton.jit
def _dot_mx(m_hi, m_lo, inv_scale, x, one, DOT: tl.constexpr, ISOLATE: tl.constexpr):
    """m @ x for a constant matrix m given as its split, x any float32 (|x| < 2**15 for fp16)."""
    acc = tl.zeros((m_hi.shape[0], x.shape[1]), dtype=tl.float32)
    if DOT == 2:
        acc = _mma(m_hi, x, acc, one, DOT, ISOLATE)
    else:
        x_hi, x_lo = _split(x, DOT)
        acc = _mma3(m_hi, m_lo, x_hi, x_lo, acc, one, DOT, ISOLATE)
        if DOT == 0:
            acc = acc * inv_scale
    return acc


@triton.jit
def _blur_matrix(taps_ptr, out0, in0, n, R, PO: tl.constexpr, PI: tl.constexpr, TRANSPOSE: tl.constexpr):
    """A[o, i] = sum_t w_t [clamp(out0 + o + t - R, 0, n - 1) == in0 + i]  (PO x PI, or PI x PO)."""
    if TRANSPOSE:
        o = out0 + tl.arange(0, PO)[None, :]
        i = in0 + tl.arange(0, PI)[:, None]
        a = tl.zeros((PI, PO), dtype=tl.float32)
    else:
        o = out0 + tl.arange(0, PO)[:, None]
        i = in0 + tl.arange(0, PI)[None, :]
        a = tl.zeros((PO, PI), dtype=tl.float32)
    for t in range(2 * R + 1):  # a runtime loop: every blur radius shares one compiled kernel
        w = tl.load(taps_ptr + t)
        src = tl.minimum(tl.maximum(o + (t - R), 0), n - 1)
        a += tl.where(src == i, w, 0.0)
    return a


@triton.jit
def _window_matrix(taps_ptr, WIN: tl.constexpr, P: tl.constexpr, TRANSPOSE: tl.constexpr):
    """B[m, j] = g[j - m] for 0 <= j - m < WIN (P x P; transposed if asked): the valid-window filter."""
    if TRANSPOSE:
        d = tl.arange(0, P)[:, None] - tl.arange(0, P)[None, :]
    else:
        d = tl.arange(0, P)[None, :] - tl.arange(0, P)[:, None]
    return tl.load(taps_ptr + d, mask=(d >= 0) & (d < WIN), other=0.0)


@triton.jit
def _window(f, br_hi, br_lo, bct_hi, bct_lo, inv_scale, one, DOT: tl.constexpr, EXACT: tl.constexpr,
            ISOLATE: tl.constexpr):
    """B_r f B_c^T: the Gaussian-weighted mean of f over every valid 11 x 11 window of the tile."""
    g = _dot_xm(f, bct_hi, bct_lo, inv_scale, one, DOT, EXACT, ISOLATE)
    return _dot_mx(br_hi, br_lo, inv_scale, g, one, DOT, ISOLATE)


@triton.jit
def _moments(xs, ys, br_hi, br_lo, bct_hi, bct_lo, inv_scale, one, DOT: tl.constexpr, ISOLATE: tl.constexpr,
             STACK: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr):
    """The windowed E[x], E[y], E[x^2 + y^2], E[xy] of the shifted planes (the formula needs vx + vy
    only, and windowing is linear: one moment of xs^2 + ys^2, quarter integers below 2**15, still exact
    as fp16 hi + lo). STACK: all four in two products (see "Stacked moments" in the module docstring)."""
    if STACK:
        f4 = tl.join(tl.join(xs, ys), tl.join(xs * xs + ys * ys, xs * ys))  # PH x PW x 2 x 2
        f = tl.reshape(tl.permute(f4, (0, 3, 2, 1)), (PH, 4 * PW))  # [xs | ys | ss | xy]
        # (no isolation needed: a 32 x 128 dot spreads 4 warps over columns, and the second is a wgmma)
        g = _dot_mx(br_hi, br_lo, inv_scale, f, one, DOT, False)  # B_r F
        h = tl.reshape(tl.permute(tl.reshape(g, (PH, 4, PW)), (1, 0, 2)), (4 * PH, PW))  # blocks as rows
        m = _dot_xm(h, bct_hi, bct_lo, inv_scale, one, DOT, False, False)  # (B_r F_j) B_c^T, stacked
        m4 = tl.reshape(tl.permute(tl.reshape(m, (4, PH, PW)), (1, 2, 0)), (PH, PW, 2, 2))
        m_x_ss, m_y_xy = tl.split(m4)
        mx, mss = tl.split(m_x_ss)
        my, mxy = tl.split(m_y_xy)
    else:
        mx = _window(xs, br_hi, br_lo, bct_hi, bct_lo, inv_scale, one, DOT, True, ISOLATE)
        my = _window(ys, br_hi, br_lo, bct_hi, bct_lo, inv_scale, one, DOT, True, ISOLATE)
        mss = _window(xs * xs + ys * ys, br_hi, br_lo, bct_hi, bct_lo, inv_scale, one, DOT, False, ISOLATE)
        mxy = _window(xs * ys, br_hi, br_lo, bct_hi, bct_lo, inv_scale, one, DOT, False, ISOLATE)
    return mx, my, mss, mxy


# ---------------------------------------------------------------------------------------------
# The kernel
# ---------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["N", "H", "W", "seed", "noise_scale", "n_tiles_h", "n_tiles_w", "R", "one"])
def distort_ssim_kernel(
    x_ptr, y_ptr, out_ptr, ids_ptr, blur_taps_ptr, win_taps_ptr, score_ptr,
    N, H, W, seed, noise_scale, n_tiles_h, n_tiles_w, c1, c2, blur_scale, win_scale, R, one,
    BLUR: tl.constexpr, NOISE: tl.constexpr, SCORE: tl.constexpr, READ_Y: tl.constexpr, WIN: tl.constexpr,
    PDH: tl.constexpr, PDW: tl.constexpr, PIH: tl.constexpr, PIW: tl.constexpr,
    TSH: tl.constexpr, TSW: tl.constexpr, SAME_TILE: tl.constexpr, SINGLE_TILE: tl.constexpr,
    DOT: tl.constexpr, ISOLATE: tl.constexpr, STACK: tl.constexpr,
):
    # -- Stage 0: which tile, which pixels. Distorted tile rows [r0, r0 + PDH), pristine [p0, p0 + PIH).
    pid_n = tl.program_id(0)
    nprog = tl.num_programs(0)
    tile = tl.program_id(1)
    th = tile // n_tiles_w
    tw = tile % n_tiles_w
    r0 = th * TSH
    c0 = tw * TSW
    if BLUR:
        p0 = tl.maximum(r0 - R, 0)
        q0 = tl.maximum(c0 - R, 0)
    else:
        p0 = r0
        q0 = c0

    rd = r0 + tl.arange(0, PDH)
    cd = c0 + tl.arange(0, PDW)
    d_in = (rd < H)[:, None] & (cd < W)[None, :]
    pix_d = (rd[:, None] * W + cd[None, :]) * 3  # int32 offsets inside one image (also noise counters)
    # a tile owns the pixels before the next tile's origin; the last tile along an axis owns the rest
    own_h = tl.arange(0, PDH) < tl.where(th == n_tiles_h - 1, PDH, TSH)
    own_w = tl.arange(0, PDW) < tl.where(tw == n_tiles_w - 1, PDW, TSW)
    own = d_in & own_h[:, None] & own_w[None, :]
    ri = p0 + tl.arange(0, PIH)
    ci = q0 + tl.arange(0, PIW)
    i_in = (ri < H)[:, None] & (ci < W)[None, :]
    pix_i = (ri[:, None] * W + ci[None, :]) * 3
    # SSIM map position m (local) is the window whose top-left pixel is r0 + m; valid windows lie inside
    m_ok_h = (tl.arange(0, PDH) < TSH) & (rd <= H - WIN)
    m_ok_w = (tl.arange(0, PDW) < TSW) & (cd <= W - WIN)
    m_ok = m_ok_h[:, None] & m_ok_w[None, :]

    # -- Stage 1: the constant matrices, built and split once per program (blur with the border folded
    #    in; the valid-window filter). fp16: scaled by a power of two so every split part is normal.
    if BLUR:
        a_r_hi, a_r_lo = _prep(_blur_matrix(blur_taps_ptr, r0, p0, H, R, PDH, PIH, False), blur_scale, DOT)
        a_ct_hi, a_ct_lo = _prep(_blur_matrix(blur_taps_ptr, c0, q0, W, R, PDW, PIW, True), blur_scale, DOT)
    if SCORE:
        b_r_hi, b_r_lo = _prep(_window_matrix(win_taps_ptr, WIN, PDH, False), win_scale, DOT)  # PDH x PDH
        b_ct_hi, b_ct_lo = _prep(_window_matrix(win_taps_ptr, WIN, PDW, True), win_scale, DOT)  # PDW x PDW
        count = ((H - WIN + 1) * (W - WIN + 1) * 3).to(tl.float32)
    inv_blur = 1.0 / blur_scale  # exact: the scales are powers of two
    inv_win = 1.0 / win_scale

    # -- Persistent loop over the batch; the channels are a loop too (one channel's planes live at a time)
    for n in range(pid_n, N, nprog):
        base = tl.cast(n, tl.int64) * H * W * 3
        if NOISE:
            key = (seed.to(tl.uint64) << 32) | tl.load(ids_ptr + n).to(tl.uint64)
        total = 0.0
        for c in range(3):
            if READ_Y:
                # -- score only: the distorted image comes from elsewhere (JPEG)
                d = tl.load(y_ptr + base + pix_d + c, mask=d_in, other=0).to(tl.float32)
                xd = tl.load(x_ptr + base + pix_d + c, mask=d_in, other=0).to(tl.float32)
            else:
                # -- Stage 2: read the pristine tile once (uint8 -> float32 0..255, zero outside)
                x = tl.load(x_ptr + base + pix_i + c, mask=i_in, other=0).to(tl.float32)
                # -- Stage 3: blur = A_r X A_c^T (x is integer-valued: exact in fp16 and TF32)
                if BLUR:
                    t = _dot_xm(x, a_ct_hi, a_ct_lo, inv_blur, one, DOT, True, ISOLATE)  # PIH x PDW
                    d = _dot_mx(a_r_hi, a_r_lo, inv_blur, t, one, DOT, ISOLATE)  # PDH x PDW
                else:
                    d = x
                # -- Stage 4: white noise, the documented Philox scheme
                if NOISE:
                    d = d + noise_scale * tl.randn(key, pix_d + c)
                # -- Stage 5: what an 8-bit file holds: clip, round half to even, store the owned pixels
                d = tl.minimum(tl.maximum(d, 0.0), 255.0)
                d = (d + 12582912.0) - 12582912.0
                tl.store(out_ptr + base + pix_d + c, d.to(tl.uint8), mask=own)
                if SCORE:
                    if SAME_TILE:
                        xd = x
                    else:
                        xd = tl.load(x_ptr + base + pix_d + c, mask=d_in, other=0).to(tl.float32)
            if SCORE:
                # -- Stage 6: the five windowed moments of the shifted planes, then the SSIM map
                xs = xd - 127.5
                ys = d - 127.5
                mx, my, mss, mxy = _moments(xs, ys, b_r_hi, b_r_lo, b_ct_hi, b_ct_lo, inv_win, one, DOT, ISOLATE,
                                            STACK, PDH, PDW)
                vsum = mss - mx * mx - my * my  # vx + vy
                vxy = mxy - mx * my
                ux = mx + 127.5
                uy = my + 127.5
                s = ((2.0 * ux * uy + c1) * (2.0 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vsum + c2))
                total += tl.sum(tl.sum(tl.where(m_ok, s, 0.0), axis=1), axis=0)
        # -- Stage 7: the image's SSIM (single tile) or this tile's share of its sum
        if SCORE:
            if SINGLE_TILE:
                tl.store(score_ptr + n, total / count)
            else:
                tl.store(score_ptr + n * (n_tiles_h * n_tiles_w) + tile, total)


# ---------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------

DOT_MODES = {"fp16": 0, "tf32": 1, "ieee": 2}
"""The dots' arithmetic (see the module docstring); each value is the kernel's DOT constexpr."""
DEFAULT_DOT = "fp16"
"""fp16 hi/lo split dots: float32 accuracy at twice TF32's tensor-core rate, half its registers."""
PROGRAMS_PER_SM = 3
"""Persistent programs per SM and tile column on CUDA (the batch loop's grid). Uncapped, ptxas gives
the fp16 kernel about 250 registers per thread at 4 warps (sm_90), so only two programs fit an SM;
with MAXNREG = 168 three fit. Measured on one H200 (triton 3.6, 50,000 32 x 32 images, blur+noise+SSIM):
3 programs/SM capped at 168 registers 5.00-5.14 ms; 4/SM uncapped 6.10 ms; 2/SM uncapped 6.13 ms;
2/SM at 8 warps 11.3 ms (bench/results/h200-2026-11-27-quick/)."""
NUM_WARPS = 4
"""Warps per program (8 was slower on H200: chained dots compute a 32-row tile's MMA blocks 4 times at
8 warps, twice at 4; see "Warps" in the module docstring)."""
MAXNREG = 168
"""Register cap per thread (0 or None: ptxas decides, about 250 at 4 warps). 168 lets three programs share
an SM, which measured fastest on H200 (see PROGRAMS_PER_SM)."""
STACK_MOMENTS = False
"""Compute the four SSIM moments as two stacked products (see "Stacked moments" in the module
docstring). Off: the configuration measured on H200; on is a candidate bench/gpu_bench.py times."""
ISOLATE_DOTS = False
"""Isolate each dot from the chain (see "Warps" in the module docstring). Off: the configuration
measured on H200 (PROGRAMS_PER_SM); on is a candidate that bench/gpu_bench.py times beside it."""
F16_MIN_PART = 0.25
"""fp16 scaling: the smallest nonzero tap times 2**s is at least this, so its lo part (~2**-12 of it)
is a normal fp16 number (>= 2**-14)."""


@functools.lru_cache(maxsize=64)
def _taps(sigma: float, truncate: float, device: torch.device) -> torch.Tensor:
    # float64 taps rounded to float32, as the torch backend convolves with
    return torch.tensor(gaussian_taps(sigma, truncate), dtype=torch.float64).to(torch.float32).to(device)


@functools.lru_cache(maxsize=64)
def _f16_scale(sigma: float, truncate: float) -> float:
    """2**s with min_tap * 2**s >= F16_MIN_PART; entries (folded taps, each <= 1) then stay <= 2**15.

    From the host's copy of the taps (no device read: no sync)."""
    w_min = min(w for w in gaussian_taps(sigma, truncate) if w > 0)
    s = max(0, math.ceil(math.log2(F16_MIN_PART / w_min)))
    return float(2.0 ** min(s, 15))


@functools.lru_cache(maxsize=16)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _plan(side: int, radius: int, blur: bool, score: bool):
    """(distorted tile side, pristine tile side, tile step, number of tiles) along one axis."""
    pd = max(MIN_TILE, min(TILE, _pow2(side)))
    step = pd - (SSIM.win - 1) if score else pd
    n_tiles = 1 if side <= pd else triton.cdiv(side - (SSIM.win - 1) if score else side, step)
    if not blur or side <= pd:
        pi = pd  # a single tile holds the whole axis; the border is folded into the blur matrix
    else:
        pi = max(MIN_TILE, _pow2(pd + 2 * radius))
    return pd, pi, step, n_tiles


def distort_ssim(images: torch.Tensor, sigma: float | None = None, noise_std: float | None = None,
                 seed: int = 0, ids: torch.Tensor | None = None, score: bool = True,
                 distorted: torch.Tensor | None = None, dot: str | None = None,
                 programs_per_sm: int | None = None, num_warps: int | None = None,
                 maxnreg: int | None = None, isolate_dots: bool | None = None,
                 stack_moments: bool | None = None):
    """Blur (sigma) and/or add noise (noise_std on the [0, 1] scale), round, and score against ``images``.

    images: uint8 N x H x W x 3 (H, W >= 8; >= 11 to score). ids: int64 N (noise key per image).
    ``distorted`` given (and sigma = noise_std = None): only score it against ``images``.
    dot, programs_per_sm, num_warps, maxnreg, isolate_dots, stack_moments: the kernel's configuration
    (defaults: DEFAULT_DOT, PROGRAMS_PER_SM, NUM_WARPS, MAXNREG, ISOLATE_DOTS, STACK_MOMENTS); dot in
    DOT_MODES; maxnreg caps registers per thread (CUDA; 0: no cap, ptxas decides). Configurations give
    the same images; scores may differ in float rounding between them (the SSIM map's sum follows the
    warps' layout; stacked moments associate the window's two products the other way).
    Returns (uint8 distorted images or None when ``distorted`` was given, float32 N scores or None).
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 N x H x W x 3, got {images.dtype} {tuple(images.shape)}")
    dot = DEFAULT_DOT if dot is None else dot
    if dot not in DOT_MODES:
        raise ValueError(f"dot must be one of {sorted(DOT_MODES)}, got {dot!r}")
    read_y = distorted is not None
    if read_y and (sigma is not None or noise_std is not None or not score):
        raise ValueError("a given distorted image is only scored: pass sigma=None, noise_std=None, score=True")
    n, h, w, _ = images.shape
    if min(h, w) < (SSIM.win if score else 8):
        raise ValueError(f"images must be at least {SSIM.win if score else 8} pixels on each side, got {h} x {w}")
    x = images.contiguous()
    dev = x.device
    blur = sigma is not None
    noise = noise_std is not None
    if noise:
        ids = torch.arange(n, dtype=torch.int64, device=dev) if ids is None else ids.to(dev, torch.int64).contiguous()
    radius = int(BLUR_TRUNCATE * sigma + 0.5) if blur else 0
    pdh, pih, tsh, nth = _plan(h, radius, blur, score)
    pdw, piw, tsw, ntw = _plan(w, radius, blur, score)
    n_tiles = nth * ntw
    out = torch.empty_like(x) if not read_y else x  # out unused (never written) when only scoring
    y = distorted.contiguous() if read_y else x
    if read_y and (y.shape != x.shape or y.dtype != torch.uint8 or y.device != dev):
        raise ValueError("distorted must be a uint8 tensor of the same shape and device as images")
    scores = None
    if score:
        scores = torch.empty((n,) if n_tiles == 1 else (n, n_tiles), dtype=torch.float32, device=dev)
    if n == 0:
        return (None if read_y else out), (torch.empty(0, dtype=torch.float32, device=dev) if score else None)
    if dev.type == "cuda":
        per_sm = PROGRAMS_PER_SM if programs_per_sm is None else programs_per_sm
        nprog = max(1, min(n, triton.cdiv(_sm_count(dev) * per_sm, n_tiles)))
    else:  # the Triton interpreter: a few programs, so the batch loop runs too
        nprog = min(n, 16)
    blur_taps = _taps(float(sigma), BLUR_TRUNCATE, dev) if blur else _taps(SSIM.sigma, SSIM.truncate, dev)
    win_taps = _taps(SSIM.sigma, SSIM.truncate, dev)
    ids_t = ids if noise else blur_taps  # any pointer: never read without noise
    regs = MAXNREG if maxnreg is None else maxnreg
    f16 = dot == "fp16"
    blur_scale = _f16_scale(float(sigma), BLUR_TRUNCATE) if f16 and blur else 1.0
    win_scale = _f16_scale(SSIM.sigma, SSIM.truncate) if f16 and score else 1.0
    distort_ssim_kernel[(nprog, n_tiles)](
        x, y, out, ids_t, blur_taps, win_taps, scores if score else blur_taps,
        n, h, w, int(seed), 255.0 * float(noise_std) if noise else 0.0, nth, ntw,
        (SSIM.k1 * 255.0) ** 2, (SSIM.k2 * 255.0) ** 2, blur_scale, win_scale, radius, 1,
        BLUR=blur, NOISE=noise, SCORE=score, READ_Y=read_y, WIN=SSIM.win,
        PDH=pdh, PDW=pdw, PIH=pih, PIW=piw, TSH=tsh, TSW=tsw,
        SAME_TILE=(pih == pdh and piw == pdw), SINGLE_TILE=(n_tiles == 1),
        DOT=DOT_MODES[dot], ISOLATE=bool(ISOLATE_DOTS if isolate_dots is None else isolate_dots),
        STACK=bool(STACK_MOMENTS if stack_moments is None else stack_moments),
        num_warps=NUM_WARPS if num_warps is None else int(num_warps),
        **({} if not regs or dev.type != "cuda" else {"maxnreg": int(regs)}),
    )
    if score and n_tiles > 1:
        scores = scores.sum(dim=1) / float(3 * (h - SSIM.win + 1) * (w - SSIM.win + 1))
    return (None if read_y else out), scores
