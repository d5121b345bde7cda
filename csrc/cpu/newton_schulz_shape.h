// Work split and buffer sizes of the Newton-Schulz CPU kernel, shared by its per-ISA builds and the workspace
// query (csrc/cpu/newton_schulz_isa.cpp).
#pragma once
#include <algorithm>
#include <cstdint>

#include "cpu/gemm_shape.h"

namespace zaya_rt::cpu {

// Matrices processed together: enough column-panel tasks for `threads` threads, at most 64 MiB of iterates,
// at least one matrix. X is [m, n] with m <= n.
inline int64_t newton_schulz_cpu_chunk(int64_t batch, int64_t m, int64_t n, int64_t elem_bytes, int64_t threads) {
  const int64_t tasks = std::max<int64_t>(1, (m + kGemmNR - 1) / kGemmNR);
  const int64_t want = (4 * threads + tasks - 1) / tasks;
  const int64_t per_matrix = std::max<int64_t>(1, (2 * m * n + 2 * m * m) * elem_bytes);
  const int64_t fit = std::max<int64_t>(1, (int64_t{64} << 20) / per_matrix);
  return std::max<int64_t>(1, std::min({batch, want, fit}));
}

// Packed entries (4 bytes each) of the A panels (rows of X, S or P: m rows, K <= n) and of the B panels
// (rows of X or S: m rows, K <= n; rows of X^T: n rows, K = m) for `chunk` matrices; K counted in full, the
// larger fp32 packing.
inline int64_t newton_schulz_cpu_a_entries(int64_t chunk, int64_t m, int64_t n) { return chunk * (m + kGemmMR) * n; }
inline int64_t newton_schulz_cpu_b_entries(int64_t chunk, int64_t m, int64_t n) {
  return chunk * std::max((m + kGemmNR) * n, (n + kGemmNR) * m);
}

}  // namespace zaya_rt::cpu
