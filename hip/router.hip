// HIP build of the router kernels (bodies shared with CUDA in cuda/router_kernels.cuh; compiled by
// clang -x hip, see cmake/hip_backend.cmake).
#include "cuda/router_kernels.cuh"
