// Host-side parsing of the environment variables that pick a GPU kernel family (ZAYA_RT_CUDA_ATTENTION,
// ZAYA_RT_CUDA_GROUPED_GEMM). Plain C++, so the GPU emulation (tools/gpu_emu) compiles it as is.
#pragma once
#include <cstdlib>
#include <cstring>
#include <initializer_list>

namespace zaya_rt::gpu {

// Which of `names` the environment variable `var` holds: 0 when unset, empty or names[0] (the default, e.g.
// "auto"), the name's index otherwise, -1 for anything else.
inline int env_choice(const char* var, std::initializer_list<const char*> names) {
  const char* v = std::getenv(var);
  if (v == nullptr || *v == '\0') return 0;
  int i = 0;
  for (const char* n : names) {
    if (std::strcmp(v, n) == 0) return i;
    ++i;
  }
  return -1;
}

}  // namespace zaya_rt::gpu
