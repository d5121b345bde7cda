// pybind11 functions of the MoE family: _C.moe_dispatch, grouped_gemm(_weight_grad), moe_experts and their
// workspace sizes.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings_args.h"
#include "dispatch_moe.h"

namespace py = pybind11;

namespace {

using namespace zaya_rt::bindings;

void moe_dispatch(Ptr index, int index_dt, int64_t slots, int64_t experts, Ptr offsets, Ptr sorted_slots,
                  Ptr slot_rows, Ptr counts, int dev_type, int dev_index, Ptr stream) {
  zaya_rt::MoeDispatchParams p{ptr(index), dt(index_dt), slots, experts, ptr<int32_t>(offsets),
                               ptr<int32_t>(sorted_slots), ptr<int32_t>(slot_rows), ptr<int32_t>(counts)};
  py::gil_scoped_release nogil;
  zaya_rt::moe_dispatch(p, dev(dev_type, dev_index, stream));
}

void grouped_gemm(Ptr a, int64_t a_rs, int64_t a_cs, Ptr b, int64_t b_gs, int64_t b_rs, int64_t b_cs, Ptr offsets,
                  Ptr out, int64_t out_rs, int dtype, int64_t M, int64_t N, int64_t K, int64_t G, Ptr ws,
                  int64_t ws_bytes, int dev_type, int dev_index, Ptr stream) {
  zaya_rt::GroupedGemmParams p{ptr(a), a_rs, a_cs, ptr(b), b_gs, b_rs, b_cs, ptr<const int32_t>(offsets), ptr(out),
                               out_rs, dt(dtype), M, N, K, G, ptr(ws), ws_bytes};
  py::gil_scoped_release nogil;
  zaya_rt::grouped_gemm(p, dev(dev_type, dev_index, stream));
}

void grouped_gemm_weight_grad(Ptr dy, int64_t dy_rs, int64_t dy_cs, Ptr a, int64_t a_rs, int64_t a_cs, Ptr offsets,
                              Ptr grad_b, int64_t gb_gs, int64_t gb_rs, int dtype, int grad_dtype, int64_t M,
                              int64_t N, int64_t K, int64_t G, Ptr ws, int64_t ws_bytes, int dev_type,
                              int dev_index, Ptr stream) {
  zaya_rt::GroupedGemmWeightGradParams p{ptr(dy), dy_rs, dy_cs, ptr(a), a_rs, a_cs, ptr<const int32_t>(offsets),
                                         ptr(grad_b), gb_gs, gb_rs, dt(dtype), dt(grad_dtype), M, N, K, G,
                                         ptr(ws), ws_bytes};
  py::gil_scoped_release nogil;
  zaya_rt::grouped_gemm_weight_grad(p, dev(dev_type, dev_index, stream));
}

void moe_experts(Ptr hidden, int64_t hidden_rs, Ptr index, int index_dt, Ptr gate, int gate_dt, int64_t top_k,
                 Ptr gate_up, int64_t gu_es, int64_t gu_rs, Ptr down, int64_t dn_es, int64_t dn_rs, Ptr out,
                 int64_t out_rs, int dtype, int64_t T, int64_t D, int64_t I, int64_t E, Ptr ws, int64_t ws_bytes,
                 int dev_type, int dev_index, Ptr stream) {
  zaya_rt::MoeExpertsParams p{ptr(hidden), hidden_rs, ptr(index), dt(index_dt), ptr(gate), dt(gate_dt), top_k,
                              ptr(gate_up), gu_es, gu_rs, ptr(down), dn_es, dn_rs, ptr(out), out_rs, dt(dtype),
                              T, D, I, E, ptr(ws), ws_bytes};
  py::gil_scoped_release nogil;
  zaya_rt::moe_experts(p, dev(dev_type, dev_index, stream));
}

}  // namespace

void bind_moe(py::module_& m) {
  m.def("moe_dispatch", &moe_dispatch);
  m.def("grouped_gemm", &grouped_gemm);
  m.def("grouped_gemm_weight_grad", &grouped_gemm_weight_grad);
  m.def("moe_experts", &moe_experts);
  m.def("grouped_gemm_workspace", [](int dev_type, int64_t M, int64_t N, int64_t K, int64_t G, int dtype) {
    return zaya_rt::grouped_gemm_workspace(dev(dev_type, 0, 0), M, N, K, G, dt(dtype));
  });
  m.def("grouped_gemm_weight_grad_workspace", [](int dev_type, int64_t M, int64_t N, int64_t K, int64_t G, int dtype) {
    return zaya_rt::grouped_gemm_weight_grad_workspace(dev(dev_type, 0, 0), M, N, K, G, dt(dtype));
  });
  m.def("moe_experts_workspace",
        [](int dev_type, int64_t T, int64_t top_k, int64_t D, int64_t I, int64_t E, int dtype) {
          return zaya_rt::moe_experts_workspace(dev(dev_type, 0, 0), T, top_k, D, I, E, dt(dtype));
        });
}
