// Host emulation of cuda/compat.h for checking GPU kernel bodies on a machine without a GPU (tools/gpu_emu).
// Put tools/gpu_emu first on the include path: "cuda/compat.h" then resolves here, while cuda/numeric.cuh and
// the kernel headers are the real ones. Every GPU thread of a block is a std::thread; __syncthreads and the
// warp collectives are barriers, so races the real hardware would have show up as wrong answers here only by
// luck: this checks index math and numerics, not memory ordering. Launches (<<<...>>>) are rewritten into
// emu::launch calls by tools/gpu_emu/build.py.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define ZAYA_RT_GPU_EMU 1  // attention_tc.cuh: wmma from tools/gpu_emu/mma.h, no CUDA runtime calls
#define ZAYA_RT_GPU_HIP 1  // numeric.cuh's _Float16 / __builtin_bit_cast path (g++ has both on x86-64)
#ifndef ZAYA_RT_EMU_WARP
#define ZAYA_RT_EMU_WARP 32
#endif

#define __global__
#define __device__
#define __host__
#define __launch_bounds__(n)
#define __forceinline__ inline

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

namespace emu {
// The block's static __shared__ variables (build.py rewrites each declaration into a block_shared call).
struct BlockStatics {
  std::mutex mu;
  std::map<const void*, std::unique_ptr<unsigned char[]>> objects;
};
struct Ctx {
  dim3 thread, block, block_dim, grid_dim;
  std::barrier<>* block_bar;
  std::barrier<>* warp_bar;
  float* warp_slots;  // one float per lane of this thread's warp
  float* smem;
  float* wave_scratch;  // kWaveScratch floats per warp (tools/gpu_emu/amdgcn_mfma.h)
  size_t smem_bytes;    // dynamic shared memory of the launch
  BlockStatics* statics;
};
constexpr unsigned kWaveScratch = ZAYA_RT_EMU_WARP * 8;
inline thread_local Ctx ctx;
inline float* dyn_smem() { return ctx.smem; }

// One object per block and declaration site (`Site` is the type of a lambda written at the site); every thread
// of the block gets the same one, poisoned (all bits set: NaN floats, -1 ints) when the block starts.
template <typename T, typename Site> T& block_shared(Site) {
  static const char key = 0;
  std::lock_guard<std::mutex> lock(ctx.statics->mu);
  auto& slot = ctx.statics->objects[&key];
  if (!slot) {
    slot.reset(new unsigned char[sizeof(T)]);
    std::memset(slot.get(), 0xff, sizeof(T));
  }
  return *reinterpret_cast<T*>(slot.get());
}

template <typename F> void launch(dim3 grid, dim3 block, size_t smem_bytes, void*, F body) {
  const unsigned nthreads = block.x * block.y * block.z;
  const unsigned W = ZAYA_RT_EMU_WARP;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::vector<float> smem(smem_bytes / 4 + 1, std::nanf(""));  // poisoned
        BlockStatics statics;
        std::barrier<> bar(nthreads);
        std::vector<std::unique_ptr<std::barrier<>>> wbars;
        for (unsigned w = 0; w < (nthreads + W - 1) / W; ++w) wbars.emplace_back(new std::barrier<>(W));
        std::vector<float> slots(nthreads + W);
        std::vector<float> scratch(((nthreads + W - 1) / W) * kWaveScratch);
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < nthreads; ++t)
          threads.emplace_back([&, t] {
            ctx = Ctx{dim3(t), dim3(bx, by, bz), block, grid, &bar, wbars[t / W].get(), slots.data() + (t / W) * W,
                      smem.data(), scratch.data() + (t / W) * kWaveScratch, smem_bytes, &statics};
            body();
            ctx.block_bar->arrive_and_drop();
            ctx.warp_bar->arrive_and_drop();
          });
        for (auto& th : threads) th.join();
      }
}
}  // namespace emu

#define threadIdx (::emu::ctx.thread)
#define blockIdx (::emu::ctx.block)
#define blockDim (::emu::ctx.block_dim)
#define gridDim (::emu::ctx.grid_dim)
inline void __syncthreads() { emu::ctx.block_bar->arrive_and_wait(); }
inline float __expf(float x) { return std::exp(x); }
// Shared/global atomics of the kernels (std::atomic_ref: every emulated thread is a std::thread).
template <typename T> inline T atomicAdd(T* a, T v) { return std::atomic_ref<T>(*a).fetch_add(v); }

namespace zaya_rt::gpu {
using gpuStream_t = void*;
using gpuError_t = int;
constexpr gpuError_t gpuSuccess = 0;
inline gpuError_t gpu_last_error() { return 0; }
inline const char* gpu_error_string(gpuError_t) { return "emulated error"; }
inline int gpu_multiprocessor_count(int fallback) { return fallback; }
inline int gpu_compute_capability() { return 80; }  // the wmma kernels run (tools/gpu_emu/mma.h)
inline gpuStream_t as_stream(void* s) { return s; }

#define ZAYA_RT_DEVICE_INLINE inline
#define ZAYA_RT_LAUNCH_BOUNDS(n)
constexpr int kWarpSize = ZAYA_RT_EMU_WARP;

inline int emu_lane() { return static_cast<int>(threadIdx.x % kWarpSize); }
inline float warp_reduce(float v, bool is_max) {
  emu::ctx.warp_slots[emu_lane()] = v;
  emu::ctx.warp_bar->arrive_and_wait();
  float r = emu::ctx.warp_slots[0];
  for (int i = 1; i < kWarpSize; ++i) r = is_max ? std::fmax(r, emu::ctx.warp_slots[i]) : r + emu::ctx.warp_slots[i];
  emu::ctx.warp_bar->arrive_and_wait();
  return r;
}
inline float warp_sum(float v) { return warp_reduce(v, false); }
inline float warp_max(float v) { return warp_reduce(v, true); }
inline void warp_sync() { emu::ctx.warp_bar->arrive_and_wait(); }

using lane_mask_t = unsigned long long;
// Warp votes (cuda/compat.h): every lane posts its predicate, then each reads the whole warp's.
inline lane_mask_t warp_ballot(bool p) {
  emu::ctx.warp_slots[emu_lane()] = p ? 1.0f : 0.0f;
  emu::ctx.warp_bar->arrive_and_wait();
  lane_mask_t m = 0;
  for (int i = 0; i < kWarpSize; ++i)
    if (emu::ctx.warp_slots[i] != 0.0f) m |= lane_mask_t{1} << i;
  emu::ctx.warp_bar->arrive_and_wait();
  return m;
}
inline int lane_count(lane_mask_t m) { return __builtin_popcountll(m); }
inline lane_mask_t lanes_below(int lane) { return (lane_mask_t{1} << lane) - 1; }
inline uint32_t float_to_bits(float f) { return __builtin_bit_cast(uint32_t, f); }
inline float bits_to_float(uint32_t u) { return __builtin_bit_cast(float, u); }
}  // namespace zaya_rt::gpu

#include "amdgcn_mfma.h"  // HIP's __shfl_xor and the CDNA3 MFMA builtins the HIP kernels use
