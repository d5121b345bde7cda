#include "dispatch.h"

#include <omp.h>

#include <cmath>
#include <string>

#include "dispatch_common.h"

namespace zaya_rt {
namespace {

constexpr const char* kOp = "newton_schulz";

void check_shape(DType dtype, int64_t batch, int64_t rows, int64_t cols) {
  using dispatch::bad;
  if (dtype != DType::kFloat32 && dtype != DType::kBFloat16)
    bad(kOp, std::string("compute dtype must be float32 or bfloat16, got ") + dtype_name(dtype));
  dispatch::check_nonneg(kOp, "batch", batch);
  dispatch::check_nonneg(kOp, "rows", rows);
  dispatch::check_nonneg(kOp, "cols", cols);
}

}  // namespace

int64_t newton_schulz_workspace(const NewtonSchulzParams& p, const Device& d) {
  check_shape(p.dtype, p.batch, p.rows, p.cols);
  dispatch::require_device(kOp, d);
  if (d.type == DeviceType::kCpu)
    return cpu::newton_schulz_workspace(p.dtype, p.batch, p.rows, p.cols, omp_get_max_threads());
  return gpu::newton_schulz_workspace(p.dtype, p.batch, p.rows, p.cols);
}

void newton_schulz(const NewtonSchulzParams& p, const Device& d) {
  using dispatch::bad;
  check_shape(p.dtype, p.batch, p.rows, p.cols);
  if (p.steps < 0 || p.steps >= 100) bad(kOp, "steps must be in [0, 100), got " + std::to_string(p.steps));
  if (!std::isfinite(p.a) || !std::isfinite(p.b) || !std::isfinite(p.c)) bad(kOp, "coefficients must be finite");
  if (!(p.eps >= 0.f) || !std::isfinite(p.eps)) bad(kOp, "eps must be a finite non-negative number");
  if (p.batch == 0 || p.rows == 0 || p.cols == 0) return;
  dispatch::check_ptr(kOp, "x", p.x, true);
  dispatch::check_ptr(kOp, "out", p.out, true);
  dispatch::check_ptr(kOp, "workspace", p.workspace, true);
  if ((reinterpret_cast<uintptr_t>(p.workspace) & 63u) != 0) bad(kOp, "workspace must be 64-byte aligned");
  const int64_t need = newton_schulz_workspace(p, d);
  if (p.workspace_bytes < need)
    bad(kOp, "workspace has " + std::to_string(p.workspace_bytes) + " bytes, needs " + std::to_string(need));
  dispatch::route(kOp, p, d, [](const NewtonSchulzParams& q) { return cpu::newton_schulz(q); },
                  [](const NewtonSchulzParams& q, void* stream) { return gpu::newton_schulz(q, stream); });
}

}  // namespace zaya_rt
