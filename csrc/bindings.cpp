// The pybind11 module zaya_rt._C. Tensors arrive as raw addresses (Python ints), dtype codes,
// sizes and strides; python/zaya_rt/ops/ builds these calls from torch tensors.
#include <pybind11/pybind11.h>

#include "bindings_args.h"

#include <cstdint>

#include "cpu/isa_kernels.h"
#include "dispatch.h"

namespace py = pybind11;

void bind_attention(py::module_& m);  // csrc/bindings_attention.cpp
using zaya_rt::Device;
using zaya_rt::DeviceType;
using zaya_rt::DType;

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

void bind_cca(py::module_& m);
void bind_runtime(pybind11::module_& m);

PYBIND11_MODULE(_C, m) {
  bind_runtime(m);
  m.doc() = "zaya_rt native kernels (CPU, and CUDA or HIP when built with them)";
  m.attr("gpu_backend") = zaya_rt::gpu_backend_name();
  m.def("cpu_isa", [] { return zaya_rt::cpu::isa_name(zaya_rt::cpu::active_isa()); },
        "The CPU kernel build in use: 'avx512', 'avx2' or 'base'.");
  m.def("set_cpu_isa",
        [](const std::string& name) {
          using zaya_rt::cpu::Isa;
          Isa isa = name == "avx512" ? Isa::kAvx512 : name == "avx2" ? Isa::kAvx2 : Isa::kBase;
          if (name != "avx512" && name != "avx2" && name != "base")
            throw std::invalid_argument("zaya_rt.set_cpu_isa: expected 'avx512', 'avx2' or 'base', got '" + name + "'");
          return zaya_rt::cpu::isa_name(zaya_rt::cpu::set_max_isa(isa));
        },
        "Caps the CPU kernel build (never above what the CPU supports); returns the one now in use.");
  m.def("set_cpu_bf16_dot", [](int mode) { zaya_rt::cpu::set_bf16_dot_override(mode); },
        "bf16 CPU GEMMs: -1 = measure and take the faster of vdpbf16ps and fp32 FMAs (default), 0 = fp32 FMAs, "
        "1 = vdpbf16ps where the CPU has it.");
  m.def("cpu_bf16_dot", [] { return zaya_rt::cpu::bf16_dot_override(); });
  m.def("rms_norm_fwd", &rms_norm_fwd);
  m.def("rms_norm_bwd", &rms_norm_bwd);
  m.def("residual_rms_norm_fwd", &residual_rms_norm_fwd);
  m.def("residual_rms_norm_bwd", &residual_rms_norm_bwd);
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
  bind_cca(m);
  m.def("zaya_router", &zaya_router);
  m.def("zaya_router_workspace", &zaya_rt::zaya_router_workspace);
  m.def("norm_bwd_num_partials", [](int dev_type, int rows, int64_t dim) {
    return zaya_rt::norm_bwd_num_partials(dev(dev_type, 0, 0), rows, dim);
  });
  void bind_moe_gpu(py::module_&); bind_moe_gpu(m);  // csrc/bindings_moe_gpu.cpp
  bind_attention(m);
  void bind_packed_linear(py::module_&); bind_packed_linear(m);  // csrc/bindings_packed_linear.cpp
  void bind_attention_gpu(py::module_&); bind_attention_gpu(m);  // csrc/bindings_attention_gpu.cpp
  void bind_newton_schulz(py::module_&); bind_newton_schulz(m);  // csrc/bindings_newton_schulz.cpp
}
