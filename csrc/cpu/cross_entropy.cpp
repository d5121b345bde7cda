// CPU softmax-cross-entropy rows (zaya_rt/cross_entropy.h). Compiled once per ISA (cmake/cpu_kernels.cmake).
// Rows run in parallel with OpenMP, two passes each: an online max + sum of exponentials (blocks of 128
// elements: the block's max rescales the running sum once, then one exp per element), then the gradient write,
// which finds the row (64-128 KiB for the LM head's vocabulary) still in L2.
#include <algorithm>
#include <cmath>
#include <limits>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu/epilogue.h"  // exp_avx512, store_vec, load_floats
#include "cpu/numeric.h"
#include "zaya_rt/cross_entropy.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {
namespace {

constexpr int64_t kParallelMinElems = 1 << 15;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// A row's log-sum-exp as max + log(sum): kept apart, so that x - max stays exact for the large entries (x - lse
// would round lse at the logits' magnitude). `special` when the row holds a NaN or +inf, or nothing above -inf
// (its loss and gradient are then NaN).
struct RowLse {
  float max, sum;
  bool special;
};

#if defined(__AVX512F__)
// exp(v), or 0 where v is below fp32's normal exponent range or NaN (exp_avx512 clamps its argument).
inline __m512 exp_or_zero(__m512 v) {
  const __mmask16 live = _mm512_cmp_ps_mask(v, _mm512_set1_ps(-87.33654475f), _CMP_GE_OQ);
  return _mm512_maskz_mov_ps(live, exp_avx512(v));
}

inline __mmask16 lanes(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u); }

// n (<= 16) elements as floats, -inf past n.
template <typename T> inline __m512 load_or_neg_inf(const T* p, int64_t n) {
  const __m512 v = load_floats(p, static_cast<int>(std::min<int64_t>(n, 16)));
  return n >= 16 ? v : _mm512_mask_blend_ps(lanes(n), _mm512_set1_ps(-kInf), v);
}

template <typename T> RowLse row_lse(const T* row, int64_t V) {
  constexpr int kBlock = 8;  // vectors per block
  const __m512 inf = _mm512_set1_ps(kInf);
  __m512 m = _mm512_set1_ps(-kInf), s = _mm512_setzero_ps();
  __mmask16 special = 0;
  int64_t j = 0;
  for (; j + 16 * kBlock <= V; j += 16 * kBlock) {
    __m512 x[kBlock];
    for (int b = 0; b < kBlock; ++b) {
      x[b] = load_floats(row + j + 16 * b, 16);
      special |= _mm512_cmp_ps_mask(x[b], inf, _CMP_NLT_UQ);
    }
    __m512 bm = x[0];
    for (int b = 1; b < kBlock; ++b) bm = _mm512_max_ps(bm, x[b]);
    const __m512 mn = _mm512_max_ps(m, bm);
    __m512 acc = _mm512_mul_ps(s, exp_or_zero(_mm512_sub_ps(m, mn)));
    for (int b = 0; b < kBlock; ++b) acc = _mm512_add_ps(acc, exp_or_zero(_mm512_sub_ps(x[b], mn)));
    s = acc;
    m = mn;
  }
  for (; j < V; j += 16) {
    const __m512 x = load_or_neg_inf(row + j, V - j);
    special |= _mm512_cmp_ps_mask(x, inf, _CMP_NLT_UQ);
    const __m512 mn = _mm512_max_ps(m, x);
    s = _mm512_add_ps(_mm512_mul_ps(s, exp_or_zero(_mm512_sub_ps(m, mn))), exp_or_zero(_mm512_sub_ps(x, mn)));
    m = mn;
  }
  const float M = _mm512_reduce_max_ps(m);
  if (special || M == -kInf) return {kNaN, kNaN, true};
  return {M, _mm512_reduce_add_ps(_mm512_mul_ps(s, exp_or_zero(_mm512_sub_ps(m, _mm512_set1_ps(M))))), false};
}

// row[j] = exp(row[j] - max) * scale for j < V, rounded once to T.
template <typename T> void write_softmax(T* row, int64_t V, float max, float scale) {
  const __m512 l = _mm512_set1_ps(max), sc = _mm512_set1_ps(scale);
  for (int64_t j = 0; j < V; j += 16) {
    const int n = static_cast<int>(std::min<int64_t>(16, V - j));
    const __m512 x = load_floats(row + j, n);
    store_vec(row + j, _mm512_mul_ps(exp_or_zero(_mm512_sub_ps(x, l)), sc), lanes(n));
  }
}
#else
template <typename T> RowLse row_lse(const T* row, int64_t V) {
  float M = -kInf;
  bool special = false;
  for (int64_t j = 0; j < V; ++j) {
    const float x = load(row, j);
    special |= !(x < kInf);
    M = std::max(M, x);
  }
  if (special || M == -kInf) return {kNaN, kNaN, true};
  double S = 0.0;  // a long fp32 running sum would drift by ~sqrt(V) ulps
  for (int64_t j = 0; j < V; ++j) S += std::exp(load(row, j) - M);
  return {M, static_cast<float>(S), false};
}

template <typename T> void write_softmax(T* row, int64_t V, float max, float scale) {
  for (int64_t j = 0; j < V; ++j) store(row, j, std::exp(load(row, j) - max) * scale);
}
#endif

template <typename T> void cross_entropy_rows_t(const CrossEntropyRowsParams& p) {
  const int64_t V = p.vocab;
  const float scale = p.grad_scale;
#pragma omp parallel for schedule(static) if (p.rows * V >= kParallelMinElems)
  for (int64_t i = 0; i < p.rows; ++i) {
    T* row = static_cast<T*>(p.logits) + i * p.logits_row_stride;
    const int64_t t = p.targets[i];
    if (t == p.ignore_index) {
      p.losses[i] = 0.f;
      for (int64_t j = 0; j < V; ++j) store(row, j, 0.f);
      continue;
    }
    const RowLse r = row_lse(row, V);
    if (r.special) {
      p.losses[i] = kNaN;
      for (int64_t j = 0; j < V; ++j) store(row, j, kNaN);
      continue;
    }
    const float xt = load(row, t);
    p.losses[i] = (r.max - xt) + std::log(r.sum);
    write_softmax(row, V, r.max, scale / r.sum);
    store(row, t, (std::exp(xt - r.max) / r.sum - 1.f) * scale);
  }
}

}  // namespace

const char* cross_entropy_rows(const CrossEntropyRowsParams& p) {
  ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, cross_entropy_rows_t<T>(p));
  return nullptr;
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
