// Layout of the CPU router's token-block path (csrc/cpu/router_blocked.cpp), shared with its workspace size
// (csrc/cpu/moe_workspace.cpp). The workspace holds the four weight matrices packed into kGemmNR-column panels
// of floats, then per thread one block of tokens: their rows packed into kGemmMR-row panels, the block's C
// tiles, and a row buffer for the MLP activations.
#pragma once
#include <algorithm>
#include <cstdint>

#include "cpu/gemm_shape.h"
#include "zaya_rt/common.h"

namespace zaya_rt::cpu {

// From this many tokens on the router runs in token blocks (its weights packed per call pay off); fewer go
// through the few-token path in chunks of 16. Measured crossovers: about 64 tokens for bf16, about 96 for fp32
// (whose chunks of 16 take the faster lanes path).
constexpr int64_t kRouterBlockMinTokens = 65;
constexpr int64_t kRouterBlockMinTokensF32 = 97;
constexpr int64_t kRouterBlockPanels = 8;       // kGemmMR-token panels per block (96 tokens)
constexpr int64_t kRouterBlockKC = 256;         // K entries per pass over a block's C tiles

inline bool use_router_token_blocks(int64_t T, int64_t D, int64_t R, DType dtype) {
  const int64_t min_tokens = dtype == DType::kFloat32 ? kRouterBlockMinTokensF32 : kRouterBlockMinTokens;
  return T >= min_tokens && D > 0 && R > 0;
}

struct RouterBlockLayout {
  int64_t r_pad, c_pad;      // R and C rounded up to whole kGemmNR panels
  int64_t down_w, fc_w, out_w;  // floats of each packed weight (fc1 and fc2 take fc_w each)
  int64_t panels_a;          // floats of a block's packed token rows (the widest K)
  int64_t tiles;             // floats of a block's C tiles
  int64_t rows;              // bytes of a block's activation rows (at most 4 per element)
  int64_t weights_bytes() const { return (down_w + 2 * fc_w + out_w) * 4; }
  int64_t per_thread_bytes() const { return (panels_a + tiles) * 4 + rows; }
};

inline RouterBlockLayout router_block_layout(int64_t D, int64_t R, int64_t C) {
  auto round_up = [](int64_t v, int64_t m) { return (v + m - 1) / m * m; };
  RouterBlockLayout L{};
  L.r_pad = round_up(R, kGemmNR);
  L.c_pad = round_up(C, kGemmNR);
  L.down_w = round_up(L.r_pad * D, 16);
  L.fc_w = round_up(L.r_pad * R, 16);
  L.out_w = round_up(L.c_pad * R, 16);
  const int64_t tokens = kRouterBlockPanels * kGemmMR;
  L.panels_a = round_up(tokens * std::max(D, R), 16);
  L.tiles = round_up(tokens * std::max(L.r_pad, L.c_pad), 16);
  L.rows = round_up(tokens * R * 4, 64);
  return L;
}

// Bytes for `threads` threads, including 64 bytes of alignment slack.
inline int64_t router_block_workspace(int64_t D, int64_t R, int64_t C, int64_t threads) {
  const RouterBlockLayout L = router_block_layout(D, R, C);
  return 64 + L.weights_bytes() + threads * L.per_thread_bytes();
}

}  // namespace zaya_rt::cpu
