// sm_90a CUTLASS grouped GEMM, bf16 operands (one instantiation per file; see cuda/moe_gemm_sm90.h).
#include "cuda/moe_gemm_sm90.cuh"

namespace zaya_rt::gpu::sm90 {

int64_t cutlass_workspace_bf16() { return cutlass_workspace<GroupedGemmConfig<cutlass::bfloat16_t>>(); }

const char* grouped_gemm_bf16(const GroupedGemmParams& p, int sm_count, cudaStream_t s) {
  return run_grouped_gemm<cutlass::bfloat16_t>(p, sm_count, s);
}

}  // namespace zaya_rt::gpu::sm90
