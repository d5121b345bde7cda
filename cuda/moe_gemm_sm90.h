// Host interface of the Hopper (sm_90a) grouped GEMM: CUTLASS 3 ptr-array kernels with TMA loads, wgmma and a
// TMA-store epilogue, built only when CMake finds the CUTLASS headers and sm_90a is a target (it then defines
// ZAYA_RT_WITH_CUTLASS_SM90). One instantiation per file: cuda/moe_gemm_sm90_bf16.cu, cuda/moe_gemm_sm90_f16.cu
// (the template is cuda/moe_gemm_sm90.cuh); cuda/moe_gemm_launch.cuh decides per call whether to take it.
//
// The kernel serves out_g = a_g @ b_g^T with a row-major ([M, K], unit column stride), b_g [N, K] K-contiguous
// (CUTLASS's "column-major B", a TN GEMM) and out row-major, 16-bit operands, fp32 accumulation. A small setup
// kernel turns the device offsets into per-group problem shapes, operand pointers and strides in the caller's
// workspace and zeroes the rows past offsets[G-1]; CUTLASS gets no host problem shapes, so its group tile
// scheduler reads them on the device. No host synchronisation, no allocation: graph capturable.
//
// ZAYA_RT_CUDA_GROUPED_GEMM (read on every call) picks the forward grouped GEMM kernel on CUDA builds:
//   auto (default)  CUTLASS on sm_90 for 16-bit operands that qualify when groups average >= 64 rows, else WMMA
//   cutlass         CUTLASS whenever the operands qualify (any row count), else WMMA / SIMT
//   wmma            never CUTLASS (the sm_80 WMMA + cp.async tiles, or SIMT)
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/moe_gemm_sm90_setup.h"
#include "zaya_rt/moe.h"

namespace zaya_rt::gpu::sm90 {

// Workspaces are sized for up to this many SMs (CUTLASS keeps two TMA descriptors per SM and operand); a
// device with more runs the persistent grid on this many.
constexpr int kMaxSms = 256;

// CUTLASS's own workspace for kMaxSms SMs (defined in each instantiation file).
int64_t cutlass_workspace_bf16();
int64_t cutlass_workspace_f16();

// Launches the setup kernel and the CUTLASS grouped GEMM; nullptr on success. The caller has checked
// qualifies() and that p.workspace holds grouped_gemm_workspace(p.G) bytes.
const char* grouped_gemm_bf16(const GroupedGemmParams& p, int sm_count, cudaStream_t s);
const char* grouped_gemm_f16(const GroupedGemmParams& p, int sm_count, cudaStream_t s);

inline int64_t grouped_gemm_workspace(int64_t G) {
  const int64_t b = cutlass_workspace_bf16(), h = cutlass_workspace_f16();
  return setup_layout(G, b > h ? b : h).bytes;
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
// The workspace holds TMA descriptors (64-byte aligned) at 256-byte multiples from its start.
inline bool aligned256(const void* p) { return reinterpret_cast<uintptr_t>(p) % 256 == 0; }

// The operand conditions of the kernel (16-bit dtype checked by the caller): TMA needs 16-byte aligned bases
// and row strides, K and N in whole 16-byte chunks; b K-contiguous; 32-bit problem sizes; a 256-byte aligned
// workspace of grouped_gemm_workspace(G) bytes.
inline bool qualifies(const GroupedGemmParams& p) {
  constexpr int64_t kVec = 8;  // 16-bit elements per 16 bytes
  return p.a_col_stride == 1 && p.b_col_stride == 1 && p.K > 0 && p.K % kVec == 0 && p.N % kVec == 0 &&
         p.M < INT32_MAX && p.N < INT32_MAX && p.K < INT32_MAX && p.a_row_stride >= p.K &&
         p.b_row_stride >= p.K && p.out_row_stride >= p.N && p.a_row_stride % kVec == 0 &&
         p.b_row_stride % kVec == 0 && p.b_group_stride % kVec == 0 && p.b_group_stride >= 0 &&
         p.out_row_stride % kVec == 0 && aligned16(p.a) && aligned16(p.b) && aligned16(p.out) &&
         aligned256(p.workspace) && p.workspace_bytes >= grouped_gemm_workspace(p.G);
}

}  // namespace zaya_rt::gpu::sm90
