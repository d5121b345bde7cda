// Parameters of the packed-weight linear layer (csrc/cpu/packed_linear.cpp): y [M, N] = x [M, K] W^T + b for
// weights packed once into column panels, the runtime's decode GEMM. CPU only.
//
// Packed layout (the same for every CPU ISA build): N is cut into panels of kPackedPanel columns (the last one
// zero-padded); panel p holds, for bf16 weights, ceil(K / 2) rows of kPackedPanel uint32 pairs
// (bits of W[n][2j] | bits of W[n][2j + 1] << 16, 0 past K), and for fp32 / fp16 weights K rows of kPackedPanel
// floats. The bias follows the panels as panels * kPackedPanel floats (zeros without a bias).
#pragma once
#include <cstdint>

#include "zaya_rt/common.h"

namespace zaya_rt {

constexpr int64_t kPackedPanel = 48;

struct PackLinearParams {
  const void* weight;  // [N, K] in dtype, unit inner stride
  int64_t weight_row_stride;
  const void* bias;    // [N] in dtype or null
  void* packed;        // packed_linear_bytes(dtype, N, K) bytes, 64-byte aligned
  int64_t packed_bytes;
  DType dtype;         // float32, float16 or bfloat16
  int64_t N, K;
};

struct PackedLinearParams {
  const void* x;       // [M, K] in dtype, unit inner stride
  int64_t x_row_stride;
  const void* packed;  // from pack_linear_weight with the same dtype, N and K
  void* out;           // [M, N] in dtype, unit inner stride
  int64_t out_row_stride;
  DType dtype;
  int64_t M, N, K;
  void* workspace;     // packed_linear_workspace(M, K) bytes
  int64_t workspace_bytes;
};

namespace cpu {
// Error message or null; chooses the ISA build at run time (csrc/cpu/isa.cpp).
const char* pack_linear_weight(const PackLinearParams& p);
const char* packed_linear(const PackedLinearParams& p);
}  // namespace cpu

inline int64_t packed_linear_panels(int64_t N) { return (N + kPackedPanel - 1) / kPackedPanel; }

// Rows of the packed weight panel: K pairs for bf16, K otherwise.
inline int64_t packed_linear_rows(DType dtype, int64_t K) { return dtype == DType::kBFloat16 ? (K + 1) / 2 : K; }

inline int64_t packed_linear_bytes(DType dtype, int64_t N, int64_t K) {
  const int64_t panels = packed_linear_panels(N);
  return (panels * packed_linear_rows(dtype, K) * kPackedPanel + panels * kPackedPanel) * 4;
}

// x converted to fp32 with K rounded up to even: M * (K + 1) / 2 * 2 floats, plus alignment slack.
inline int64_t packed_linear_workspace(int64_t M, int64_t K) { return M * ((K + 1) / 2 * 2) * 4 + 64; }

}  // namespace zaya_rt
