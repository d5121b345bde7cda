// GPU ZAYA1 router forward (zaya_rt/router.h), one source for CUDA (cuda/router.cu) and HIP (hip/router.hip);
// the kernel bodies live in cuda/router_body.cuh so that the host can emulate them (tools/gpu_emu/emu_router.cpp).
//
// Work and why it is split this way (D = 2048, R = 256, C = 17 for ZAYA1-8B):
//   down      z_pre = x W_down^T + b_down, [T, D] x [D, R]. At large T this is a real GEMM (17 GFLOP at
//             T = 16384) that cuBLAS runs near tensor-core peak, so the Python op computes it with torch
//             (F.linear: cuBLAS/hipBLAS, bias in its epilogue, rounded to the weight dtype like the CPU kernel)
//             and passes it as p.z0. At small T (decode) the cost is reading W_down (1 MiB in bf16) once, and
//             an extra op call costs more than the math, so `down_kernel` does it: one warp per output row r,
//             the lanes split D in 16-byte chunks, kDownTokens tokens per block reuse each W_down chunk from
//             registers, warp_sum reduces. W_down is spread over R / kDownWarps blocks, i.e. over many SMs,
//             which a single fused block per token group could not do. It writes z_pre into p.z (fp32).
//   head      `head_kernel`: one block of kThreads per TB tokens (TB = 16, 32 or 64) does EDA + RMSNorm +
//             fc1/GELU + fc2/GELU + out + softmax + the biased argmax with every intermediate in shared memory
//             (nothing but z, logits, gate and choice goes to global memory). The R x R weights (128 KiB in
//             bf16) and W_out stream through a kBN x kBK shared tile, reused by all TB tokens of the block; the
//             next tile's global loads are issued before the current one is multiplied (register double
//             buffer). Products: nvcuda::wmma 16x16x16 bf16/fp16 tensor-core tiles with fp32 accumulators on
//             CUDA (warp w owns 16 output columns for all TB tokens), fp32 FMA on a 16 x 16 thread grid for
//             fp32 and on HIP (no wmma there; the SIMT tile needs no particular wavefront size). TB is the
//             largest that still gives about two blocks per SM and fits the shared memory (R = 256: 112 KiB
//             at TB = 64 in bf16, two blocks per H100/H200 SM). RMSNorm statistics and the softmax use
//             shared-memory reductions, never warp shuffles, so nothing assumes 32 lanes.
//   limits    R is bounded by shared memory: TB = 16 needs about 16 * (6R + 4 max(R, C)) bytes + the tile;
//             R = 1024 fits NVIDIA's opt-in limit in every dtype, CDNA's 64 KiB LDS up to R ~ 512 (bf16).
//             Beyond, the launcher returns an error naming the sizes. C is unbounded otherwise.
//
// No allocation, no host synchronisation, launch errors checked: safe to capture in a CUDA/HIP graph. The
// workspace is unused (z_pre goes through p.z).
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda/compat.h"
#include "cuda/launch_result.cuh"
#include "cuda/numeric.cuh"
#include "cuda/router_body.cuh"
#if defined(ZAYA_RT_GPU_CUDA)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

namespace zaya_rt::gpu {
namespace router_detail {

// Every thread runs its slice of each phase; a phase boundary is a block barrier.
template <class Regs, class Acc>
struct DeviceExec {
  Regs regs_;
  Acc acc_;
  template <class F> ZAYA_RT_DEVICE_INLINE void each(F&& f) { f(static_cast<int>(threadIdx.x)); }
  template <class F> ZAYA_RT_DEVICE_INLINE void each_warp(F&& f) { f(static_cast<int>(threadIdx.x) / kWarpSize); }
  ZAYA_RT_DEVICE_INLINE void sync() { __syncthreads(); }
  ZAYA_RT_DEVICE_INLINE Regs& regs(int) { return regs_; }
  ZAYA_RT_DEVICE_INLINE Acc& acc(int) { return acc_; }
};

#if defined(ZAYA_RT_GPU_CUDA)
#define ZAYA_RT_ROUTER_WMMA 1
namespace wmma = nvcuda::wmma;
template <typename T> struct WmmaType;
template <> struct WmmaType<bf16> { using type = __nv_bfloat16; };
template <> struct WmmaType<f16> { using type = __half; };

// 16x16x16 tensor-core tiles: A row-major (activations [t][k]), B column-major (weights [n][k]).
template <typename T>
struct WmmaMma {
  using E = typename WmmaType<T>::type;
  using A = wmma::fragment<wmma::matrix_a, 16, 16, 16, E, wmma::row_major>;
  using B = wmma::fragment<wmma::matrix_b, 16, 16, 16, E, wmma::col_major>;
  using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
  static ZAYA_RT_DEVICE_INLINE void zero(Acc& c) { wmma::fill_fragment(c, 0.f); }
  static ZAYA_RT_DEVICE_INLINE void load_a(A& a, const T* p, int ld) {
    wmma::load_matrix_sync(a, reinterpret_cast<const E*>(p), ld);
  }
  static ZAYA_RT_DEVICE_INLINE void load_b(B& b, const T* p, int ld) {
    wmma::load_matrix_sync(b, reinterpret_cast<const E*>(p), ld);
  }
  static ZAYA_RT_DEVICE_INLINE void mma(Acc& c, const A& a, const B& b) { wmma::mma_sync(c, a, b, c); }
  static ZAYA_RT_DEVICE_INLINE void store(float* p, const Acc& c, int ld) {
    wmma::store_matrix_sync(p, c, ld, wmma::mem_row_major);
  }
};
static_assert(kThreads / 32 == kBN / 16, "one warp per 16 output columns of the weight tile");
#endif

template <typename T, int V>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(kDownWarps* kWarpSize) down_kernel(const RouterParams p) {
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize, lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kDownWarps + warp;
  if (r >= p.R) return;  // the whole warp
  const int64_t token_blocks = (p.T + kDownTokens - 1) / kDownTokens;
  for (int64_t tb = blockIdx.y; tb < token_blocks; tb += gridDim.y) {
    const int64_t t0 = tb * kDownTokens;
    const int nb = static_cast<int>(p.T - t0 < kDownTokens ? p.T - t0 : kDownTokens);
    float acc[kDownTokens];
    down_lane_partial<T, V>(p, r, t0, nb, lane, kWarpSize, acc);
#pragma unroll
    for (int t = 0; t < kDownTokens; ++t) acc[t] = warp_sum(acc[t]);
    if (lane == 0) down_finish<T>(p, r, t0, nb, acc);
  }
}

template <typename T, int TB, bool Vec, class Mma>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(kThreads) head_kernel(const HeadArgs a) {
  extern __shared__ __align__(128) unsigned char router_smem[];
  DeviceExec<TileRegs<T, Vec>, typename AccFor<Mma, TB>::type> ex;
  const int64_t blocks = (a.p.T + TB - 1) / TB;
  for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {
    head_block<T, TB, Vec, Mma>(ex, a, router_smem, b);
    __syncthreads();  // the next block's z load overwrites scratch the softmax threads may still read
  }
}

// ---- host side ---------------------------------------------------------------------------------------------

constexpr int64_t kMaxGrid = 65535;

inline const char* router_error(const std::string& what) {
  thread_local std::string msg;
  msg = what;
  return msg.c_str();
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % kVecBytes == 0; }

template <typename T>
const char* launch_down(const RouterParams& p, gpuStream_t s) {
  constexpr int V = kVecBytes / static_cast<int>(sizeof(T));
  const bool vec = p.D % V == 0 && aligned16(p.x) && aligned16(p.down_w) && (p.T <= 1 || p.x_row_stride % V == 0);
  const int64_t token_blocks = (p.T + kDownTokens - 1) / kDownTokens;
  const dim3 grid(static_cast<unsigned>((p.R + kDownWarps - 1) / kDownWarps),
                  static_cast<unsigned>(std::min(token_blocks, kMaxGrid)));
  const dim3 block(kDownWarps * kWarpSize);
  if (vec)
    down_kernel<T, V><<<grid, block, 0, s>>>(p);
  else
    down_kernel<T, 1><<<grid, block, 0, s>>>(p);
  return launch_result("zaya_router (down projection)");
}

template <typename T, int TB, bool Vec, class Mma>
const char* launch_head_as(const HeadArgs& a, gpuStream_t s) {
  const auto kernel = head_kernel<T, TB, Vec, Mma>;
  const int bytes = static_cast<int>(a.L.bytes);
  if (bytes > 48 * 1024 && gpu_allow_dynamic_shared(kernel, bytes) != gpuSuccess)
    return launch_result("zaya_router (shared memory opt-in)");
  const int64_t blocks = (a.p.T + TB - 1) / TB;
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(blocks, int64_t{1} << 30)));
  kernel<<<grid, dim3(kThreads), bytes, s>>>(a);
  return launch_result("zaya_router (head)");
}

template <typename T, int TB, bool Vec>
const char* launch_head_tb(const HeadArgs& a, gpuStream_t s) {
#if defined(ZAYA_RT_ROUTER_WMMA)
  if constexpr (!std::is_same<T, float>::value) return launch_head_as<T, TB, Vec, WmmaMma<T>>(a, s);
#endif
  return launch_head_as<T, TB, Vec, SimtMma>(a, s);
}

template <typename T, bool Vec>
const char* launch_head_vec(const HeadArgs& a, gpuStream_t s) {
  switch (a.L.tb) {
    case 64: return launch_head_tb<T, 64, Vec>(a, s);
    case 32: return launch_head_tb<T, 32, Vec>(a, s);
    default: return launch_head_tb<T, 16, Vec>(a, s);
  }
}

// Tokens per head block: the largest of 64, 32, 16 that leaves room for two blocks per SM and still gives
// about two blocks per SM to run; 16 when it fits at all; 0 when not even 16 fits.
inline int choose_head_tokens(int64_t T, int64_t R, int64_t C, int64_t elem, int max_smem, int sms) {
  for (int tb : {64, 32, 16}) {
    const int64_t bytes = head_layout(tb, R, C, elem).bytes;
    if (bytes > max_smem || (tb > 16 && bytes > max_smem / 2)) continue;
    if (tb > 16 && (T + tb - 1) / tb < 2 * int64_t{sms}) continue;
    return tb;
  }
  return 0;
}

template <typename T>
const char* launch_router(const RouterParams& p, gpuStream_t s) {
  constexpr int64_t es = sizeof(T);
  const int max_smem = gpu_max_dynamic_shared(48 * 1024);
  const int tb = choose_head_tokens(p.T, p.R, p.C, es, max_smem, gpu_multiprocessor_count(108));
  if (tb == 0)
    return router_error("router width R = " + std::to_string(p.R) + " with C = " + std::to_string(p.C) +
                        " classes needs " + std::to_string(head_layout(16, p.R, p.C, es).bytes) +
                        " bytes of shared memory per block in this dtype; this GPU allows " +
                        std::to_string(max_smem));
  HeadArgs a{p, p.z0, p.z0_row_stride, 0, head_layout(tb, p.R, p.C, es)};
  if (p.z0 == nullptr) {
    if (const char* err = launch_down<T>(p, s)) return err;
    a.z_pre = p.z;
    a.z_pre_row_stride = p.R;
    a.z_pre_f32 = 1;
  }
  constexpr int V = kVecBytes / static_cast<int>(es);
  const bool vec = p.R % V == 0 && aligned16(p.fc1_w) && aligned16(p.fc2_w) && aligned16(p.out_w);
  return vec ? launch_head_vec<T, true>(a, s) : launch_head_vec<T, false>(a, s);
}

}  // namespace router_detail

const char* zaya_router(const RouterParams& p, void* stream) {
  using namespace router_detail;
  if (p.T <= 0) return nullptr;
  if (p.D < 1 || p.R < 1 || p.C < 2) return "need D >= 1, R >= 1 and C >= 2";
  if (p.z0 != nullptr && p.T > 1 && p.z0_row_stride < p.R) return "z0 row stride is smaller than R";
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.dtype, T, return launch_router<T>(p, as_stream(stream)));
  return "unreachable dtype switch";
}

}  // namespace zaya_rt::gpu
