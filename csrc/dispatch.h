// Argument checks and backend choice. Errors are thrown as std::invalid_argument (bad input,
// ValueError in Python) or std::runtime_error (a backend failed, RuntimeError in Python).
#pragma once
#include "zaya_rt/common.h"
#include "zaya_rt/moe.h"
#include "zaya_rt/norms.h"
#include "zaya_rt/router.h"

namespace zaya_rt {

const char* gpu_backend_name();  // "cuda", "hip" or "none"

void rms_norm_fwd(const RmsNormFwdParams& p, const Device& d);
void rms_norm_bwd(const RmsNormBwdParams& p, const Device& d);
void residual_rms_norm_fwd(const ResidualRmsNormFwdParams& p, const Device& d);
void residual_rms_norm_bwd(const ResidualRmsNormBwdParams& p, const Device& d);
int64_t norm_bwd_num_partials(const Device& d, int64_t rows, int64_t dim);

void moe_dispatch(const MoeDispatchParams& p, const Device& d);
void grouped_gemm(const GroupedGemmParams& p, const Device& d);
void grouped_gemm_weight_grad(const GroupedGemmWeightGradParams& p, const Device& d);
void moe_experts(const MoeExpertsParams& p, const Device& d);
// Workspace bytes each kernel needs on device d (host-side sizes, upper bounds).
int64_t grouped_gemm_workspace(const Device& d, int64_t M, int64_t N, int64_t K, int64_t G, DType t);
int64_t grouped_gemm_weight_grad_workspace(const Device& d, int64_t M, int64_t N, int64_t K, int64_t G, DType t);
// zaya_router_workspace: bytes the CPU kernel needs (the GPU kernel needs none).
void zaya_router(const RouterParams& p, const Device& d);
int64_t zaya_router_workspace(int64_t T, int64_t D, int64_t R, int64_t C);
int64_t moe_experts_workspace(const Device& d, int64_t T, int64_t top_k, int64_t D, int64_t I, int64_t E, DType t);

}  // namespace zaya_rt
