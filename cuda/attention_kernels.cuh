// GPU attention kernels, one source for CUDA (cuda/attention.cu) and HIP (hip/attention.hip): variable-length
// packed prefill forward and backward, and paged decode (zaya_rt/attention.h). Masks, scale and lse follow the
// header's contract exactly; scores, softmax statistics and accumulators are fp32.
//
// Layout of the work (all kernels: 128 threads, SIMT fp32 math, tiles staged in shared memory as fp32):
//   tiles       A block owns up to R "rows" (a row = one query token of one query head) and walks the keys
//               its rows may see in tiles of BN keys. K/V tiles are loaded once per block for all of its
//               rows: the rows are the q heads of one GQA group (or a chunk of it) times consecutive query
//               positions, so K/V are read once per group. R and BN are picked on the host so that the
//               tiles fit in 48 KiB of shared memory (R 16/8/4, BN 64/32/16 by head dim).
//   per row     a warp owns rows warp, warp + W, ...; its lanes split the tile's keys for the scores
//               (q . k from shared memory, K rows padded to d + 1 floats: no bank conflicts) and the head
//               dim for the output accumulators (ceil(d / warp) registers per lane), with online softmax.
//   grid        packed over sequences without a host sync: block x of sequence b is x - start(b) with
//               start(b) = cu[b] / BM + b (a bound, so at most total / BM + B + 1 blocks; a block that
//               lands past its sequence's last tile exits). The block's sequence is a binary search of
//               cu_seqlens on the device.
//   masks       only the key range the block's rows may see is visited (causal + window), so fully masked
//               tiles are skipped; per-key masking inside a tile.
//   forward     out = acc / l, lse = m + log(l) (natural log); a row that sees no key writes 0 and -inf.
//   backward    delta = rowsum(dO * O) into the workspace, then dq (per query block, like the forward:
//               recompute p from lse, dp = dO . v, ds = p (dp - delta)) and dk/dv (per key block and kv
//               head, looping over the group's q heads and the query tiles that see the block: deterministic,
//               no atomics).
//   decode      flash-decoding: grid (sequence, kv head, row chunk, split); a block loads its split's K/V
//               pages once for all q heads of the group and all n queries (16-byte vector loads when the
//               cache strides allow), writes a partial (o / l, lse) to the workspace, and a merge kernel
//               weighs the splits by their lse. With one split the block writes `out` directly.
//               num_splits is chosen from host sizes only (same choice in the workspace function).
//   tensor cores  CUDA sm_80+, bf16/fp16, d 64/128, 16-byte aligned rows: the forward runs on wmma tiles
//               (cuda/attention_tc.cuh); on sm_90 (CC 9.0) builds with sm_90a code the wgmma forward
//               (cuda/attention_sm90.cuh) instead. ZAYA_RT_CUDA_ATTENTION=auto|sm90|wmma|simt forces a family
//               (cuda/attention_sm90.h). HIP (CDNA3), bf16/fp16, d 32/64/128/256, 16-byte aligned rows: the
//               forward runs on MFMA tiles (hip/attention_mfma.h; ZAYA_RT_CUDA_ATTENTION=simt forces SIMT).
//               Everything else, the backward and decode run the SIMT path.
// Not here yet: TMA staging in the sm_90a forward, tensor-core backward/decode.
//
// No allocation, no host synchronisation, launch errors returned as messages: graph-capturable.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <type_traits>

#include "cuda/compat.h"
#include "cuda/attention_common.cuh"
#include "cuda/env_choice.h"
#include "cuda/numeric.cuh"
#include "zaya_rt/attention.h"

namespace zaya_rt::gpu {
namespace attn_detail {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kMaxRows = 16;                      // rows per block
constexpr int kRowsPerWarp = kMaxRows / kWarps;   // register rows per warp
constexpr int64_t kSmemBudget = 48 * 1024;
constexpr int kDecodeMinKeysPerSplit = 256;
constexpr int kDecodeMaxSplits = 128;

// Head-dim registers per lane: the smallest of 2, 4, 8 (CUDA) covering d (d <= 256).
inline int pick_ne(int64_t d) {
  const int64_t need = ceil_div(d, kWarpSize);
  return need <= 2 ? 2 : need <= 4 ? 4 : 8;
}

// Loads `cnt` rows of d elements (row j at row_ptr(j)) into dst[j * ld + c] as fp32. With vec, every row
// start is aligned for Pack<T, 16 / sizeof(T)> and d is a multiple of it.
template <typename T, typename RowPtr>
ZAYA_RT_DEVICE_INLINE void load_rows(float* dst, int ld, int cnt, int d, bool vec, RowPtr row_ptr) {
  constexpr int V = 16 / sizeof(T);
  if (vec) {
    const int per = d / V;
    for (int idx = threadIdx.x; idx < cnt * per; idx += kThreads) {
      const int j = idx / per, c = (idx - j * per) * V;
      float f[V];
      load_n<V>(row_ptr(j) + c, f);
#pragma unroll
      for (int e = 0; e < V; ++e) dst[j * ld + c + e] = f[e];
    }
  } else {
    for (int idx = threadIdx.x; idx < cnt * d; idx += kThreads) {
      const int j = idx / d, c = idx - j * d;
      dst[j * ld + c] = to_float(row_ptr(j)[c]);
    }
  }
}

// Per-warp online-softmax state of its rows.
template <int NE> struct RowState {
  float o[kRowsPerWarp][NE];
  float m[kRowsPerWarp], l[kRowsPerWarp];
  ZAYA_RT_DEVICE_INLINE void init() {
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      m[r] = -INFINITY, l[r] = 0.f;
#pragma unroll
      for (int e = 0; e < NE; ++e) o[r][e] = 0.f;
    }
  }
};

// One K/V tile (keys t0 .. t0 + cnt - 1 in ks [cnt][d + 1], vs [cnt][d]) against the warp's rows. Row r's
// query (pre-scaled) is qs[r * d]; row_pos(r) gives its position; pw is the warp's [bn] probability buffer.
template <int NE, typename RowPos>
ZAYA_RT_DEVICE_INLINE void attend_tile(RowState<NE>& st, const float* qs, const float* ks, const float* vs,
                                       float* pw, int rows, int d, int64_t t0, int cnt, int64_t Lk, bool causal,
                                       int64_t window, RowPos row_pos) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int r = warp + rr * kWarps;
    if (r >= rows) break;
    const Range kr = key_range(row_pos(r), Lk, causal, window);
    const int lo = static_cast<int>(lmax(kr.lo - t0, 0)), hi = static_cast<int>(lmin(kr.hi - t0, cnt));
    if (lo >= hi) continue;  // uniform over the warp
    const float* q = qs + r * d;
    float mx = -INFINITY;
    for (int j0 = 0; j0 < cnt; j0 += kWarpSize) {
      const int j = j0 + lane;
      float s = -INFINITY;
      if (j >= lo && j < hi) {
        const float* k = ks + j * (d + 1);
        float acc = 0.f;
        for (int c = 0; c < d; ++c) acc = fmaf(q[c], k[c], acc);
        s = acc;
      }
      if (j < cnt) pw[j] = s;
      mx = fmaxf(mx, s);
    }
    mx = warp_max(mx);
    const float m_new = fmaxf(st.m[rr], mx);
    const float alpha = __expf(st.m[rr] - m_new);  // exp(-inf) = 0 on the first tile
    float sum = 0.f;
    warp_sync();
    for (int j = lane; j < cnt; j += kWarpSize) {
      const float e = __expf(pw[j] - m_new);  // masked keys: exp(-inf) = 0
      pw[j] = e;
      sum += e;
    }
    sum = warp_sum(sum);
    warp_sync();
#pragma unroll
    for (int e = 0; e < NE; ++e) st.o[rr][e] *= alpha;
    for (int j = lo; j < hi; ++j) {
      const float pj = pw[j];
      const float* v = vs + j * d;
#pragma unroll
      for (int e = 0; e < NE; ++e) {
        const int c = lane + e * kWarpSize;
        if (c < d) st.o[rr][e] = fmaf(pj, v[c], st.o[rr][e]);
      }
    }
    st.l[rr] = st.l[rr] * alpha + sum;
    st.m[rr] = m_new;
    warp_sync();
  }
}

// ---- varlen forward --------------------------------------------------------------------------------------

struct Tiles { int rows, bn; };  // rows per block, keys per tile

// Shared floats: qs [rows][d], ks [bn][d + 1], vs [bn][d], pw [warps][bn] (+ extra_per_row * rows).
inline int64_t tile_smem_bytes(Tiles t, int64_t d, int64_t q_like_bufs) {
  return 4 * (q_like_bufs * t.rows * d + t.bn * (d + 1) + t.bn * d + kWarps * t.bn + 2 * t.rows);
}
inline Tiles pick_tiles(int64_t d, int64_t q_like_bufs, int prefer_bn) {
  for (int bn : {prefer_bn, 64, 32, 16})
    for (int rows : {16, 8, 4})
      if (bn <= prefer_bn && tile_smem_bytes({rows, bn}, d, q_like_bufs) <= kSmemBudget) return {rows, bn};
  return {4, 16};
}

template <typename T, int NE>
__global__ ZAYA_RT_LAUNCH_BOUNDS(kThreads) void varlen_fwd_kernel(AttnVarlenFwdParams p, VarlenGeometry geo,
                                                                  int bn, bool vec_k, bool vec_v) {
  extern __shared__ float smem[];
  const int d = static_cast<int>(p.head_dim);
  const VarlenBlock blk = varlen_block(p, geo);
  if (!blk.valid) return;
  const int64_t q0 = blk.q0, Lq = blk.Lq, k0 = blk.k0, Lk = blk.Lk, G = blk.G, g = blk.g;
  const RowMap rm = blk.rm;
  const int rows = rm.nq * rm.nh;
  const int rows_cap = geo.bm * geo.hc;
  float* qs = smem;
  float* ks = qs + rows_cap * d;
  float* vs = ks + bn * (d + 1);
  float* pw = vs + bn * d + (threadIdx.x / kWarpSize) * bn;

  const T* q = static_cast<const T*>(p.q);
  for (int idx = threadIdx.x; idx < rows * d; idx += kThreads) {
    const int r = idx / d, c = idx - r * d;
    qs[idx] = to_float(q[(q0 + rm.token(r)) * p.q_token_stride + rm.head(r) * p.q_head_stride + c]) * p.scale;
  }
  const int64_t off = Lk - Lq;
  const Range first = key_range(off + rm.i0, Lk, p.causal, p.window);
  const Range last = key_range(off + rm.i0 + rm.nq - 1, Lk, p.causal, p.window);
  const int64_t lo = first.lo, hi = last.hi;
  auto row_pos = [&](int r) { return off + rm.token(r); };

  RowState<NE> st;
  st.init();
  const T* kp = static_cast<const T*>(p.k) + k0 * p.k_token_stride + g * p.k_head_stride;
  const T* vp = static_cast<const T*>(p.v) + k0 * p.v_token_stride + g * p.v_head_stride;
  for (int64_t t0 = lo; t0 < hi; t0 += bn) {
    const int cnt = static_cast<int>(lmin(bn, hi - t0));
    __syncthreads();
    load_rows<T>(ks, d + 1, cnt, d, vec_k, [&](int j) { return kp + (t0 + j) * p.k_token_stride; });
    load_rows<T>(vs, d, cnt, d, vec_v, [&](int j) { return vp + (t0 + j) * p.v_token_stride; });
    __syncthreads();
    attend_tile<NE>(st, qs, ks, vs, pw, rows, d, t0, cnt, Lk, p.causal, p.window, row_pos);
  }

  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int r = warp + rr * kWarps;
    if (r >= rows) break;
    const int64_t tok = q0 + rm.token(r), h = rm.head(r);
    const float inv = st.l[rr] > 0.f ? 1.f / st.l[rr] : 0.f;
    T* orow = out + tok * p.out_token_stride + h * p.out_head_stride;
#pragma unroll
    for (int e = 0; e < NE; ++e) {
      const int c = lane + e * kWarpSize;
      if (c < d) orow[c] = from_float<T>(st.o[rr][e] * inv);
    }
    if (p.lse != nullptr && lane == 0)
      p.lse[h * p.lse_head_stride + tok] = st.l[rr] > 0.f ? st.m[rr] + logf(st.l[rr]) : -INFINITY;
  }
}

// ---- varlen backward -------------------------------------------------------------------------------------

// delta[h, t] = sum_c dO[t, h, c] * O[t, h, c]; one warp per (token, head).
template <typename T>
__global__ ZAYA_RT_LAUNCH_BOUNDS(kThreads) void bwd_delta_kernel(AttnVarlenBwdParams p, float* delta) {
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarpSize;
  if (item >= p.total_q * p.num_heads_q) return;
  const int64_t t = item / p.num_heads_q, h = item % p.num_heads_q;
  const T* o = static_cast<const T*>(p.out) + t * p.out_token_stride + h * p.out_head_stride;
  const T* go = static_cast<const T*>(p.dout) + t * p.dout_token_stride + h * p.dout_head_stride;
  float acc = 0.f;
  for (int64_t c = threadIdx.x % kWarpSize; c < p.head_dim; c += kWarpSize) acc += to_float(o[c]) * to_float(go[c]);
  acc = warp_sum(acc);
  if (threadIdx.x % kWarpSize == 0) delta[h * p.total_q + t] = acc;
}

// dq for a block of query rows (the forward's block layout). Shared: qs, dos [rows][d], ks [bn][d+1],
// vs [bn][d+1], pw [warps][bn], lse/delta [rows].
template <typename T, int NE>
__global__ ZAYA_RT_LAUNCH_BOUNDS(kThreads) void bwd_dq_kernel(AttnVarlenBwdParams p, const float* delta,
                                                              VarlenGeometry geo, int bn) {
  extern __shared__ float smem[];
  const int d = static_cast<int>(p.head_dim);
  const VarlenBlock blk = varlen_block(p, geo);
  if (!blk.valid) return;
  const int64_t q0 = blk.q0, Lq = blk.Lq, k0 = blk.k0, Lk = blk.Lk, G = blk.G, g = blk.g;
  const RowMap rm = blk.rm;
  const int rows = rm.nq * rm.nh, rows_cap = geo.bm * geo.hc;
  float* qs = smem;
  float* dos = qs + rows_cap * d;
  float* ks = dos + rows_cap * d;
  float* vs = ks + bn * (d + 1);
  float* pws = vs + bn * (d + 1);
  float* lse_s = pws + kWarps * bn;
  float* del_s = lse_s + rows_cap;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  float* pw = pws + warp * bn;

  const T* q = static_cast<const T*>(p.q);
  const T* dout = static_cast<const T*>(p.dout);
  for (int idx = threadIdx.x; idx < rows * d; idx += kThreads) {
    const int r = idx / d, c = idx - r * d;
    const int64_t tok = q0 + rm.token(r), h = rm.head(r);
    qs[idx] = to_float(q[tok * p.q_token_stride + h * p.q_head_stride + c]) * p.scale;
    dos[idx] = to_float(dout[tok * p.dout_token_stride + h * p.dout_head_stride + c]);
  }
  for (int r = threadIdx.x; r < rows; r += kThreads) {
    const int64_t tok = q0 + rm.token(r), h = rm.head(r);
    lse_s[r] = p.lse[h * p.lse_head_stride + tok];
    del_s[r] = delta[h * p.total_q + tok];
  }
  const int64_t off = Lk - Lq;
  const int64_t lo = key_range(off + rm.i0, Lk, p.causal, p.window).lo;
  const int64_t hi = key_range(off + rm.i0 + rm.nq - 1, Lk, p.causal, p.window).hi;

  float dq[kRowsPerWarp][NE];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr)
#pragma unroll
    for (int e = 0; e < NE; ++e) dq[rr][e] = 0.f;

  const T* kp = static_cast<const T*>(p.k) + k0 * p.k_token_stride + g * p.k_head_stride;
  const T* vp = static_cast<const T*>(p.v) + k0 * p.v_token_stride + g * p.v_head_stride;
  for (int64_t t0 = lo; t0 < hi; t0 += bn) {
    const int cnt = static_cast<int>(lmin(bn, hi - t0));
    __syncthreads();
    load_rows<T>(ks, d + 1, cnt, d, false, [&](int j) { return kp + (t0 + j) * p.k_token_stride; });
    load_rows<T>(vs, d + 1, cnt, d, false, [&](int j) { return vp + (t0 + j) * p.v_token_stride; });
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp + rr * kWarps;
      if (r >= rows) break;
      const float lse = lse_s[r];
      if (!(lse > -INFINITY)) continue;
      const Range kr = key_range(off + rm.token(r), Lk, p.causal, p.window);
      const int jlo = static_cast<int>(lmax(kr.lo - t0, 0)), jhi = static_cast<int>(lmin(kr.hi - t0, cnt));
      if (jlo >= jhi) continue;
      const float* qr = qs + r * d;
      const float* dr = dos + r * d;
      for (int j0 = 0; j0 < cnt; j0 += kWarpSize) {
        const int j = j0 + lane;
        if (j >= cnt) continue;
        float ds = 0.f;
        if (j >= jlo && j < jhi) {
          const float* k = ks + j * (d + 1);
          const float* v = vs + j * (d + 1);
          float s = 0.f, dp = 0.f;
          for (int c = 0; c < d; ++c) {
            s = fmaf(qr[c], k[c], s);
            dp = fmaf(dr[c], v[c], dp);
          }
          const float pr = __expf(s - lse);
          ds = pr * (dp - del_s[r]);
        }
        pw[j] = ds;
      }
      warp_sync();
      for (int j = jlo; j < jhi; ++j) {
        const float ds = pw[j];
        const float* k = ks + j * (d + 1);
#pragma unroll
        for (int e = 0; e < NE; ++e) {
          const int c = lane + e * kWarpSize;
          if (c < d) dq[rr][e] = fmaf(ds, k[c], dq[rr][e]);
        }
      }
      warp_sync();
    }
  }
  T* dqp = static_cast<T*>(p.dq);
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int r = warp + rr * kWarps;
    if (r >= rows) break;
    T* row = dqp + (q0 + rm.token(r)) * p.dq_token_stride + rm.head(r) * p.dq_head_stride;
#pragma unroll
    for (int e = 0; e < NE; ++e) {
      const int c = lane + e * kWarpSize;
      if (c < d) row[c] = from_float<T>(dq[rr][e] * p.scale);
    }
  }
}

// dk, dv for a block of `rows` keys of one kv head, summed over the group's q heads. Shared: krow, vrow
// [rows][d], qs, dos [bn][d+1], pw (p) and dsw (ds) [warps][bn], lse/delta [bn].
template <typename T, int NE>
__global__ ZAYA_RT_LAUNCH_BOUNDS(kThreads) void bwd_dkdv_kernel(AttnVarlenBwdParams p, const float* delta, int bk,
                                                                int bn) {
  extern __shared__ float smem[];
  const int d = static_cast<int>(p.head_dim);
  int64_t tile;
  const int64_t b = find_sequence(p.cu_seqlens_k, p.batch, bk, blockIdx.x, &tile);
  if (tile < 0) return;
  const int64_t q0 = p.cu_seqlens_q[b], Lq = p.cu_seqlens_q[b + 1] - q0;
  const int64_t k0 = p.cu_seqlens_k[b], Lk = p.cu_seqlens_k[b + 1] - k0;
  const int64_t G = p.num_heads_q / p.num_heads_k;
  const int64_t g = blockIdx.y;
  const int64_t j0 = tile * bk;
  const int rows = static_cast<int>(lmin(bk, Lk - j0));
  float* kr_s = smem;
  float* vr_s = kr_s + bk * d;
  float* qs = vr_s + bk * d;
  float* dos = qs + bn * (d + 1);
  float* pws = dos + bn * (d + 1);
  float* dsws = pws + kWarps * bn;
  float* lse_s = dsws + kWarps * bn;
  float* del_s = lse_s + bn;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  float* pw = pws + warp * bn;
  float* dsw = dsws + warp * bn;

  const T* kp = static_cast<const T*>(p.k) + (k0 + j0) * p.k_token_stride + g * p.k_head_stride;
  const T* vp = static_cast<const T*>(p.v) + (k0 + j0) * p.v_token_stride + g * p.v_head_stride;
  load_rows<T>(kr_s, d, rows, d, false, [&](int j) { return kp + j * p.k_token_stride; });
  load_rows<T>(vr_s, d, rows, d, false, [&](int j) { return vp + j * p.v_token_stride; });

  // Queries that may see a key of the block: pos = off + i >= j0 (causal), pos <= j_last + window - 1 (window).
  const int64_t off = Lk - Lq, j_last = j0 + rows - 1;
  int64_t ilo = 0, ihi = Lq;
  if (p.causal) ilo = lmax(0, j0 - off);
  if (p.window > 0) ihi = lmax(ilo, lmin(Lq, j_last + p.window - off));

  float dk[kRowsPerWarp][NE], dv[kRowsPerWarp][NE];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr)
#pragma unroll
    for (int e = 0; e < NE; ++e) dk[rr][e] = dv[rr][e] = 0.f;

  const T* q = static_cast<const T*>(p.q);
  const T* dout = static_cast<const T*>(p.dout);
  for (int64_t hh = 0; hh < G; ++hh) {
    const int64_t h = g * G + hh;
    for (int64_t i0 = ilo; i0 < ihi; i0 += bn) {
      const int cnt = static_cast<int>(lmin(bn, ihi - i0));
      __syncthreads();
      load_rows<T>(qs, d + 1, cnt, d, false,
                   [&](int i) { return q + (q0 + i0 + i) * p.q_token_stride + h * p.q_head_stride; });
      load_rows<T>(dos, d + 1, cnt, d, false,
                   [&](int i) { return dout + (q0 + i0 + i) * p.dout_token_stride + h * p.dout_head_stride; });
      for (int i = threadIdx.x; i < cnt; i += kThreads) {
        lse_s[i] = p.lse[h * p.lse_head_stride + q0 + i0 + i];
        del_s[i] = delta[h * p.total_q + q0 + i0 + i];
      }
      __syncthreads();
#pragma unroll
      for (int rr = 0; rr < kRowsPerWarp; ++rr) {
        const int r = warp + rr * kWarps;
        if (r >= rows) break;
        const int64_t j = j0 + r;
        const float* kr = kr_s + r * d;
        const float* vr = vr_s + r * d;
        for (int ib = 0; ib < cnt; ib += kWarpSize) {
          const int i = ib + lane;
          if (i >= cnt) continue;
          const int64_t pos = off + i0 + i;
          const Range rg = key_range(pos, Lk, p.causal, p.window);
          float pr = 0.f, ds = 0.f;
          const float lse = lse_s[i];
          if (j >= rg.lo && j < rg.hi && lse > -INFINITY) {
            const float* qi = qs + i * (d + 1);
            const float* di = dos + i * (d + 1);
            float s = 0.f, dp = 0.f;
            for (int c = 0; c < d; ++c) {
              s = fmaf(qi[c], kr[c], s);
              dp = fmaf(di[c], vr[c], dp);
            }
            pr = __expf(s * p.scale - lse);
            ds = pr * (dp - del_s[i]);
          }
          pw[i] = pr;
          dsw[i] = ds;
        }
        warp_sync();
        for (int i = 0; i < cnt; ++i) {
          const float pr = pw[i], ds = dsw[i];
          if (pr == 0.f && ds == 0.f) continue;  // uniform: the same smem value on every lane
          const float* qi = qs + i * (d + 1);
          const float* di = dos + i * (d + 1);
#pragma unroll
          for (int e = 0; e < NE; ++e) {
            const int c = lane + e * kWarpSize;
            if (c < d) {
              dv[rr][e] = fmaf(pr, di[c], dv[rr][e]);
              dk[rr][e] = fmaf(ds, qi[c], dk[rr][e]);
            }
          }
        }
        warp_sync();
      }
    }
  }
  T* dkp = static_cast<T*>(p.dk);
  T* dvp = static_cast<T*>(p.dv);
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int r = warp + rr * kWarps;
    if (r >= rows) break;
    const int64_t tok = k0 + j0 + r;
    T* krow = dkp + tok * p.dk_token_stride + g * p.dk_head_stride;
    T* vrow = dvp + tok * p.dv_token_stride + g * p.dv_head_stride;
#pragma unroll
    for (int e = 0; e < NE; ++e) {
      const int c = lane + e * kWarpSize;
      if (c < d) {
        krow[c] = from_float<T>(dk[rr][e] * p.scale);
        vrow[c] = from_float<T>(dv[rr][e]);
      }
    }
  }
}

// ---- paged decode ----------------------------------------------------------------------------------------

struct DecodePlan {
  int64_t splits, chunks;  // context splits and row chunks per (sequence, kv head)
  int rows, bn;            // rows per block, keys per tile
};
inline DecodePlan decode_plan(const AttnPagedDecodeParams& p) {
  const Tiles t = pick_tiles(p.head_dim, 1, 64);
  const int64_t G = p.num_heads_q / std::max<int64_t>(1, p.num_heads_k);
  const int64_t rows_total = p.num_queries * G;
  const int64_t chunks = ceil_div(rows_total, t.rows);
  int64_t splits = p.num_splits;
  if (splits <= 0) {
    const int64_t base = std::max<int64_t>(1, p.batch * p.num_heads_k * chunks);
    const int64_t target = 2 * static_cast<int64_t>(gpu_multiprocessor_count(132));
    const int64_t capacity = p.max_pages * p.page_size;
    splits = std::min(ceil_div(target, base), ceil_div(std::max<int64_t>(capacity, 1), kDecodeMinKeysPerSplit));
    splits = std::max<int64_t>(1, std::min<int64_t>(splits, kDecodeMaxSplits));
  }
  return {splits, chunks, t.rows, t.bn};
}
// Partials: o [B, splits, n, Hq, d] then lse [B, splits, n, Hq], fp32.
inline int64_t decode_workspace_bytes(const AttnPagedDecodeParams& p, const DecodePlan& plan) {
  if (plan.splits <= 1) return 0;
  return 4 * p.batch * plan.splits * p.num_queries * p.num_heads_q * (p.head_dim + 1);
}

// Register prefetch of the next K/V tile (16-bit caches with 16-byte aligned rows): a tile holds at most
// 4096 elements (pick_tiles), so 4096 / 8 / kThreads chunks per thread.
constexpr int kPrefetchChunks = 4096 / 8 / kThreads;

template <typename T, int NE, bool kPrefetch>
__global__ ZAYA_RT_LAUNCH_BOUNDS(kThreads) void decode_kernel(AttnPagedDecodeParams p, DecodePlan plan, int shift,
                                                              bool vec_k, bool vec_v) {
  extern __shared__ float smem[];
  const int d = static_cast<int>(p.head_dim);
  const int64_t n = p.num_queries, G = p.num_heads_q / p.num_heads_k;
  int64_t x = blockIdx.x;
  const int64_t s = x % plan.splits;
  x /= plan.splits;
  const int64_t chunk = x % plan.chunks;
  x /= plan.chunks;
  const int64_t g = x % p.num_heads_k, b = x / p.num_heads_k;
  // Rows of this chunk: flat row f = i * G + hh over the sequence's n queries and the group's heads.
  const int64_t f0 = chunk * plan.rows;
  const int rows = static_cast<int>(lmin(plan.rows, n * G - f0));
  const int64_t L = p.seq_lens[b];
  float* qs = smem;
  float* ks = qs + plan.rows * d;
  float* vs = ks + plan.bn * (d + 1);
  float* pw = vs + plan.bn * d + (threadIdx.x / kWarpSize) * plan.bn;

  const T* q = static_cast<const T*>(p.q) + b * p.q_batch_stride;
  for (int idx = threadIdx.x; idx < rows * d; idx += kThreads) {
    const int r = idx / d, c = idx - r * d;
    const int64_t f = f0 + r, i = f / G, h = g * G + f % G;
    qs[idx] = to_float(q[i * p.q_token_stride + h * p.q_head_stride + c]) * p.scale;
  }
  RowState<NE> st;
  st.init();
  if (L > 0) {
    const int64_t first = p.window > 0 ? lmax(0, L - n - p.window + 1) : 0;
    const int64_t per = ceil_div(ceil_div(L - first, plan.splits), plan.bn) * plan.bn;
    const int64_t t_begin = first + s * per, t_end = lmin(L, t_begin + per);
    const int32_t* pages = p.block_table + b * p.block_table_stride;
    const int64_t mask = p.page_size - 1;
    const T* kc = static_cast<const T*>(p.k_cache) + g * p.k_head_stride;
    const T* vc = static_cast<const T*>(p.v_cache) + g * p.v_head_stride;
    auto row_pos = [&](int r) { return L - n + (f0 + r) / G; };
    auto k_row = [&](int64_t t) {
      return kc + static_cast<int64_t>(pages[t >> shift]) * p.k_page_stride + (t & mask) * p.k_slot_stride;
    };
    auto v_row = [&](int64_t t) {
      return vc + static_cast<int64_t>(pages[t >> shift]) * p.v_page_stride + (t & mask) * p.v_slot_stride;
    };
    if constexpr (kPrefetch) {
      // 16-byte K/V chunks of the next tile are loaded into registers while the current tile is computed.
      constexpr int V = 8, kChunks = kPrefetchChunks;
      const int per = d / V;
      Pack<T, V> pk[kChunks], pv[kChunks];
      auto fetch = [&](int64_t t0, int cnt) {
#pragma unroll
        for (int i = 0; i < kChunks; ++i) {
          const int idx = threadIdx.x + i * kThreads;
          if (idx < cnt * per) {
            const int j = idx / per, c = (idx - j * per) * V;
            pk[i] = *reinterpret_cast<const Pack<T, V>*>(k_row(t0 + j) + c);
            pv[i] = *reinterpret_cast<const Pack<T, V>*>(v_row(t0 + j) + c);
          }
        }
      };
      if (t_begin < t_end) fetch(t_begin, static_cast<int>(lmin(plan.bn, t_end - t_begin)));
      for (int64_t t0 = t_begin; t0 < t_end; t0 += plan.bn) {
        const int cnt = static_cast<int>(lmin(plan.bn, t_end - t0));
        __syncthreads();
#pragma unroll
        for (int i = 0; i < kChunks; ++i) {
          const int idx = threadIdx.x + i * kThreads;
          if (idx < cnt * per) {
            const int j = idx / per, c = (idx - j * per) * V;
#pragma unroll
            for (int e = 0; e < V; ++e) {
              ks[j * (d + 1) + c + e] = to_float(pk[i].v[e]);
              vs[j * d + c + e] = to_float(pv[i].v[e]);
            }
          }
        }
        __syncthreads();
        if (t0 + plan.bn < t_end) fetch(t0 + plan.bn, static_cast<int>(lmin(plan.bn, t_end - t0 - plan.bn)));
        attend_tile<NE>(st, qs, ks, vs, pw, rows, d, t0, cnt, L, true, p.window, row_pos);
      }
    } else {
      for (int64_t t0 = t_begin; t0 < t_end; t0 += plan.bn) {
        const int cnt = static_cast<int>(lmin(plan.bn, t_end - t0));
        __syncthreads();
        load_rows<T>(ks, d + 1, cnt, d, vec_k, [&](int j) { return k_row(t0 + j); });
        load_rows<T>(vs, d, cnt, d, vec_v, [&](int j) { return v_row(t0 + j); });
        __syncthreads();
        attend_tile<NE>(st, qs, ks, vs, pw, rows, d, t0, cnt, L, true, p.window, row_pos);
      }
    }
  }
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  float* part_o = static_cast<float*>(p.workspace);
  float* part_lse = part_o + p.batch * plan.splits * n * p.num_heads_q * d;
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int r = warp + rr * kWarps;
    if (r >= rows) break;
    const int64_t f = f0 + r, i = f / G, h = g * G + f % G;
    const float inv = st.l[rr] > 0.f ? 1.f / st.l[rr] : 0.f;
    if (plan.splits == 1) {
      T* orow = static_cast<T*>(p.out) + b * p.out_batch_stride + i * p.out_token_stride + h * p.out_head_stride;
#pragma unroll
      for (int e = 0; e < NE; ++e) {
        const int c = lane + e * kWarpSize;
        if (c < d) orow[c] = from_float<T>(st.o[rr][e] * inv);
      }
    } else {
      const int64_t slot = ((b * plan.splits + s) * n + i) * p.num_heads_q + h;
      float* orow = part_o + slot * d;
#pragma unroll
      for (int e = 0; e < NE; ++e) {
        const int c = lane + e * kWarpSize;
        if (c < d) orow[c] = st.o[rr][e] * inv;
      }
      if (lane == 0) part_lse[slot] = st.l[rr] > 0.f ? st.m[rr] + logf(st.l[rr]) : -INFINITY;
    }
  }
}

// One warp per (sequence, query, q head): out = sum_s exp(lse_s - M) o_s / sum_s exp(lse_s - M).
template <typename T>
__global__ ZAYA_RT_LAUNCH_BOUNDS(kThreads) void decode_merge_kernel(AttnPagedDecodeParams p, int64_t splits) {
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarpSize;
  const int64_t n = p.num_queries, Hq = p.num_heads_q, d = p.head_dim;
  if (item >= p.batch * n * Hq) return;
  const int64_t h = item % Hq, i = (item / Hq) % n, b = item / (Hq * n);
  const float* part_o = static_cast<const float*>(p.workspace);
  const float* part_lse = part_o + p.batch * splits * n * Hq * d;
  auto slot = [&](int64_t s) { return ((b * splits + s) * n + i) * Hq + h; };
  float mx = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) mx = fmaxf(mx, part_lse[slot(s)]);
  T* orow = static_cast<T*>(p.out) + b * p.out_batch_stride + i * p.out_token_stride + h * p.out_head_stride;
  const int lane = threadIdx.x % kWarpSize;
  if (!(mx > -INFINITY)) {
    for (int64_t c = lane; c < d; c += kWarpSize) orow[c] = from_float<T>(0.f);
    return;
  }
  float wsum = 0.f;
  for (int64_t s = 0; s < splits; ++s) wsum += __expf(part_lse[slot(s)] - mx);
  const float inv = 1.f / wsum;
  for (int64_t c = lane; c < d; c += kWarpSize) {
    float acc = 0.f;
    for (int64_t s = 0; s < splits; ++s) {
      const float w = __expf(part_lse[slot(s)] - mx);
      if (w > 0.f) acc = fmaf(w, part_o[slot(s) * d + c], acc);
    }
    orow[c] = from_float<T>(acc * inv);
  }
}

// ---- launchers -------------------------------------------------------------------------------------------

inline const char* launch_error() {
  const gpuError_t e = gpu_last_error();
  return e == gpuSuccess ? nullptr : gpu_error_string(e);
}

}  // namespace attn_detail
}  // namespace zaya_rt::gpu

#if defined(ZAYA_RT_GPU_CUDA) || defined(ZAYA_RT_GPU_EMU)
#define ZAYA_RT_ATTN_TENSOR_CORES 1
#include "cuda/attention_tc.cuh"
#endif
#if defined(ZAYA_RT_GPU_HIP)
#define ZAYA_RT_ATTN_MFMA 1
#include "hip/attention_mfma.h"
#endif
#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_SM90_ATTENTION)
#define ZAYA_RT_ATTN_SM90 1
#include "cuda/attention_sm90.h"
#endif

namespace zaya_rt::gpu {
namespace attn_detail {

#define ZAYA_RT_ATTN_NE_SWITCH(NE_VALUE, NE, ...)          \
  switch (NE_VALUE) {                                     \
    case 2: { constexpr int NE = 2; __VA_ARGS__; break; } \
    case 4: { constexpr int NE = 4; __VA_ARGS__; break; } \
    default: { constexpr int NE = 8; __VA_ARGS__; break; } \
  }

// ---- forward kernel family (ZAYA_RT_CUDA_ATTENTION; see cuda/attention_sm90.h) --------------------------

enum class FwdChoice { kAuto, kSm90, kWmma, kSimt, kBad };
enum class FwdPath { kSm90, kWmma, kMfma, kSimt };

// Read on every call so that a benchmark can switch families between calls.
inline FwdChoice fwd_choice() {
  const int c = env_choice("ZAYA_RT_CUDA_ATTENTION", {"auto", "sm90", "wmma", "simt"});
  return c < 0 ? FwdChoice::kBad : static_cast<FwdChoice>(c);
}
constexpr const char* kFwdChoiceError = "ZAYA_RT_CUDA_ATTENTION must be auto, sm90, wmma or simt";

#if defined(ZAYA_RT_ATTN_SM90)
// True on a compute capability 9.0 device (where sm_90a code runs).
inline bool attn_sm90_device() { return gpu_compute_capability() == 90; }
#endif

template <typename T> FwdPath fwd_path(const AttnVarlenFwdParams& p, FwdChoice c) {
#if defined(ZAYA_RT_ATTN_SM90)
  if ((c == FwdChoice::kAuto || c == FwdChoice::kSm90) && tc_fwd_operands_ok<T>(p) && attn_sm90_device())
    return FwdPath::kSm90;
#endif
#if defined(ZAYA_RT_ATTN_TENSOR_CORES)
  if (c != FwdChoice::kSimt && tc_fwd_operands_ok<T>(p) && attn_tensor_cores_ok()) return FwdPath::kWmma;
#endif
#if defined(ZAYA_RT_ATTN_MFMA)
  if (c != FwdChoice::kSimt && mfma_fwd_operands_ok<T>(p)) return FwdPath::kMfma;
#endif
  (void)p, (void)c;
  return FwdPath::kSimt;
}

template <typename T> const char* launch_fwd(const AttnVarlenFwdParams& p, gpuStream_t s) {
  const FwdChoice choice = fwd_choice();
  if (choice == FwdChoice::kBad) return kFwdChoiceError;
  const FwdPath path = fwd_path<T>(p, choice);
#if defined(ZAYA_RT_ATTN_SM90)
  if (path == FwdPath::kSm90) {
    if constexpr (std::is_same_v<T, bf16>) return sm90::attention_varlen_fwd_bf16(p, s);
    if constexpr (std::is_same_v<T, f16>) return sm90::attention_varlen_fwd_f16(p, s);
  }
#endif
#if defined(ZAYA_RT_ATTN_TENSOR_CORES)
  if (path == FwdPath::kWmma) {
    bool taken = false;
    const char* tc_err = maybe_launch_fwd_tc<T>(p, s, &taken);
    if (taken) return tc_err;
  }
#endif
#if defined(ZAYA_RT_ATTN_MFMA)
  if (path == FwdPath::kMfma) return launch_fwd_mfma_dispatch<T>(p, s);
#endif
  (void)path;
  const int64_t d = p.head_dim, G = p.num_heads_q / p.num_heads_k;
  const Tiles t = pick_tiles(d, 1, 64);
  const VarlenGeometry geo = varlen_geometry(G, t.rows);
  const dim3 grid(static_cast<unsigned>(packed_blocks(p.total_q, p.batch, geo.bm)),
                  static_cast<unsigned>(p.num_heads_k * geo.chunks));
  const size_t smem = tile_smem_bytes({geo.bm * geo.hc, t.bn}, d, 1);
  const bool vk = vec_ok<T>(p.k, d, {p.k_token_stride, p.k_head_stride});
  const bool vv = vec_ok<T>(p.v, d, {p.v_token_stride, p.v_head_stride});
  ZAYA_RT_ATTN_NE_SWITCH(pick_ne(d), NE,
                         varlen_fwd_kernel<T, NE><<<grid, kThreads, smem, s>>>(p, geo, t.bn, vk, vv));
  return launch_error();
}

inline int64_t bwd_delta_bytes(const AttnVarlenBwdParams& p) { return 4 * p.num_heads_q * p.total_q; }

template <typename T> const char* launch_bwd(const AttnVarlenBwdParams& p, gpuStream_t s) {
  const int64_t d = p.head_dim, G = p.num_heads_q / p.num_heads_k;
  float* delta = static_cast<float*>(p.workspace);
  if (p.total_q > 0) {
    const int64_t items = p.total_q * p.num_heads_q;
    bwd_delta_kernel<T><<<static_cast<unsigned>(ceil_div(items, kWarps)), kThreads, 0, s>>>(p, delta);
    if (const char* e = launch_error()) return e;
    // qs, dos [rows][d]; ks, vs [bn][d+1]; pw [warps][bn]; lse, delta [rows].
    Tiles t{16, 64};
    auto dq_bytes = [&](Tiles x) { return 4 * (2 * x.rows * d + 2 * x.bn * (d + 1) + kWarps * x.bn + 2 * x.rows); };
    for (Tiles c : {Tiles{16, 64}, Tiles{16, 32}, Tiles{8, 32}, Tiles{8, 16}, Tiles{4, 16}})
      if (dq_bytes(c) <= kSmemBudget) { t = c; break; }
    const VarlenGeometry geo = varlen_geometry(G, t.rows);
    const dim3 grid(static_cast<unsigned>(packed_blocks(p.total_q, p.batch, geo.bm)),
                    static_cast<unsigned>(p.num_heads_k * geo.chunks));
    const size_t smem = dq_bytes({geo.bm * geo.hc, t.bn});
    ZAYA_RT_ATTN_NE_SWITCH(pick_ne(d), NE, bwd_dq_kernel<T, NE><<<grid, kThreads, smem, s>>>(p, delta, geo, t.bn));
    if (const char* e = launch_error()) return e;
  }
  if (p.total_k > 0) {
    // krow, vrow [bk][d]; qs, dos [bn][d+1]; pw, dsw [warps][bn]; lse, delta [bn].
    auto kv_bytes = [&](Tiles x) {
      return 4 * (2 * x.rows * d + 2 * x.bn * (d + 1) + 2 * kWarps * x.bn + 2 * x.bn);
    };
    Tiles t{4, 16};
    for (Tiles c : {Tiles{16, 64}, Tiles{16, 32}, Tiles{8, 32}, Tiles{8, 16}, Tiles{4, 16}})
      if (kv_bytes(c) <= kSmemBudget) { t = c; break; }
    const dim3 grid(static_cast<unsigned>(packed_blocks(p.total_k, p.batch, t.rows)),
                    static_cast<unsigned>(p.num_heads_k));
    ZAYA_RT_ATTN_NE_SWITCH(pick_ne(d), NE,
                           bwd_dkdv_kernel<T, NE><<<grid, kThreads, kv_bytes(t), s>>>(p, delta, t.rows, t.bn));
    if (const char* e = launch_error()) return e;
  }
  return nullptr;
}

template <typename T> const char* launch_decode(const AttnPagedDecodeParams& p, gpuStream_t s) {
  const DecodePlan plan = decode_plan(p);
  if (p.workspace_bytes < decode_workspace_bytes(p, plan)) return "workspace is too small";
  int shift = 0;
  while ((int64_t{1} << shift) < p.page_size) ++shift;
  const int64_t d = p.head_dim;
  const bool vk = vec_ok<T>(p.k_cache, d, {p.k_page_stride, p.k_slot_stride, p.k_head_stride});
  const bool vv = vec_ok<T>(p.v_cache, d, {p.v_page_stride, p.v_slot_stride, p.v_head_stride});
  const int64_t blocks = p.batch * p.num_heads_k * plan.chunks * plan.splits;
  const size_t smem = tile_smem_bytes({plan.rows, plan.bn}, d, 1);
  const bool prefetch = sizeof(T) == 2 && vk && vv && plan.bn * d <= 4096;
  if (prefetch) {
    if constexpr (sizeof(T) == 2) {
      ZAYA_RT_ATTN_NE_SWITCH(pick_ne(d), NE,
                             decode_kernel<T, NE, true><<<static_cast<unsigned>(blocks), kThreads, smem, s>>>(
                                 p, plan, shift, vk, vv));
    }
  } else {
    ZAYA_RT_ATTN_NE_SWITCH(pick_ne(d), NE,
                           decode_kernel<T, NE, false><<<static_cast<unsigned>(blocks), kThreads, smem, s>>>(
                               p, plan, shift, vk, vv));
  }
  if (const char* e = launch_error()) return e;
  if (plan.splits > 1) {
    const int64_t items = p.batch * p.num_queries * p.num_heads_q;
    decode_merge_kernel<T><<<static_cast<unsigned>(ceil_div(items, kWarps)), kThreads, 0, s>>>(p, plan.splits);
    return launch_error();
  }
  return nullptr;
}

}  // namespace attn_detail

const char* attention_varlen_fwd(const AttnVarlenFwdParams& p, void* stream) {
  using namespace attn_detail;
  if (p.total_q == 0 || p.batch == 0) return nullptr;
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.dtype, T, return launch_fwd<T>(p, as_stream(stream)));
  return nullptr;
}

const char* attention_varlen_bwd(const AttnVarlenBwdParams& p, void* stream) {
  using namespace attn_detail;
  if (p.batch == 0 || (p.total_q == 0 && p.total_k == 0)) return nullptr;
  if (p.workspace_bytes < bwd_delta_bytes(p)) return "workspace is too small";
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.dtype, T, return launch_bwd<T>(p, as_stream(stream)));
  return nullptr;
}

const char* attention_decode(const AttnPagedDecodeParams& p, void* stream) {
  using namespace attn_detail;
  if (p.batch == 0) return nullptr;
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.dtype, T, return launch_decode<T>(p, as_stream(stream)));
  return nullptr;
}

const char* attention_varlen_fwd_path(const AttnVarlenFwdParams& p) {
  using namespace attn_detail;
  if (p.total_q == 0 || p.batch == 0) return "none";
  const FwdChoice choice = fwd_choice();
  if (choice == FwdChoice::kBad) return nullptr;
  FwdPath path = FwdPath::kSimt;
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.dtype, T, path = fwd_path<T>(p, choice));
  switch (path) {
    case FwdPath::kSm90: return "sm90_wgmma";
    case FwdPath::kWmma: return "wmma";
    case FwdPath::kMfma: return "mfma";
    default: return "simt";
  }
}

bool built_with_sm90_attention() {
#if defined(ZAYA_RT_ATTN_SM90)
  return true;
#else
  return false;
#endif
}

int64_t attention_varlen_fwd_workspace(const AttnVarlenFwdParams&) { return 0; }
int64_t attention_varlen_bwd_workspace(const AttnVarlenBwdParams& p) { return attn_detail::bwd_delta_bytes(p); }
int64_t attention_decode_workspace(const AttnPagedDecodeParams& p) {
  return attn_detail::decode_workspace_bytes(p, attn_detail::decode_plan(p));
}

}  // namespace zaya_rt::gpu
