// Register-tiled GEMM building blocks for the CPU kernels, compiled once per ISA.
//
// C tile [MR x NR] = A panel . B panel^T over K, with A and B packed so that the micro-kernel streams both:
//   packed A panel: [Kp][MR] entries, packed B panel: [Kp][NR] entries.
// Two packing modes: BF16 (entries are bf16 pairs along K, consumed by AVX512-BF16 vdpbf16ps; Kp = K/2) and
// F32 (entries are floats; Kp = K). Packers read strided (and optionally row-gathered) sources, so one
// micro-kernel serves A.B^T, A.B and A^T.B.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu/gemm_shape.h"
#include "cpu/numeric.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {

constexpr int kMR = kGemmMR;
constexpr int kNR = kGemmNR;

#if defined(__AVX512BF16__)
constexpr bool kHasBf16Dot = true;
#else
constexpr bool kHasBf16Dot = false;
#endif

// Packing mode chosen from the source dtype: bf16 sources use bf16 pairs where the ISA has vdpbf16ps.
template <typename T> struct PackMode {
  static constexpr bool bf16 = false;
  using Entry = float;
  static constexpr int kPerEntry = 1;
};
template <> struct PackMode<bf16> {
  static constexpr bool bf16 = kHasBf16Dot;
  using Entry = std::conditional_t<kHasBf16Dot, uint32_t, float>;
  static constexpr int kPerEntry = kHasBf16Dot ? 2 : 1;
};

template <typename T> inline int64_t packed_k(int64_t K) {
  return (K + PackMode<T>::kPerEntry - 1) / PackMode<T>::kPerEntry;
}

// A strided 2-D source: element (r, k) at base + row(r) * row_stride + k * col_stride, where row(r) is
// rows[r] when a gather list is given; a negative rows[r] stands for a row of zeros.
template <typename T> struct Source {
  const T* base;
  int64_t row_stride, col_stride;
  const int32_t* rows = nullptr;
  inline const T* row(int64_t r) const {
    if (!rows) return base + r * row_stride;
    return rows[r] < 0 ? nullptr : base + rows[r] * row_stride;
  }
};

// Packs `count` (<= LANES) source rows starting at r0, over K, into [Kp][LANES] entries (zero padded).
template <int LANES, typename T>
void pack_rows(const Source<T>& src, int64_t r0, int count, int64_t K, typename PackMode<T>::Entry* dst) {
  using Entry = typename PackMode<T>::Entry;
  const int64_t kp = packed_k<T>(K);
  for (int i = 0; i < LANES; ++i) {
    const T* row = i < count ? src.row(r0 + i) : nullptr;
    if (row == nullptr) {
      for (int64_t q = 0; q < kp; ++q) dst[q * LANES + i] = Entry{};
      continue;
    }
    const int64_t cs = src.col_stride;
    if constexpr (PackMode<T>::bf16) {
      const uint16_t* bits = reinterpret_cast<const uint16_t*>(row);
      int64_t q = 0;
      for (; 2 * q + 1 < K; ++q)
        dst[q * LANES + i] = uint32_t(bits[2 * q * cs]) | (uint32_t(bits[(2 * q + 1) * cs]) << 16);
      if (q < kp) dst[q * LANES + i] = uint32_t(bits[2 * q * cs]);
    } else {
      for (int64_t q = 0; q < K; ++q) dst[q * LANES + i] = load(row, q * cs);
    }
  }
}

// tile[MR][NR] = sum over Kp of A panel x B panel.
template <typename T>
void micro_kernel(int64_t kp, const typename PackMode<T>::Entry* pa, const typename PackMode<T>::Entry* pb,
                  float* tile) {
#if defined(__AVX512F__)
  __m512 acc[kMR][2];
#pragma GCC unroll 12
  for (int r = 0; r < kMR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t q = 0; q < kp; ++q) {
    if constexpr (PackMode<T>::bf16) {
#if defined(__AVX512BF16__)
      const __m512bh b0 = (__m512bh)_mm512_loadu_si512(pb + q * kNR);
      const __m512bh b1 = (__m512bh)_mm512_loadu_si512(pb + q * kNR + 16);
#pragma GCC unroll 12
      for (int r = 0; r < kMR; ++r) {
        const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(pa[q * kMR + r]));
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
      }
#endif
    } else {
      const __m512 b0 = _mm512_loadu_ps(pb + q * kNR);
      const __m512 b1 = _mm512_loadu_ps(pb + q * kNR + 16);
#pragma GCC unroll 12
      for (int r = 0; r < kMR; ++r) {
        const __m512 a = _mm512_set1_ps(pa[q * kMR + r]);
        acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
      }
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < kMR; ++r) {
    _mm512_storeu_ps(tile + r * kNR, acc[r][0]);
    _mm512_storeu_ps(tile + r * kNR + 16, acc[r][1]);
  }
#else
  static_assert(!PackMode<T>::bf16, "bf16 pairs need AVX512-BF16");
  float acc[kMR][kNR] = {};
  for (int64_t q = 0; q < kp; ++q) {
    const float* b = pb + q * kNR;
    for (int r = 0; r < kMR; ++r) {
      const float a = pa[q * kMR + r];
#pragma omp simd
      for (int c = 0; c < kNR; ++c) acc[r][c] += a * b[c];
    }
  }
  std::memcpy(tile, acc, sizeof(acc));
#endif
}

// Dot products of `m` (<= 4) rows of A with one row of B, both contiguous along K: the decode path, which
// reads each weight row once and needs no packing. out[i] = <A_i, B>.
template <typename T>
inline void dot_rows(const T* const* a_rows, int m, const T* b, int64_t K, float* out) {
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  int64_t k = 0;
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, bf16>) {
    __m512 v[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (; k + 32 <= K; k += 32) {
      const __m512bh bv = (__m512bh)_mm512_loadu_si512(b + k);
      for (int i = 0; i < m; ++i) v[i] = _mm512_dpbf16_ps(v[i], (__m512bh)_mm512_loadu_si512(a_rows[i] + k), bv);
    }
    for (int i = 0; i < m; ++i) acc[i] = _mm512_reduce_add_ps(v[i]);
  }
#endif
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    __m512 v[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (; k + 16 <= K; k += 16) {
      const __m512 bv = _mm512_loadu_ps(b + k);
      for (int i = 0; i < m; ++i) v[i] = _mm512_fmadd_ps(_mm512_loadu_ps(a_rows[i] + k), bv, v[i]);
    }
    for (int i = 0; i < m; ++i) acc[i] = _mm512_reduce_add_ps(v[i]);
  }
#endif
  for (int i = 0; i < m; ++i) {
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t q = k; q < K; ++q) s += load(a_rows[i], q) * load(b, q);
    out[i] = acc[i] + s;
  }
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
