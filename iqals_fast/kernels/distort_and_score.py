"""distort_and_score: Gaussian blur and/or white noise, round to uint8, SSIM vs the pristine image, one pass.

Reference: ``iqals_fast.ops.reference.distort_and_score`` (blur, write, noise, write, round, write,
five blurred SSIM moments, write, map, mean: about 12 full-image round trips through memory). Here
one program reads each pristine uint8 tile once, keeps everything in registers and writes only the
distorted uint8 tile and one float per image. With ``distorted`` given it only scores (SSIM of
images distorted elsewhere, e.g. JPEG): the op ``ssim``.

Stages, per image and channel, on the 0..255 scale (the kernel's comments number them):

0. Tiling: images up to 32 x 32 are one tile (16 or 32 padded, masks for the rest); larger ones are
   32 x 32 distorted tiles overlapping by the SSIM window minus one, each reading a pristine tile with
   a halo of the blur radius. A tile writes only the pixels it owns; its SSIM sum goes to a
   per-(image, tile) slot the launcher adds up in a fixed order (deterministic, no atomics).
1. The constant matrices, once per program. A separable Gaussian with the replicate border folded in
   is a banded matrix, ``blur(X) = A_r X A_c^T`` with ``A[o, i] = sum_t w_t [clamp(o + t - R, 0, n - 1)
   == i]``; the valid SSIM window is ``B[m, j] = g[j - m]`` (0 <= j - m < WIN).
2. Read the pristine tile once (uint8 -> float32).
3. Blur: two ``tl.dot``.
4. Noise: ``+ 255 sqrt(var) z``, ``z = tl.randn(seed << 32 | id, (row * W + col) * 3 + c)``: the
   scheme of ``iqals_fast.ops.noise``, Philox integers identical on every backend.
5. Round: clip to [0, 255], round half to even (``(v + 1.5 * 2**23) - 1.5 * 2**23`` in float32, exact
   for 0 <= v < 2**22), store uint8.
6. SSIM: the moments ``B M B^T`` of x - s_x and y - s_y, with shifts constant per image and channel
   (the (co)variances do not change): s_x = floor((min + max) / 2) of the pristine image's channel,
   s_y the same of the distorted image when it is given (score only), else s_x; the launcher computes
   them (``midpoints``). float32's E[x^2] - E[x]^2 leaves a residue of a few ulps of E[x^2] that C2
   amplifies where a window is flat (the constant shift 127.5 of before missed skimage by 2e-4 on flat
   image pairs); the midpoint keeps |x - s_x| <= 128 and makes a flat channel exactly 0: no residue.
   Outside the image a tile reads the shift (0 once shifted; no pixel inside reads it). The formula
   needs only vx + vy, so four moments: E[x], E[y], E[x^2 + y^2], E[xy]; Wang et al.'s formula with C1,
   C2 and a masked sum over valid positions.
7. The image's SSIM (one tile) or the tile's share of its sum.

Dots (``Config.dot``), all float32-accurate: ``"fp16"`` splits each float32 operand as hi + lo in fp16
(``a b ~ a_lo b_hi + a_hi b_lo + a_hi b_hi``, float32 accumulation; the filter matrices scaled by a
power of two so every part is a normal fp16 number, undone exactly after); ``"tf32"`` the same split
by bit masking; ``"ieee"`` float32 FMAs. The splits are written out so the Triton interpreter runs the
same arithmetic and the CPU tests check it. ``isolate_dots`` puts each dot alone in a loop of one
runtime trip (the warps are then split over both output dimensions); ``stack_moments`` computes the
four moments in two stacked products. Why, with SASS counts and H200 timings:
research/triton-tuning.md.

The constants (blur and SSIM taps, C1, C2) are arguments; ``iqals_fast.ops.triton`` passes them from
``iqals_fast.config``. ``DEFAULT`` is the configuration the backend runs; ``CANDIDATES`` are those
bench/gpu_bench.py times beside it.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
import triton
import triton.language as tl

TILE = 32  # largest distorted tile side (power of two); images up to TILE x TILE are a single tile
MIN_TILE = 16  # tl.dot needs every dimension >= 16


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
    (research/triton-tuning.md, "Warps")."""
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
    """m @ x for a constant matrix m given as its split, x any float32 (|x| < 65504, fp16's largest, for fp16)."""
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
    only, and windowing is linear: one moment of xs^2 + ys^2). The shifted planes are integers, exact in
    fp16: |xs| <= 128 and |ys| <= 255 (the fused mode shifts y by x's shift), and xs^2 + ys^2 <= 65026
    (at most 1 + 255^2: the two are far apart only where x's range is narrow), inside fp16's range and
    exact as fp16 hi + lo. STACK: all four in two products (research/triton-tuning.md, "Stacked
    moments")."""
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
def distort_and_score_kernel(
    x_ptr, y_ptr, out_ptr, ids_ptr, blur_taps_ptr, win_taps_ptr, score_ptr, shift_ptr,
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
            if SCORE:
                # the SSIM shifts of this channel (Stage 6), integers: what a tile reads outside the image
                sx8 = tl.load(shift_ptr + n * 6 + c)
                sy8 = tl.load(shift_ptr + n * 6 + 3 + c)
            if READ_Y:
                # -- score only: the distorted image comes from elsewhere (JPEG)
                d = tl.load(y_ptr + base + pix_d + c, mask=d_in, other=sy8).to(tl.float32)
                xd = tl.load(x_ptr + base + pix_d + c, mask=d_in, other=sx8).to(tl.float32)
            else:
                # -- Stage 2: read the pristine tile once (uint8 -> float32 0..255; outside the image, which
                #    no pixel inside reads, 0 or the SSIM shift)
                if SCORE:
                    x = tl.load(x_ptr + base + pix_i + c, mask=i_in, other=sx8).to(tl.float32)
                else:
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
                        xd = tl.load(x_ptr + base + pix_d + c, mask=d_in, other=sx8).to(tl.float32)
            if SCORE:
                # -- Stage 6: the planes shifted by the image's per-channel shifts (integers; xs = 0 outside
                #    the image, |ys| <= 255 there), the five windowed moments, then the SSIM map
                sx = sx8.to(tl.float32)
                sy = sy8.to(tl.float32)
                xs = xd - sx
                ys = d - sy
                mx, my, mss, mxy = _moments(xs, ys, b_r_hi, b_r_lo, b_ct_hi, b_ct_lo, inv_win, one, DOT, ISOLATE,
                                            STACK, PDH, PDW)
                vsum = mss - mx * mx - my * my  # vx + vy
                vxy = mxy - mx * my
                ux = mx + sx
                uy = my + sy
                s = ((2.0 * ux * uy + c1) * (2.0 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vsum + c2))
                total += tl.sum(tl.sum(tl.where(m_ok, s, 0.0), axis=1), axis=0)
        # -- Stage 7: the image's SSIM (single tile) or this tile's share of its sum
        if SCORE:
            if SINGLE_TILE:
                tl.store(score_ptr + n, total / count)
            else:
                tl.store(score_ptr + n * (n_tiles_h * n_tiles_w) + tile, total)


# ---------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------

DOT_MODES = {"fp16": 0, "tf32": 1, "ieee": 2}
"""The dots' arithmetic (see the module docstring); each value is the kernel's DOT constexpr."""


@dataclasses.dataclass(frozen=True)
class Config:
    """How the kernel is compiled and launched; every configuration gives the same images (scores may
    differ in float rounding: the SSIM map's sum follows the warps' layout; stacked moments associate
    the window's two products the other way)."""

    dot: str = "fp16"
    """Dot arithmetic, one of DOT_MODES."""
    programs_per_sm: int = 3
    """Persistent programs per SM and tile column on CUDA (the batch loop's grid)."""
    num_warps: int = 4
    maxnreg: int = 168
    """Register cap per thread on CUDA (0: no cap, ptxas decides)."""
    isolate_dots: bool = False
    stack_moments: bool = False

    def __post_init__(self):
        if self.dot not in DOT_MODES:
            raise ValueError(f"dot must be one of {sorted(DOT_MODES)}, got {self.dot!r}")


DEFAULT = Config()
"""fp16 split dots, 3 programs per SM capped at 168 registers, 4 warps, chained dots: the fastest
configuration measured on an H200 (research/triton-tuning.md)."""

CANDIDATES = {
    # Config(dot, programs_per_sm, num_warps, maxnreg, ...), timed in this order by bench/gpu_bench.py,
    # the likeliest winners first (research/triton-tuning.md).
    # -- the four SSIM moments in two stacked products (the second a Hopper wgmma), the blur's dots isolated
    "stack_iso_pps3_w4_r168": Config("fp16", 3, 4, 168, isolate_dots=True, stack_moments=True),
    # -- each dot isolated from the chain: warps 2 x 2 (2 x 4 at 8 warps), no MMA block repeated
    "iso_pps3_w4_r168": Config("fp16", 3, 4, 168, isolate_dots=True),
    "stack_iso_pps2_w8_r128": Config("fp16", 2, 8, 128, isolate_dots=True, stack_moments=True),
    "stack_iso_pps4_w4_r128": Config("fp16", 4, 4, 128, isolate_dots=True, stack_moments=True),
    # -- 2 warps: the chained dots' [2, 1] layout repeats no MMA block (4 warps repeat half of them)
    "fp16_pps4_w2": Config("fp16", 4, 2, 0),
    "fp16_pps6_w2_r168": Config("fp16", 6, 2, 168),
    "iso_pps2_w8_r128": Config("fp16", 2, 8, 128, isolate_dots=True),
    "iso_pps4_w4_r128": Config("fp16", 4, 4, 128, isolate_dots=True),
    "iso_pps3_w8_r80": Config("fp16", 3, 8, 80, isolate_dots=True),
    "stack_pps3_w4_r168": Config("fp16", 3, 4, 168, stack_moments=True),
    # -- timed on the H200 before (5.0-5.1, 6.1, 11.3 ms; TF32): reference points of the same run
    "chained_pps3_w4_r168": Config("fp16", 3, 4, 168),
    "fp16_pps4_w4": Config("fp16", 4, 4, 0),
    "fp16_pps2_w8": Config("fp16", 2, 8, 0),
    "tf32_pps2_w4": Config("tf32", 2, 4, 0),
}
"""Configurations bench/gpu_bench.py times beside DEFAULT (each compiles once, ~2-5 s)."""


# ---------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------

F16_MIN_PART = 0.25
"""fp16 scaling: the smallest nonzero tap times 2**s is at least this, so its lo part (~2**-12 of it)
is a normal fp16 number (>= 2**-14)."""


@functools.lru_cache(maxsize=64)
def _taps_on(taps: tuple[float, ...], device: torch.device) -> torch.Tensor:
    # float64 taps rounded to float32, as the reference convolves with
    return torch.tensor(taps, dtype=torch.float64).to(torch.float32).to(device)


@functools.lru_cache(maxsize=64)
def _f16_scale(taps: tuple[float, ...]) -> float:
    """2**s with min_tap * 2**s >= F16_MIN_PART; entries (folded taps, each <= 1) then stay <= 2**15.

    From the host's copy of the taps (no device read: no sync)."""
    w_min = min(w for w in taps if w > 0)
    s = max(0, math.ceil(math.log2(F16_MIN_PART / w_min)))
    return float(2.0 ** min(s, 15))


@functools.lru_cache(maxsize=16)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def midpoints(images: torch.Tensor) -> torch.Tensor:
    """The SSIM shifts: floor((min + max) / 2) of each image's channels, uint8 N x 3."""
    lo, hi = torch.aminmax(images.reshape(images.shape[0], -1, 3), dim=1)
    return ((lo.to(torch.int16) + hi.to(torch.int16)) // 2).to(torch.uint8)


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _plan(side: int, radius: int, win: int, blur: bool, score: bool):
    """(distorted tile side, pristine tile side, tile step, number of tiles) along one axis."""
    pd = max(MIN_TILE, min(TILE, _pow2(side)))
    step = pd - (win - 1) if score else pd
    n_tiles = 1 if side <= pd else triton.cdiv(side - (win - 1) if score else side, step)
    if not blur or side <= pd:
        pi = pd  # a single tile holds the whole axis; the border is folded into the blur matrix
    else:
        pi = max(MIN_TILE, _pow2(pd + 2 * radius))
    return pd, pi, step, n_tiles


def distort_and_score(images: torch.Tensor, blur_taps: tuple[float, ...] | None, noise_std: float | None,
                      seed: int, ids: torch.Tensor | None, score: bool, ssim_taps: tuple[float, ...],
                      c1: float, c2: float, *, distorted: torch.Tensor | None = None, config: Config | None = None):
    """Blur (``blur_taps``) and/or add noise (``noise_std`` on the [0, 1] scale), round, and score
    against ``images`` with the SSIM window ``ssim_taps`` and constants ``c1``, ``c2`` (0..255 scale).

    images: uint8 N x H x W x 3; ids: int64 N (noise key per image, default 0..N-1). ``distorted``
    given (and blur_taps = noise_std = None, score): only score it against ``images``. ``config``:
    ``DEFAULT`` unless given. Returns (uint8 distorted images, or None when ``distorted`` was given;
    float32 N scores or None).
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 N x H x W x 3, got {images.dtype} {tuple(images.shape)}")
    cfg = DEFAULT if config is None else config
    read_y = distorted is not None
    if read_y and (blur_taps is not None or noise_std is not None or not score):
        raise ValueError("a given distorted image is only scored: pass blur_taps=None, noise_std=None, score=True")
    n, h, w, _ = images.shape
    win = len(ssim_taps)
    if score and min(h, w) < win:
        raise ValueError(f"SSIM needs images of at least {win} x {win} pixels (its window), got {h} x {w}")
    x = images.contiguous()
    dev = x.device
    blur = blur_taps is not None
    noise = noise_std is not None
    if noise:
        ids = torch.arange(n, dtype=torch.int64, device=dev) if ids is None else ids.to(dev, torch.int64).contiguous()
    radius = (len(blur_taps) - 1) // 2 if blur else 0
    pdh, pih, tsh, nth = _plan(h, radius, win, blur, score)
    pdw, piw, tsw, ntw = _plan(w, radius, win, blur, score)
    n_tiles = nth * ntw
    out = torch.empty_like(x) if not read_y else x  # out unused (never written) when only scoring
    y = distorted.contiguous() if read_y else x
    if read_y and (y.shape != x.shape or y.dtype != torch.uint8 or y.device != dev):
        raise ValueError("distorted must be a uint8 tensor of the same shape and device as images")
    scores = shifts = None
    if score:
        scores = torch.empty((n,) if n_tiles == 1 else (n, n_tiles), dtype=torch.float32, device=dev)
    if n == 0:
        return (None if read_y else out), (torch.empty(0, dtype=torch.float32, device=dev) if score else None)
    if score:
        sx = midpoints(x)
        shifts = torch.stack([sx, midpoints(y) if read_y else sx], dim=1).contiguous()  # N x 2 x 3
    if dev.type == "cuda":
        nprog = max(1, min(n, triton.cdiv(_sm_count(dev) * cfg.programs_per_sm, n_tiles)))
    else:  # the Triton interpreter: a few programs, so the batch loop runs too
        nprog = min(n, 16)
    win_taps = _taps_on(tuple(ssim_taps), dev)
    blur_t = _taps_on(tuple(blur_taps), dev) if blur else win_taps
    ids_t = ids if noise else blur_t  # any pointer: never read without noise
    f16 = cfg.dot == "fp16"
    blur_scale = _f16_scale(tuple(blur_taps)) if f16 and blur else 1.0
    win_scale = _f16_scale(tuple(ssim_taps)) if f16 and score else 1.0
    distort_and_score_kernel[(nprog, n_tiles)](
        x, y, out, ids_t, blur_t, win_taps, scores if score else blur_t, shifts if score else blur_t,
        n, h, w, int(seed), 255.0 * float(noise_std) if noise else 0.0, nth, ntw,
        float(c1), float(c2), blur_scale, win_scale, radius, 1,
        BLUR=blur, NOISE=noise, SCORE=score, READ_Y=read_y, WIN=win,
        PDH=pdh, PDW=pdw, PIH=pih, PIW=piw, TSH=tsh, TSW=tsw,
        SAME_TILE=(pih == pdh and piw == pdw), SINGLE_TILE=(n_tiles == 1),
        DOT=DOT_MODES[cfg.dot], ISOLATE=bool(cfg.isolate_dots), STACK=bool(cfg.stack_moments),
        num_warps=int(cfg.num_warps),
        **({} if not cfg.maxnreg or dev.type != "cuda" else {"maxnreg": int(cfg.maxnreg)}),
    )
    if score and n_tiles > 1:
        scores = scores.sum(dim=1) / float(3 * (h - win + 1) * (w - win + 1))
    return (None if read_y else out), scores
