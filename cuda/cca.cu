// CUDA build of the CCA prep kernels (bodies shared with HIP in cuda/cca_kernels.cuh).
#include "cuda/cca_kernels.cuh"
