# CUDA backend: cuda/*.cu compiled by nvcc for sm_80 and sm_90a, linked into _C.
# The kernel bodies are shared with the HIP backend (cmake/hip_backend.cmake) through
# cuda/compat.h; see cuda/norms_kernels.cuh and cuda/moe_kernels.cuh (whose tensor-core tiles,
# cuda/moe_gemm_tc.cuh, are CUDA-only). With sm_90a among the architectures and the CUTLASS 3 headers at hand,
# the Hopper grouped GEMM (cuda/moe_gemm_sm90*.cu, one instantiation per file) is compiled for sm_90a alone
# into the same library:
#   ZAYA_RT_CUTLASS      AUTO (default): build it when the headers are found, else warn and keep the WMMA
#                        path; ON: a missing CUTLASS stops the configure; OFF: never.
#   ZAYA_RT_CUTLASS_DIR  the include folder that holds cutlass/ and cute/; default: the one inside the
#                        nvidia-cutlass wheel (`pip install nvidia-cutlass==4.2.0`), found by the Python that
#                        builds _C without importing the package.
set(ZAYA_RT_CUTLASS "AUTO" CACHE STRING "sm_90a CUTLASS grouped GEMM: AUTO, ON or OFF")
set_property(CACHE ZAYA_RT_CUTLASS PROPERTY STRINGS AUTO ON OFF)
set(ZAYA_RT_CUTLASS_DIR "" CACHE PATH "CUTLASS include folder (default: the nvidia-cutlass wheel's)")
function(zaya_rt_attach_gpu_backend target)
  if(ZAYA_RT_CUDA)
    target_link_libraries(${target} PRIVATE zaya_rt_cuda_kernels)
    target_compile_definitions(${target} PRIVATE ZAYA_RT_WITH_GPU ZAYA_RT_WITH_CUDA)
  elseif(ZAYA_RT_HIP)
    target_link_libraries(${target} PRIVATE zaya_rt_hip_kernels)
    target_compile_definitions(${target} PRIVATE ZAYA_RT_WITH_GPU ZAYA_RT_WITH_HIP)
  endif()
endfunction()

set(ZAYA_RT_CUDA_SOURCES
  cuda/norms.cu
  cuda/moe.cu
  cuda/router.cu
  cuda/attention.cu
  cuda/cca.cu
  cuda/runtime.cu
  cuda/newton_schulz.cu)
set(ZAYA_RT_CUDA_SM90_SOURCES
  cuda/moe_gemm_sm90_bf16.cu
  cuda/moe_gemm_sm90_f16.cu)
# The sm_90a wgmma attention forward (no CUTLASS needed): built whenever sm_90a is a target.
set(ZAYA_RT_CUDA_SM90_ATTENTION_SOURCES
  cuda/attention_sm90_bf16.cu
  cuda/attention_sm90_f16.cu)

# Sets ZAYA_RT_CUTLASS_INCLUDE to the CUTLASS include folder, or to "" with the reason in ZAYA_RT_CUTLASS_WHY.
function(zaya_rt_find_cutlass)
  set(dir "${ZAYA_RT_CUTLASS_DIR}")
  if(NOT dir)
    execute_process(
      COMMAND ${Python_EXECUTABLE} -c
        "import importlib.util, os; s = importlib.util.find_spec('cutlass_library'); print(os.path.join(os.path.dirname(s.origin), 'source', 'include') if s and s.origin else '')"
      OUTPUT_VARIABLE dir OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc ERROR_QUIET)
    if(NOT rc EQUAL 0 OR NOT dir)
      set(ZAYA_RT_CUTLASS_INCLUDE "" PARENT_SCOPE)
      set(ZAYA_RT_CUTLASS_WHY "no ZAYA_RT_CUTLASS_DIR and no nvidia-cutlass package for ${Python_EXECUTABLE} (pip install nvidia-cutlass==4.2.0)" PARENT_SCOPE)
      return()
    endif()
  endif()
  set(probe "${dir}/cutlass/gemm/kernel/sm90_gemm_array_tma_warpspecialized_cooperative.hpp")
  if(NOT EXISTS "${probe}" OR NOT EXISTS "${dir}/cute/tensor.hpp")
    set(ZAYA_RT_CUTLASS_INCLUDE "" PARENT_SCOPE)
    set(ZAYA_RT_CUTLASS_WHY "${dir} holds no CUTLASS 3 grouped GEMM headers (${probe})" PARENT_SCOPE)
    return()
  endif()
  file(STRINGS "${dir}/cutlass/version.h" ver REGEX "#define CUTLASS_(MAJOR|MINOR|PATCH) ")
  string(REGEX REPLACE "[^0-9;]" "" ver "${ver}")
  string(REPLACE ";" "." ver "${ver}")
  set(ZAYA_RT_CUTLASS_INCLUDE "${dir}" PARENT_SCOPE)
  set(ZAYA_RT_CUTLASS_VERSION "${ver}" PARENT_SCOPE)
endfunction()

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

  # The sm_90a attention forward (cuda/attention_sm90.h): an object library compiled for sm_90a only.
  set(_zaya_attn_archs ${CMAKE_CUDA_ARCHITECTURES})
  list(FILTER _zaya_attn_archs INCLUDE REGEX "^90a")
  if(_zaya_attn_archs AND CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.0)
    add_library(zaya_rt_cuda_sm90_attention OBJECT ${ZAYA_RT_CUDA_SM90_ATTENTION_SOURCES})
    target_include_directories(zaya_rt_cuda_sm90_attention PRIVATE ${PROJECT_SOURCE_DIR}/csrc/include ${PROJECT_SOURCE_DIR})
    target_compile_features(zaya_rt_cuda_sm90_attention PRIVATE cuda_std_17)
    target_compile_options(zaya_rt_cuda_sm90_attention PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-O3 --expt-relaxed-constexpr>)
    set_target_properties(zaya_rt_cuda_sm90_attention PROPERTIES CUDA_ARCHITECTURES 90a-real POSITION_INDEPENDENT_CODE ON)
    target_sources(zaya_rt_cuda_kernels PRIVATE $<TARGET_OBJECTS:zaya_rt_cuda_sm90_attention>)
    target_compile_definitions(zaya_rt_cuda_kernels PRIVATE ZAYA_RT_WITH_SM90_ATTENTION)
    message(STATUS "zaya_rt: sm_90a wgmma attention forward")
  else()
    message(STATUS "zaya_rt: no sm_90a attention forward (needs sm_90a among the architectures and nvcc >= 12.0)")
  endif()

  # The sm_90a CUTLASS grouped GEMM: its own object library, compiled for sm_90a only, so an sm_80 target
  # never sees wgmma/TMA code.
  set(_zaya_arch_list ${CMAKE_CUDA_ARCHITECTURES})
  list(FILTER _zaya_arch_list INCLUDE REGEX "^90a")
  set(_zaya_cutlass_why "")
  if(ZAYA_RT_CUTLASS STREQUAL "OFF")
    set(_zaya_cutlass_why "ZAYA_RT_CUTLASS=OFF")
  elseif(NOT _zaya_arch_list)
    set(_zaya_cutlass_why "sm_90a is not among the CUDA architectures (${CMAKE_CUDA_ARCHITECTURES})")
  elseif(CMAKE_CUDA_COMPILER_VERSION VERSION_LESS 12.3)
    set(_zaya_cutlass_why "nvcc ${CMAKE_CUDA_COMPILER_VERSION} is older than 12.3")
  else()
    zaya_rt_find_cutlass()
    set(_zaya_cutlass_why "${ZAYA_RT_CUTLASS_WHY}")
  endif()
  if(NOT _zaya_cutlass_why)
    add_library(zaya_rt_cuda_sm90 OBJECT ${ZAYA_RT_CUDA_SM90_SOURCES})
    target_include_directories(zaya_rt_cuda_sm90 PRIVATE ${PROJECT_SOURCE_DIR}/csrc/include ${PROJECT_SOURCE_DIR})
    target_include_directories(zaya_rt_cuda_sm90 SYSTEM PRIVATE ${ZAYA_RT_CUTLASS_INCLUDE})
    target_compile_features(zaya_rt_cuda_sm90 PRIVATE cuda_std_17)
    # NDEBUG in every build type: CUTLASS's device asserts are calls that serialise the wgmma pipeline.
    target_compile_options(zaya_rt_cuda_sm90 PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-O3 --expt-relaxed-constexpr -DNDEBUG>)
    set_target_properties(zaya_rt_cuda_sm90 PROPERTIES CUDA_ARCHITECTURES 90a-real POSITION_INDEPENDENT_CODE ON)
    target_sources(zaya_rt_cuda_kernels PRIVATE $<TARGET_OBJECTS:zaya_rt_cuda_sm90>)
    target_compile_definitions(zaya_rt_cuda_kernels PRIVATE ZAYA_RT_WITH_CUTLASS_SM90)
    message(STATUS "zaya_rt: sm_90a CUTLASS grouped GEMM (CUTLASS ${ZAYA_RT_CUTLASS_VERSION}, ${ZAYA_RT_CUTLASS_INCLUDE})")
  elseif(ZAYA_RT_CUTLASS STREQUAL "ON")
    message(FATAL_ERROR "zaya_rt: ZAYA_RT_CUTLASS=ON but the sm_90a CUTLASS grouped GEMM cannot be built: ${_zaya_cutlass_why}")
  elseif(ZAYA_RT_CUTLASS STREQUAL "OFF" OR NOT _zaya_arch_list)
    message(STATUS "zaya_rt: no sm_90a CUTLASS grouped GEMM (${_zaya_cutlass_why}): WMMA tiles only")
  else()
    message(WARNING "zaya_rt: no sm_90a CUTLASS grouped GEMM (${_zaya_cutlass_why}): the grouped GEMM uses the "
                    "WMMA tiles on every GPU. Set ZAYA_RT_CUTLASS=ON to require it.")
  endif()
endif()
