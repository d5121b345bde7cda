// CUDA build of the Newton-Schulz kernels (bodies shared with HIP in cuda/newton_schulz_kernels.cuh).
#include "cuda/newton_schulz_kernels.cuh"
