// sm_90a wgmma attention forward, bf16 inputs, head dims 64 and 128 (one instantiation set per file; see
// cuda/attention_sm90.h).
#include "cuda/attention_sm90.cuh"
#include "cuda/attention_sm90.h"

namespace zaya_rt::gpu::sm90 {

const char* attention_varlen_fwd_bf16(const AttnVarlenFwdParams& p, cudaStream_t s) {
  return attn_sm90::launch_any<bf16>(p, s);
}

}  // namespace zaya_rt::gpu::sm90
