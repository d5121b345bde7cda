// Storage types and fp32 load/store for GPU kernels, the same under CUDA and HIP, with the same
// rounding as the CPU kernels (csrc/cpu/numeric.h): round to nearest even, NaN kept.
//
// bf16 is done on the bits (ROCm 5.2 has no hip_bf16.h, and the bit form matches the CPU exactly,
// NaN -> 0x7fc0 included). fp16 uses the hardware conversion: cuda_fp16.h on CUDA, clang's
// _Float16 on HIP (native on gfx9), so no hip_fp16.h API differences between ROCm versions matter.
#pragma once
#include <cstdint>

#include "cuda/compat.h"
#if defined(ZAYA_RT_GPU_CUDA)
#include <cuda_fp16.h>
#endif

namespace zaya_rt::gpu {

struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

ZAYA_RT_DEVICE_INLINE float to_float(float v) { return v; }
ZAYA_RT_DEVICE_INLINE float to_float(bf16 v) { return bits_to_float(static_cast<uint32_t>(v.bits) << 16); }
ZAYA_RT_DEVICE_INLINE float to_float(f16 v) {
#if defined(ZAYA_RT_GPU_HIP)
  return static_cast<float>(__builtin_bit_cast(_Float16, v.bits));
#else
  return __half2float(__ushort_as_half(v.bits));
#endif
}

template <typename T> ZAYA_RT_DEVICE_INLINE T from_float(float v);
template <> ZAYA_RT_DEVICE_INLINE float from_float<float>(float v) { return v; }
template <> ZAYA_RT_DEVICE_INLINE bf16 from_float<bf16>(float v) {
  const uint32_t u = float_to_bits(v);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // round to nearest even
  return bf16{static_cast<uint16_t>((v != v) ? 0x7fc0u : rounded)};
}
template <> ZAYA_RT_DEVICE_INLINE f16 from_float<f16>(float v) {
#if defined(ZAYA_RT_GPU_HIP)
  return f16{__builtin_bit_cast(uint16_t, static_cast<_Float16>(v))};
#else
  return f16{__half_as_ushort(__float2half_rn(v))};
#endif
}

// Rounds v through storage type T and back (the cast a kernel applies before a later multiply).
template <typename T> ZAYA_RT_DEVICE_INLINE float round_to(float v) { return to_float(from_float<T>(v)); }

// N consecutive elements as one aligned memory access (N * sizeof(T) bytes; the caller guarantees
// that alignment). N == 1 is a plain scalar access.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <int N, typename T>
ZAYA_RT_DEVICE_INLINE void load_n(const T* p, float (&out)[N]) {
  const Pack<T, N> pk = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int e = 0; e < N; ++e) out[e] = to_float(pk.v[e]);
}

template <int N, typename T>
ZAYA_RT_DEVICE_INLINE void store_n(T* p, const float (&in)[N]) {
  Pack<T, N> pk;
#pragma unroll
  for (int e = 0; e < N; ++e) pk.v[e] = from_float<T>(in[e]);
  *reinterpret_cast<Pack<T, N>*>(p) = pk;
}

}  // namespace zaya_rt::gpu

// ZAYA_RT_GPU_DISPATCH_FLOAT(dtype, T, ...) runs the body with T = float / f16 / bf16 for a runtime DType;
// an unsupported dtype makes the enclosing function return an error message.
#define ZAYA_RT_GPU_DISPATCH_FLOAT(DT, T, ...)                                                \
  switch (DT) {                                                                               \
    case ::zaya_rt::DType::kFloat32: { using T = float; __VA_ARGS__; break; }                 \
    case ::zaya_rt::DType::kFloat16: { using T = ::zaya_rt::gpu::f16; __VA_ARGS__; break; }   \
    case ::zaya_rt::DType::kBFloat16: { using T = ::zaya_rt::gpu::bf16; __VA_ARGS__; break; } \
    default: return "unsupported dtype (expected float32, float16 or bfloat16)";              \
  }
