// sm_90a CUTLASS grouped GEMM, fp16 operands (one instantiation per file; see cuda/moe_gemm_sm90.h).
#include "cuda/moe_gemm_sm90.cuh"

namespace zaya_rt::gpu::sm90 {

int64_t cutlass_workspace_f16() { return cutlass_workspace<GroupedGemmConfig<cutlass::half_t>>(); }

const char* grouped_gemm_f16(const GroupedGemmParams& p, int sm_count, cudaStream_t s) {
  return run_grouped_gemm<cutlass::half_t>(p, sm_count, s);
}

}  // namespace zaya_rt::gpu::sm90
