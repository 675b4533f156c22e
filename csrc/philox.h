// The noise scheme of iqals_fast/ops/noise.py, in C++: read that module's docstring first.
//
// A standard normal is a pure function of (seed, image id, offset), offset = (row * W + col) * 3 + ch:
//   1. (w0, w1, -, -) = Philox4x32-10(counter = (offset, 0, 0, 0), key = (image id, seed))
//   2. u = float32(int32(w)) * float32(UNIFORM_SCALE), negative int32 w replaced by ~w  (Triton)
//   3. z = sqrt(-2 log(max(u0, EPS))) * cos(float32(TWO_PI) * u1), all float32        (Box-Muller)
// The constants below are the ones noise.py names (PHILOX_*, UNIFORM_SCALE, BOX_MULLER_EPS, TWO_PI);
// tests/ops/test_noise.py checks the integers bit for bit and the normals to float rounding.
//
// Everything works on blocks of simd::L lanes (see simd.h).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "simd.h"

namespace iqals {
namespace IQALS_ISA {

constexpr int kPhiloxRounds = 10;
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;    // Weyl increments of the key (Random123)
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;  // round multipliers (Random123)
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
// Rounded decimal -> double -> float32, exactly as Python/torch round noise.py's constants.
constexpr float kUniformScale = static_cast<float>(4.6566127342e-10);
constexpr float kBoxMullerEps = static_cast<float>(1.0e-7);
constexpr float kTwoPi = static_cast<float>(6.283185307179586);

// The key schedule of one image: round r uses (id + r * KEY_A, seed + r * KEY_B) mod 2^32.
struct PhiloxKey {
    uint32_t k0[kPhiloxRounds];
    uint32_t k1[kPhiloxRounds];
};

inline PhiloxKey philox_key(uint32_t id, uint32_t seed) {
    PhiloxKey key;
    for (int r = 0; r < kPhiloxRounds; ++r) {
        key.k0[r] = id + uint32_t(r) * kPhiloxKeyA;
        key.k1[r] = seed + uint32_t(r) * kPhiloxKeyB;
    }
    return key;
}

// The Philox state is held in 64-bit lanes (L/2 per register), a word in the low 32 bits of each:
// pmuludq multiplies the low 32 bits of every 64-bit lane into a full 64-bit product, so a product
// needs no unpacking, its high word is one shift, and its low word is the product itself (the
// upper 32 bits of a lane are don't-care: only low words are multiplied, XORed into low words,
// and read at the end).
typedef uint64_t Q __attribute__((vector_size(4 * simd::L)));

inline Q mul_low(Q a, uint32_t m) {
#if defined(__AVX512F__)
    return (Q)_mm512_mul_epu32((__m512i)a, _mm512_set1_epi64(m));
#elif defined(__AVX2__)
    return (Q)_mm256_mul_epu32((__m256i)a, _mm256_set1_epi64x(m));
#elif defined(__SSE2__)
    return (Q)_mm_mul_epu32((__m128i)a, _mm_set1_epi64x(m));
#else
    return (a & 0xFFFFFFFFu) * m;
#endif
}

// Philox4x32-10 of the counters (ctr, 0, 0, 0) of one Q: words 0 and 1 in the low halves.
// A round (noise.py's philox4x32) maps (c0, c1, c2, c3) to
//     (hi(B c2) ^ c1 ^ k0, lo(B c2), hi(A c0) ^ c3 ^ k1, lo(A c0)),  k = the round's key.
// The zero words save 3 of the 20 multiplies: round 1 has c1 = c2 = c3 = 0, so it leaves c0 = k0
// and c1 = 0 in every lane; round 2's A c0 is then one scalar product; the last round's c2 and c3
// are never used.
inline void philox_q(Q ctr, const PhiloxKey& key, Q& w0, Q& w1) {
    constexpr int last = kPhiloxRounds - 1;
    // Round 1: only A c0.
    Q pa = mul_low(ctr, kPhiloxRoundA);
    Q c2 = (pa >> 32) ^ key.k1[0], c3 = pa;
    // Round 2: c0 = k0[0], c1 = 0.
    const uint64_t pa2 = uint64_t(kPhiloxRoundA) * key.k0[0];
    Q pb = mul_low(c2, kPhiloxRoundB);
    Q c0 = (pb >> 32) ^ key.k0[1], c1 = pb;
    c2 = c3 ^ ((pa2 >> 32) ^ key.k1[1]);
    c3 = Q{} + (pa2 & 0xFFFFFFFFu);
    // Rounds 3 .. 9.
    for (int r = 2; r < last; ++r) {
        pa = mul_low(c0, kPhiloxRoundA);
        pb = mul_low(c2, kPhiloxRoundB);
        c0 = (pb >> 32) ^ c1 ^ key.k0[r];
        c1 = pb;
        c2 = (pa >> 32) ^ c3 ^ key.k1[r];
        c3 = pa;
    }
    // Round 10: only c0 and c1.
    pb = mul_low(c2, kPhiloxRoundB);
    w0 = (pb >> 32) ^ c1 ^ key.k0[last];
    w1 = pb;
}

// The low words of a's and then b's lanes, in order: L 32-bit lanes.
inline simd::U low_words(Q a, Q b) {
    const simd::U x = (simd::U)a, y = (simd::U)b;  // little-endian: lane 2i is the low word of lane i
#if defined(__AVX512F__)
    return __builtin_shufflevector(x, y, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
#elif defined(__AVX2__)
    return __builtin_shufflevector(x, y, 0, 2, 4, 6, 8, 10, 12, 14);
#else
    return __builtin_shufflevector(x, y, 0, 2, 4, 6);
#endif
}

// Philox words 0 and 1 of the L counters first, first + 1, ..., first + L - 1.
inline void philox_block(uint32_t first, const PhiloxKey& key, simd::U& w0, simd::U& w1) {
    constexpr int half = simd::L / 2;
    Q lo{};
    for (int l = 0; l < half; ++l) lo[l] = first + uint32_t(l);
    const Q hi = (lo + half) & 0xFFFFFFFFu;  // counters wrap modulo 2^32
    Q a0, a1, b0, b1;
    philox_q(lo & 0xFFFFFFFFu, key, a0, a1);
    philox_q(hi, key, b0, b1);
    w0 = low_words(a0, b0);
    w1 = low_words(a1, b1);
}

// The same for L arbitrary counters (the test hook).
inline void philox_block(simd::U ctr, const PhiloxKey& key, simd::U& w0, simd::U& w1) {
    constexpr int half = simd::L / 2;
    Q lo{}, hi{};
    for (int l = 0; l < half; ++l) {
        lo[l] = ctr[l];
        hi[l] = ctr[half + l];
    }
    Q a0, a1, b0, b1;
    philox_q(lo, key, a0, a1);
    philox_q(hi, key, b0, b1);
    w0 = low_words(a0, b0);
    w1 = low_words(a1, b1);
}

// Triton's uint_to_uniform_float for 32-bit words: float32s in [0, 1).
inline simd::F uint_to_uniform(simd::U w) {
    simd::I s = (simd::I)w;
    s = simd::select(s < 0, ~s, s);
    return __builtin_convertvector(s, simd::F) * kUniformScale;
}

// Natural logarithm of positive normal float32s (Cephes logf, relative error ~1e-7). std::log would
// be one library call per value.
inline simd::F log_f32(simd::F x) {
    using simd::F;
    using simd::I;
    const I b = simd::bits(x);
    I e = ((b >> 23) & 0xff) - 126;                          // x = m * 2^e, m in [0.5, 1)
    F m = simd::from_bits((b & 0x007fffff) | 0x3f000000);
    const I low = m < 0.70710678118654752f;                  // fold m into [sqrt(1/2), sqrt(2))
    e = e + low;                                             // low lanes are -1
    m = simd::select(low, (m + m) - 1.0f, m - 1.0f);
    const F z = m * m;
    F y = simd::splat(7.0376836292e-2f);
    y = y * m - 1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m - 1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m - 1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m - 2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z;
    const F fe = __builtin_convertvector(e, F);
    y = y + -2.12194440e-4f * fe;                            // ln 2 = 0.693359375 - 2.12194440e-4
    y = y - 0.5f * z;
    return (m + y) + 0.693359375f * fe;
}

// cos(x) for 0 <= x <= 2 pi (Cephes cosf: reduce by the nearest even multiple of pi/4 in three
// exact parts, then a sine or cosine polynomial on [-pi/4, pi/4]).
inline simd::F cos_f32(simd::F x) {
    using simd::F;
    using simd::I;
    I j = __builtin_convertvector(x * 1.27323954473516f, I);  // floor(x / (pi/4)), x >= 0
    j = j + (j & 1);                                           // even: |x - j pi/4| <= pi/4
    const F y = __builtin_convertvector(j, F);
    x = ((x - y * 0.78515625f) - y * 2.4187564849853515625e-4f) - y * 3.77489497744594108e-8f;
    const F z = x * x;
    const F s = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * x + x;
    const F c = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z
                - 0.5f * z + 1.0f;
    // j mod 8 = 0: cos x, 2: -sin x, 4: -cos x, 6: sin x
    const F v = simd::select((j & 2) != 0, s, c);
    return simd::select(((j + 2) & 4) != 0, -v, v);
}

// Box-Muller on two blocks of Philox words: a block of standard normals.
inline simd::F box_muller(simd::U w0, simd::U w1) {
    constexpr int L = simd::L;
    const simd::F u0 = simd::max(uint_to_uniform(w0), simd::splat(kBoxMullerEps));
    const simd::F u1 = uint_to_uniform(w1);
    float r[L];
    simd::store(r, -2.0f * log_f32(u0));
    for (int l = 0; l < L; ++l) r[l] = std::sqrt(r[l]);  // one vector sqrt (no errno)
    return simd::load(r) * cos_f32(kTwoPi * u1);
}

// The standard normals of the offsets first .. first + L - 1 under one image's key.
inline simd::F normals_block(uint32_t first, const PhiloxKey& key) {
    simd::U w0, w1;
    philox_block(first, key, w0, w1);
    return box_muller(w0, w1);
}

}  // namespace IQALS_ISA
}  // namespace iqals
