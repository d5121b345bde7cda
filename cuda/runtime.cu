// CUDA build of the runtime page operations and the fused sampler (bodies shared with HIP in
// cuda/runtime_kernels.cuh).
#include "cuda/runtime_kernels.cuh"
