// pybind11 functions of the GPU attention forward's kernel choice: _C.attention_varlen_path(...) and
// _C.sm90_attention (see csrc/include/zaya_rt/attention_gpu_path.h).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "zaya_rt/attention_gpu_path.h"

namespace py = pybind11;

void bind_attention_gpu(py::module_& m) {
  m.attr("sm90_attention") = zaya_rt::gpu::built_with_sm90_attention();
  m.def(
      "attention_varlen_path",
      [](uintptr_t q, int64_t q_ts, int64_t q_hs, uintptr_t k, int64_t k_ts, int64_t k_hs, uintptr_t v,
         int64_t v_ts, int64_t v_hs, int dtype, int64_t batch, int64_t tq, int64_t tk, int64_t hq, int64_t hk,
         int64_t d) {
        if (dtype < 0 || dtype > static_cast<int>(zaya_rt::DType::kFloat64))
          throw std::invalid_argument("zaya_rt.attention_varlen_path: bad dtype code");
        if (hq <= 0 || hk <= 0 || hq % hk != 0)
          throw std::invalid_argument("zaya_rt.attention_varlen_path: num_heads_q must be a multiple of num_heads_k");
        zaya_rt::AttnVarlenFwdParams p{};
        p.q = reinterpret_cast<const void*>(q), p.q_token_stride = q_ts, p.q_head_stride = q_hs;
        p.k = reinterpret_cast<const void*>(k), p.k_token_stride = k_ts, p.k_head_stride = k_hs;
        p.v = reinterpret_cast<const void*>(v), p.v_token_stride = v_ts, p.v_head_stride = v_hs;
        p.dtype = static_cast<zaya_rt::DType>(dtype);
        p.batch = batch, p.total_q = tq, p.total_k = tk, p.num_heads_q = hq, p.num_heads_k = hk, p.head_dim = d;
        const char* path = zaya_rt::gpu::attention_varlen_fwd_path(p);
        if (path == nullptr)
          throw std::invalid_argument("ZAYA_RT_CUDA_ATTENTION must be auto, sm90, wmma or simt");
        return std::string(path);
      },
      "The GPU kernel family ('sm90_wgmma', 'wmma', 'simt' or 'none') that attention_varlen's forward would take "
      "for these operands on the current CUDA device (addresses as ints, strides in elements, the dtype code of "
      "_C). Reads ZAYA_RT_CUDA_ATTENTION like the op.");
}
