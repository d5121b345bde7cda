// The kernels' entry points behind zaya_rt._C, one section per family (csrc/dispatch_<family>.cpp): each checks
// its params struct (bad input throws std::invalid_argument, a ValueError in Python, naming the argument), then
// runs the CPU kernel or, in a GPU build, the GPU one on d.stream; a kernel that reports a failure throws
// std::runtime_error. Conventions and helpers: csrc/dispatch_common.h. Size queries (workspace bytes and the
// like) read only the sizes and dtypes of their params struct, never its pointers.
#pragma once
#include <cstdint>

#include "zaya_rt/attention.h"
#include "zaya_rt/cca.h"
#include "zaya_rt/common.h"
#include "zaya_rt/cross_entropy.h"
#include "zaya_rt/moe.h"
#include "zaya_rt/newton_schulz.h"
#include "zaya_rt/norms.h"
#include "zaya_rt/packed_linear.h"
#include "zaya_rt/router.h"
#include "zaya_rt/runtime.h"

namespace zaya_rt {

// Norms (zaya_rt/norms.h). norm_bwd_num_partials: rows of the fp32 partials buffer of the two backward kernels.
void rms_norm_fwd(const RmsNormFwdParams& p, const Device& d);
void rms_norm_bwd(const RmsNormBwdParams& p, const Device& d);
void residual_rms_norm_fwd(const ResidualRmsNormFwdParams& p, const Device& d);
void residual_rms_norm_bwd(const ResidualRmsNormBwdParams& p, const Device& d);
int64_t norm_bwd_num_partials(const Device& d, int64_t rows, int64_t dim);

// MoE (zaya_rt/moe.h).
void moe_dispatch(const MoeDispatchParams& p, const Device& d);
void grouped_gemm(const GroupedGemmParams& p, const Device& d);
void grouped_gemm_weight_grad(const GroupedGemmWeightGradParams& p, const Device& d);
void moe_experts(const MoeExpertsParams& p, const Device& d);
void moe_experts_backward(const MoeExpertsBackwardParams& p, const Device& d);  // CPU only
int64_t grouped_gemm_workspace(const GroupedGemmParams& p, const Device& d);
int64_t grouped_gemm_weight_grad_workspace(const GroupedGemmWeightGradParams& p, const Device& d);
int64_t moe_experts_workspace(const MoeExpertsParams& p, const Device& d);
int64_t moe_experts_backward_workspace(const MoeExpertsBackwardParams& p, const Device& d);

// Router (zaya_rt/router.h): the GPU kernel needs no workspace (0).
void zaya_router(const RouterParams& p, const Device& d);
int64_t zaya_router_workspace(const RouterParams& p, const Device& d);

// Attention (zaya_rt/attention.h). attention_takes_head_dim: the head dims the kernels take (the one copy of
// the rule; Python asks _C.attention_takes_head_dim).
bool attention_takes_head_dim(int64_t d);
void attention_varlen_fwd(const AttnVarlenFwdParams& p, const Device& d);
void attention_varlen_bwd(const AttnVarlenBwdParams& p, const Device& d);
void attention_decode(const AttnPagedDecodeParams& p, const Device& d);
int64_t attention_varlen_fwd_workspace(const AttnVarlenFwdParams& p, const Device& d);
int64_t attention_varlen_bwd_workspace(const AttnVarlenBwdParams& p, const Device& d);
int64_t attention_decode_workspace(const AttnPagedDecodeParams& p, const Device& d);

// CCA prep (zaya_rt/cca.h); CPU workspaces are sized for the current number of OpenMP threads.
void cca_prep_fwd(const CcaPrepFwdParams& p, const Device& d);
void cca_prep_bwd(const CcaPrepBwdParams& p, const Device& d);
int64_t cca_prep_fwd_workspace(const CcaPrepFwdParams& p, const Device& d);
int64_t cca_prep_bwd_workspace(const CcaPrepBwdParams& p, const Device& d);

// Runtime: page operations and the sampler (zaya_rt/runtime.h); the GPU sampler needs no workspace (0).
void kv_write(const KvWriteParams& p, const Device& d);
void copy_pages(const CopyPagesParams& p, const Device& d);
void gather_tail(const GatherTailParams& p, const Device& d);
void sample_tokens(const SampleParams& p, const Device& d);
int64_t sample_workspace(const SampleParams& p, const Device& d);

// Packed-weight linear layer (zaya_rt/packed_linear.h), CPU only: packed_linear_bytes sizes p.packed.
void pack_linear_weight(const PackLinearParams& p, const Device& d);
void packed_linear(const PackedLinearParams& p, const Device& d);
int64_t packed_linear_bytes(const PackLinearParams& p, const Device& d);
int64_t packed_linear_workspace(const PackedLinearParams& p, const Device& d);

// Batched Newton-Schulz (zaya_rt/newton_schulz.h).
void newton_schulz(const NewtonSchulzParams& p, const Device& d);
int64_t newton_schulz_workspace(const NewtonSchulzParams& p, const Device& d);

// Fused softmax-cross-entropy rows (zaya_rt/cross_entropy.h), CPU only.
void cross_entropy_rows(const CrossEntropyRowsParams& p, const Device& d);

}  // namespace zaya_rt
