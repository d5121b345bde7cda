// Workspace layout of the CPU router's few-token path (csrc/cpu/router.cpp), shared with its size
// (csrc/cpu/moe_workspace.cpp): the tokens' rows packed once for all threads, two activation row buffers, and
// per thread its packed copy of one chunk of the current activations, that chunk's column sums and 16-lane
// scratch.
#pragma once
#include <algorithm>
#include <cstdint>

namespace zaya_rt::cpu {

// The few-token path computes its tokens in chunks of this many (the dot path's rows, or the lanes of one
// AVX-512 vector).
constexpr int64_t kRouterChunkTokens = 16;

struct RouterDecodeLayout {
  int64_t x_packed, rows, h_packed, sums, lanes;  // bytes of each part, multiples of 64
  int64_t per_thread() const { return h_packed + sums + lanes; }
};

inline RouterDecodeLayout router_decode_layout(int64_t T, int64_t D, int64_t R, int64_t C) {
  auto aligned = [](int64_t bytes) { return (bytes + 63) / 64 * 64; };
  // Packed rows take whole chunks and at most 4 bytes an element (fp32, or a bf16 widened to fp32).
  const int64_t chunk = kRouterChunkTokens, width = std::max(R, C);
  const int64_t padded = (T + chunk - 1) / chunk * chunk;
  return {aligned(padded * D * 4), aligned(T * R * 4), aligned(chunk * R * 4), aligned(chunk * width * 4),
          aligned(chunk * width * 4)};
}

// Bytes for `threads` threads, including 64 bytes of alignment slack.
inline int64_t router_decode_workspace(int64_t T, int64_t D, int64_t R, int64_t C, int64_t threads) {
  const RouterDecodeLayout L = router_decode_layout(T, D, R, C);
  return 64 + L.x_packed + 2 * L.rows + threads * L.per_thread();
}

}  // namespace zaya_rt::cpu
