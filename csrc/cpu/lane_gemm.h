// Few-row fp32 GEMM with the rows as vector lanes (AVX-512): out[t, c] = <a_t, w_c> for up to 16 rows a_t and
// weight rows w_c in nn.Linear layout. A slice of K of the rows is transposed into [k][16] vectors; each weight
// element is then broadcast straight from memory into an FMA with the vector of its k, so the weights need no
// packing and no horizontal sums are left at the end. Compiled once per ISA.
#pragma once
#include <algorithm>
#include <cstdint>

#include "cpu/gemm_core.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {

constexpr int kLanes = 16;                 // rows per transposed vector
constexpr int64_t kLaneKBlock = 256;       // K per pass: the pass's 16 KB of transposed rows stay in L1
constexpr int kLaneGroup = 8;              // weight rows per pass (two accumulators each)

#if defined(__AVX512F__)
// dst[(k - k_begin) * 16 + t] = rows[t][k] for k in [k_begin, k_end) and t < m; lanes t >= m are zero.
inline void transpose_rows(const float* const* rows, int m, int64_t k_begin, int64_t k_end, float* dst) {
  __m512 r[kLanes];
  for (int64_t k = k_begin; k < k_end; k += kLanes) {
    const int kn = static_cast<int>(std::min<int64_t>(kLanes, k_end - k));
    for (int t = 0; t < kLanes; ++t) r[t] = t < m ? load_floats(rows[t] + k, kn) : _mm512_setzero_ps();
    transpose16(r);
    for (int j = 0; j < kn; ++j) _mm512_storeu_ps(dst + (k - k_begin + j) * kLanes, r[j]);
  }
}

// lanes[g * 16 + t] (+)= sum over k < kn of w[g * ldw + k] * a_t[k * 16 + t] for g < G.
// Not inlined: inside a caller's loops GCC tends to spill the 2 G accumulators.
template <int G>
__attribute__((noinline)) void lane_rows(const float* a_t, const float* w, int64_t ldw, int64_t kn, float* lanes,
                                         bool accumulate) {
  __m512 even[G], odd[G];
  const float* rows[G];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    even[g] = accumulate ? _mm512_loadu_ps(lanes + g * kLanes) : _mm512_setzero_ps();
    odd[g] = _mm512_setzero_ps();
    rows[g] = w + g * ldw;
  }
  int64_t k = 0;
  for (; k + 2 <= kn; k += 2) {
    const __m512 a0 = _mm512_loadu_ps(a_t + k * kLanes), a1 = _mm512_loadu_ps(a_t + (k + 1) * kLanes);
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      even[g] = _mm512_fmadd_ps(_mm512_set1_ps(rows[g][k]), a0, even[g]);
      odd[g] = _mm512_fmadd_ps(_mm512_set1_ps(rows[g][k + 1]), a1, odd[g]);
    }
  }
  if (k < kn) {
    const __m512 a0 = _mm512_loadu_ps(a_t + k * kLanes);
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) even[g] = _mm512_fmadd_ps(_mm512_set1_ps(rows[g][k]), a0, even[g]);
  }
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) _mm512_storeu_ps(lanes + g * kLanes, _mm512_add_ps(even[g], odd[g]));
}

inline void lane_rows_any(int g, const float* a_t, const float* w, int64_t ldw, int64_t kn, float* lanes,
                          bool accumulate) {
  switch (g) {
#define ZAYA_RT_LANE_CASE(N) \
  case N: return lane_rows<N>(a_t, w, ldw, kn, lanes, accumulate);
    ZAYA_RT_LANE_CASE(1) ZAYA_RT_LANE_CASE(2) ZAYA_RT_LANE_CASE(3) ZAYA_RT_LANE_CASE(4)
    ZAYA_RT_LANE_CASE(5) ZAYA_RT_LANE_CASE(6) ZAYA_RT_LANE_CASE(7) ZAYA_RT_LANE_CASE(8)
#undef ZAYA_RT_LANE_CASE
    default: return;
  }
}

// sums[t * (c1 - c0) + c - c0] = <a_t, w_c> for the m (<= 16) rows a_t, each K long, and c in [c0, c1) of
// w [N][K]; lanes holds 16 * (c1 - c0) floats of scratch. Each K pass transposes its slice of the rows into a
// private 16 KB block first.
inline void lane_columns(const float* const* rows, int m, const float* w, int64_t K, int64_t c0, int64_t c1,
                         float* lanes, float* sums) {
  const int64_t nc = c1 - c0;
  alignas(64) float block[kLaneKBlock * kLanes];
  if (K == 0) std::fill(lanes, lanes + nc * kLanes, 0.f);
  for (int64_t k0 = 0; k0 < K; k0 += kLaneKBlock) {
    const int64_t k1 = std::min(K, k0 + kLaneKBlock);
    if (nc > 0) transpose_rows(rows, m, k0, k1, block);
    for (int64_t n = c0; n < c1; n += kLaneGroup)
      lane_rows_any(static_cast<int>(std::min<int64_t>(kLaneGroup, c1 - n)), block, w + n * K + k0, K, k1 - k0,
                    lanes + (n - c0) * kLanes, k0 > 0);
  }
  for (int t = 0; t < m; ++t)
    for (int64_t c = 0; c < nc; ++c) sums[t * nc + c] = lanes[c * kLanes + t];
}
#endif

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
