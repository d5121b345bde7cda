// CPU ZAYA1 router forward for many tokens, one block of tokens at a time: each thread takes a block of up to
// 96 tokens through the down projection, RMSNorm, the GELU MLP, the output layer and the choice while the
// block stays in its caches, so the phases need no barriers and no intermediate [T, R] buffers. The weights are
// packed once per call into column panels shared by all threads; token rows are packed per block. Layout in
// router_blocks.h. Compiled once per ISA.
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "cpu/gemm_core.h"
#include "cpu/router_blocks.h"
#include "cpu/router_rows.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {
namespace {

// tiles[(m * np + n)] (+)= A panel m . B panel n^T over K, for mp token panels and np weight panels: K in
// passes of kRouterBlockKC, each token panel's slice staying in L1 while it meets every weight panel.
// between(i, calls) runs before each of the `calls` micro-kernel calls.
template <typename Between>
inline void block_gemm(const float* a_panels, const float* b_panels, int64_t K, int64_t mp, int64_t np,
                       float* tiles, const Between& between) {
  const int64_t calls = (K + kRouterBlockKC - 1) / kRouterBlockKC * mp * np;
  int64_t i = 0;
  for (int64_t k0 = 0; k0 < K; k0 += kRouterBlockKC) {
    const int64_t kc = std::min(kRouterBlockKC, K - k0);
    for (int64_t m = 0; m < mp; ++m)
      for (int64_t n = 0; n < np; ++n) {
        between(i++, calls);
        micro_kernel<float, false>(kc, a_panels + m * K * kMR + k0 * kMR, b_panels + n * K * kNR + k0 * kNR,
                                   tiles + (m * np + n) * kMR * kNR, k0 > 0);
      }
  }
}
inline void block_gemm(const float* a_panels, const float* b_panels, int64_t K, int64_t mp, int64_t np,
                       float* tiles) {
  block_gemm(a_panels, b_panels, K, mp, np, tiles, [](int64_t, int64_t) {});
}

// The token rows [t0, t0 + count) of x, a share at a time: asks for lines [lines * i / calls, lines *
// (i + 1) / calls) of them to be brought into L2, so the next block's rows arrive while this one computes.
struct RowPrefetch {
  const char* first = nullptr;
  int64_t row_stride_bytes = 0, row_lines = 0, lines = 0;
  void operator()(int64_t i, int64_t calls) const {
    for (int64_t l = lines * i / calls, end = lines * (i + 1) / calls; l < end; ++l)
      __builtin_prefetch(first + l / row_lines * row_stride_bytes + l % row_lines * 64, 0, 2);
  }
};

// Packs tokens [0, count) of a block, row r at rows + r * row_stride, into kMR-row panels over K.
template <typename T>
void pack_block(const T* rows, int64_t row_stride, int64_t count, int64_t K, float* a_panels) {
  const Source<T> src{rows, row_stride, 1};
  for (int64_t m0 = 0; m0 < count; m0 += kMR)
    pack_rows<kMR, T, false>(src, m0, static_cast<int>(std::min<int64_t>(kMR, count - m0)), K, a_panels + m0 * K);
}

// Row r of a block's tiles, columns [n * kNR, n * kNR + kNR).
inline const float* tile_row(const float* tiles, int64_t np, int64_t r, int64_t n) {
  return tiles + ((r / kMR) * np + n) * kMR * kNR + (r % kMR) * kNR;
}

}  // namespace

template <typename T> const char* router_token_blocks(const RouterParams& p) {
  const int64_t T_ = p.T, D = p.D, R = p.R, C = p.C;
  const RouterBlockLayout L = router_block_layout(D, R, C);
  char* base = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(p.workspace) + 63) & ~uintptr_t{63});
  const int64_t avail = static_cast<char*>(p.workspace) + p.workspace_bytes - base - L.weights_bytes();
  const int64_t fit = L.per_thread_bytes() > 0 ? avail / L.per_thread_bytes() : 0;
  if (fit < 1) return "workspace too small";
  float* down_w = reinterpret_cast<float*>(base);
  float* fc1_w = down_w + L.down_w;
  float* fc2_w = fc1_w + L.fc_w;
  float* out_w = fc2_w + L.fc_w;
  char* per_thread = base + L.weights_bytes();

  const int64_t np_r = L.r_pad / kNR, np_c = L.c_pad / kNR;
  const int64_t token_panels = (T_ + kMR - 1) / kMR;
  const int threads =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({fit, omp_get_max_threads(), token_panels})));
  // Blocks of at most kRouterBlockPanels token panels, as many as a multiple of the thread count allows.
  int64_t blocks = (token_panels + kRouterBlockPanels - 1) / kRouterBlockPanels;
  blocks = std::min(token_panels, (blocks + threads - 1) / threads * threads);

  const T* x = static_cast<const T*>(p.x);
  const T* norm_w = static_cast<const T*>(p.norm_w);
  const T* fc1_b = static_cast<const T*>(p.fc1_b);
  const T* fc2_b = static_cast<const T*>(p.fc2_b);
  struct Weight { const void* w; int64_t N, K; float* packed; };
  const Weight weights[4] = {{p.down_w, R, D, down_w}, {p.fc1_w, R, R, fc1_w}, {p.fc2_w, R, R, fc2_w},
                             {p.out_w, C, R, out_w}};
  const int64_t weight_panels[4] = {np_r, np_r, np_r, np_c};

#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(dynamic)
    for (int64_t i = 0; i < 3 * np_r + np_c; ++i) {
      int w = 0;
      int64_t panel = i;
      while (panel >= weight_panels[w]) panel -= weight_panels[w++];
      const Weight& W = weights[w];
      const int64_t n0 = panel * kNR;
      pack_rows<kNR, T, false>(Source<T>{static_cast<const T*>(W.w), W.K, 1}, n0,
                               static_cast<int>(std::min<int64_t>(kNR, W.N - n0)), W.K, W.packed + n0 * W.K);
    }

    const int tid = omp_get_thread_num(), team = omp_get_num_threads();
    char* mine = per_thread + tid * L.per_thread_bytes();
    float* a_panels = reinterpret_cast<float*>(mine);
    float* tiles = a_panels + L.panels_a;
    T* h = reinterpret_cast<T*>(tiles + L.tiles);  // [kRouterBlockPanels * kMR][R]

    // Each thread takes a contiguous run of blocks, so it knows which token rows to prefetch next.
    const int64_t b_end = blocks * (tid + 1) / team;
    auto block_tokens = [&](int64_t b, int64_t* t0, int64_t* count) {
      *t0 = token_panels * b / blocks * kMR;
      *count = std::min(token_panels * (b + 1) / blocks * kMR, T_) - *t0;
    };
    for (int64_t b = blocks * tid / team; b < b_end; ++b) {
      int64_t t0, count;
      block_tokens(b, &t0, &count);
      const int64_t mp = (count + kMR - 1) / kMR;
      RowPrefetch next;
      if (b + 1 < b_end) {
        int64_t n0, ncount;
        block_tokens(b + 1, &n0, &ncount);
        next.first = reinterpret_cast<const char*>(x + n0 * p.x_row_stride);
        next.row_stride_bytes = p.x_row_stride * static_cast<int64_t>(sizeof(T));
        next.row_lines = (D * static_cast<int64_t>(sizeof(T)) + 63) / 64;
        next.lines = ncount * next.row_lines;
      }

      // z = x W_down^T + b (+ eda_scale * z_prev), then h = RMSNorm(z) * norm_w.
      pack_block(x + t0 * p.x_row_stride, p.x_row_stride, count, D, a_panels);
      block_gemm(a_panels, down_w, D, mp, np_r, tiles, next);
      for (int64_t r = 0; r < count; ++r) {
        for (int64_t n = 0; n < np_r; ++n)
          store_down<T>(p, t0 + r, n * kNR, tile_row(tiles, np_r, r, n),
                        static_cast<int>(std::min<int64_t>(kNR, R - n * kNR)));
        rms_norm_row<T>(p.z + (t0 + r) * R, norm_w, R, p.eps, h + r * R);
      }

      // h = GELU(h W1^T + b1), then h = GELU(h W2^T + b2).
      for (const auto& [w, bias] : {std::pair{fc1_w, fc1_b}, std::pair{fc2_w, fc2_b}}) {
        pack_block(h, R, count, R, a_panels);
        block_gemm(a_panels, w, R, mp, np_r, tiles);
        for (int64_t r = 0; r < count; ++r)
          for (int64_t n = 0; n < np_r; ++n)
            store_bias_gelu(h + r * R + n * kNR, tile_row(tiles, np_r, r, n), bias + n * kNR,
                            static_cast<int>(std::min<int64_t>(kNR, R - n * kNR)));
      }

      // logits = h W_out^T (rounded to T like a T-typed linear), then the softmax and the choice.
      pack_block(h, R, count, R, a_panels);
      block_gemm(a_panels, out_w, R, mp, np_c, tiles);
      for (int64_t r = 0; r < count; ++r) {
        float* logits = p.logits + (t0 + r) * C;
        for (int64_t n = 0; n < np_c; ++n) {
          const float* v = tile_row(tiles, np_c, r, n);
          for (int64_t c = 0; c < std::min<int64_t>(kNR, C - n * kNR); ++c) logits[n * kNR + c] = round_to<T>(v[c]);
        }
        choose_expert<T>(p, t0 + r);
      }
    }
  }
  return nullptr;
}

template const char* router_token_blocks<float>(const RouterParams&);
template const char* router_token_blocks<f16>(const RouterParams&);
template const char* router_token_blocks<bf16>(const RouterParams&);

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
