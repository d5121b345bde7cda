// pybind11 bindings of the packed-weight linear layer (CPU): PackLinearParams and PackedLinearParams by field
// name (csrc/bindings_params.h). python/zaya_rt/ops/packed_linear.py fills them.
#include "bindings_params.h"

void bind_packed_linear(py::module_& m) {
  using namespace zaya_rt::bindings;
  {
    using P = zaya_rt::PackLinearParams;
    ParamsClass<P>(m, "PackLinearParams", "Arguments of pack_linear_weight (zaya_rt/packed_linear.h), by field name.")
        .ptr("weight", &P::weight).value("weight_row_stride", &P::weight_row_stride)
        .ptr("bias", &P::bias)
        .ptr("packed", &P::packed).value("packed_bytes", &P::packed_bytes)
        .dtype("dtype", &P::dtype).value("N", &P::N).value("K", &P::K);
    def_entry<P>(m, "pack_linear_weight", &zaya_rt::pack_linear_weight,
                 "Packs W [N, K] (+ bias [N]) into column panels for packed_linear (CPU).");
    def_size<P>(m, "packed_linear_bytes", &zaya_rt::packed_linear_bytes,
                "Bytes of the packed copy of the [N, K] weight (plus its fp32 bias).");
  }
  {
    using P = zaya_rt::PackedLinearParams;
    ParamsClass<P>(m, "PackedLinearParams", "Arguments of packed_linear (zaya_rt/packed_linear.h), by field name.")
        .ptr("x", &P::x).value("x_row_stride", &P::x_row_stride)
        .ptr("packed", &P::packed)
        .ptr("out", &P::out).value("out_row_stride", &P::out_row_stride)
        .dtype("dtype", &P::dtype).value("M", &P::M).value("N", &P::N).value("K", &P::K)
        .ptr("workspace", &P::workspace).value("workspace_bytes", &P::workspace_bytes);
    def_entry<P>(m, "packed_linear", &zaya_rt::packed_linear,
                 "out [M, N] = x [M, K] W^T + b over a packed weight (CPU).");
    def_size<P>(m, "packed_linear_workspace", &zaya_rt::packed_linear_workspace,
                "Workspace bytes packed_linear needs for M rows of K elements.");
  }
}
