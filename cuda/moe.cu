// CUDA build of the MoE kernels (bodies shared with HIP in cuda/moe_kernels.cuh; the tensor-core tiles in
// cuda/moe_gemm_tc.cuh are CUDA-only).
#include "cuda/moe_kernels.cuh"
