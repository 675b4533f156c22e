// Python bindings of the CPU kernels (kernels.h): the module iqals_fast._C.
//
// Only binds, and checks what protects memory: types and dtypes, contiguity, shapes that agree,
// sizes the kernels' buffers and 32-bit counters hold (an SSIM window that fits the image, at most
// kMaxTaps taps, an odd number of them, the thread count, the LRN radius). A wrong one raises
// TypeError or ValueError with its name; the kernels then run on raw pointers with the GIL released.
// The value rules (image sizes, finite parameters, seed and id ranges) are Python's, stated once in
// iqals_fast/ops/checks.py. Arrays are numpy arrays (torch CPU tensors arrive through .numpy(), see
// iqals_fast/ops/cpu.py); constants (taps, C1, C2) come from iqals_fast.config through the Python
// adapter, so none is duplicated here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels.h"

namespace py = pybind11;

namespace {

constexpr int64_t kMaxOffset = int64_t(1) << 32;  // the noise counter is 32 bits

std::string shape_of(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string dtype_of(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

py::array as_ndarray(const py::object& o, const char* name) {
    if (!py::isinstance<py::array>(o)) {
        throw py::type_error(std::string(name) + " must be a numpy array, got " +
                             py::str(py::type::of(o).attr("__name__")).cast<std::string>());
    }
    return py::reinterpret_borrow<py::array>(o);
}

struct Images {
    py::array array;
    int64_t n;
    int h, w;
    const uint8_t* data() const { return static_cast<const uint8_t*>(array.data()); }
};

// uint8, N x H x W x 3, C-contiguous, H * W * 3 within the 32-bit noise counter. (The kernels run on
// any size; scoring needs the SSIM window to fit, checked with the window.)
Images check_images(const py::object& o, const char* name) {
    py::array a = as_ndarray(o, name);
    if (a.dtype().kind() != 'u' || a.dtype().itemsize() != 1) {
        throw py::type_error(std::string(name) + " must have dtype uint8, got " + dtype_of(a));
    }
    if (a.ndim() != 4 || a.shape(3) != 3) {
        throw py::value_error(std::string(name) + " must have shape N x H x W x 3 (RGB, channels last), got " +
                              shape_of(a));
    }
    if (!(a.flags() & py::array::c_style)) {
        throw py::value_error(std::string(name) + " must be C-contiguous (use numpy.ascontiguousarray)");
    }
    if (a.shape(1) * a.shape(2) * 3 > kMaxOffset) {
        throw py::value_error(std::string(name) + " is too large: H * W * 3 must be at most 2**32");
    }
    return {a, a.shape(0), int(a.shape(1)), int(a.shape(2))};
}

// A 1-D float array of odd length (the kernels index taps 0 .. 2r around the centre r).
std::vector<float> check_taps(const py::object& o, const char* name) {
    py::array a = as_ndarray(o, name);
    if (a.dtype().kind() != 'f') throw py::type_error(std::string(name) + " must be a float array, got " + dtype_of(a));
    if (a.ndim() != 1 || a.shape(0) % 2 == 0) {
        throw py::value_error(std::string(name) + " must be 1-D with an odd number of taps, got shape " + shape_of(a));
    }
    auto d = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(a);
    std::vector<float> taps(size_t(a.shape(0)));
    for (size_t k = 0; k < taps.size(); ++k) taps[k] = float(d.at(py::ssize_t(k)));  // as torch rounds them
    return taps;
}

// Python scalars, parsed here so that a wrong type names its argument (and does not print the images).
double as_real(const py::object& o, const char* name) {
    if (py::isinstance<py::bool_>(o) || !(py::isinstance<py::int_>(o) || py::isinstance<py::float_>(o))) {
        throw py::type_error(std::string(name) + " must be a real number, got " +
                             py::str(py::type::of(o).attr("__name__")).cast<std::string>());
    }
    return o.cast<double>();
}

int64_t as_int(const py::object& o, const char* name) {
    if (py::isinstance<py::bool_>(o) || !py::isinstance<py::int_>(o)) {
        throw py::type_error(std::string(name) + " must be an integer, got " +
                             py::str(py::type::of(o).attr("__name__")).cast<std::string>());
    }
    const py::int_ lo(-(int64_t(1) << 62)), hi(int64_t(1) << 62);
    if (o < lo || o >= hi) throw py::value_error(std::string(name) + " is out of range: " + py::str(o).cast<std::string>());
    return o.cast<int64_t>();
}

// The low 32 bits of an integer (seeds and ids are uint32; their range is a value rule, checks.py).
uint32_t as_u32(const py::object& o, const char* name) { return uint32_t(uint64_t(as_int(o, name))); }

// The kernels of instruction set `isa` ("best": the best this CPU runs).
const iqals::Kernels& kernels(const std::string& isa) {
    static const std::vector<const iqals::Kernels*> available = iqals::available_kernels();
    if (isa == "best") return *available.front();
    std::string names;
    for (const iqals::Kernels* k : available) {
        if (isa == k->isa) return *k;
        names += std::string(names.empty() ? "" : ", ") + k->isa;
    }
    throw py::value_error("isa must be 'best' or one this CPU runs (" + names + "), got '" + isa + "'");
}

int check_threads(const py::object& o) {
    const int64_t threads = as_int(o, "threads");
    if (threads < 0 || threads > 4096) throw py::value_error("threads must lie in [0, 4096] (0 = OpenMP's default), got " + std::to_string(threads));
    return int(threads);
}

void check_window_size(const std::vector<float>& taps, const char* name) {
    if (taps.size() > size_t(iqals::SSIMWindow::kMaxTaps)) {
        throw py::value_error(std::string(name) + ": an SSIM window has at most " +
                              std::to_string(iqals::SSIMWindow::kMaxTaps) + " taps, got " + std::to_string(taps.size()));
    }
}

iqals::SSIMWindow ssim_window(const std::vector<float>& taps, const py::object& c1, const py::object& c2) {
    iqals::SSIMWindow win;
    win.taps = {taps.data(), int(taps.size())};
    win.c1 = float(as_real(c1, "c1"));
    win.c2 = float(as_real(c2, "c2"));
    return win;
}

void check_fits_window(const Images& im, const char* name, int win) {
    if (im.h < win || im.w < win) {
        throw py::value_error(std::string("SSIM needs images of at least ") + std::to_string(win) + " x " +
                              std::to_string(win) + " pixels (its window); " + name + " is H x W = " +
                              std::to_string(im.h) + " x " + std::to_string(im.w));
    }
}

py::tuple distort_and_score(const py::object& images, const py::object& blur_taps, const py::object& noise_var,
                        const py::object& seed, const py::object& ids, const py::object& ssim_taps,
                        const py::object& c1, const py::object& c2, const py::object& threads_arg,
                        const std::string& isa) {
    const iqals::Kernels& k = kernels(isa);
    const Images im = check_images(images, "images");
    const int threads = check_threads(threads_arg);

    std::vector<float> blur;
    if (!blur_taps.is_none()) blur = check_taps(blur_taps, "blur_taps");

    iqals::Noise noise;
    std::vector<int64_t> id_values;
    py::array_t<int64_t> id_array;
    if (!noise_var.is_none()) {
        const double var = as_real(noise_var, "noise_var");
        noise.on = var > 0;  // variance 0 adds exactly nothing
        noise.std = float(std::sqrt(var));
    }
    noise.seed = as_u32(seed, "seed");
    if (ids.is_none()) {
        id_values.resize(size_t(im.n));
        for (int64_t i = 0; i < im.n; ++i) id_values[size_t(i)] = i;
    } else {
        py::array a = as_ndarray(ids, "ids");
        if (a.dtype().kind() != 'i' && a.dtype().kind() != 'u') {
            throw py::type_error("ids must be an integer array, got " + dtype_of(a));
        }
        if (a.ndim() != 1 || a.shape(0) != im.n) {
            throw py::value_error("ids must be 1-D with one id per image (" + std::to_string(im.n) + "), got shape " + shape_of(a));
        }
        id_array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
        id_values.assign(id_array.data(), id_array.data() + im.n);
    }
    noise.ids = id_values.data();

    std::vector<float> win_taps;
    iqals::SSIMWindow window;
    const bool score = !ssim_taps.is_none();
    if (score) {
        win_taps = check_taps(ssim_taps, "ssim_taps");
        check_window_size(win_taps, "ssim_taps");
        window = ssim_window(win_taps, c1, c2);
        check_fits_window(im, "images", window.taps.n);
    }

    py::array_t<uint8_t> out({im.n, py::ssize_t(im.h), py::ssize_t(im.w), py::ssize_t(3)});
    py::object scores = py::none();
    float* score_ptr = nullptr;
    if (score) {
        py::array_t<float> s(im.n);
        score_ptr = s.mutable_data();
        scores = s;
    }
    {
        const iqals::Taps blur_t{blur.data(), int(blur.size())};
        uint8_t* out_ptr = out.mutable_data();
        py::gil_scoped_release release;
        k.distort_and_score(im.data(), im.n, im.h, im.w, blur_t, noise, window, out_ptr, score_ptr, threads);
    }
    return py::make_tuple(out, scores);
}

py::array_t<float> ssim(const py::object& reference, const py::object& distorted, const py::object& taps,
                        const py::object& c1, const py::object& c2, const py::object& threads_arg,
                        const std::string& isa) {
    const iqals::Kernels& k = kernels(isa);
    const Images x = check_images(reference, "reference");
    const Images y = check_images(distorted, "distorted");
    if (x.n != y.n || x.h != y.h || x.w != y.w) {
        throw py::value_error("reference and distorted must have the same shape, got " + shape_of(x.array) + " and " +
                              shape_of(y.array));
    }
    const int threads = check_threads(threads_arg);
    const std::vector<float> t = check_taps(taps, "taps");
    check_window_size(t, "taps");
    const iqals::SSIMWindow window = ssim_window(t, c1, c2);
    check_fits_window(x, "reference", window.taps.n);
    py::array_t<float> scores(x.n);
    float* s = scores.mutable_data();
    {
        py::gil_scoped_release release;
        k.ssim(x.data(), y.data(), x.n, x.h, x.w, window, s, threads);
    }
    return scores;
}

// float32 (with bf16, uint16: bfloat16 bits, numpy having no bfloat16; a bfloat16 tensor's
// .view(torch.uint16).numpy()), 4-D, C-contiguous: N x C x H x W, or N x H x W x C for channels_last
// (a channels_last tensor's .permute(0, 2, 3, 1).numpy() view).
py::array check_nchw(const py::object& o, const char* name, bool bf16) {
    py::array a = as_ndarray(o, name);
    if (bf16 && (a.dtype().kind() != 'u' || a.dtype().itemsize() != 2)) {
        throw py::type_error(std::string(name) + " must have dtype uint16 (the bits of bfloat16 values) with bf16=True, "
                             "got " + dtype_of(a));
    }
    if (!bf16 && (a.dtype().kind() != 'f' || a.dtype().itemsize() != 4)) {
        throw py::type_error(std::string(name) + " must have dtype float32, got " + dtype_of(a));
    }
    if (a.ndim() != 4) throw py::value_error(std::string(name) + " must be 4-D (N x C x H x W, or N x H x W x C), got " + shape_of(a));
    if (!(a.flags() & py::array::c_style)) {
        throw py::value_error(std::string(name) + " must be C-contiguous (NCHW; call .contiguous() first)");
    }
    return a;
}

// The radius sizes the kernels' scratch (C + 2 radius floats per pixel): bounded here. bias, alpha and
// beta are values (checks.lrn_params).
iqals::Lrn lrn_params(const py::object& radius, const py::object& bias, const py::object& alpha, const py::object& beta) {
    iqals::Lrn p;
    p.radius = as_int(radius, "radius");
    if (p.radius < 0 || p.radius > 4096) throw py::value_error("radius must lie in [0, 4096], got " + std::to_string(p.radius));
    p.bias = float(as_real(bias, "bias"));
    p.alpha = float(as_real(alpha, "alpha"));
    p.beta = float(as_real(beta, "beta"));
    return p;
}

// (n, c, plane) of an NCHW array, or of an NHWC one (channels_last: N x H x W x C).
struct LrnShape {
    int64_t n, c, plane;
};

LrnShape lrn_shape(const py::array& a, bool channels_last) {
    if (channels_last) return {a.shape(0), a.shape(3), a.shape(1) * a.shape(2)};
    return {a.shape(0), a.shape(1), a.shape(2) * a.shape(3)};
}

// An uninitialised C-contiguous array of x's shape and dtype (the kernels write every element).
py::array empty_like(const py::array& x) {
    return py::array(x.dtype(), std::vector<py::ssize_t>{x.shape(0), x.shape(1), x.shape(2), x.shape(3)});
}

py::array lrn_forward(const py::object& x_arg, const py::object& radius, const py::object& bias,
                      const py::object& alpha, const py::object& beta, bool channels_last, bool bf16,
                      const py::object& threads_arg, const std::string& isa) {
    const iqals::Kernels& k = kernels(isa);
    const py::array x = check_nchw(x_arg, "x", bf16);
    const iqals::Lrn p = lrn_params(radius, bias, alpha, beta);
    const int threads = check_threads(threads_arg);
    const LrnShape sh = lrn_shape(x, channels_last);
    py::array y = empty_like(x);
    const void* xp = x.data();
    void* yp = y.mutable_data();
    {
        py::gil_scoped_release release;
        if (bf16) {
            k.lrn_forward_bf16(static_cast<const iqals::Bf16*>(xp), sh.n, sh.c, sh.plane, p,
                               static_cast<iqals::Bf16*>(yp), threads, channels_last);
        } else {
            k.lrn_forward(static_cast<const float*>(xp), sh.n, sh.c, sh.plane, p, static_cast<float*>(yp), threads,
                          channels_last);
        }
    }
    return y;
}

py::array lrn_backward(const py::object& x_arg, const py::object& dy_arg, const py::object& radius,
                       const py::object& bias, const py::object& alpha, const py::object& beta, bool channels_last,
                       bool bf16, const py::object& threads_arg, const std::string& isa) {
    const iqals::Kernels& k = kernels(isa);
    const py::array x = check_nchw(x_arg, "x", bf16);
    const py::array dy = check_nchw(dy_arg, "dy", bf16);
    for (py::ssize_t d = 0; d < 4; ++d) {
        if (x.shape(d) != dy.shape(d)) {
            throw py::value_error("x and dy must have the same shape, got " + shape_of(x) + " and " + shape_of(dy));
        }
    }
    const iqals::Lrn p = lrn_params(radius, bias, alpha, beta);
    const int threads = check_threads(threads_arg);
    const LrnShape sh = lrn_shape(x, channels_last);
    py::array dx = empty_like(x);
    const void *xp = x.data(), *dyp = dy.data();
    void* dxp = dx.mutable_data();
    {
        py::gil_scoped_release release;
        if (bf16) {
            k.lrn_backward_bf16(static_cast<const iqals::Bf16*>(xp), static_cast<const iqals::Bf16*>(dyp), sh.n, sh.c,
                                sh.plane, p, static_cast<iqals::Bf16*>(dxp), threads, channels_last);
        } else {
            k.lrn_backward(static_cast<const float*>(xp), static_cast<const float*>(dyp), sh.n, sh.c, sh.plane, p,
                           static_cast<float*>(dxp), threads, channels_last);
        }
    }
    return dx;
}

py::tuple philox(const py::object& counters, const py::object& id, const py::object& seed, const std::string& isa) {
    py::array a = as_ndarray(counters, "counters");
    if (a.dtype().kind() != 'u' || a.dtype().itemsize() != 4 || a.ndim() != 1) {
        throw py::type_error("counters must be a 1-D uint32 array, got " + dtype_of(a) + " " + shape_of(a));
    }
    auto c = py::array_t<uint32_t, py::array::c_style | py::array::forcecast>::ensure(a);
    py::array_t<uint32_t> w0(a.shape(0)), w1(a.shape(0));
    kernels(isa).philox(c.data(), a.shape(0), as_u32(id, "id"), as_u32(seed, "seed"), w0.mutable_data(),
                        w1.mutable_data());
    return py::make_tuple(w0, w1);
}

py::array_t<float> normals(const py::object& seed, const py::object& id, const py::object& first_arg,
                           const py::object& count_arg, const std::string& isa) {
    const int64_t first = as_int(first_arg, "first"), count = as_int(count_arg, "count");
    if (count < 0 || first < 0 || first + count > kMaxOffset) {
        throw py::value_error("need 0 <= first and first + count <= 2**32, got first=" + std::to_string(first) +
                              ", count=" + std::to_string(count));
    }
    py::array_t<float> z(count);
    kernels(isa).normals(uint32_t(first), count, as_u32(id, "id"), as_u32(seed, "seed"), z.mutable_data());
    return z;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "iqals-fast CPU kernels (C++ / OpenMP). Use them through iqals_fast (backend='cpu').";
    m.def("distort_and_score", &distort_and_score, py::arg("images"), py::kw_only(), py::arg("blur_taps") = py::none(),
          py::arg("noise_var") = py::none(), py::arg("seed") = 0, py::arg("ids") = py::none(),
          py::arg("ssim_taps") = py::none(), py::arg("c1") = py::none(), py::arg("c2") = py::none(),
          py::arg("threads") = 0, py::arg("isa") = "best",
          "Blur (blur_taps, edge pixels replicated), add noise (noise_var, keyed by (ids[i], seed)), round to\n"
          "uint8; with ssim_taps also score SSIM(images, distorted) with constants c1, c2.\n"
          "images: C-contiguous uint8 N x H x W x 3 (H, W >= len(ssim_taps) to score). Returns (uint8 images,\n"
          "float32 (N,) or None). Value rules (sizes, finite parameters, seed and id ranges): iqals_fast.ops.checks.");
    m.def("ssim", &ssim, py::arg("reference"), py::arg("distorted"), py::kw_only(), py::arg("taps"), py::arg("c1"),
          py::arg("c2"), py::arg("threads") = 0, py::arg("isa") = "best",
          "Per-image SSIM (float32 (N,)) of C-contiguous uint8 N x H x W x 3 images, H, W >= len(taps).");
    m.def("lrn_forward", &lrn_forward, py::arg("x"), py::kw_only(), py::arg("radius"), py::arg("bias"),
          py::arg("alpha"), py::arg("beta"), py::arg("channels_last") = false, py::arg("bf16") = false,
          py::arg("threads") = 0, py::arg("isa") = "best",
          "TensorFlow's LRN across channels of C-contiguous float32 N x C x H x W (N x H x W x C with\n"
          "channels_last): y = x / (bias + alpha * sum_{|j-c|<=radius} x_j^2) ** beta. With bf16, x and y\n"
          "are uint16 arrays of bfloat16 bits, computed in float32 and rounded to nearest even.");
    m.def("lrn_backward", &lrn_backward, py::arg("x"), py::arg("dy"), py::kw_only(), py::arg("radius"),
          py::arg("bias"), py::arg("alpha"), py::arg("beta"), py::arg("channels_last") = false,
          py::arg("bf16") = false, py::arg("threads") = 0, py::arg("isa") = "best",
          "The gradient of lrn_forward with respect to x, for upstream gradient dy (same shape and dtype as x).");
    m.def("philox", &philox, py::arg("counters"), py::arg("id"), py::arg("seed"), py::arg("isa") = "best",
          "Test hook: words 0 and 1 of Philox4x32-10 of counters (c, 0, 0, 0), key (id, seed).");
    m.def("normals", &normals, py::arg("seed"), py::arg("id"), py::arg("first"), py::arg("count"),
          py::arg("isa") = "best",
          "Test hook: the noise scheme's standard normals of offsets first .. first + count - 1.");
    m.def("max_threads", [](const py::object& requested) { return iqals::thread_count(check_threads(requested)); }, py::arg("requested") = 0,
          "Threads a kernel call uses for threads=requested (0 = OpenMP's default).");
    m.def("isas", [] {
            py::list names;
            for (const iqals::Kernels* k : iqals::available_kernels()) names.append(k->isa);
            return names;
        },
        "Instruction sets of the kernels built into this module that this CPU runs, best first (the\n"
        "first is used by default; every one computes the same bits).");
}
