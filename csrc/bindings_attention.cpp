// pybind11 functions of the attention family; python/zaya_rt/ops/attention.py builds these calls.
#include <pybind11/pybind11.h>

#include "bindings_args.h"

#include <cstdint>
#include <stdexcept>

#include "dispatch_attention.h"

namespace py = pybind11;
using zaya_rt::Device;
using zaya_rt::DeviceType;
using zaya_rt::DType;

namespace {

using namespace zaya_rt::bindings;

zaya_rt::AttnVarlenFwdParams varlen_sizes(int dtype, int64_t batch, int64_t tq, int64_t tk, int64_t hq, int64_t hk,
                                          int64_t d) {
  zaya_rt::AttnVarlenFwdParams p{};
  p.dtype = dt(dtype);
  p.batch = batch, p.total_q = tq, p.total_k = tk, p.num_heads_q = hq, p.num_heads_k = hk, p.head_dim = d;
  return p;
}

void varlen_fwd(Ptr q, int64_t q_ts, int64_t q_hs, Ptr k, int64_t k_ts, int64_t k_hs, Ptr v, int64_t v_ts,
                int64_t v_hs, Ptr cu_q, Ptr cu_k, Ptr out, int64_t out_ts, int64_t out_hs, Ptr lse, int64_t lse_hs,
                int dtype, int64_t batch, int64_t tq, int64_t tk, int64_t hq, int64_t hk, int64_t d, bool causal,
                int64_t window, double scale, Ptr ws, int64_t ws_bytes, int dev_type, int dev_index, Ptr stream) {
  zaya_rt::AttnVarlenFwdParams p{ptr(q), q_ts, q_hs, ptr(k), k_ts, k_hs, ptr(v), v_ts, v_hs,
                                 ptr<const int32_t>(cu_q), ptr<const int32_t>(cu_k), ptr(out), out_ts, out_hs,
                                 ptr<float>(lse), lse_hs, dt(dtype), batch, tq, tk, hq, hk, d, 0, 0, causal,
                                 window, static_cast<float>(scale), ptr(ws), ws_bytes};
  py::gil_scoped_release nogil;
  zaya_rt::attention_varlen_fwd(p, dev(dev_type, dev_index, stream));
}

void varlen_bwd(Ptr q, int64_t q_ts, int64_t q_hs, Ptr k, int64_t k_ts, int64_t k_hs, Ptr v, int64_t v_ts,
                int64_t v_hs, Ptr out, int64_t out_ts, int64_t out_hs, Ptr dout, int64_t dout_ts, int64_t dout_hs,
                Ptr lse, int64_t lse_hs, Ptr cu_q, Ptr cu_k, Ptr dq, int64_t dq_ts, int64_t dq_hs, Ptr dk,
                int64_t dk_ts, int64_t dk_hs, Ptr dv, int64_t dv_ts, int64_t dv_hs, int dtype, int64_t batch,
                int64_t tq, int64_t tk, int64_t hq, int64_t hk, int64_t d, bool causal, int64_t window, double scale,
                Ptr ws, int64_t ws_bytes, int dev_type, int dev_index, Ptr stream) {
  zaya_rt::AttnVarlenBwdParams p{ptr(q), q_ts, q_hs, ptr(k), k_ts, k_hs, ptr(v), v_ts, v_hs, ptr(out), out_ts,
                                 out_hs, ptr(dout), dout_ts, dout_hs, ptr<const float>(lse), lse_hs,
                                 ptr<const int32_t>(cu_q), ptr<const int32_t>(cu_k), ptr(dq), dq_ts, dq_hs, ptr(dk),
                                 dk_ts, dk_hs, ptr(dv), dv_ts, dv_hs, dt(dtype), batch, tq, tk, hq, hk, d, 0, 0,
                                 causal, window, static_cast<float>(scale), ptr(ws), ws_bytes};
  py::gil_scoped_release nogil;
  zaya_rt::attention_varlen_bwd(p, dev(dev_type, dev_index, stream));
}

void decode(Ptr q, int64_t q_bs, int64_t q_ts, int64_t q_hs, Ptr kc, int64_t k_ps, int64_t k_ss, int64_t k_hs, Ptr vc,
            int64_t v_ps, int64_t v_ss, int64_t v_hs, Ptr block_table, int64_t bt_stride, Ptr seq_lens, Ptr out,
            int64_t o_bs, int64_t o_ts, int64_t o_hs, int dtype, int64_t batch, int64_t n, int64_t hq, int64_t hk,
            int64_t d, int64_t page_size, int64_t num_pages, int64_t max_pages, int64_t window, double scale,
            int64_t num_splits, Ptr ws, int64_t ws_bytes, int dev_type, int dev_index, Ptr stream) {
  zaya_rt::AttnPagedDecodeParams p{ptr(q), q_bs, q_ts, q_hs, ptr(kc), k_ps, k_ss, k_hs, ptr(vc), v_ps, v_ss, v_hs,
                                   ptr<const int32_t>(block_table), bt_stride, ptr<const int32_t>(seq_lens),
                                   ptr(out), o_bs, o_ts, o_hs, dt(dtype), batch, n, hq, hk, d, page_size, num_pages,
                                   max_pages, window, static_cast<float>(scale), num_splits, ptr(ws), ws_bytes};
  py::gil_scoped_release nogil;
  zaya_rt::attention_decode(p, dev(dev_type, dev_index, stream));
}

}  // namespace

void bind_attention(py::module_& m) {
  m.def("attention_varlen_fwd", &varlen_fwd);
  m.def("attention_varlen_bwd", &varlen_bwd);
  m.def("attention_decode", &decode);
  m.def("attention_varlen_fwd_workspace", [](int dev_type, int dtype, int64_t batch, int64_t tq, int64_t tk,
                                             int64_t hq, int64_t hk, int64_t d) {
    return zaya_rt::attention_varlen_fwd_workspace(varlen_sizes(dtype, batch, tq, tk, hq, hk, d), dev(dev_type, 0, 0));
  });
  m.def("attention_varlen_bwd_workspace", [](int dev_type, int dtype, int64_t batch, int64_t tq, int64_t tk,
                                             int64_t hq, int64_t hk, int64_t d) {
    const auto f = varlen_sizes(dtype, batch, tq, tk, hq, hk, d);
    zaya_rt::AttnVarlenBwdParams p{};
    p.dtype = f.dtype, p.batch = batch, p.total_q = tq, p.total_k = tk, p.num_heads_q = hq, p.num_heads_k = hk;
    p.head_dim = d;
    return zaya_rt::attention_varlen_bwd_workspace(p, dev(dev_type, 0, 0));
  });
  m.def("attention_decode_workspace", [](int dev_type, int dtype, int64_t batch, int64_t n, int64_t hq, int64_t hk,
                                         int64_t d, int64_t page_size, int64_t max_pages, int64_t num_splits) {
    zaya_rt::AttnPagedDecodeParams p{};
    p.dtype = dt(dtype), p.batch = batch, p.num_queries = n, p.num_heads_q = hq, p.num_heads_k = hk;
    p.head_dim = d, p.page_size = page_size, p.max_pages = max_pages, p.num_splits = num_splits;
    return zaya_rt::attention_decode_workspace(p, dev(dev_type, 0, 0));
  });
}
