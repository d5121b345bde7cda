// Argument checks and backend choice for the runtime family (page operations and the sampler).
// Bad input throws std::invalid_argument (ValueError); a failing kernel std::runtime_error.
#pragma once
#include "zaya_rt/common.h"
#include "zaya_rt/runtime.h"

namespace zaya_rt {

void kv_write(const KvWriteParams& p, const Device& d);
void copy_pages(const CopyPagesParams& p, const Device& d);
void gather_tail(const GatherTailParams& p, const Device& d);
void sample_tokens(const SampleParams& p, const Device& d);
// Workspace bytes of sample_tokens for p.B rows of p.V logits (0 on a GPU).
int64_t sample_workspace(const SampleParams& p, const Device& d);

}  // namespace zaya_rt
