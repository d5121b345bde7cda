// pybind11 bindings of the router: RouterParams by field name (csrc/bindings_params.h), zaya_router and its
// workspace size. python/zaya_rt/ops/router.py fills it.
#include "bindings_params.h"

void bind_router(py::module_& m) {
  using namespace zaya_rt::bindings;
  using P = zaya_rt::RouterParams;
  ParamsClass<P>(m, "RouterParams", "Arguments of zaya_router (zaya_rt/router.h), by field name.")
      .ptr("x", &P::x).value("x_row_stride", &P::x_row_stride)
      .ptr("z_prev", &P::z_prev).value("z_prev_row_stride", &P::z_prev_row_stride)
      .dtype("z_prev_dtype", &P::z_prev_dtype)
      .ptr("down_w", &P::down_w).ptr("down_b", &P::down_b).ptr("eda_scale", &P::eda_scale)
      .ptr("norm_w", &P::norm_w).ptr("fc1_w", &P::fc1_w).ptr("fc1_b", &P::fc1_b).ptr("fc2_w", &P::fc2_w)
      .ptr("fc2_b", &P::fc2_b).ptr("out_w", &P::out_w).ptr("balancing_bias", &P::balancing_bias)
      .dtype("dtype", &P::dtype).value("eps", &P::eps)
      .ptr("logits", &P::logits).ptr("gate", &P::gate).ptr("choice", &P::choice).ptr("z", &P::z)
      .value("T", &P::T).value("D", &P::D).value("R", &P::R).value("C", &P::C)
      .ptr("workspace", &P::workspace).value("workspace_bytes", &P::workspace_bytes)
      .ptr("z0", &P::z0).value("z0_row_stride", &P::z0_row_stride);
  def_entry<P>(m, "zaya_router", &zaya_rt::zaya_router, "The ZAYA router of T tokens (zaya_rt/router.h).");
  def_size<P>(m, "zaya_router_workspace", &zaya_rt::zaya_router_workspace,
              "Workspace bytes of zaya_router for these sizes on this device type (0 on a GPU).");
}
