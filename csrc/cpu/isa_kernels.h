// Declares the CPU kernels once per ISA namespace; csrc/cpu/isa.cpp picks one at run time.
#pragma once
#include "zaya_rt/cca.h"
#include "zaya_rt/moe.h"
#include "zaya_rt/norms.h"
#include "zaya_rt/packed_linear.h"
#include "zaya_rt/router.h"

// The CPU kernels compiled once per ISA, as X(name, params type) for each (attention's list is in
// cpu/attention_isa.cpp).
#define ZAYA_RT_CPU_KERNELS(X)                              \
  X(rms_norm_fwd, RmsNormFwdParams)                         \
  X(rms_norm_bwd, RmsNormBwdParams)                         \
  X(residual_rms_norm_fwd, ResidualRmsNormFwdParams)        \
  X(residual_rms_norm_bwd, ResidualRmsNormBwdParams)        \
  X(moe_dispatch, MoeDispatchParams)                        \
  X(grouped_gemm, GroupedGemmParams)                        \
  X(grouped_gemm_weight_grad, GroupedGemmWeightGradParams)  \
  X(moe_experts, MoeExpertsParams)                          \
  X(zaya_router, RouterParams)                              \
  X(cca_prep_fwd, CcaPrepFwdParams)                         \
  X(cca_prep_bwd, CcaPrepBwdParams)                         \
  X(pack_linear_weight, PackLinearParams)                   \
  X(packed_linear, PackedLinearParams)

#define ZAYA_RT_CPU_DECLARE_KERNEL(FN, PARAMS) const char* FN(const PARAMS& p);
// Declares the kernels of LIST (a list macro like ZAYA_RT_CPU_KERNELS) in every ISA namespace.
#define ZAYA_RT_CPU_DECLARE_PER_ISA(LIST)                                 \
  namespace zaya_rt::cpu::base { LIST(ZAYA_RT_CPU_DECLARE_KERNEL) }       \
  namespace zaya_rt::cpu::avx2 { LIST(ZAYA_RT_CPU_DECLARE_KERNEL) }       \
  namespace zaya_rt::cpu::avx512 { LIST(ZAYA_RT_CPU_DECLARE_KERNEL) }

ZAYA_RT_CPU_DECLARE_PER_ISA(ZAYA_RT_CPU_KERNELS)

namespace zaya_rt::cpu {
// The one-time per-host measurement behind the bf16 GEMM path choice, in GFLOP/s on one thread: a bf16 GEMM
// of an expert's size through vdpbf16ps (dot_gemm) and through fp32 FMAs (fma_gemm), and the register-only
// peaks of the two instructions. All zero where the ISA build has no vdpbf16ps.
struct Bf16GemmRates {
  bool has_dot = false;     // the active ISA build has vdpbf16ps
  bool dot_chosen = false;  // bf16 GEMMs now use vdpbf16ps (the measured choice, or the override)
  double dot_gemm = 0.0, fma_gemm = 0.0, dot_peak = 0.0, fma_peak = 0.0;
};
}  // namespace zaya_rt::cpu
namespace zaya_rt::cpu::base { Bf16GemmRates bf16_gemm_rates(); }
namespace zaya_rt::cpu::avx2 { Bf16GemmRates bf16_gemm_rates(); }
namespace zaya_rt::cpu::avx512 { Bf16GemmRates bf16_gemm_rates(); }

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
// The active ISA build's bf16 path and the rates it was chosen by (measured on first use).
Bf16GemmRates bf16_gemm_rates();
}  // namespace zaya_rt::cpu

// Defines zaya_rt::cpu::FN (inside namespace zaya_rt::cpu), which calls the build of the active ISA. Used as
// LIST(ZAYA_RT_CPU_ROUTE) for a kernel list.
#define ZAYA_RT_CPU_ROUTE(FN, PARAMS)                        \
  const char* FN(const PARAMS& p) {                          \
    switch (active_isa()) {                                  \
      case Isa::kAvx512: return avx512::FN(p);               \
      case Isa::kAvx2: return avx2::FN(p);                   \
      default: return base::FN(p);                           \
    }                                                        \
  }
