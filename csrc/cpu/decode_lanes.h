// "Lane order" for the decode kernels (AVX-512; compiled once per ISA): a row of 16-bit or fp32 values read as
// 32-element blocks, each widened in registers to two fp32 vectors. A bf16 block becomes its even elements, then
// its odd ones (one load, a shift and a mask: no shuffles); fp16 and fp32 blocks keep their order. Operands that
// meet such a row in a dot product or an axpy are stored in the same order, which the sum does not care about.
#pragma once
#include <cstdint>
#include <type_traits>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu/numeric.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {

#if defined(__AVX512F__)
// Elements [32 c, 32 c + 32) of row as two fp32 vectors in lane order.
template <typename T> inline void load_lanes(const T* row, int c, __m512& lo, __m512& hi) {
  if constexpr (std::is_same_v<T, bf16>) {
    const __m512i w = _mm512_loadu_si512(row + 32 * c);
    lo = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    hi = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
  } else if constexpr (std::is_same_v<T, f16>) {
    lo = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * c)));
    hi = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * c + 16)));
  } else {
    lo = _mm512_loadu_ps(row + 32 * c);
    hi = _mm512_loadu_ps(row + 32 * c + 16);
  }
}

// dst[0, d) = scale * src[0, d) in lane order (d a multiple of 32).
template <typename T> inline void row_to_lanes(const T* src, int64_t d, float scale, float* dst) {
  const __m512 s = _mm512_set1_ps(scale);
  for (int c = 0; c < d / 32; ++c) {
    __m512 lo, hi;
    load_lanes(src, c, lo, hi);
    _mm512_storeu_ps(dst + 32 * c, _mm512_mul_ps(lo, s));
    _mm512_storeu_ps(dst + 32 * c + 16, _mm512_mul_ps(hi, s));
  }
}

// dst[0, 32) = a0 b0 a1 b1 ... a15 b15.
inline void store_interleaved(__m512 a, __m512 b, float* dst) {
  const __m512i first = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i second = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  _mm512_storeu_ps(dst, _mm512_permutex2var_ps(a, first, b));
  _mm512_storeu_ps(dst + 16, _mm512_permutex2var_ps(a, second, b));
}

// dst[0, d) = src[0, d) back in element order (the inverse of row_to_lanes for storage type T).
template <typename T> inline void lanes_to_row(const float* src, int64_t d, float* dst) {
  for (int c = 0; c < d / 32; ++c) {
    const __m512 lo = _mm512_loadu_ps(src + 32 * c), hi = _mm512_loadu_ps(src + 32 * c + 16);
    if constexpr (std::is_same_v<T, bf16>) {
      store_interleaved(lo, hi, dst + 32 * c);
    } else {
      _mm512_storeu_ps(dst + 32 * c, lo);
      _mm512_storeu_ps(dst + 32 * c + 16, hi);
    }
  }
}

// Rows [n][K] of fp32 values (K a multiple of 32) rearranged in place into the lane order of storage type T.
template <typename T> inline void floats_to_lanes(float* rows, int64_t n, int64_t K) {
  if constexpr (std::is_same_v<T, bf16>) {
    const __m512i evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odds = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for (int64_t i = 0; i < n * K; i += 32) {
      const __m512 a = _mm512_loadu_ps(rows + i), b = _mm512_loadu_ps(rows + i + 16);
      _mm512_storeu_ps(rows + i, _mm512_permutex2var_ps(a, evens, b));
      _mm512_storeu_ps(rows + i + 16, _mm512_permutex2var_ps(a, odds, b));
    }
  }
}
#endif

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
