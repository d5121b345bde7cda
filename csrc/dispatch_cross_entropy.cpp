#include "dispatch.h"

#include <string>

#include "dispatch_common.h"

namespace zaya_rt {
using namespace dispatch;

void cross_entropy_rows(const CrossEntropyRowsParams& p, const Device& d) {
  const char* op = "cross_entropy_rows";
  if (d.type != DeviceType::kCpu) bad(op, "runs on the CPU only");
  check_float_dtype(op, "dtype", p.dtype);
  check_nonneg(op, "rows", p.rows);
  check_positive(op, "vocab", p.vocab);
  if (p.rows == 0) return;
  check_ptrs(op, {{"targets", p.targets, true}, {"losses", p.losses, true}});
  check_rows(op, p.rows, {{"logits", p.logits, p.logits_row_stride, p.vocab}});
  for (int64_t i = 0; i < p.rows; ++i) {
    const int64_t t = p.targets[i];
    if (t != p.ignore_index && (t < 0 || t >= p.vocab))
      bad(op, "targets[" + std::to_string(i) + "] = " + std::to_string(t) + " is outside [0, " +
                  std::to_string(p.vocab) + ") and is not ignore_index (" + std::to_string(p.ignore_index) + ")");
  }
  finish(op, cpu::cross_entropy_rows(p));
}

}  // namespace zaya_rt
