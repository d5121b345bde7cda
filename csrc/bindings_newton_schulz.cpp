// pybind11 bindings of the batched Newton-Schulz orthogonalisation: NewtonSchulzParams by field name
// (csrc/bindings_params.h); python/zaya_rt/ops/newton_schulz.py fills it.
#include "bindings_params.h"

void bind_newton_schulz(py::module_& m) {
  using namespace zaya_rt::bindings;
  using P = zaya_rt::NewtonSchulzParams;
  ParamsClass<P>(m, "NewtonSchulzParams", "Arguments of newton_schulz (zaya_rt/newton_schulz.h), by field name.")
      .ptr("x", &P::x).value("x_batch_stride", &P::x_batch_stride).value("x_row_stride", &P::x_row_stride)
      .value("x_col_stride", &P::x_col_stride)
      .ptr("out", &P::out)
      .dtype("dtype", &P::dtype)
      .value("batch", &P::batch).value("rows", &P::rows).value("cols", &P::cols).value("steps", &P::steps)
      .value("a", &P::a).value("b", &P::b).value("c", &P::c).value("eps", &P::eps)
      .ptr("workspace", &P::workspace).value("workspace_bytes", &P::workspace_bytes);
  def_entry<P>(m, "newton_schulz", &zaya_rt::newton_schulz,
               "Batched Newton-Schulz orthogonalisation of x [batch, rows, cols] into out (zaya_rt/newton_schulz.h).");
  def_size<P>(m, "newton_schulz_workspace", &zaya_rt::newton_schulz_workspace,
              "Workspace bytes of newton_schulz for this device type, compute dtype and shape.");
}
