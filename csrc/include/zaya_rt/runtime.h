// Paged KV cache page operations and the fused token sampler (SPEC sections 4 "kv-tail" and "sampling", 5).
// Legend: P pages, S page size (tokens), H kv heads, d head dim, W = H * d elements per token row,
// N tokens written, B sequences, M block-table columns, V vocabulary.
// A page cache tensor is [P, S, H, d] with unit stride inside a token row; `page_stride` and `token_stride`
// (elements) locate row (page, slot). Slot ids are page * S + offset. Kernels are plain loops over independent
// rows: the GPU versions (cuda/runtime_kernels.cuh) map one row (or one page chunk, or one sampled row) to one
// thread block.
#pragma once
#include "zaya_rt/common.h"
#include "zaya_rt/sampling_uniform.h"  // sampling_uniform(seed, step), shared with the GPU kernels

namespace zaya_rt {

// k_cache/v_cache[slot_mapping[n]] = k_new/v_new[n] for n < N; slot -1 skips the row (padding).
struct KvWriteParams {
  const void* k_new; int64_t k_new_row_stride;   // [N, W]
  const void* v_new; int64_t v_new_row_stride;   // [N, W]
  void* k_cache; void* v_cache;                  // [P, S, W]
  int64_t page_stride, token_stride;             // of both caches
  const int32_t* slot_mapping;                   // [N]
  DType dtype;
  int64_t N, W, P, S;
};

// cache[l, dst[i]] = cache[l, src[i]] for every layer l (copy-on-write of shared pages).
struct CopyPagesParams {
  void* cache;                                   // [L, P, page_elems], contiguous pages
  int64_t layer_stride, page_stride, page_elems; // elements
  const int32_t* src; const int32_t* dst;        // [n] page ids
  DType dtype;
  int64_t L, P, n;
};

// out[b, j] = cache row of position seq_lens[b] - tau + j of sequence b (zeros where that position is < 0).
struct GatherTailParams {
  const void* cache; int64_t page_stride, token_stride;  // [P, S, W]
  const int32_t* block_table; int64_t block_table_stride;  // [B, M]
  const int32_t* seq_lens;                                  // [B]
  void* out;                                                // [B, tau, W] contiguous
  DType dtype;
  int64_t B, M, P, S, W, tau;
};

// Per-row sampling from logits [B, V]: temperature 0 = argmax (first maximum); otherwise softmax(l / t) with
// top-k (0 = off), then top-p over the top-k survivors (keep the smallest prefix of the descending order whose
// mass before the token is < top_p), then min-p (keep p >= min_p * p_max); the uniform of row b is
// sampling_uniform(seed[b], step[b]), inverted over the survivors in ascending token order.
struct SampleParams {
  const void* logits; int64_t row_stride;   // [B, V]
  DType dtype;
  const float* temperature; const int32_t* top_k; const float* top_p; const float* min_p;  // [B] each
  const int64_t* seed; const int64_t* step;                                               // [B] each
  int64_t* out;                                                                            // [B]
  int64_t B, V;
  void* workspace; int64_t workspace_bytes;  // sample_workspace(B, V) bytes (none when every row is greedy)
};

namespace cpu {
const char* kv_write(const KvWriteParams& p);
const char* copy_pages(const CopyPagesParams& p);
const char* gather_tail(const GatherTailParams& p);
const char* sample_tokens(const SampleParams& p);
int64_t sample_workspace(int64_t B, int64_t V);
}  // namespace cpu

// GPU kernels (cuda/runtime_kernels.cuh, built for CUDA and HIP): stream-ordered, no host synchronisation, so
// slot, page and sequence-length values are not range-checked; an out-of-range slot or page id makes the row a
// no-op (kv_write, copy_pages) or a zero row (gather_tail) instead of an error. The sampler writes -1 for a row
// whose logits hold NaN or have no finite maximum (the CPU raises). It needs no workspace.
namespace gpu {
const char* kv_write(const KvWriteParams& p, void* stream);
const char* copy_pages(const CopyPagesParams& p, void* stream);
const char* gather_tail(const GatherTailParams& p, void* stream);
const char* sample_tokens(const SampleParams& p, void* stream);
}  // namespace gpu

}  // namespace zaya_rt
