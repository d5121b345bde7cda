// Attention family (SPEC section 4): variable-length packed prefill (forward + backward) and paged decode.
// Legend: B sequences, Tq / Tk packed query / key tokens, Hq query heads, Hk kv heads (Hq % Hk == 0, the GQA
// group is G = Hq / Hk; query head h reads kv head h / G), d head dim. q/k/v/out and all gradients share one
// dtype (f32/f16/bf16); scores, softmax statistics and accumulators are fp32. Every tensor has unit stride
// along d; the other strides are in elements and arbitrary.
//
// Masking (both ops): query i of sequence b, with Lq_b queries and Lk_b keys, sits at position
// pos = Lk_b - Lq_b + i (bottom-right aligned, flash-attention's convention) and may see key j when
// (!causal || j <= pos) && (window <= 0 || pos - j < window). `window` is the number of keys a query sees,
// itself included (transformers' sliding window: kv_idx > q_idx - sliding_window). A query that sees no key
// outputs 0 and has lse = -inf.
#pragma once
#include "zaya_rt/common.h"

namespace zaya_rt {

// out = softmax(scale * q k^T + mask) v per sequence and head; lse = log(sum exp(scale * q k^T)) (natural log,
// over the allowed keys) when lse != null.
struct AttnVarlenFwdParams {
  const void* q; int64_t q_token_stride, q_head_stride;   // [Tq, Hq, d]
  const void* k; int64_t k_token_stride, k_head_stride;   // [Tk, Hk, d]
  const void* v; int64_t v_token_stride, v_head_stride;   // [Tk, Hk, d]
  const int32_t* cu_seqlens_q;                            // [B + 1] on the tensors' device: 0, ..., Tq
  const int32_t* cu_seqlens_k;                            // [B + 1]: 0, ..., Tk
  void* out; int64_t out_token_stride, out_head_stride;   // [Tq, Hq, d]
  float* lse; int64_t lse_head_stride;                    // [Hq, Tq] fp32 (row h at lse + h * stride), or null
  DType dtype;
  int64_t batch, total_q, total_k, num_heads_q, num_heads_k, head_dim;
  // Host-side upper bounds of any sequence's lengths, for grid sizing; <= 0 means unknown (then total_q /
  // total_k bound them). Kernels must be correct with any value >= the true maxima or <= 0.
  int64_t max_seqlen_q, max_seqlen_k;
  bool causal;
  int64_t window;  // <= 0: no window
  float scale;
  void* workspace; int64_t workspace_bytes;  // attention_varlen_fwd_workspace bytes, caller-owned
};

// Gradients of AttnVarlenFwdParams' out given dout, recomputing the probabilities from the saved lse:
//   P = exp(scale * q k^T - lse), dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)),
//   dQ = scale * dS K, dK = scale * dS^T Q (dK, dV summed over the GQA group). Rows with lse = -inf give 0.
struct AttnVarlenBwdParams {
  const void* q; int64_t q_token_stride, q_head_stride;
  const void* k; int64_t k_token_stride, k_head_stride;
  const void* v; int64_t v_token_stride, v_head_stride;
  const void* out; int64_t out_token_stride, out_head_stride;    // forward output [Tq, Hq, d]
  const void* dout; int64_t dout_token_stride, dout_head_stride; // [Tq, Hq, d]
  const float* lse; int64_t lse_head_stride;                     // [Hq, Tq] from the forward
  const int32_t* cu_seqlens_q;
  const int32_t* cu_seqlens_k;
  void* dq; int64_t dq_token_stride, dq_head_stride;  // [Tq, Hq, d]
  void* dk; int64_t dk_token_stride, dk_head_stride;  // [Tk, Hk, d]
  void* dv; int64_t dv_token_stride, dv_head_stride;  // [Tk, Hk, d]
  DType dtype;
  int64_t batch, total_q, total_k, num_heads_q, num_heads_k, head_dim;
  int64_t max_seqlen_q, max_seqlen_k;  // as in AttnVarlenFwdParams
  bool causal;
  int64_t window;
  float scale;
  // attention_varlen_bwd_workspace bytes, caller-owned (e.g. rowsum(dO * O) [Hq, Tq] and fp32 dq partials).
  void* workspace; int64_t workspace_bytes;
};

// Decode against a paged KV cache (vLLM-style block table; FlashInfer's paged_kv_t with indices in rows):
// sequence b has seq_lens[b] tokens, token t of it lives in page block_table[b * block_table_stride +
// t / page_size], slot t % page_size. The n query tokens of sequence b are its LAST n positions
// (seq_lens[b] - n + i), causal among themselves, and their K/V are already in the cache. Nothing past
// seq_lens[b] is read. out [B, n, Hq, d]. A kernel may split each sequence's context into num_splits parts
// (partial out, max and sum per part in the workspace) and merge them with their log-sum-exps.
struct AttnPagedDecodeParams {
  const void* q; int64_t q_batch_stride, q_token_stride, q_head_stride;                  // [B, n, Hq, d]
  const void* k_cache; int64_t k_page_stride, k_slot_stride, k_head_stride;             // [P, page_size, Hk, d]
  const void* v_cache; int64_t v_page_stride, v_slot_stride, v_head_stride;             // [P, page_size, Hk, d]
  const int32_t* block_table; int64_t block_table_stride;                               // [B, max_pages]
  const int32_t* seq_lens;                                                              // [B]
  void* out; int64_t out_batch_stride, out_token_stride, out_head_stride;               // [B, n, Hq, d]
  DType dtype;
  int64_t batch, num_queries, num_heads_q, num_heads_k, head_dim;
  int64_t page_size;   // a power of two
  int64_t num_pages;   // P, pages in the cache (page ids must lie in [0, P))
  int64_t max_pages;   // block_table row length
  int64_t window;      // <= 0: no window
  float scale;
  int64_t num_splits;  // context splits per (sequence, kv head); <= 0: the backend chooses (the same choice in
                       // attention_decode_workspace and the kernel)
  void* workspace; int64_t workspace_bytes;  // attention_decode_workspace bytes, caller-owned
};

// Workspace bytes are computed from the params' host-side sizes only (pointers and device values unread):
// fill the struct, ask for the size, allocate, set workspace/workspace_bytes, then call the kernel.
namespace cpu {
const char* attention_varlen_fwd(const AttnVarlenFwdParams& p);
const char* attention_varlen_bwd(const AttnVarlenBwdParams& p);
const char* attention_decode(const AttnPagedDecodeParams& p);
int64_t attention_varlen_fwd_workspace(const AttnVarlenFwdParams& p);
int64_t attention_varlen_bwd_workspace(const AttnVarlenBwdParams& p);
int64_t attention_decode_workspace(const AttnPagedDecodeParams& p);
}  // namespace cpu

// Implemented by the GPU backend (a build without one links csrc/gpu_stubs.cpp; csrc/dispatch_common.h rejects
// GPU calls there with a clear error).
namespace gpu {
const char* attention_varlen_fwd(const AttnVarlenFwdParams& p, void* stream);
const char* attention_varlen_bwd(const AttnVarlenBwdParams& p, void* stream);
const char* attention_decode(const AttnPagedDecodeParams& p, void* stream);
int64_t attention_varlen_fwd_workspace(const AttnVarlenFwdParams& p);
int64_t attention_varlen_bwd_workspace(const AttnVarlenBwdParams& p);
int64_t attention_decode_workspace(const AttnPagedDecodeParams& p);
}  // namespace gpu

}  // namespace zaya_rt
