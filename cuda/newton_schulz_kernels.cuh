// GPU Newton-Schulz orthogonalisation (zaya_rt/newton_schulz.h), one source for CUDA (cuda/newton_schulz.cu)
// and HIP (hip/newton_schulz.hip). The math and rounding points are those of the CPU kernel
// (csrc/cpu/newton_schulz.cpp): iterates stored in the compute dtype, products accumulated in fp32.
//
//   normalise   one block per matrix: block-wide sum of squares, then X0 = round(x / max(norm, eps)).
//   ns_gemm     C(r, c) = round(alpha * sum_k A(r, k) Bt(c, k) + beta * D(r, c)) over strided views, 64 x 64
//               output tiles (256 threads, 4 x 4 each) with 16-deep fp32 shared-memory slices of A and Bt; a
//               symmetric product launches only the tiles on or above the diagonal and mirrors them.
// Per step: S = X X^T (symmetric), P = b S + c S S (symmetric), X' = a X + P X; the last step writes the
// output (transposed back when rows > cols). The workspace holds two iterates and S, P for the whole batch.
// No allocation, no synchronisation, launch errors checked: safe to capture in a CUDA/HIP graph.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda/compat.h"
#include "cuda/launch_result.cuh"
#include "cuda/numeric.cuh"
#include "zaya_rt/newton_schulz.h"

namespace zaya_rt::gpu {
namespace ns_detail {

constexpr int kTile = 64;
constexpr int kDepth = 16;
constexpr int kThreads = 256;
constexpr int kNormThreads = 256;
constexpr int kMaxWarps = kNormThreads / kWarpSize;

// A batch of matrices addressed through strides.
template <typename T> struct View {
  T* base;
  int64_t bs, rs, cs;
  ZAYA_RT_DEVICE_INLINE T* at(int64_t b, int64_t r, int64_t c) const { return base + b * bs + r * rs + c * cs; }
};

template <typename T>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(kNormThreads)
    normalise_kernel(View<const T> in, View<T> out, int64_t m, int64_t n, float eps) {
  __shared__ float red[kWarpSize];
  const int64_t b = blockIdx.x;
  float ss = 0.f;
  for (int64_t e = threadIdx.x; e < m * n; e += blockDim.x) {
    const float v = to_float(*in.at(b, e / n, e % n));
    ss += v * v;
  }
  ss = warp_sum(ss);
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  if (lane == 0) red[warp] = ss;
  __syncthreads();
  ss = warp_sum(lane < kMaxWarps ? red[lane] : 0.f);
  const float div = fmaxf(round_to<T>(sqrtf(ss)), round_to<T>(eps));
  for (int64_t e = threadIdx.x; e < m * n; e += blockDim.x) {
    const int64_t r = e / n, c = e % n;
    *out.at(b, r, c) = from_float<T>(to_float(*in.at(b, r, c)) / div);
  }
}

template <typename T>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(kThreads)
    ns_gemm_kernel(View<const T> A, View<const T> Bt, View<const T> D, View<T> C, int64_t M, int64_t N, int64_t K,
                   float alpha, float beta, bool symmetric) {
  __shared__ float as[kDepth][kTile + 4];
  __shared__ float bs[kDepth][kTile + 4];
  if (symmetric && blockIdx.x < blockIdx.y) return;
  const int64_t b = blockIdx.z;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kTile, c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;  // this thread's rows tr + 16 i, columns tc + 16 j
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += kDepth) {
    for (int e = threadIdx.x; e < kDepth * kTile; e += kThreads) {
      const int kk = e % kDepth, t = e / kDepth;
      const int64_t k = k0 + kk;
      as[kk][t] = (r0 + t < M && k < K) ? to_float(*A.at(b, r0 + t, k)) : 0.f;
      bs[kk][t] = (c0 + t < N && k < K) ? to_float(*Bt.at(b, c0 + t, k)) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kDepth; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = as[kk][tr + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = bs[kk][tc + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t r = r0 + tr + 16 * i, c = c0 + tc + 16 * j;
      if (r >= M || c >= N || (symmetric && c < r)) continue;
      float v = alpha * acc[i][j];
      if (beta != 0.f) v += beta * to_float(*D.at(b, r, c));
      const T out = from_float<T>(v);
      *C.at(b, r, c) = out;
      if (symmetric && c != r) *C.at(b, c, r) = out;
    }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t aligned(int64_t bytes) { return ceil_div(bytes, 256) * 256; }

template <typename T>
const char* gemm(View<const T> A, View<const T> Bt, View<const T> D, View<T> C, int64_t batch, int64_t M, int64_t N,
                 int64_t K, float alpha, float beta, bool symmetric, gpuStream_t s) {
  const dim3 grid(static_cast<unsigned>(ceil_div(N, kTile)), static_cast<unsigned>(ceil_div(M, kTile)),
                  static_cast<unsigned>(batch));
  ns_gemm_kernel<T><<<grid, kThreads, 0, s>>>(A, Bt, D, C, M, N, K, alpha, beta, symmetric);
  return launch_result("newton_schulz");
}

template <typename T> const char* launch(const NewtonSchulzParams& p, gpuStream_t s) {
  if (p.batch > 65535) return "at most 65535 matrices per call on the GPU";
  const bool tall = p.rows > p.cols;
  const int64_t m = std::min(p.rows, p.cols), n = std::max(p.rows, p.cols), B = p.batch;
  char* w = static_cast<char*>(p.workspace);
  T* xa = reinterpret_cast<T*>(w);
  T* xb = reinterpret_cast<T*>(w + aligned(B * m * n * sizeof(T)));
  T* sm = reinterpret_cast<T*>(w + 2 * aligned(B * m * n * sizeof(T)));
  T* pm = reinterpret_cast<T*>(w + 2 * aligned(B * m * n * sizeof(T)) + aligned(B * m * m * sizeof(T)));
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  const View<const T> in = tall ? View<const T>{x, p.x_batch_stride, p.x_col_stride, p.x_row_stride}
                                : View<const T>{x, p.x_batch_stride, p.x_row_stride, p.x_col_stride};
  const View<T> result = tall ? View<T>{out, m * n, 1, m} : View<T>{out, m * n, n, 1};
  normalise_kernel<T><<<static_cast<unsigned>(B), kNormThreads, 0, s>>>(
      in, p.steps == 0 ? result : View<T>{xa, m * n, n, 1}, m, n, p.eps);
  if (const char* err = launch_result("newton_schulz")) return err;
  T* cur = xa;
  T* nxt = xb;
  const View<const T> none{nullptr, 0, 0, 0};
  for (int64_t step = 0; step < p.steps; ++step) {
    const View<const T> X{cur, m * n, n, 1}, XT{cur, m * n, 1, n};
    const View<const T> S{sm, m * m, m, 1}, P{pm, m * m, m, 1};
    if (const char* err = gemm<T>(X, X, none, View<T>{sm, m * m, m, 1}, B, m, m, n, 1.f, 0.f, true, s)) return err;
    if (const char* err = gemm<T>(S, S, S, View<T>{pm, m * m, m, 1}, B, m, m, m, p.c, p.b, true, s)) return err;
    const View<T> dst = step + 1 == p.steps ? result : View<T>{nxt, m * n, n, 1};
    if (const char* err = gemm<T>(P, XT, X, dst, B, m, n, m, 1.f, p.a, false, s)) return err;
    std::swap(cur, nxt);
  }
  return nullptr;
}

}  // namespace ns_detail

const char* newton_schulz(const NewtonSchulzParams& p, void* stream) {
  if (p.batch == 0 || p.rows == 0 || p.cols == 0) return nullptr;
  if (p.dtype == DType::kFloat32) return ns_detail::launch<float>(p, as_stream(stream));
  if (p.dtype == DType::kBFloat16) return ns_detail::launch<bf16>(p, as_stream(stream));
  return "dtype must be float32 or bfloat16";
}

int64_t newton_schulz_workspace(DType dtype, int64_t batch, int64_t rows, int64_t cols) {
  const int64_t m = std::min(rows, cols), n = std::max(rows, cols);
  const int64_t elem = dtype == DType::kFloat32 ? 4 : 2;
  return 2 * ns_detail::aligned(batch * m * n * elem) + 2 * ns_detail::aligned(batch * m * m * elem);
}

}  // namespace zaya_rt::gpu
