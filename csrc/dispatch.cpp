#include "dispatch.h"

#include <omp.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "zaya_rt/norms.h"

namespace zaya_rt {
namespace {

[[noreturn]] void bad(const std::string& op, const std::string& what) {
  throw std::invalid_argument("zaya_rt." + op + ": " + what);
}

void check_dtype(const char* op, const char* name, DType t) {
  if (!is_floating_16_32(t))
    bad(op, std::string(name) + " must be float32, float16 or bfloat16, got " + dtype_name(t));
}

void check_rows(const char* op, int64_t rows, int64_t dim) {
  if (rows < 0) bad(op, "negative row count " + std::to_string(rows));
  if (dim <= 0) bad(op, "hidden size must be positive, got " + std::to_string(dim));
}

void check_ptr(const char* op, const char* name, const void* p, int64_t rows) {
  if (p == nullptr && rows > 0) bad(op, std::string(name) + " is a null pointer");
}

void check_stride(const char* op, const char* name, int64_t stride, int64_t dim, int64_t rows) {
  if (rows > 1 && stride < dim)
    bad(op, std::string(name) + " row stride " + std::to_string(stride) + " is smaller than the row (" +
                std::to_string(dim) + ")");
}

void finish(const char* op, const char* err) {
  if (err != nullptr) throw std::runtime_error(std::string("zaya_rt.") + op + ": " + err);
}

void require_gpu(const char* op) {
#if !defined(ZAYA_RT_WITH_GPU)
  bad(op, "this zaya_rt._C was built without a GPU backend (rebuild with ZAYA_RT_CUDA=ON or ZAYA_RT_HIP=ON)");
#else
  (void)op;
#endif
}

// Calls the CPU kernel or, on a GPU build, the GPU one.
template <typename Params, typename CpuFn, typename GpuFn>
void route(const char* op, const Params& p, const Device& d, CpuFn cpu_fn, GpuFn gpu_fn) {
  if (d.type == DeviceType::kCpu) return finish(op, cpu_fn(p));
  if (d.type != DeviceType::kGpu) bad(op, "unknown device type");
  require_gpu(op);
  finish(op, gpu_fn(p, d.stream));
}

}  // namespace

const char* gpu_backend_name() {
#if defined(ZAYA_RT_WITH_CUDA)
  return "cuda";
#elif defined(ZAYA_RT_WITH_HIP)
  return "hip";
#else
  return "none";
#endif
}

#if !defined(ZAYA_RT_WITH_GPU)
// A CPU-only build links these stubs; require_gpu() rejects GPU calls before they are reached.
namespace gpu {
const char* rms_norm_fwd(const RmsNormFwdParams&, void*) { return "no GPU backend"; }
const char* rms_norm_bwd(const RmsNormBwdParams&, void*) { return "no GPU backend"; }
const char* residual_rms_norm_fwd(const ResidualRmsNormFwdParams&, void*) { return "no GPU backend"; }
const char* residual_rms_norm_bwd(const ResidualRmsNormBwdParams&, void*) { return "no GPU backend"; }
int64_t norm_bwd_num_partials(int64_t, int64_t) { return 1; }
}  // namespace gpu
#endif

void rms_norm_fwd(const RmsNormFwdParams& p, const Device& d) {
  const char* op = "rms_norm";
  check_rows(op, p.rows, p.dim);
  check_dtype(op, "x", p.x_dtype);
  check_dtype(op, "weight", p.w_dtype);
  if (!(p.eps >= 0.f)) bad(op, "eps must be a non-negative number");
  check_ptr(op, "x", p.x, p.rows);
  check_ptr(op, "weight", p.weight, 1);
  check_ptr(op, "out", p.out, p.rows);
  check_ptr(op, "rstd", p.rstd, p.rows);
  check_stride(op, "x", p.x_row_stride, p.dim, p.rows);
  check_stride(op, "out", p.out_row_stride, p.dim, p.rows);
  if (p.rows == 0) return;
  route(op, p, d, cpu::rms_norm_fwd, gpu::rms_norm_fwd);
}

void rms_norm_bwd(const RmsNormBwdParams& p, const Device& d) {
  const char* op = "rms_norm_backward";
  check_rows(op, p.rows, p.dim);
  check_dtype(op, "x", p.x_dtype);
  check_dtype(op, "weight", p.w_dtype);
  check_ptr(op, "grad_out", p.grad_out, p.rows);
  check_ptr(op, "x", p.x, p.rows);
  check_ptr(op, "weight", p.weight, 1);
  check_ptr(op, "rstd", p.rstd, p.rows);
  check_ptr(op, "grad_x", p.grad_x, p.rows);
  check_ptr(op, "partials", p.partials, 1);
  check_ptr(op, "grad_weight", p.grad_weight, 1);
  if (p.num_partials < 1) bad(op, "num_partials must be at least 1");
  check_stride(op, "grad_out", p.grad_out_row_stride, p.dim, p.rows);
  check_stride(op, "x", p.x_row_stride, p.dim, p.rows);
  check_stride(op, "grad_x", p.grad_x_row_stride, p.dim, p.rows);
  route(op, p, d, cpu::rms_norm_bwd, gpu::rms_norm_bwd);
}

void residual_rms_norm_fwd(const ResidualRmsNormFwdParams& p, const Device& d) {
  const char* op = "residual_rms_norm";
  check_rows(op, p.rows, p.dim);
  check_dtype(op, "y", p.y_dtype);
  check_dtype(op, "h", p.h_dtype);
  check_dtype(op, "weight", p.w_dtype);
  if (p.p_dtype != p.w_dtype) bad(op, "residual scale parameters must have the norm weight's dtype");
  if (!(p.eps >= 0.f)) bad(op, "eps must be a non-negative number");
  for (const void* q : {p.y_bias, p.y_scale, p.h_bias, p.h_scale, p.weight}) check_ptr(op, "parameter", q, 1);
  check_ptr(op, "y", p.y, p.rows);
  check_ptr(op, "h", p.h, p.rows);
  check_ptr(op, "r", p.r, p.rows);
  check_ptr(op, "out", p.out, p.rows);
  check_ptr(op, "rstd", p.rstd, p.rows);
  check_stride(op, "y", p.y_row_stride, p.dim, p.rows);
  check_stride(op, "h", p.h_row_stride, p.dim, p.rows);
  check_stride(op, "r", p.r_row_stride, p.dim, p.rows);
  check_stride(op, "out", p.out_row_stride, p.dim, p.rows);
  if (p.rows == 0) return;
  route(op, p, d, cpu::residual_rms_norm_fwd, gpu::residual_rms_norm_fwd);
}

void residual_rms_norm_bwd(const ResidualRmsNormBwdParams& p, const Device& d) {
  const char* op = "residual_rms_norm_backward";
  check_rows(op, p.rows, p.dim);
  check_dtype(op, "y", p.y_dtype);
  check_dtype(op, "h", p.h_dtype);
  check_dtype(op, "weight", p.w_dtype);
  if (p.p_dtype != p.w_dtype) bad(op, "residual scale parameters must have the norm weight's dtype");
  for (const void* q : {p.y_bias, p.y_scale, p.h_bias, p.h_scale, p.weight}) check_ptr(op, "parameter", q, 1);
  check_ptr(op, "grad_out", p.grad_out, p.rows);
  check_ptr(op, "y", p.y, p.rows);
  check_ptr(op, "h", p.h, p.rows);
  check_ptr(op, "r", p.r, p.rows);
  check_ptr(op, "rstd", p.rstd, p.rows);
  check_ptr(op, "grad_y", p.grad_y, p.rows);
  check_ptr(op, "grad_h", p.grad_h, p.rows);
  check_ptr(op, "partials", p.partials, 1);
  check_ptr(op, "grad_params", p.grad_params, 1);
  if (p.num_partials < 1) bad(op, "num_partials must be at least 1");
  check_stride(op, "grad_out", p.grad_out_row_stride, p.dim, p.rows);
  if (p.grad_r) check_stride(op, "grad_r", p.grad_r_row_stride, p.dim, p.rows);
  check_stride(op, "y", p.y_row_stride, p.dim, p.rows);
  check_stride(op, "h", p.h_row_stride, p.dim, p.rows);
  check_stride(op, "r", p.r_row_stride, p.dim, p.rows);
  check_stride(op, "grad_y", p.grad_y_row_stride, p.dim, p.rows);
  check_stride(op, "grad_h", p.grad_h_row_stride, p.dim, p.rows);
  route(op, p, d, cpu::residual_rms_norm_bwd, gpu::residual_rms_norm_bwd);
}

int64_t norm_bwd_num_partials(const Device& d, int64_t rows, int64_t dim) {
  if (d.type == DeviceType::kGpu) {
    require_gpu("norm_bwd_num_partials");
    return gpu::norm_bwd_num_partials(rows, dim);
  }
  // Enough chunks to feed every thread; few enough that the final reduction stays cheap.
  return std::max<int64_t>(1, std::min<int64_t>(rows, 4 * omp_get_max_threads()));
}

}  // namespace zaya_rt
