// Building blocks of the CPU attention kernels (compiled once per ISA): the mask as a key range per query,
// packing of strided rows for the GEMM micro-kernel, and vectorised row loops (exp, dot, axpy).
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/attention_shape.h"
#include "cpu/epilogue.h"
#include "cpu/gemm_core.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {

// One sequence of a packed batch: its queries [q0, q0 + lq) and keys [k0, k0 + lk).
struct AttnSeq {
  int64_t q0, lq, k0, lk;
};

// Reads host-resident cu_seqlens (the CPU kernels' inputs live in host memory).
inline std::vector<AttnSeq> attn_sequences(const int32_t* cu_q, const int32_t* cu_k, int64_t batch) {
  std::vector<AttnSeq> seqs(batch);
  for (int64_t b = 0; b < batch; ++b)
    seqs[b] = {cu_q[b], cu_q[b + 1] - cu_q[b], cu_k[b], cu_k[b + 1] - cu_k[b]};
  return seqs;
}

// Keys [lo, hi) of a sequence with lk keys that a query at position pos may see.
struct KeyRange {
  int64_t lo, hi;
};
inline KeyRange attn_key_range(int64_t pos, int64_t lk, bool causal, int64_t window) {
  int64_t hi = causal ? std::min(lk, pos + 1) : lk;
  int64_t lo = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
  if (hi < lo) hi = lo;
  return {lo, hi};
}

// Packs up to LANES rows given by pointers (null = zero row), K elements each with column stride cs, into
// [packed_k(K)][LANES] entries: the layout micro_kernel streams.
template <int LANES, typename T, bool Dot>
void pack_row_ptrs(const T* const* rows, int64_t K, int64_t cs, typename PackMode<T, Dot>::Entry* dst) {
  using Entry = typename PackMode<T, Dot>::Entry;
  const int64_t kp = packed_k<T, Dot>(K);
  for (int i = 0; i < LANES; ++i) {
    const T* row = rows[i];
    if (row == nullptr) {
      for (int64_t q = 0; q < kp; ++q) dst[q * LANES + i] = Entry{};
      continue;
    }
    if constexpr (PackMode<T, Dot>::bf16) {
      const uint16_t* bits = reinterpret_cast<const uint16_t*>(row);
      for (int64_t q = 0; q < kp; ++q) {
        const uint32_t lo = bits[2 * q * cs];
        const uint32_t hi = 2 * q + 1 < K ? bits[(2 * q + 1) * cs] : 0u;
        dst[q * LANES + i] = lo | (hi << 16);
      }
    } else {
      for (int64_t q = 0; q < kp; ++q) dst[q * LANES + i] = load(row, q * cs);
    }
  }
}

inline uint32_t bf16_bits(float v) {
  bf16 b;
  store(&b, 0, v);
  return b.bits;
}

// x[i] = exp(x[i] - m) for i < n; returns the sum.
inline float exp_shifted(float* x, int64_t n, float m) {
  int64_t i = 0;
  float sum = 0.f;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  const __m512 mv = _mm512_set1_ps(m);
  for (; i + 16 <= n; i += 16) {
    const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + i), mv));
    _mm512_storeu_ps(x + i, e);
    acc = _mm512_add_ps(acc, e);
  }
  if (i < n) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 e = _mm512_maskz_mov_ps(mask, exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, x + i), mv)));
    _mm512_mask_storeu_ps(x + i, mask, e);
    acc = _mm512_add_ps(acc, e);
    i = n;
  }
  sum = _mm512_reduce_add_ps(acc);
#endif
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += x[i];
  }
  return sum;
}

// x[i] *= scale for i < n (n >= 1); returns the maximum.
inline float scale_max(float* x, int64_t n, float scale) {
  int64_t i = 0;
  float mx = -INFINITY;
#if defined(__AVX512F__)
  const __m512 sv = _mm512_set1_ps(scale);
  __m512 mv = _mm512_set1_ps(-INFINITY);
  for (; i < n; i += 16) {
    const __mmask16 mask = n - i >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, x + i), sv);
    _mm512_mask_storeu_ps(x + i, mask, v);
    mv = _mm512_mask_max_ps(mv, mask, mv, v);
  }
  mx = _mm512_reduce_max_ps(mv);
#endif
  for (; i < n; ++i) {
    x[i] *= scale;
    mx = std::max(mx, x[i]);
  }
  return mx;
}

inline float dot_f32(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float s = 0.f;
#if defined(__AVX512F__)
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
  if (i < n) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (n - i)) - 1);
    acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + i), _mm512_maskz_loadu_ps(mask, b + i), acc1);
    i = n;
  }
  s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#endif
#pragma omp simd reduction(+ : s)
  for (int64_t j = i; j < n; ++j) s += a[j] * b[j];
  return s;
}

// y[i] += a * x[i]
inline void axpy_f32(float a, const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// dst[i] = float(src[i]) for i < n.
template <typename T> inline void to_f32(const T* src, int64_t n, float* dst) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = load(src, i);
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
