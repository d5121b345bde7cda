#include "dispatch.h"

#include <cmath>
#include <string>

#include "dispatch_common.h"

namespace zaya_rt {
using namespace dispatch;

bool attention_takes_head_dim(int64_t d) { return d >= 32 && d <= 256 && d % 8 == 0; }

namespace {

void check_heads(const char* op, int64_t hq, int64_t hk, int64_t d) {
  if (hq < 1 || hk < 1) bad(op, "need at least one query head and one kv head");
  if (hq % hk != 0)
    bad(op, "query heads (" + std::to_string(hq) + ") must be a multiple of kv heads (" + std::to_string(hk) + ")");
  if (!attention_takes_head_dim(d)) bad(op, "head_dim must be a multiple of 8 in [32, 256], got " + std::to_string(d));
}

void check_common(const char* op, DType t, float scale, int64_t window) {
  check_float_dtype(op, "q", t);
  if (!std::isfinite(scale)) bad(op, "scale must be finite");
  (void)window;
}

// cu_seqlens live on the tensors' device; only host-resident ones are read (no sync on GPU).
void check_cu_seqlens(const char* op, const char* name, const Device& d, const int32_t* cu, int64_t batch,
                      int64_t total) {
  if (d.type != DeviceType::kCpu) return;
  if (cu[0] != 0) bad(op, std::string(name) + "[0] must be 0, got " + std::to_string(cu[0]));
  for (int64_t b = 0; b < batch; ++b)
    if (cu[b + 1] < cu[b])
      bad(op, std::string(name) + " must be non-decreasing; " + name + "[" + std::to_string(b + 1) + "] = " +
                  std::to_string(cu[b + 1]) + " < " + std::to_string(cu[b]));
  if (cu[batch] != total)
    bad(op, std::string(name) + "[-1] must equal the token count " + std::to_string(total) + ", got " +
                std::to_string(cu[batch]));
}

template <typename P> void check_varlen(const char* op, const P& p, const Device& d) {
  check_common(op, p.dtype, p.scale, p.window);
  check_heads(op, p.num_heads_q, p.num_heads_k, p.head_dim);
  if (p.batch < 0 || p.total_q < 0 || p.total_k < 0) bad(op, "sizes must be non-negative");
  check_ptr(op, "cu_seqlens_q", p.cu_seqlens_q, true);
  check_ptr(op, "cu_seqlens_k", p.cu_seqlens_k, true);
  check_ptr(op, "q", p.q, p.total_q > 0);
  check_ptr(op, "k", p.k, p.total_k > 0);
  check_ptr(op, "v", p.v, p.total_k > 0);
  check_cu_seqlens(op, "cu_seqlens_q", d, p.cu_seqlens_q, p.batch, p.total_q);
  check_cu_seqlens(op, "cu_seqlens_k", d, p.cu_seqlens_k, p.batch, p.total_k);
  check_ptr(op, "workspace", p.workspace, true);
}

}  // namespace

void attention_varlen_fwd(const AttnVarlenFwdParams& p, const Device& d) {
  const char* op = "attention_varlen";
  check_varlen(op, p, d);
  check_ptr(op, "out", p.out, p.total_q > 0);
  if (p.total_q == 0) return;
  route(op, p, d, cpu::attention_varlen_fwd, gpu::attention_varlen_fwd);
}

void attention_varlen_bwd(const AttnVarlenBwdParams& p, const Device& d) {
  const char* op = "attention_varlen_backward";
  check_varlen(op, p, d);
  for (const void* q : {p.out, p.dout, static_cast<const void*>(p.lse), static_cast<const void*>(p.dq)})
    check_ptr(op, "out/dout/lse/dq", q, p.total_q > 0);
  check_ptr(op, "dk", p.dk, p.total_k > 0);
  check_ptr(op, "dv", p.dv, p.total_k > 0);
  if (p.total_q == 0 && p.total_k == 0) return;
  route(op, p, d, cpu::attention_varlen_bwd, gpu::attention_varlen_bwd);
}

void attention_decode(const AttnPagedDecodeParams& p, const Device& d) {
  const char* op = "attention_decode";
  check_common(op, p.dtype, p.scale, p.window);
  check_heads(op, p.num_heads_q, p.num_heads_k, p.head_dim);
  if (p.batch < 0) bad(op, "batch must be non-negative");
  if (p.num_queries < 1) bad(op, "need at least one query token per sequence");
  if (p.page_size < 1 || (p.page_size & (p.page_size - 1)) != 0)
    bad(op, "page_size must be a power of two, got " + std::to_string(p.page_size));
  if (p.num_pages < 1 && p.batch > 0) bad(op, "the cache has no pages");
  if (p.max_pages < 0) bad(op, "block_table must have non-negative width");
  if (p.batch == 0) return;
  for (const void* q : {p.q, p.k_cache, p.v_cache, static_cast<const void*>(p.seq_lens),
                        static_cast<const void*>(p.out), static_cast<const void*>(p.workspace)})
    check_ptr(op, "q/k_cache/v_cache/seq_lens/out/workspace", q, true);
  // A zero-width block table holds no page: every row must then be inactive (seq_lens 0, checked below).
  check_ptr(op, "block_table", p.block_table, p.max_pages > 0);
  if (d.type == DeviceType::kCpu) {
    const int64_t capacity = p.max_pages * p.page_size;
    for (int64_t b = 0; b < p.batch; ++b) {
      const int64_t L = p.seq_lens[b];
      if (L != 0 && (L < p.num_queries || L > capacity))
        bad(op, "seq_lens[" + std::to_string(b) + "] = " + std::to_string(L) + " must be 0 (inactive) or in [" +
                    std::to_string(p.num_queries) + ", " + std::to_string(capacity) +
                    "] (query tokens .. block_table width x page_size)");
      const int32_t* row = p.block_table + b * p.block_table_stride;
      for (int64_t j = 0; j * p.page_size < L; ++j)
        if (row[j] < 0 || row[j] >= p.num_pages)
          bad(op, "block_table[" + std::to_string(b) + ", " + std::to_string(j) + "] = " + std::to_string(row[j]) +
                      " is not a page of the cache (0.." + std::to_string(p.num_pages - 1) + ")");
    }
  }
  route(op, p, d, cpu::attention_decode, gpu::attention_decode);
}

int64_t attention_varlen_fwd_workspace(const AttnVarlenFwdParams& p, const Device& d) {
  return d.type == DeviceType::kGpu ? gpu::attention_varlen_fwd_workspace(p) : cpu::attention_varlen_fwd_workspace(p);
}
int64_t attention_varlen_bwd_workspace(const AttnVarlenBwdParams& p, const Device& d) {
  return d.type == DeviceType::kGpu ? gpu::attention_varlen_bwd_workspace(p) : cpu::attention_varlen_bwd_workspace(p);
}
int64_t attention_decode_workspace(const AttnPagedDecodeParams& p, const Device& d) {
  return d.type == DeviceType::kGpu ? gpu::attention_decode_workspace(p) : cpu::attention_decode_workspace(p);
}

}  // namespace zaya_rt
