"""The noise scheme (ops/noise.py, written once): Philox4x32-10 known answers, exact 32-bit arithmetic,
the C++ kernels' words and normals against it, and on every backend purity in (seed, id, c, r, col).

Correct means (docs/ops.md): the Philox integers identical on every backend, the normals equal to
float32 rounding of log / cos / sqrt.
"""

import numpy as np
import pytest
import torch

import iqals_fast as iq
from iqals_fast.ops import noise
from iqals_fast.ops.noise import _mulhilo, normals, philox4x32

OP = "distort_and_score"

try:
    from iqals_fast import _C
except ImportError:  # not built (test_dispatch fails then): the C++ hooks' tests are skipped
    _C = None
ISAS = _C.isas() if _C is not None else []


@pytest.mark.parametrize(
    "ctr,key,expected",
    [  # Random123's known-answer tests for philox4x32_10
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ],
)
def test_philox_known_answers(ctr, key, expected):
    assert tuple(int(v) for v in philox4x32(*ctr, *key)) == expected


def test_mulhilo_exact_against_python_integers():
    rng = np.random.default_rng(0)
    b = torch.from_numpy(rng.integers(0, 2**32, 5000, dtype=np.int64))
    b = torch.cat([b, torch.tensor([0, 1, 2**32 - 1, 2**31, 2**31 - 1])])
    for a in (0xD2511F53, 0xCD9E8D57):
        hi, lo = _mulhilo(a, b)
        for x, h, lw in zip(b.tolist(), hi.tolist(), lo.tolist()):
            assert (a * x) >> 32 == h and (a * x) & 0xFFFFFFFF == lw


def _python_normal(seed, img_id, offset):
    """An independent scalar implementation of the documented scheme (Python ints + float32 numpy)."""
    m = 0xFFFFFFFF
    c = [offset, 0, 0, 0]
    k0, k1 = img_id, seed
    for _ in range(10):
        p_b, p_a = 0xCD9E8D57 * c[2], 0xD2511F53 * c[0]
        c = [(p_b >> 32) ^ c[1] ^ k0, p_b & m, (p_a >> 32) ^ c[3] ^ k1, p_a & m]
        k0, k1 = (k0 + 0x9E3779B9) & m, (k1 + 0xBB67AE85) & m

    def uni(x):
        s = x - 2**32 if x >= 2**31 else x
        s = -s - 1 if s < 0 else s
        return np.float32(s) * np.float32(4.6566127342e-10)

    u1, u2 = max(np.float32(1e-7), uni(c[0])), uni(c[1])
    return np.sqrt(np.float32(-2.0) * np.log(u1)) * np.cos(np.float32(6.283185307179586) * u2)


def test_normals_follow_the_documented_scheme():
    seed, ids, h, w = 123456789, torch.tensor([0, 7, 2**32 - 1]), 3, 5
    z = normals(seed, ids, h, w)
    for i, img in enumerate(ids.tolist()):
        for r, col, ch in [(0, 0, 0), (1, 3, 2), (2, 4, 1)]:
            ref = _python_normal(seed, img, (r * w + col) * 3 + ch)
            assert float(z[i, r, col, ch]) == pytest.approx(float(ref), abs=2e-6)


def test_normals_are_standard_normal():
    z = normals(0, torch.arange(64), 32, 32).flatten()
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    assert abs(float((z**3).mean())) < 0.03  # no skew


@pytest.mark.parametrize("isa", ISAS)
def test_cpu_philox_words_identical_to_noise_py(isa):
    rng = np.random.default_rng(1)
    counters = np.concatenate([rng.integers(0, 2**32, 997, dtype=np.uint32), np.array([0, 1, 2**32 - 1], np.uint32)])
    for img_id, seed in [(0, 0), (7, 123456789), (2**32 - 1, 2**32 - 1)]:
        w0, w1 = _C.philox(counters, img_id, seed, isa=isa)
        r0, r1, _, _ = noise.philox4x32(torch.from_numpy(counters.astype(np.int64)), 0, 0, 0, img_id, seed)
        np.testing.assert_array_equal(w0, r0.numpy())
        np.testing.assert_array_equal(w1, r1.numpy())


@pytest.mark.parametrize("isa", ISAS)
def test_cpu_normals_agree_with_noise_py_to_float_rounding(isa):
    h, w = 33, 47  # the offsets of a whole odd-sized image, plus a tail shorter than a vector
    for img_id, seed in [(0, 0), (5, 77), (2**32 - 1, 2**31)]:
        z = _C.normals(seed, img_id, 0, h * w * 3, isa=isa)
        ref = noise.normals(seed, torch.tensor([img_id]), h, w).numpy().ravel()
        np.testing.assert_allclose(z, ref, rtol=1e-6, atol=1e-6)
        assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05


def test_noise_is_a_function_of_seed_id_and_position(gen, backend, device):
    """Batch composition and order do not change an image's noise; another seed or id changes it."""
    x = torch.from_numpy(gen(6, 16, 20)).to(device)

    def noisy(x, **kw):
        return iq.distort(x, "noise", 2, backend=backend, **kw).cpu().numpy()

    full = noisy(x, seed=5)
    # another batch, order and subset: same noise per image id
    perm = np.array([4, 1, 3])
    part = noisy(x[perm], seed=5, ids=perm)
    np.testing.assert_array_equal(part, full[perm])
    # another seed or id: different noise
    assert (noisy(x, seed=6) != full).mean() > 0.5
    assert (noisy(x[:1], seed=5, ids=[1]) != full[:1]).mean() > 0.5


def test_noise_does_not_depend_on_thread_count(gen, backend, device):
    x = torch.from_numpy(gen(8, 32, 32)).to(device)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = iq.distort(x, "noise", 3, seed=1, backend=backend).cpu()
        torch.set_num_threads(max(2, n))
        b = iq.distort(x, "noise", 3, seed=1, backend=backend).cpu()
    finally:
        torch.set_num_threads(n)
    np.testing.assert_array_equal(a, b)
