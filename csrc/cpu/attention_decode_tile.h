// Register tiles of the CPU decode attention (AVX-512, head dims 32/64/128/256; compiled once per ISA): K and V
// rows are read straight from the paged cache (bf16/fp16/fp32) and widened in registers (decode_lanes.h), so each
// row is loaded once per tile of query rows and never copied. Queries and outputs are held in lane order (a dot
// product or an axpy does not care); the output goes back to element order once, when written.
#pragma once
#include <cstdint>
#include <type_traits>

#include "cpu/attention_tile.h"
#include "cpu/decode_lanes.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {

#if defined(__AVX512F__)
// Head dims the register tiles take: d = 16 * ND with ND one of 2, 4, 8, 16.
inline bool decode_tiles_take(int64_t d) { return d == 32 || d == 64 || d == 128 || d == 256; }

// Queries of bf16 rows are kept as bf16 (the inputs' own values) and meet K rows in vdpbf16ps, whose products
// are exact and whose sums are fp32 like an FMA chain's; the softmax scale then multiplies the dot products.
template <typename T> constexpr bool kDecodeBf16Dot = std::is_same_v<T, bf16> && kHasBf16Dot;

// sc[r * ld + j] = scale * <q_r, k_j> for R query rows and the cnt keys k_rows[j]. q is [R][16 * ND] floats: fp32
// in lane order, or (kDecodeBf16Dot) each row's bf16 values at its start.
template <typename T, int ND, int R>
inline void decode_scores(const float* q, const T* const* k_rows, int64_t cnt, float scale, float* sc, int64_t ld) {
  static_assert(R >= 1 && R <= 4 && ND % 2 == 0, "rows per pass, whole 32-element blocks");
  alignas(16) float dots[4];
  const __m128 sv = _mm_set1_ps(scale);
#if defined(__AVX512BF16__)
  if constexpr (kDecodeBf16Dot<T>) {
    __m512bh qv[R][ND / 2];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < ND / 2; ++c) qv[r][c] = (__m512bh)_mm512_loadu_si512(q + r * 16 * ND + 16 * c);
    for (int64_t j = 0; j < cnt; ++j) {
      const T* kr = k_rows[j];
      __m512 acc[4];
      for (int r = 0; r < 4; ++r) acc[r] = _mm512_setzero_ps();
      for (int c = 0; c < ND / 2; ++c) {
        const __m512bh kv = (__m512bh)_mm512_loadu_si512(kr + 32 * c);
        for (int r = 0; r < R; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], qv[r][c], kv);
      }
      _mm_store_ps(dots, _mm_mul_ps(sv, hsum4(acc[0], acc[1], acc[2], acc[3])));
      for (int r = 0; r < R; ++r) sc[r * ld + j] = dots[r];
    }
    return;
  }
#endif
  __m512 qv[R][ND];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < ND; ++c) qv[r][c] = _mm512_loadu_ps(q + r * 16 * ND + 16 * c);
  for (int64_t j = 0; j < cnt; ++j) {
    const T* kr = k_rows[j];
    __m512 acc[4], acc2[4];  // the block's low and high halves: two FMA chains per row
    for (int r = 0; r < 4; ++r) acc[r] = acc2[r] = _mm512_setzero_ps();
    for (int c = 0; c < ND / 2; ++c) {
      __m512 lo, hi;
      load_lanes(kr, c, lo, hi);
      for (int r = 0; r < R; ++r) {
        acc[r] = _mm512_fmadd_ps(qv[r][2 * c], lo, acc[r]);
        acc2[r] = _mm512_fmadd_ps(qv[r][2 * c + 1], hi, acc2[r]);
      }
    }
    for (int r = 0; r < R; ++r) acc[r] = _mm512_add_ps(acc[r], acc2[r]);
    _mm_store_ps(dots, _mm_mul_ps(sv, hsum4(acc[0], acc[1], acc[2], acc[3])));
    for (int r = 0; r < R; ++r) sc[r * ld + j] = dots[r];
  }
}

// o_r = alpha_r * o_r + sum_j p[r * ld + j] * v_j for R rows (o [R][16 * ND], lane order) over keys j in
// [j0, j1) given by v_rows[j]; the R outputs stay in registers across the keys.
template <typename T, int ND, int R>
inline void decode_pv(const float* p, int64_t ld, const T* const* v_rows, int64_t j0, int64_t j1,
                      const float* alpha, float* o) {
  __m512 ov[R][ND];
  for (int r = 0; r < R; ++r) {
    const __m512 a = _mm512_set1_ps(alpha[r]);
    for (int c = 0; c < ND; ++c) ov[r][c] = _mm512_mul_ps(a, _mm512_loadu_ps(o + r * 16 * ND + 16 * c));
  }
  for (int64_t j = j0; j < j1; ++j) {
    const T* vr = v_rows[j];
    __m512 pj[R];
    for (int r = 0; r < R; ++r) pj[r] = _mm512_set1_ps(p[r * ld + j]);
    for (int c = 0; c < ND / 2; ++c) {
      __m512 lo, hi;
      load_lanes(vr, c, lo, hi);
      for (int r = 0; r < R; ++r) {
        ov[r][2 * c] = _mm512_fmadd_ps(pj[r], lo, ov[r][2 * c]);
        ov[r][2 * c + 1] = _mm512_fmadd_ps(pj[r], hi, ov[r][2 * c + 1]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < ND; ++c) _mm512_storeu_ps(o + r * 16 * ND + 16 * c, ov[r][c]);
}

// Query rows per register tile for 16 * ND columns: the R x ND outputs fill at most 16 registers.
template <int ND> constexpr int kDecodeTileRows = ND <= 4 ? 4 : 16 / ND;

// f(std::integral_constant<int, R>{}) for a tile of R rows, 1 <= R <= RT <= 4.
template <int RT, typename F> inline void with_tile_rows(int R, F&& f) {
  switch (R) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: if constexpr (RT >= 2) f(std::integral_constant<int, 2>{}); break;
    case 3: if constexpr (RT >= 3) f(std::integral_constant<int, 3>{}); break;
    default: if constexpr (RT >= 4) f(std::integral_constant<int, 4>{}); break;
  }
}
#endif

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
