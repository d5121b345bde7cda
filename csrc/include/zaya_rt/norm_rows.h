// The RMSNorm kernels' row pieces, shared by the CPU kernels (csrc/cpu/norms.cpp) and the CUDA/HIP ones
// (cuda/norms_kernels.cuh) so that the two cannot drift: each row's pointers, the residual norm's parameter
// vectors, which rows a weight-gradient partial owns, and the input gradient of one element.
#pragma once
#include <cstdint>

#include "zaya_rt/host_device.h"
#include "zaya_rt/norms.h"

namespace zaya_rt::norm_rows {

// Rows [begin, end) of weight-gradient partial c of `chunks` (rows split into equal runs, the last shorter).
ZAYA_RT_HOST_DEVICE inline void chunk(int64_t rows, int64_t chunks, int64_t c, int64_t& begin, int64_t& end) {
  const int64_t per = (rows + chunks - 1) / chunks;
  begin = c * per;
  end = begin + per < rows ? begin + per : rows;
}

// d loss / d x_j of out = w * (x * rstd), with n_j = x_j * rstd and mean_dot = mean_k(g_k * w_k * n_k).
ZAYA_RT_HOST_DEVICE inline float grad_input(float g, float w, float n, float rstd, float mean_dot) {
  return rstd * (g * w - n * mean_dot);
}

// The parameter vectors ([dim] each, dtype TW) of residual_rms_norm's forward or backward params.
template <typename TW>
struct ResidualNormWeights {
  const TW *y_bias, *y_scale, *h_bias, *h_scale, *weight;
  template <typename Params>
  ZAYA_RT_HOST_DEVICE explicit ResidualNormWeights(const Params& p)
      : y_bias(static_cast<const TW*>(p.y_bias)),
        y_scale(static_cast<const TW*>(p.y_scale)),
        h_bias(static_cast<const TW*>(p.h_bias)),
        h_scale(static_cast<const TW*>(p.h_scale)),
        weight(static_cast<const TW*>(p.weight)) {}
};

// Row i of rms_norm_fwd's tensors.
template <typename TX, typename TW>
struct RmsFwdRow {
  const TX* x;
  TW* out;
  ZAYA_RT_HOST_DEVICE RmsFwdRow(const RmsNormFwdParams& p, int64_t i)
      : x(static_cast<const TX*>(p.x) + i * p.x_row_stride), out(static_cast<TW*>(p.out) + i * p.out_row_stride) {}
};

// Row i of residual_rms_norm_fwd's tensors.
template <typename TY, typename TH, typename TW>
struct ResidualFwdRow {
  const TY* y;
  const TH* h;
  float* r;
  TW* out;
  ZAYA_RT_HOST_DEVICE ResidualFwdRow(const ResidualRmsNormFwdParams& p, int64_t i)
      : y(static_cast<const TY*>(p.y) + i * p.y_row_stride),
        h(static_cast<const TH*>(p.h) + i * p.h_row_stride),
        r(p.r + i * p.r_row_stride),
        out(static_cast<TW*>(p.out) + i * p.out_row_stride) {}
};

// Row i of rms_norm_bwd's tensors.
template <typename TX, typename TW>
struct RmsBwdRow {
  const TX* x;
  const TW* grad_out;
  TX* grad_x;
  float rstd;
  ZAYA_RT_HOST_DEVICE RmsBwdRow(const RmsNormBwdParams& p, int64_t i)
      : x(static_cast<const TX*>(p.x) + i * p.x_row_stride),
        grad_out(static_cast<const TW*>(p.grad_out) + i * p.grad_out_row_stride),
        grad_x(static_cast<TX*>(p.grad_x) + i * p.grad_x_row_stride),
        rstd(p.rstd[i]) {}
};

// Row i of residual_rms_norm_bwd's tensors (grad_r is null when the residual stream's gradient is absent).
template <typename TY, typename TH, typename TW>
struct ResidualBwdRow {
  const TY* y;
  const TH* h;
  const float* r;
  const TW* grad_out;
  const float* grad_r;
  TY* grad_y;
  TH* grad_h;
  float rstd;
  ZAYA_RT_HOST_DEVICE ResidualBwdRow(const ResidualRmsNormBwdParams& p, int64_t i)
      : y(static_cast<const TY*>(p.y) + i * p.y_row_stride),
        h(static_cast<const TH*>(p.h) + i * p.h_row_stride),
        r(p.r + i * p.r_row_stride),
        grad_out(static_cast<const TW*>(p.grad_out) + i * p.grad_out_row_stride),
        grad_r(p.grad_r ? p.grad_r + i * p.grad_r_row_stride : nullptr),
        grad_y(static_cast<TY*>(p.grad_y) + i * p.grad_y_row_stride),
        grad_h(static_cast<TH*>(p.grad_h) + i * p.grad_h_row_stride),
        rstd(p.rstd[i]) {}
};

}  // namespace zaya_rt::norm_rows
