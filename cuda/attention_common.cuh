// Index helpers shared by the attention kernels (cuda/attention_kernels.cuh) and the sm_90a forward
// (cuda/attention_sm90.cuh): the mask's key range, the packed varlen grid and the rows of a block.
#pragma once
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "cuda/compat.h"
#include "cuda/numeric.cuh"
#include "zaya_rt/attention.h"

namespace zaya_rt::gpu::attn_detail {

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
ZAYA_RT_DEVICE_INLINE int64_t lmin(int64_t a, int64_t b) { return a < b ? a : b; }
ZAYA_RT_DEVICE_INLINE int64_t lmax(int64_t a, int64_t b) { return a > b ? a : b; }

// The keys a query at `pos` sees, [lo, hi), among Lk keys (the header's mask).
struct Range { int64_t lo, hi; };
ZAYA_RT_DEVICE_INLINE Range key_range(int64_t pos, int64_t Lk, bool causal, int64_t window) {
  Range r{0, Lk};
  if (causal) r.hi = lmin(Lk, pos + 1);
  if (window > 0) {
    r.lo = lmax(0, pos - window + 1);
    if (!causal) r.hi = Lk;
  }
  return r;
}

// Packed grid: the sequence of block x, and the block's index within it (or -1 past the last tile).
ZAYA_RT_DEVICE_INLINE int64_t find_sequence(const int32_t* cu, int64_t batch, int64_t bm, int64_t x,
                                            int64_t* tile) {
  int64_t lo = 0, hi = batch - 1;  // largest b with start(b) <= x
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (static_cast<int64_t>(cu[mid]) / bm + mid <= x) lo = mid; else hi = mid - 1;
  }
  const int64_t b = lo;
  const int64_t t = x - (static_cast<int64_t>(cu[b]) / bm + b);
  const int64_t len = static_cast<int64_t>(cu[b + 1]) - cu[b];
  *tile = (t >= 0 && t * bm < len) ? t : -1;
  return b;
}
inline int64_t packed_blocks(int64_t total, int64_t batch, int64_t bm) { return total / bm + batch + 1; }

template <typename T> inline bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}
template <typename T> inline bool vec_ok(const void* base, int64_t d, std::initializer_list<int64_t> strides) {
  constexpr int64_t V = 16 / sizeof(T);
  if (!aligned16<T>(base) || d % V != 0) return false;
  for (int64_t s : strides)
    if (s % V != 0) return false;
  return true;
}

// The rows of a block: positions i0 .. i0 + nq - 1 times heads h0 .. h0 + nh - 1 (row r = (r / nh, r % nh)).
struct RowMap {
  int64_t i0, h0;
  int nq, nh;
  ZAYA_RT_DEVICE_INLINE int64_t token(int r) const { return i0 + r / nh; }
  ZAYA_RT_DEVICE_INLINE int64_t head(int r) const { return h0 + r % nh; }
};

struct VarlenGeometry {
  int bm;        // query positions per block
  int hc;        // heads per block (a chunk of the GQA group)
  int chunks;    // head chunks per group
};
inline VarlenGeometry varlen_geometry(int64_t G, int rows) {
  const int hc = static_cast<int>(std::min<int64_t>(G, rows));
  return {std::max(1, rows / hc), hc, static_cast<int>(ceil_div(G, hc))};
}

// Rows [0, count) of D 16-bit elements each (row j at row_ptr(j)) into dst rows LD apart, in 16-byte copies by
// THREADS threads; rows count .. rows_total - 1 are zero-filled (masked keys must not carry NaN into P V).
template <typename T, int D, int LD, int THREADS, typename RowPtr>
ZAYA_RT_DEVICE_INLINE void copy_rows_16b(T* dst, int count, int rows_total, RowPtr row_ptr) {
  constexpr int per = D / 8;
  for (int idx = threadIdx.x; idx < rows_total * per; idx += THREADS) {
    const int j = idx / per, c = (idx - j * per) * 8;
    Pack<T, 8> v;
    if (j < count) {
      v = *reinterpret_cast<const Pack<T, 8>*>(row_ptr(j) + c);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) v.v[e].bits = 0;
    }
    *reinterpret_cast<Pack<T, 8>*>(dst + j * LD + c) = v;
  }
}

// A block's share of a packed varlen batch (every forward kernel family and the dq backward; Params is the
// forward or backward params struct): blockIdx.x picks the sequence
// and its query tile, blockIdx.y the kv head g and a chunk of its group's q heads; the block's rows are those
// query positions times those heads (rm). valid is false for blocks past the last tile.
struct VarlenBlock {
  bool valid;
  int64_t q0, Lq, k0, Lk, G, g;
  RowMap rm;
};
template <typename Params>
ZAYA_RT_DEVICE_INLINE VarlenBlock varlen_block(const Params& p, const VarlenGeometry& geo) {
  VarlenBlock v{};
  int64_t tile;
  const int64_t b = find_sequence(p.cu_seqlens_q, p.batch, geo.bm, blockIdx.x, &tile);
  if (tile < 0) return v;
  v.valid = true;
  v.q0 = p.cu_seqlens_q[b], v.Lq = p.cu_seqlens_q[b + 1] - v.q0;
  v.k0 = p.cu_seqlens_k[b], v.Lk = p.cu_seqlens_k[b + 1] - v.k0;
  v.G = p.num_heads_q / p.num_heads_k;
  v.g = blockIdx.y / geo.chunks;
  const int64_t hchunk = blockIdx.y % geo.chunks;
  v.rm = RowMap{tile * geo.bm, v.g * v.G + hchunk * geo.hc, static_cast<int>(lmin(geo.bm, v.Lq - tile * geo.bm)),
                static_cast<int>(lmin(geo.hc, v.G - hchunk * geo.hc))};
  return v;
}

// The operands both tensor-core forwards take (sm_80 WMMA, sm_90a wgmma): 16-bit T, head dim 64 or 128,
// q/k/v rows 16-byte aligned.
template <typename T> inline bool tc_fwd_operands_ok(const AttnVarlenFwdParams& p) {
  if constexpr (std::is_same_v<T, float>) {
    return false;
  } else {
    const int64_t d = p.head_dim;
    return (d == 64 || d == 128) && kWarpSize == 32 && vec_ok<T>(p.q, d, {p.q_token_stride, p.q_head_stride}) &&
           vec_ok<T>(p.k, d, {p.k_token_stride, p.k_head_stride}) &&
           vec_ok<T>(p.v, d, {p.v_token_stride, p.v_head_stride});
  }
}

}  // namespace zaya_rt::gpu::attn_detail
