// Which GPU kernel family serves a grouped GEMM (introspection for tests and benchmarks; see
// cuda/moe_gemm_sm90.h for the choice and the ZAYA_RT_CUDA_GROUPED_GEMM override).
#pragma once
#include "zaya_rt/moe.h"

namespace zaya_rt::gpu {
// "cutlass_sm90", "wmma" or "simt" for the forward grouped GEMM of p on the current device ("none" when there
// is nothing to compute). Reads no device memory.
const char* grouped_gemm_path(const GroupedGemmParams& p);
// Whether this build holds the sm_90a CUTLASS grouped GEMM.
bool built_with_cutlass_sm90();
}  // namespace zaya_rt::gpu
