// Argument checks and backend choice for the MoE family (see csrc/dispatch_common.h for the conventions).
#pragma once
#include "zaya_rt/moe.h"

namespace zaya_rt {

void moe_dispatch(const MoeDispatchParams& p, const Device& d);
void grouped_gemm(const GroupedGemmParams& p, const Device& d);
void grouped_gemm_weight_grad(const GroupedGemmWeightGradParams& p, const Device& d);
void moe_experts(const MoeExpertsParams& p, const Device& d);
// Workspace bytes each kernel needs on device d (host-side sizes, upper bounds).
int64_t grouped_gemm_workspace(const Device& d, int64_t M, int64_t N, int64_t K, int64_t G, DType t);
int64_t grouped_gemm_weight_grad_workspace(const Device& d, int64_t M, int64_t N, int64_t K, int64_t G, DType t);
int64_t moe_experts_workspace(const Device& d, int64_t T, int64_t top_k, int64_t D, int64_t I, int64_t E, DType t);

}  // namespace zaya_rt
