// The CCA grouped conv for decode-sized inputs (AVX-512; compiled once per ISA): dot products of a few window
// rows with conv1's weight rows read in their storage type and widened in registers, so a call neither converts
// nor packs the weights.
#pragma once
#include <cstdint>

#include "cpu/decode_lanes.h"
#include "cpu/gemm_core.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {

#if defined(__AVX512F__)
// Window rows per tile; each tile meets 16 / M weight rows, so that its 16 sums reduce in one transposing tree.
template <int M> constexpr int kConvTileWeights = 16 / M;

// out[m * G + i] = <a_m, w_i> for M rows a_m (a + m * K, fp32 in the lane order of W) and G = 16 / M weight rows
// w_i (w + i * K, storage type W); K is a multiple of 32.
template <typename W, int M>
inline void conv_dot_tile(const float* a, const W* w, int64_t K, float* out) {
  constexpr int G = kConvTileWeights<M>;
  __m512 acc[M * G];
  for (int i = 0; i < M * G; ++i) acc[i] = _mm512_setzero_ps();
  for (int c = 0; c < K / 32; ++c) {
    __m512 alo[M], ahi[M];
    for (int m = 0; m < M; ++m) {
      alo[m] = _mm512_loadu_ps(a + m * K + 32 * c);
      ahi[m] = _mm512_loadu_ps(a + m * K + 32 * c + 16);
    }
    for (int i = 0; i < G; ++i) {
      __m512 lo, hi;
      load_lanes(w + i * K, c, lo, hi);
      for (int m = 0; m < M; ++m) {
        acc[m * G + i] = _mm512_fmadd_ps(alo[m], lo, acc[m * G + i]);
        acc[m * G + i] = _mm512_fmadd_ps(ahi[m], hi, acc[m * G + i]);
      }
    }
  }
  hsum_vectors<M * G>(acc, out);
}

// Whether conv_rows takes these sizes: whole 32-element blocks per window row, whole 16-row weight groups.
inline bool conv_rows_take(int64_t d, int64_t K) { return d % 16 == 0 && K % 32 == 0; }

// Asks for bytes [0, n) of p in L2: a decode step finds the weights evicted by the layers in between, and
// sequential rows alone keep too few misses in flight.
inline void prefetch_l2(const void* p, int64_t n) {
  for (int64_t off = 0; off < n; off += 64) __builtin_prefetch(static_cast<const char*>(p) + off, 0, 2);
}

// y[r * d + c] = bias[c] + <arows_r, w_c> for n window rows (arows [n][K] fp32 in element order; rearranged in
// place) and the d weight rows of w ([d][K], storage type W). next_w: the weights of the caller's next call (or
// null), requested into L2 meanwhile.
template <typename W>
void conv_rows(float* arows, int64_t n, const W* w, const W* next_w, const float* bias, int64_t d, int64_t K,
               float* y) {
  prefetch_l2(w, d * K * static_cast<int64_t>(sizeof(W)));
  if (next_w != nullptr) prefetch_l2(next_w, d * K * static_cast<int64_t>(sizeof(W)));
  floats_to_lanes<W>(arows, n, K);
  float out[16];
  for (int64_t r0 = 0; r0 < n;) {
    const int m = n - r0 >= 4 ? 4 : (n - r0 >= 2 ? 2 : 1);
    const int g = 16 / m;
    for (int64_t c0 = 0; c0 < d; c0 += g) {
      const float* a = arows + r0 * K;
      const W* wc = w + c0 * K;
      if (m == 4) conv_dot_tile<W, 4>(a, wc, K, out);
      else if (m == 2) conv_dot_tile<W, 2>(a, wc, K, out);
      else conv_dot_tile<W, 1>(a, wc, K, out);
      for (int i = 0; i < m; ++i)
        for (int c = 0; c < g; ++c) y[(r0 + i) * d + c0 + c] = bias[c0 + c] + out[i * g + c];
    }
    r0 += m;
  }
}
#endif

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
