// pybind11 bindings of the attention family: AttnVarlenFwdParams, AttnVarlenBwdParams and AttnPagedDecodeParams
// by field name (csrc/bindings_params.h), their entry points and workspace sizes. python/zaya_rt/ops/attention.py
// fills them.
#include "bindings_params.h"

namespace {

using zaya_rt::bindings::ParamsClass;

// The fields AttnVarlenFwdParams and AttnVarlenBwdParams share.
template <typename P>
ParamsClass<P>& bind_varlen_fields(ParamsClass<P>& c) {
  return c.ptr("q", &P::q).value("q_token_stride", &P::q_token_stride).value("q_head_stride", &P::q_head_stride)
      .ptr("k", &P::k).value("k_token_stride", &P::k_token_stride).value("k_head_stride", &P::k_head_stride)
      .ptr("v", &P::v).value("v_token_stride", &P::v_token_stride).value("v_head_stride", &P::v_head_stride)
      .ptr("cu_seqlens_q", &P::cu_seqlens_q).ptr("cu_seqlens_k", &P::cu_seqlens_k)
      .dtype("dtype", &P::dtype).value("batch", &P::batch).value("total_q", &P::total_q)
      .value("total_k", &P::total_k).value("num_heads_q", &P::num_heads_q).value("num_heads_k", &P::num_heads_k)
      .value("head_dim", &P::head_dim).value("max_seqlen_q", &P::max_seqlen_q)
      .value("max_seqlen_k", &P::max_seqlen_k).value("causal", &P::causal).value("window", &P::window)
      .value("scale", &P::scale)
      .ptr("workspace", &P::workspace).value("workspace_bytes", &P::workspace_bytes);
}

}  // namespace

void bind_attention(py::module_& m) {
  using namespace zaya_rt::bindings;
  m.def("attention_takes_head_dim", &zaya_rt::attention_takes_head_dim, py::arg("head_dim"),
        "True when the attention kernels take this head dim (a multiple of 8 in [32, 256]).");
  {
    using P = zaya_rt::AttnVarlenFwdParams;
    ParamsClass<P> c(m, "AttnVarlenFwdParams",
                     "Arguments of attention_varlen_fwd (zaya_rt/attention.h), by field name.");
    bind_varlen_fields(c)
        .ptr("out", &P::out).value("out_token_stride", &P::out_token_stride)
        .value("out_head_stride", &P::out_head_stride)
        .ptr("lse", &P::lse).value("lse_head_stride", &P::lse_head_stride);
    def_entry<P>(m, "attention_varlen_fwd", &zaya_rt::attention_varlen_fwd,
                 "Variable-length attention forward: out and lse (zaya_rt/attention.h).");
    def_size<P>(m, "attention_varlen_fwd_workspace", &zaya_rt::attention_varlen_fwd_workspace,
                "Workspace bytes of attention_varlen_fwd.");
  }
  {
    using P = zaya_rt::AttnVarlenBwdParams;
    ParamsClass<P> c(m, "AttnVarlenBwdParams",
                     "Arguments of attention_varlen_bwd (zaya_rt/attention.h), by field name.");
    bind_varlen_fields(c)
        .ptr("out", &P::out).value("out_token_stride", &P::out_token_stride)
        .value("out_head_stride", &P::out_head_stride)
        .ptr("dout", &P::dout).value("dout_token_stride", &P::dout_token_stride)
        .value("dout_head_stride", &P::dout_head_stride)
        .ptr("lse", &P::lse).value("lse_head_stride", &P::lse_head_stride)
        .ptr("dq", &P::dq).value("dq_token_stride", &P::dq_token_stride).value("dq_head_stride", &P::dq_head_stride)
        .ptr("dk", &P::dk).value("dk_token_stride", &P::dk_token_stride).value("dk_head_stride", &P::dk_head_stride)
        .ptr("dv", &P::dv).value("dv_token_stride", &P::dv_token_stride).value("dv_head_stride", &P::dv_head_stride);
    def_entry<P>(m, "attention_varlen_bwd", &zaya_rt::attention_varlen_bwd,
                 "Variable-length attention backward: dq, dk, dv (zaya_rt/attention.h).");
    def_size<P>(m, "attention_varlen_bwd_workspace", &zaya_rt::attention_varlen_bwd_workspace,
                "Workspace bytes of attention_varlen_bwd.");
  }
  {
    using P = zaya_rt::AttnPagedDecodeParams;
    ParamsClass<P>(m, "AttnPagedDecodeParams", "Arguments of attention_decode (zaya_rt/attention.h), by field name.")
        .ptr("q", &P::q).value("q_batch_stride", &P::q_batch_stride).value("q_token_stride", &P::q_token_stride)
        .value("q_head_stride", &P::q_head_stride)
        .ptr("k_cache", &P::k_cache).value("k_page_stride", &P::k_page_stride)
        .value("k_slot_stride", &P::k_slot_stride).value("k_head_stride", &P::k_head_stride)
        .ptr("v_cache", &P::v_cache).value("v_page_stride", &P::v_page_stride)
        .value("v_slot_stride", &P::v_slot_stride).value("v_head_stride", &P::v_head_stride)
        .ptr("block_table", &P::block_table).value("block_table_stride", &P::block_table_stride)
        .ptr("seq_lens", &P::seq_lens)
        .ptr("out", &P::out).value("out_batch_stride", &P::out_batch_stride)
        .value("out_token_stride", &P::out_token_stride).value("out_head_stride", &P::out_head_stride)
        .dtype("dtype", &P::dtype).value("batch", &P::batch).value("num_queries", &P::num_queries)
        .value("num_heads_q", &P::num_heads_q).value("num_heads_k", &P::num_heads_k)
        .value("head_dim", &P::head_dim).value("page_size", &P::page_size).value("num_pages", &P::num_pages)
        .value("max_pages", &P::max_pages).value("window", &P::window).value("scale", &P::scale)
        .value("num_splits", &P::num_splits)
        .ptr("workspace", &P::workspace).value("workspace_bytes", &P::workspace_bytes);
    def_entry<P>(m, "attention_decode", &zaya_rt::attention_decode,
                 "Attention of n query tokens per sequence against a paged KV cache (zaya_rt/attention.h).");
    def_size<P>(m, "attention_decode_workspace", &zaya_rt::attention_decode_workspace,
                "Workspace bytes of attention_decode.");
  }
}
