// Workspace shape of the CPU MoE backward (csrc/cpu/moe_backward.h), shared with its host-side size query.
#pragma once
#include <algorithm>
#include <cstdint>

namespace zaya_rt::cpu {

// Entries of packed A that each GEMM pass of the backward needs (upper bound, for mr-row register tiles and
// unpaired fp32 entries): the gate-up or W2^T dout pass (rows x width), a weight gradient (its N x the rows of
// each group) or dh W1 (rows x 2I). One pass at a time, so that the workspace stays small enough to be reused.
inline int64_t moe_backward_packed_a_entries(int64_t slots, int64_t E, int64_t D, int64_t I, int64_t mr) {
  const int64_t I2 = 2 * I, width = std::max(D, I2);
  return std::max((slots + E * mr) * width, (width + mr) * (slots + E));
}

}  // namespace zaya_rt::cpu
