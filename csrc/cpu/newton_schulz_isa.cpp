// Run-time ISA choice for the Newton-Schulz CPU kernel (csrc/cpu/newton_schulz.cpp, built once per ISA) and
// its workspace size.
#include "cpu/isa_kernels.h"
#include "cpu/newton_schulz_shape.h"
#include "zaya_rt/newton_schulz.h"

#define ZAYA_RT_DECLARE_NEWTON_SCHULZ(ISA) \
  namespace zaya_rt::cpu::ISA { const char* newton_schulz(const NewtonSchulzParams& p, bool bf16_dot); }
ZAYA_RT_DECLARE_NEWTON_SCHULZ(base)
ZAYA_RT_DECLARE_NEWTON_SCHULZ(avx2)
ZAYA_RT_DECLARE_NEWTON_SCHULZ(avx512)

namespace zaya_rt::cpu {

const char* newton_schulz(const NewtonSchulzParams& p) {
  // bf16 products take vdpbf16ps unless ZAYA_RT_CPU_BF16_DOT=0 (or set_bf16_dot_override(0)) asks for fp32 FMAs.
  const bool dot = bf16_dot_override() != 0;
  switch (active_isa()) {
    case Isa::kAvx512: return avx512::newton_schulz(p, dot);
    case Isa::kAvx2: return avx2::newton_schulz(p, dot);
    default: return base::newton_schulz(p, dot);
  }
}

int64_t newton_schulz_workspace(DType dtype, int64_t batch, int64_t rows, int64_t cols, int64_t threads) {
  const int64_t m = std::min(rows, cols), n = std::max(rows, cols);
  const int64_t elem = dtype == DType::kFloat32 ? 4 : 2;
  const int64_t chunk = newton_schulz_cpu_chunk(batch, m, n, elem);
  auto lines = [](int64_t bytes) { return (bytes + 63) / 64 * 64; };
  return lines(chunk * m * n * elem) + 2 * lines(chunk * m * m * elem) +
         lines(newton_schulz_cpu_a_entries(chunk, m, n) * kPackedEntryBytes) +
         lines(newton_schulz_cpu_b_entries(threads, n) * kPackedEntryBytes);
}

}  // namespace zaya_rt::cpu
