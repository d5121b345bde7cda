// Declares the CPU kernels once per ISA namespace; csrc/cpu/isa.cpp picks one at run time.
#pragma once
#include "zaya_rt/cca.h"
#include "zaya_rt/moe.h"
#include "zaya_rt/norms.h"
#include "zaya_rt/packed_linear.h"
#include "zaya_rt/router.h"

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
  const char* zaya_router(const RouterParams& p);                          \
  const char* cca_prep_fwd(const CcaPrepFwdParams& p);                     \
  const char* cca_prep_bwd(const CcaPrepBwdParams& p);                     \
  const char* pack_linear_weight(const PackLinearParams& p);               \
  const char* packed_linear(const PackedLinearParams& p);                  \
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
// How bf16 GEMMs compute: -1 = measure once per process and take the faster of vdpbf16ps and fp32 FMAs,
// 0 = fp32 FMAs, 1 = vdpbf16ps (where the ISA has it). ZAYA_RT_CPU_BF16_DOT=0|1 sets it at start-up.
int bf16_dot_override();
void set_bf16_dot_override(int mode);
}  // namespace zaya_rt::cpu

// Defines zaya_rt::cpu::FN (inside namespace zaya_rt::cpu), which calls the build of the active ISA.
#define ZAYA_RT_CPU_ROUTE(FN, PARAMS)                        \
  const char* FN(const PARAMS& p) {                          \
    switch (active_isa()) {                                  \
      case Isa::kAvx512: return avx512::FN(p);               \
      case Isa::kAvx2: return avx2::FN(p);                   \
      default: return base::FN(p);                           \
    }                                                        \
  }
