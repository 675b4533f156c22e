// CPU kernels of the ops distort_and_score (blur + noise + round + SSIM fused per image) and ssim
// (SSIM alone), and the noise scheme's test hooks philox and normals (see kernels.h).
//
// Layout. An image row of W pixels is one run of 3W interleaved floats (R, G, B, R, ...), so a
// horizontal tap k of a channel is simply the value 3k further along the run, and all three
// channels are filtered by the same loop. Loops run over blocks of simd::L lanes; scratch rows are
// padded so a block may run past the end of a row (its extra lanes are computed and ignored), and
// image bytes are read and written with exact lengths.
//
// Arithmetic is float32 in the torch backend's order (blur horizontal, then vertical; noise added
// after the blur; one rounding), compiled without FMA contraction: every instruction set computes
// the same bits. A distorted image differs from the torch reference's only by the order of a filter's
// sums and by float rounding of log and cos; SSIM is float32 here (the reference's is float64), each
// image shifted by its own per-channel midpoint, its moments filtered vertically first.
#include "kernels.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "philox.h"
#include "simd.h"

namespace iqals {
namespace IQALS_ISA {
namespace {

using simd::B;
using simd::F;
using simd::L;
using simd::load;
using simd::splat;
using simd::store;

constexpr int kMoments = 5;  // SSIM's E[x], E[y], E[x^2], E[y^2], E[xy]
// The SSIM map is summed in this many partial sums, whatever L is (a multiple of L), so that every
// instruction set adds the same numbers in the same order.
constexpr int kSumLanes = 16;
static_assert(kSumLanes % L == 0, "partial sums must tile whole blocks");

inline int64_t round_up(int64_t v) { return (v + L - 1) / L * L; }

// x / 255 in float32 for uint8 x, as torch computes images.to(float32) / 255.0.
inline F unit(B x) { return simd::bytes_to_float(x) / 255.0f; }

// torch.round(clamp(v, 0, 1) * 255).to(uint8): round half to even by adding and subtracting
// 1.5 * 2^23 (exact for 0 <= t <= 2^22 in the default rounding mode).
inline B to_uint8(F v) {
    const F t = simd::min(simd::max(v, splat(0.0f)), splat(1.0f)) * 255.0f;
    const F r = (t + 12582912.0f) - 12582912.0f;
    return simd::float_to_bytes(r);
}

// The filters use the taps' symmetry (w[k] = w[2r - k], checked by the bindings): a tap pair
// costs one multiply, sum_k w[k] p[k] = w[r] p[r] + sum_{k<r} w[k] (p[k] + p[2r - k]).

// out[j] = sum_k w[k] * in[j + 3k] for j < n (rounded up to whole blocks): the horizontal filter of
// one interleaved row, "valid" positions only.
inline void filter_row(const float* in, const Taps& t, float* out, int64_t n) {
    const int r = t.n / 2;
    for (int64_t j0 = 0; j0 < n; j0 += L) {
        const float* p = in + j0;
        F acc = t.w[r] * load(p + 3 * r);
        for (int k = 0; k < r; ++k) acc += t.w[k] * (load(p + 3 * k) + load(p + 3 * (2 * r - k)));
        store(out + j0, acc);
    }
}

// Sizes (in 4-byte words, each a multiple of L) of one thread's scratch for an H x W image.
struct DistortLayout {
    int64_t row;   // round_up(3W): one row
    int64_t pad;   // a row with its edge pixels replicated r times on each side, plus a block
    int64_t blur;  // H rows after the horizontal pass
    int64_t total() const { return pad + blur + 2 * row; }  // + a row of each Philox word
};

DistortLayout distort_layout(int h, int w, const Taps& blur) {
    DistortLayout d;
    d.row = round_up(3 * int64_t(w));
    d.pad = blur.n ? round_up(d.row + 3 * int64_t(blur.n - 1)) : 0;
    d.blur = blur.n ? h * d.row : 0;
    return d;
}

struct SSIMLayout {
    int64_t valid;  // 3 (W - win + 1): values per row of the SSIM map
    int64_t row;    // round_up(3W) + L: one moment row, plus a block read past its end
    // the ring of win moment slots, the vertical sums, and a row of each image's per-channel shifts
    int64_t total(int win) const { return (int64_t(win) + 1) * kMoments * row + 2 * row; }
};

SSIMLayout ssim_layout(int w, const SSIMWindow& window) {
    SSIMLayout s;
    s.valid = 3 * int64_t(w - window.taps.n + 1);
    s.row = round_up(3 * int64_t(w)) + L;
    return s;
}

// Per channel, the midpoint of an image's range: (min + max) / 2 / 255, as a row of 3W (+ padding)
// floats repeating the channels' values (row[j] is channel j % 3's), the lanes' layout of a moment row.
void channel_midpoints(const uint8_t* img, int h, int w, float* row, int64_t len) {
    int lo[3] = {255, 255, 255}, hi[3] = {0, 0, 0};
    const int64_t n = int64_t(h) * w;
    for (int64_t i = 0; i < n; ++i) {
        for (int c = 0; c < 3; ++c) {
            lo[c] = std::min<int>(lo[c], img[3 * i + c]);
            hi[c] = std::max<int>(hi[c], img[3 * i + c]);
        }
    }
    float mid[3];
    for (int c = 0; c < 3; ++c) mid[c] = (float(lo[c] + hi[c]) * 0.5f) / 255.0f;  // a flat channel's own value
    for (int64_t j = 0; j < len; ++j) row[j] = mid[j % 3];
}

// SSIM of one image pair: the mean of the SSIM map over the valid window positions and channels.
//
// Stage 0: each image's per-channel shift, the midpoint of its range (channel_midpoints).
// Stage 1, per input row: the five moment rows x', y', x'^2, y'^2, x'y' of x' = x/255 - shift_x(c),
//   y' = y/255 - shift_y(c), into a ring buffer of the last `win` rows. (Co)variances do not change
//   under the shifts; float32's E[x'^2] - E[x']^2 leaves a residue of a few ulps of E[x'^2] that C2
//   amplifies where a window is flat, and the midpoint makes |x'| <= (max - min) / 2 <= 0.5: a flat
//   image (and every flat channel) has x' = 0 exactly, no residue at all.
// Stage 2, once the ring holds `win` rows: their vertical filter, one row of each moment.
// Stage 3, per block of that row's valid positions: the horizontal filter gives the local moments
//   mu_x, mu_y, E[x'^2], E[y'^2], E[x'y']; the SSIM formula; masked partial sums.
// (The torch backend filters horizontally first; the order only changes rounding, and filtering
// vertically first filters H - win + 1 rows horizontally instead of H.)
double ssim_image(const uint8_t* a, const uint8_t* b, int h, int w, const SSIMWindow& window, void* scratch) {
    const Taps& t = window.taps;
    const int win = t.n, r = win / 2;
    const SSIMLayout s = ssim_layout(w, window);
    const int64_t row = 3 * int64_t(w);
    const int64_t slot = kMoments * s.row;
    float* ring = static_cast<float*>(scratch);  // win slots of kMoments rows
    float* vert = ring + win * slot;             // kMoments rows
    float* shift_x = vert + slot;                // each image's per-channel shift, as a row
    float* shift_y = shift_x + s.row;
    channel_midpoints(a, h, w, shift_x, s.row);
    channel_midpoints(b, h, w, shift_y, s.row);
    const float c1 = window.c1, c2 = window.c2;
    simd::I lane{};
    for (int l = 0; l < L; ++l) lane[l] = l;
    double total = 0.0;
    for (int y = 0; y < h; ++y) {
        // Stage 1: moment rows (whole blocks: lanes past the row only reach ignored outputs).
        float* m = ring + int64_t(y % win) * slot;
        for (int64_t j0 = 0; j0 < row; j0 += L) {
            const F xs = unit(simd::load_bytes(a + y * row + j0, row - j0)) - load(shift_x + j0);
            const F ys = unit(simd::load_bytes(b + y * row + j0, row - j0)) - load(shift_y + j0);
            store(m + j0, xs);
            store(m + s.row + j0, ys);
            store(m + 2 * s.row + j0, xs * xs);
            store(m + 3 * s.row + j0, ys * ys);
            store(m + 4 * s.row + j0, xs * ys);
        }
        if (y < win - 1) continue;

        // Stage 2: vertical filter of the ring (rows y - win + 1 .. y, slot (y + 1 + k) % win).
        const float* rows[SSIMWindow::kMaxTaps];
        for (int k = 0; k < win; ++k) rows[k] = ring + int64_t((y + 1 + k) % win) * slot;
        for (int64_t j0 = 0; j0 < row; j0 += L) {  // the tail block of `vert` stays zero
            F acc[kMoments];  // five independent sums per step keep the adders busy
            for (int i = 0; i < kMoments; ++i) acc[i] = t.w[r] * load(rows[r] + i * s.row + j0);
            for (int k = 0; k < r; ++k) {
                const float* up = rows[k] + j0;
                const float* down = rows[win - 1 - k] + j0;
                for (int i = 0; i < kMoments; ++i) acc[i] += t.w[k] * (load(up + i * s.row) + load(down + i * s.row));
            }
            for (int i = 0; i < kMoments; ++i) store(vert + i * s.row + j0, acc[i]);
        }

        // Stage 3: horizontal filter, formula, partial sums.
        float part[kSumLanes] = {};  // part[j % kSumLanes] sums the row's values j
        for (int64_t j0 = 0; j0 < s.valid; j0 += L) {
            const float* p = vert + j0;
            F mom[kMoments];
            for (int i = 0; i < kMoments; ++i) mom[i] = t.w[r] * load(p + i * s.row + 3 * r);
            for (int k = 0; k < r; ++k) {
                for (int i = 0; i < kMoments; ++i) {
                    mom[i] += t.w[k] * (load(p + i * s.row + 3 * k) + load(p + i * s.row + 3 * (win - 1 - k)));
                }
            }
            const F mx = mom[0], my = mom[1];
            const F vx = mom[2] - mx * mx;
            const F vy = mom[3] - my * my;
            const F vxy = mom[4] - mx * my;
            const F ux = mx + load(shift_x + j0), uy = my + load(shift_y + j0);  // valid j: channel j % 3
            const F num = (2.0f * ux * uy + c1) * (2.0f * vxy + c2);
            const F den = (ux * ux + uy * uy + c1) * (vx + vy + c2);
            float* sums = part + j0 % kSumLanes;
            store(sums, load(sums) + simd::select(lane < int(s.valid - j0), num / den, splat(0.0f)));
        }
        for (float v : part) total += double(v);
    }
    return total / (double(h - win + 1) * double(s.valid));
}

// One image: blur, noise, round to out.
//
// Stage 1: horizontal blur of each row (edge pixels replicated r times, scipy's mode "nearest")
//   into H filtered rows.
// Stage 2, per row: the vertical blur (edge rows replicated) or the plain row; plus std * z with z
//   the row's normals (offsets y*3W .. y*3W + 3W - 1); clip, scale, round half to even, store.
void distort_image(const uint8_t* img, int h, int w, const Taps& blur, const Noise& noise, uint32_t id,
                   uint8_t* out, void* scratch) {
    const DistortLayout d = distort_layout(h, w, blur);
    const int64_t row = 3 * int64_t(w);
    float* pad = static_cast<float*>(scratch);
    float* rows = pad + d.pad;
    uint32_t* w0 = reinterpret_cast<uint32_t*>(rows + d.blur);  // the row's Philox words
    uint32_t* w1 = w0 + d.row;
    const int r = (blur.n - 1) / 2;

    // Stage 1: horizontal pass.
    for (int y = 0; y < h && blur.n; ++y) {
        float* body = pad + 3 * r;
        for (int64_t j0 = 0; j0 < row; j0 += L) store(body + j0, unit(simd::load_bytes(img + y * row + j0, row - j0)));
        for (int i = 0; i < r; ++i) {
            for (int c = 0; c < 3; ++c) {
                pad[3 * i + c] = body[c];
                body[row + 3 * i + c] = body[row - 3 + c];
            }
        }
        filter_row(pad, blur, rows + y * d.row, row);
    }

    // Stage 2: vertical pass, noise, rounding. The row's Philox words come first, in a loop of
    // their own: its independent iterations overlap (a block's 10 rounds are one long chain).
    const PhiloxKey key = philox_key(id, noise.seed);
    for (int y = 0; y < h; ++y) {
        for (int64_t j0 = 0; noise.on && j0 < row; j0 += L) {
            simd::U a, b;
            philox_block(uint32_t(y) * uint32_t(row) + uint32_t(j0), key, a, b);
            simd::store(w0 + j0, a);
            simd::store(w1 + j0, b);
        }
        for (int64_t j0 = 0; j0 < row; j0 += L) {
            F v;
            if (blur.n) {
                v = blur.w[r] * load(rows + y * d.row + j0);
                for (int k = 0; k < r; ++k) {
                    const int above = std::max(y + k - r, 0), below = std::min(y + r - k, h - 1);  // edges replicated
                    v += blur.w[k] * (load(rows + above * d.row + j0) + load(rows + below * d.row + j0));
                }
            } else {
                v = unit(simd::load_bytes(img + y * row + j0, row - j0));
            }
            if (noise.on) v = v + noise.std * box_muller(simd::load(w0 + j0), simd::load(w1 + j0));
            simd::store_bytes(out + y * row + j0, to_uint8(v), row - j0);
        }
    }
}

void normals_range(uint32_t first, int64_t count, const PhiloxKey& key, float* z) {
    for (int64_t i0 = 0; i0 < count; i0 += L) {
        float block[L];
        store(block, normals_block(first + uint32_t(i0), key));
        std::copy(block, block + std::min<int64_t>(L, count - i0), z + i0);
    }
}

// One scratch area of `words` 4-byte words per thread, 64-byte aligned and zero-filled (block tails
// must hold finite values).
class Scratch {
  public:
    Scratch(int threads, int64_t words) : per_(round_up(words)), buf_(size_t(threads) * per_ * 4 + 64, 0) {}
    float* get(int thread) {
        auto base = reinterpret_cast<std::uintptr_t>(buf_.data());
        auto aligned = reinterpret_cast<float*>((base + 63) & ~std::uintptr_t(63));
        return aligned + size_t(thread) * per_;
    }

  private:
    int64_t per_;
    std::vector<unsigned char> buf_;
};

inline int this_thread() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

}  // namespace

void distort_and_score(const uint8_t* images, int64_t n, int h, int w, const Taps& blur, const Noise& noise,
                       const SSIMWindow& window, uint8_t* out, float* scores, int threads) {
    if (n <= 0) return;
    const int nt = int(std::min<int64_t>(iqals::thread_count(threads), n));
    const int64_t image = int64_t(h) * w * 3;
    const int64_t per_distort = round_up(distort_layout(h, w, blur).total());
    const int64_t per = per_distort + (scores ? ssim_layout(w, window).total(window.taps.n) : 0);
    Scratch scratch(nt, per);  // allocated here: nothing inside the parallel region may throw
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4)
    for (int64_t i = 0; i < n; ++i) {
        float* s = scratch.get(this_thread());
        const uint8_t* x = images + i * image;
        uint8_t* y = out + i * image;
        distort_image(x, h, w, blur, noise, noise.on ? uint32_t(noise.ids[i]) : 0u, y, s);
        if (scores) scores[i] = float(ssim_image(x, y, h, w, window, s + per_distort));
    }
}

void ssim(const uint8_t* x, const uint8_t* y, int64_t n, int h, int w, const SSIMWindow& window, float* scores,
          int threads) {
    if (n <= 0) return;
    const int nt = int(std::min<int64_t>(iqals::thread_count(threads), n));
    const int64_t image = int64_t(h) * w * 3;
    Scratch scratch(nt, ssim_layout(w, window).total(window.taps.n));
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4)
    for (int64_t i = 0; i < n; ++i) {
        scores[i] = float(ssim_image(x + i * image, y + i * image, h, w, window, scratch.get(this_thread())));
    }
}

void philox(const uint32_t* counters, int64_t count, uint32_t id, uint32_t seed, uint32_t* w0, uint32_t* w1) {
    const PhiloxKey key = philox_key(id, seed);
    for (int64_t i0 = 0; i0 < count; i0 += L) {
        simd::U ctr{}, a, b;
        for (int64_t l = 0; l < L && i0 + l < count; ++l) ctr[l] = counters[i0 + l];
        philox_block(ctr, key, a, b);
        for (int64_t l = 0; l < L && i0 + l < count; ++l) {
            w0[i0 + l] = a[l];
            w1[i0 + l] = b[l];
        }
    }
}

void normals(uint32_t first, int64_t count, uint32_t id, uint32_t seed, float* z) {
    normals_range(first, count, philox_key(id, seed), z);
}

}  // namespace IQALS_ISA
}  // namespace iqals
