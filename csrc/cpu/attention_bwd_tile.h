// Register tile of the CPU attention backward's five products (S = Q K^T, dP = dO V^T, dV += P^T dO,
// dK += dS^T Q, dQ += dS K), all fp32: C[8][32] (+)= sum over q of A(q, m) B(q, n), where A is read by scalar
// broadcasts at any pair of strides (so P, dS and their transposes are the same buffer) and B by contiguous
// rows. Compiled once per ISA.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu/epilogue.h"  // exp_avx512
#include "cpu/gemm_core.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {

constexpr int kBwdTileM = 8;   // rows of a register tile
constexpr int kBwdTileN = 32;  // columns of a register tile (two AVX-512 vectors)

// c[m * ldc + n] (+)= sum_{q < kq} a[q * aq + m * am] * b[q * ldb + n] for m < 8, n < 32 (accumulating onto c
// when `accumulate`). kq may be 0.
inline void fma_tile(int64_t kq, const float* a, int64_t aq, int64_t am, const float* b, int64_t ldb, float* c,
                     int64_t ldc, bool accumulate) {
  constexpr int M = kBwdTileM;
#if defined(__AVX512F__)
  __m512 lo[M], hi[M];
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m) {
    lo[m] = accumulate ? _mm512_loadu_ps(c + m * ldc) : _mm512_setzero_ps();
    hi[m] = accumulate ? _mm512_loadu_ps(c + m * ldc + 16) : _mm512_setzero_ps();
  }
  for (int64_t q = 0; q < kq; ++q) {
    const __m512 b0 = _mm512_loadu_ps(b + q * ldb), b1 = _mm512_loadu_ps(b + q * ldb + 16);
    const float* ar = a + q * aq;
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      const __m512 av = _mm512_set1_ps(ar[m * am]);
      lo[m] = _mm512_fmadd_ps(av, b0, lo[m]);
      hi[m] = _mm512_fmadd_ps(av, b1, hi[m]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m) {
    _mm512_storeu_ps(c + m * ldc, lo[m]);
    _mm512_storeu_ps(c + m * ldc + 16, hi[m]);
  }
#else
  constexpr int N = kBwdTileN;
  float acc[M][N];
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) acc[m][n] = accumulate ? c[m * ldc + n] : 0.f;
  for (int64_t q = 0; q < kq; ++q) {
    const float* br = b + q * ldb;
    for (int m = 0; m < M; ++m) {
      const float av = a[q * aq + m * am];
#pragma omp simd
      for (int n = 0; n < N; ++n) acc[m][n] += av * br[n];
    }
  }
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) c[m * ldc + n] = acc[m][n];
#endif
}

// out[m] = sum_{c < n} a[m * ld + c] * b[m * ld + c] for m < 8, summed in fma_tile's order (one fused
// multiply-add per c, c ascending), so that the softmax backward's delta = rowsum(dO * O) cancels dP = dO . V
// exactly where O is one V row (a query that sees one key).
inline void strip_dots(const float* a, const float* b, int64_t ld, int64_t n, float* out) {
  constexpr int M = kBwdTileM;
  float acc[M] = {};
  for (int64_t c = 0; c < n; ++c)
    for (int m = 0; m < M; ++m) {
#if defined(__AVX512F__)
      acc[m] = std::fma(a[m * ld + c], b[m * ld + c], acc[m]);
#else
      acc[m] += a[m * ld + c] * b[m * ld + c];  // contracted exactly as fma_tile's fallback loop is
#endif
    }
  for (int m = 0; m < M; ++m) out[m] = acc[m];
}

// Lanes [lo, hi) of the 16 starting at j, as a bit mask.
inline uint32_t lane_range_bits(int64_t j, int64_t lo, int64_t hi) {
  const int64_t a = std::max<int64_t>(lo - j, 0), b = std::min<int64_t>(hi - j, 16);
  return a < b ? ((1u << b) - 1u) & ~((1u << a) - 1u) : 0u;
}

// Row of the softmax backward over keys [lo, hi) of a block of n keys: s (the scores) becomes
// P = exp(s * scale - lse) and dp (dO . V) becomes dS = P * (dp - delta) * scale; both are 0 outside [lo, hi)
// whatever s and dp held there.
inline void softmax_grad_row(float* s, float* dp, int64_t n, int64_t lo, int64_t hi, float scale, float lse,
                             float delta) {
  int64_t j = 0;
#if defined(__AVX512F__)
  const __m512 sv = _mm512_set1_ps(scale), lv = _mm512_set1_ps(lse), dv = _mm512_set1_ps(delta);
  for (; j + 16 <= n; j += 16) {
    const __mmask16 m = static_cast<__mmask16>(lane_range_bits(j, lo, hi));
    const __m512 pr = _mm512_maskz_mov_ps(m, exp_avx512(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), sv, lv)));
    _mm512_storeu_ps(s + j, pr);
    _mm512_storeu_ps(dp + j, _mm512_maskz_mul_ps(m, _mm512_mul_ps(pr, sv), _mm512_sub_ps(_mm512_loadu_ps(dp + j), dv)));
  }
#endif
  for (; j < n; ++j) {
    const bool live = j >= lo && j < hi;
    const float pr = live ? std::exp(s[j] * scale - lse) : 0.f;
    s[j] = pr;
    dp[j] = live ? pr * (dp[j] - delta) * scale : 0.f;
  }
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
