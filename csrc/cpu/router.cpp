// CPU ZAYA1 router forward for few tokens (decode and short prefill), in one parallel region: each thread owns a
// slice of every layer's output columns and computes it for chunks of up to 16 tokens; barriers separate the
// layers. A chunk's products are dot products of its interleaved token rows with the weight rows, or, for fp32
// chunks of 13 tokens or more on AVX-512, FMAs over its transposed rows as vector lanes (lane_gemm.h). More
// tokens (router_blocks.h says how many) take the token-block path (router_blocked.cpp). Compiled once per ISA.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/gemm_driver.h"
#include "cpu/isa_kernels.h"
#include "cpu/lane_gemm.h"
#include "cpu/router_blocks.h"
#include "cpu/router_decode.h"
#include "cpu/router_rows.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {
namespace {

static_assert(kDotMaxRows == kRouterChunkTokens && kLanes == kRouterChunkTokens,
              "the few-token path's layout assumes chunks of 16 rows");
// fp32 chunks take the lanes path from this many tokens on: it costs the same for any count up to 16, the dot
// path grows with it, and they break even at 12-13 tokens.
constexpr int64_t kLaneMinTokens = 13;

// Thread tid's share [begin, end) of n items: contiguous, sizes differing by at most one.
inline std::pair<int64_t, int64_t> share(int64_t n, int tid, int threads) {
  return {n * tid / threads, n * (tid + 1) / threads};
}

// sums[t * (c1 - c0) + c - c0] = <a_t, w_c> for t < m and c in [c0, c1), w in nn.Linear layout [N][K].
template <typename T>
void dot_columns(const DotA<T>* a_packed, const T* const* a_rows, int m, const T* w, int64_t K, int64_t c0,
                 int64_t c1, float* sums) {
  const int64_t nc = c1 - c0;
  std::fill(sums, sums + m * nc, 0.f);
  dot_rows_k_blocked<T>(a_packed, a_rows, m, static_cast<int>(nc), [&](int b) { return w + (c0 + b) * K; }, K,
                        [&](int r, int b, float v) { sums[r * nc + b] += v; });
}

template <typename T>
const char* router_decode(const RouterParams& p) {
  const int64_t T_ = p.T, D = p.D, R = p.R, C = p.C;
  if (T_ == 0) return nullptr;
  const RouterDecodeLayout L = router_decode_layout(T_, D, R, C);
  char* base = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(p.workspace) + 63) & ~uintptr_t{63});
  const int64_t fixed = L.x_packed + 2 * L.rows;
  const int64_t room = (p.workspace_bytes - (base - static_cast<char*>(p.workspace)) - fixed) / L.per_thread();
  if (room < 1) return "workspace too small";
  const int threads = static_cast<int>(std::min<int64_t>(room, omp_get_max_threads()));

  constexpr int64_t kChunk = kRouterChunkTokens;
  const int64_t chunks = (T_ + kChunk - 1) / kChunk;
  auto chunk_rows = [&](int64_t c) { return static_cast<int>(std::min(kChunk, T_ - c * kChunk)); };
  auto lanes = [&](int64_t c) {
#if defined(__AVX512F__)
    return std::is_same_v<T, float> && chunk_rows(c) >= kLaneMinTokens;
#else
    (void)c;
    return false;
#endif
  };
  bool any_dot = false;
  for (int64_t c = 0; c < chunks; ++c) any_dot = any_dot || !lanes(c);

  DotA<T>* x_packed = reinterpret_cast<DotA<T>*>(base);
  T* h0 = reinterpret_cast<T*>(base + L.x_packed);
  T* h1 = reinterpret_cast<T*>(base + L.x_packed + L.rows);
  std::vector<const T*> row_ptrs(3 * T_);
  const T** x_rows = row_ptrs.data();
  const T** h0_rows = x_rows + T_;
  const T** h1_rows = h0_rows + T_;
  for (int64_t t = 0; t < T_; ++t) {
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

    // sums[t][c - c0] = <row t, w_c> for chunk `chunk`'s rows and this thread's columns [c0, c1) of w [N][K];
    // on the dot path `packed` holds the chunk's rows interleaved (lanes transpose theirs pass by pass).
    auto product = [&](int64_t chunk, const DotA<T>* packed, const T* const* rows, const void* w, int64_t K,
                       int64_t c0, int64_t c1) {
      const int m = chunk_rows(chunk);
#if defined(__AVX512F__)
      if constexpr (std::is_same_v<T, float>)
        if (lanes(chunk)) return lane_columns(rows, m, static_cast<const float*>(w), K, c0, c1, lane_sums, sums);
#endif
      dot_columns<T>(packed, rows, m, static_cast<const T*>(w), K, c0, c1, sums);
    };

    // The dot path's chunks are interleaved once, each thread taking a share of the K steps.
    if (any_dot) {
      constexpr int64_t step = kDotStep<T>;
      const auto [s0, s1] = share((D + step - 1) / step, tid, nth);
      for (int64_t c = 0; c < chunks; ++c)
        if (!lanes(c))
          pack_dot_rows<T>(x_rows + c * kChunk, chunk_rows(c), D, x_packed + c * kChunk * D, s0 * step, s1 * step);
#pragma omp barrier
    }

    // z = x W_down^T + b (+ eda_scale * z_prev), fp32.
    {
      const auto [c0, c1] = share(R, tid, nth);
      for (int64_t c = 0; c < chunks; ++c) {
        product(c, x_packed + c * kChunk * D, x_rows + c * kChunk, p.down_w, D, c0, c1);
        for (int r = 0; r < chunk_rows(c); ++r)
          store_down<T>(p, c * kChunk + r, c0, sums + r * (c1 - c0), static_cast<int>(c1 - c0));
      }
    }
#pragma omp barrier

    // h0 = RMSNorm(z) * norm_w in T.
    const T* norm_w = static_cast<const T*>(p.norm_w);
    for (int64_t t = t0; t < t1; ++t) rms_norm_row<T>(p.z + t * R, norm_w, R, p.eps, h0 + t * R);
#pragma omp barrier

    // Chunk by chunk: the dot path interleaves the chunk's rows into this thread's h_packed, then
    // epi(token, sums of the thread's columns) takes the products.
    auto layer = [&](const T* const* in_rows, const void* w, int64_t N, auto&& epi) {
      const auto [c0, c1] = share(N, tid, nth);
      for (int64_t c = 0; c < chunks; ++c) {
        const T* const* rows = in_rows + c * kChunk;
        if (!lanes(c)) pack_dot_rows<T>(rows, chunk_rows(c), R, h_packed);
        product(c, h_packed, rows, w, R, c0, c1);
        for (int r = 0; r < chunk_rows(c); ++r) epi(c * kChunk + r, c0, c1, sums + r * (c1 - c0));
      }
    };

    // h1 = GELU(h0 W1^T + b1), then h0 = GELU(h1 W2^T + b2) (h0's rows are free again by then).
    auto gelu_into = [&](T* out, const void* b) {
      return [out, b, R](int64_t t, int64_t c0, int64_t c1, const float* v) {
        store_bias_gelu(out + t * R + c0, v, static_cast<const T*>(b) + c0, static_cast<int>(c1 - c0));
      };
    };
    layer(h0_rows, p.fc1_w, R, gelu_into(h1, p.fc1_b));
#pragma omp barrier
    layer(h1_rows, p.fc2_w, R, gelu_into(h0, p.fc2_b));
#pragma omp barrier

    // logits = h2 W_out^T (rounded to T like a T-typed linear).
    layer(h0_rows, p.out_w, C, [&](int64_t t, int64_t c0, int64_t c1, const float* v) {
      for (int64_t c = c0; c < c1; ++c) p.logits[t * C + c] = round_to<T>(v[c - c0]);
    });
#pragma omp barrier

    // Softmax and the biased choice per token.
    for (int64_t t = t0; t < t1; ++t) choose_expert<T>(p, t);
  }
  return nullptr;
}

}  // namespace

const char* zaya_router(const RouterParams& p) {
  if (use_router_token_blocks(p.T, p.D, p.R, p.dtype))
    ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, return router_token_blocks<T>(p));
  ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, return router_decode<T>(p));
  return nullptr;
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
