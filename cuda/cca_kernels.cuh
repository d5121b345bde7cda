// GPU CCA prep kernels, one source for CUDA (cuda/cca.cu) and HIP (hip/cca.hip): the forward of zaya_rt/cca.h
// (conv + q/k residual paths + qk norm + temperature + partial RoPE, value shift, state out). The math is the
// header's, term for term, in fp32, each output rounded once to its dtype.
//
// Layout of the work:
//   qk      one block (128 threads) per (block of TB packed tokens, head of the Hq + Hk conv heads). Each token
//           finds its sequence by a binary search of cu_seqlens on the device (no host sync), so a block may
//           span sequence boundaries. Shared memory holds the depthwise conv output A for the k1 lags each
//           token needs ([TB][k1][d], computed straight from X = [state_in | rows]) and then the grouped conv
//           output Y + residual ([TB][d]); a thread owns output channels and keeps TB accumulators in
//           registers, so each conv1 weight is read once per block. A warp per token then takes the L2 norm,
//           and the RoPE pairs are read back from shared memory.
//   v       one thread per (token, channel of Hk * d): concat(v_cur[t], v_del[t - 1] or v_state_in).
//   state   one thread per (sequence, channel, column) of conv_state_out, and per (sequence, channel) of
//           v_state_out.
// The backward is in cuda/cca_bwd_kernels.cuh.
//
// No allocation, no host synchronisation, launch errors returned as messages: graph-capturable.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cuda/compat.h"
#include "cuda/numeric.cuh"
#include "zaya_rt/cca.h"

namespace zaya_rt::gpu {
namespace cca_detail {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kMaxTokens = 16;  // TB, tokens per block (register accumulators per channel)
constexpr int64_t kSmemBudget = 40 * 1024;

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A value of a runtime-typed tensor (cold paths: state, positions).
ZAYA_RT_DEVICE_INLINE float load_dt(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::kFloat16: return to_float(static_cast<const f16*>(p)[i]);
    case DType::kBFloat16: return to_float(static_cast<const bf16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}
ZAYA_RT_DEVICE_INLINE void store_dt(void* p, DType dt, int64_t i, float v) {
  switch (dt) {
    case DType::kFloat16: static_cast<f16*>(p)[i] = from_float<f16>(v); break;
    case DType::kBFloat16: static_cast<bf16*>(p)[i] = from_float<bf16>(v); break;
    default: static_cast<float*>(p)[i] = v;
  }
}
ZAYA_RT_DEVICE_INLINE int64_t load_pos(const void* p, DType dt, int64_t i) {
  return dt == DType::kInt64 ? static_cast<const int64_t*>(p)[i] : static_cast<const int32_t*>(p)[i];
}

// The sequence of packed token t: the largest b with cu[b] <= t (and so cu[b + 1] > t).
ZAYA_RT_DEVICE_INLINE int64_t sequence_of(const int32_t* cu, int64_t B, int64_t t) {
  int64_t lo = 0, hi = B - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (cu[mid] <= t) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// X[p, c] of sequence b (p < 0: state column K + p; channel c < Hq*d: qp, else kp). P: forward or backward
// params (the same field names).
template <typename T, typename P>
ZAYA_RT_DEVICE_INLINE float x_at(const P& p, int64_t b, int64_t row0, int64_t pos, int64_t c,
                                 int64_t K) {
  if (pos >= 0) {
    const int64_t qd = p.Hq * p.d;
    return c < qd ? to_float(static_cast<const T*>(p.qp)[(row0 + pos) * p.qp_row_stride + c])
                  : to_float(static_cast<const T*>(p.kp)[(row0 + pos) * p.kp_row_stride + c - qd]);
  }
  if (p.conv_state_in == nullptr) return 0.f;
  return load_dt(p.conv_state_in, p.state_dtype, b * p.cs_in_batch_stride + c * p.cs_in_channel_stride + K + pos);
}

inline int tokens_per_block(int64_t d, int64_t k1) {
  const int64_t per_token = 4 * d * (k1 + 1) + 8;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kMaxTokens, kSmemBudget / per_token)));
}
inline int64_t qk_smem_bytes(int64_t d, int64_t k1, int tb) { return 4 * (tb * d * (k1 + 1) + tb); }

// A[t - (k1-1) + s1, cbase + j] for the nt tokens from t0, into A [tb][k1][d] (a whole block calls it).
template <typename T, typename TW, typename P>
ZAYA_RT_DEVICE_INLINE void conv0_lags(const P& p, int64_t t0, int nt, int64_t cbase, float* A) {
  const int64_t d = p.d, k0 = p.k0, k1 = p.k1, K = (k0 - 1) + (k1 - 1);
  const TW* w0 = static_cast<const TW*>(p.conv0_w);
  const TW* b0 = static_cast<const TW*>(p.conv0_b);
  for (int64_t idx = threadIdx.x; idx < nt * k1 * d; idx += kThreads) {
    const int64_t j = idx % d, s1 = (idx / d) % k1, tt = idx / (d * k1);
    const int64_t t = t0 + tt, b = sequence_of(p.cu_seqlens, p.B, t), row0 = p.cu_seqlens[b];
    const int64_t pa = (t - row0) - (k1 - 1) + s1, c = cbase + j;
    float a = to_float(b0[c]);
    for (int64_t s = 0; s < k0; ++s)
      a = fmaf(to_float(w0[c * k0 + s]), x_at<T>(p, b, row0, pa - (k0 - 1) + s, c, K), a);
    A[idx] = a;
  }
}

// Y[tt, c] = conv1 + residual path (the norm's input) of conv head `head` for the block's tokens, from A; a
// thread per output channel with tb register accumulators, so each conv1 weight is read once per block.
template <typename T, typename TW, typename P>
ZAYA_RT_DEVICE_INLINE void conv1_residual(const P& p, int64_t t0, int nt, int64_t head, const float* A, float* Y) {
  const int64_t d = p.d, k1 = p.k1, G = p.Hq / p.Hk, cbase = head * d;
  const bool is_k = head >= p.Hq;
  const TW* w1 = static_cast<const TW*>(p.conv1_w);
  const TW* b1 = static_cast<const TW*>(p.conv1_b);
  const T* qp = static_cast<const T*>(p.qp);
  const T* kp = static_cast<const T*>(p.kp);
  for (int64_t c = threadIdx.x; c < d; c += kThreads) {
    float acc[kMaxTokens];
    const float bias = to_float(b1[cbase + c]);
#pragma unroll
    for (int tt = 0; tt < kMaxTokens; ++tt) acc[tt] = bias;
    const TW* wrow = w1 + (cbase + c) * d * k1;
    for (int64_t j = 0; j < d; ++j)
      for (int64_t s = 0; s < k1; ++s) {
        const float w = to_float(wrow[j * k1 + s]);
#pragma unroll
        for (int tt = 0; tt < kMaxTokens; ++tt)
          if (tt < nt) acc[tt] = fmaf(w, A[(tt * k1 + s) * d + j], acc[tt]);
      }
#pragma unroll
    for (int tt = 0; tt < kMaxTokens; ++tt) {
      if (tt >= nt) continue;
      const int64_t t = t0 + tt;
      float res;
      if (!is_k) {
        res = (to_float(qp[t * p.qp_row_stride + head * d + c]) +
               to_float(kp[t * p.kp_row_stride + (head / G) * d + c])) * 0.5f;
      } else {
        const int64_t g = head - p.Hq;
        float mean = 0.f;
        for (int64_t h = g * G; h < (g + 1) * G; ++h) mean += to_float(qp[t * p.qp_row_stride + h * d + c]);
        res = (mean / static_cast<float>(G) + to_float(kp[t * p.kp_row_stride + g * d + c])) * 0.5f;
      }
      Y[tt * d + c] = acc[tt] + res;
    }
  }
}

// Sum of squares of row Y[tt] (d wide), reduced over the calling warp: every lane gets it.
ZAYA_RT_DEVICE_INLINE float warp_row_sumsq(const float* Y, int tt, int64_t d, int lane) {
  float ss = 0.f;
  for (int64_t c = lane; c < d; c += kWarpSize) ss = fmaf(Y[tt * d + c], Y[tt * d + c], ss);
  return warp_sum(ss);
}

template <typename T, typename TW>
__global__ ZAYA_RT_LAUNCH_BOUNDS(kThreads) void cca_qk_kernel(CcaPrepFwdParams p, int tb) {
  extern __shared__ float smem[];
  const int64_t d = p.d, k1 = p.k1;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * tb;
  const int nt = static_cast<int>(std::min<int64_t>(tb, p.T - t0));
  const int64_t head = blockIdx.y;  // conv head: q heads first, then kv heads
  const bool is_k = head >= p.Hq;
  float* A = smem;              // [tb][k1][d]
  float* Y = A + tb * k1 * d;   // [tb][d]
  float* fac = Y + tb * d;      // [tb]
  conv0_lags<T, TW>(p, t0, nt, head * d, A);
  __syncthreads();
  conv1_residual<T, TW>(p, t0, nt, head, A, Y);
  __syncthreads();

  // Norm (a warp per token), temperature.
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  for (int tt = warp; tt < nt; tt += kWarps) {
    const float ss = warp_row_sumsq(Y, tt, d, lane);
    if (lane == 0) {
      float f = sqrtf(static_cast<float>(d)) / fmaxf(sqrtf(ss), p.norm_eps);
      if (is_k) f *= to_float(static_cast<const TW*>(p.temp)[head - p.Hq]);
      fac[tt] = f;
    }
  }
  __syncthreads();

  // RoPE on the first rd channels, write.
  const int64_t half = p.rd / 2;
  for (int64_t idx = threadIdx.x; idx < nt * d; idx += kThreads) {
    const int64_t tt = idx / d, c = idx % d, t = t0 + tt;
    const float f = fac[tt];
    const float x = Y[idx] * f;
    float out = x;
    if (c < p.rd) {
      const int64_t i = c < half ? c : c - half;
      const float ang = static_cast<float>(load_pos(p.positions, p.pos_dtype, t)) * p.inv_freq[i];
      const float cs = cosf(ang), sn = sinf(ang);
      out = c < half ? x * cs - Y[tt * d + c + half] * f * sn : x * cs + Y[tt * d + c - half] * f * sn;
    }
    if (!is_k)
      static_cast<T*>(p.q)[t * p.q_row_stride + head * p.q_head_stride + c] = from_float<T>(out);
    else
      static_cast<T*>(p.k)[t * p.k_row_stride + (head - p.Hq) * p.k_head_stride + c] = from_float<T>(out);
  }
}

// v[t] = concat(v_cur[t], v_del[t - 1]) (v_state_in, or 0, for a sequence's first token).
template <typename T>
__global__ ZAYA_RT_LAUNCH_BOUNDS(kThreads) void cca_v_kernel(CcaPrepFwdParams p) {
  const int64_t V = p.Hk * p.d / 2;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= p.T * 2 * V) return;
  const int64_t t = idx / (2 * V), f = idx % (2 * V);
  float v;
  if (f < V) {
    v = to_float(static_cast<const T*>(p.v_cur)[t * p.v_cur_row_stride + f]);
  } else {
    const int64_t b = sequence_of(p.cu_seqlens, p.B, t);
    if (t > p.cu_seqlens[b])
      v = to_float(static_cast<const T*>(p.v_del)[(t - 1) * p.v_del_row_stride + f - V]);
    else
      v = p.v_state_in == nullptr ? 0.f : load_dt(p.v_state_in, p.state_dtype, b * p.vs_in_batch_stride + f - V);
  }
  static_cast<T*>(p.v)[t * p.v_row_stride + f] = from_float<T>(v);
}

// conv_state_out[b, c, k] = X[L - K + k, c]; v_state_out[b] = v_del[last] (v_state_in or 0 when empty).
template <typename T>
__global__ ZAYA_RT_LAUNCH_BOUNDS(kThreads) void cca_state_kernel(CcaPrepFwdParams p) {
  const int64_t K = (p.k0 - 1) + (p.k1 - 1), C = (p.Hq + p.Hk) * p.d, V = p.Hk * p.d / 2;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t n_conv = p.B * C * K;
  if (idx < n_conv) {
    const int64_t k = idx % K, c = (idx / K) % C, b = idx / (K * C);
    const int64_t row0 = p.cu_seqlens[b], L = p.cu_seqlens[b + 1] - row0;
    const float x = x_at<T>(p, b, row0, L - K + k, c, K);
    store_dt(p.conv_state_out, p.state_dtype, b * p.cs_out_batch_stride + c * p.cs_out_channel_stride + k, x);
    return;
  }
  const int64_t j = idx - n_conv;
  if (j >= p.B * V) return;
  const int64_t b = j / V, f = j % V;
  const int64_t row0 = p.cu_seqlens[b], L = p.cu_seqlens[b + 1] - row0;
  float v;
  if (L > 0)
    v = to_float(static_cast<const T*>(p.v_del)[(row0 + L - 1) * p.v_del_row_stride + f]);
  else
    v = p.v_state_in == nullptr ? 0.f : load_dt(p.v_state_in, p.state_dtype, b * p.vs_in_batch_stride + f);
  store_dt(p.v_state_out, p.state_dtype, b * p.vs_out_batch_stride + f, v);
}

inline const char* launch_error() {
  const gpuError_t e = gpu_last_error();
  return e == gpuSuccess ? nullptr : gpu_error_string(e);
}

template <typename T> const char* launch_fwd(const CcaPrepFwdParams& p, gpuStream_t s) {
  if (p.T > 0) {
    const int tb = tokens_per_block(p.d, p.k1);
    const dim3 grid(static_cast<unsigned>(ceil_div(p.T, tb)), static_cast<unsigned>(p.Hq + p.Hk));
    const size_t smem = qk_smem_bytes(p.d, p.k1, tb);
    if (p.w_dtype == DType::kFloat32)
      cca_qk_kernel<T, float><<<grid, kThreads, smem, s>>>(p, tb);
    else
      cca_qk_kernel<T, T><<<grid, kThreads, smem, s>>>(p, tb);
    if (const char* e = launch_error()) return e;
    const int64_t nv = p.T * p.Hk * p.d;
    cca_v_kernel<T><<<static_cast<unsigned>(ceil_div(nv, kThreads)), kThreads, 0, s>>>(p);
    if (const char* e = launch_error()) return e;
  }
  const int64_t K = (p.k0 - 1) + (p.k1 - 1);
  const int64_t items = p.B * (p.Hq + p.Hk) * p.d * K + p.B * p.Hk * p.d / 2;
  if (items > 0) {
    cca_state_kernel<T><<<static_cast<unsigned>(ceil_div(items, kThreads)), kThreads, 0, s>>>(p);
    if (const char* e = launch_error()) return e;
  }
  return nullptr;
}

}  // namespace cca_detail

const char* cca_prep_fwd(const CcaPrepFwdParams& p, void* stream) {
  using namespace cca_detail;
  if (p.B == 0 && p.T == 0) return nullptr;
  if (qk_smem_bytes(p.d, p.k1, 1) > 48 * 1024) return "head_dim x conv1 kernel too large for the GPU kernel";
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.dtype, T, return launch_fwd<T>(p, as_stream(stream)));
  return nullptr;
}

// The forward needs no workspace; a non-empty one keeps the dispatch's pointer check simple.
int64_t cca_prep_fwd_workspace(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t) { return 64; }

}  // namespace zaya_rt::gpu
