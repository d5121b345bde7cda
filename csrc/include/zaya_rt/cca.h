// CCA prep (SPEC section 3, steps 2-4): from the q/k/v projections of packed variable-length sequences to
// attention-ready q, k, v, with the conv and value-shift state carried between chunks.
//
// Legend: T packed tokens of B sequences (sequence b owns tokens cu_seqlens[b] .. cu_seqlens[b+1]-1),
// Hq/Hk query/key heads, G = Hq / Hk (query heads per kv head), d head dim, C = (Hq + Hk) * d conv channels
// (channel c < Hq*d is qp[:, c], the rest kp[:, c - Hq*d]), V = Hk * d / 2, K = (k0 - 1) + (k1 - 1) state
// columns, rd rotary dims (even, 0 < rd <= d). Strides are in elements; the innermost dimension of every
// tensor has unit stride.
//
// Per sequence, X = [state_in columns (K, oldest first), then the sequence's [qp, kp] rows]; with
// p = position within the sequence (the state columns sit at p = -K .. -1):
//   A[p, c]    = conv0_b[c] + sum_{s<k0} conv0_w[c, s] X[p - (k0-1) + s, c]                    (depthwise)
//   Y[t, c]    = conv1_b[c] + sum_{j<d, s<k1} conv1_w[c, j, s] A[t - (k1-1) + s, head(c)*d + j]  (grouped)
//   qpre[t, h] = Y_q[t, h] + (qp[t, h] + kp[t, h / G]) / 2
//   kpre[t, g] = Y_k[t, g] + (mean_{h in group g} qp[t, h] + kp[t, g]) / 2
//   q = rope(qpre * sqrt(d) / max(|qpre|, norm_eps)),  k = rope(kpre * sqrt(d) / max(|kpre|, norm_eps) * temp[g])
//   rope: for i < rd/2, angle = float(positions[t]) * inv_freq[i] (fp32), x1 = x[i], x2 = x[i + rd/2]:
//         out[i] = x1 cos - x2 sin, out[i + rd/2] = x2 cos + x1 sin; channels >= rd pass through.
//   v[t] (viewed flat as [Hk * d]) = concat(v_cur[t], v_del[t - 1]) with v_del[-1] = v_state_in[b]
//   conv_state_out[b] = the last K columns of X; v_state_out[b] = v_del[last token] (v_state_in if empty).
// A missing conv_state_in / v_state_in (null) means zeros. Everything is computed in fp32; outputs are
// rounded once to their dtype. Outputs must not alias inputs.
#pragma once
#include "zaya_rt/common.h"

namespace zaya_rt {

struct CcaPrepFwdParams {
  // Activations, in `dtype` (f32/f16/bf16): [T, width] rows, unit inner stride.
  const void* qp; int64_t qp_row_stride;        // [T, Hq*d]
  const void* kp; int64_t kp_row_stride;        // [T, Hk*d]
  const void* v_cur; int64_t v_cur_row_stride;  // [T, V]
  const void* v_del; int64_t v_del_row_stride;  // [T, V]
  DType dtype;
  // Parameters, in `w_dtype` (dtype or float32), contiguous.
  const void* conv0_w;  // [C, 1, k0]
  const void* conv0_b;  // [C]
  const void* conv1_w;  // [C, d, k1]
  const void* conv1_b;  // [C]
  const void* temp;     // [Hk]
  DType w_dtype;
  // State in `state_dtype` (dtype or float32); null = zeros.
  const void* conv_state_in; int64_t cs_in_batch_stride, cs_in_channel_stride;  // [B, C, K]
  const void* v_state_in; int64_t vs_in_batch_stride;                           // [B, V]
  DType state_dtype;
  const void* positions; DType pos_dtype;  // [T] int32/int64
  const int32_t* cu_seqlens;               // [B + 1], cu_seqlens[0] = 0, non-decreasing, cu_seqlens[B] = T
  const float* inv_freq;                   // [rd / 2]
  // Outputs.
  void* q; int64_t q_row_stride, q_head_stride;  // [T, Hq, d] in dtype
  void* k; int64_t k_row_stride, k_head_stride;  // [T, Hk, d] in dtype
  void* v; int64_t v_row_stride;                 // [T, Hk*d] in dtype (flat as above)
  void* conv_state_out; int64_t cs_out_batch_stride, cs_out_channel_stride;  // [B, C, K] in state_dtype
  void* v_state_out; int64_t vs_out_batch_stride;                           // [B, V] in state_dtype
  int64_t T, B, Hq, Hk, d, k0, k1, rd;
  float norm_eps;
  void* workspace; int64_t workspace_bytes;
};

// Gradients of the forward above. Output gradients may be null (= zero). Input gradients come back in
// their input's dtype; parameter gradients in fp32 (the caller casts).
struct CcaPrepBwdParams {
  const void* grad_q; int64_t gq_row_stride, gq_head_stride;  // [T, Hq, d] dtype
  const void* grad_k; int64_t gk_row_stride, gk_head_stride;  // [T, Hk, d] dtype
  const void* grad_v; int64_t gv_row_stride;                  // [T, Hk*d] dtype
  const void* grad_conv_state_out; int64_t gcs_batch_stride, gcs_channel_stride;  // [B, C, K] state_dtype
  const void* grad_v_state_out; int64_t gvs_batch_stride;                         // [B, V] state_dtype
  // Forward inputs (v_cur / v_del are not needed).
  const void* qp; int64_t qp_row_stride;
  const void* kp; int64_t kp_row_stride;
  DType dtype;
  const void* conv0_w; const void* conv0_b; const void* conv1_w; const void* conv1_b; const void* temp;
  DType w_dtype;
  const void* conv_state_in; int64_t cs_in_batch_stride, cs_in_channel_stride;  // null = zeros
  DType state_dtype;
  const void* positions; DType pos_dtype;
  const int32_t* cu_seqlens;
  const float* inv_freq;
  // Input gradients.
  void* grad_qp; int64_t gqp_row_stride;       // [T, Hq*d] dtype
  void* grad_kp; int64_t gkp_row_stride;       // [T, Hk*d] dtype
  void* grad_v_cur; int64_t gvc_row_stride;    // [T, V] dtype
  void* grad_v_del; int64_t gvd_row_stride;    // [T, V] dtype
  void* grad_conv_state_in;                    // [B, C, K] contiguous, state_dtype
  void* grad_v_state_in;                       // [B, V] contiguous, state_dtype
  float* grad_conv0_w;                         // [C, k0]
  float* grad_conv0_b;                         // [C]
  float* grad_conv1_w;                         // [C, d, k1]
  float* grad_conv1_b;                         // [C]
  float* grad_temp;                            // [Hk]
  int64_t T, B, Hq, Hk, d, k0, k1, rd;
  float norm_eps;
  void* workspace; int64_t workspace_bytes;
};

namespace cpu {
const char* cca_prep_fwd(const CcaPrepFwdParams& p);
const char* cca_prep_bwd(const CcaPrepBwdParams& p);
// Workspace bytes for `threads` OpenMP threads (upper bounds).
int64_t cca_prep_fwd_workspace(int64_t T, int64_t B, int64_t Hq, int64_t Hk, int64_t d, int64_t k0, int64_t k1,
                               int64_t rd, int threads);
int64_t cca_prep_bwd_workspace(int64_t T, int64_t B, int64_t Hq, int64_t Hk, int64_t d, int64_t k0, int64_t k1,
                               int64_t rd, int threads);
}  // namespace cpu
namespace gpu {
const char* cca_prep_fwd(const CcaPrepFwdParams& p, void* stream);
const char* cca_prep_bwd(const CcaPrepBwdParams& p, void* stream);
int64_t cca_prep_fwd_workspace(int64_t T, int64_t B, int64_t Hq, int64_t Hk, int64_t d, int64_t k0, int64_t k1,
                               int64_t rd);
int64_t cca_prep_bwd_workspace(int64_t T, int64_t B, int64_t Hq, int64_t Hk, int64_t d, int64_t k0, int64_t k1,
                               int64_t rd);
}  // namespace gpu

}  // namespace zaya_rt
