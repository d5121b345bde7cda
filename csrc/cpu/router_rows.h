// Per-token steps of the CPU router shared by its few-token (router.cpp) and token-block (router_blocked.cpp)
// paths: the down-projection epilogue with the EDA carry, the RMSNorm row, and the softmax / biased choice.
// Compiled once per ISA.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu/epilogue.h"
#include "cpu/gemm_core.h"
#include "zaya_rt/router.h"
#include "zaya_rt/router_choice.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {

template <typename T> inline float load_z_prev(const RouterParams& p, int64_t i) {
  return p.z_prev_dtype == DType::kFloat32    ? static_cast<const float*>(p.z_prev)[i]
         : p.z_prev_dtype == DType::kBFloat16 ? load(static_cast<const bf16*>(p.z_prev), i)
                                              : load(static_cast<const f16*>(p.z_prev), i);
}

#if defined(__AVX512F__)
inline __m512 load_z_prev_vec(const RouterParams& p, int64_t i, int n) {
  return p.z_prev_dtype == DType::kFloat32    ? load_floats(static_cast<const float*>(p.z_prev) + i, n)
         : p.z_prev_dtype == DType::kBFloat16 ? load_floats(static_cast<const bf16*>(p.z_prev) + i, n)
                                              : load_floats(static_cast<const f16*>(p.z_prev) + i, n);
}
#endif

// z[t, n0 + c] = round_T(v[c] + b_down) (+ round_T(z_prev * eda_scale), rounded again), fp32, for c < n.
template <typename T> inline void store_down(const RouterParams& p, int64_t t, int64_t n0, const float* v, int n) {
  const T* down_b = static_cast<const T*>(p.down_b) + n0;
  const T* eda = static_cast<const T*>(p.eda_scale);
  const bool carry = p.z_prev != nullptr && eda != nullptr;
  float* zr = p.z + t * p.R + n0;
  const int64_t zp0 = t * p.z_prev_row_stride + n0;
  int c = 0;
#if defined(__AVX512F__)
  for (; c < n; c += 16) {
    const int cnt = std::min(16, n - c);
    const __mmask16 m = static_cast<__mmask16>((1u << cnt) - 1u);
    __m512 val = round_vec<T>(_mm512_add_ps(_mm512_maskz_loadu_ps(m, v + c), load_floats(down_b + c, cnt)));
    if (carry) {
      const __m512 prod = _mm512_mul_ps(load_z_prev_vec(p, zp0 + c, cnt), load_floats(eda + n0 + c, cnt));
      val = round_vec<T>(_mm512_add_ps(val, round_vec<T>(prod)));
    }
    _mm512_mask_storeu_ps(zr + c, m, val);
  }
#endif
  for (; c < n; ++c) {
    float val = round_to<T>(v[c] + load(down_b, c));
    if (carry) val = round_to<T>(val + round_to<T>(load_z_prev<T>(p, zp0 + c) * load(eda, n0 + c)));
    zr[c] = val;
  }
}

// out[j] = round_T(z[j] * rstd) * norm_w[j] stored in T, rstd = 1 / sqrt(mean(z^2) + eps), for j < R.
template <typename T> inline void rms_norm_row(const float* z, const T* norm_w, int64_t R, float eps, T* out) {
  float ss = 0.f;
#pragma omp simd reduction(+ : ss)
  for (int64_t j = 0; j < R; ++j) ss += z[j] * z[j];
  const float rstd = 1.f / std::sqrt(ss / static_cast<float>(R) + eps);
  for (int64_t j = 0; j < R; ++j) store(out, j, round_to<T>(z[j] * rstd) * load(norm_w, j));
}

// e[c] = exp(l[c] - max l) for c < C and their sum, vectorised (AVX-512, C <= kVectorSoftmaxMaxClasses);
// false where the caller computes them itself.
constexpr int64_t kVectorSoftmaxMaxClasses = 256;
inline bool softmax_exps(const float* l, int64_t C, float* e, float* sum) {
#if defined(__AVX512F__)
  if (C > kVectorSoftmaxMaxClasses) return false;
  auto mask = [&](int64_t c) { return C - c >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (C - c)) - 1u); };
  __m512 mv = _mm512_set1_ps(-INFINITY);
  for (int64_t c = 0; c < C; c += 16) mv = _mm512_mask_max_ps(mv, mask(c), mv, _mm512_maskz_loadu_ps(mask(c), l + c));
  const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(mv));
  __m512 acc = _mm512_setzero_ps();
  __mmask16 nan = 0;
  for (int64_t c = 0; c < C; c += 16) {
    const __m512 shifted = _mm512_sub_ps(_mm512_maskz_loadu_ps(mask(c), l + c), mx);
    nan |= _mm512_mask_cmp_ps_mask(mask(c), shifted, shifted, _CMP_UNORD_Q);
    const __m512 v = _mm512_maskz_mov_ps(mask(c), exp_avx512(shifted));
    _mm512_mask_storeu_ps(e + c, mask(c), v);
    acc = _mm512_add_ps(acc, v);
  }
  // exp_avx512 clamps NaN to a finite value: a NaN logit (or inf - inf) makes every probability NaN instead,
  // as torch.softmax does.
  *sum = nan ? NAN : _mm512_reduce_add_ps(acc);
  return true;
#else
  (void)l, (void)C, (void)e, (void)sum;
  return false;
#endif
}

// Softmax of token t's logits (rounded to T), then the biased choice and its gate (zaya_rt/router_choice.h).
template <typename T> inline void choose_expert(const RouterParams& p, int64_t t) {
  const int64_t C = p.C;
  const float* lr = p.logits + t * C;
  float e[kVectorSoftmaxMaxClasses];
  float sum = 0.f;
  const bool vec = softmax_exps(lr, C, e, &sum);
  float mx = lr[0];
  if (!vec) {
    for (int64_t c = 1; c < C; ++c) mx = std::max(mx, lr[c]);
    for (int64_t c = 0; c < C; ++c) sum += std::exp(lr[c] - mx);
  }
  RouterChoice best;
  for (int64_t c = 0; c < C; ++c) {
    const float prob = round_to<T>((vec ? e[c] : std::exp(lr[c] - mx)) / sum);
    best.offer(c, prob, prob + p.balancing_bias[c]);
  }
  p.choice[t] = best.index;
  p.gate[t] = best.gate(C);
}

// The token-block path (router_blocked.cpp) for float, f16 and bf16.
template <typename T> const char* router_token_blocks(const RouterParams& p);

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
