// HIP build of the CCA prep kernels (bodies shared with CUDA in cuda/cca_kernels.cuh, cuda/cca_bwd_kernels.cuh;
// compiled by clang -x hip, see cmake/hip_backend.cmake).
#include "cuda/cca_kernels.cuh"
#include "cuda/cca_bwd_kernels.cuh"
