// pybind11 bindings of the MoE family: MoeDispatchParams, GroupedGemmParams, GroupedGemmWeightGradParams and
// MoeExpertsParams by field name (csrc/bindings_params.h), their entry points and workspace sizes.
// python/zaya_rt/ops/moe.py fills them.
#include "bindings_params.h"

void bind_moe(py::module_& m) {
  using namespace zaya_rt::bindings;
  {
    using P = zaya_rt::MoeDispatchParams;
    ParamsClass<P>(m, "MoeDispatchParams", "Arguments of moe_dispatch (zaya_rt/moe.h), by field name.")
        .ptr("expert_index", &P::expert_index).dtype("index_dtype", &P::index_dtype)
        .value("num_slots", &P::num_slots).value("num_experts", &P::num_experts)
        .ptr("offsets", &P::offsets).ptr("sorted_slots", &P::sorted_slots).ptr("slot_rows", &P::slot_rows)
        .ptr("counts", &P::counts);
    def_entry<P>(m, "moe_dispatch", &zaya_rt::moe_dispatch, "Sorts the token slots by expert (zaya_rt/moe.h).");
  }
  {
    using P = zaya_rt::GroupedGemmParams;
    ParamsClass<P>(m, "GroupedGemmParams", "Arguments of grouped_gemm (zaya_rt/moe.h), by field name.")
        .ptr("a", &P::a).value("a_row_stride", &P::a_row_stride).value("a_col_stride", &P::a_col_stride)
        .ptr("b", &P::b).value("b_group_stride", &P::b_group_stride).value("b_row_stride", &P::b_row_stride)
        .value("b_col_stride", &P::b_col_stride)
        .ptr("offsets", &P::offsets)
        .ptr("out", &P::out).value("out_row_stride", &P::out_row_stride)
        .dtype("dtype", &P::dtype).value("M", &P::M).value("N", &P::N).value("K", &P::K).value("G", &P::G)
        .ptr("workspace", &P::workspace).value("workspace_bytes", &P::workspace_bytes);
    def_entry<P>(m, "grouped_gemm", &zaya_rt::grouped_gemm, "out [M, N] = a [M, K] b[g]^T per row group g.");
    def_size<P>(m, "grouped_gemm_workspace", &zaya_rt::grouped_gemm_workspace, "Workspace bytes of grouped_gemm.");
  }
  {
    using P = zaya_rt::GroupedGemmWeightGradParams;
    ParamsClass<P>(m, "GroupedGemmWeightGradParams",
                   "Arguments of grouped_gemm_weight_grad (zaya_rt/moe.h), by field name.")
        .ptr("dy", &P::dy).value("dy_row_stride", &P::dy_row_stride).value("dy_col_stride", &P::dy_col_stride)
        .ptr("a", &P::a).value("a_row_stride", &P::a_row_stride).value("a_col_stride", &P::a_col_stride)
        .ptr("offsets", &P::offsets)
        .ptr("grad_b", &P::grad_b).value("grad_b_group_stride", &P::grad_b_group_stride)
        .value("grad_b_row_stride", &P::grad_b_row_stride)
        .dtype("dtype", &P::dtype).dtype("grad_dtype", &P::grad_dtype)
        .value("M", &P::M).value("N", &P::N).value("K", &P::K).value("G", &P::G)
        .ptr("workspace", &P::workspace).value("workspace_bytes", &P::workspace_bytes);
    def_entry<P>(m, "grouped_gemm_weight_grad", &zaya_rt::grouped_gemm_weight_grad,
                 "grad_b[g] = dy_g^T a_g per row group g.");
    def_size<P>(m, "grouped_gemm_weight_grad_workspace", &zaya_rt::grouped_gemm_weight_grad_workspace,
                "Workspace bytes of grouped_gemm_weight_grad.");
  }
  {
    using P = zaya_rt::MoeExpertsParams;
    ParamsClass<P>(m, "MoeExpertsParams", "Arguments of moe_experts (zaya_rt/moe.h), by field name.")
        .ptr("hidden", &P::hidden).value("hidden_row_stride", &P::hidden_row_stride)
        .ptr("expert_index", &P::expert_index).dtype("index_dtype", &P::index_dtype)
        .ptr("gate", &P::gate).dtype("gate_dtype", &P::gate_dtype).value("top_k", &P::top_k)
        .ptr("gate_up", &P::gate_up).value("gate_up_expert_stride", &P::gate_up_expert_stride)
        .value("gate_up_row_stride", &P::gate_up_row_stride)
        .ptr("down", &P::down).value("down_expert_stride", &P::down_expert_stride)
        .value("down_row_stride", &P::down_row_stride)
        .ptr("out", &P::out).value("out_row_stride", &P::out_row_stride)
        .ptr("keep_offsets", &P::keep_offsets).ptr("keep_sorted_slots", &P::keep_sorted_slots)
        .ptr("keep_slot_rows", &P::keep_slot_rows).ptr("keep_h", &P::keep_h)
        .dtype("dtype", &P::dtype).value("T", &P::T).value("D", &P::D).value("I", &P::I).value("E", &P::E)
        .ptr("workspace", &P::workspace).value("workspace_bytes", &P::workspace_bytes);
    def_entry<P>(m, "moe_experts", &zaya_rt::moe_experts, "The fused SwiGLU experts of T tokens (zaya_rt/moe.h).");
    def_size<P>(m, "moe_experts_workspace", &zaya_rt::moe_experts_workspace, "Workspace bytes of moe_experts.");
  }
  {
    using P = zaya_rt::MoeExpertsBackwardParams;
    ParamsClass<P>(m, "MoeExpertsBackwardParams", "Arguments of moe_experts_backward (zaya_rt/moe.h), by field name.")
        .ptr("hidden", &P::hidden).value("hidden_row_stride", &P::hidden_row_stride)
        .ptr("grad_out", &P::grad_out).value("grad_out_row_stride", &P::grad_out_row_stride)
        .ptr("gate", &P::gate).dtype("gate_dtype", &P::gate_dtype).value("top_k", &P::top_k)
        .ptr("gate_up", &P::gate_up).value("gate_up_expert_stride", &P::gate_up_expert_stride)
        .value("gate_up_row_stride", &P::gate_up_row_stride)
        .ptr("down", &P::down).value("down_expert_stride", &P::down_expert_stride)
        .value("down_row_stride", &P::down_row_stride)
        .ptr("offsets", &P::offsets).ptr("sorted_slots", &P::sorted_slots).ptr("slot_rows", &P::slot_rows)
        .ptr("h", &P::h)
        .ptr("grad_hidden", &P::grad_hidden).value("grad_hidden_row_stride", &P::grad_hidden_row_stride)
        .ptr("grad_gate", &P::grad_gate).ptr("grad_gate_up", &P::grad_gate_up).ptr("grad_down", &P::grad_down)
        .dtype("dtype", &P::dtype).value("T", &P::T).value("D", &P::D).value("I", &P::I).value("E", &P::E)
        .ptr("workspace", &P::workspace).value("workspace_bytes", &P::workspace_bytes);
    def_entry<P>(m, "moe_experts_backward", &zaya_rt::moe_experts_backward,
                 "Gradients of the fused SwiGLU experts (CPU; zaya_rt/moe.h).");
    def_size<P>(m, "moe_experts_backward_workspace", &zaya_rt::moe_experts_backward_workspace,
                "Workspace bytes of moe_experts_backward.");
  }
}
