// The pybind11 module zaya_rt._C. Tensors arrive as raw addresses (Python ints), dtype codes,
// sizes and strides; python/zaya_rt/ops/ builds these calls from torch tensors. Each op family binds its
// functions in its own csrc/bindings_<family>.cpp.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "cpu/isa_kernels.h"
#include "dispatch_common.h"

namespace py = pybind11;

void bind_norms(py::module_& m);           // csrc/bindings_norms.cpp
void bind_moe(py::module_& m);             // csrc/bindings_moe.cpp
void bind_moe_gpu(py::module_& m);         // csrc/bindings_moe_gpu.cpp
void bind_router(py::module_& m);          // csrc/bindings_router.cpp
void bind_attention(py::module_& m);       // csrc/bindings_attention.cpp
void bind_attention_gpu(py::module_& m);   // csrc/bindings_attention_gpu.cpp
void bind_cca(py::module_& m);             // csrc/bindings_cca.cpp
void bind_runtime(py::module_& m);         // csrc/bindings_runtime.cpp
void bind_packed_linear(py::module_& m);   // csrc/bindings_packed_linear.cpp
void bind_newton_schulz(py::module_& m);   // csrc/bindings_newton_schulz.cpp
void bind_cross_entropy(py::module_& m);   // csrc/bindings_cross_entropy.cpp

PYBIND11_MODULE(_C, m) {
  bind_runtime(m);
  m.doc() = "zaya_rt native kernels (CPU, and CUDA or HIP when built with them)";
  m.attr("gpu_backend") = zaya_rt::dispatch::gpu_backend_name();
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
  m.def("cpu_bf16_gemm_rates",
        [] {
          const zaya_rt::cpu::Bf16GemmRates r = zaya_rt::cpu::bf16_gemm_rates();
          py::dict d;
          d["has_dot"] = r.has_dot;
          d["dot_chosen"] = r.dot_chosen;
          d["dot_gemm_gflops"] = r.dot_gemm;
          d["fma_gemm_gflops"] = r.fma_gemm;
          d["dot_peak_gflops"] = r.dot_peak;
          d["fma_peak_gflops"] = r.fma_peak;
          return d;
        },
        "The CPU bf16 GEMM path in use (dot_chosen: vdpbf16ps, else fp32 FMAs) and the one-thread GFLOP/s it was "
        "chosen by, measured once per process: a bf16 GEMM both ways and the register-only peak of each "
        "instruction (zeros where the CPU build has no vdpbf16ps).");
  bind_norms(m);
  bind_moe(m);
  bind_cca(m);
  bind_router(m);
  bind_moe_gpu(m);
  bind_attention(m);
  bind_packed_linear(m);
  bind_attention_gpu(m);
  bind_newton_schulz(m);
  bind_cross_entropy(m);
}
