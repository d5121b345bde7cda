// Parameters of the batched Newton-Schulz orthogonalisation used by Muon (csrc/cpu/newton_schulz.cpp,
// cuda/newton_schulz_kernels.cuh). For each matrix G [rows, cols] of the batch, with X its transpose when
// rows > cols (so X is [m, n], m = min(rows, cols) <= n):
//   X0 = round(X / max(round(||X||_F), round(eps)))
//   repeat `steps` times:  S = round(X X^T);  P = round(b S + c S S);  X = round(a X + P X)
//   out = X (transposed back when rows > cols)
// where round() is rounding to the compute dtype (bfloat16 or float32) and every product accumulates in fp32:
// the rounding points of torch.optim.Muon's bf16 composition. S and P are symmetric; each is computed as its
// upper triangle of tiles and mirrored.
#pragma once
#include <cstdint>

#include "zaya_rt/common.h"

namespace zaya_rt {

struct NewtonSchulzParams {
  const void* x;  // [batch, rows, cols] in dtype, any strides
  int64_t x_batch_stride, x_row_stride, x_col_stride;
  void* out;      // [batch, rows, cols] in dtype, contiguous
  DType dtype;    // compute and storage dtype: float32 or bfloat16
  int64_t batch, rows, cols;
  int64_t steps;
  float a, b, c, eps;
  void* workspace;  // newton_schulz_workspace(...) bytes, 64-byte aligned
  int64_t workspace_bytes;
};

namespace cpu {
// Error message or null; picks the ISA build at run time (csrc/cpu/newton_schulz_isa.cpp).
const char* newton_schulz(const NewtonSchulzParams& p);
// Workspace bytes of the CPU kernel run by up to `threads` threads.
int64_t newton_schulz_workspace(DType dtype, int64_t batch, int64_t rows, int64_t cols, int64_t threads);
}  // namespace cpu
namespace gpu {
const char* newton_schulz(const NewtonSchulzParams& p, void* stream);
int64_t newton_schulz_workspace(DType dtype, int64_t batch, int64_t rows, int64_t cols);
}  // namespace gpu

}  // namespace zaya_rt
