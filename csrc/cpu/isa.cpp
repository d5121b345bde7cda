// Run-time choice among the per-ISA CPU kernel builds. ZAYA_RT_CPU_ISA=base|avx2|avx512 caps it.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "cpu/isa_kernels.h"

namespace zaya_rt::cpu {
namespace {

Isa isa_from_env(Isa best) {
  const char* env = std::getenv("ZAYA_RT_CPU_ISA");
  if (env == nullptr) return best;
  Isa wanted = best;
  if (std::strcmp(env, "base") == 0) wanted = Isa::kBase;
  else if (std::strcmp(env, "avx2") == 0) wanted = Isa::kAvx2;
  else if (std::strcmp(env, "avx512") == 0) wanted = Isa::kAvx512;
  return static_cast<int>(wanted) < static_cast<int>(best) ? wanted : best;
}

std::atomic<int>& active() {
  static std::atomic<int> isa{static_cast<int>(isa_from_env(best_supported_isa()))};
  return isa;
}

}  // namespace

Isa best_supported_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("f16c"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return Isa::kAvx2;
  return Isa::kBase;
}

Isa active_isa() { return static_cast<Isa>(active().load()); }

Isa set_max_isa(Isa isa) {
  const Isa best = best_supported_isa();
  const Isa chosen = static_cast<int>(isa) < static_cast<int>(best) ? isa : best;
  active().store(static_cast<int>(chosen));
  return chosen;
}

namespace {
std::atomic<int>& bf16_dot_mode() {
  static std::atomic<int> mode{[] {
    const char* env = std::getenv("ZAYA_RT_CPU_BF16_DOT");
    if (env == nullptr) return -1;
    return std::strcmp(env, "1") == 0 ? 1 : std::strcmp(env, "0") == 0 ? 0 : -1;
  }()};
  return mode;
}
}  // namespace

int bf16_dot_override() { return bf16_dot_mode().load(); }
void set_bf16_dot_override(int mode) { bf16_dot_mode().store(mode < 0 ? -1 : (mode ? 1 : 0)); }

Bf16GemmRates bf16_gemm_rates() {
  switch (active_isa()) {
    case Isa::kAvx512: return avx512::bf16_gemm_rates();
    case Isa::kAvx2: return avx2::bf16_gemm_rates();
    default: return base::bf16_gemm_rates();
  }
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "base";
  }
}

ZAYA_RT_CPU_KERNELS(ZAYA_RT_CPU_ROUTE)

}  // namespace zaya_rt::cpu
