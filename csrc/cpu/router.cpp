// CPU ZAYA1 router forward: four GEMMs on the shared driver with fused epilogues (bias + EDA, bias + GELU),
// the RMSNorm between them, and a per-token softmax / biased argmax. Compiled once per ISA.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/epilogue.h"
#include "cpu/gemm_driver.h"
#include "cpu/isa_kernels.h"
#include "zaya_rt/router.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {
namespace {

// Rows at least this long make the many-token GEMMs take the transposed product (see `run` below).
constexpr int64_t kTransposedMinK = 1024;

template <typename T> float load_z_prev(const RouterParams& p, int64_t i) {
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
template <typename T> void store_down(const RouterParams& p, int64_t t, int64_t n0, const float* v, int n) {
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
  for (int64_t c = 0; c < C; c += 16) {
    const __m512 v = _mm512_maskz_mov_ps(mask(c), exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask(c), l + c), mx)));
    _mm512_mask_storeu_ps(e + c, mask(c), v);
    acc = _mm512_add_ps(acc, v);
  }
  *sum = _mm512_reduce_add_ps(acc);
  return true;
#else
  (void)l, (void)C, (void)e, (void)sum;
  return false;
#endif
}

template <typename T>
const char* router_t(const RouterParams& p) {
  constexpr bool Dot = false;
  using Entry = typename PackMode<T, Dot>::Entry;
  const int64_t T_ = p.T, D = p.D, R = p.R, C = p.C;
  char* cursor = static_cast<char*>(p.workspace);
  auto carve_bytes = [&](int64_t bytes) {
    char* at = cursor;
    cursor += (bytes + 63) / 64 * 64;
    return at;
  };
  T* h0 = reinterpret_cast<T*>(carve_bytes(T_ * R * static_cast<int64_t>(sizeof(T))));
  T* h1 = reinterpret_cast<T*>(carve_bytes(T_ * R * static_cast<int64_t>(sizeof(T))));
  const int64_t kp_max = std::max(packed_k<T, Dot>(D), packed_k<T, Dot>(R));
  Entry* packed_a =
      reinterpret_cast<Entry*>(carve_bytes(gemm_packed_a_entries(std::max({T_, R, C}), 1, kp_max) * 4));
  const int64_t room = (static_cast<char*>(p.workspace) + p.workspace_bytes - cursor) /
                       (gemm_b_block_entries(kp_max) * 4);
  if (room < 1) return "workspace too small";
  Entry* b_blocks = reinterpret_cast<Entry*>(cursor);
  const int threads = static_cast<int>(std::min<int64_t>(room, omp_get_max_threads()));

  const T* x = static_cast<const T*>(p.x);
  const T* norm_w = static_cast<const T*>(p.norm_w);
  // out[T_, N] = a[T_, K] . w[N, K]^T, delivered to row_epi(t, n0, values, count) in runs of consecutive
  // columns. Few tokens: dot products that read each weight row once. Many tokens and a long K (the down
  // projection): the transposed product w . a^T, so the small weight matrix is the packed, reused operand
  // and the tokens stream once (with the tokens as the reused operand, every column block would sweep all of
  // them again). Short K (the MLP) with a column block per thread: the plain product, whose tiles hand the
  // epilogue whole rows (its tasks are the weight's column blocks, so fewer would leave threads idle).
  auto run = [&](Source<T> a, const void* w, int64_t N, int64_t K, auto&& row_epi) {
    const Source<T> wsrc{static_cast<const T*>(w), K, 1};
    if (T_ <= kDotMaxRows || (K < kTransposedMinK && (N + kNC - 1) / kNC >= threads)) {
      std::vector<GemmJob<T>> jobs{{a, wsrc, T_, N, K}};
      run_gemm_jobs<T, Dot>(jobs, packed_a, b_blocks, threads,
                            [&](int64_t, const float* tile, int64_t m0, int mr, int64_t n0, int nr, int) {
                              for (int r = 0; r < mr; ++r) row_epi(m0 + r, n0, tile + r * kNR, nr);
                            });
      return;
    }
    std::vector<GemmJob<T>> jobs{{wsrc, a, N, T_, K}};
    run_gemm_jobs<T, Dot>(jobs, packed_a, b_blocks, threads,
                          [&](int64_t, const float* tile, int64_t n0, int nr, int64_t t0, int tr, int) {
                            alignas(64) float row[kTileRows];
                            for (int c = 0; c < tr; ++c) {
                              for (int r = 0; r < nr; ++r) row[r] = tile[r * kNR + c];
                              row_epi(t0 + c, n0, row, nr);
                            }
                          });
  };

  // z = x W_down^T + b (+ eda_scale * z_prev), fp32.
  run(Source<T>{x, p.x_row_stride, 1}, p.down_w, R, D, [&](int64_t t, int64_t n0, const float* v, int n) {
    store_down<T>(p, t, n0, v, n);
  });

  // h0 = RMSNorm(z) * norm_w in T.
#pragma omp parallel for schedule(static) num_threads(threads) if (T_ * R >= (1 << 14))
  for (int64_t t = 0; t < T_; ++t) {
    const float* zr = p.z + t * R;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < R; ++j) ss += zr[j] * zr[j];
    const float rstd = 1.f / std::sqrt(ss / static_cast<float>(R) + p.eps);
    for (int64_t j = 0; j < R; ++j) store(h0 + t * R, j, round_to<T>(zr[j] * rstd) * load(norm_w, j));
  }

  // h1 = GELU(h0 W1^T + b1), h0 <- GELU(h1 W2^T + b2) (h0's buffer is free again).
  const T* fc1_b = static_cast<const T*>(p.fc1_b);
  const T* fc2_b = static_cast<const T*>(p.fc2_b);
  run(Source<T>{h0, R, 1}, p.fc1_w, R, R, [&](int64_t t, int64_t n0, const float* v, int n) {
    store_bias_gelu(h1 + t * R + n0, v, fc1_b + n0, n);
  });
  run(Source<T>{h1, R, 1}, p.fc2_w, R, R, [&](int64_t t, int64_t n0, const float* v, int n) {
    store_bias_gelu(h0 + t * R + n0, v, fc2_b + n0, n);
  });

  // logits = h2 W_out^T (rounded to T like a T-typed linear), then softmax and the biased choice per token.
  run(Source<T>{h0, R, 1}, p.out_w, C, R, [&](int64_t t, int64_t n0, const float* v, int n) {
    for (int c = 0; c < n; ++c) p.logits[t * C + n0 + c] = round_to<T>(v[c]);
  });
#pragma omp parallel for schedule(static) num_threads(threads) if (T_ * C >= (1 << 14))
  for (int64_t t = 0; t < T_; ++t) {
    const float* lr = p.logits + t * C;
    float e[kVectorSoftmaxMaxClasses];
    float sum = 0.f;
    const bool vec = softmax_exps(lr, C, e, &sum);
    float mx = lr[0];
    if (!vec) {
      for (int64_t c = 1; c < C; ++c) mx = std::max(mx, lr[c]);
      for (int64_t c = 0; c < C; ++c) sum += std::exp(lr[c] - mx);
    }
    int64_t best = 0;
    float best_score = -INFINITY, best_p = 0.f;
    for (int64_t c = 0; c < C; ++c) {
      const float prob = round_to<T>((vec ? e[c] : std::exp(lr[c] - mx)) / sum);
      const float score = prob + p.balancing_bias[c];
      if (score > best_score) {
        best_score = score;
        best = c;
        best_p = prob;
      }
    }
    p.choice[t] = best;
    p.gate[t] = best == C - 1 ? 0.f : best_p;
  }
  return nullptr;
}

}  // namespace

const char* zaya_router(const RouterParams& p) {
  ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, return router_t<T>(p));
  return nullptr;
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
