// The one CUDA/HIP compat header: lets a kernel body written once compile under nvcc (CUDA) and
// under clang -x hip (HIP, CDNA). Kernel files include this and then use only the names below
// (plus threadIdx/blockIdx/blockDim/gridDim, __shared__, __syncthreads and <<<...>>> launches,
// which both languages spell the same way).
//
//   runtime:   gpuStream_t, gpuError_t, gpuSuccess, gpu_last_error(), gpu_error_string(),
//              gpu_multiprocessor_count(), gpu_max_dynamic_shared(), gpu_allow_dynamic_shared(),
//              gpu_compute_capability() (CUDA only)
//   device:    ZAYA_RT_DEVICE_INLINE, ZAYA_RT_LAUNCH_BOUNDS(n), kWarpSize, warp_sum(), warp_max(), warp_sync(),
//              lane_mask_t, warp_ballot(), lane_count(), lanes_below(), float_to_bits(), bits_to_float()
//
// Only HIP API that both ROCm 5.2 (Debian's) and ROCm 6 have is used here. AMD-only
// specialisations belong in hip/, NVIDIA-only ones in cuda/.
#pragma once
#include <atomic>
#include <cstdint>

#if defined(__HIP__) || defined(__HIPCC__)
#define ZAYA_RT_GPU_HIP 1
#include <hip/hip_runtime.h>
#elif defined(__CUDACC__)
#define ZAYA_RT_GPU_CUDA 1
#include <cuda_runtime.h>
#else
#error "cuda/compat.h is for nvcc (CUDA) or clang -x hip (HIP) translation units only"
#endif

namespace zaya_rt::gpu {

// ---- runtime types and calls ---------------------------------------------------------------------------
#if defined(ZAYA_RT_GPU_HIP)
using gpuStream_t = hipStream_t;
using gpuError_t = hipError_t;
constexpr gpuError_t gpuSuccess = hipSuccess;
inline gpuError_t gpu_last_error() { return hipGetLastError(); }  // also clears the error
inline const char* gpu_error_string(gpuError_t e) { return hipGetErrorString(e); }
// Multiprocessors (CUs) of the current device, or `fallback` when the runtime cannot say.
// A plain attribute query: no stream work, safe while a graph is being captured.
inline int gpu_multiprocessor_count(int fallback) {
  int dev = 0, n = 0;
  if (hipGetDevice(&dev) != hipSuccess) return (void)hipGetLastError(), fallback;
  if (hipDeviceGetAttribute(&n, hipDeviceAttributeMultiprocessorCount, dev) != hipSuccess)
    return (void)hipGetLastError(), fallback;
  return n > 0 ? n : fallback;
}
#else
using gpuStream_t = cudaStream_t;
using gpuError_t = cudaError_t;
constexpr gpuError_t gpuSuccess = cudaSuccess;
inline gpuError_t gpu_last_error() { return cudaGetLastError(); }  // also clears the error
inline const char* gpu_error_string(gpuError_t e) { return cudaGetErrorString(e); }
inline int gpu_multiprocessor_count(int fallback) {
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return (void)cudaGetLastError(), fallback;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    return (void)cudaGetLastError(), fallback;
  return n > 0 ? n : fallback;
}
#endif

// Most dynamic shared memory one block may have on the current device (the opt-in limit on NVIDIA, the
// LDS size on AMD), or `fallback` when the runtime cannot say. An attribute query: safe during capture.
inline int gpu_max_dynamic_shared(int fallback) {
  int dev = 0, n = 0;
#if defined(ZAYA_RT_GPU_HIP)
  if (hipGetDevice(&dev) != hipSuccess) return (void)hipGetLastError(), fallback;
  if (hipDeviceGetAttribute(&n, hipDeviceAttributeMaxSharedMemoryPerBlock, dev) != hipSuccess)
    return (void)hipGetLastError(), fallback;
#else
  if (cudaGetDevice(&dev) != cudaSuccess) return (void)cudaGetLastError(), fallback;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
    return (void)cudaGetLastError(), fallback;
#endif
  return n > 0 ? n : fallback;
}

// Lets `kernel` launch with up to `bytes` of dynamic shared memory (needed above 48 KiB on NVIDIA; AMD has
// no opt-in, a block may use the whole LDS). Not a stream operation: allowed while a graph is captured.
template <typename Kernel>
inline gpuError_t gpu_allow_dynamic_shared(Kernel kernel, int bytes) {
#if defined(ZAYA_RT_GPU_HIP)
  (void)kernel, (void)bytes;
  return hipSuccess;
#else
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
#endif
}

inline gpuStream_t as_stream(void* s) { return reinterpret_cast<gpuStream_t>(s); }

#if defined(ZAYA_RT_GPU_CUDA)
// The current device's compute capability as 10 * major + minor (80 for sm_80, 90 for sm_90), 0 when the runtime
// cannot say. One attribute query per device and process: no stream work, safe during graph capture.
inline int gpu_compute_capability() {
  constexpr int kCached = 64;
  static std::atomic<int> cache[kCached] = {};  // 0: not asked yet
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return (void)cudaGetLastError(), 0;
  const bool cached = dev >= 0 && dev < kCached;
  if (cached) {
    if (const int c = cache[dev].load(std::memory_order_relaxed)) return c;
  }
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
    return (void)cudaGetLastError(), 0;
  const int cc = 10 * major + minor;
  if (cached) cache[dev].store(cc, std::memory_order_relaxed);
  return cc;
}
#endif


// ---- device-side attributes ----------------------------------------------------------------------------
#if defined(ZAYA_RT_GPU_HIP)
#define ZAYA_RT_DEVICE_INLINE __device__ inline __attribute__((always_inline))
#else
#define ZAYA_RT_DEVICE_INLINE __device__ __forceinline__
#endif
// Both languages accept __launch_bounds__(max threads per block); kernels must state it so the
// compiler keeps register use within what a block of that size can have.
#define ZAYA_RT_LAUNCH_BOUNDS(n) __launch_bounds__(n)

// ---- warps ---------------------------------------------------------------------------------------------
// A compile-time constant for host and device code alike: 32 on NVIDIA, 64 on CDNA (gfx9 family,
// MI100/MI200/MI300). RDNA (wave32 by default) is not a target; refuse it rather than miscount lanes.
#if defined(ZAYA_RT_GPU_HIP)
constexpr int kWarpSize = 64;
#if defined(__HIP_DEVICE_COMPILE__) && !defined(__GFX9__)
#error "zaya_rt HIP kernels assume 64-lane wavefronts (CDNA / gfx9 family targets only)"
#endif
#if defined(__HIP_DEVICE_COMPILE__) && defined(__AMDGCN_WAVEFRONT_SIZE__)
static_assert(__AMDGCN_WAVEFRONT_SIZE__ == kWarpSize, "wavefront size mismatch");
#endif
#else
constexpr int kWarpSize = 32;
#endif

// Sum over the kWarpSize lanes of a warp by xor butterfly; every lane gets the total, in the same
// order on every lane. All lanes of the warp must call it (blocks are whole warps).
ZAYA_RT_DEVICE_INLINE float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
#if defined(ZAYA_RT_GPU_HIP)
    v += __shfl_xor(v, offset, kWarpSize);
#else
    v += __shfl_xor_sync(0xffffffffu, v, offset, kWarpSize);
#endif
  }
  return v;
}

// Maximum over the kWarpSize lanes of a warp (xor butterfly; every lane gets it). All lanes must call it.
ZAYA_RT_DEVICE_INLINE float warp_max(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
#if defined(ZAYA_RT_GPU_HIP)
    v = fmaxf(v, __shfl_xor(v, offset, kWarpSize));
#else
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset, kWarpSize));
#endif
  }
  return v;
}

// Orders the shared-memory accesses of the lanes of one warp (CUDA __syncwarp; a wave barrier on CDNA).
ZAYA_RT_DEVICE_INLINE void warp_sync() {
#if defined(ZAYA_RT_GPU_HIP)
  __builtin_amdgcn_fence(__ATOMIC_RELEASE, "workgroup");
  __builtin_amdgcn_wave_barrier();
  __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "workgroup");
#else
  __syncwarp();
#endif
}

// Warp votes: one bit per lane (lane_mask_t is 32 bits on NVIDIA, 64 on CDNA). All lanes of the warp
// must call warp_ballot together. lanes_below() has the bits of the lanes with a lower index than
// this one.
#if defined(ZAYA_RT_GPU_HIP)
using lane_mask_t = unsigned long long;
ZAYA_RT_DEVICE_INLINE lane_mask_t warp_ballot(bool p) { return __ballot(p); }
ZAYA_RT_DEVICE_INLINE int lane_count(lane_mask_t m) { return __popcll(m); }
#else
using lane_mask_t = unsigned int;
ZAYA_RT_DEVICE_INLINE lane_mask_t warp_ballot(bool p) { return __ballot_sync(0xffffffffu, p); }
ZAYA_RT_DEVICE_INLINE int lane_count(lane_mask_t m) { return __popc(m); }
#endif
ZAYA_RT_DEVICE_INLINE lane_mask_t lanes_below(int lane) { return (lane_mask_t{1} << lane) - 1; }

// ---- bit casts -----------------------------------------------------------------------------------------
ZAYA_RT_DEVICE_INLINE uint32_t float_to_bits(float f) {
#if defined(ZAYA_RT_GPU_HIP)
  return __builtin_bit_cast(uint32_t, f);
#else
  return __float_as_uint(f);
#endif
}
ZAYA_RT_DEVICE_INLINE float bits_to_float(uint32_t u) {
#if defined(ZAYA_RT_GPU_HIP)
  return __builtin_bit_cast(float, u);
#else
  return __uint_as_float(u);
#endif
}

}  // namespace zaya_rt::gpu
