// pybind11 bindings of the norms family: the four params structs of zaya_rt/norms.h by field name
// (csrc/bindings_params.h), their entry points, and norm_bwd_num_partials. python/zaya_rt/ops/norms.py fills them.
#include "bindings_params.h"

namespace {

using zaya_rt::bindings::ParamsClass;

// The fields ResidualRmsNormFwdParams and ResidualRmsNormBwdParams share.
template <typename P>
ParamsClass<P>& bind_residual_fields(ParamsClass<P>& c) {
  return c
      .ptr("y", &P::y).value("y_row_stride", &P::y_row_stride).dtype("y_dtype", &P::y_dtype)
      .ptr("h", &P::h).value("h_row_stride", &P::h_row_stride).dtype("h_dtype", &P::h_dtype)
      .ptr("y_bias", &P::y_bias).ptr("y_scale", &P::y_scale).ptr("h_bias", &P::h_bias)
      .ptr("h_scale", &P::h_scale).dtype("p_dtype", &P::p_dtype)
      .ptr("weight", &P::weight).dtype("w_dtype", &P::w_dtype)
      .ptr("r", &P::r).value("r_row_stride", &P::r_row_stride);
}

}  // namespace

void bind_norms(py::module_& m) {
  using namespace zaya_rt::bindings;
  {
    using P = zaya_rt::RmsNormFwdParams;
    ParamsClass<P>(m, "RmsNormFwdParams", "Arguments of rms_norm_fwd (zaya_rt/norms.h), by field name.")
        .ptr("x", &P::x).value("x_row_stride", &P::x_row_stride).dtype("x_dtype", &P::x_dtype)
        .ptr("weight", &P::weight).dtype("w_dtype", &P::w_dtype)
        .ptr("out", &P::out).value("out_row_stride", &P::out_row_stride)
        .ptr("rstd", &P::rstd)
        .value("rows", &P::rows).value("dim", &P::dim).value("eps", &P::eps);
    def_entry<P>(m, "rms_norm_fwd", &zaya_rt::rms_norm_fwd, "RMSNorm forward of x [rows, dim] into out and rstd.");
  }
  {
    using P = zaya_rt::RmsNormBwdParams;
    ParamsClass<P>(m, "RmsNormBwdParams", "Arguments of rms_norm_bwd (zaya_rt/norms.h), by field name.")
        .ptr("grad_out", &P::grad_out).value("grad_out_row_stride", &P::grad_out_row_stride)
        .ptr("x", &P::x).value("x_row_stride", &P::x_row_stride).dtype("x_dtype", &P::x_dtype)
        .ptr("weight", &P::weight).dtype("w_dtype", &P::w_dtype)
        .ptr("rstd", &P::rstd)
        .ptr("grad_x", &P::grad_x).value("grad_x_row_stride", &P::grad_x_row_stride)
        .ptr("partials", &P::partials).value("num_partials", &P::num_partials)
        .ptr("grad_weight", &P::grad_weight)
        .value("rows", &P::rows).value("dim", &P::dim);
    def_entry<P>(m, "rms_norm_bwd", &zaya_rt::rms_norm_bwd, "RMSNorm backward: grad_x and grad_weight.");
  }
  {
    using P = zaya_rt::ResidualRmsNormFwdParams;
    ParamsClass<P> c(m, "ResidualRmsNormFwdParams",
                     "Arguments of residual_rms_norm_fwd (zaya_rt/norms.h), by field name.");
    bind_residual_fields(c)
        .ptr("out", &P::out).value("out_row_stride", &P::out_row_stride)
        .ptr("rstd", &P::rstd)
        .value("rows", &P::rows).value("dim", &P::dim).value("eps", &P::eps);
    def_entry<P>(m, "residual_rms_norm_fwd", &zaya_rt::residual_rms_norm_fwd,
                 "Scaled residual sum r and its RMSNorm out, with rstd.");
  }
  {
    using P = zaya_rt::ResidualRmsNormBwdParams;
    ParamsClass<P> c(m, "ResidualRmsNormBwdParams",
                     "Arguments of residual_rms_norm_bwd (zaya_rt/norms.h), by field name.");
    bind_residual_fields(c)
        .ptr("grad_r", &P::grad_r).value("grad_r_row_stride", &P::grad_r_row_stride)
        .ptr("grad_out", &P::grad_out).value("grad_out_row_stride", &P::grad_out_row_stride)
        .ptr("rstd", &P::rstd)
        .ptr("grad_y", &P::grad_y).value("grad_y_row_stride", &P::grad_y_row_stride)
        .ptr("grad_h", &P::grad_h).value("grad_h_row_stride", &P::grad_h_row_stride)
        .ptr("partials", &P::partials).value("num_partials", &P::num_partials)
        .ptr("grad_params", &P::grad_params)
        .value("rows", &P::rows).value("dim", &P::dim);
    def_entry<P>(m, "residual_rms_norm_bwd", &zaya_rt::residual_rms_norm_bwd,
                 "Backward of residual_rms_norm_fwd: grad_y, grad_h and the parameter gradients.");
  }
  m.def("norm_bwd_num_partials", [](int dev_type, int64_t rows, int64_t dim) {
    return zaya_rt::norm_bwd_num_partials(dev(dev_type, 0, 0), rows, dim);
  }, "Rows of the fp32 partials buffer the norm backward kernels reduce their parameter gradients in.");
}
