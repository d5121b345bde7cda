// pybind11 functions of the packed-weight linear layer; python/zaya_rt/runtime/direct.py builds the calls.
#include <pybind11/pybind11.h>

#include "bindings_args.h"

#include <cstdint>

#include "dispatch_packed_linear.h"

namespace py = pybind11;

namespace {

using namespace zaya_rt::bindings;

void pack_linear_weight(Ptr weight, int64_t w_rs, Ptr bias, Ptr packed, int64_t packed_bytes, int dtype, int64_t N,
                        int64_t K) {
  zaya_rt::PackLinearParams p{ptr(weight), w_rs, ptr(bias), ptr(packed), packed_bytes, dt(dtype), N, K};
  py::gil_scoped_release nogil;
  zaya_rt::pack_linear_weight(p, zaya_rt::Device{});
}

void packed_linear(Ptr x, int64_t x_rs, Ptr packed, Ptr out, int64_t out_rs, int dtype, int64_t M, int64_t N,
                   int64_t K, Ptr ws, int64_t ws_bytes) {
  zaya_rt::PackedLinearParams p{ptr(x), x_rs, ptr(packed), ptr(out), out_rs, dt(dtype), M, N, K, ptr(ws), ws_bytes};
  py::gil_scoped_release nogil;
  zaya_rt::packed_linear(p, zaya_rt::Device{});
}

}  // namespace

void bind_packed_linear(py::module_& m) {
  m.def("pack_linear_weight", &pack_linear_weight,
        "Packs W [N, K] (+ bias [N]) into column panels for packed_linear (CPU; layout in zaya_rt/packed_linear.h).");
  m.def("packed_linear_bytes", [](int dtype, int64_t N, int64_t K) {
    return zaya_rt::packed_linear_bytes(dt(dtype), N, K);
  }, "Bytes of the packed copy of an [N, K] weight of the given dtype code (plus its fp32 bias).");
  m.def("packed_linear", &packed_linear, "out [M, N] = x [M, K] W^T + b over a packed weight (CPU).");
  m.def("packed_linear_workspace", &zaya_rt::packed_linear_workspace,
        "Workspace bytes packed_linear needs for M rows of K elements.");
}
