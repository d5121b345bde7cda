// The one conversion of a kernel launch's status into the kernels' error convention, shared by every GPU kernel
// file (CUDA, HIP, and the host emulation in tools/gpu_emu, whose compat.h supplies gpu_last_error).
#pragma once
#include <string>

#include "cuda/compat.h"

namespace zaya_rt::gpu {

// nullptr after a good launch; otherwise "<what>: kernel launch failed: <runtime message>" (valid until this
// thread's next failing launch; the dispatcher copies it into an exception at once).
inline const char* launch_result(const char* what) {
  const gpuError_t e = gpu_last_error();
  if (e == gpuSuccess) return nullptr;
  thread_local std::string msg;
  msg = std::string(what) + ": kernel launch failed: " + gpu_error_string(e);
  return msg.c_str();
}

}  // namespace zaya_rt::gpu
