// Argument checks and backend choice for the MoE family (see csrc/dispatch_common.h for the conventions).
#pragma once
#include "zaya_rt/moe.h"

namespace zaya_rt {

void moe_dispatch(const MoeDispatchParams& p, const Device& d);
void grouped_gemm(const GroupedGemmParams& p, const Device& d);
void grouped_gemm_weight_grad(const GroupedGemmWeightGradParams& p, const Device& d);
void moe_experts(const MoeExpertsParams& p, const Device& d);
// Workspace bytes each kernel needs on device d (host-side sizes, upper bounds).
// Workspace bytes of each entry point for the sizes and dtype in p (its pointers are not read).
int64_t grouped_gemm_workspace(const GroupedGemmParams& p, const Device& d);
int64_t grouped_gemm_weight_grad_workspace(const GroupedGemmWeightGradParams& p, const Device& d);
int64_t moe_experts_workspace(const MoeExpertsParams& p, const Device& d);

}  // namespace zaya_rt
