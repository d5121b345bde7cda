// pybind11 functions of the GPU attention forward's kernel choice: _C.attention_varlen_path(AttnVarlenFwdParams)
// and _C.sm90_attention (see csrc/include/zaya_rt/attention_gpu_path.h).
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "zaya_rt/attention_gpu_path.h"

namespace py = pybind11;

void bind_attention_gpu(py::module_& m) {
  m.attr("sm90_attention") = zaya_rt::gpu::built_with_sm90_attention();
  m.def(
      "attention_varlen_path",
      [](const zaya_rt::AttnVarlenFwdParams& p) {
        if (p.num_heads_q <= 0 || p.num_heads_k <= 0 || p.num_heads_q % p.num_heads_k != 0)
          throw std::invalid_argument("zaya_rt.attention_varlen_path: num_heads_q must be a multiple of num_heads_k");
        const char* path = zaya_rt::gpu::attention_varlen_fwd_path(p);
        if (path == nullptr) throw std::invalid_argument("ZAYA_RT_CUDA_ATTENTION must be auto, sm90, wmma or simt");
        return std::string(path);
      },
      py::arg("params"),
      "The GPU kernel family ('sm90_wgmma', 'wmma', 'simt' or 'none') that attention_varlen's forward would take "
      "for these AttnVarlenFwdParams on the current CUDA device. Reads ZAYA_RT_CUDA_ATTENTION like the op.");
}
