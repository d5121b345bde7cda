// Host-side workspace sizes of the CPU MoE kernels (upper bounds; see csrc/cpu/moe.cpp for the layout).
#include <omp.h>

#include <algorithm>

#include "cpu/gemm_shape.h"
#include "cpu/isa_kernels.h"
#include "cpu/moe_backward_shape.h"
#include "cpu/router_blocks.h"
#include "cpu/router_decode.h"
#include "zaya_rt/moe.h"
#include "zaya_rt/router.h"

namespace zaya_rt::cpu {
namespace {
constexpr int64_t kAlign = 64;
int64_t aligned(int64_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }
int64_t threads() { return std::max(1, omp_get_max_threads()); }
}  // namespace

int64_t grouped_gemm_workspace(int64_t M, int64_t, int64_t K, int64_t G, DType) {
  return aligned((M + G * kGemmMR) * K * kPackedEntryBytes) + threads() * K * kGemmNC * kPackedEntryBytes;
}

int64_t grouped_gemm_weight_grad_workspace(int64_t M, int64_t N, int64_t, int64_t G, DType) {
  return aligned((N + kGemmMR) * (M + G) * kPackedEntryBytes) + threads() * std::max<int64_t>(M, 1) * kGemmNC *
                                                                     kPackedEntryBytes;
}

int64_t moe_experts_workspace(int64_t T, int64_t top_k, int64_t D, int64_t I, int64_t E, DType) {
  const int64_t slots = T * top_k, width = std::max(D, I);
  const int64_t i_pad = (I + kGemmNR - 1) / kGemmNR * kGemmNR;
  int64_t bytes = 2 * aligned(E * 4) + 3 * aligned(slots * 4) + aligned(slots * 4) + aligned(2 * i_pad * 4);
  bytes += aligned(slots * I * 4);
  if (top_k > 1) bytes += aligned(slots * D * 4);
  bytes += aligned((slots + E * kGemmMR) * width * kPackedEntryBytes);
  return bytes + threads() * width * kGemmNC * kPackedEntryBytes;
}

int64_t moe_experts_backward_workspace(int64_t T, int64_t top_k, int64_t D, int64_t I, int64_t E, DType dtype) {
  // Layout of csrc/cpu/moe_backward.h, every piece at its largest; 4 bytes per element is room for any dtype.
  const int64_t slots = T * top_k, I2 = 2 * I, width = std::max(D, I2), col_blocks = (I + kGemmNR - 1) / kGemmNR;
  const int64_t elem = dtype == DType::kFloat32 ? 4 : 2;
  int64_t bytes = aligned(slots * 4) + 2 * aligned(slots * D * elem) + 2 * aligned(slots * I2 * elem) +
                  aligned(slots * I * elem) + aligned(slots * col_blocks * 4) + (top_k > 1 ? aligned(slots * D * 4) : 0);
  bytes += aligned(moe_backward_packed_a_entries(slots, E, D, I, kGemmMR) * kPackedEntryBytes);
  return bytes + threads() * std::max<int64_t>({width, slots, 1}) * kGemmNC * kPackedEntryBytes;
}

int64_t zaya_router_workspace(int64_t T, int64_t D, int64_t R, int64_t C) {
  // The path (and so the layout) depends on the dtype, which this query does not take: room for any.
  int64_t bytes = 0;
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
    bytes = std::max(bytes, use_router_token_blocks(T, D, R, dtype) ? router_block_workspace(D, R, C, threads())
                                                                    : router_decode_workspace(T, D, R, C, threads()));
  return bytes;
}

}  // namespace zaya_rt::cpu

// The run-time ISA routing of the MoE backward (its per-ISA builds: csrc/cpu/moe.cpp with cpu/moe_backward.h).
#define ZAYA_RT_CPU_MOE_BACKWARD_KERNELS(X) X(moe_experts_backward, MoeExpertsBackwardParams)
ZAYA_RT_CPU_DECLARE_PER_ISA(ZAYA_RT_CPU_MOE_BACKWARD_KERNELS)
namespace zaya_rt::cpu {
ZAYA_RT_CPU_MOE_BACKWARD_KERNELS(ZAYA_RT_CPU_ROUTE)
}  // namespace zaya_rt::cpu
