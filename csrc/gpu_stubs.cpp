// The gpu:: entry points of a build without a GPU backend (no ZAYA_RT_WITH_GPU). The dispatch layer
// (dispatch_common.h, require_device) rejects GPU calls before any of these is reached; the kernel-choice
// queries answer "none".
#if !defined(ZAYA_RT_WITH_GPU)
#include "zaya_rt/attention.h"
#include "zaya_rt/attention_gpu_path.h"
#include "zaya_rt/cca.h"
#include "zaya_rt/moe.h"
#include "zaya_rt/moe_gpu_path.h"
#include "zaya_rt/newton_schulz.h"
#include "zaya_rt/norms.h"
#include "zaya_rt/router.h"
#include "zaya_rt/runtime.h"

namespace zaya_rt::gpu {
namespace {
constexpr const char* kNoGpu = "no GPU backend";
}  // namespace

const char* rms_norm_fwd(const RmsNormFwdParams&, void*) { return kNoGpu; }
const char* rms_norm_bwd(const RmsNormBwdParams&, void*) { return kNoGpu; }
const char* residual_rms_norm_fwd(const ResidualRmsNormFwdParams&, void*) { return kNoGpu; }
const char* residual_rms_norm_bwd(const ResidualRmsNormBwdParams&, void*) { return kNoGpu; }
int64_t norm_bwd_num_partials(int64_t, int64_t) { return 1; }

const char* moe_dispatch(const MoeDispatchParams&, void*) { return kNoGpu; }
const char* grouped_gemm(const GroupedGemmParams&, void*) { return kNoGpu; }
const char* grouped_gemm_weight_grad(const GroupedGemmWeightGradParams&, void*) { return kNoGpu; }
const char* moe_experts(const MoeExpertsParams&, void*) { return kNoGpu; }
int64_t grouped_gemm_workspace(int64_t, int64_t, int64_t, int64_t, DType) { return 0; }
int64_t grouped_gemm_weight_grad_workspace(int64_t, int64_t, int64_t, int64_t, DType) { return 0; }
int64_t moe_experts_workspace(int64_t, int64_t, int64_t, int64_t, int64_t, DType) { return 0; }
const char* grouped_gemm_path(const GroupedGemmParams&) { return "none"; }
bool built_with_cutlass_sm90() { return false; }

const char* zaya_router(const RouterParams&, void*) { return kNoGpu; }

const char* newton_schulz(const NewtonSchulzParams&, void*) { return kNoGpu; }
int64_t newton_schulz_workspace(DType, int64_t, int64_t, int64_t) { return 0; }

const char* attention_varlen_fwd(const AttnVarlenFwdParams&, void*) { return kNoGpu; }
const char* attention_varlen_bwd(const AttnVarlenBwdParams&, void*) { return kNoGpu; }
const char* attention_decode(const AttnPagedDecodeParams&, void*) { return kNoGpu; }
int64_t attention_varlen_fwd_workspace(const AttnVarlenFwdParams&) { return 0; }
int64_t attention_varlen_bwd_workspace(const AttnVarlenBwdParams&) { return 0; }
int64_t attention_decode_workspace(const AttnPagedDecodeParams&) { return 0; }
const char* attention_varlen_fwd_path(const AttnVarlenFwdParams&) { return "none"; }
bool built_with_sm90_attention() { return false; }

const char* cca_prep_fwd(const CcaPrepFwdParams&, void*) { return kNoGpu; }
const char* cca_prep_bwd(const CcaPrepBwdParams&, void*) { return kNoGpu; }
int64_t cca_prep_fwd_workspace(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t) { return 0; }
int64_t cca_prep_bwd_workspace(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t) { return 0; }

const char* kv_write(const KvWriteParams&, void*) { return kNoGpu; }
const char* copy_pages(const CopyPagesParams&, void*) { return kNoGpu; }
const char* gather_tail(const GatherTailParams&, void*) { return kNoGpu; }
const char* sample_tokens(const SampleParams&, void*) { return kNoGpu; }

}  // namespace zaya_rt::gpu
#endif
