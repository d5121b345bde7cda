// HIP build of the Newton-Schulz kernels (bodies shared with CUDA in cuda/newton_schulz_kernels.cuh; compiled by
// clang -x hip, see cmake/hip_backend.cmake).
#include "cuda/newton_schulz_kernels.cuh"
