# HIP backend: hip/*.hip compiled by clang -x hip (ZAYA_RT_HIP_CLANG) for the CDNA targets in
# ZAYA_RT_HIP_ARCH, against the ROCm headers under ZAYA_RT_ROCM_PATH and the device bitcode in
# ZAYA_RT_ROCM_DEVICE_LIB_PATH, into object files that become the static library
# zaya_rt_hip_kernels; that links libamdhip64, and zaya_rt_attach_gpu_backend
# (cmake/cuda_backend.cmake) puts it into _C. No hipcc and no CMake HIP language support needed:
# clang + lld + the HIP headers/runtime + the device libraries are enough (Debian: clang-19,
# lld-19, libamdhip64-dev, rocm-device-libs).

set(ZAYA_RT_HIP_SOURCES
  hip/norms.hip
  hip/moe.hip
  hip/router.hip
  hip/attention.hip
  hip/cca.hip
  hip/runtime.hip
  hip/newton_schulz.hip)

include(${CMAKE_CURRENT_LIST_DIR}/hip_device_libs.cmake)

if(ZAYA_RT_HIP)
  find_program(ZAYA_RT_HIP_CLANG_EXE NAMES ${ZAYA_RT_HIP_CLANG} REQUIRED)
  find_library(ZAYA_RT_AMDHIP64_LIB NAMES amdhip64
    HINTS ${ZAYA_RT_ROCM_PATH}/lib ${ZAYA_RT_ROCM_PATH}/lib64 ${ZAYA_RT_ROCM_PATH}/lib/x86_64-linux-gnu
    REQUIRED)

  zaya_rt_hip_device_libs(${ZAYA_RT_ROCM_DEVICE_LIB_PATH} "${ZAYA_RT_HIP_ARCH}" ${ZAYA_RT_HIP_CLANG_EXE}
                          _zaya_device_lib_dir)
  set(_zaya_hip_common_flags
    -x hip
    --rocm-path=${ZAYA_RT_ROCM_PATH}
    --rocm-device-lib-path=${_zaya_device_lib_dir}
    -fPIC -O3 -std=c++17)

  # Probe each architecture once at configure time. An architecture whose device library neither this
  # ROCm nor cmake/hip_device_libs.cmake provides is left out with a warning; any other failure (say, no
  # ld.lld for the device link) stops the configure here with clang's message rather than halfway through
  # the build.
  set(_zaya_probe_dir ${CMAKE_CURRENT_BINARY_DIR}/zaya_rt_hip_probe)
  file(MAKE_DIRECTORY ${_zaya_probe_dir})
  file(WRITE ${_zaya_probe_dir}/probe.hip
    "#include <hip/hip_runtime.h>\n__global__ void zaya_rt_probe(float* p) { p[threadIdx.x] += 1.f; }\n")
  set(ZAYA_RT_HIP_ARCH_BUILT "")
  foreach(_arch IN LISTS ZAYA_RT_HIP_ARCH)
    execute_process(
      COMMAND ${ZAYA_RT_HIP_CLANG_EXE} ${_zaya_hip_common_flags} --offload-arch=${_arch}
              -c ${_zaya_probe_dir}/probe.hip -o ${_zaya_probe_dir}/probe_${_arch}.o
      RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
    if(_rc EQUAL 0)
      list(APPEND ZAYA_RT_HIP_ARCH_BUILT ${_arch})
    elseif(_err MATCHES "cannot find ROCm device library")
      message(WARNING "zaya_rt: leaving out HIP architecture ${_arch}: no device library for it under "
                      "${ZAYA_RT_ROCM_DEVICE_LIB_PATH} (a newer ROCm has it)")
    else()
      message(FATAL_ERROR "zaya_rt: ${ZAYA_RT_HIP_CLANG_EXE} cannot compile HIP for ${_arch}:\n${_err}${_out}"
                          "(the device link needs ld.lld; on Debian: apt-get install lld-19)")
    endif()
  endforeach()
  if(NOT ZAYA_RT_HIP_ARCH_BUILT)
    message(FATAL_ERROR "zaya_rt: none of the HIP architectures '${ZAYA_RT_HIP_ARCH}' can be built here")
  endif()
  message(STATUS "zaya_rt: HIP backend (${ZAYA_RT_HIP_CLANG_EXE}) for ${ZAYA_RT_HIP_ARCH_BUILT}")

  set(_zaya_offload_flags "")
  foreach(_arch IN LISTS ZAYA_RT_HIP_ARCH_BUILT)
    list(APPEND _zaya_offload_flags --offload-arch=${_arch})
  endforeach()
  file(GLOB _zaya_hip_headers CONFIGURE_DEPENDS
    ${PROJECT_SOURCE_DIR}/cuda/*.h ${PROJECT_SOURCE_DIR}/cuda/*.cuh ${PROJECT_SOURCE_DIR}/hip/*.h
    ${PROJECT_SOURCE_DIR}/csrc/include/zaya_rt/*.h)

  set(_zaya_hip_objects "")
  foreach(_src IN LISTS ZAYA_RT_HIP_SOURCES)
    get_filename_component(_name ${_src} NAME_WE)
    set(_obj ${CMAKE_CURRENT_BINARY_DIR}/zaya_rt_hip/${_name}.o)
    add_custom_command(
      OUTPUT ${_obj}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_CURRENT_BINARY_DIR}/zaya_rt_hip
      COMMAND ${ZAYA_RT_HIP_CLANG_EXE} ${_zaya_hip_common_flags} ${_zaya_offload_flags}
              -I${PROJECT_SOURCE_DIR}/csrc/include -I${PROJECT_SOURCE_DIR}
              -c ${PROJECT_SOURCE_DIR}/${_src} -o ${_obj}
      DEPENDS ${PROJECT_SOURCE_DIR}/${_src} ${_zaya_hip_headers}
      COMMENT "Building HIP object ${_src} for ${ZAYA_RT_HIP_ARCH_BUILT}"
      VERBATIM)
    list(APPEND _zaya_hip_objects ${_obj})
  endforeach()

  add_library(zaya_rt_hip_kernels STATIC ${_zaya_hip_objects})
  set_target_properties(zaya_rt_hip_kernels PROPERTIES LINKER_LANGUAGE CXX POSITION_INDEPENDENT_CODE ON)
  target_link_libraries(zaya_rt_hip_kernels PUBLIC ${ZAYA_RT_AMDHIP64_LIB})
endif()
