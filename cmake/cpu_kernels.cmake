# CPU kernels are compiled once per instruction set into their own namespace
# (zaya_rt::cpu::avx512, ::avx2, ::base); csrc/cpu/isa.cpp picks one at run time.
set(ZAYA_RT_CPU_KERNEL_SOURCES
  csrc/cpu/norms.cpp
  csrc/cpu/moe.cpp
  csrc/cpu/moe_decode.cpp
  csrc/cpu/router.cpp
  csrc/cpu/router_blocked.cpp
  csrc/cpu/attention_varlen.cpp
  csrc/cpu/attention_bwd.cpp
  csrc/cpu/attention_decode.cpp
  csrc/cpu/cca.cpp
  csrc/cpu/packed_linear.cpp
  csrc/cpu/newton_schulz.cpp
  csrc/cpu/cross_entropy.cpp)

set(ZAYA_RT_CPU_ISAS base avx2 avx512)
set(ZAYA_RT_CPU_FLAGS_base "")
set(ZAYA_RT_CPU_FLAGS_avx2 "-mavx2;-mfma;-mf16c")
set(ZAYA_RT_CPU_FLAGS_avx512 "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512bf16;-mfma;-mf16c")

add_library(zaya_rt_cpu_kernels INTERFACE)
foreach(isa IN LISTS ZAYA_RT_CPU_ISAS)
  add_library(zaya_rt_cpu_${isa} OBJECT ${ZAYA_RT_CPU_KERNEL_SOURCES})
  target_include_directories(zaya_rt_cpu_${isa} PRIVATE ${PROJECT_SOURCE_DIR}/csrc/include ${PROJECT_SOURCE_DIR}/csrc)
  target_compile_definitions(zaya_rt_cpu_${isa} PRIVATE ZAYA_RT_CPU_ISA=${isa})
  target_compile_options(zaya_rt_cpu_${isa} PRIVATE -O3 ${ZAYA_RT_CPU_FLAGS_${isa}})
  target_link_libraries(zaya_rt_cpu_${isa} PRIVATE OpenMP::OpenMP_CXX)
  target_sources(zaya_rt_cpu_kernels INTERFACE $<TARGET_OBJECTS:zaya_rt_cpu_${isa}>)
endforeach()
