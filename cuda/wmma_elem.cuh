// nvcuda::wmma (as `wmma`) and its element type for each 16-bit storage type of the kernels (bf16 ->
// __nv_bfloat16, f16 -> __half), shared by the tensor-core tiles of the attention forward (cuda/attention_tc.cuh)
// and the grouped GEMMs (cuda/moe_gemm_tc.cuh). NVIDIA only (the GPU emulation supplies mma.h).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include "cuda/numeric.cuh"

namespace zaya_rt::gpu {

namespace wmma = nvcuda::wmma;

template <typename T> struct WmmaElem;
template <> struct WmmaElem<bf16> { using type = __nv_bfloat16; };
template <> struct WmmaElem<f16> { using type = __half; };

}  // namespace zaya_rt::gpu
