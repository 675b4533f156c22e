// Noise-scheme experiment (issue 3): what the current scheme's normals cost on this CPU against a
// "randn4x" scheme (Triton's tl.randn4x: one Philox4x32-10 call gives 4 words, two Box-Muller pairs
// give 4 normals, sin and cos share one argument reduction). Not used by the package: evidence for the
// decision whether to change the noise scheme of all backends (iqals_fast/ops/noise.py).
//
// It checks the candidate's Philox words against a scalar Philox4x32-10 (and Random123's known answer
// for counter 0, key 0), the moments of its normals and its sin/cos error, then times, single-threaded,
// 3072 x 4000 values (4,000 images of 32 x 32 x 3): the current normals (csrc/philox.h normals_block),
// the current Philox words alone, the candidate's normals and its Philox words alone. Build with the
// flags of CMakeLists.txt, from the repository root:
//
//   FL="-std=c++17 -O3 -ffp-contract=off -fno-math-errno -fno-trapping-math -Icsrc"
//   g++ $FL -DIQALS_ISA=avx512 -mavx512f -mavx512bw -mavx512dq -mavx512vl research/noise-scheme/noise_scheme_cpu.cpp -o /tmp/ns512
//   g++ $FL -DIQALS_ISA=avx2 -mavx2 research/noise-scheme/noise_scheme_cpu.cpp -o /tmp/ns2
//   /tmp/ns512 7 && /tmp/ns2 7        # argument: repeats (each kernel, interleaved); the best is reported
//
// Results: research/noise-scheme/results-amd-epyc-2c.md (conclusion: research/noise-scheme/README.md).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "philox.h"

using namespace iqals::IQALS_ISA;
namespace S = iqals::IQALS_ISA::simd;
constexpr int L = S::L;
constexpr int IMG = 3072, NIMG = 4000;
constexpr size_t N = size_t(IMG) * NIMG;
constexpr uint32_t SEED = 12345;

// ---------- candidate: all 4 Philox words ----------
inline void philox_q4(Q ctr, const PhiloxKey& key, Q& w0, Q& w1, Q& w2, Q& w3) {
    constexpr int last = kPhiloxRounds - 1;
    Q pa = mul_low(ctr, kPhiloxRoundA);
    Q c2 = (pa >> 32) ^ key.k1[0], c3 = pa;
    const uint64_t pa2 = uint64_t(kPhiloxRoundA) * key.k0[0];
    Q pb = mul_low(c2, kPhiloxRoundB);
    Q c0 = (pb >> 32) ^ key.k0[1], c1 = pb;
    c2 = c3 ^ ((pa2 >> 32) ^ key.k1[1]);
    c3 = Q{} + (pa2 & 0xFFFFFFFFu);
    for (int r = 2; r <= last; ++r) {   // rounds 3..10, the last one in full
        pa = mul_low(c0, kPhiloxRoundA);
        pb = mul_low(c2, kPhiloxRoundB);
        c0 = (pb >> 32) ^ c1 ^ key.k0[r];
        c1 = pb;
        c2 = (pa >> 32) ^ c3 ^ key.k1[r];
        c3 = pa;
    }
    w0 = c0; w1 = c1; w2 = c2; w3 = c3;
}

inline void philox_block4(uint32_t first, const PhiloxKey& key, S::U& w0, S::U& w1, S::U& w2, S::U& w3) {
    constexpr int half = L / 2;
    Q lo{};
    for (int l = 0; l < half; ++l) lo[l] = first + uint32_t(l);
    const Q hi = (lo + half) & 0xFFFFFFFFu;
    Q a0, a1, a2, a3, b0, b1, b2, b3;
    philox_q4(lo & 0xFFFFFFFFu, key, a0, a1, a2, a3);
    philox_q4(hi, key, b0, b1, b2, b3);
    w0 = low_words(a0, b0); w1 = low_words(a1, b1);
    w2 = low_words(a2, b2); w3 = low_words(a3, b3);
}

// sin and cos of 0 <= x <= 2 pi sharing one reduction (Cephes sincosf).
inline void sincos_f32(S::F x, S::F& sn, S::F& cs) {
    using S::F; using S::I;
    I j = __builtin_convertvector(x * 1.27323954473516f, I);
    j = j + (j & 1);
    const F y = __builtin_convertvector(j, F);
    x = ((x - y * 0.78515625f) - y * 2.4187564849853515625e-4f) - y * 3.77489497744594108e-8f;
    const F z = x * x;
    const F s = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * x + x;
    const F c = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z
                - 0.5f * z + 1.0f;
    const I swap = (j & 2) != 0;
    const F vc = S::select(swap, s, c), vs = S::select(swap, c, s);
    cs = S::select(((j + 2) & 4) != 0, -vc, vc);
    sn = S::select((j & 4) != 0, -vs, vs);
}

inline S::F radius(S::U w) {
    const S::F u = S::max(uint_to_uniform(w), S::splat(kBoxMullerEps));
    float r[L];
    S::store(r, -2.0f * log_f32(u));
    for (int l = 0; l < L; ++l) r[l] = std::sqrt(r[l]);
    return S::load(r);
}

// 4L normals of counters first .. first+L-1, stored as 4 blocks of L (word k of counter c at out[k*L + c-first]).
inline void normals_block4(uint32_t first, const PhiloxKey& key, float* out) {
    S::U w0, w1, w2, w3;
    philox_block4(first, key, w0, w1, w2, w3);
    const S::F r0 = radius(w0), r2 = radius(w2);
    S::F s1, c1, s3, c3;
    sincos_f32(kTwoPi * uint_to_uniform(w1), s1, c1);
    sincos_f32(kTwoPi * uint_to_uniform(w3), s3, c3);
    S::store(out, r0 * c1);
    S::store(out + L, r0 * s1);
    S::store(out + 2 * L, r2 * c3);
    S::store(out + 3 * L, r2 * s3);
}

// ---------- timed kernels (whole 4000-image run) ----------
__attribute__((noinline)) void run_cur_normals(float* out) {
    for (int img = 0; img < NIMG; ++img) {
        const PhiloxKey key = philox_key(uint32_t(img), SEED);
        float* o = out + size_t(img) * IMG;
        for (int i = 0; i < IMG; i += L) S::store(o + i, normals_block(uint32_t(i), key));
    }
}
__attribute__((noinline)) void run_cur_philox(uint32_t* out) {
    // words 0,1 of IMG counters: 2*IMG words per image (same buffer size in words as values*2)
    for (int img = 0; img < NIMG; ++img) {
        const PhiloxKey key = philox_key(uint32_t(img), SEED);
        uint32_t* o = out + size_t(img) * IMG;
        for (int i = 0; i < IMG; i += L) {
            S::U w0, w1;
            philox_block(uint32_t(i), key, w0, w1);
            S::store(o + i, w0 ^ w1);  // one store per counter (one value each)
        }
    }
}
// Every image's values through one candidate block function (4L normals of L counters per call).
template <void (*Block)(uint32_t, const PhiloxKey&, float*)>
inline void run_candidate(float* out) {
    for (int img = 0; img < NIMG; ++img) {
        const PhiloxKey key = philox_key(uint32_t(img), SEED);
        float* o = out + size_t(img) * IMG;
        for (int i = 0; i < IMG; i += 4 * L) Block(uint32_t(i / 4), key, o + i);
    }
}
__attribute__((noinline)) void run_new_normals(float* out) { run_candidate<normals_block4>(out); }
__attribute__((noinline)) void run_new_philox(uint32_t* out) {
    for (int img = 0; img < NIMG; ++img) {
        const PhiloxKey key = philox_key(uint32_t(img), SEED);
        uint32_t* o = out + size_t(img) * IMG;
        for (int i = 0; i < IMG; i += 4 * L) {
            S::U w0, w1, w2, w3;
            philox_block4(uint32_t(i / 4), key, w0, w1, w2, w3);
            S::store(o + i, w0); S::store(o + i + L, w1);
            S::store(o + i + 2 * L, w2); S::store(o + i + 3 * L, w3);  // 4 values per counter
        }
    }
}


// Variant: offsets 4c+k (value k of counter c at consecutive offsets) -> a 4 x L transpose.
typedef double D __attribute__((vector_size(4 * L)));
#if defined(__AVX512F__)
#define ILO32 0,16,1,17,2,18,3,19,4,20,5,21,6,22,7,23
#define IHI32 8,24,9,25,10,26,11,27,12,28,13,29,14,30,15,31
#define ILO64 0,8,1,9,2,10,3,11
#define IHI64 4,12,5,13,6,14,7,15
#else
#define ILO32 0,8,1,9,2,10,3,11
#define IHI32 4,12,5,13,6,14,7,15
#define ILO64 0,4,1,5
#define IHI64 2,6,3,7
#endif
inline void normals_block4_interleaved(uint32_t first, const PhiloxKey& key, float* out) {
    S::U w0, w1, w2, w3;
    philox_block4(first, key, w0, w1, w2, w3);
    const S::F r0 = radius(w0), r2 = radius(w2);
    S::F s1, c1, s3, c3;
    sincos_f32(kTwoPi * uint_to_uniform(w1), s1, c1);
    sincos_f32(kTwoPi * uint_to_uniform(w3), s3, c3);
    const S::F a = r0 * c1, b = r0 * s1, c = r2 * c3, d = r2 * s3;
    const D ablo = (D)__builtin_shufflevector(a, b, ILO32), abhi = (D)__builtin_shufflevector(a, b, IHI32);
    const D cdlo = (D)__builtin_shufflevector(c, d, ILO32), cdhi = (D)__builtin_shufflevector(c, d, IHI32);
    S::store(out, (S::F)__builtin_shufflevector(ablo, cdlo, ILO64));
    S::store(out + L, (S::F)__builtin_shufflevector(ablo, cdlo, IHI64));
    S::store(out + 2 * L, (S::F)__builtin_shufflevector(abhi, cdhi, ILO64));
    S::store(out + 3 * L, (S::F)__builtin_shufflevector(abhi, cdhi, IHI64));
}
__attribute__((noinline)) void run_new_normals_il(float* out) { run_candidate<normals_block4_interleaved>(out); }

// ---------- scalar reference ----------
static void philox_ref(uint32_t ctr[4], uint32_t k0, uint32_t k1) {
    for (int r = 0; r < 10; ++r) {
        uint64_t pa = uint64_t(0xD2511F53u) * ctr[0], pb = uint64_t(0xCD9E8D57u) * ctr[2];
        uint32_t n0 = uint32_t(pb >> 32) ^ ctr[1] ^ k0, n1 = uint32_t(pb);
        uint32_t n2 = uint32_t(pa >> 32) ^ ctr[3] ^ k1, n3 = uint32_t(pa);
        ctr[0] = n0; ctr[1] = n1; ctr[2] = n2; ctr[3] = n3;
        k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
    }
}

template <class Fn> static double best_of(Fn fn, int reps, std::vector<double>& all) {
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
        auto t0 = std::chrono::steady_clock::now();
        fn();
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        all.push_back(s);
        best = std::min(best, s);
    }
    return best;
}

int main(int argc, char** argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 5;
    std::vector<float> fbuf(N);
    std::vector<uint32_t> ubuf(N);
    std::fill(fbuf.begin(), fbuf.end(), 0.f);
    std::fill(ubuf.begin(), ubuf.end(), 0u);

    // ---- sanity ----
    int bad = 0;
    for (uint32_t id : {0u, 7u, 3999u, 0xFFFFFFFFu}) {
        const PhiloxKey key = philox_key(id, SEED);
        for (uint32_t first : {0u, 16u, 1000u, 0xFFFFFFF8u}) {
            S::U w0, w1, w2, w3, v0, v1;
            philox_block4(first, key, w0, w1, w2, w3);
            philox_block(first, key, v0, v1);
            for (int l = 0; l < L; ++l) {
                uint32_t c[4] = {first + uint32_t(l), 0, 0, 0};
                philox_ref(c, id, SEED);
                if (c[0] != w0[l] || c[1] != w1[l] || c[2] != w2[l] || c[3] != w3[l]) ++bad;
                if (c[0] != v0[l] || c[1] != v1[l]) ++bad;
            }
        }
    }
    // known-answer test from Random123 kat_vectors: philox4x32 10 rounds, ctr=0, key=0
    {
        uint32_t c[4] = {0, 0, 0, 0};
        philox_ref(c, 0, 0);
        if (!(c[0] == 0x6627e8d5u && c[1] == 0xe169c58du && c[2] == 0xbc57ac4cu && c[3] == 0x9b00dbd8u)) {
            printf("scalar reference KAT FAILED %08x %08x %08x %08x\n", c[0], c[1], c[2], c[3]);
            ++bad;
        }
    }
    printf("ISA lanes L=%d; philox word mismatches vs scalar reference: %d\n", L, bad);

    run_new_normals(fbuf.data());
    double s1 = 0, s2 = 0, s3 = 0, s4 = 0, mx = 0;
    for (size_t i = 0; i < N; ++i) {
        double z = fbuf[i];
        s1 += z; s2 += z * z; s3 += z * z * z; s4 += z * z * z * z; mx = std::max(mx, std::fabs(z));
    }
    double m = s1 / N, v = s2 / N - m * m;
    printf("candidate normals: n=%zu mean=%.5f var=%.5f skew~%.5f kurt~%.4f max|z|=%.3f\n", N, m, v, s3 / N,
           s4 / N, mx);
    // also check the cos normals equal the current scheme's normals of the same counters (words 0,1)
    {
        const PhiloxKey key = philox_key(5u, SEED);
        float tmp[4 * L];
        normals_block4(64, key, tmp);
        S::F cur = normals_block(64, key);
        double md = 0;
        for (int l = 0; l < L; ++l) md = std::max(md, double(std::fabs(tmp[l] - cur[l])));
        float til[4 * L];
        normals_block4_interleaved(64, key, til);
        int badil = 0;
        for (int cc = 0; cc < L; ++cc) for (int k = 0; k < 4; ++k) badil += til[4 * cc + k] != tmp[k * L + cc];
        printf("interleaved layout mismatches: %d\n", badil);
        printf("candidate z0 vs current normals_block of same counters: max abs diff %.3g\n", md);
        // sin vs std::sin check
        double ms = 0, mc = 0;
        for (int k = 0; k < 100000; ++k) {
            S::F x;
            for (int l = 0; l < L; ++l) x[l] = float(6.283185307179586 * ((k * L + l) + 0.5) / (100000.0 * L));
            S::F sn, cs;
            sincos_f32(x, sn, cs);
            for (int l = 0; l < L; ++l) {
                ms = std::max(ms, std::fabs(double(sn[l]) - std::sin(double(x[l]))));
                mc = std::max(mc, std::fabs(double(cs[l]) - std::cos(double(x[l]))));
            }
        }
        printf("sincos_f32 on [0,2pi]: max abs err sin %.3g cos %.3g\n", ms, mc);
    }

    // ---- timings ----
    struct T { const char* name; double best; std::vector<double> all; };
    std::vector<T> res(5);
    res[0].name = "current normals";
    res[1].name = "current Philox only";
    res[2].name = "candidate normals";
    res[3].name = "candidate Philox only";
    res[4].name = "cand. normals, 4c+k order";
    // interleave kernels across repeats to spread noise from other load
    for (int r = 0; r < reps; ++r) {
        best_of([&] { run_cur_normals(fbuf.data()); }, 1, res[0].all);
        best_of([&] { run_cur_philox(ubuf.data()); }, 1, res[1].all);
        best_of([&] { run_new_normals(fbuf.data()); }, 1, res[2].all);
        best_of([&] { run_new_philox(ubuf.data()); }, 1, res[3].all);
        best_of([&] { run_new_normals_il(fbuf.data()); }, 1, res[4].all);
    }
    volatile float sink = fbuf[N / 3] + float(ubuf[N / 5]);
    (void)sink;
    printf("%-24s %10s %10s %10s  (%d reps; N=%zu values)\n", "kernel", "ns/value", "us/image", "median", reps, N);
    for (auto& t : res) {
        std::vector<double> a = t.all;
        std::sort(a.begin(), a.end());
        double b = a.front(), med = a[a.size() / 2], w = a.back();
        printf("%-24s %10.3f %10.2f %10.3f  worst %.3f ns/value\n", t.name, b / N * 1e9, b / NIMG * 1e6,
               med / N * 1e9, w / N * 1e9);
    }
    return 0;
}
