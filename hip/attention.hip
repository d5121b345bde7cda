// HIP build of the attention kernels (bodies shared with CUDA in cuda/attention_kernels.cuh; compiled by
// clang -x hip, see cmake/hip_backend.cmake). The bf16/fp16 prefill forward runs on CDNA3 matrix cores
// (hip/attention_mfma.h, included from there) when its shape constraints hold.
#include "cuda/attention_kernels.cuh"
