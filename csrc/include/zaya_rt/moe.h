// MoE family (SPEC section 4): dispatch, grouped GEMM (forward and weight gradient), fused experts.
// Layout legend: T tokens, k slots per token (top-k), E experts, G groups (= E), M grouped rows,
// D hidden, I expert width. Offsets are int32 cumulative group ends ([G]), the torch._grouped_mm
// convention. Element strides are in elements.
#pragma once
#include "zaya_rt/common.h"

namespace zaya_rt {

// Sorts the T*k token slots by expert. expert_index [T*k] (int32 or int64); a value outside [0, E)
// (E itself means "skip") sends the slot nowhere. Outputs: offsets [E] (cumulative ends of each expert's
// rows), sorted_slots [T*k] (slot ids, expert-major, stable; the tail past offsets[E-1] holds the skipped
// slots), slot_rows [T*k] (row of each slot in the sorted order, -1 for skipped).
struct MoeDispatchParams {
  const void* expert_index; DType index_dtype;
  int64_t num_slots;
  int64_t num_experts;
  int32_t* offsets;
  int32_t* sorted_slots;
  int32_t* slot_rows;
  int32_t* counts;  // workspace [E] (CPU) / [E] zero-initialised by the kernel (GPU)
};

// out[M, N] = a_g[M_g, K] @ b_g[N, K]^T for every group g (rows of a grouped by offsets).
// a, b, out share dtype. Rows past offsets[G-1] are written as zeros.
struct GroupedGemmParams {
  const void* a; int64_t a_row_stride, a_col_stride;
  const void* b; int64_t b_group_stride, b_row_stride, b_col_stride;
  const int32_t* offsets;
  void* out; int64_t out_row_stride;
  DType dtype;
  int64_t M, N, K, G;
  void* workspace; int64_t workspace_bytes;
};

// grad_b[g] ([N, K], fp32 or dtype) = dy_g[M_g, N]^T @ a_g[M_g, K]: the weight gradient of grouped_gemm.
struct GroupedGemmWeightGradParams {
  const void* dy; int64_t dy_row_stride, dy_col_stride;
  const void* a; int64_t a_row_stride, a_col_stride;
  const int32_t* offsets;
  void* grad_b; int64_t grad_b_group_stride, grad_b_row_stride;
  DType dtype;        // of dy and a
  DType grad_dtype;   // of grad_b
  int64_t M, N, K, G;
  void* workspace; int64_t workspace_bytes;
};

// y[t] = sum_j gate[t, j] * down_e(SiLU(gate_proj_e x_t) * up_proj_e x_t) with e = expert_index[t, j];
// slots whose index is outside [0, E) contribute nothing and cost nothing.
// gate_up [E, 2I, D] (gate rows first), down [E, D, I]; hidden/out [T, D]; all one dtype, gate any float.
struct MoeExpertsParams {
  const void* hidden; int64_t hidden_row_stride;
  const void* expert_index; DType index_dtype;
  const void* gate; DType gate_dtype; int64_t top_k;
  const void* gate_up; int64_t gate_up_expert_stride, gate_up_row_stride;
  const void* down; int64_t down_expert_stride, down_row_stride;
  void* out; int64_t out_row_stride;
  // Optional (all null or all set; CPU): what the backward reuses, as moe_dispatch and grouped_gemm give them:
  // offsets [E], sorted_slots and slot_rows [T * top_k] int32, and h [T * top_k, 2I] contiguous in dtype, the
  // gate-up products in dispatch order (rows of skipped slots zero).
  int32_t* keep_offsets; int32_t* keep_sorted_slots; int32_t* keep_slot_rows; void* keep_h;
  DType dtype;
  int64_t T, D, I, E;
  void* workspace; int64_t workspace_bytes;
};

// Gradients of moe_experts (CPU only) from its inputs, its dispatch (moe_dispatch's outputs, or those the
// kept-activation forward stored), the incoming gradient and optionally the kept gate-up products h. The
// SwiGLU backward and the gate's gradient run in the epilogue of the W2^T dout GEMM (fp32 tiles); token rows are
// gathered and scattered in place. A null output pointer means that gradient is not wanted.
struct MoeExpertsBackwardParams {
  const void* hidden; int64_t hidden_row_stride;        // [T, D], unit inner stride
  const void* grad_out; int64_t grad_out_row_stride;    // [T, D] in dtype, unit inner stride
  const void* gate; DType gate_dtype; int64_t top_k;     // [T * top_k] contiguous, any float dtype
  const void* gate_up; int64_t gate_up_expert_stride, gate_up_row_stride;
  const void* down; int64_t down_expert_stride, down_row_stride;
  const int32_t* offsets;       // [E] cumulative row ends
  const int32_t* sorted_slots;  // [T * top_k] slot of each row, skipped slots last
  const int32_t* slot_rows;     // [T * top_k] row of each slot, -1 when skipped
  const void* h;                // [T * top_k, 2I] contiguous in dtype (dispatch order), or null: recomputed
  void* grad_hidden; int64_t grad_hidden_row_stride;    // [T, D] in dtype, unit inner stride
  void* grad_gate;              // [T * top_k] in gate_dtype
  void* grad_gate_up;           // [E, 2I, D] contiguous in dtype
  void* grad_down;              // [E, D, I] contiguous in dtype
  DType dtype;
  int64_t T, D, I, E;
  void* workspace; int64_t workspace_bytes;
};

namespace cpu {
const char* moe_dispatch(const MoeDispatchParams& p);
const char* grouped_gemm(const GroupedGemmParams& p);
const char* grouped_gemm_weight_grad(const GroupedGemmWeightGradParams& p);
const char* moe_experts(const MoeExpertsParams& p);
const char* moe_experts_backward(const MoeExpertsBackwardParams& p);
// Workspace bytes the CPU kernels need (upper bounds, host-side sizes only).
int64_t grouped_gemm_workspace(int64_t M, int64_t N, int64_t K, int64_t G, DType dtype);
int64_t grouped_gemm_weight_grad_workspace(int64_t M, int64_t N, int64_t K, int64_t G, DType dtype);
int64_t moe_experts_workspace(int64_t T, int64_t top_k, int64_t D, int64_t I, int64_t E, DType dtype);
int64_t moe_experts_backward_workspace(int64_t T, int64_t top_k, int64_t D, int64_t I, int64_t E, DType dtype);
}  // namespace cpu

namespace gpu {
const char* moe_dispatch(const MoeDispatchParams& p, void* stream);
const char* grouped_gemm(const GroupedGemmParams& p, void* stream);
const char* grouped_gemm_weight_grad(const GroupedGemmWeightGradParams& p, void* stream);
const char* moe_experts(const MoeExpertsParams& p, void* stream);
int64_t grouped_gemm_workspace(int64_t M, int64_t N, int64_t K, int64_t G, DType dtype);
int64_t grouped_gemm_weight_grad_workspace(int64_t M, int64_t N, int64_t K, int64_t G, DType dtype);
int64_t moe_experts_workspace(int64_t T, int64_t top_k, int64_t D, int64_t I, int64_t E, DType dtype);
}  // namespace gpu

}  // namespace zaya_rt
