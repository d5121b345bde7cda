// Host interface of the Hopper (sm_90a) attention forward (cuda/attention_sm90.cuh: wgmma, one warpgroup per
// 64 rows), built when sm_90a is among the CUDA architectures (CMake then defines ZAYA_RT_WITH_SM90_ATTENTION).
// One instantiation set per file: cuda/attention_sm90_bf16.cu, cuda/attention_sm90_f16.cu (head dims 64, 128).
// cuda/attention_kernels.cuh decides per call whether to take it:
//
// ZAYA_RT_CUDA_ATTENTION (read on every call) picks the varlen forward kernel family on CUDA builds:
//   auto (default)  sm90 on a compute capability 9.0 device when the call qualifies, else wmma, else simt
//   sm90            the same (sm90 whenever it qualifies; on other devices the next family that does)
//   wmma            never sm90: the sm_80 WMMA tiles when they qualify, else simt
//   simt            the SIMT kernel always
// _C.attention_varlen_path(...) tells which one a call takes. The backward and decode are not affected.
#pragma once
#include <cuda_runtime.h>

#include "zaya_rt/attention.h"

namespace zaya_rt::gpu::sm90 {

// Launch the forward for p (nullptr on success); the caller checked attention_qualifies().
const char* attention_varlen_fwd_bf16(const AttnVarlenFwdParams& p, cudaStream_t s);
const char* attention_varlen_fwd_f16(const AttnVarlenFwdParams& p, cudaStream_t s);

}  // namespace zaya_rt::gpu::sm90
