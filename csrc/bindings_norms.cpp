// pybind11 functions of the norms family: _C.rms_norm_fwd/bwd, residual_rms_norm_fwd/bwd, norm_bwd_num_partials.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings_args.h"
#include "dispatch_norms.h"

namespace py = pybind11;

namespace {

using namespace zaya_rt::bindings;

void rms_norm_fwd(Ptr x, int64_t x_rs, int x_dt, Ptr w, int w_dt, Ptr out, int64_t out_rs, Ptr rstd,
                  int64_t rows, int64_t dim, double eps, int dev_type, int dev_index, Ptr stream) {
  zaya_rt::RmsNormFwdParams p{ptr(x), x_rs, dt(x_dt), ptr(w), dt(w_dt), ptr(out), out_rs, ptr<float>(rstd),
                              rows, dim, static_cast<float>(eps)};
  py::gil_scoped_release nogil;
  zaya_rt::rms_norm_fwd(p, dev(dev_type, dev_index, stream));
}

void rms_norm_bwd(Ptr go, int64_t go_rs, Ptr x, int64_t x_rs, int x_dt, Ptr w, int w_dt, Ptr rstd, Ptr gx,
                  int64_t gx_rs, Ptr partials, int64_t num_partials, Ptr gw, int64_t rows, int64_t dim,
                  int dev_type, int dev_index, Ptr stream) {
  zaya_rt::RmsNormBwdParams p{ptr(go), go_rs, ptr(x), x_rs, dt(x_dt), ptr(w), dt(w_dt), ptr<const float>(rstd),
                              ptr(gx), gx_rs, ptr<float>(partials), num_partials, ptr<float>(gw), rows, dim};
  py::gil_scoped_release nogil;
  zaya_rt::rms_norm_bwd(p, dev(dev_type, dev_index, stream));
}

void residual_rms_norm_fwd(Ptr y, int64_t y_rs, int y_dt, Ptr h, int64_t h_rs, int h_dt, Ptr yb, Ptr ys, Ptr hb,
                           Ptr hs, int p_dt, Ptr w, int w_dt, Ptr r, int64_t r_rs, Ptr out, int64_t out_rs,
                           Ptr rstd, int64_t rows, int64_t dim, double eps, int dev_type, int dev_index,
                           Ptr stream) {
  zaya_rt::ResidualRmsNormFwdParams p{ptr(y), y_rs, dt(y_dt), ptr(h), h_rs, dt(h_dt), ptr(yb), ptr(ys), ptr(hb),
                                      ptr(hs), dt(p_dt), ptr(w), dt(w_dt), ptr<float>(r), r_rs, ptr(out),
                                      out_rs, ptr<float>(rstd), rows, dim, static_cast<float>(eps)};
  py::gil_scoped_release nogil;
  zaya_rt::residual_rms_norm_fwd(p, dev(dev_type, dev_index, stream));
}

void residual_rms_norm_bwd(Ptr gr, int64_t gr_rs, Ptr go, int64_t go_rs, Ptr y, int64_t y_rs, int y_dt, Ptr h,
                           int64_t h_rs, int h_dt, Ptr yb, Ptr ys, Ptr hb, Ptr hs, int p_dt, Ptr w, int w_dt,
                           Ptr r, int64_t r_rs, Ptr rstd, Ptr gy, int64_t gy_rs, Ptr gh, int64_t gh_rs,
                           Ptr partials, int64_t num_partials, Ptr grad_params, int64_t rows, int64_t dim,
                           int dev_type, int dev_index, Ptr stream) {
  zaya_rt::ResidualRmsNormBwdParams p{ptr<const float>(gr), gr_rs, ptr(go), go_rs, ptr(y), y_rs, dt(y_dt),
                                      ptr(h), h_rs, dt(h_dt), ptr(yb), ptr(ys), ptr(hb), ptr(hs), dt(p_dt),
                                      ptr(w), dt(w_dt), ptr<const float>(r), r_rs, ptr<const float>(rstd),
                                      ptr(gy), gy_rs, ptr(gh), gh_rs, ptr<float>(partials), num_partials,
                                      ptr<float>(grad_params), rows, dim};
  py::gil_scoped_release nogil;
  zaya_rt::residual_rms_norm_bwd(p, dev(dev_type, dev_index, stream));
}

}  // namespace

void bind_norms(py::module_& m) {
  m.def("rms_norm_fwd", &rms_norm_fwd);
  m.def("rms_norm_bwd", &rms_norm_bwd);
  m.def("residual_rms_norm_fwd", &residual_rms_norm_fwd);
  m.def("residual_rms_norm_bwd", &residual_rms_norm_bwd);
  m.def("norm_bwd_num_partials", [](int dev_type, int rows, int64_t dim) {
    return zaya_rt::norm_bwd_num_partials(dev(dev_type, 0, 0), rows, dim);
  });
}
