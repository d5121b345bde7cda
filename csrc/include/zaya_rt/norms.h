// Norms family: RMSNorm, and residual scaling fused with the following RMSNorm (SPEC section 3).
// Rows have unit inner stride; row strides are in elements. Statistics and reductions are fp32.
#pragma once
#include "zaya_rt/common.h"

namespace zaya_rt {

// out = weight * cast<w_dtype>(x * rstd),  rstd = 1 / sqrt(mean(x^2) + eps), computed in fp32.
struct RmsNormFwdParams {
  const void* x; int64_t x_row_stride; DType x_dtype;
  const void* weight; DType w_dtype;     // out has w_dtype
  void* out; int64_t out_row_stride;
  float* rstd;                           // [rows]
  int64_t rows, dim;
  float eps;
};

// grad_x = rstd * (dn - n * mean(dn * n)) with n = x * rstd, dn = grad_out * weight;
// grad_weight = sum over rows of grad_out * n. Row partial sums go to `partials`
// ([num_partials, dim] fp32, caller-owned), the final sum to grad_weight ([dim] fp32).
struct RmsNormBwdParams {
  const void* grad_out; int64_t grad_out_row_stride;   // w_dtype
  const void* x; int64_t x_row_stride; DType x_dtype;
  const void* weight; DType w_dtype;
  const float* rstd;
  void* grad_x; int64_t grad_x_row_stride;             // x_dtype
  float* partials; int64_t num_partials;
  float* grad_weight;
  int64_t rows, dim;
};

// r = (y + y_bias) * y_scale + (h + h_bias) * h_scale   (fp32 residual stream)
// out = RMSNorm(r) * norm_weight as in RmsNormFwdParams.
// y_bias/y_scale/h_bias/h_scale share p_dtype; r is fp32.
struct ResidualRmsNormFwdParams {
  const void* y; int64_t y_row_stride; DType y_dtype;
  const void* h; int64_t h_row_stride; DType h_dtype;
  const void* y_bias; const void* y_scale; const void* h_bias; const void* h_scale; DType p_dtype;
  const void* weight; DType w_dtype;
  float* r; int64_t r_row_stride;
  void* out; int64_t out_row_stride;   // w_dtype
  float* rstd;
  int64_t rows, dim;
  float eps;
};

// Given grad_r (fp32, may be null = zero) and grad_out (w_dtype), with g = grad_r + d(norm)/dr:
// grad_y = g * y_scale, grad_h = g * h_scale, and five parameter gradients in `grad_params`
// ([5, dim] fp32: norm_weight, y_bias, y_scale, h_bias, h_scale). `partials` is
// [num_partials, 5, dim] fp32, caller-owned.
struct ResidualRmsNormBwdParams {
  const float* grad_r; int64_t grad_r_row_stride;
  const void* grad_out; int64_t grad_out_row_stride;
  const void* y; int64_t y_row_stride; DType y_dtype;
  const void* h; int64_t h_row_stride; DType h_dtype;
  const void* y_bias; const void* y_scale; const void* h_bias; const void* h_scale; DType p_dtype;
  const void* weight; DType w_dtype;
  const float* r; int64_t r_row_stride;
  const float* rstd;
  void* grad_y; int64_t grad_y_row_stride;   // y_dtype
  void* grad_h; int64_t grad_h_row_stride;   // h_dtype
  float* partials; int64_t num_partials;
  float* grad_params;
  int64_t rows, dim;
};

constexpr int kResidualNormParamGrads = 5;

// Backend entry points. Each returns nullptr on success, or a static message.
namespace cpu {
const char* rms_norm_fwd(const RmsNormFwdParams& p);
const char* rms_norm_bwd(const RmsNormBwdParams& p);
const char* residual_rms_norm_fwd(const ResidualRmsNormFwdParams& p);
const char* residual_rms_norm_bwd(const ResidualRmsNormBwdParams& p);
}  // namespace cpu
namespace gpu {
const char* rms_norm_fwd(const RmsNormFwdParams& p, void* stream);
const char* rms_norm_bwd(const RmsNormBwdParams& p, void* stream);
const char* residual_rms_norm_fwd(const ResidualRmsNormFwdParams& p, void* stream);
const char* residual_rms_norm_bwd(const ResidualRmsNormBwdParams& p, void* stream);
// Number of row partials the GPU backward wants for `rows` rows.
int64_t norm_bwd_num_partials(int64_t rows, int64_t dim);
}  // namespace gpu

}  // namespace zaya_rt
