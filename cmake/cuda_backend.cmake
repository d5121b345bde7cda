# CUDA backend: cuda/*.cu compiled by nvcc for sm_80 and sm_90a, linked into _C.
# The kernel bodies are shared with the HIP backend (cmake/hip_backend.cmake) through
# cuda/compat.h; see cuda/norms_kernels.cuh and cuda/moe_kernels.cuh (whose tensor-core tiles,
# cuda/moe_gemm_tc.cuh, are CUDA-only).
function(zaya_rt_attach_gpu_backend target)
  if(ZAYA_RT_CUDA)
    target_link_libraries(${target} PRIVATE zaya_rt_cuda_kernels)
    target_compile_definitions(${target} PRIVATE ZAYA_RT_WITH_GPU ZAYA_RT_WITH_CUDA
      ZAYA_RT_WITH_GPU_ATTENTION ZAYA_RT_WITH_GPU_CCA)
  elseif(ZAYA_RT_HIP)
    target_link_libraries(${target} PRIVATE zaya_rt_hip_kernels)
    target_compile_definitions(${target} PRIVATE ZAYA_RT_WITH_GPU ZAYA_RT_WITH_HIP
      ZAYA_RT_WITH_GPU_ATTENTION ZAYA_RT_WITH_GPU_CCA)
  endif()
endfunction()

set(ZAYA_RT_CUDA_SOURCES
  cuda/norms.cu
  cuda/moe.cu
  cuda/attention.cu
  cuda/cca.cu)

if(ZAYA_RT_CUDA)
  # Set before enable_language(CUDA), which would otherwise fill in the compiler's own default
  # (sm_75 for nvcc 13). Override with -DCMAKE_CUDA_ARCHITECTURES=90a or the CUDAARCHS variable.
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
    set(CMAKE_CUDA_ARCHITECTURES "80;90a")
  endif()
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  message(STATUS "zaya_rt: CUDA backend (nvcc ${CMAKE_CUDA_COMPILER_VERSION}) for architectures ${CMAKE_CUDA_ARCHITECTURES}")
  add_library(zaya_rt_cuda_kernels STATIC ${ZAYA_RT_CUDA_SOURCES})
  target_include_directories(zaya_rt_cuda_kernels PRIVATE ${PROJECT_SOURCE_DIR}/csrc/include ${PROJECT_SOURCE_DIR})
  target_compile_features(zaya_rt_cuda_kernels PRIVATE cuda_std_17)
  target_compile_options(zaya_rt_cuda_kernels PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-O3 --expt-relaxed-constexpr>)
  set_target_properties(zaya_rt_cuda_kernels PROPERTIES
    CUDA_SEPARABLE_COMPILATION OFF
    POSITION_INDEPENDENT_CODE ON)
  # Static runtime: _C needs no libcudart at run time and works beside any PyTorch CUDA build
  # (streams and memory belong to the driver's primary context, shared by both runtimes).
  target_link_libraries(zaya_rt_cuda_kernels PUBLIC CUDA::cudart_static)
endif()
