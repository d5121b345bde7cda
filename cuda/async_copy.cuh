// Asynchronous global -> shared copies (cp.async, sm_80+), NVIDIA only: 16 bytes per call, zero-filled
// when the source is out of range, committed in groups and waited for by count. On an architecture
// without cp.async (a device pass below sm_80) the kernels that use these trap instead (see
// cuda/moe_gemm_tc.cuh), so the wrappers compile to nothing there.
#pragma once
#include <cstdint>

#include "cuda/compat.h"

namespace zaya_rt::gpu {

// Copies 16 bytes from global `src` to shared `dst` (both 16-byte aligned), or writes 16 zero bytes when
// `valid` is false (then nothing is read; `src` must still be a global address).
ZAYA_RT_DEVICE_INLINE void cp_async_16(void* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(valid ? 16 : 0));
#else
  (void)dst, (void)src, (void)valid;
#endif
}

ZAYA_RT_DEVICE_INLINE void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most `kPending` committed groups of this thread are still in flight.
template <int kPending> ZAYA_RT_DEVICE_INLINE void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
}

}  // namespace zaya_rt::gpu
