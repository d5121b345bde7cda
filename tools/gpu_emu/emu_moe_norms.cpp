// C entry points over the emulated MoE and norms GPU kernels (tools/gpu_emu/build.py --source emu_moe_norms),
// for ctypes. Each takes its params struct by pointer, filled by name from tools/gpu_emu/params.py, and returns
// the kernel's error message or null.
#include "cuda/moe_kernels.cuh"
#include "cuda/norms_kernels.cuh"

using namespace zaya_rt;
using I = int64_t;

extern "C" {

const char* emu_moe_dispatch(const MoeDispatchParams* p) { return gpu::moe_dispatch(*p, nullptr); }
const char* emu_grouped_gemm(const GroupedGemmParams* p) { return gpu::grouped_gemm(*p, nullptr); }
const char* emu_grouped_gemm_weight_grad(const GroupedGemmWeightGradParams* p) {
  return gpu::grouped_gemm_weight_grad(*p, nullptr);
}
const char* emu_moe_experts(const MoeExpertsParams* p) { return gpu::moe_experts(*p, nullptr); }
I emu_grouped_gemm_workspace(I M, I N, I K, I G, int dtype) {
  return gpu::grouped_gemm_workspace(M, N, K, G, static_cast<DType>(dtype));
}
I emu_grouped_gemm_weight_grad_workspace(I M, I N, I K, I G, int dtype) {
  return gpu::grouped_gemm_weight_grad_workspace(M, N, K, G, static_cast<DType>(dtype));
}
I emu_moe_experts_workspace(I T, I top_k, I D, I I_, I E, int dtype) {
  return gpu::moe_experts_workspace(T, top_k, D, I_, E, static_cast<DType>(dtype));
}

const char* emu_rms_norm_fwd(const RmsNormFwdParams* p) { return gpu::rms_norm_fwd(*p, nullptr); }
const char* emu_rms_norm_bwd(const RmsNormBwdParams* p) { return gpu::rms_norm_bwd(*p, nullptr); }
const char* emu_residual_rms_norm_fwd(const ResidualRmsNormFwdParams* p) {
  return gpu::residual_rms_norm_fwd(*p, nullptr);
}
const char* emu_residual_rms_norm_bwd(const ResidualRmsNormBwdParams* p) {
  return gpu::residual_rms_norm_bwd(*p, nullptr);
}
I emu_norm_bwd_num_partials(I rows, I dim) { return gpu::norm_bwd_num_partials(rows, dim); }

}  // extern "C"
