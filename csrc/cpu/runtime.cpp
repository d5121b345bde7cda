// CPU page operations of the paged KV cache: write new token rows, copy pages (copy-on-write), gather the
// last tau rows of sequences. Pure data movement: rows are memcpy'd, rows are independent (OpenMP over rows).
#include <omp.h>

#include <cstring>

#include "zaya_rt/runtime.h"

namespace zaya_rt::cpu {
namespace {

int64_t element_bytes(DType t) {
  switch (t) {
    case DType::kFloat32: case DType::kInt32: return 4;
    case DType::kFloat16: case DType::kBFloat16: return 2;
    case DType::kFloat64: case DType::kInt64: return 8;
  }
  return 0;
}

}  // namespace

const char* kv_write(const KvWriteParams& p) {
  const int64_t eb = element_bytes(p.dtype), row_bytes = p.W * eb;
  const char* k_new = static_cast<const char*>(p.k_new);
  const char* v_new = static_cast<const char*>(p.v_new);
  char* k_cache = static_cast<char*>(p.k_cache);
  char* v_cache = static_cast<char*>(p.v_cache);
  bool bad_slot = false;
#pragma omp parallel for schedule(static) if (p.N * row_bytes > (1 << 16)) reduction(|| : bad_slot)
  for (int64_t n = 0; n < p.N; ++n) {
    const int64_t slot = p.slot_mapping[n];
    if (slot < 0) continue;
    const int64_t page = slot / p.S, offset = slot % p.S;
    if (page >= p.P) { bad_slot = true; continue; }
    const int64_t at = (page * p.page_stride + offset * p.token_stride) * eb;
    std::memcpy(k_cache + at, k_new + n * p.k_new_row_stride * eb, row_bytes);
    std::memcpy(v_cache + at, v_new + n * p.v_new_row_stride * eb, row_bytes);
  }
  return bad_slot ? "slot_mapping holds a slot beyond the cache" : nullptr;
}

const char* copy_pages(const CopyPagesParams& p) {
  const int64_t eb = element_bytes(p.dtype), page_bytes = p.page_elems * eb;
  char* cache = static_cast<char*>(p.cache);
  for (int64_t i = 0; i < p.n; ++i)
    if (p.src[i] < 0 || p.src[i] >= p.P || p.dst[i] < 0 || p.dst[i] >= p.P) return "page id out of range";
#pragma omp parallel for collapse(2) schedule(static) if (p.L * p.n * page_bytes > (1 << 18))
  for (int64_t l = 0; l < p.L; ++l)
    for (int64_t i = 0; i < p.n; ++i)
      std::memcpy(cache + (l * p.layer_stride + p.dst[i] * p.page_stride) * eb,
                  cache + (l * p.layer_stride + p.src[i] * p.page_stride) * eb, page_bytes);
  return nullptr;
}

const char* gather_tail(const GatherTailParams& p) {
  const int64_t eb = element_bytes(p.dtype), row_bytes = p.W * eb;
  const char* cache = static_cast<const char*>(p.cache);
  char* out = static_cast<char*>(p.out);
  bool bad_page = false;
#pragma omp parallel for collapse(2) schedule(static) if (p.B * p.tau * row_bytes > (1 << 16)) \
    reduction(|| : bad_page)
  for (int64_t b = 0; b < p.B; ++b) {
    for (int64_t j = 0; j < p.tau; ++j) {
      char* dst = out + (b * p.tau + j) * row_bytes;
      const int64_t pos = static_cast<int64_t>(p.seq_lens[b]) - p.tau + j;
      if (pos < 0) { std::memset(dst, 0, row_bytes); continue; }
      const int64_t column = pos / p.S;
      const int64_t page = column < p.M ? p.block_table[b * p.block_table_stride + column] : -1;
      if (page < 0 || page >= p.P) { bad_page = true; std::memset(dst, 0, row_bytes); continue; }
      std::memcpy(dst, cache + (page * p.page_stride + (pos % p.S) * p.token_stride) * eb, row_bytes);
    }
  }
  return bad_page ? "block_table holds a page id outside the cache for a position below seq_lens" : nullptr;
}

}  // namespace zaya_rt::cpu
