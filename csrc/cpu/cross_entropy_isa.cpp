// Run-time ISA routing of the CPU cross-entropy row kernel (compiled once, not per ISA; the per-ISA build is
// csrc/cpu/cross_entropy.cpp in cmake/cpu_kernels.cmake).
#include "cpu/isa_kernels.h"
#include "zaya_rt/cross_entropy.h"

#define ZAYA_RT_CPU_CROSS_ENTROPY_KERNELS(X) X(cross_entropy_rows, CrossEntropyRowsParams)
ZAYA_RT_CPU_DECLARE_PER_ISA(ZAYA_RT_CPU_CROSS_ENTROPY_KERNELS)

namespace zaya_rt::cpu {

ZAYA_RT_CPU_CROSS_ENTROPY_KERNELS(ZAYA_RT_CPU_ROUTE)

}  // namespace zaya_rt::cpu
