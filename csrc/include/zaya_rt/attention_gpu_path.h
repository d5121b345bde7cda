// Which GPU kernel family serves an attention_varlen forward (introspection for tests and benchmarks; see
// cuda/attention_sm90.h for the choice and the ZAYA_RT_CUDA_ATTENTION override).
#pragma once
#include "zaya_rt/attention.h"

namespace zaya_rt::gpu {
// "sm90_wgmma", "wmma" or "simt" for the forward of p on the current device ("none" when there is nothing to
// compute), nullptr when ZAYA_RT_CUDA_ATTENTION holds an unknown value. Reads no device memory.
const char* attention_varlen_fwd_path(const AttnVarlenFwdParams& p);
// Whether this build holds the sm_90a wgmma forward.
bool built_with_sm90_attention();
}  // namespace zaya_rt::gpu
