// pybind11 bindings of the CCA prep family: CcaPrepFwdParams and CcaPrepBwdParams by field name
// (csrc/bindings_params.h), their entry points and workspace sizes. python/zaya_rt/ops/cca.py fills them.
#include "bindings_params.h"

namespace {

using zaya_rt::bindings::ParamsClass;

// The fields CcaPrepFwdParams and CcaPrepBwdParams share.
template <typename P>
ParamsClass<P>& bind_common_fields(ParamsClass<P>& c) {
  return c
      .ptr("qp", &P::qp).value("qp_row_stride", &P::qp_row_stride)
      .ptr("kp", &P::kp).value("kp_row_stride", &P::kp_row_stride)
      .dtype("dtype", &P::dtype)
      .ptr("conv0_w", &P::conv0_w).ptr("conv0_b", &P::conv0_b).ptr("conv1_w", &P::conv1_w)
      .ptr("conv1_b", &P::conv1_b).ptr("temp", &P::temp).dtype("w_dtype", &P::w_dtype)
      .ptr("conv_state_in", &P::conv_state_in).value("cs_in_batch_stride", &P::cs_in_batch_stride)
      .value("cs_in_channel_stride", &P::cs_in_channel_stride)
      .dtype("state_dtype", &P::state_dtype)
      .ptr("positions", &P::positions).dtype("pos_dtype", &P::pos_dtype)
      .ptr("cu_seqlens", &P::cu_seqlens).ptr("inv_freq", &P::inv_freq)
      .value("T", &P::T).value("B", &P::B).value("Hq", &P::Hq).value("Hk", &P::Hk).value("d", &P::d)
      .value("k0", &P::k0).value("k1", &P::k1).value("rd", &P::rd).value("norm_eps", &P::norm_eps)
      .ptr("workspace", &P::workspace).value("workspace_bytes", &P::workspace_bytes);
}

}  // namespace

void bind_cca(py::module_& m) {
  using namespace zaya_rt::bindings;
  {
    using P = zaya_rt::CcaPrepFwdParams;
    ParamsClass<P> c(m, "CcaPrepFwdParams", "Arguments of cca_prep_fwd (zaya_rt/cca.h), by field name.");
    bind_common_fields(c)
        .ptr("v_cur", &P::v_cur).value("v_cur_row_stride", &P::v_cur_row_stride)
        .ptr("v_del", &P::v_del).value("v_del_row_stride", &P::v_del_row_stride)
        .ptr("v_state_in", &P::v_state_in).value("vs_in_batch_stride", &P::vs_in_batch_stride)
        .ptr("q", &P::q).value("q_row_stride", &P::q_row_stride).value("q_head_stride", &P::q_head_stride)
        .ptr("k", &P::k).value("k_row_stride", &P::k_row_stride).value("k_head_stride", &P::k_head_stride)
        .ptr("v", &P::v).value("v_row_stride", &P::v_row_stride)
        .ptr("conv_state_out", &P::conv_state_out).value("cs_out_batch_stride", &P::cs_out_batch_stride)
        .value("cs_out_channel_stride", &P::cs_out_channel_stride)
        .ptr("v_state_out", &P::v_state_out).value("vs_out_batch_stride", &P::vs_out_batch_stride);
    def_entry<P>(m, "cca_prep_fwd", &zaya_rt::cca_prep_fwd, "CCA prep forward: q, k, v and the outgoing states.");
    def_size<P>(m, "cca_prep_fwd_workspace", &zaya_rt::cca_prep_fwd_workspace, "Workspace bytes of cca_prep_fwd.");
  }
  {
    using P = zaya_rt::CcaPrepBwdParams;
    ParamsClass<P> c(m, "CcaPrepBwdParams", "Arguments of cca_prep_bwd (zaya_rt/cca.h), by field name.");
    bind_common_fields(c)
        .ptr("grad_q", &P::grad_q).value("gq_row_stride", &P::gq_row_stride)
        .value("gq_head_stride", &P::gq_head_stride)
        .ptr("grad_k", &P::grad_k).value("gk_row_stride", &P::gk_row_stride)
        .value("gk_head_stride", &P::gk_head_stride)
        .ptr("grad_v", &P::grad_v).value("gv_row_stride", &P::gv_row_stride)
        .ptr("grad_conv_state_out", &P::grad_conv_state_out).value("gcs_batch_stride", &P::gcs_batch_stride)
        .value("gcs_channel_stride", &P::gcs_channel_stride)
        .ptr("grad_v_state_out", &P::grad_v_state_out).value("gvs_batch_stride", &P::gvs_batch_stride)
        .ptr("grad_qp", &P::grad_qp).value("gqp_row_stride", &P::gqp_row_stride)
        .ptr("grad_kp", &P::grad_kp).value("gkp_row_stride", &P::gkp_row_stride)
        .ptr("grad_v_cur", &P::grad_v_cur).value("gvc_row_stride", &P::gvc_row_stride)
        .ptr("grad_v_del", &P::grad_v_del).value("gvd_row_stride", &P::gvd_row_stride)
        .ptr("grad_conv_state_in", &P::grad_conv_state_in).ptr("grad_v_state_in", &P::grad_v_state_in)
        .ptr("grad_conv0_w", &P::grad_conv0_w).ptr("grad_conv0_b", &P::grad_conv0_b)
        .ptr("grad_conv1_w", &P::grad_conv1_w).ptr("grad_conv1_b", &P::grad_conv1_b)
        .ptr("grad_temp", &P::grad_temp);
    def_entry<P>(m, "cca_prep_bwd", &zaya_rt::cca_prep_bwd, "CCA prep backward: input and parameter gradients.");
    def_size<P>(m, "cca_prep_bwd_workspace", &zaya_rt::cca_prep_bwd_workspace, "Workspace bytes of cca_prep_bwd.");
  }
}
