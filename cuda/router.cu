// CUDA build of the router kernels (bodies shared with HIP in cuda/router_kernels.cuh).
#include "cuda/router_kernels.cuh"
