// Vectorised row epilogues for the CPU GEMMs: scaled stores and SwiGLU, with AVX-512 paths and scalar
// fallbacks that compute the same values (a polynomial exp within ~2 ulp of expf on AVX-512).
#pragma once
#include <cmath>
#include <cstdint>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu/gemm_core.h"  // load_floats
#include "cpu/numeric.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {

#if defined(__AVX512F__)
inline __m512 exp_avx512(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.3762626647949f)), _mm512_set1_ps(-87.33654475f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

template <typename T> inline __m512 round_vec(__m512 v) {
  if constexpr (std::is_same_v<T, bf16>) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb);
    const __m512 r = _mm512_castsi512_ps(_mm512_and_si512(rounded, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), r, v);
  } else if constexpr (std::is_same_v<T, f16>) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    return v;
  }
}

template <typename T> inline void store_vec(T* dst, __m512 v, __mmask16 m) {
  if constexpr (std::is_same_v<T, float>) {
    _mm512_mask_storeu_ps(dst, m, v);
  } else if constexpr (std::is_same_v<T, f16>) {
    _mm256_mask_storeu_epi16(dst, m, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    const __m512 r = round_vec<bf16>(v);
    _mm256_mask_storeu_epi16(dst, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(r), 16)));
  }
}
#endif

// dst[c] = scale * src[c] for c < n.
template <typename T> inline void store_scaled(T* dst, const float* src, float scale, int n) {
  int c = 0;
#if defined(__AVX512F__)
  const __m512 s = _mm512_set1_ps(scale);
  for (; c < n; c += 16) {
    const __mmask16 m = n - c >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - c)) - 1);
    store_vec(dst + c, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, src + c)), m);
  }
#endif
  for (; c < n; ++c) store(dst, c, scale * src[c]);
}

// dst[c] = SiLU(round_T(gate[c])) * round_T(up[c]) for c < n (the rounding mirrors a GEMM whose outputs are
// stored in T before the activation, as transformers computes it).
template <typename T> inline void store_swiglu(T* dst, const float* gate, const float* up, int n) {
  int c = 0;
#if defined(__AVX512F__)
  for (; c < n; c += 16) {
    const __mmask16 m = n - c >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - c)) - 1);
    const __m512 g = round_vec<T>(_mm512_maskz_loadu_ps(m, gate + c));
    const __m512 u = round_vec<T>(_mm512_maskz_loadu_ps(m, up + c));
    const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g));
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.f), e));
    store_vec(dst + c, _mm512_mul_ps(silu, u), m);
  }
#endif
  for (; c < n; ++c) {
    const float g = round_to<T>(gate[c]);
    store(dst, c, g / (1.f + std::exp(-g)) * round_to<T>(up[c]));
  }
}

#if defined(__AVX512F__)
inline __m512 erf_avx512(__m512 x) {
  // Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), odd extension.
  const __m512 ax = _mm512_abs_ps(x);
  // t = 1 / (1 + p |x|): a 14-bit reciprocal and one Newton step (about 2^-27 relative), cheaper than a divide.
  const __m512 den = _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), ax, _mm512_set1_ps(1.f));
  const __m512 r0 = _mm512_rcp14_ps(den);
  const __m512 t = _mm512_mul_ps(r0, _mm512_fnmadd_ps(den, r0, _mm512_set1_ps(2.f)));
  __m512 poly = _mm512_set1_ps(1.061405429f);
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-1.453152027f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(1.421413741f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-0.284496736f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(0.254829592f));
  poly = _mm512_mul_ps(poly, t);
  const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(ax, ax)));
  const __m512 y = _mm512_fnmadd_ps(poly, e, _mm512_set1_ps(1.f));
  return _mm512_mask_sub_ps(y, _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_setzero_ps(), y);
}

// GELU(v) = v / 2 * (1 + erf(v / sqrt(2))).
inline __m512 gelu_avx512(__m512 v) {
  const __m512 erf = erf_avx512(_mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752f)));
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), _mm512_add_ps(_mm512_set1_ps(1.f), erf));
}
#endif

// dst[c] = GELU(round_T(src[c] + bias[c])) (exact, erf form) for c < n; bias in TB.
template <typename T, typename TB>
inline void store_bias_gelu(T* dst, const float* src, const TB* bias, int n) {
  int c = 0;
#if defined(__AVX512F__)
  for (; c < n; c += 16) {
    const __mmask16 m = n - c >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - c)) - 1);
    const __m512 b = load_floats(bias + c, n - c >= 16 ? 16 : n - c);
    const __m512 v = round_vec<T>(_mm512_add_ps(_mm512_maskz_loadu_ps(m, src + c), b));
    store_vec(dst + c, gelu_avx512(v), m);
  }
#endif
  for (; c < n; ++c) {
    const float v = round_to<T>(src[c] + load(bias, c));
    store(dst, c, 0.5f * v * (1.f + std::erf(v * 0.70710678118654752f)));
  }
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
