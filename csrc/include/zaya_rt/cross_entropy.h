// Parameters of the fused softmax-cross-entropy row kernel (csrc/cpu/cross_entropy.cpp), the post-GEMM half of
// the chunked LM-head loss (python/zaya_rt/model/loss.py). CPU only.
//
// For each row i of logits [rows, vocab] (unit inner stride) with target t = targets[i], in fp32:
//   lse = logsumexp(row), losses[i] = lse - row[t],
//   row <- (softmax(row) - onehot(t)) * grad_scale, rounded once to the logits' dtype, in place.
// A row whose target equals ignore_index gets loss 0 and an all-zero gradient. A row holding a NaN or +inf, or
// only -inf, gets a NaN loss and an all-NaN gradient (as log_softmax gives). Bytes of a row past vocab are
// never touched.
#pragma once
#include <cstdint>

#include "zaya_rt/common.h"

namespace zaya_rt {

struct CrossEntropyRowsParams {
  void* logits;               // [rows, vocab] in dtype, unit inner stride; overwritten with the gradient
  int64_t logits_row_stride;  // elements between rows (>= vocab when rows > 1)
  const int64_t* targets;     // [rows], each in [0, vocab) or ignore_index
  float* losses;              // [rows] fp32 out
  DType dtype;                // float32, float16 or bfloat16
  int64_t rows, vocab;
  int64_t ignore_index;
  float grad_scale;           // factor folded into the written gradient
};

namespace cpu {
// Error message or null; chooses the ISA build at run time (csrc/cpu/cross_entropy_isa.cpp).
const char* cross_entropy_rows(const CrossEntropyRowsParams& p);
}  // namespace cpu

}  // namespace zaya_rt
