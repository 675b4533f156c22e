// Which instruction-set version of the kernels runs. CMakeLists.txt compiles the kernels once
// per instruction set (IQALS_HAVE_<ISA> says which were built); this file, compiled for the
// baseline, lists those this CPU can run, best first. The OS's support of AVX state is part of
// __builtin_cpu_supports's answer.
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels.h"

namespace iqals {

#define IQALS_DECLARE_KERNELS(isa) \
    namespace isa {                \
    extern const Kernels kernels;  \
    }
#ifdef IQALS_HAVE_native
IQALS_DECLARE_KERNELS(native)
#endif
#ifdef IQALS_HAVE_avx512
IQALS_DECLARE_KERNELS(avx512)
#endif
#ifdef IQALS_HAVE_avx2
IQALS_DECLARE_KERNELS(avx2)
#endif
#ifdef IQALS_HAVE_sse2
IQALS_DECLARE_KERNELS(sse2)
#endif
#ifdef IQALS_HAVE_generic
IQALS_DECLARE_KERNELS(generic)
#endif

std::vector<const Kernels*> available_kernels() {
    std::vector<const Kernels*> k;
#ifdef IQALS_HAVE_native
    k.push_back(&native::kernels);
#endif
#ifdef IQALS_HAVE_avx512
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
        k.push_back(&avx512::kernels);
    }
#endif
#ifdef IQALS_HAVE_avx2
    if (__builtin_cpu_supports("avx2")) k.push_back(&avx2::kernels);
#endif
#ifdef IQALS_HAVE_sse2
    k.push_back(&sse2::kernels);
#endif
#ifdef IQALS_HAVE_generic
    k.push_back(&generic::kernels);
#endif
    return k;
}

int thread_count(int requested) {
#ifdef _OPENMP
    return requested > 0 ? requested : omp_get_max_threads();
#else
    (void)requested;
    return 1;
#endif
}

}  // namespace iqals
