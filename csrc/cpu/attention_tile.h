// Building blocks of the CPU attention kernels (compiled once per ISA): the mask as a key range per query,
// packing of strided rows for the GEMM micro-kernel, and vectorised row loops (exp, dot, axpy).
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>
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

#if defined(__AVX512F__)
// Horizontal sum / max as a shuffle tree (GCC 12 lowered the reduce intrinsics to 16 dependent scalar ops here).
inline float hsum(__m512 v) {
  const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s4, _mm_movehdup_ps(s4)));
}
inline float hmax(__m512 v) {
  const __m256 s8 = _mm256_max_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 s4 = _mm_max_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s4 = _mm_max_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_max_ss(s4, _mm_movehdup_ps(s4)));
}
#endif

template <typename T> inline void prefetch_row(const T* row, int64_t n) {
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int64_t off = 0; off < n * static_cast<int64_t>(sizeof(T)); off += 64) __builtin_prefetch(bytes + off, 0, 3);
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
  sum = hsum(acc);
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
  mx = hmax(mv);
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
  s = hsum(_mm512_add_ps(acc0, acc1));
#endif
#pragma omp simd reduction(+ : s)
  for (int64_t j = i; j < n; ++j) s += a[j] * b[j];
  return s;
}

// y[i] += a * x[i]
#if defined(__AVX512F__)
// [<a0, k>, <a1, k>, <a2, k>, <a3, k>] from four 16-lane partial-sum vectors.
inline __m128 hsum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  const __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
  const __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
  const __m512 s = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_ps(s01, s23, _MM_SHUFFLE(3, 2, 3, 2)));  // per 128-bit lane
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(s),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// sc[r * ld + j] = <q_r, k_j> for R query rows (q [R][16 * ND], held in registers) and cnt keys (k [cnt][16 * ND]).
template <int ND, int R>
inline void scores_rows(const float* q, const float* k, int64_t cnt, float* sc, int64_t ld) {
  static_assert(R == 1 || R == 2 || R == 4, "rows per pass");
  __m512 qv[R][ND];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < ND; ++c) qv[r][c] = _mm512_loadu_ps(q + r * 16 * ND + 16 * c);
  for (int64_t j = 0; j < cnt; ++j) {
    const float* kr = k + j * 16 * ND;
    // two partial sums per row (even / odd vectors of d): chains of ND / 2 FMAs, not ND
    __m512 acc[4], acc2[4];
    for (int r = 0; r < 4; ++r) acc[r] = acc2[r] = _mm512_setzero_ps();
    for (int c = 0; c < ND; ++c) {
      const __m512 kv = _mm512_loadu_ps(kr + 16 * c);
      for (int r = 0; r < R; ++r) {
        if (c % 2 == 0) acc[r] = _mm512_fmadd_ps(qv[r][c], kv, acc[r]);
        else acc2[r] = _mm512_fmadd_ps(qv[r][c], kv, acc2[r]);
      }
    }
    for (int r = 0; r < R; ++r) acc[r] = _mm512_add_ps(acc[r], acc2[r]);
    alignas(16) float dots[4];
    _mm_store_ps(dots, hsum4(acc[0], acc[1], acc[2], acc[3]));
    for (int r = 0; r < R; ++r) sc[r * ld + j] = dots[r];
  }
}
#endif

// sc[r * ld + j] = <q_r, k_j> for rows query rows (q [rows][d]) and cnt keys (k [cnt][d]), all fp32: each key
// row is loaded once for several query rows whose vectors stay in registers.
inline void scores_block(const float* q, int64_t rows, const float* k, int64_t cnt, int64_t d, float* sc,
                         int64_t ld) {
  int64_t r = 0;
#if defined(__AVX512F__)
  auto run = [&](auto nd) {
    constexpr int ND = decltype(nd)::value;
    constexpr int R = ND <= 4 ? 4 : (ND <= 8 ? 2 : 1);
    for (; r + R <= rows; r += R) scores_rows<ND, R>(q + r * d, k, cnt, sc + r * ld, ld);
    for (; r < rows; ++r) scores_rows<ND, 1>(q + r * d, k, cnt, sc + r * ld, ld);
  };
  switch (d) {
    case 32: run(std::integral_constant<int, 2>{}); break;
    case 64: run(std::integral_constant<int, 4>{}); break;
    case 128: run(std::integral_constant<int, 8>{}); break;
    case 256: run(std::integral_constant<int, 16>{}); break;
    default: break;
  }
#endif
  for (; r < rows; ++r)
    for (int64_t j = 0; j < cnt; ++j) sc[r * ld + j] = dot_f32(q + r * d, k + j * d, d);
}

inline void axpy_f32(float a, const float* x, float* y, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 av = _mm512_set1_ps(a);
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
#endif
#pragma omp simd
  for (int64_t j = i; j < n; ++j) y[j] += a * x[j];
}

// o[c] = alpha * o[c] + sum_j p[j] * v[j * d + c] for c < d, keeping o in registers across the keys.
inline void pv_accumulate(const float* p, const float* v, int64_t cnt, int64_t d, float alpha, float* o) {
  int64_t c = 0;
#if defined(__AVX512F__)
  const __m512 av = _mm512_set1_ps(alpha);
  for (; c + 64 <= d; c += 64) {
    __m512 a0 = _mm512_mul_ps(av, _mm512_loadu_ps(o + c)), a1 = _mm512_mul_ps(av, _mm512_loadu_ps(o + c + 16));
    __m512 a2 = _mm512_mul_ps(av, _mm512_loadu_ps(o + c + 32)), a3 = _mm512_mul_ps(av, _mm512_loadu_ps(o + c + 48));
    // a second set of accumulators for odd keys: eight FMA chains instead of four (latency, not throughput)
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps(), b2 = _mm512_setzero_ps(), b3 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 2 <= cnt; j += 2) {
      const __m512 pj = _mm512_set1_ps(p[j]), pk = _mm512_set1_ps(p[j + 1]);
      const float* vr = v + j * d + c;
      a0 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vr), a0);
      a1 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vr + 16), a1);
      a2 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vr + 32), a2);
      a3 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vr + 48), a3);
      b0 = _mm512_fmadd_ps(pk, _mm512_loadu_ps(vr + d), b0);
      b1 = _mm512_fmadd_ps(pk, _mm512_loadu_ps(vr + d + 16), b1);
      b2 = _mm512_fmadd_ps(pk, _mm512_loadu_ps(vr + d + 32), b2);
      b3 = _mm512_fmadd_ps(pk, _mm512_loadu_ps(vr + d + 48), b3);
    }
    if (j < cnt) {
      const __m512 pj = _mm512_set1_ps(p[j]);
      const float* vr = v + j * d + c;
      a0 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vr), a0);
      a1 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vr + 16), a1);
      a2 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vr + 32), a2);
      a3 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vr + 48), a3);
    }
    a0 = _mm512_add_ps(a0, b0), a1 = _mm512_add_ps(a1, b1), a2 = _mm512_add_ps(a2, b2), a3 = _mm512_add_ps(a3, b3);
    _mm512_storeu_ps(o + c, a0);
    _mm512_storeu_ps(o + c + 16, a1);
    _mm512_storeu_ps(o + c + 32, a2);
    _mm512_storeu_ps(o + c + 48, a3);
  }
  for (; c < d; c += 16) {
    const __mmask16 m = d - c >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (d - c)) - 1);
    __m512 a = _mm512_mul_ps(av, _mm512_maskz_loadu_ps(m, o + c));
    for (int64_t j = 0; j < cnt; ++j) a = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), _mm512_maskz_loadu_ps(m, v + j * d + c), a);
    _mm512_mask_storeu_ps(o + c, m, a);
  }
#endif
  for (; c < d; ++c) {
    float acc = alpha * o[c];
    for (int64_t j = 0; j < cnt; ++j) acc += p[j] * v[j * d + c];
    o[c] = acc;
  }
}

// dst[i] = float(src[i]) for i < n.
template <typename T> inline void to_f32(const T* src, int64_t n, float* dst) {
  int64_t i = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, bf16>) {
    for (; i + 16 <= n; i += 16) {
      const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
      _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16)));
    }
  } else if constexpr (std::is_same_v<T, f16>) {
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  }
#endif
#pragma omp simd
  for (int64_t j = i; j < n; ++j) dst[j] = load(src, j);
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
