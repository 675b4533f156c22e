"""The noise scheme: standard normals that any backend can reproduce bit for bit.

The normal added to one value is a pure function of (seed, image id, channel, row, column), so an
image gets the same noise whatever batch, order, thread count or backend computes it.

Scheme (identical to Triton's ``tl.randn(key, offset)`` with a 32-bit ``offset``):

1. key   = (k0, k1) = (image id, seed), both uint32; as Triton's 64-bit seed: ``seed << 32 | id``.
2. count = (c0, c1, c2, c3) = (offset, 0, 0, 0), ``offset = (row * W + column) * 3 + channel``:
   the value's index inside its H x W x 3 image.
3. (i1, i2, -, -) = Philox4x32-10(count, key)  (Salmon et al. 2011, "Random123").
4. u = float32(int32(i)) * float32(4.6566127342e-10), with negative int32 i replaced by ~i (= -i-1),
   so u lies in [0, 1).
5. z = sqrt(-2 log(max(u1, 1e-7))) * cos(float32(2 pi) * u2), all in float32 (Box-Muller).

The integers i1, i2 are exact on every backend; z agrees to float32 rounding of log/cos/sqrt.
The noisy value is ``clip(x + sqrt(var) * z, 0, 1)`` with ``x = image / 255`` (scikit-image's
``random_noise(mode="gaussian")`` model), rounded half-to-even to 8 bits.
"""

from __future__ import annotations

import torch

PHILOX_ROUNDS = 10
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
UNIFORM_SCALE = 4.6566127342e-10  # largest s with (2**31 - 1) * s < 1 in float32
BOX_MULLER_EPS = 1.0e-7
TWO_PI = 6.283185307179586
MAX_U32 = 0xFFFFFFFF

_M32 = 0xFFFFFFFF


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of the 64-bit product a * b, for a constant a and uint32s held in int64.

    a * b < 2**64 does not fit a signed int64, but the multiplication wraps modulo 2**64 (two's
    complement), so its 64 bits are exactly those of the unsigned product; the shifts and masks
    read them back. (tests/test_noise.py checks this against Python's exact integers.)
    """
    p = b * a
    return (p >> 32) & _M32, p & _M32


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = PHILOX_ROUNDS):
    """Philox4x32 (Salmon et al. 2011) on counters (c0..c3) and keys (k0, k1): int64 tensors
    holding uint32 values (broadcastable). Returns the four output words, int64 in [0, 2**32)."""
    c0, c1, c2, c3, k0, k1 = (torch.as_tensor(v, dtype=torch.int64) for v in (c0, c1, c2, c3, k0, k1))
    for _ in range(rounds):
        hi_b, lo_b = _mulhilo(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & _M32
        k1 = (k1 + PHILOX_KEY_B) & _M32
    return c0, c1, c2, c3


def uint_to_uniform(x: torch.Tensor) -> torch.Tensor:
    """Triton's uint_to_uniform_float for 32-bit words: a float32 in [0, 1)."""
    s = torch.where(x >= 2**31, x - 2**32, x)  # bitcast to int32
    s = torch.where(s < 0, -s - 1, s)
    return s.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


def box_muller(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    u1 = torch.clamp_min(u1, BOX_MULLER_EPS)
    th = torch.tensor(TWO_PI, dtype=torch.float32) * u2
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(th)


def normals(seed: int, ids: torch.Tensor, h: int, w: int, c: int = 3) -> torch.Tensor:
    """The standard normals of the scheme for images ``ids``: float32 N x H x W x C."""
    n = ids.numel()
    offset = torch.arange(h * w * c, dtype=torch.int64, device=ids.device)
    k0 = ids.to(torch.int64).view(n, 1)
    i1, i2, _, _ = philox4x32(offset.view(1, -1), 0, 0, 0, k0, seed)
    z = box_muller(uint_to_uniform(i1), uint_to_uniform(i2))
    return z.view(n, h, w, c)
