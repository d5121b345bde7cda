// pybind11 functions of the batched Newton-Schulz orthogonalisation; python/zaya_rt/ops/newton_schulz.py
// builds the calls.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings_args.h"
#include "dispatch_newton_schulz.h"

namespace py = pybind11;

namespace {

using namespace zaya_rt::bindings;

void newton_schulz(Ptr x, int64_t x_bs, int64_t x_rs, int64_t x_cs, Ptr out, int dtype, int64_t batch, int64_t rows,
                   int64_t cols, int64_t steps, double a, double b, double c, double eps, Ptr ws, int64_t ws_bytes,
                   int dev_type, int dev_index, Ptr stream) {
  zaya_rt::NewtonSchulzParams p{ptr(x), x_bs, x_rs, x_cs, ptr(out), dt(dtype), batch, rows, cols, steps,
                                static_cast<float>(a), static_cast<float>(b), static_cast<float>(c),
                                static_cast<float>(eps), ptr(ws), ws_bytes};
  const zaya_rt::Device d = dev(dev_type, dev_index, stream);
  py::gil_scoped_release nogil;
  zaya_rt::newton_schulz(p, d);
}

}  // namespace

void bind_newton_schulz(py::module_& m) {
  m.def("newton_schulz", &newton_schulz,
        "Batched Newton-Schulz orthogonalisation of x [batch, rows, cols] into out (zaya_rt/newton_schulz.h).");
  m.def("newton_schulz_workspace", [](int dev_type, int dtype, int64_t batch, int64_t rows, int64_t cols) {
    return zaya_rt::newton_schulz_workspace(dev(dev_type, 0, 0), dt(dtype), batch, rows, cols);
  }, "Workspace bytes of newton_schulz for this device type, compute dtype and shape.");
}
