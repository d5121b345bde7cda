// HIP build of the attention kernels (bodies shared with CUDA in cuda/attention_kernels.cuh; compiled by
// clang -x hip, see cmake/hip_backend.cmake).
#include "cuda/attention_kernels.cuh"
