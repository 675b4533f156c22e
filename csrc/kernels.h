// The CPU kernels of iqals-fast on raw pointers, as one table per instruction set:
//   distort_and_score, ssim   csrc/distort_and_score.cpp  (ops distort_and_score, ssim)
//   lrn_forward, lrn_backward csrc/lrn.cpp                (op lrn; also _bf16, bfloat16 in and out)
//   philox, normals           csrc/distort_and_score.cpp  (test hooks on the noise scheme, philox.h)
// Images are uint8 N x H x W x 3, C-contiguous. The value rules (sizes, parameters, seeds, ids) are
// checked in Python (iqals_fast/ops/checks.py), what protects memory in bindings.cpp, before these
// run. The maths is the torch reference's (iqals_fast/ops/reference.py), the noise the scheme of
// iqals_fast/ops/noise.py.
//
// Work is split over images with OpenMP; each image is computed by one thread from its own data
// and id, so results are identical for any thread count and any batch split. Memory beyond the
// outputs is one scratch area per thread, sized for one image.
#pragma once

#include <cstdint>
#include <vector>

namespace iqals {

// A normalised odd-length symmetric 1-D Gaussian, float32 taps (the float64 taps of
// config.gaussian_taps, rounded as torch rounds them).
struct Taps {
    const float* w = nullptr;
    int n = 0;  // 2 * radius + 1; 0 = no filter
};

// SSIM of Wang et al. as config.SSIMConfig defines it: the window's taps, C1 and C2.
struct SSIMWindow {
    static constexpr int kMaxTaps = 63;  // bound of a stack array of row pointers; the paper's is 11

    Taps taps;
    float c1 = 0.f;
    float c2 = 0.f;
};

// White Gaussian noise of standard deviation `std` on the [0, 1] scale, keyed by (ids[i], seed).
struct Noise {
    bool on = false;
    float std = 0.f;
    uint32_t seed = 0;
    const int64_t* ids = nullptr;  // one per image, each in [0, 2^32)
};

// TensorFlow's local response normalisation across channels (tf.nn.lrn): window radius `radius`
// channels either side, s = bias + alpha * (sum of squares over the window), y = x * s^-beta.
struct Lrn {
    int64_t radius = 0;
    float bias = 1.f;
    float alpha = 0.f;
    float beta = 0.f;
};

// A bfloat16 value as its bits: the upper 16 bits of the float32 it stands for (torch.bfloat16's layout).
using Bf16 = uint16_t;

// The kernels of one instruction set. The kernel files are compiled once per instruction set
// (CMakeLists.txt), each copy in its own namespace iqals::<isa>, where kernels.cpp gathers them into
// one Kernels table; isa.cpp picks the best one this CPU runs. All tables compute the same bits.
struct Kernels {
    const char* isa;

    // out[i] = round(clip(blur(x_i) + std * z_i, 0, 1) * 255), x_i = images[i] / 255, half to even;
    // blur (if blur.n > 0) replicates edge pixels; scores[i] = SSIM(images[i], out[i]) if scores.
    void (*distort_and_score)(const uint8_t* images, int64_t n, int h, int w, const Taps& blur, const Noise& noise,
                          const SSIMWindow& window, uint8_t* out, float* scores, int threads);

    // scores[i] = SSIM(x[i], y[i]): the mean over channels and the valid (H-win+1) x (W-win+1) map.
    void (*ssim)(const uint8_t* x, const uint8_t* y, int64_t n, int h, int w, const SSIMWindow& window,
                 float* scores, int threads);

    // LRN of float32 N x C x P (P = H * W; NCHW contiguous, or NHWC with channels_last) and its
    // gradient dx for upstream dy (csrc/lrn.cpp). The backward recomputes the window sums from x.
    void (*lrn_forward)(const float* x, int64_t n, int64_t c, int64_t plane, const Lrn& lrn, float* y, int threads,
                        bool channels_last);
    void (*lrn_backward)(const float* x, const float* dy, int64_t n, int64_t c, int64_t plane, const Lrn& lrn,
                         float* dx, int threads, bool channels_last);
    // The same on bfloat16 x, dy, y, dx (what bf16 autocast hands the LRN): read as float32, computed in
    // float32 as above, written rounded to nearest even, so = the bfloat16 rounding of the float32 result.
    void (*lrn_forward_bf16)(const Bf16* x, int64_t n, int64_t c, int64_t plane, const Lrn& lrn, Bf16* y,
                             int threads, bool channels_last);
    void (*lrn_backward_bf16)(const Bf16* x, const Bf16* dy, int64_t n, int64_t c, int64_t plane, const Lrn& lrn,
                              Bf16* dx, int threads, bool channels_last);

    // Test hooks on the noise scheme: Philox words of arbitrary counters, and the normals of
    // `count` consecutive offsets starting at `first`, for one (id, seed).
    void (*philox)(const uint32_t* counters, int64_t count, uint32_t id, uint32_t seed, uint32_t* w0,
                   uint32_t* w1);
    void (*normals)(uint32_t first, int64_t count, uint32_t id, uint32_t seed, float* z);
};

#ifdef IQALS_ISA
// The table's entries for the instruction set this translation unit is compiled for (CMakeLists.txt
// sets IQALS_ISA), defined in distort_and_score.cpp and lrn.cpp; the comments above say what each does.
namespace IQALS_ISA {
void distort_and_score(const uint8_t* images, int64_t n, int h, int w, const Taps& blur, const Noise& noise,
                       const SSIMWindow& window, uint8_t* out, float* scores, int threads);
void ssim(const uint8_t* x, const uint8_t* y, int64_t n, int h, int w, const SSIMWindow& window, float* scores,
          int threads);
void lrn_forward(const float* x, int64_t n, int64_t c, int64_t plane, const Lrn& lrn, float* y, int threads,
                 bool channels_last);
void lrn_backward(const float* x, const float* dy, int64_t n, int64_t c, int64_t plane, const Lrn& lrn, float* dx,
                  int threads, bool channels_last);
void lrn_forward_bf16(const Bf16* x, int64_t n, int64_t c, int64_t plane, const Lrn& lrn, Bf16* y, int threads,
                      bool channels_last);
void lrn_backward_bf16(const Bf16* x, const Bf16* dy, int64_t n, int64_t c, int64_t plane, const Lrn& lrn, Bf16* dx,
                       int threads, bool channels_last);
void philox(const uint32_t* counters, int64_t count, uint32_t id, uint32_t seed, uint32_t* w0, uint32_t* w1);
void normals(uint32_t first, int64_t count, uint32_t id, uint32_t seed, float* z);
extern const Kernels kernels;
}  // namespace IQALS_ISA
#endif

// The instruction sets built into this module that this CPU runs, best first.
std::vector<const Kernels*> available_kernels();

// Threads a kernel call uses for `requested` (0 = OpenMP's default).
int thread_count(int requested);

}  // namespace iqals
