// pybind11 functions of the router: _C.zaya_router and zaya_router_workspace.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings_args.h"
#include "dispatch_router.h"

namespace py = pybind11;

namespace {

using namespace zaya_rt::bindings;

void zaya_router(Ptr x, int64_t x_rs, Ptr z_prev, int64_t zp_rs, int zp_dt, Ptr down_w, Ptr down_b, Ptr eda,
                 Ptr norm_w, Ptr fc1_w, Ptr fc1_b, Ptr fc2_w, Ptr fc2_b, Ptr out_w, Ptr bias, int dtype, double eps,
                 Ptr logits, Ptr gate, Ptr choice, Ptr z, int64_t T, int64_t D, int64_t R, int64_t C, Ptr ws,
                 int64_t ws_bytes, Ptr z0, int64_t z0_rs, int dev_type, int dev_index, Ptr stream) {
  zaya_rt::RouterParams p{ptr(x), x_rs, ptr(z_prev), zp_rs, dt(zp_dt), ptr(down_w), ptr(down_b), ptr(eda),
                          ptr(norm_w), ptr(fc1_w), ptr(fc1_b), ptr(fc2_w), ptr(fc2_b), ptr(out_w),
                          ptr<const float>(bias), dt(dtype), static_cast<float>(eps), ptr<float>(logits),
                          ptr<float>(gate), ptr<int64_t>(choice), ptr<float>(z), T, D, R, C, ptr(ws), ws_bytes,
                          ptr(z0), z0_rs};
  py::gil_scoped_release nogil;
  zaya_rt::zaya_router(p, dev(dev_type, dev_index, stream));
}

}  // namespace

void bind_router(py::module_& m) {
  m.def("zaya_router", &zaya_router);
  m.def("zaya_router_workspace", &zaya_rt::zaya_router_workspace);
}
