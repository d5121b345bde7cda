// Scalar load/store between storage types and fp32, written so that loops over them vectorise.
#pragma once
#include <cstdint>
#include <cstring>
#if defined(__F16C__)
#include <immintrin.h>
#endif
#include "zaya_rt/common.h"

namespace zaya_rt::cpu {

struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

template <typename T> inline float load(const T* p, int64_t i);
template <> inline float load<float>(const float* p, int64_t i) { return p[i]; }
template <> inline float load<bf16>(const bf16* p, int64_t i) {
  uint32_t u = static_cast<uint32_t>(p[i].bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
template <> inline float load<f16>(const f16* p, int64_t i) {
#if defined(__F16C__)
  return _cvtsh_ss(p[i].bits);
#else
  _Float16 h;
  std::memcpy(&h, &p[i].bits, 2);
  return static_cast<float>(h);
#endif
}

template <typename T> inline void store(T* p, int64_t i, float v);
template <> inline void store<float>(float* p, int64_t i, float v) { p[i] = v; }
template <> inline void store<bf16>(bf16* p, int64_t i, float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // round to nearest even
  p[i].bits = static_cast<uint16_t>((v != v) ? 0x7fc0u : rounded);
}
template <> inline void store<f16>(f16* p, int64_t i, float v) {
#if defined(__F16C__)
  p[i].bits = _cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT);
#else
  _Float16 h = static_cast<_Float16>(v);
  std::memcpy(&p[i].bits, &h, 2);
#endif
}

// Rounds v through storage type T and back (the cast a kernel applies before a later multiply).
template <typename T> inline float round_to(float v) {
  T tmp;
  store<T>(&tmp, 0, v);
  return load<T>(&tmp, 0);
}

}  // namespace zaya_rt::cpu

// DISPATCH_FLOAT(dtype, T, ...) runs the body with T = float / f16 / bf16 for a runtime DType;
// an unsupported dtype makes the enclosing function return an error message.
#define ZAYA_RT_DISPATCH_FLOAT(DT, T, ...)                                   \
  switch (DT) {                                                              \
    case ::zaya_rt::DType::kFloat32: { using T = float; __VA_ARGS__; break; } \
    case ::zaya_rt::DType::kFloat16: { using T = ::zaya_rt::cpu::f16; __VA_ARGS__; break; } \
    case ::zaya_rt::DType::kBFloat16: { using T = ::zaya_rt::cpu::bf16; __VA_ARGS__; break; } \
    default: return "unsupported dtype (expected float32, float16 or bfloat16)";          \
  }
