// Argument checks and backend choice for the attention family (see csrc/dispatch_common.h for the conventions).
#pragma once
#include "zaya_rt/attention.h"

namespace zaya_rt {

void attention_varlen_fwd(const AttnVarlenFwdParams& p, const Device& d);
void attention_varlen_bwd(const AttnVarlenBwdParams& p, const Device& d);
void attention_decode(const AttnPagedDecodeParams& p, const Device& d);
// Workspace bytes each kernel needs on device d (host-side sizes of p only).
int64_t attention_varlen_fwd_workspace(const AttnVarlenFwdParams& p, const Device& d);
int64_t attention_varlen_bwd_workspace(const AttnVarlenBwdParams& p, const Device& d);
int64_t attention_decode_workspace(const AttnPagedDecodeParams& p, const Device& d);

}  // namespace zaya_rt
