// Work split and buffer sizes of the Newton-Schulz CPU kernel, shared by its per-ISA builds and the workspace
// query (csrc/cpu/newton_schulz_isa.cpp).
#pragma once
#include <algorithm>
#include <cstdint>

#include "cpu/gemm_shape.h"

namespace zaya_rt::cpu {

// Packed entries (4 bytes each) of the A panels of `chunk` matrices (rows of X, S or P: m rows, K <= n) and of
// the per-thread B panel buffers (kNR rows, K <= n); K counted in full, the larger fp32 packing.
inline int64_t newton_schulz_cpu_a_entries(int64_t chunk, int64_t m, int64_t n) { return chunk * (m + kGemmMR) * n; }
inline int64_t newton_schulz_cpu_b_entries(int64_t threads, int64_t n) { return threads * kGemmNR * n; }

// Matrices processed together: as many as fit in 128 MiB of iterates and packed A panels (at least one), so that
// each product is one parallel pass over all of them (few barriers: a pass per matrix would wait at two
// barriers per product and matrix, a large cost when threads are preempted). X is [m, n] with m <= n.
inline int64_t newton_schulz_cpu_chunk(int64_t batch, int64_t m, int64_t n, int64_t elem_bytes) {
  const int64_t per_matrix = (m * n + 2 * m * m) * elem_bytes +
                             newton_schulz_cpu_a_entries(1, m, n) * kPackedEntryBytes;
  const int64_t fit = (int64_t{128} << 20) / std::max<int64_t>(1, per_matrix);
  return std::max<int64_t>(1, std::min(batch, fit));
}

}  // namespace zaya_rt::cpu
