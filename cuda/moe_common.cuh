// Pieces every MoE GPU kernel file uses (cuda/moe_kernels.cuh has the overview): launch results,
// alignment checks, a block-wide scan. One source for CUDA and HIP.
#pragma once
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "cuda/compat.h"
#include "cuda/env_choice.h"
#include "cuda/launch_result.cuh"
#include "cuda/numeric.cuh"
#include "zaya_rt/moe.h"
#include "zaya_rt/moe_gpu_path.h"

#if defined(ZAYA_RT_GPU_CUDA)
#define ZAYA_RT_MOE_TENSOR_CORES 1  // the wmma tiles of cuda/moe_gemm_tc.cuh
#endif

namespace zaya_rt::gpu {
namespace moe_detail {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
ZAYA_RT_DEVICE_INLINE int imin(int a, int b) { return a < b ? a : b; }
ZAYA_RT_DEVICE_INLINE int64_t lmin(int64_t a, int64_t b) { return a < b ? a : b; }
ZAYA_RT_DEVICE_INLINE int64_t lmax(int64_t a, int64_t b) { return a > b ? a : b; }
ZAYA_RT_DEVICE_INLINE int64_t dceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int64_t elem_bytes(DType t) { return t == DType::kFloat32 ? 4 : 2; }

// True when `p + i * stride` is 16-byte aligned for every i (the base and the stride in bytes are).
inline bool aligned16(const void* p, int64_t stride_elems, int64_t esize) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (stride_elems * esize) % 16 == 0;
}

// Inclusive prefix sum of one int per thread over the block (Hillis-Steele in shared memory; buf holds
// blockDim.x ints). Every thread of the block must call it; `total` gets the block's sum.
ZAYA_RT_DEVICE_INLINE int block_inclusive_scan(int v, int* buf, int& total) {
  const int t = threadIdx.x, nt = blockDim.x;
  buf[t] = v;
  __syncthreads();
  for (int off = 1; off < nt; off <<= 1) {
    const int add = t >= off ? buf[t - off] : 0;
    __syncthreads();
    buf[t] += add;
    __syncthreads();
  }
  const int r = buf[t];
  total = buf[nt - 1];
  __syncthreads();  // buf may be reused at once
  return r;
}

}  // namespace moe_detail
}  // namespace zaya_rt::gpu
