// The fused expert block's decode path (csrc/cpu/moe_decode.cpp): few token slots, weights read once in their
// stored layout. moe.cpp runs the dispatch and hands over its results and the workspace pieces it carved.
#pragma once
#include <cstdint>

#include "zaya_rt/moe.h"

namespace zaya_rt::cpu {

// Calls with at most this many token slots (T * top_k), and no expert with more than kMoeDecodeMaxExpertRows of
// them, take the decode path on AVX-512 builds. Past 32 rows on one expert the packed GEMM is faster (one
// thread, D = I = 512, bf16: 48 rows 0.55 ms packed, 0.60 ms decode; 32 rows 0.46 against 0.40).
constexpr int64_t kMoeDecodeMaxSlots = 64;
constexpr int64_t kMoeDecodeMaxExpertRows = 32;

// Whether a dispatched call (offsets [E], cumulative row ends) takes the decode path.
inline bool use_moe_decode(int64_t slots, const int32_t* offsets, int64_t E) {
  if (slots > kMoeDecodeMaxSlots) return false;
  for (int64_t e = 0, start = 0; e < E; start = offsets[e++])
    if (offsets[e] - start > kMoeDecodeMaxExpertRows) return false;
  return true;
}

// What moe.cpp's dispatch produced (see MoeDispatchParams), and where the decode path writes.
struct MoeDecodeRows {
  const int32_t* offsets;       // [E] cumulative ends of each expert's rows
  const int32_t* sorted_slots;  // [T * top_k] slot of each row, expert-major
  const int32_t* slot_rows;     // [T * top_k] row of each slot, -1 when skipped
  void* act;                    // [T * top_k, I] in the params' dtype: SwiGLU of each row
  float* y_rows;                // [T * top_k, D] gate-scaled rows, used when top_k > 1
};

}  // namespace zaya_rt::cpu

#define ZAYA_RT_MOE_DECODE_DECLARE(ISA)                                                                  \
  namespace zaya_rt::cpu::ISA {                                                                          \
  /* Whether this ISA build has the decode path. */                                                      \
  bool has_moe_decode();                                                                                 \
  /* The expert block of MoeExpertsParams over dispatched rows; bf16_dot picks vdpbf16ps for bf16. */   \
  const char* moe_experts_decode(const MoeExpertsParams& p, const MoeDecodeRows& rows, bool bf16_dot);   \
  }
ZAYA_RT_MOE_DECODE_DECLARE(base)
ZAYA_RT_MOE_DECODE_DECLARE(avx2)
ZAYA_RT_MOE_DECODE_DECLARE(avx512)
#undef ZAYA_RT_MOE_DECODE_DECLARE
