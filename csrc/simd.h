// Blocks of float32 lanes as GCC/Clang vector extensions, one register wide: 16 lanes with AVX-512,
// 8 with AVX2, 4 with SSE2, whichever instruction set the translation unit is compiled for. The kernels are
// written once on these types and compiled once per instruction set (CMakeLists.txt), each copy in
// its own namespace iqals::IQALS_ISA; all copies compute the same bits: + - * / sqrt are IEEE
// operations lane by lane and nothing is contracted into FMAs (-ffp-contract=off).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#ifndef IQALS_ISA
#define IQALS_ISA generic  // set by CMakeLists.txt: sse2, avx2, avx512 or native
#endif

namespace iqals {
namespace IQALS_ISA {
namespace simd {

// Lanes per block: one register of the instruction set (wider generic vectors would be split
// through memory by the compiler).
#if defined(__AVX512F__)
constexpr int L = 16;
#elif defined(__AVX2__)
constexpr int L = 8;
#else
constexpr int L = 4;
#endif

typedef float F __attribute__((vector_size(4 * L)));
typedef int32_t I __attribute__((vector_size(4 * L)));
typedef uint32_t U __attribute__((vector_size(4 * L)));
typedef uint8_t B __attribute__((vector_size(L)));

inline F load(const float* p) {
    F v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline void store(float* p, F v) { std::memcpy(p, &v, sizeof v); }

inline U load(const uint32_t* p) {
    U v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline void store(uint32_t* p, U v) { std::memcpy(p, &v, sizeof v); }

inline F splat(float x) { return F{} + x; }

inline U iota_u() {
    U v{};
    for (int l = 0; l < L; ++l) v[l] = uint32_t(l);
    return v;
}

// Widening bytes to floats and back: generic vector conversions between uint8 and 32-bit lanes
// are compiled lane by lane, so each instruction set gets its own few instructions.
inline F bytes_to_float(B v) {
#if defined(__AVX512F__)
    return (F)_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32((__m128i)v));
#elif defined(__AVX2__)
    __m128i b = _mm_setzero_si128();
    std::memcpy(&b, &v, sizeof v);
    return (F)_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
#elif defined(__SSE2__)
    __m128i b = _mm_setzero_si128();
    std::memcpy(&b, &v, sizeof v);
    const __m128i zero = _mm_setzero_si128();
    return (F)_mm_cvtepi32_ps(_mm_unpacklo_epi16(_mm_unpacklo_epi8(b, zero), zero));
#else
    return __builtin_convertvector(v, F);
#endif
}

// Integral floats in [0, 255] to bytes.
inline B float_to_bytes(F v) {
#if defined(__AVX512F__)
    return (B)_mm512_cvtepi32_epi8(_mm512_cvttps_epi32((__m512)v));
#elif defined(__AVX2__)
    const __m256i i = _mm256_cvttps_epi32((__m256)v);
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
    const __m128i b = _mm_packus_epi16(w, w);
    B out;
    std::memcpy(&out, &b, sizeof out);
    return out;
#elif defined(__SSE2__)
    const __m128i i = _mm_cvttps_epi32((__m128)v);
    const __m128i w = _mm_packs_epi32(i, i);
    const __m128i b = _mm_packus_epi16(w, w);
    B out;
    std::memcpy(&out, &b, sizeof out);
    return out;
#else
    return __builtin_convertvector(v, B);
#endif
}

// The first min(count, L) bytes at p, the rest zero: never reads past the end of an image.
inline B load_bytes(const uint8_t* p, int64_t count) {
    B v{};
    if (count >= L) {
        std::memcpy(&v, p, L);  // the common case: one vector load
    } else {
        std::memcpy(&v, p, size_t(count));
    }
    return v;
}

// Stores the first min(count, L) bytes of v at p.
inline void store_bytes(uint8_t* p, B v, int64_t count) {
    if (count >= L) {
        std::memcpy(p, &v, L);
    } else {
        std::memcpy(p, &v, size_t(count));
    }
}

// Bit reinterpretations and a lane-wise select (mask lanes are all ones or all zeros).
inline I bits(F v) { return (I)v; }
inline F from_bits(I v) { return (F)v; }
inline F select(I mask, F a, F b) { return from_bits((mask & bits(a)) | (~mask & bits(b))); }
inline I select(I mask, I a, I b) { return (mask & a) | (~mask & b); }

inline F min(F a, F b) { return select(a < b, a, b); }
inline F max(F a, F b) { return select(a > b, a, b); }


}  // namespace simd
}  // namespace IQALS_ISA
}  // namespace iqals
