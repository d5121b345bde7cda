// HIP build of the runtime page operations and the fused sampler (bodies shared with CUDA in
// cuda/runtime_kernels.cuh; compiled by clang -x hip, see cmake/hip_backend.cmake).
#include "cuda/runtime_kernels.cuh"
