// CUDA build of the CCA prep kernels (bodies shared with HIP in cuda/cca_kernels.cuh, cuda/cca_bwd_kernels.cuh).
#include "cuda/cca_kernels.cuh"
#include "cuda/cca_bwd_kernels.cuh"
