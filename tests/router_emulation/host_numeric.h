// Host stand-ins for what cuda/numeric.cuh gives GPU code (storage types, fp32 conversions with the same
// rounding, vector packs), so that cuda/router_body.cuh compiles with a plain C++ compiler for emulation.
#pragma once
#include <cstdint>
#include <cstring>

namespace zaya_rt::gpu {

struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

inline float to_float(float v) { return v; }
inline float to_float(bf16 v) {
  const uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float to_float(f16 v) {
  _Float16 h;
  std::memcpy(&h, &v.bits, 2);
  return static_cast<float>(h);
}

template <typename T> inline T from_float(float v);
template <> inline float from_float<float>(float v) { return v; }
template <> inline bf16 from_float<bf16>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return bf16{static_cast<uint16_t>((v != v) ? 0x7fc0u : rounded)};
}
template <> inline f16 from_float<f16>(float v) {
  const _Float16 h = static_cast<_Float16>(v);
  f16 out;
  std::memcpy(&out.bits, &h, 2);
  return out;
}

template <typename T> inline float round_to(float v) { return to_float(from_float<T>(v)); }

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <int N, typename T>
inline void load_n(const T* p, float (&out)[N]) {
  const Pack<T, N> pk = *reinterpret_cast<const Pack<T, N>*>(p);
  for (int e = 0; e < N; ++e) out[e] = to_float(pk.v[e]);
}

}  // namespace zaya_rt::gpu
