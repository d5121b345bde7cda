// CUDA build of the attention kernels (bodies shared with HIP in cuda/attention_kernels.cuh).
#include "cuda/attention_kernels.cuh"
