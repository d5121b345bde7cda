// Tile shapes and workspace layout of the CPU attention kernels, shared by every ISA build so that the
// workspace sizes (csrc/cpu/attention_isa.cpp) are computed once.
#pragma once
#include <algorithm>
#include <cstdint>

#include "cpu/gemm_shape.h"

namespace zaya_rt::cpu {

constexpr int64_t kAttnBlockN = 64;       // keys per K/V block (two kGemmNR chunks)
constexpr int64_t kAttnRowsTarget = 96;   // query rows (queries x GQA heads) per prefill work item
constexpr int64_t kAttnAlign = 64;        // byte alignment of every workspace carve

inline int64_t attn_align(int64_t bytes) { return (bytes + kAttnAlign - 1) / kAttnAlign * kAttnAlign; }
inline int64_t attn_ceil(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Queries per prefill work item for a GQA group of g heads, and the rows (queries x heads) they make.
inline int64_t attn_block_q(int64_t group) { return std::max<int64_t>(1, kAttnRowsTarget / group); }
inline int64_t attn_item_rows(int64_t group) { return attn_block_q(group) * group; }
inline int64_t attn_d_chunks(int64_t d) { return attn_ceil(d, kGemmNR); }

// Upper bound on the K/V blocks of a packed batch: every sequence starts a block.
inline int64_t attn_num_blocks(int64_t total_k, int64_t batch) { return attn_ceil(total_k, kAttnBlockN) + batch; }

// Bytes of packed K^T ([d][32] per 32-key chunk) plus packed V ([64][32] per d-chunk) for all kv heads.
inline int64_t attn_packed_kv_bytes(int64_t total_k, int64_t batch, int64_t hk, int64_t d) {
  const int64_t blocks = attn_num_blocks(total_k, batch) * hk;
  const int64_t k_bytes = blocks * (kAttnBlockN / kGemmNR) * d * kGemmNR * kPackedEntryBytes;
  const int64_t v_bytes = blocks * attn_d_chunks(d) * kAttnBlockN * kGemmNR * kPackedEntryBytes;
  return attn_align(k_bytes) + attn_align(v_bytes);
}

// Per-thread scratch of the prefill forward: packed Q panels, the O accumulator, row statistics, one score
// tile and one packed P panel.
inline int64_t attn_fwd_thread_bytes(int64_t group, int64_t d) {
  const int64_t panels = attn_ceil(attn_item_rows(group), kGemmMR);
  const int64_t rows = panels * kGemmMR;
  return attn_align(rows * d * 4) + attn_align(rows * attn_d_chunks(d) * kGemmNR * 4) + 2 * attn_align(rows * 4) +
         attn_align(kGemmMR * kAttnBlockN * 4) + attn_align(kAttnBlockN * kGemmMR * 4);
}

// Backward. Global fp32 staging, each region written only by the work item (sequence, kv head) that owns it:
// per q head the item's query rows (Q, dO, the dQ accumulator: [rows][dp], rows padded to kAttnBwdStrip per
// sequence; lse and rowsum(dO * O) per row), per kv head its key blocks (K [64][dp], K^T and V^T [dp][64]).
// dp is d rounded up to the register tile's 32 columns. Per thread: the key block's dK and dV accumulators
// and one tile's scores and dP ([kAttnBwdTileRows][64]).
constexpr int64_t kAttnBwdStrip = 8;        // query rows per register tile
constexpr int64_t kAttnBwdTileRows = 64;    // query rows per (query tile, key block) step
inline int64_t attn_bwd_dp(int64_t d) { return attn_ceil(d, kGemmNR) * kGemmNR; }
inline int64_t attn_bwd_rows_cap(int64_t total_q, int64_t batch) { return total_q + (kAttnBwdStrip - 1) * batch; }
inline int64_t attn_bwd_shared_bytes(int64_t total_q, int64_t total_k, int64_t batch, int64_t hq, int64_t hk,
                                     int64_t d) {
  const int64_t rows = hq * attn_bwd_rows_cap(total_q, batch), dp = attn_bwd_dp(d);
  const int64_t keys = hk * attn_num_blocks(total_k, batch) * kAttnBlockN;
  return 3 * attn_align(4 * rows * dp) + 2 * attn_align(4 * rows) + 3 * attn_align(4 * keys * dp);
}
inline int64_t attn_bwd_thread_bytes(int64_t d) {
  const int64_t dp = attn_bwd_dp(d);
  return 2 * attn_align(4 * kAttnBlockN * dp) + 2 * attn_align(4 * kAttnBwdTileRows * kAttnBlockN) +
         attn_align(4 * kAttnBwdStrip * dp);
}
// Key-block ranges per (sequence, kv head) when there are fewer of those than about two per thread; each range
// past the first accumulates dQ in its own [hq][rows][dp] fp32 copy, summed at the end.
constexpr int64_t kAttnBwdMaxParts = 4;
inline int64_t attn_bwd_parts(int64_t batch, int64_t hk, int64_t threads) {
  const int64_t items = std::max<int64_t>(1, batch * hk);
  return threads < 2 ? 1 : std::clamp<int64_t>(attn_ceil(2 * threads, items), 1, kAttnBwdMaxParts);
}
inline int64_t attn_bwd_parts_bytes(int64_t total_q, int64_t batch, int64_t hq, int64_t d, int64_t parts) {
  return (parts - 1) * attn_align(4 * hq * attn_bwd_rows_cap(total_q, batch) * attn_bwd_dp(d));
}
inline int64_t attn_bwd_workspace_bytes(int64_t total_q, int64_t total_k, int64_t batch, int64_t hq, int64_t hk,
                                        int64_t d, int64_t threads) {
  return attn_bwd_shared_bytes(total_q, total_k, batch, hq, hk, d) +
         attn_bwd_parts_bytes(total_q, batch, hq, d, attn_bwd_parts(batch, hk, threads)) +
         threads * attn_bwd_thread_bytes(d);
}

// Decode: context splits per (sequence, kv head), at least kAttnDecodeMinSplitKeys keys each, enough work
// items to feed every thread a few times over.
constexpr int64_t kAttnDecodeMinSplitKeys = 512;
inline int64_t attn_decode_splits(int64_t batch, int64_t hk, int64_t max_context, int64_t requested,
                                  int64_t threads) {
  if (requested > 0) return requested;
  const int64_t want = attn_ceil(4 * threads, std::max<int64_t>(1, batch * hk));
  return std::max<int64_t>(1, std::min(want, attn_ceil(max_context, kAttnDecodeMinSplitKeys)));
}
// Partials (o [d], max, sum) per (sequence, query, head, split), then per thread the group's query rows in
// fp32, their scores for a chunk of keys, and the chunk's K and V rows in fp32 (the register tiles keep the
// chunk's K/V row addresses and one output row there instead).
constexpr int64_t kAttnDecodeChunk = 32;
inline int64_t attn_decode_partials_floats(int64_t batch, int64_t n, int64_t hq, int64_t d, int64_t splits) {
  return batch * n * hq * splits * (d + 2);
}
inline int64_t attn_decode_thread_bytes(int64_t rows, int64_t d) {
  return attn_align(4 * (rows * d + rows * kAttnDecodeChunk + 2 * kAttnDecodeChunk * d));
}
inline int64_t attn_decode_workspace_bytes(int64_t batch, int64_t n, int64_t hq, int64_t hk, int64_t d,
                                           int64_t splits, int64_t threads) {
  return attn_align(4 * attn_decode_partials_floats(batch, n, hq, d, splits)) +
         threads * attn_decode_thread_bytes(n * (hq / hk), d);
}

}  // namespace zaya_rt::cpu
