// pybind11 functions of the GPU grouped GEMM's kernel choice: _C.grouped_gemm_path(...) and
// _C.cutlass_sm90 (see csrc/include/zaya_rt/moe_gpu_path.h).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "zaya_rt/moe_gpu_path.h"

namespace py = pybind11;

void bind_moe_gpu(py::module_& m) {
  m.attr("cutlass_sm90") = zaya_rt::gpu::built_with_cutlass_sm90();
  m.def(
      "grouped_gemm_path",
      [](uintptr_t a, int64_t a_rs, int64_t a_cs, uintptr_t b, int64_t b_gs, int64_t b_rs, int64_t b_cs,
         uintptr_t out, int64_t out_rs, int dtype, int64_t M, int64_t N, int64_t K, int64_t G, uintptr_t ws,
         int64_t ws_bytes) {
        if (dtype < 0 || dtype > static_cast<int>(zaya_rt::DType::kFloat64))
          throw std::invalid_argument("zaya_rt.grouped_gemm_path: bad dtype code");
        zaya_rt::GroupedGemmParams p{reinterpret_cast<const void*>(a), a_rs, a_cs, reinterpret_cast<const void*>(b),
                                     b_gs, b_rs, b_cs, nullptr, reinterpret_cast<void*>(out), out_rs,
                                     static_cast<zaya_rt::DType>(dtype), M, N, K, G, reinterpret_cast<void*>(ws),
                                     ws_bytes};
        return std::string(zaya_rt::gpu::grouped_gemm_path(p));
      },
      "The GPU kernel family ('cutlass_sm90', 'wmma', 'simt' or 'none') that grouped_gemm would take for these "
      "operands on the current CUDA device (addresses as ints, the _C.grouped_gemm arguments less offsets).");
}
