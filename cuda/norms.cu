// CUDA build of the norms kernels (bodies shared with HIP in cuda/norms_kernels.cuh).
#include "cuda/norms_kernels.cuh"
