#include "dispatch_newton_schulz.h"

#include <omp.h>

#include <cmath>
#include <stdexcept>
#include <string>

namespace zaya_rt {
namespace {

[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument("zaya_rt.newton_schulz: " + what); }

void check_shape(DType dtype, int64_t batch, int64_t rows, int64_t cols) {
  if (dtype != DType::kFloat32 && dtype != DType::kBFloat16)
    bad(std::string("compute dtype must be float32 or bfloat16, got ") + dtype_name(dtype));
  if (batch < 0 || rows < 0 || cols < 0) bad("sizes must be non-negative");
}

}  // namespace

int64_t newton_schulz_workspace(const Device& d, DType dtype, int64_t batch, int64_t rows, int64_t cols) {
  check_shape(dtype, batch, rows, cols);
  if (d.type == DeviceType::kCpu) return cpu::newton_schulz_workspace(dtype, batch, rows, cols, omp_get_max_threads());
#if defined(ZAYA_RT_WITH_GPU)
  return gpu::newton_schulz_workspace(dtype, batch, rows, cols);
#else
  bad("this build of zaya_rt has no GPU backend");
#endif
}

void newton_schulz(const NewtonSchulzParams& p, const Device& d) {
  check_shape(p.dtype, p.batch, p.rows, p.cols);
  if (p.steps < 0 || p.steps >= 100) bad("steps must be in [0, 100), got " + std::to_string(p.steps));
  if (!std::isfinite(p.a) || !std::isfinite(p.b) || !std::isfinite(p.c)) bad("coefficients must be finite");
  if (!(p.eps >= 0.f) || !std::isfinite(p.eps)) bad("eps must be a finite non-negative number");
  if (p.batch == 0 || p.rows == 0 || p.cols == 0) return;
  if (!p.x || !p.out || !p.workspace) bad("null pointer");
  if ((reinterpret_cast<uintptr_t>(p.workspace) & 63u) != 0) bad("workspace must be 64-byte aligned");
  const int64_t need = newton_schulz_workspace(d, p.dtype, p.batch, p.rows, p.cols);
  if (p.workspace_bytes < need)
    bad("workspace has " + std::to_string(p.workspace_bytes) + " bytes, needs " + std::to_string(need));
  const char* err = nullptr;
  if (d.type == DeviceType::kCpu) {
    err = cpu::newton_schulz(p);
  } else {
#if defined(ZAYA_RT_WITH_GPU)
    err = gpu::newton_schulz(p, d.stream);
#else
    bad("this build of zaya_rt has no GPU backend");
#endif
  }
  if (err != nullptr) throw std::runtime_error(std::string("zaya_rt.newton_schulz: ") + err);
}

}  // namespace zaya_rt
