// Run-time ISA routing and workspace sizes of the CPU attention kernels (compiled once, not per ISA; the
// per-ISA builds are csrc/cpu/attention_*.cpp in cmake/cpu_kernels.cmake).
#include <omp.h>

#include "cpu/attention_shape.h"
#include "cpu/isa_kernels.h"
#include "zaya_rt/attention.h"

#define ZAYA_RT_CPU_ATTENTION_KERNELS(X)          \
  X(attention_varlen_fwd, AttnVarlenFwdParams)    \
  X(attention_varlen_bwd, AttnVarlenBwdParams)    \
  X(attention_decode, AttnPagedDecodeParams)
ZAYA_RT_CPU_DECLARE_PER_ISA(ZAYA_RT_CPU_ATTENTION_KERNELS)

namespace zaya_rt::cpu {

ZAYA_RT_CPU_ATTENTION_KERNELS(ZAYA_RT_CPU_ROUTE)

int64_t attention_varlen_fwd_workspace(const AttnVarlenFwdParams& p) {
  const int64_t group = p.num_heads_k > 0 ? std::max<int64_t>(1, p.num_heads_q / p.num_heads_k) : 1;
  return attn_packed_kv_bytes(p.total_k, p.batch, p.num_heads_k, p.head_dim) +
         omp_get_max_threads() * attn_fwd_thread_bytes(group, p.head_dim);
}

int64_t attention_varlen_bwd_workspace(const AttnVarlenBwdParams& p) {
  if (p.num_heads_k < 1) return 0;
  return attn_bwd_workspace_bytes(p.total_q, p.total_k, p.batch, p.num_heads_q, p.num_heads_k, p.head_dim,
                                  omp_get_max_threads());
}

int64_t attention_decode_workspace(const AttnPagedDecodeParams& p) {
  if (p.num_heads_k < 1) return 0;
  const int64_t splits = attn_decode_splits(p.batch, p.num_heads_k, p.max_pages * p.page_size, p.num_splits,
                                            omp_get_max_threads());
  return attn_decode_workspace_bytes(p.batch, p.num_queries, p.num_heads_q, p.num_heads_k, p.head_dim, splits,
                                     omp_get_max_threads());
}

}  // namespace zaya_rt::cpu
