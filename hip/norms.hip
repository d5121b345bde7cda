// HIP build of the norms kernels (bodies shared with CUDA in cuda/norms_kernels.cuh; compiled by
// clang -x hip, see cmake/hip_backend.cmake).
#include "cuda/norms_kernels.cuh"
