// CPU ZAYA1 router forward for few tokens (decode), in one parallel region: each thread owns a slice of every
// layer's output columns and reads its weight rows once; barriers separate the layers. The products are dot
// products of the interleaved token rows with the weight rows, or, for fp32 with enough tokens on AVX-512,
// FMAs over the transposed token rows as vector lanes (lane_gemm.h). More tokens take the token-block path
// (router_blocked.cpp). Compiled once per ISA.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "cpu/gemm_driver.h"
#include "cpu/isa_kernels.h"
#include "cpu/lane_gemm.h"
#include "cpu/router_blocks.h"
#include "cpu/router_decode.h"
#include "cpu/router_rows.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {
namespace {

static_assert(kDotMaxRows == kRouterDecodeMaxTokens && kLanes == kRouterDecodeMaxTokens,
              "the few-token path's layout assumes 16 rows");
// fp32 products take the lanes path from this many tokens on: it costs the same for any count up to 16, the dot
// path grows with it, and they break even at 12-13 tokens.
constexpr int64_t kLaneMinTokens = 13;

// Thread tid's share [begin, end) of n items: contiguous, sizes differing by at most one.
inline std::pair<int64_t, int64_t> share(int64_t n, int tid, int threads) {
  return {n * tid / threads, n * (tid + 1) / threads};
}

// sums[t * (c1 - c0) + c - c0] = <a_t, w_c> for t < m and c in [c0, c1), w in nn.Linear layout [N][K]: K
// blocks outer, so the block's slice of the interleaved rows stays in L1 while the weight rows stream past.
template <typename T>
void dot_columns(const DotA<T>* a_packed, const T* const* a_rows, int m, const T* w, int64_t K, int64_t c0,
                 int64_t c1, float* sums) {
  const int64_t nc = c1 - c0;
  std::fill(sums, sums + m * nc, 0.f);
  const int64_t kb = dot_k_block<T>(m, K);
  float dots[kDotMaxRows * kDotMaxB];
  const T* rows[kDotMaxB];
  for (int64_t k0 = 0; k0 < K; k0 += kb) {
    const int64_t k1 = std::min(K, k0 + kb);
    for (int64_t j = c0; j < c1; j += kDotMaxB) {
      const int g = static_cast<int>(std::min<int64_t>(kDotMaxB, c1 - j));
      for (int i = 0; i < g; ++i) rows[i] = w + (j + i) * K;
      // The next group's rows (or the first group's next K block) come from L2 while this group computes.
      const T* next[kDotMaxB];
      const int64_t jn = j + kDotMaxB < c1 ? j + kDotMaxB : c0;
      const int gn = static_cast<int>(std::min<int64_t>(kDotMaxB, c1 - jn));
      for (int i = 0; i < gn; ++i) next[i] = w + (jn + i) * K;
      if (j + kDotMaxB < c1) prefetch_rows(next, gn, k0, k1);
      else if (k1 < K) prefetch_rows(next, gn, k1, std::min(K, k1 + kb));
      dot_rows<T>(a_packed, a_rows, m, rows, g, K, k0, k1, dots);
      for (int i = 0; i < g; ++i)
        for (int r = 0; r < m; ++r) sums[r * nc + (j - c0) + i] += dots[r * g + i];
    }
  }
}

template <typename T>
const char* router_decode(const RouterParams& p) {
  const int64_t T_ = p.T, D = p.D, R = p.R, C = p.C;
  if (T_ == 0) return nullptr;
  if (T_ > kRouterDecodeMaxTokens) return "router_decode: too many tokens for the few-token path";
  const RouterDecodeLayout L = router_decode_layout(T_, D, R, C);
  char* base = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(p.workspace) + 63) & ~uintptr_t{63});
  const int64_t fixed = L.x_packed + 2 * L.rows;
  const int64_t room = (p.workspace_bytes - (base - static_cast<char*>(p.workspace)) - fixed) / L.per_thread();
  if (room < 1) return "workspace too small";
  const int threads = static_cast<int>(std::min<int64_t>(room, omp_get_max_threads()));

  const int m = static_cast<int>(T_);
#if defined(__AVX512F__)
  const bool lanes = std::is_same_v<T, float> && T_ >= kLaneMinTokens;
#else
  const bool lanes = false;
#endif
  DotA<T>* x_packed = reinterpret_cast<DotA<T>*>(base);
  T* h0 = reinterpret_cast<T*>(base + L.x_packed);
  T* h1 = reinterpret_cast<T*>(base + L.x_packed + L.rows);
  const T *x_rows[kDotMaxRows], *h0_rows[kDotMaxRows], *h1_rows[kDotMaxRows];
  for (int t = 0; t < m; ++t) {
    x_rows[t] = static_cast<const T*>(p.x) + t * p.x_row_stride;
    h0_rows[t] = h0 + t * R;
    h1_rows[t] = h1 + t * R;
  }

#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
    char* mine = base + fixed + tid * L.per_thread();
    DotA<T>* h_packed = reinterpret_cast<DotA<T>*>(mine);
    float* sums = reinterpret_cast<float*>(mine + L.h_packed);
    [[maybe_unused]] float* lane_sums = reinterpret_cast<float*>(mine + L.h_packed + L.sums);
    const auto [t0, t1] = share(T_, tid, nth);

    // The dot path's products: dot_columns over rows interleaved beforehand into `packed` (lanes transpose
    // their rows themselves, pass by pass).
    auto pack = [&](const T* const* rows, int64_t K, DotA<T>* packed, int64_t k_begin, int64_t k_end) {
      if (!lanes) pack_dot_rows<T>(rows, m, K, packed, k_begin, k_end);
    };
    // sums[t][c - c0] = <row t, w_c> for this thread's columns [c0, c1) of w [N][K].
    auto product = [&](const DotA<T>* packed, const T* const* rows, const void* w, int64_t K, int64_t c0,
                       int64_t c1) {
#if defined(__AVX512F__)
      if constexpr (std::is_same_v<T, float>)
        if (lanes) return lane_columns(rows, m, static_cast<const float*>(w), K, c0, c1, lane_sums, sums);
#endif
      dot_columns<T>(packed, rows, m, static_cast<const T*>(w), K, c0, c1, sums);
    };

    // The dot path interleaves the token rows once, each thread taking a share of the K steps.
    if (!lanes) {
      constexpr int64_t step = kDotStep<T>;
      const auto [s0, s1] = share((D + step - 1) / step, tid, nth);
      pack(x_rows, D, x_packed, s0 * step, s1 * step);
#pragma omp barrier
    }

    // z = x W_down^T + b (+ eda_scale * z_prev), fp32.
    {
      const auto [c0, c1] = share(R, tid, nth);
      product(x_packed, x_rows, p.down_w, D, c0, c1);
      for (int t = 0; t < m; ++t) store_down<T>(p, t, c0, sums + t * (c1 - c0), static_cast<int>(c1 - c0));
    }
#pragma omp barrier

    // h0 = RMSNorm(z) * norm_w in T.
    const T* norm_w = static_cast<const T*>(p.norm_w);
    for (int64_t t = t0; t < t1; ++t) rms_norm_row<T>(p.z + t * R, norm_w, R, p.eps, h0 + t * R);
#pragma omp barrier

    // h1 = GELU(h0 W1^T + b1), then h0 = GELU(h1 W2^T + b2) (h0's rows are free again by then).
    auto gelu_layer = [&](const T* const* in_rows, const void* w, const void* b, T* out) {
      const auto [c0, c1] = share(R, tid, nth);
      pack(in_rows, R, h_packed, 0, R);
      product(h_packed, in_rows, w, R, c0, c1);
      const T* bias = static_cast<const T*>(b) + c0;
      for (int t = 0; t < m; ++t)
        store_bias_gelu(out + t * R + c0, sums + t * (c1 - c0), bias, static_cast<int>(c1 - c0));
    };
    gelu_layer(h0_rows, p.fc1_w, p.fc1_b, h1);
#pragma omp barrier
    gelu_layer(h1_rows, p.fc2_w, p.fc2_b, h0);
#pragma omp barrier

    // logits = h2 W_out^T (rounded to T like a T-typed linear).
    {
      const auto [c0, c1] = share(C, tid, nth);
      pack(h0_rows, R, h_packed, 0, R);
      product(h_packed, h0_rows, p.out_w, R, c0, c1);
      for (int t = 0; t < m; ++t)
        for (int64_t c = c0; c < c1; ++c) p.logits[t * C + c] = round_to<T>(sums[t * (c1 - c0) + c - c0]);
    }
#pragma omp barrier

    // Softmax and the biased choice per token.
    for (int64_t t = t0; t < t1; ++t) choose_expert<T>(p, t);
  }
  return nullptr;
}

}  // namespace

const char* zaya_router(const RouterParams& p) {
  if (use_router_token_blocks(p.T, p.D, p.R))
    ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, return router_token_blocks<T>(p));
  ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, return router_decode<T>(p));
  return nullptr;
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
