// Workspace shape of the CPU MoE backward (csrc/cpu/moe_backward.h), shared with its host-side size query.
#pragma once
#include <algorithm>
#include <cstdint>

namespace zaya_rt::cpu {

// Entries of packed A that the backward's GEMM passes need (upper bound), for mr-row register tiles: the gate-up
// or W2^T dout pass, or the last pass (both weight gradients and dh W1 as one job list).
inline int64_t moe_backward_packed_a_entries(int64_t slots, int64_t E, int64_t D, int64_t I, int64_t mr) {
  const int64_t I2 = 2 * I, width = std::max(D, I2);
  const int64_t first = (slots + E * mr) * width;
  const int64_t last = (D + mr) * (slots + E) + (I2 + mr) * (slots + E) + (slots + E * mr) * I2;
  return std::max(first, last);
}

}  // namespace zaya_rt::cpu
