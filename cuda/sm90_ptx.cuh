// The PTX of the sm_90a attention forward (cuda/attention_sm90.cuh), and nothing else: warpgroup MMA
// (wgmma.mma_async with its fence / commit_group / wait_group), the shared-memory matrix descriptor, the
// generic-to-async proxy fence and the quad shuffles of the online softmax. tools/gpu_emu/cuda/sm90_ptx.cuh
// implements the same names on the host, from the PTX ISA, for the emulated checks
// (tools/gpu_emu/check_attention_cca.py); keep the two in step.
//
// Section numbers are those of the PTX ISA 8.x/9.0 document ("Asynchronous Warpgroup Level Matrix Multiply-
// Accumulate Instructions", 9.7.15 in ISA 9.0).
#pragma once
#include <cstdint>
#include <type_traits>

#include "cuda/compat.h"
#include "cuda/numeric.cuh"

namespace zaya_rt::gpu::wg {

// The address of a shared-memory pointer in the shared state space (what descriptors hold).
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 9.7.15.5.1.2.2 "Matrix Descriptor Format": bits 13-0 start address, 29-16 leading dimension byte offset,
// 45-32 stride dimension byte offset, each as (x & 0x3FFFF) >> 4; base offset (51-49) 0 and swizzle mode
// (63-62) 0, "no swizzle": the K-major interleaved layout of 8-row x 16-byte core matrices (9.7.15.5.1.2).
// For K-major operands the LBO is the step between the two core matrices along K of an instruction's k16
// slice, the SBO the step between 8-row groups (9.7.15.5.1.2.1).
__device__ __forceinline__ uint64_t make_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFFu) >> 4) | static_cast<uint64_t>((lbo & 0x3FFFFu) >> 4) << 16 |
         static_cast<uint64_t>((sbo & 0x3FFFFu) >> 4) << 32;
}

// Generic-proxy writes to shared memory (plain stores) made visible to the async proxy that wgmma reads
// through (fence.proxy.async, in the "membar/fence" section 9.7.13); each thread fences its own stores, then a barrier.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// wgmma.fence: orders this thread's register and shared-memory accesses before the following wgmma.mma_async
// (the wgmma.fence section of 9.7.15); needed before the first MMA and whenever accumulator or A registers were written since.
__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
// Closes the pending wgmma.mma_async operations into a group (wgmma.commit_group, 9.7.15).
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most N groups are pending (wgmma.wait_group, 9.7.15); only then may the accumulators be read.
template <int N> __device__ __forceinline__ void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accesses of these registers across the wgmma calls.
template <int N> __device__ __forceinline__ void fence_operand(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

#define ZAYA_RT_WGMMA_SS_N64(TY)                                                                      \
  asm volatile(                                                                                         \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                                     \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n" \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]) \
      : "l"(desc_a), "l"(desc_b), "r"(scale_d))

#define ZAYA_RT_WGMMA_RS_N64(TY)                                                                      \
  asm volatile(                                                                                         \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                                     \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n" \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]) \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d))

#define ZAYA_RT_WGMMA_RS_N128(TY)                                                                      \
  asm volatile(                                                                                         \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                                     \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n" \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
      "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
      "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
      "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
      "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d))


// D[64 x 64] (+)= A[64 x 16] B[16 x 64], A and B from K-major shared memory by descriptor (scale_d 0: D = A B).
// Accumulator fragment (9.7.15.5.1.1.1, "Accumulator D" figure): thread t of the warpgroup holds, for n8
// block i, d[4i + 2h + e] = D[16 (t / 32) + (t % 32) / 4 + 8h][8i + 2 (t % 4) + e].
template <typename T> __device__ __forceinline__ void mma_ss_n64(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                                                 int scale_d) {
  if constexpr (std::is_same_v<T, bf16>) ZAYA_RT_WGMMA_SS_N64("bf16"); else ZAYA_RT_WGMMA_SS_N64("f16");
}

// D[64 x N] (+)= A[64 x 16] B[16 x N], A from registers: a[j] holds two 16-bit elements (low half first),
// a0..a7 = A[r][2c], A[r][2c+1], A[r+8][2c], A[r+8][2c+1], A[r][2c+8], A[r][2c+9], A[r+8][2c+8], A[r+8][2c+9]
// with r = 16 (t / 32) + (t % 32) / 4, c = t % 4 (9.7.15.5.1.1.1, "Multiplicand A in registers").
template <typename T, int N>
__device__ __forceinline__ void mma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
  static_assert(N == 64 || N == 128, "instantiated for n64 and n128 only");
  if constexpr (N == 64) {
    if constexpr (std::is_same_v<T, bf16>) ZAYA_RT_WGMMA_RS_N64("bf16"); else ZAYA_RT_WGMMA_RS_N64("f16");
  } else {
    if constexpr (std::is_same_v<T, bf16>) ZAYA_RT_WGMMA_RS_N128("bf16"); else ZAYA_RT_WGMMA_RS_N128("f16");
  }
}

#undef ZAYA_RT_WGMMA_SS_N64
#undef ZAYA_RT_WGMMA_RS_N64
#undef ZAYA_RT_WGMMA_RS_N128

// Max / sum over the 4 lanes of a quad (the threads that share an accumulator row).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

}  // namespace zaya_rt::gpu::wg
