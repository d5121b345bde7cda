// GPU CCA prep backward, one source for CUDA (cuda/cca.cu) and HIP (hip/cca.hip): the gradients of the forward
// in cuda/cca_kernels.cuh (zaya_rt/cca.h), in fp32, with the element formulas of zaya_rt/cca_grad.h (the CPU
// backward's). Deterministic: every sum has a fixed order (no atomics).
//
// The fp32 workspace holds three [Rp, C] buffers in the CPU backward's padded row layout: sequence b's rows are
// its k1 - 1 positions before the first token (-(k1-1) .. -1, the conv1 inputs that come from the state), then
// its tokens, so padded row r(b, pa) = cu[b] + b (k1 - 1) + (k1 - 1) + pa and Rp = T + B (k1 - 1):
//   A   the depthwise conv output (recomputed), dY  d loss / d pre (zero on the padding rows),
//   dA  conv1^T dY (every row),
// then per-block partials of dtemp and per-split partials of dW1 / db1 (reduced in a fixed order at the end).
//
// Kernels, in stream order:
//   pad     zeroes A and dY on the padding rows;
//   dy      one block (128 threads) per (block of tb tokens, conv head): the forward's conv recomputed
//           (conv0_lags, conv1_residual), A written out; then per token (a warp each) RoPE^T, temperature and
//           qk-norm backward turn grad_q / grad_k into dY, and the block's dtemp partial;
//   da      one block per (tb padded rows, head): dA = conv1^T dY, the dY windows in shared memory, a thread per
//           input channel with tb register accumulators;
//   dw1     one block (256 threads) per (32 x 32 tile of head g's [d, d*k1] weight gradient, split of rows):
//           dW1 = dY^T A-windows over 32-row chunks in shared memory (db1 from the same dY tiles);
//   conv0   one block per 32 channels: dW0, db0 (four row groups, summed in a fixed order);
//   token   one thread per (token, channel): grad_qp / grad_kp (depthwise conv backward + residual path) and the
//           value shift's grad_v_cur / grad_v_del; one per (sequence, channel, column) of the incoming states;
//   reduce  sums the partials into grad_conv1_w, grad_conv1_b and grad_temp.
//
// No allocation, no host synchronisation (cu_seqlens stay on the device), launch errors returned as messages.
#pragma once
#include "cuda/cca_kernels.cuh"
#include "zaya_rt/cca_grad.h"

namespace zaya_rt::gpu {
namespace cca_bwd {

using namespace cca_detail;

constexpr int kW1Tile = 32;           // dw1: channels x weight columns per block, rows per chunk
constexpr int kW1Threads = 256;       // dw1: 4 outputs per thread
constexpr int64_t kW1SplitRows = 1024;  // dw1: padded rows per split (a multiple of kW1Tile)
constexpr int kConv0Groups = kThreads / 32;  // conv0: row groups of 32 channel lanes

__host__ __device__ inline int64_t round64(int64_t n) { return (n + 63) / 64 * 64; }

// Tokens per dy block: A [tb][k1][d], Y [tb][d], three per-token scalars.
inline int dy_tokens_per_block(int64_t d, int64_t k1) {
  const int64_t per_token = 4 * (d * (k1 + 1) + 3);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kMaxTokens, kSmemBudget / per_token)));
}
inline int64_t dy_smem_bytes(int64_t d, int64_t k1, int tb) { return 4 * tb * (d * (k1 + 1) + 3); }
inline int64_t da_smem_bytes(int64_t d, int64_t k1, int tb) { return 4 * tb * d * k1; }

// The workspace's float offsets (see the file comment).
struct Layout {
  int64_t rows, tb, nblk, nsplit, a, dy, da, dtemp, w1, b1, total;
  __host__ __device__ Layout(int64_t T, int64_t B, int64_t Hq, int64_t Hk, int64_t d, int64_t k1, int64_t tb_) {
    const int64_t C = (Hq + Hk) * d;
    rows = T + B * (k1 - 1);
    tb = tb_;
    nblk = (T + tb - 1) / tb;
    nsplit = (rows + kW1SplitRows - 1) / kW1SplitRows;
    a = 0;
    dy = a + round64(rows * C);
    da = dy + round64(rows * C);
    dtemp = da + round64(rows * C);
    w1 = dtemp + round64(nblk * Hk);
    b1 = w1 + round64(nsplit * C * d * k1);
    total = b1 + round64(nsplit * C);
  }
};

// Padded row of position pa (>= -(k1-1)) of sequence b.
ZAYA_RT_DEVICE_INLINE int64_t padded_row(const int32_t* cu, int64_t k1, int64_t b, int64_t pa) {
  return cu[b] + b * (k1 - 1) + (k1 - 1) + pa;
}

// The sequence owning padded row r: the largest b with cu[b] + b (k1 - 1) <= r.
ZAYA_RT_DEVICE_INLINE int64_t sequence_of_row(const int32_t* cu, int64_t B, int64_t k1, int64_t r) {
  int64_t lo = 0, hi = B - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (cu[mid] + mid * (k1 - 1) <= r) lo = mid; else hi = mid - 1;
  }
  return lo;
}

struct Buffers {
  float *a, *dy, *da, *dtemp, *w1, *b1;
  Buffers(const CcaPrepBwdParams& p, const Layout& L) {
    float* ws = static_cast<float*>(p.workspace);
    a = ws + L.a, dy = ws + L.dy, da = ws + L.da, dtemp = ws + L.dtemp, w1 = ws + L.w1, b1 = ws + L.b1;
  }
};

// A and dY on the padding rows of every sequence are zero (dy overwrites A's with the state's conv).
__global__ ZAYA_RT_LAUNCH_BOUNDS(kThreads) void pad_kernel(CcaPrepBwdParams p, Buffers w) {
  const int64_t C = (p.Hq + p.Hk) * p.d, P = p.k1 - 1;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= p.B * P * C) return;
  const int64_t c = idx % C, i = (idx / C) % P, b = idx / (C * P);
  const int64_t r = padded_row(p.cu_seqlens, p.k1, b, i - P);
  w.a[r * C + c] = 0.f;
  w.dy[r * C + c] = 0.f;
}

// The output gradient of conv head `head` at token t, or null.
template <typename T>
ZAYA_RT_DEVICE_INLINE const T* output_grad(const CcaPrepBwdParams& p, int64_t head, int64_t t) {
  if (head < p.Hq)
    return p.grad_q ? static_cast<const T*>(p.grad_q) + t * p.gq_row_stride + head * p.gq_head_stride : nullptr;
  return p.grad_k ? static_cast<const T*>(p.grad_k) + t * p.gk_row_stride + (head - p.Hq) * p.gk_head_stride
                  : nullptr;
}

template <typename T, typename TW>
__global__ ZAYA_RT_LAUNCH_BOUNDS(kThreads) void dy_kernel(CcaPrepBwdParams p, Buffers w, int tb) {
  extern __shared__ float smem[];
  const int64_t d = p.d, k1 = p.k1, C = (p.Hq + p.Hk) * d;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * tb;
  const int nt = static_cast<int>(std::min<int64_t>(tb, p.T - t0));
  const int64_t head = blockIdx.y, cbase = head * d;
  const bool is_k = head >= p.Hq;
  float* A = smem;             // [tb][k1][d], then du [tb][d]
  float* Y = A + tb * k1 * d;  // [tb][d]: pre
  float* nrm = Y + tb * d;     // [tb]
  float* scale = nrm + tb;     // [tb]
  float* dt = scale + tb;      // [tb]: this token's d loss / d temp
  conv0_lags<T, TW>(p, t0, nt, cbase, A);
  __syncthreads();
  // A rows out: each token's own row, and the rows before its sequence's first token (the same values from
  // every token that computes them).
  for (int64_t idx = threadIdx.x; idx < nt * k1 * d; idx += kThreads) {
    const int64_t j = idx % d, s1 = (idx / d) % k1, tt = idx / (d * k1);
    const int64_t t = t0 + tt, b = sequence_of(p.cu_seqlens, p.B, t);
    const int64_t pa = (t - p.cu_seqlens[b]) - (k1 - 1) + s1;
    if (s1 == k1 - 1 || pa < 0) w.a[padded_row(p.cu_seqlens, k1, b, pa) * C + cbase + j] = A[idx];
  }
  conv1_residual<T, TW>(p, t0, nt, head, A, Y);
  __syncthreads();

  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  for (int tt = warp; tt < nt; tt += kWarps) {
    const float ss = warp_row_sumsq(Y, tt, d, lane);
    if (lane == 0) {
      nrm[tt] = sqrtf(ss);
      scale[tt] = sqrtf(static_cast<float>(d)) / fmaxf(nrm[tt], p.norm_eps);
    }
  }
  __syncthreads();

  // du = RoPE^T(grad out) into A's space.
  float* du = A;
  const int64_t half = p.rd / 2;
  for (int64_t idx = threadIdx.x; idx < nt * d; idx += kThreads) {
    const int64_t tt = idx / d, c = idx % d, t = t0 + tt;
    const T* go = output_grad<T>(p, head, t);
    float g = 0.f;
    if (go != nullptr) {
      if (c < p.rd) {
        const int64_t i = c < half ? c : c - half;
        const float ang = static_cast<float>(load_pos(p.positions, p.pos_dtype, t)) * p.inv_freq[i];
        float d1, d2;
        cca_grad::rope_pair(to_float(go[i]), to_float(go[i + half]), cosf(ang), sinf(ang), d1, d2);
        g = c < half ? d1 : d2;
      } else {
        g = to_float(go[c]);
      }
    }
    du[idx] = g;
  }
  __syncthreads();

  // Temperature (k heads) and qk-norm backward, a warp per token.
  const float temp = is_k ? to_float(static_cast<const TW*>(p.temp)[head - p.Hq]) : 1.f;
  for (int tt = warp; tt < nt; tt += kWarps) {
    const float* pre = Y + tt * d;
    float* u = du + tt * d;
    if (is_k) {
      float tdot = 0.f;
      for (int64_t c = lane; c < d; c += kWarpSize) tdot = fmaf(u[c], pre[c], tdot);
      tdot = warp_sum(tdot);
      if (lane == 0) dt[tt] = tdot * scale[tt];
      for (int64_t c = lane; c < d; c += kWarpSize) u[c] *= temp;
    }
    float dot = 0.f;
    for (int64_t c = lane; c < d; c += kWarpSize) dot = fmaf(u[c], pre[c], dot);
    dot = warp_sum(dot);
    const int64_t t = t0 + tt, b = sequence_of(p.cu_seqlens, p.B, t);
    float* dyr = w.dy + padded_row(p.cu_seqlens, k1, b, t - p.cu_seqlens[b]) * C + cbase;
    for (int64_t c = lane; c < d; c += kWarpSize)
      dyr[c] = cca_grad::qk_norm(u[c], pre[c], dot, nrm[tt], scale[tt], p.norm_eps);
  }
  if (!is_k) return;
  __syncthreads();
  if (threadIdx.x == 0) {
    float acc = 0.f;
    for (int tt = 0; tt < nt; ++tt) acc += dt[tt];
    w.dtemp[blockIdx.x * p.Hk + (head - p.Hq)] = acc;
  }
}

// dA[r, j] = sum_{c, s} W1[c, j, s] dY[r + (k1-1) - s, c] over head g's channels (rows past the end: zero).
template <typename TW>
__global__ ZAYA_RT_LAUNCH_BOUNDS(kThreads) void da_kernel(CcaPrepBwdParams p, Buffers w, int tb, int64_t rows) {
  extern __shared__ float smem[];  // dY windows [tb][k1][d]
  const int64_t d = p.d, k1 = p.k1, C = (p.Hq + p.Hk) * d;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * tb;
  const int nr = static_cast<int>(std::min<int64_t>(tb, rows - r0));
  const int64_t cbase = static_cast<int64_t>(blockIdx.y) * d;
  for (int64_t idx = threadIdx.x; idx < nr * k1 * d; idx += kThreads) {
    const int64_t c = idx % d, s = (idx / d) % k1, rr = idx / (d * k1);
    const int64_t src = r0 + rr + (k1 - 1) - s;
    smem[idx] = src < rows ? w.dy[src * C + cbase + c] : 0.f;
  }
  __syncthreads();
  const TW* w1 = static_cast<const TW*>(p.conv1_w);
  for (int64_t j = threadIdx.x; j < d; j += kThreads) {
    float acc[kMaxTokens];
#pragma unroll
    for (int rr = 0; rr < kMaxTokens; ++rr) acc[rr] = 0.f;
    for (int64_t c = 0; c < d; ++c)
      for (int64_t s = 0; s < k1; ++s) {
        const float wv = to_float(w1[((cbase + c) * d + j) * k1 + s]);
#pragma unroll
        for (int rr = 0; rr < kMaxTokens; ++rr)
          if (rr < nr) acc[rr] = fmaf(wv, smem[(rr * k1 + s) * d + c], acc[rr]);
      }
#pragma unroll
    for (int rr = 0; rr < kMaxTokens; ++rr)
      if (rr < nr) w.da[(r0 + rr) * C + cbase + j] = acc[rr];
  }
}

// Split z's partial of dW1[g*d + c, n = j*k1 + s] = sum_r dY[r, g*d + c] A[r - (k1-1) + s, g*d + j] over a
// 32 x 32 tile, and (tiles at n = 0) of db1 = sum_r dY[r, c].
__global__ ZAYA_RT_LAUNCH_BOUNDS(kW1Threads) void dw1_kernel(CcaPrepBwdParams p, Buffers w, int64_t rows) {
  __shared__ float dys[kW1Tile][kW1Tile];
  __shared__ float as[kW1Tile][kW1Tile + 1];
  const int64_t d = p.d, k1 = p.k1, Kq = d * k1, C = (p.Hq + p.Hk) * d;
  const int64_t n_tiles = (Kq + kW1Tile - 1) / kW1Tile;
  const int64_t c0 = (blockIdx.x / n_tiles) * kW1Tile, n0 = (blockIdx.x % n_tiles) * kW1Tile;
  const int64_t cbase = static_cast<int64_t>(blockIdx.y) * d;
  const int64_t z = blockIdx.z, r_begin = z * kW1SplitRows, r_end = std::min(rows, r_begin + kW1SplitRows);
  const int tid = threadIdx.x, ci = tid / 8, ni = (tid % 8) * 4;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  float bsum = 0.f;
  for (int64_t r0 = r_begin; r0 < r_end; r0 += kW1Tile) {
    for (int e = tid; e < kW1Tile * kW1Tile; e += kW1Threads) {
      const int rr = e / kW1Tile, x = e % kW1Tile;
      const int64_t r = r0 + rr, c = c0 + x, n = n0 + x;
      dys[rr][x] = (r < r_end && c < d) ? w.dy[r * C + cbase + c] : 0.f;
      const int64_t src = r - (k1 - 1) + (n % k1);
      as[rr][x] = (r < r_end && n < Kq && src >= 0) ? w.a[src * C + cbase + n / k1] : 0.f;
    }
    __syncthreads();
    for (int rr = 0; rr < kW1Tile; ++rr) {
      const float g = dys[rr][ci];
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[e] = fmaf(g, as[rr][ni + e], acc[e]);
    }
    if (n0 == 0 && tid < kW1Tile)
      for (int rr = 0; rr < kW1Tile; ++rr) bsum += dys[rr][tid];
    __syncthreads();
  }
  if (c0 + ci < d)
    for (int e = 0; e < 4; ++e)
      if (n0 + ni + e < Kq) w.w1[(z * C + cbase + c0 + ci) * Kq + n0 + ni + e] = acc[e];
  if (n0 == 0 && tid < kW1Tile && c0 + tid < d) w.b1[z * C + cbase + c0 + tid] = bsum;
}

// dW0[c, k] = sum over padded rows of dA[r, c] X[pa - (k0-1) + k, c], db0[c] = sum dA[r, c]: 32 channels per
// block, four row groups, summed in group order. Shared: [groups][k0 + 1][32].
template <typename T>
__global__ ZAYA_RT_LAUNCH_BOUNDS(kThreads) void conv0_kernel(CcaPrepBwdParams p, Buffers w, int64_t rows) {
  extern __shared__ float smem[];
  const int64_t k0 = p.k0, k1 = p.k1, C = (p.Hq + p.Hk) * p.d, K = (k0 - 1) + (k1 - 1);
  const int lane = threadIdx.x % 32, grp = threadIdx.x / 32;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + lane;
  float* acc = smem + grp * (k0 + 1) * 32;
  for (int64_t k = 0; k <= k0; ++k) acc[k * 32 + lane] = 0.f;
  if (c < C)
    for (int64_t r = grp; r < rows; r += kConv0Groups) {
      const int64_t b = sequence_of_row(p.cu_seqlens, p.B, k1, r), row0 = p.cu_seqlens[b];
      const int64_t pa = r - (row0 + b * (k1 - 1) + (k1 - 1));
      const float g = w.da[r * C + c];
      acc[k0 * 32 + lane] += g;
      for (int64_t k = 0; k < k0; ++k) acc[k * 32 + lane] += g * x_at<T>(p, b, row0, pa - (k0 - 1) + k, c, K);
    }
  __syncthreads();
  if (grp != 0 || c >= C) return;
  for (int64_t k = 0; k <= k0; ++k) {
    float s = 0.f;
    for (int gi = 0; gi < kConv0Groups; ++gi) s += smem[(gi * (k0 + 1) + k) * 32 + lane];
    if (k < k0) p.grad_conv0_w[c * k0 + k] = s;
    else p.grad_conv0_b[c] = s;
  }
}

// Gradient reaching pre-conv column c of sequence b (length L) at position px (>= -K): through the depthwise
// conv and, for the last K positions, from the outgoing conv state.
template <typename TW>
ZAYA_RT_DEVICE_INLINE float dx_at(const CcaPrepBwdParams& p, const Buffers& w, int64_t b, int64_t L, int64_t px,
                                  int64_t c) {
  const int64_t k0 = p.k0, k1 = p.k1, C = (p.Hq + p.Hk) * p.d, K = (k0 - 1) + (k1 - 1);
  const TW* w0 = static_cast<const TW*>(p.conv0_w);
  float acc = 0.f;
  for (int64_t k = 0; k < k0; ++k) {
    const int64_t pa = px + (k0 - 1) - k;
    if (pa >= -(k1 - 1) && pa < L) acc = fmaf(to_float(w0[c * k0 + k]), w.da[padded_row(p.cu_seqlens, k1, b, pa) * C + c], acc);
  }
  if (px >= L - K && p.grad_conv_state_out != nullptr)
    acc += load_dt(p.grad_conv_state_out, p.state_dtype,
                   b * p.gcs_batch_stride + c * p.gcs_channel_stride + (px - (L - K)));
  return acc;
}

// Items: T * C projection gradients, T * V value-shift gradients (both halves), B * C * K conv-state and B * V
// v-state gradients.
template <typename T, typename TW>
__global__ ZAYA_RT_LAUNCH_BOUNDS(kThreads) void token_kernel(CcaPrepBwdParams p, Buffers w) {
  const int64_t d = p.d, k1 = p.k1, C = (p.Hq + p.Hk) * d, V = p.Hk * d / 2, qd = p.Hq * d, G = p.Hq / p.Hk;
  const int64_t K = (p.k0 - 1) + (k1 - 1);
  const int32_t* cu = p.cu_seqlens;
  const T* gv = static_cast<const T*>(p.grad_v);
  int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx < p.T * C) {
    const int64_t t = idx / C, c = idx % C, b = sequence_of(cu, p.B, t), L = cu[b + 1] - cu[b], pt = t - cu[b];
    const float* dyr = w.dy + padded_row(cu, k1, b, pt) * C;
    float g = dx_at<TW>(p, w, b, L, pt, c);
    const int64_t h = c / d, j = c % d;
    if (h < p.Hq) {
      g += cca_grad::residual_qp(dyr[c], dyr[qd + (h / G) * d + j], G);
      static_cast<T*>(p.grad_qp)[t * p.gqp_row_stride + c] = from_float<T>(g);
    } else {
      const int64_t kh = h - p.Hq;
      float sum = 0.f;
      for (int64_t hq = kh * G; hq < (kh + 1) * G; ++hq) sum += dyr[hq * d + j];
      g += cca_grad::residual_kp(sum, dyr[c]);
      static_cast<T*>(p.grad_kp)[t * p.gkp_row_stride + c - qd] = from_float<T>(g);
    }
    return;
  }
  idx -= p.T * C;
  if (idx < p.T * V) {
    const int64_t t = idx / V, i = idx % V, b = sequence_of(cu, p.B, t), L = cu[b + 1] - cu[b], pt = t - cu[b];
    const float gc = gv ? to_float(gv[t * p.gv_row_stride + i]) : 0.f;
    static_cast<T*>(p.grad_v_cur)[t * p.gvc_row_stride + i] = from_float<T>(gc);
    float g = (gv && pt + 1 < L) ? to_float(gv[(t + 1) * p.gv_row_stride + V + i]) : 0.f;
    if (pt + 1 == L && p.grad_v_state_out != nullptr)
      g += load_dt(p.grad_v_state_out, p.state_dtype, b * p.gvs_batch_stride + i);
    static_cast<T*>(p.grad_v_del)[t * p.gvd_row_stride + i] = from_float<T>(g);
    return;
  }
  idx -= p.T * V;
  if (idx < p.B * C * K) {
    const int64_t i = idx % K, c = (idx / K) % C, b = idx / (K * C), L = cu[b + 1] - cu[b];
    store_dt(p.grad_conv_state_in, p.state_dtype, idx, dx_at<TW>(p, w, b, L, i - K, c));
    return;
  }
  idx -= p.B * C * K;
  if (idx < p.B * V) {
    const int64_t i = idx % V, b = idx / V, L = cu[b + 1] - cu[b];
    float g = 0.f;
    if (L > 0) g = gv ? to_float(gv[cu[b] * p.gv_row_stride + V + i]) : 0.f;
    else if (p.grad_v_state_out != nullptr) g = load_dt(p.grad_v_state_out, p.state_dtype, b * p.gvs_batch_stride + i);
    store_dt(p.grad_v_state_in, p.state_dtype, idx, g);
  }
}

// grad_conv1_w / grad_conv1_b: the splits' partials in split order; grad_temp: the token blocks' in block order.
__global__ ZAYA_RT_LAUNCH_BOUNDS(kThreads) void reduce_kernel(CcaPrepBwdParams p, Buffers w, int64_t nsplit,
                                                              int64_t nblk) {
  const int64_t C = (p.Hq + p.Hk) * p.d, W = C * p.d * p.k1;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  float s = 0.f;
  if (idx < W) {
    for (int64_t z = 0; z < nsplit; ++z) s += w.w1[z * W + idx];
    p.grad_conv1_w[idx] = s;
  } else if (idx < W + C) {
    for (int64_t z = 0; z < nsplit; ++z) s += w.b1[z * C + idx - W];
    p.grad_conv1_b[idx - W] = s;
  } else if (idx < W + C + p.Hk) {
    for (int64_t i = 0; i < nblk; ++i) s += w.dtemp[i * p.Hk + idx - W - C];
    p.grad_temp[idx - W - C] = s;
  }
}

inline unsigned blocks_for(int64_t items) { return static_cast<unsigned>(ceil_div(items, kThreads)); }

template <typename T, typename TW> const char* launch_bwd(const CcaPrepBwdParams& p, gpuStream_t s) {
  const int tb = dy_tokens_per_block(p.d, p.k1);
  const Layout L(p.T, p.B, p.Hq, p.Hk, p.d, p.k1, tb);
  const Buffers w(p, L);
  const int64_t H = p.Hq + p.Hk, C = H * p.d, V = p.Hk * p.d / 2, K = (p.k0 - 1) + (p.k1 - 1);
  if (const int64_t n = p.B * (p.k1 - 1) * C; n > 0) {
    pad_kernel<<<blocks_for(n), kThreads, 0, s>>>(p, w);
    if (const char* e = launch_error()) return e;
  }
  if (p.T > 0) {
    const dim3 grid(static_cast<unsigned>(L.nblk), static_cast<unsigned>(H));
    dy_kernel<T, TW><<<grid, kThreads, dy_smem_bytes(p.d, p.k1, tb), s>>>(p, w, tb);
    if (const char* e = launch_error()) return e;
  }
  if (L.rows > 0) {
    const dim3 grid(static_cast<unsigned>(ceil_div(L.rows, tb)), static_cast<unsigned>(H));
    da_kernel<TW><<<grid, kThreads, da_smem_bytes(p.d, p.k1, tb), s>>>(p, w, tb, L.rows);
    if (const char* e = launch_error()) return e;
    const int64_t tiles = ceil_div(p.d, kW1Tile) * ceil_div(p.d * p.k1, kW1Tile);
    const dim3 grid1(static_cast<unsigned>(tiles), static_cast<unsigned>(H), static_cast<unsigned>(L.nsplit));
    dw1_kernel<<<grid1, kW1Threads, 0, s>>>(p, w, L.rows);
    if (const char* e = launch_error()) return e;
  }
  conv0_kernel<T><<<static_cast<unsigned>(ceil_div(C, 32)), kThreads, 4 * kConv0Groups * (p.k0 + 1) * 32, s>>>(
      p, w, L.rows);
  if (const char* e = launch_error()) return e;
  if (const int64_t n = p.T * (C + V) + p.B * (C * K + V); n > 0) {
    token_kernel<T, TW><<<blocks_for(n), kThreads, 0, s>>>(p, w);
    if (const char* e = launch_error()) return e;
  }
  reduce_kernel<<<blocks_for(C * p.d * p.k1 + C + p.Hk), kThreads, 0, s>>>(p, w, L.nsplit, L.nblk);
  return launch_error();
}

template <typename T> const char* launch_bwd_typed(const CcaPrepBwdParams& p, gpuStream_t s) {
  return p.w_dtype == DType::kFloat32 ? launch_bwd<T, float>(p, s) : launch_bwd<T, T>(p, s);
}

}  // namespace cca_bwd

const char* cca_prep_bwd(const CcaPrepBwdParams& p, void* stream) {
  using namespace cca_bwd;
  if (dy_smem_bytes(p.d, p.k1, 1) > 48 * 1024) return "head_dim x conv1 kernel too large for the GPU kernel";
  if (4 * kConv0Groups * (p.k0 + 1) * 32 > 48 * 1024) return "conv0 kernel too large for the GPU kernel";
  if (p.workspace_bytes < cca_prep_bwd_workspace(p.T, p.B, p.Hq, p.Hk, p.d, p.k0, p.k1, p.rd))
    return "workspace too small";
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.dtype, T, return launch_bwd_typed<T>(p, as_stream(stream)));
  return nullptr;
}

int64_t cca_prep_bwd_workspace(int64_t T, int64_t B, int64_t Hq, int64_t Hk, int64_t d, int64_t, int64_t k1,
                               int64_t) {
  const cca_bwd::Layout L(T, B, Hq, Hk, d, k1, cca_bwd::dy_tokens_per_block(d, k1));
  return 4 * std::max<int64_t>(L.total, 16);
}

}  // namespace zaya_rt::gpu
