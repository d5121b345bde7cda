// Declares the CPU kernels once per ISA namespace; csrc/cpu/isa.cpp picks one at run time.
#pragma once
#include "zaya_rt/moe.h"
#include "zaya_rt/norms.h"

#define ZAYA_RT_DECLARE_CPU_KERNELS(ISA)                                   \
  namespace zaya_rt::cpu::ISA {                                            \
  const char* rms_norm_fwd(const RmsNormFwdParams& p);                     \
  const char* rms_norm_bwd(const RmsNormBwdParams& p);                     \
  const char* residual_rms_norm_fwd(const ResidualRmsNormFwdParams& p);    \
  const char* residual_rms_norm_bwd(const ResidualRmsNormBwdParams& p);    \
  const char* moe_dispatch(const MoeDispatchParams& p);                    \
  const char* grouped_gemm(const GroupedGemmParams& p);                    \
  const char* grouped_gemm_weight_grad(const GroupedGemmWeightGradParams& p); \
  const char* moe_experts(const MoeExpertsParams& p);                      \
  }

ZAYA_RT_DECLARE_CPU_KERNELS(base)
ZAYA_RT_DECLARE_CPU_KERNELS(avx2)
ZAYA_RT_DECLARE_CPU_KERNELS(avx512)

namespace zaya_rt::cpu {
enum class Isa : int { kBase = 0, kAvx2 = 1, kAvx512 = 2 };
Isa best_supported_isa();
Isa active_isa();
// Caps the ISA used (never above what the CPU supports); returns the one now active.
Isa set_max_isa(Isa isa);
const char* isa_name(Isa isa);
}  // namespace zaya_rt::cpu
