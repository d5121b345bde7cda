// The sampler's counter-based uniform, one definition for host code (csrc/cpu/sampling.cpp, _C.sampling_uniform)
// and device code (cuda/runtime_kernels.cuh under nvcc or clang -x hip), so that both draw bit-identical u:
// integer mixing only, then an exact conversion of 53 bits to double.
#pragma once
#include <cstdint>

#include "zaya_rt/host_device.h"

namespace zaya_rt {

// SplitMix64 finaliser.
ZAYA_RT_HOST_DEVICE inline uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Uniform in [0, 1) for (seed, step): independent of the batch a request shares.
ZAYA_RT_HOST_DEVICE inline double sampling_uniform(int64_t seed, int64_t step) {
  uint64_t h = splitmix64_mix(static_cast<uint64_t>(seed) + 0x9e3779b97f4a7c15ULL);
  h = splitmix64_mix(h ^ (static_cast<uint64_t>(step) * 0xd1b54a32d192ed03ULL + 0x9e3779b97f4a7c15ULL));
  return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace zaya_rt
