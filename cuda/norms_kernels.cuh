// GPU norms kernels, one source for CUDA (cuda/norms.cu) and HIP (hip/norms.hip): RMSNorm and the
// residual scaling fused with the next RMSNorm, forward and backward (zaya_rt/norms.h).
//
// The math is that of the CPU kernels in csrc/cpu/norms.cpp, term for term: fp32 statistics,
// rstd = 1 / sqrt(mean(x^2) + eps), the normalised value rounded to the weight dtype before the
// weight multiply, and the weight gradient taken against that rounded value.
//
// Layout of the work:
//   forward   one block per row (grid-stride over rows); pass 1 sums squares (and writes r for the
//             residual form), a block reduction gives rstd, pass 2 writes the output.
//   backward  one block per row chunk (blockIdx.x = partial index c, chunking as on the CPU:
//             ceil(rows / num_partials) rows each). Per row a block reduction gives mean(dn * n);
//             the parameter-gradient sums for the block's columns stay in registers across the
//             chunk (columns past the register budget accumulate straight into the block's own
//             partial row) and land in partials[c]. A second kernel sums the partials in a fixed
//             order into grad_weight / grad_params. Deterministic, no atomics, no host sync.
//   vectors   when dim and every row start are aligned for 8-element accesses, each thread moves
//             8 elements per access (16 bytes of bf16/fp16, 32 of fp32); otherwise it goes scalar.
//
// No allocation, no synchronisation, launch errors checked: safe to capture in a CUDA/HIP graph.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda/compat.h"
#include "cuda/launch_result.cuh"
#include "cuda/numeric.cuh"
#include "zaya_rt/norm_rows.h"
#include "zaya_rt/norms.h"

namespace zaya_rt::gpu {
namespace norms_detail {

constexpr int kVec = 8;               // elements per vector access
constexpr int kFwdMaxThreads = 512;
constexpr int kBwdMaxThreads = 512;
constexpr int kResBwdMaxThreads = 256;  // its five accumulators and ten loads per step want ~200 registers
// Register accumulators per thread per gradient (the residual backward keeps five gradients).
constexpr int kRmsBwdItems = 16;
constexpr int kResBwdItems = 16;
constexpr int kMaxWarps = std::max(kFwdMaxThreads, kBwdMaxThreads) / kWarpSize;
constexpr int64_t kMaxRowBlocks = 65535;
constexpr int64_t kMaxPartials = 1 << 20;
constexpr int kReduceCols = 32, kReduceGroups = 8;  // reduce_partials block shape
static_assert(kMaxWarps <= kWarpSize, "block_sum reduces the per-warp sums with one warp");

// Block-wide sum, returned to every thread in the same bits. blockDim.x must be a multiple of
// kWarpSize and every thread of the block must call it. `red` is kMaxWarps floats of shared memory.
ZAYA_RT_DEVICE_INLINE float block_sum(float v, float* red) {
  v = warp_sum(v);
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int nwarps = blockDim.x / kWarpSize;
  __syncthreads();  // readers of the previous call are done with red
  if (lane == 0) red[warp] = v;
  __syncthreads();
  return warp_sum(lane < nwarps ? red[lane] : 0.f);
}

// ---- forward -------------------------------------------------------------------------------------------

template <typename TX, typename TW, int V>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(kFwdMaxThreads) rms_norm_fwd_kernel(const RmsNormFwdParams p) {
  __shared__ float red[kMaxWarps];
  const TW* w = static_cast<const TW*>(p.weight);
  const int64_t nv = p.dim / V;
  for (int64_t i = blockIdx.x; i < p.rows; i += gridDim.x) {
    const norm_rows::RmsFwdRow<TX, TW> row(p, i);
    const TX* xr = row.x;
    TW* orow = row.out;
    float ss = 0.f;
    for (int64_t v = threadIdx.x; v < nv; v += blockDim.x) {
      float xv[V];
      load_n<V>(xr + v * V, xv);
#pragma unroll
      for (int e = 0; e < V; ++e) ss += xv[e] * xv[e];
    }
    ss = block_sum(ss, red);
    const float rstd = 1.f / sqrtf(ss / static_cast<float>(p.dim) + p.eps);
    if (threadIdx.x == 0) p.rstd[i] = rstd;
    for (int64_t v = threadIdx.x; v < nv; v += blockDim.x) {
      float xv[V], wv[V], o[V];
      load_n<V>(xr + v * V, xv);
      load_n<V>(w + v * V, wv);
#pragma unroll
      for (int e = 0; e < V; ++e) o[e] = round_to<TW>(xv[e] * rstd) * wv[e];
      store_n<V>(orow + v * V, o);
    }
  }
}

template <typename TY, typename TH, typename TW, int V>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(kFwdMaxThreads)
    residual_rms_norm_fwd_kernel(const ResidualRmsNormFwdParams p) {
  __shared__ float red[kMaxWarps];
  const norm_rows::ResidualNormWeights<TW> wts(p);
  const TW *yb = wts.y_bias, *ys = wts.y_scale, *hb = wts.h_bias, *hs = wts.h_scale, *w = wts.weight;
  const int64_t nv = p.dim / V;
  for (int64_t i = blockIdx.x; i < p.rows; i += gridDim.x) {
    const norm_rows::ResidualFwdRow<TY, TH, TW> row(p, i);
    const TY* yr = row.y;
    const TH* hr = row.h;
    float* rr = row.r;
    TW* orow = row.out;
    float ss = 0.f;
    for (int64_t v = threadIdx.x; v < nv; v += blockDim.x) {
      const int64_t j = v * V;
      float yv[V], hv[V], ybv[V], ysv[V], hbv[V], hsv[V], rv[V];
      load_n<V>(yr + j, yv);
      load_n<V>(hr + j, hv);
      load_n<V>(yb + j, ybv);
      load_n<V>(ys + j, ysv);
      load_n<V>(hb + j, hbv);
      load_n<V>(hs + j, hsv);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        rv[e] = (yv[e] + ybv[e]) * ysv[e] + (hv[e] + hbv[e]) * hsv[e];
        ss += rv[e] * rv[e];
      }
      store_n<V>(rr + j, rv);
    }
    ss = block_sum(ss, red);
    const float rstd = 1.f / sqrtf(ss / static_cast<float>(p.dim) + p.eps);
    if (threadIdx.x == 0) p.rstd[i] = rstd;
    // Each thread reads back only the r elements it wrote itself: no barrier needed.
    for (int64_t v = threadIdx.x; v < nv; v += blockDim.x) {
      const int64_t j = v * V;
      float rv[V], wv[V], o[V];
      load_n<V>(rr + j, rv);
      load_n<V>(w + j, wv);
#pragma unroll
      for (int e = 0; e < V; ++e) o[e] = round_to<TW>(rv[e] * rstd) * wv[e];
      store_n<V>(orow + j, o);
    }
  }
}

// ---- backward ------------------------------------------------------------------------------------------

template <typename TX, typename TW, int V>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(kBwdMaxThreads) rms_norm_bwd_kernel(const RmsNormBwdParams p) {
  constexpr int K = kRmsBwdItems / V;  // vectors per thread whose sums stay in registers
  __shared__ float red[kMaxWarps];
  const TW* w = static_cast<const TW*>(p.weight);
  const int64_t nv = p.dim / V, nt = blockDim.x, t = threadIdx.x, c = blockIdx.x;
  float* part = p.partials + c * p.dim;
  const float zero[V] = {};
  for (int64_t v = t + K * nt; v < nv; v += nt) store_n<V>(part + v * V, zero);
  float acc[K][V];
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int e = 0; e < V; ++e) acc[k][e] = 0.f;

  int64_t begin, end;
  norm_rows::chunk(p.rows, p.num_partials, c, begin, end);
  for (int64_t i = begin; i < end; ++i) {
    const norm_rows::RmsBwdRow<TX, TW> row(p, i);
    const TX* xr = row.x;
    const TW* gr = row.grad_out;
    TX* gxr = row.grad_x;
    const float rstd = row.rstd;
    float dot = 0.f;
    for (int64_t v = t; v < nv; v += nt) {
      float gv[V], wv[V], xv[V];
      load_n<V>(gr + v * V, gv);
      load_n<V>(w + v * V, wv);
      load_n<V>(xr + v * V, xv);
#pragma unroll
      for (int e = 0; e < V; ++e) dot += gv[e] * wv[e] * (xv[e] * rstd);
    }
    dot = block_sum(dot, red) / static_cast<float>(p.dim);
    auto step = [&](int64_t v, float (&a)[V]) {
      float gv[V], wv[V], xv[V], gxv[V];
      load_n<V>(gr + v * V, gv);
      load_n<V>(w + v * V, wv);
      load_n<V>(xr + v * V, xv);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float n = xv[e] * rstd;
        gxv[e] = norm_rows::grad_input(gv[e], wv[e], n, rstd, dot);
        a[e] += gv[e] * round_to<TW>(n);
      }
      store_n<V>(gxr + v * V, gxv);
    };
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (t + k * nt < nv) step(t + k * nt, acc[k]);
    for (int64_t v = t + K * nt; v < nv; v += nt) {  // past the register budget: this block's partial row
      float a[V];
      load_n<V>(part + v * V, a);
      step(v, a);
      store_n<V>(part + v * V, a);
    }
  }
#pragma unroll
  for (int k = 0; k < K; ++k)
    if (t + k * nt < nv) store_n<V>(part + (t + k * nt) * V, acc[k]);
}

constexpr int kNumParamGrads = kResidualNormParamGrads;  // norm_weight, y_bias, y_scale, h_bias, h_scale

template <typename TY, typename TH, typename TW, int V>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(kResBwdMaxThreads)
    residual_rms_norm_bwd_kernel(const ResidualRmsNormBwdParams p) {
  constexpr int K = kResBwdItems / V;
  constexpr int S = kNumParamGrads;
  __shared__ float red[kMaxWarps];
  const norm_rows::ResidualNormWeights<TW> wts(p);
  const TW *yb = wts.y_bias, *ys = wts.y_scale, *hb = wts.h_bias, *hs = wts.h_scale, *w = wts.weight;
  const int64_t dim = p.dim, nv = dim / V, nt = blockDim.x, t = threadIdx.x, c = blockIdx.x;
  float* part = p.partials + c * S * dim;  // [S, dim]: dw, dyb, dys, dhb, dhs
  const float zero[V] = {};
  for (int64_t v = t + K * nt; v < nv; v += nt)
#pragma unroll
    for (int s = 0; s < S; ++s) store_n<V>(part + s * dim + v * V, zero);
  float acc[K][S][V];
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int s = 0; s < S; ++s)
#pragma unroll
      for (int e = 0; e < V; ++e) acc[k][s][e] = 0.f;

  int64_t begin, end;
  norm_rows::chunk(p.rows, p.num_partials, c, begin, end);
  for (int64_t i = begin; i < end; ++i) {
    const norm_rows::ResidualBwdRow<TY, TH, TW> row(p, i);
    const TY* yr = row.y;
    const TH* hr = row.h;
    const float* rr = row.r;
    const TW* gor = row.grad_out;
    const float* grr = row.grad_r;
    TY* gyr = row.grad_y;
    TH* ghr = row.grad_h;
    const float rstd = row.rstd;
    float dot = 0.f;
    for (int64_t v = t; v < nv; v += nt) {
      float gov[V], wv[V], rv[V];
      load_n<V>(gor + v * V, gov);
      load_n<V>(w + v * V, wv);
      load_n<V>(rr + v * V, rv);
#pragma unroll
      for (int e = 0; e < V; ++e) dot += gov[e] * wv[e] * (rv[e] * rstd);
    }
    dot = block_sum(dot, red) / static_cast<float>(dim);
    auto step = [&](int64_t v, float (&a)[S][V]) {
      const int64_t j = v * V;
      float gov[V], wv[V], rv[V], grv[V], yv[V], hv[V], ybv[V], ysv[V], hbv[V], hsv[V], gyv[V], ghv[V];
      load_n<V>(gor + j, gov);
      load_n<V>(w + j, wv);
      load_n<V>(rr + j, rv);
      if (grr) {
        load_n<V>(grr + j, grv);
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) grv[e] = 0.f;
      }
      load_n<V>(yr + j, yv);
      load_n<V>(hr + j, hv);
      load_n<V>(yb + j, ybv);
      load_n<V>(ys + j, ysv);
      load_n<V>(hb + j, hbv);
      load_n<V>(hs + j, hsv);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float n = rv[e] * rstd;
        const float g = grv[e] + norm_rows::grad_input(gov[e], wv[e], n, rstd, dot);
        gyv[e] = g * ysv[e];
        ghv[e] = g * hsv[e];
        a[0][e] += gov[e] * round_to<TW>(n);
        a[1][e] += g * ysv[e];
        a[2][e] += g * (yv[e] + ybv[e]);
        a[3][e] += g * hsv[e];
        a[4][e] += g * (hv[e] + hbv[e]);
      }
      store_n<V>(gyr + j, gyv);
      store_n<V>(ghr + j, ghv);
    };
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (t + k * nt < nv) step(t + k * nt, acc[k]);
    for (int64_t v = t + K * nt; v < nv; v += nt) {
      float a[S][V];
#pragma unroll
      for (int s = 0; s < S; ++s) load_n<V>(part + s * dim + v * V, a[s]);
      step(v, a);
#pragma unroll
      for (int s = 0; s < S; ++s) store_n<V>(part + s * dim + v * V, a[s]);
    }
  }
#pragma unroll
  for (int k = 0; k < K; ++k)
    if (t + k * nt < nv)
#pragma unroll
      for (int s = 0; s < S; ++s) store_n<V>(part + s * dim + (t + k * nt) * V, acc[k][s]);
}

// out[j] = sum over c of partials[c * width + j], c ascending in kReduceGroups interleaved strands
// that are then added in a fixed order: the same bits on every run.
__global__ void ZAYA_RT_LAUNCH_BOUNDS(kReduceCols* kReduceGroups)
    reduce_partials_kernel(const float* partials, int64_t count, int64_t width, float* out) {
  __shared__ float sums[kReduceGroups][kReduceCols + 1];
  const int tx = threadIdx.x % kReduceCols, ty = threadIdx.x / kReduceCols;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kReduceCols + tx;
  float acc = 0.f;
  if (j < width)
    for (int64_t c = ty; c < count; c += kReduceGroups) acc += partials[c * width + j];
  sums[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && j < width) {
    float total = sums[0][tx];
#pragma unroll
    for (int g = 1; g < kReduceGroups; ++g) total += sums[g][tx];
    out[j] = total;
  }
}

// ---- host side -----------------------------------------------------------------------------------------

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int64_t elem_size(DType t) { return t == DType::kFloat32 ? 4 : 2; }

// Threads for `work` units per row: whole warps, at least one, at most max_threads.
inline int block_threads(int64_t work, int max_threads) {
  const int64_t t = ceil_div(std::max<int64_t>(work, 1), kWarpSize) * kWarpSize;
  return static_cast<int>(std::min<int64_t>(t, max_threads));
}

// Whether rows of `rows` x dim elements at `p` with `row_stride` allow kVec-element accesses.
inline bool vec_ok(const void* p, int64_t row_stride, int64_t rows, int64_t esize) {
  if (reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(kVec * esize) != 0) return false;
  return rows <= 1 || row_stride % kVec == 0;
}

inline const char* launch_reduce_partials(const float* partials, int64_t count, int64_t width, float* out,
                                          gpuStream_t s, const char* what) {
  const dim3 grid(static_cast<unsigned>(ceil_div(width, kReduceCols))), block(kReduceCols * kReduceGroups);
  reduce_partials_kernel<<<grid, block, 0, s>>>(partials, count, width, out);
  return launch_result(what);
}

inline const char* check_partials(int64_t num_partials) {
  if (num_partials < 1 || num_partials > kMaxPartials) return "num_partials out of range (1 .. 2^20)";
  return nullptr;
}

template <typename TX, typename TW>
const char* launch_rms_norm_fwd(const RmsNormFwdParams& p, gpuStream_t s) {
  const bool vec = p.dim % kVec == 0 && vec_ok(p.x, p.x_row_stride, p.rows, elem_size(p.x_dtype)) &&
                   vec_ok(p.weight, 0, 1, elem_size(p.w_dtype)) &&
                   vec_ok(p.out, p.out_row_stride, p.rows, elem_size(p.w_dtype));
  const dim3 grid(static_cast<unsigned>(std::min(p.rows, kMaxRowBlocks)));
  const dim3 block(block_threads(vec ? p.dim / kVec : p.dim, kFwdMaxThreads));
  if (vec)
    rms_norm_fwd_kernel<TX, TW, kVec><<<grid, block, 0, s>>>(p);
  else
    rms_norm_fwd_kernel<TX, TW, 1><<<grid, block, 0, s>>>(p);
  return launch_result("rms_norm_fwd");
}

template <typename TY, typename TH, typename TW>
const char* launch_residual_rms_norm_fwd(const ResidualRmsNormFwdParams& p, gpuStream_t s) {
  const int64_t ew = elem_size(p.w_dtype);
  const bool vec = p.dim % kVec == 0 && vec_ok(p.y, p.y_row_stride, p.rows, elem_size(p.y_dtype)) &&
                   vec_ok(p.h, p.h_row_stride, p.rows, elem_size(p.h_dtype)) &&
                   vec_ok(p.y_bias, 0, 1, ew) && vec_ok(p.y_scale, 0, 1, ew) && vec_ok(p.h_bias, 0, 1, ew) &&
                   vec_ok(p.h_scale, 0, 1, ew) && vec_ok(p.weight, 0, 1, ew) &&
                   vec_ok(p.r, p.r_row_stride, p.rows, 4) && vec_ok(p.out, p.out_row_stride, p.rows, ew);
  const dim3 grid(static_cast<unsigned>(std::min(p.rows, kMaxRowBlocks)));
  const dim3 block(block_threads(vec ? p.dim / kVec : p.dim, kFwdMaxThreads));
  if (vec)
    residual_rms_norm_fwd_kernel<TY, TH, TW, kVec><<<grid, block, 0, s>>>(p);
  else
    residual_rms_norm_fwd_kernel<TY, TH, TW, 1><<<grid, block, 0, s>>>(p);
  return launch_result("residual_rms_norm_fwd");
}

template <typename TX, typename TW>
const char* launch_rms_norm_bwd(const RmsNormBwdParams& p, gpuStream_t s) {
  if (const char* err = check_partials(p.num_partials)) return err;
  const bool vec = p.dim % kVec == 0 && vec_ok(p.x, p.x_row_stride, p.rows, elem_size(p.x_dtype)) &&
                   vec_ok(p.grad_out, p.grad_out_row_stride, p.rows, elem_size(p.w_dtype)) &&
                   vec_ok(p.weight, 0, 1, elem_size(p.w_dtype)) &&
                   vec_ok(p.grad_x, p.grad_x_row_stride, p.rows, elem_size(p.x_dtype)) &&
                   vec_ok(p.partials, p.dim, p.num_partials, 4);
  const dim3 grid(static_cast<unsigned>(p.num_partials));
  if (vec) {
    const dim3 block(block_threads(ceil_div(p.dim / kVec, kRmsBwdItems / kVec), kBwdMaxThreads));
    rms_norm_bwd_kernel<TX, TW, kVec><<<grid, block, 0, s>>>(p);
  } else {
    const dim3 block(block_threads(ceil_div(p.dim, kRmsBwdItems), kBwdMaxThreads));
    rms_norm_bwd_kernel<TX, TW, 1><<<grid, block, 0, s>>>(p);
  }
  if (const char* err = launch_result("rms_norm_bwd")) return err;
  return launch_reduce_partials(p.partials, p.num_partials, p.dim, p.grad_weight, s, "rms_norm_bwd (reduce)");
}

template <typename TY, typename TH, typename TW>
const char* launch_residual_rms_norm_bwd(const ResidualRmsNormBwdParams& p, gpuStream_t s) {
  if (const char* err = check_partials(p.num_partials)) return err;
  const int64_t ew = elem_size(p.w_dtype);
  const bool vec = p.dim % kVec == 0 &&
                   (p.grad_r == nullptr || vec_ok(p.grad_r, p.grad_r_row_stride, p.rows, 4)) &&
                   vec_ok(p.grad_out, p.grad_out_row_stride, p.rows, ew) &&
                   vec_ok(p.y, p.y_row_stride, p.rows, elem_size(p.y_dtype)) &&
                   vec_ok(p.h, p.h_row_stride, p.rows, elem_size(p.h_dtype)) &&
                   vec_ok(p.y_bias, 0, 1, ew) && vec_ok(p.y_scale, 0, 1, ew) && vec_ok(p.h_bias, 0, 1, ew) &&
                   vec_ok(p.h_scale, 0, 1, ew) && vec_ok(p.weight, 0, 1, ew) &&
                   vec_ok(p.r, p.r_row_stride, p.rows, 4) &&
                   vec_ok(p.grad_y, p.grad_y_row_stride, p.rows, elem_size(p.y_dtype)) &&
                   vec_ok(p.grad_h, p.grad_h_row_stride, p.rows, elem_size(p.h_dtype)) &&
                   vec_ok(p.partials, p.dim, kNumParamGrads * p.num_partials, 4);
  const dim3 grid(static_cast<unsigned>(p.num_partials));
  if (vec) {
    const dim3 block(block_threads(ceil_div(p.dim / kVec, kResBwdItems / kVec), kResBwdMaxThreads));
    residual_rms_norm_bwd_kernel<TY, TH, TW, kVec><<<grid, block, 0, s>>>(p);
  } else {
    const dim3 block(block_threads(ceil_div(p.dim, kResBwdItems), kResBwdMaxThreads));
    residual_rms_norm_bwd_kernel<TY, TH, TW, 1><<<grid, block, 0, s>>>(p);
  }
  if (const char* err = launch_result("residual_rms_norm_bwd")) return err;
  return launch_reduce_partials(p.partials, p.num_partials, kNumParamGrads * p.dim, p.grad_params, s,
                                "residual_rms_norm_bwd (reduce)");
}

}  // namespace norms_detail

const char* rms_norm_fwd(const RmsNormFwdParams& p, void* stream) {
  using namespace norms_detail;
  if (p.rows <= 0) return nullptr;
  if (p.dim <= 0) return "hidden size must be positive";
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.x_dtype, TX, ZAYA_RT_GPU_DISPATCH_FLOAT(p.w_dtype, TW,
      return launch_rms_norm_fwd<TX, TW>(p, as_stream(stream))));
  return "unreachable dtype switch";
}

const char* rms_norm_bwd(const RmsNormBwdParams& p, void* stream) {
  using namespace norms_detail;
  if (p.dim <= 0) return "hidden size must be positive";
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.x_dtype, TX, ZAYA_RT_GPU_DISPATCH_FLOAT(p.w_dtype, TW,
      return launch_rms_norm_bwd<TX, TW>(p, as_stream(stream))));
  return "unreachable dtype switch";
}

const char* residual_rms_norm_fwd(const ResidualRmsNormFwdParams& p, void* stream) {
  using namespace norms_detail;
  if (p.rows <= 0) return nullptr;
  if (p.dim <= 0) return "hidden size must be positive";
  if (p.p_dtype != p.w_dtype) return "residual scale parameters must have the norm weight's dtype";
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.y_dtype, TY, ZAYA_RT_GPU_DISPATCH_FLOAT(p.h_dtype, TH,
      ZAYA_RT_GPU_DISPATCH_FLOAT(p.w_dtype, TW,
          return launch_residual_rms_norm_fwd<TY, TH, TW>(p, as_stream(stream)))));
  return "unreachable dtype switch";
}

const char* residual_rms_norm_bwd(const ResidualRmsNormBwdParams& p, void* stream) {
  using namespace norms_detail;
  if (p.dim <= 0) return "hidden size must be positive";
  if (p.p_dtype != p.w_dtype) return "residual scale parameters must have the norm weight's dtype";
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.y_dtype, TY, ZAYA_RT_GPU_DISPATCH_FLOAT(p.h_dtype, TH,
      ZAYA_RT_GPU_DISPATCH_FLOAT(p.w_dtype, TW,
          return launch_residual_rms_norm_bwd<TY, TH, TW>(p, as_stream(stream)))));
  return "unreachable dtype switch";
}

// One partial per backward block. Aim for about 1024 resident threads per multiprocessor, and give
// each block at least a few rows so that the partials (one [width] row each, written and re-read by
// the final reduction) stay small next to the rows themselves.
int64_t norm_bwd_num_partials(int64_t rows, int64_t dim) {
  using namespace norms_detail;
  if (rows <= 0 || dim <= 0) return 1;
  constexpr int64_t kThreadsPerSm = 1024, kMinRowsPerPartial = 4;
  const int64_t sms = gpu_multiprocessor_count(128);
  const int64_t work = dim % kVec == 0 ? ceil_div(dim / kVec, kResBwdItems / kVec) : ceil_div(dim, kResBwdItems);
  const int64_t blocks_per_sm = std::max<int64_t>(1, kThreadsPerSm / block_threads(work, kResBwdMaxThreads));
  const int64_t want = std::min(sms * blocks_per_sm, ceil_div(rows, kMinRowsPerPartial));
  return std::clamp<int64_t>(want, 1, kMaxPartials);
}

}  // namespace zaya_rt::gpu
