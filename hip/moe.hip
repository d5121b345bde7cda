// HIP build of the MoE kernels (bodies shared with CUDA in cuda/moe_kernels.cuh; SIMT tiles only; compiled
// by clang -x hip, see cmake/hip_backend.cmake).
#include "cuda/moe_kernels.cuh"
