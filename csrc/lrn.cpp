// CPU kernels: TensorFlow's local response normalisation across channels, forward and backward
// (see kernels.h, struct Lrn). Compiled once per instruction set like distort_and_score.cpp.
//
//   s_c = bias + alpha * sum_{|j - c| <= r} x_j^2        (j within [0, C))
//   y_c = x_c * s_c^-beta
//   dx_j = dy_j * s_j^-beta - 2 alpha beta x_j * sum_{|c - j| <= r} dy_c y_c / s_c
//
// x, y, dy, dx are float32 N x C x P (P = H * W, NCHW contiguous) or, channels last, (N P) x C (NHWC
// contiguous); or all four bfloat16 (Bf16, kernels.h): each value is widened to float32 as it is read,
// everything is computed in float32 exactly as for float32 inputs, and y, dx are rounded to bfloat16
// (to nearest, ties to even, as torch rounds) as they are written. So a bfloat16 call gives exactly
// the bfloat16 rounding of the float32 kernels' result on the same (bfloat16-valued) inputs.
// Work is split into (image, block of positions) or (block of pixels) tasks; each output element is
// computed by one thread in a fixed order, so the bits do not depend on the thread count.
// Every sum runs over j in increasing order, in both layouts (NHWC adds exact zeros for the channels
// beyond the edges first, which changes no bit), so both layouts give the same bits too.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace iqals {
namespace IQALS_ISA {
namespace {

constexpr int kBlock = 64;  // positions per task: C x kBlock floats of scratch per array

// Reading and writing an element: float32 as it is; bfloat16 (the upper 16 bits of a float32) widened
// exactly, and rounded to nearest even (NaN to the quiet NaN 0x7FC0, as c10::BFloat16 does).
inline float load(float v) { return v; }
inline float load(Bf16 v) {
    const uint32_t u = uint32_t(v) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
inline void store(float* p, float v) { *p = v; }
inline void store(Bf16* p, float v) {
    uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
    *p = nan ? Bf16(0x7FC0) : Bf16((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// s^-beta for a block; beta = 0.75 (the tutorial's) without pow: s^-0.75 = 1 / (sqrt(s) sqrt(sqrt(s))).
inline void neg_pow(const float* s, float* p, int n, float beta) {
    if (beta == 0.75f) {
        for (int b = 0; b < n; ++b) {
            const float r = std::sqrt(s[b]);
            p[b] = 1.0f / (r * std::sqrt(r));
        }
    } else {
        for (int b = 0; b < n; ++b) p[b] = std::pow(s[b], -beta);
    }
}

// acc[b] = sum over rows j in [c - radius, c + radius] (within [0, C)), in increasing j, of rows[j][b];
// rows is C x kBlock.
inline void window_sum(const float* rows, int64_t c, int64_t c_count, int64_t radius, int n, float* acc) {
    const int64_t lo = std::max<int64_t>(0, c - radius), hi = std::min<int64_t>(c_count - 1, c + radius);
    for (int b = 0; b < n; ++b) acc[b] = 0.0f;
    for (int64_t j = lo; j <= hi; ++j) {
        const float* q = rows + j * kBlock;
        for (int b = 0; b < n; ++b) acc[b] += q[b];
    }
}

// For positions [p0, p0 + n) of one image: the window sums s (C x kBlock) and s^-beta (C x kBlock).
template <class T>
inline void scales(const T* x, int64_t c_count, int64_t plane, int64_t p0, int n, const Lrn& lrn, float* sq,
                   float* s, float* pw) {
    for (int64_t c = 0; c < c_count; ++c) {
        const T* xc = x + c * plane + p0;
        float* q = sq + c * kBlock;
        for (int b = 0; b < n; ++b) q[b] = load(xc[b]) * load(xc[b]);
    }
    for (int64_t c = 0; c < c_count; ++c) {
        float acc[kBlock];
        window_sum(sq, c, c_count, lrn.radius, n, acc);
        float* sc = s + c * kBlock;
        for (int b = 0; b < n; ++b) sc[b] = lrn.bias + lrn.alpha * acc[b];
        neg_pow(sc, pw + c * kBlock, n, lrn.beta);
    }
}

template <class Body>
void for_blocks(int64_t n_images, int64_t c_count, int64_t plane, int threads, Body body) {
    const int64_t blocks = (plane + kBlock - 1) / kBlock;
    const int64_t tasks = n_images * blocks;
#pragma omp parallel num_threads(thread_count(threads))
    {
        std::vector<float> scratch(size_t(4 * c_count * kBlock));
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; ++t) {
            const int64_t i = t / blocks, p0 = (t % blocks) * kBlock;
            body(i, p0, int(std::min<int64_t>(kBlock, plane - p0)), scratch.data());
        }
    }
}

// -- channels last: one pixel's C channels are contiguous ------------------------------------------

// For one pixel: s_c and s_c^-beta from its channels x[0..C), via zero-padded squares (C + 2r).
template <class T>
inline void pixel_scales(const T* x, int64_t c_count, const Lrn& lrn, float* sqpad, float* s, float* pw) {
    const int64_t r = lrn.radius;
    float* sq = sqpad + r;
    for (int64_t c = 0; c < c_count; ++c) sq[c] = load(x[c]) * load(x[c]);
    for (int64_t c = 0; c < c_count; ++c) s[c] = 0.0f;
    for (int64_t d = 0; d <= 2 * r; ++d) {
        const float* q = sqpad + d;
        for (int64_t c = 0; c < c_count; ++c) s[c] += q[c];
    }
    for (int64_t c = 0; c < c_count; ++c) s[c] = lrn.bias + lrn.alpha * s[c];
    neg_pow(s, pw, int(c_count), lrn.beta);
}

template <class Body>
void for_pixels(int64_t pixels, int64_t c_count, int64_t radius, int threads, Body body) {
    const int64_t tasks = (pixels + kBlock - 1) / kBlock;
#pragma omp parallel num_threads(thread_count(threads))
    {
        const int64_t padded = c_count + 2 * radius;
        std::vector<float> scratch(size_t(2 * padded + 3 * c_count), 0.0f);  // the pads stay zero
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; ++t) {
            const int64_t end = std::min<int64_t>(pixels, (t + 1) * kBlock);
            for (int64_t q = t * kBlock; q < end; ++q) body(q, scratch.data(), padded);
        }
    }
}

template <class T>
void lrn_forward_nhwc(const T* x, int64_t pixels, int64_t c_count, const Lrn& lrn, T* y, int threads) {
    for_pixels(pixels, c_count, lrn.radius, threads, [&](int64_t q, float* scratch, int64_t padded) {
        float *sqpad = scratch, *s = scratch + 2 * padded, *pw = s + c_count;
        const T* xq = x + q * c_count;
        pixel_scales(xq, c_count, lrn, sqpad, s, pw);
        T* yq = y + q * c_count;
        for (int64_t c = 0; c < c_count; ++c) store(yq + c, load(xq[c]) * pw[c]);
    });
}

template <class T>
void lrn_backward_nhwc(const T* x, const T* dy, int64_t pixels, int64_t c_count, const Lrn& lrn, T* dx, int threads) {
    const float k = 2.0f * lrn.alpha * lrn.beta;
    const int64_t r = lrn.radius;
    for_pixels(pixels, c_count, lrn.radius, threads, [&](int64_t q, float* scratch, int64_t padded) {
        float *sqpad = scratch, *tpad = scratch + padded, *s = scratch + 2 * padded, *pw = s + c_count,
              *acc = pw + c_count;
        const T *xq = x + q * c_count, *dyq = dy + q * c_count;
        pixel_scales(xq, c_count, lrn, sqpad, s, pw);
        float* t = tpad + r;
        for (int64_t c = 0; c < c_count; ++c) t[c] = load(dyq[c]) * (load(xq[c]) * pw[c]) / s[c];
        for (int64_t c = 0; c < c_count; ++c) acc[c] = 0.0f;
        for (int64_t d = 0; d <= 2 * r; ++d) {
            const float* u = tpad + d;
            for (int64_t c = 0; c < c_count; ++c) acc[c] += u[c];
        }
        T* dxq = dx + q * c_count;
        for (int64_t c = 0; c < c_count; ++c) store(dxq + c, load(dyq[c]) * pw[c] - k * load(xq[c]) * acc[c]);
    });
}

template <class T>
void forward(const T* x, int64_t n_images, int64_t c_count, int64_t plane, const Lrn& lrn, T* y, int threads,
             bool channels_last) {
    if (channels_last) return lrn_forward_nhwc(x, n_images * plane, c_count, lrn, y, threads);
    const int64_t image = c_count * plane;
    for_blocks(n_images, c_count, plane, threads, [&](int64_t i, int64_t p0, int n, float* scratch) {
        float *sq = scratch, *s = sq + c_count * kBlock, *pw = s + c_count * kBlock;
        const T* xi = x + i * image;
        scales(xi, c_count, plane, p0, n, lrn, sq, s, pw);
        for (int64_t c = 0; c < c_count; ++c) {
            const T* xc = xi + c * plane + p0;
            const float* p = pw + c * kBlock;
            T* yc = y + i * image + c * plane + p0;
            for (int b = 0; b < n; ++b) store(yc + b, load(xc[b]) * p[b]);
        }
    });
}

template <class T>
void backward(const T* x, const T* dy, int64_t n_images, int64_t c_count, int64_t plane, const Lrn& lrn, T* dx,
              int threads, bool channels_last) {
    if (channels_last) return lrn_backward_nhwc(x, dy, n_images * plane, c_count, lrn, dx, threads);
    const int64_t image = c_count * plane;
    const float k = 2.0f * lrn.alpha * lrn.beta;
    for_blocks(n_images, c_count, plane, threads, [&](int64_t i, int64_t p0, int n, float* scratch) {
        float *sq = scratch, *s = sq + c_count * kBlock, *pw = s + c_count * kBlock, *t = pw + c_count * kBlock;
        const T* xi = x + i * image;
        const T* dyi = dy + i * image;
        scales(xi, c_count, plane, p0, n, lrn, sq, s, pw);
        // t_c = dy_c * y_c / s_c, with y_c = x_c * s_c^-beta recomputed as the forward computes it.
        for (int64_t c = 0; c < c_count; ++c) {
            const T *xc = xi + c * plane + p0, *dyc = dyi + c * plane + p0;
            const float *p = pw + c * kBlock, *sc = s + c * kBlock;
            float* tc = t + c * kBlock;
            for (int b = 0; b < n; ++b) tc[b] = load(dyc[b]) * (load(xc[b]) * p[b]) / sc[b];
        }
        for (int64_t j = 0; j < c_count; ++j) {
            float acc[kBlock];
            window_sum(t, j, c_count, lrn.radius, n, acc);
            const T *xj = xi + j * plane + p0, *dyj = dyi + j * plane + p0;
            const float* p = pw + j * kBlock;
            T* dxj = dx + i * image + j * plane + p0;
            for (int b = 0; b < n; ++b) store(dxj + b, load(dyj[b]) * p[b] - k * load(xj[b]) * acc[b]);
        }
    });
}

}  // namespace

void lrn_forward(const float* x, int64_t n, int64_t c, int64_t plane, const Lrn& lrn, float* y, int threads,
                 bool channels_last) {
    forward(x, n, c, plane, lrn, y, threads, channels_last);
}

void lrn_backward(const float* x, const float* dy, int64_t n, int64_t c, int64_t plane, const Lrn& lrn, float* dx,
                  int threads, bool channels_last) {
    backward(x, dy, n, c, plane, lrn, dx, threads, channels_last);
}

void lrn_forward_bf16(const Bf16* x, int64_t n, int64_t c, int64_t plane, const Lrn& lrn, Bf16* y, int threads,
                      bool channels_last) {
    forward(x, n, c, plane, lrn, y, threads, channels_last);
}

void lrn_backward_bf16(const Bf16* x, const Bf16* dy, int64_t n, int64_t c, int64_t plane, const Lrn& lrn, Bf16* dx,
                       int threads, bool channels_last) {
    backward(x, dy, n, c, plane, lrn, dx, threads, channels_last);
}

}  // namespace IQALS_ISA
}  // namespace iqals
