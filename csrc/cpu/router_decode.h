// Workspace layout of the CPU router's few-token path (csrc/cpu/router.cpp), shared with its size
// (csrc/cpu/moe_workspace.cpp): the tokens' rows packed once for all threads, two activation row buffers, and
// per thread its packed copy of the current activations, the sums of its columns and 16-lane scratch.
#pragma once
#include <algorithm>
#include <cstdint>

namespace zaya_rt::cpu {

// Tokens the few-token path takes at most (the dot path's rows, or the lanes of one AVX-512 vector).
constexpr int64_t kRouterDecodeMaxTokens = 16;

struct RouterDecodeLayout {
  int64_t x_packed, rows, h_packed, sums, lanes;  // bytes of each part, multiples of 64
  int64_t per_thread() const { return h_packed + sums + lanes; }
};

inline RouterDecodeLayout router_decode_layout(int64_t T, int64_t D, int64_t R, int64_t C) {
  auto aligned = [](int64_t bytes) { return (bytes + 63) / 64 * 64; };
  // Packed rows take all 16 lanes and at most 4 bytes an element (fp32, or a bf16 widened to fp32).
  const int64_t lanes = kRouterDecodeMaxTokens, width = std::max(R, C);
  return {aligned(lanes * D * 4), aligned(T * R * 4), aligned(lanes * R * 4), aligned(T * width * 4),
          aligned(lanes * width * 4)};
}

// Bytes for `threads` threads, including 64 bytes of alignment slack.
inline int64_t router_decode_workspace(int64_t T, int64_t D, int64_t R, int64_t C, int64_t threads) {
  const RouterDecodeLayout L = router_decode_layout(T, D, R, C);
  return 64 + L.x_packed + 2 * L.rows + threads * L.per_thread();
}

}  // namespace zaya_rt::cpu
