#include "dispatch.h"

#include <string>

#include "dispatch_common.h"

#include "cpu/isa_kernels.h"

namespace zaya_rt {
using namespace dispatch;

namespace {

void check_common(const char* op, DType dtype, int64_t N, int64_t K, const Device& d) {
  if (d.type != DeviceType::kCpu) bad(op, "runs on the CPU only");
  check_float_dtype(op, "dtype", dtype);
  if (N <= 0 || K <= 0) bad(op, "N and K must be positive, got N=" + std::to_string(N) + ", K=" + std::to_string(K));
}

bool aligned64(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 63u) == 0; }

}  // namespace

void pack_linear_weight(const PackLinearParams& p, const Device& d) {
  const char* op = "pack_linear_weight";
  check_common(op, p.dtype, p.N, p.K, d);
  if (!p.weight || !p.packed) bad(op, "null pointer");
  if (p.weight_row_stride < p.K) bad(op, "weight rows overlap (row stride < K)");
  if (!aligned64(p.packed)) bad(op, "packed buffer must be 64-byte aligned");
  const int64_t need = packed_linear_bytes(p.dtype, p.N, p.K);
  if (p.packed_bytes < need)
    bad(op, "packed buffer has " + std::to_string(p.packed_bytes) + " bytes, needs " + std::to_string(need));
  finish(op, cpu::pack_linear_weight(p));
}

void packed_linear(const PackedLinearParams& p, const Device& d) {
  const char* op = "packed_linear";
  check_common(op, p.dtype, p.N, p.K, d);
  if (p.M < 0) bad(op, "M must be non-negative, got " + std::to_string(p.M));
  if (p.M == 0) return;
  if (!p.x || !p.packed || !p.out || !p.workspace) bad(op, "null pointer");
  if (p.x_row_stride < p.K && p.M > 1) bad(op, "x rows overlap (row stride < K)");
  if (p.out_row_stride < p.N && p.M > 1) bad(op, "out rows overlap (row stride < N)");
  const int64_t need = packed_linear_workspace(p.M, p.K);
  if (p.workspace_bytes < need)
    bad(op, "workspace has " + std::to_string(p.workspace_bytes) + " bytes, needs " + std::to_string(need));
  finish(op, cpu::packed_linear(p));
}

int64_t packed_linear_bytes(const PackLinearParams& p, const Device& d) {
  check_common("packed_linear_bytes", p.dtype, p.N, p.K, d);
  return packed_linear_bytes(p.dtype, p.N, p.K);
}

int64_t packed_linear_workspace(const PackedLinearParams& p, const Device& d) {
  check_common("packed_linear_workspace", p.dtype, p.N, p.K, d);
  return packed_linear_workspace(p.M, p.K);
}

}  // namespace zaya_rt
