#include <omp.h>

#include <algorithm>
#include <string>

#include "dispatch.h"
#include "dispatch_common.h"

namespace zaya_rt {

using namespace dispatch;

namespace {

// What every norm entry point checks: the sizes, the dtypes, and for the residual forms the parameters.
void check_sizes(const char* op, int64_t rows, int64_t dim) {
  if (rows < 0) bad(op, "negative row count " + std::to_string(rows));
  if (dim <= 0) bad(op, "hidden size must be positive, got " + std::to_string(dim));
}

void check_eps(const char* op, float eps) {
  if (!(eps >= 0.f)) bad(op, "eps must be a non-negative number");
}

template <typename P> void check_residual(const char* op, const P& p) {
  check_sizes(op, p.rows, p.dim);
  check_float_dtype(op, "y", p.y_dtype);
  check_float_dtype(op, "h", p.h_dtype);
  check_float_dtype(op, "weight", p.w_dtype);
  if (p.p_dtype != p.w_dtype) bad(op, "residual scale parameters must have the norm weight's dtype");
  for (const void* q : {p.y_bias, p.y_scale, p.h_bias, p.h_scale, p.weight}) check_ptr(op, "parameter", q, true);
}

}  // namespace

void rms_norm_fwd(const RmsNormFwdParams& p, const Device& d) {
  const char* op = "rms_norm";
  check_sizes(op, p.rows, p.dim);
  check_float_dtype(op, "x", p.x_dtype);
  check_float_dtype(op, "weight", p.w_dtype);
  check_eps(op, p.eps);
  check_ptr(op, "weight", p.weight, true);
  check_ptr(op, "rstd", p.rstd, p.rows > 0);
  check_rows(op, p.rows, {{"x", p.x, p.x_row_stride, p.dim}, {"out", p.out, p.out_row_stride, p.dim}});
  if (p.rows == 0) return;
  route(op, p, d, cpu::rms_norm_fwd, gpu::rms_norm_fwd);
}

void rms_norm_bwd(const RmsNormBwdParams& p, const Device& d) {
  const char* op = "rms_norm_backward";
  check_sizes(op, p.rows, p.dim);
  check_float_dtype(op, "x", p.x_dtype);
  check_float_dtype(op, "weight", p.w_dtype);
  check_ptr(op, "weight", p.weight, true);
  check_ptr(op, "rstd", p.rstd, p.rows > 0);
  check_ptr(op, "partials", p.partials, true);
  check_ptr(op, "grad_weight", p.grad_weight, true);
  if (p.num_partials < 1) bad(op, "num_partials must be at least 1");
  check_rows(op, p.rows, {{"grad_out", p.grad_out, p.grad_out_row_stride, p.dim},
                          {"x", p.x, p.x_row_stride, p.dim},
                          {"grad_x", p.grad_x, p.grad_x_row_stride, p.dim}});
  route(op, p, d, cpu::rms_norm_bwd, gpu::rms_norm_bwd);
}

void residual_rms_norm_fwd(const ResidualRmsNormFwdParams& p, const Device& d) {
  const char* op = "residual_rms_norm";
  check_residual(op, p);
  check_eps(op, p.eps);
  check_ptr(op, "rstd", p.rstd, p.rows > 0);
  check_rows(op, p.rows, {{"y", p.y, p.y_row_stride, p.dim},
                          {"h", p.h, p.h_row_stride, p.dim},
                          {"r", p.r, p.r_row_stride, p.dim},
                          {"out", p.out, p.out_row_stride, p.dim}});
  if (p.rows == 0) return;
  route(op, p, d, cpu::residual_rms_norm_fwd, gpu::residual_rms_norm_fwd);
}

void residual_rms_norm_bwd(const ResidualRmsNormBwdParams& p, const Device& d) {
  const char* op = "residual_rms_norm_backward";
  check_residual(op, p);
  check_ptr(op, "rstd", p.rstd, p.rows > 0);
  check_ptr(op, "partials", p.partials, true);
  check_ptr(op, "grad_params", p.grad_params, true);
  if (p.num_partials < 1) bad(op, "num_partials must be at least 1");
  if (p.grad_r) check_stride(op, "grad_r", p.grad_r_row_stride, p.dim, p.rows);  // null: no gradient through r
  check_rows(op, p.rows, {{"grad_out", p.grad_out, p.grad_out_row_stride, p.dim},
                          {"y", p.y, p.y_row_stride, p.dim},
                          {"h", p.h, p.h_row_stride, p.dim},
                          {"r", p.r, p.r_row_stride, p.dim},
                          {"grad_y", p.grad_y, p.grad_y_row_stride, p.dim},
                          {"grad_h", p.grad_h, p.grad_h_row_stride, p.dim}});
  route(op, p, d, cpu::residual_rms_norm_bwd, gpu::residual_rms_norm_bwd);
}

int64_t norm_bwd_num_partials(const Device& d, int64_t rows, int64_t dim) {
  require_device("norm_bwd_num_partials", d);
  if (d.type == DeviceType::kGpu) return gpu::norm_bwd_num_partials(rows, dim);
  // Enough chunks to feed every thread; few enough that the final reduction stays cheap.
  return std::max<int64_t>(1, std::min<int64_t>(rows, 4 * omp_get_max_threads()));
}

}  // namespace zaya_rt
