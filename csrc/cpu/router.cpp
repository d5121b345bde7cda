// CPU ZAYA1 router forward for few tokens (decode): four GEMMs on the shared driver with fused epilogues
// (bias + EDA, bias + GELU), the RMSNorm between them, and a per-token softmax / biased argmax. More tokens
// take the token-block path (router_blocked.cpp). Compiled once per ISA.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/gemm_driver.h"
#include "cpu/isa_kernels.h"
#include "cpu/router_blocks.h"
#include "cpu/router_rows.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {
namespace {

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
  // columns: for few tokens, dot products that read each weight row once.
  auto run = [&](Source<T> a, const void* w, int64_t N, int64_t K, auto&& row_epi) {
    std::vector<GemmJob<T>> jobs{{a, Source<T>{static_cast<const T*>(w), K, 1}, T_, N, K}};
    run_gemm_jobs<T, Dot>(jobs, packed_a, b_blocks, threads,
                          [&](int64_t, const float* tile, int64_t m0, int mr, int64_t n0, int nr, int) {
                            for (int r = 0; r < mr; ++r) row_epi(m0 + r, n0, tile + r * kNR, nr);
                          });
  };

  // z = x W_down^T + b (+ eda_scale * z_prev), fp32.
  run(Source<T>{x, p.x_row_stride, 1}, p.down_w, R, D, [&](int64_t t, int64_t n0, const float* v, int n) {
    store_down<T>(p, t, n0, v, n);
  });

  // h0 = RMSNorm(z) * norm_w in T.
#pragma omp parallel for schedule(static) num_threads(threads) if (T_ * R >= (1 << 14))
  for (int64_t t = 0; t < T_; ++t) rms_norm_row<T>(p.z + t * R, norm_w, R, p.eps, h0 + t * R);

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
  for (int64_t t = 0; t < T_; ++t) choose_expert<T>(p, t);
  return nullptr;
}

}  // namespace

const char* zaya_router(const RouterParams& p) {
  if (use_router_token_blocks(p.T, p.D, p.R))
    ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, return router_token_blocks<T>(p));
  ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, return router_t<T>(p));
  return nullptr;
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
