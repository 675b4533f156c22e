// The Kernels table (kernels.h) of one instruction set: compiled once per instruction set with the
// kernel files (CMakeLists.txt), it gathers their entries; isa.cpp picks the best table this CPU runs.
#include "kernels.h"

#define IQALS_STR2(x) #x
#define IQALS_STR(x) IQALS_STR2(x)

namespace iqals {
namespace IQALS_ISA {

extern const Kernels kernels = {IQALS_STR(IQALS_ISA), &distort_and_score, &ssim,    &lrn_forward,
                                &lrn_backward,        &lrn_forward_bf16,  &lrn_backward_bf16,
                                &philox,              &normals};

}  // namespace IQALS_ISA
}  // namespace iqals
