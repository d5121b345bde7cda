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
// vdpbf16ps, bf16 pairs. Which one is faster depends on the CPU (bf16_dot in moe.cpp measures it once).
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

#if defined(__AVX512F__)
// In-place 16x16 transpose: afterwards r[c][i] is the old r[i][c].
inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4j + m], 128-bit lane L: column 4L + m of rows 4j..4j+3.
  for (int j = 0; j < 4; ++j) {
    const __m512d a = _mm512_castps_pd(t[4 * j]), b = _mm512_castps_pd(t[4 * j + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * j + 2]), d = _mm512_castps_pd(t[4 * j + 3]);
    u[4 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    u[4 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    u[4 * j + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    u[4 * j + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x44), v1 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xEE);
    const __m512 w0 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x44);
    const __m512 w1 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xEE);
    r[m] = _mm512_shuffle_f32x4(v0, w0, 0x88);
    r[4 + m] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
    r[8 + m] = _mm512_shuffle_f32x4(v1, w1, 0x88);
    r[12 + m] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
  }
}

// n (<= 16) consecutive elements of a row as floats, zeros beyond n.
template <typename T> inline __m512 load_floats(const T* p, int n) {
  const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_maskz_loadu_ps(m, p);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(m, p);
    if constexpr (std::is_same_v<T, bf16>) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else return _mm512_cvtph_ps(h);
  }
}

// pack_rows for float entries from rows contiguous along K: 16x16 blocks transposed in registers.
template <int LANES, typename T>
void pack_rows_f32_contiguous(const T* const* rows, int64_t K, float* dst) {
  __m512 r[16];
  for (int64_t q0 = 0; q0 < K; q0 += 16) {
    const int kn = static_cast<int>(std::min<int64_t>(16, K - q0));
    for (int i0 = 0; i0 < LANES; i0 += 16) {
      const int lanes = std::min(16, LANES - i0);
      for (int i = 0; i < 16; ++i)
        r[i] = i < lanes && rows[i0 + i] != nullptr ? load_floats(rows[i0 + i] + q0, kn) : _mm512_setzero_ps();
      transpose16(r);
      const __mmask16 lane_mask = static_cast<__mmask16>((1u << lanes) - 1u);
      for (int k = 0; k < kn; ++k) _mm512_mask_storeu_ps(dst + (q0 + k) * LANES + i0, lane_mask, r[k]);
    }
  }
}

#if defined(__AVX512BF16__)
// pack_rows for bf16 pairs from rows contiguous along K: each row's (k, k + 1) pair is already one 32-bit word,
// so a 16x16 transpose of words packs 16 pairs of 16 rows (an odd K's last pair gets a zero high half).
template <int LANES>
void pack_rows_bf16_pairs_contiguous(const bf16* const* rows, int64_t K, uint32_t* dst) {
  __m512 r[16];
  const int64_t kp = (K + 1) / 2;
  for (int64_t q0 = 0; q0 < kp; q0 += 16) {
    const int kn = static_cast<int>(std::min<int64_t>(16, kp - q0));
    const int64_t elems = std::min<int64_t>(32, K - 2 * q0);
    const __mmask32 m = static_cast<__mmask32>(elems >= 32 ? 0xffffffffu : (1u << elems) - 1u);
    for (int i0 = 0; i0 < LANES; i0 += 16) {
      const int lanes = std::min(16, LANES - i0);
      for (int i = 0; i < 16; ++i)
        r[i] = i < lanes && rows[i0 + i] != nullptr
                   ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(m, rows[i0 + i] + 2 * q0))
                   : _mm512_setzero_ps();
      transpose16(r);
      const __mmask16 lane_mask = static_cast<__mmask16>((1u << lanes) - 1u);
      for (int k = 0; k < kn; ++k)
        _mm512_mask_storeu_ps(reinterpret_cast<float*>(dst + (q0 + k) * LANES + i0), lane_mask, r[k]);
    }
  }
}

// pack_rows for bf16 pairs from a source whose consecutive rows are adjacent in memory (row_stride 1, e.g. a
// transposed weight or dY^T): the pair (k, k + 1) of 16 rows is two 16-element loads, widened and merged.
template <int LANES>
void pack_rows_bf16_pairs_row_adjacent(const bf16* base, int count, int64_t K, int64_t cs, uint32_t* dst) {
  const int64_t kp = (K + 1) / 2;
  for (int64_t q = 0; q < kp; ++q) {
    const bf16* lo_row = base + 2 * q * cs;
    const bf16* hi_row = lo_row + cs;
    const bool has_hi = 2 * q + 1 < K;
#pragma GCC unroll 4
    for (int i0 = 0; i0 < LANES; i0 += 16) {
      const int lanes = std::max(0, std::min(16, count - i0));
      const __mmask16 m = static_cast<__mmask16>((1u << lanes) - 1u);
      const __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, lo_row + i0));
      const __m512i hi = has_hi ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, hi_row + i0)) : _mm512_setzero_si512();
      const __m512i pair = _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
      if constexpr (LANES % 16 == 0) _mm512_storeu_si512(dst + q * LANES + i0, pair);
      else _mm512_mask_storeu_epi32(dst + q * LANES + i0, static_cast<__mmask16>((1u << std::min(16, LANES - i0)) - 1u), pair);
    }
  }
}
#endif
#endif

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
#if defined(__AVX512F__)
  if constexpr (!PackMode<T, Dot>::bf16) {
    if (cs == 1) return pack_rows_f32_contiguous<LANES, T>(rows, K, dst);
  }
#endif
#if defined(__AVX512BF16__)
  if constexpr (PackMode<T, Dot>::bf16) {
    if (cs == 1) return pack_rows_bf16_pairs_contiguous<LANES>(rows, K, dst);
    if (src.row_stride == 1 && src.rows == nullptr) return pack_rows_bf16_pairs_row_adjacent<LANES>(src.base + r0, count, K, cs, dst);
  }
#endif
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

// Dot products of M rows of A with G rows of B, all contiguous along K: the decode path, which reads each
// weight row once and needs no packing of B. Each B vector feeds M accumulators and each A vector G of
// them. A comes interleaved ([K / kDotStep][M][kDotStep], see pack_dot_rows) so that its M rows are one
// stream: rows a power-of-two apart would share L1 sets. On AVX-512, bf16 A rows are interleaved as floats,
// each step's 32 elements stored evens first, then odds, to meet B's bf16 pairs widened in registers (two
// fp32 FMAs per pair run faster than one vdpbf16ps where the latter is half-rate, and the sum over K does
// not care about the order). The K % kDotStep tail is read from a_rows.
// Elements per step: two vectors of each fp32 row (one unrolled pass halves the loop overhead), one bf16 pair vector.
template <typename T> constexpr int64_t kDotStep = 32;
template <typename T> struct DotPack { using A = T; };
#if defined(__AVX512F__)
template <> struct DotPack<bf16> { using A = float; };
#endif
template <typename T> using DotA = typename DotPack<T>::A;  // element type of the interleaved A copy

#if defined(__AVX512F__)
// sums[i] = sum of the lanes of v[i] for i < N: a transposing add tree (about 3 instructions per vector
// instead of a full horizontal reduction each).
template <int N> inline void hsum_vectors(const __m512* v, float* sums) {
  if constexpr (N <= 4) {
    for (int i = 0; i < N; ++i) sums[i] = _mm512_reduce_add_ps(v[i]);
    return;
  }
  for (int base = 0; base < N; base += 16) {
    const int n = N - base < 16 ? N - base : 16;
    __m512 t[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) t[i] = i < n ? v[base + i] : _mm512_setzero_ps();
    __m512 u[8], w[4];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i)  // per 128-bit lane: [a, b, a, b] partials of t[2i], t[2i + 1]
      u[i] = _mm512_add_ps(_mm512_unpacklo_ps(t[2 * i], t[2 * i + 1]), _mm512_unpackhi_ps(t[2 * i], t[2 * i + 1]));
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {  // per 128-bit lane: partials of t[4i .. 4i + 3]
      const __m512d c = _mm512_castps_pd(u[2 * i]), d = _mm512_castps_pd(u[2 * i + 1]);
      w[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(c, d)), _mm512_castpd_ps(_mm512_unpackhi_pd(c, d)));
    }
    const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x44), _mm512_shuffle_f32x4(w[0], w[1], 0xEE));
    const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(w[2], w[3], 0x44), _mm512_shuffle_f32x4(w[2], w[3], 0xEE));
    const __m512 r = _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xDD));
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, r);
    for (int i = 0; i < n; ++i) sums[base + i] = lanes[i];
  }
}
#endif

// out[i * G + g] = <A_i, B_g> over k in [k0, k1); a_chunk is the chunk's interleaved copy (whole K), k0 a
// multiple of kDotStep. Rows of B hold K elements; the rows that follow them in memory are prefetched.
template <typename T, int M, int G>
inline void dot_block(const DotA<T>* a_chunk, const T* const* a_rows, const T* const* b_rows, int64_t K,
                      int64_t k0, int64_t k1, float* out) {
  constexpr int64_t step = kDotStep<T>;
  int64_t k = k0;
  float acc[M * G];
  for (int i = 0; i < M * G; ++i) acc[i] = 0.f;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, bf16>) {
    __m512 v[M * G];
#pragma GCC unroll 24
    for (int i = 0; i < M * G; ++i) v[i] = _mm512_setzero_ps();
    for (const DotA<T>* pa = a_chunk + k0 * M; k + step <= k1; k += step, pa += M * step) {
      if constexpr (std::is_same_v<T, float>) {
#pragma GCC unroll 2
        for (int h = 0; h < step / 16; ++h) {
          __m512 bv[G];
#pragma GCC unroll 3
          for (int g = 0; g < G; ++g) {
            bv[g] = _mm512_loadu_ps(b_rows[g] + k + 16 * h);
            // Weights are usually whole matrices: pull in the rows after these (the next call's) meanwhile.
            _mm_prefetch(reinterpret_cast<const char*>(b_rows[g] + G * K + k + 16 * h), _MM_HINT_T0);
          }
#pragma GCC unroll 8
          for (int i = 0; i < M; ++i) {
            __m512 av = _mm512_loadu_ps(pa + i * step + 16 * h);
            asm("" : "+v"(av));  // one load per A vector: folded into each FMA it would bind the load ports
#pragma GCC unroll 3
            for (int g = 0; g < G; ++g) v[i * G + g] = _mm512_fmadd_ps(av, bv[g], v[i * G + g]);
          }
        }
      } else {
        __m512 even[G], odd[G];
#pragma GCC unroll 3
        for (int g = 0; g < G; ++g) {
          const __m512i pairs = _mm512_loadu_si512(b_rows[g] + k);
          _mm_prefetch(reinterpret_cast<const char*>(b_rows[g] + G * K + k), _MM_HINT_T0);
          even[g] = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
          odd[g] = _mm512_castsi512_ps(_mm512_and_si512(pairs, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
        }
#pragma GCC unroll 8
        for (int i = 0; i < M; ++i) {
          __m512 ae = _mm512_loadu_ps(pa + i * step);
          asm("" : "+v"(ae));
#pragma GCC unroll 3
          for (int g = 0; g < G; ++g) v[i * G + g] = _mm512_fmadd_ps(ae, even[g], v[i * G + g]);
          __m512 ao = _mm512_loadu_ps(pa + i * step + 16);
          asm("" : "+v"(ao));
#pragma GCC unroll 3
          for (int g = 0; g < G; ++g) v[i * G + g] = _mm512_fmadd_ps(ao, odd[g], v[i * G + g]);
        }
      }
    }
    hsum_vectors<M * G>(v, acc);
  }
#endif
  for (int i = 0; i < M; ++i)
    for (int g = 0; g < G; ++g) {
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t q = k; q < k1; ++q) s += load(a_rows[i], q) * load(b_rows[g], q);
      out[i * G + g] = acc[i * G + g] + s;
    }
}

constexpr int kDotMaxRows = 16;  // jobs with at most this many rows use dot products
constexpr int kDotChunkRows = 8;  // A rows per dot_block call
constexpr int kDotMaxB = 3;       // B rows per dot_block call
// Rows of the float tile the driver hands to epilogues (the dot path may deliver more rows than kMR).
constexpr int kTileRows = kDotMaxRows > kMR ? kDotMaxRows : kMR;

// K elements per pass of the dot path for m rows of A: a multiple of kDotStep whose slice of the interleaved
// A copy (about 32 KiB) stays in L1 while every B row of the task streams past it.
template <typename T> inline int64_t dot_k_block(int64_t m, int64_t K) {
  constexpr int64_t step = kDotStep<T>, budget = 32 * 1024;
  const int64_t kb = std::max<int64_t>(step, budget / (std::max<int64_t>(m, 1) * sizeof(DotA<T>)) / step * step);
  return std::max<int64_t>(1, std::min(kb, K));
}

// Rows per dot_block call when m rows are split into balanced chunks of at most kDotChunkRows.
inline int dot_chunk_rows(int m, int chunk) {
  const int chunks = (m + kDotChunkRows - 1) / kDotChunkRows;
  return m / chunks + (chunk < m % chunks ? 1 : 0);
}

// Interleaves m rows of A for dot_rows: each chunk of rows is stored as [K / step][rows][step] (for bf16 on
// AVX-512: floats, evens then odds within a step). dst holds m * K entries. Only the steps in [k_begin, k_end)
// (multiples of kDotStep) are written, so threads can share the packing of one copy.
template <typename T>
inline void pack_dot_rows(const T* const* a_rows, int m, int64_t K, DotA<T>* dst, int64_t k_begin, int64_t k_end) {
  constexpr int64_t step = kDotStep<T>;
  const int64_t kfull = K / step * step;
  k_end = std::min(k_end, kfull);
  for (int i0 = 0, c = 0; i0 < m; i0 += dot_chunk_rows(m, c++)) {
    const int rows = dot_chunk_rows(m, c);
    for (int64_t k = k_begin; k < k_end; k += step)
      for (int i = 0; i < rows; ++i) {
        DotA<T>* to = dst + k * rows + i * step;
        if constexpr (std::is_same_v<DotA<T>, T>) {
          std::memcpy(to, a_rows[i0 + i] + k, step * sizeof(T));
        } else {
          for (int64_t j = 0; j < step / 2; ++j) {
            to[j] = load(a_rows[i0 + i], k + 2 * j);
            to[step / 2 + j] = load(a_rows[i0 + i], k + 2 * j + 1);
          }
        }
      }
    dst += kfull * rows;
  }
}
template <typename T>
inline void pack_dot_rows(const T* const* a_rows, int m, int64_t K, DotA<T>* dst) {
  pack_dot_rows(a_rows, m, K, dst, 0, K);
}

template <typename T, int G>
inline void dot_chunk(const DotA<T>* a_chunk, const T* const* a_rows, int m, const T* const* b_rows, int64_t K,
                      int64_t k0, int64_t k1, float* out) {
  switch (m) {
#define ZAYA_RT_DOT_CASE(N) \
  case N: return dot_block<T, N, G>(a_chunk, a_rows, b_rows, K, k0, k1, out);
    ZAYA_RT_DOT_CASE(1) ZAYA_RT_DOT_CASE(2) ZAYA_RT_DOT_CASE(3) ZAYA_RT_DOT_CASE(4)
    ZAYA_RT_DOT_CASE(5) ZAYA_RT_DOT_CASE(6) ZAYA_RT_DOT_CASE(7) ZAYA_RT_DOT_CASE(8)
#undef ZAYA_RT_DOT_CASE
    default: return;
  }
}

// out[i * g + j] = <A_i, B_j> over k in [k0, k1) (k0 a multiple of kDotStep) for m <= kDotMaxRows rows of A
// (also given packed by pack_dot_rows over all K) and g <= kDotMaxB rows of B.
template <typename T>
inline void dot_rows(const DotA<T>* a_packed, const T* const* a_rows, int m, const T* const* b_rows, int g,
                     int64_t K, int64_t k0, int64_t k1, float* out) {
  const int64_t kfull = K / kDotStep<T> * kDotStep<T>;
  float part[kDotChunkRows * kDotMaxB];
  for (int i0 = 0, c = 0; i0 < m; ++c) {
    const int rows = dot_chunk_rows(m, c);
    if (g == 3) dot_chunk<T, 3>(a_packed, a_rows + i0, rows, b_rows, K, k0, k1, part);
    else if (g == 2) dot_chunk<T, 2>(a_packed, a_rows + i0, rows, b_rows, K, k0, k1, part);
    else dot_chunk<T, 1>(a_packed, a_rows + i0, rows, b_rows, K, k0, k1, part);
    for (int i = 0; i < rows * g; ++i) out[i0 * g + i] = part[i];
    a_packed += kfull * rows;
    i0 += rows;
  }
}

// The same over all of K.
template <typename T>
inline void dot_rows(const DotA<T>* a_packed, const T* const* a_rows, int m, const T* const* b_rows, int g,
                     int64_t K, float* out) {
  dot_rows<T>(a_packed, a_rows, m, b_rows, g, K, 0, K, out);
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
