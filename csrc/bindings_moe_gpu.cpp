// pybind11 functions of the GPU grouped GEMM's kernel choice: _C.grouped_gemm_path(GroupedGemmParams) and
// _C.cutlass_sm90 (see csrc/include/zaya_rt/moe_gpu_path.h).
#include <pybind11/pybind11.h>

#include <string>

#include "zaya_rt/moe_gpu_path.h"

namespace py = pybind11;

void bind_moe_gpu(py::module_& m) {
  m.attr("cutlass_sm90") = zaya_rt::gpu::built_with_cutlass_sm90();
  m.def(
      "grouped_gemm_path",
      [](const zaya_rt::GroupedGemmParams& p) { return std::string(zaya_rt::gpu::grouped_gemm_path(p)); },
      py::arg("params"),
      "The GPU kernel family ('cutlass_sm90', 'wmma', 'simt' or 'none') that grouped_gemm would take for these "
      "GroupedGemmParams on the current CUDA device (offsets are not read).");
}
