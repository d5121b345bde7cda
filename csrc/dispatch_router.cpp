#include "dispatch.h"

#include <string>

#include "dispatch_common.h"

namespace zaya_rt {

using namespace dispatch;

void zaya_router(const RouterParams& p, const Device& d) {
  const char* op = "zaya_router";
  check_nonneg(op, "T", p.T);
  if (p.D < 1 || p.R < 1 || p.C < 2) bad(op, "need D >= 1, R >= 1 and at least one expert plus the skip class");
  check_float_dtype(op, "x", p.dtype);
  for (const void* q : {p.down_w, p.down_b, p.norm_w, p.fc1_w, p.fc1_b, p.fc2_w, p.fc2_b, p.out_w,
                        static_cast<const void*>(p.balancing_bias)})
    check_ptr(op, "weight", q, true);
  // An empty z_prev (no tokens) may have no address.
  if (p.T > 0 && (p.z_prev == nullptr) != (p.eda_scale == nullptr)) bad(op, "z_prev and eda_scale come together");
  if (p.z_prev != nullptr) check_float_dtype(op, "z_prev", p.z_prev_dtype);
  if (d.type == DeviceType::kCpu) {
    check_ptr(op, "workspace", p.workspace, true);
    if (p.z0 != nullptr) bad(op, "z0 (a precomputed down projection) is for the GPU kernel only");
  } else if (p.z0 != nullptr) {
    check_stride(op, "z0", p.z0_row_stride, p.R, p.T);
  }
  if (p.T == 0) return;
  route(op, p, d, cpu::zaya_router, gpu::zaya_router);
}

int64_t zaya_router_workspace(const RouterParams& p, const Device& d) {
  require_device("zaya_router_workspace", d);
  if (d.type == DeviceType::kGpu) return 0;
  return cpu::zaya_router_workspace(p.T, p.D, p.R, p.C);
}

}  // namespace zaya_rt
