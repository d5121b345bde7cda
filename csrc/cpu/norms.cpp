// CPU norms kernels. Compiled once per ISA (see cmake/cpu_kernels.cmake); rows run in parallel
// with OpenMP, the inner loops over the hidden dimension are vectorised by the compiler.
#include <algorithm>
#include <cmath>

#include "cpu/isa_kernels.h"
#include "cpu/numeric.h"
#include "zaya_rt/norm_rows.h"
#include "zaya_rt/norms.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {
namespace {

constexpr int64_t kParallelMinElems = 1 << 14;

template <typename TX, typename TW>
void rms_norm_fwd_t(const RmsNormFwdParams& p) {
  const TW* w = static_cast<const TW*>(p.weight);
  const int64_t dim = p.dim;
#pragma omp parallel for schedule(static) if (p.rows * dim >= kParallelMinElems)
  for (int64_t i = 0; i < p.rows; ++i) {
    const norm_rows::RmsFwdRow<TX, TW> row(p, i);
    const TX* xr = row.x;
    TW* orow = row.out;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < dim; ++j) {
      float v = load(xr, j);
      ss += v * v;
    }
    const float rstd = 1.f / std::sqrt(ss / static_cast<float>(dim) + p.eps);
    p.rstd[i] = rstd;
#pragma omp simd
    for (int64_t j = 0; j < dim; ++j) store(orow, j, round_to<TW>(load(xr, j) * rstd) * load(w, j));
  }
}

// Sums `count` row partials of width `width` into `out`.
void reduce_partials(const float* partials, int64_t count, int64_t width, float* out) {
#pragma omp parallel for schedule(static) if (count * width >= kParallelMinElems)
  for (int64_t j = 0; j < width; ++j) {
    float acc = 0.f;
    for (int64_t c = 0; c < count; ++c) acc += partials[c * width + j];
    out[j] = acc;
  }
}

template <typename TX, typename TW>
void rms_norm_bwd_t(const RmsNormBwdParams& p) {
  const TW* w = static_cast<const TW*>(p.weight);
  const int64_t dim = p.dim, chunks = p.num_partials;
#pragma omp parallel for schedule(static) if (p.rows * dim >= kParallelMinElems)
  for (int64_t c = 0; c < chunks; ++c) {
    float* part = p.partials + c * dim;
    for (int64_t j = 0; j < dim; ++j) part[j] = 0.f;
    int64_t begin, end;
    norm_rows::chunk(p.rows, chunks, c, begin, end);
    for (int64_t i = begin; i < end; ++i) {
      const norm_rows::RmsBwdRow<TX, TW> row(p, i);
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < dim; ++j) dot += load(row.grad_out, j) * load(w, j) * (load(row.x, j) * row.rstd);
      dot /= static_cast<float>(dim);
#pragma omp simd
      for (int64_t j = 0; j < dim; ++j) {
        const float n = load(row.x, j) * row.rstd;
        const float g = load(row.grad_out, j);
        store(row.grad_x, j, norm_rows::grad_input(g, load(w, j), n, row.rstd, dot));
        part[j] += g * round_to<TW>(n);
      }
    }
  }
  reduce_partials(p.partials, chunks, dim, p.grad_weight);
}

template <typename TY, typename TH, typename TW>
void residual_rms_norm_fwd_t(const ResidualRmsNormFwdParams& p) {
  const norm_rows::ResidualNormWeights<TW> wts(p);
  const TW *yb = wts.y_bias, *ys = wts.y_scale, *hb = wts.h_bias, *hs = wts.h_scale, *w = wts.weight;
  const int64_t dim = p.dim;
#pragma omp parallel for schedule(static) if (p.rows * dim >= kParallelMinElems)
  for (int64_t i = 0; i < p.rows; ++i) {
    const norm_rows::ResidualFwdRow<TY, TH, TW> row(p, i);
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < dim; ++j) {
      const float v = (load(row.y, j) + load(yb, j)) * load(ys, j) + (load(row.h, j) + load(hb, j)) * load(hs, j);
      row.r[j] = v;
      ss += v * v;
    }
    const float rstd = 1.f / std::sqrt(ss / static_cast<float>(dim) + p.eps);
    p.rstd[i] = rstd;
#pragma omp simd
    for (int64_t j = 0; j < dim; ++j) store(row.out, j, round_to<TW>(row.r[j] * rstd) * load(w, j));
  }
}

template <typename TY, typename TH, typename TW>
void residual_rms_norm_bwd_t(const ResidualRmsNormBwdParams& p) {
  const norm_rows::ResidualNormWeights<TW> wts(p);
  const TW *yb = wts.y_bias, *ys = wts.y_scale, *hb = wts.h_bias, *hs = wts.h_scale, *w = wts.weight;
  const int64_t dim = p.dim, chunks = p.num_partials, width = kResidualNormParamGrads * dim;
#pragma omp parallel for schedule(static) if (p.rows * dim >= kParallelMinElems)
  for (int64_t c = 0; c < chunks; ++c) {
    float* part = p.partials + c * width;
    for (int64_t j = 0; j < width; ++j) part[j] = 0.f;
    float *dw = part, *dyb = part + dim, *dys = part + 2 * dim, *dhb = part + 3 * dim, *dhs = part + 4 * dim;
    int64_t begin, end;
    norm_rows::chunk(p.rows, chunks, c, begin, end);
    for (int64_t i = begin; i < end; ++i) {
      const norm_rows::ResidualBwdRow<TY, TH, TW> row(p, i);
      const float rstd = row.rstd;
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < dim; ++j) dot += load(row.grad_out, j) * load(w, j) * (row.r[j] * rstd);
      dot /= static_cast<float>(dim);
#pragma omp simd
      for (int64_t j = 0; j < dim; ++j) {
        const float n = row.r[j] * rstd;
        const float go_j = load(row.grad_out, j);
        const float g = (row.grad_r ? row.grad_r[j] : 0.f) + norm_rows::grad_input(go_j, load(w, j), n, rstd, dot);
        const float a1 = load(ys, j), a2 = load(hs, j);
        store(row.grad_y, j, g * a1);
        store(row.grad_h, j, g * a2);
        dw[j] += go_j * round_to<TW>(n);
        dyb[j] += g * a1;
        dys[j] += g * (load(row.y, j) + load(yb, j));
        dhb[j] += g * a2;
        dhs[j] += g * (load(row.h, j) + load(hb, j));
      }
    }
  }
  reduce_partials(p.partials, chunks, width, p.grad_params);
}

}  // namespace

const char* rms_norm_fwd(const RmsNormFwdParams& p) {
  ZAYA_RT_DISPATCH_FLOAT(p.x_dtype, TX, ZAYA_RT_DISPATCH_FLOAT(p.w_dtype, TW, rms_norm_fwd_t<TX, TW>(p)));
  return nullptr;
}

const char* rms_norm_bwd(const RmsNormBwdParams& p) {
  ZAYA_RT_DISPATCH_FLOAT(p.x_dtype, TX, ZAYA_RT_DISPATCH_FLOAT(p.w_dtype, TW, rms_norm_bwd_t<TX, TW>(p)));
  return nullptr;
}

const char* residual_rms_norm_fwd(const ResidualRmsNormFwdParams& p) {
  ZAYA_RT_DISPATCH_FLOAT(p.y_dtype, TY, ZAYA_RT_DISPATCH_FLOAT(p.h_dtype, TH, ZAYA_RT_DISPATCH_FLOAT(
      p.w_dtype, TW, residual_rms_norm_fwd_t<TY, TH, TW>(p))));
  return nullptr;
}

const char* residual_rms_norm_bwd(const ResidualRmsNormBwdParams& p) {
  ZAYA_RT_DISPATCH_FLOAT(p.y_dtype, TY, ZAYA_RT_DISPATCH_FLOAT(p.h_dtype, TH, ZAYA_RT_DISPATCH_FLOAT(
      p.w_dtype, TW, residual_rms_norm_bwd_t<TY, TH, TW>(p))));
  return nullptr;
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
