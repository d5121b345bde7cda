// ZAYA_RT_HOST_DEVICE marks a function that host code and device code (nvcc, clang -x hip) both compile.
#pragma once

#if defined(__CUDACC__) || defined(__HIP__)
#define ZAYA_RT_HOST_DEVICE __host__ __device__
#else
#define ZAYA_RT_HOST_DEVICE
#endif
