// Register-tiled GEMM building blocks for the CPU kernels, compiled once per ISA.
//
// C tile [MR x NR] = A panel . B panel^T over K, with A and B packed so that the micro-kernel streams both:
//   packed A panel: [Kp][MR] entries, packed B panel: [Kp][NR] entries.
// Two packing modes: BF16 (entries are bf16 pairs along K, consumed by AVX512-BF16 vdpbf16ps; Kp = K/2) and
// F32 (entries are floats; Kp = K). Packers read strided (and optionally row-gathered) sources, so one
// micro-kernel serves A.B^T, A.B and A^T.B.
#pragma once
#include <cstdint>
#include <algorithm>
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

// Packing mode: F32 (entries are floats, any source dtype) or, with Dot for bf16 sources on ISAs that have
// vdpbf16ps, bf16 pairs. Which one is faster depends on the CPU (see prefer_bf16_dot in moe.cpp).
template <typename T, bool Dot> struct PackMode {
  static constexpr bool bf16 = false;
  using Entry = float;
  static constexpr int kPerEntry = 1;
};
template <> struct PackMode<bf16, true> {
  static constexpr bool bf16 = kHasBf16Dot;
  using Entry = std::conditional_t<kHasBf16Dot, uint32_t, float>;
  static constexpr int kPerEntry = kHasBf16Dot ? 2 : 1;
};

template <typename T, bool Dot> inline int64_t packed_k(int64_t K) {
  return (K + PackMode<T, Dot>::kPerEntry - 1) / PackMode<T, Dot>::kPerEntry;
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
// Works in blocks of 16 packed entries so both the row reads and the interleaved writes stay in L1.
template <int LANES, typename T, bool Dot>
void pack_rows(const Source<T>& src, int64_t r0, int count, int64_t K, typename PackMode<T, Dot>::Entry* dst) {
  using Entry = typename PackMode<T, Dot>::Entry;
  constexpr int64_t kBlock = 16;
  const int64_t kp = packed_k<T, Dot>(K);
  const int64_t cs = src.col_stride;
  const T* rows[LANES];
  for (int i = 0; i < LANES; ++i) rows[i] = i < count ? src.row(r0 + i) : nullptr;
  for (int64_t q0 = 0; q0 < kp; q0 += kBlock) {
    const int64_t q1 = std::min(kp, q0 + kBlock);
    for (int i = 0; i < LANES; ++i) {
      const T* row = rows[i];
      if (row == nullptr) {
        for (int64_t q = q0; q < q1; ++q) dst[q * LANES + i] = Entry{};
        continue;
      }
      if constexpr (PackMode<T, Dot>::bf16) {
        const uint16_t* bits = reinterpret_cast<const uint16_t*>(row);
        for (int64_t q = q0; q < q1; ++q) {
          const uint32_t lo = bits[2 * q * cs];
          const uint32_t hi = 2 * q + 1 < K ? bits[(2 * q + 1) * cs] : 0u;
          dst[q * LANES + i] = lo | (hi << 16);
        }
      } else {
        for (int64_t q = q0; q < q1; ++q) dst[q * LANES + i] = load(row, q * cs);
      }
    }
  }
}

// tile[MR][NR] (+)= sum over kp entries of A panel x B panel (accumulating onto tile when `accumulate`).
template <typename T, bool Dot>
void micro_kernel(int64_t kp, const typename PackMode<T, Dot>::Entry* pa, const typename PackMode<T, Dot>::Entry* pb,
                  float* tile, bool accumulate) {
#if defined(__AVX512F__)
  constexpr int NZ = kNR / 16;
  __m512 acc[kMR][NZ];
#pragma GCC unroll 16
  for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
    for (int z = 0; z < NZ; ++z) acc[r][z] = accumulate ? _mm512_loadu_ps(tile + r * kNR + 16 * z) : _mm512_setzero_ps();
  for (int64_t q = 0; q < kp; ++q) {
    if constexpr (PackMode<T, Dot>::bf16) {
#if defined(__AVX512BF16__)
      __m512bh b[NZ];
#pragma GCC unroll 4
      for (int z = 0; z < NZ; ++z) b[z] = (__m512bh)_mm512_loadu_si512(pb + q * kNR + 16 * z);
#pragma GCC unroll 16
      for (int r = 0; r < kMR; ++r) {
        const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(pa[q * kMR + r]));
#pragma GCC unroll 4
        for (int z = 0; z < NZ; ++z) acc[r][z] = _mm512_dpbf16_ps(acc[r][z], a, b[z]);
      }
#endif
    } else {
      __m512 b[NZ];
#pragma GCC unroll 4
      for (int z = 0; z < NZ; ++z) b[z] = _mm512_loadu_ps(pb + q * kNR + 16 * z);
#pragma GCC unroll 16
      for (int r = 0; r < kMR; ++r) {
        const __m512 a = _mm512_set1_ps(pa[q * kMR + r]);
#pragma GCC unroll 4
        for (int z = 0; z < NZ; ++z) acc[r][z] = _mm512_fmadd_ps(a, b[z], acc[r][z]);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
    for (int z = 0; z < NZ; ++z) _mm512_storeu_ps(tile + r * kNR + 16 * z, acc[r][z]);
#else
  static_assert(!PackMode<T, Dot>::bf16, "bf16 pairs need AVX512-BF16");
  float acc[kMR][kNR] = {};
  if (accumulate) std::memcpy(acc, tile, sizeof(acc));
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

// Dot products of M rows of A with one row of B, both contiguous along K: the decode path, which reads each
// weight row once and needs no packing. out[i] = <A_i, B>.
template <typename T, int M>
inline void dot_rows_m(const T* const* a_rows, const T* b, int64_t K, float* out) {
  int64_t k = 0;
  float acc[M];
  for (int i = 0; i < M; ++i) acc[i] = 0.f;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> || (std::is_same_v<T, bf16> && kHasBf16Dot)) {
    constexpr int64_t step = std::is_same_v<T, float> ? 16 : 32;
    __m512 v[M];
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) v[i] = _mm512_setzero_ps();
    for (; k + step <= K; k += step) {
      if constexpr (std::is_same_v<T, float>) {
        const __m512 bv = _mm512_loadu_ps(b + k);
#pragma GCC unroll 16
        for (int i = 0; i < M; ++i) v[i] = _mm512_fmadd_ps(_mm512_loadu_ps(a_rows[i] + k), bv, v[i]);
      } else {
#if defined(__AVX512BF16__)
        const __m512bh bv = (__m512bh)_mm512_loadu_si512(b + k);
#pragma GCC unroll 16
        for (int i = 0; i < M; ++i)
          v[i] = _mm512_dpbf16_ps(v[i], (__m512bh)_mm512_loadu_si512(a_rows[i] + k), bv);
#endif
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) acc[i] = _mm512_reduce_add_ps(v[i]);
  }
#endif
  for (int i = 0; i < M; ++i) {
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t q = k; q < K; ++q) s += load(a_rows[i], q) * load(b, q);
    out[i] = acc[i] + s;
  }
}

constexpr int kDotMaxRows = 12;  // jobs with at most this many rows use dot products

template <typename T>
inline void dot_rows(const T* const* a_rows, int m, const T* b, int64_t K, float* out) {
  switch (m) {
#define ZAYA_RT_DOT_CASE(N) \
  case N: return dot_rows_m<T, N>(a_rows, b, K, out);
    ZAYA_RT_DOT_CASE(1) ZAYA_RT_DOT_CASE(2) ZAYA_RT_DOT_CASE(3) ZAYA_RT_DOT_CASE(4) ZAYA_RT_DOT_CASE(5)
    ZAYA_RT_DOT_CASE(6) ZAYA_RT_DOT_CASE(7) ZAYA_RT_DOT_CASE(8) ZAYA_RT_DOT_CASE(9) ZAYA_RT_DOT_CASE(10)
    ZAYA_RT_DOT_CASE(11) ZAYA_RT_DOT_CASE(12)
#undef ZAYA_RT_DOT_CASE
    default: return;
  }
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
