// GPU MoE kernels, one source for CUDA (cuda/moe.cu) and HIP (hip/moe.hip): dispatch (stable counting sort
// of token slots by expert), grouped GEMM and its weight gradient, and the expert block built from them
// (zaya_rt/moe.h). The math is that of the CPU kernels in csrc/cpu/moe.cpp: fp32 accumulation, the gate and
// up GEMM outputs rounded to the model dtype before SiLU(g) * u, the activation stored in the model dtype,
// gate-scaled down rows, top-k rows summed per token in slot order.
//
// Layout of the work:
//   dispatch      S = T*k slots, B = E + 1 bins (the last one collects the skipped slots). Up to
//                 max(kDispatchChunk, 2B) slots one block does everything: shared-memory histogram, scan,
//                 then rounds of blockDim slots in which a slot's rank among the earlier slots of its bin
//                 comes from warp votes (the lanes with the same bin) and per-warp counts. More slots:
//                 per-block histograms (kept in sorted_slots, which has room for them), a one-block column
//                 scan, per-block ranking into slot_rows, then a scatter that writes sorted_slots. Integer
//                 counting only: the same result on every run, no atomics on global memory.
//   grouped GEMM  output rows are cut per group into BM-row tiles; the grid is (ceil(M/BM) + G) row tiles x
//                 N tiles, an upper bound known on the host, and each block finds its group and rows by a
//                 block-wide scan over the device offsets (no host sync). Rows past offsets[G-1] form a last
//                 "group" that is written as zeros. Tiles are 128 columns wide and 128 rows tall, or 32 rows
//                 when groups average under 64 rows (decode). The mainloop is a shared-memory tiled GEMM:
//                   SIMT (every backend and dtype, any strides): BK = 16, fp32 tiles in shared memory, 256
//                   threads with 8x8 (128-row tiles) or 4x4 (32-row tiles) register blocks, the next tile
//                   prefetched into registers; 16-byte loads along k when sizes and alignment allow, else
//                   scalar loads with any strides.
//                   Tensor cores (CUDA sm_80+, bf16/fp16 with 16-byte aligned rows): wmma 16x16x16 with fp32
//                   accumulators, BK = 32, a cp.async pipeline of 2 (128-row tiles, 8 warps of 64x32) or 3
//                   (32-row tiles, 4 warps of 32x32) stages; cuda/moe_gemm_tc.cuh.
//                   Hopper (CUDA builds with CUTLASS, sm_90 devices, bf16/fp16, 16-byte aligned K-contiguous
//                   operands): the CUTLASS TMA + wgmma grouped GEMM of cuda/moe_gemm_sm90.h, chosen per call
//                   (ZAYA_RT_CUDA_GROUPED_GEMM); moe_experts then runs gather -> GEMM -> SwiGLU -> GEMM ->
//                   combine on it instead of the fused tiles.
//   weight grad   one block per (group, 128 x 128 tile) of grad_b; the inner dimension is the group's rows,
//                 found on the device; an empty group gives zeros. dy and a are read along their
//                 contiguous (column) dimension, the same two mainloops.
//   experts       dispatch -> per-row gate values -> gate_up GEMM over the gathered token rows with a SwiGLU
//                 epilogue (a column tile holds BN/2 gate columns and the matching BN/2 up columns) into
//                 act [S, I] -> down GEMM with a gate-scaled epilogue (top-1: straight into the token's out
//                 row; top-k: into fp32 rows [S, D]) -> a combine that sums each token's slots in slot order
//                 (top-k) or zeroes the rows of tokens without an expert (top-1).
//
// No allocation (the caller passes workspaces), no host synchronisation, launch errors returned as messages:
// every entry point can be captured in a CUDA/HIP graph.
//
// Files: moe_common.cuh (helpers), moe_dispatch.cuh, moe_gemm_common.cuh (argument structs, row tiles,
// epilogues), moe_gemm_simt.cuh, moe_gemm_tc.cuh, moe_gemm_launch.cuh (plans and path choice), moe_experts.cuh;
// this file holds the entry points of zaya_rt/moe.h.
#pragma once
#include "cuda/moe_experts.cuh"

namespace zaya_rt::gpu {

// ==== entry points (zaya_rt/moe.h) ===========================================================================

const char* moe_dispatch(const MoeDispatchParams& p, void* stream) {
  return moe_detail::run_dispatch(p.expert_index, p.index_dtype, p.num_slots, p.num_experts, p.offsets, p.counts,
                                  p.sorted_slots, p.slot_rows, as_stream(stream));
}

const char* grouped_gemm(const GroupedGemmParams& p, void* stream) {
  if (p.M <= 0 || p.N <= 0) return nullptr;
  if (p.G < 1) return "need at least one group";
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.dtype, T, return moe_detail::launch_grouped_gemm<T>(p, as_stream(stream)));
  return "unreachable dtype switch";
}

const char* grouped_gemm_path(const GroupedGemmParams& p) {
  if (p.M <= 0 || p.N <= 0 || p.G < 1) return "none";
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.dtype, T, return moe_detail::grouped_gemm_path<T>(p));
  return "unreachable dtype switch";
}

bool built_with_cutlass_sm90() {
#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
  return true;
#else
  return false;
#endif
}

const char* grouped_gemm_weight_grad(const GroupedGemmWeightGradParams& p, void* stream) {
  if (p.N <= 0 || p.K <= 0) return nullptr;
  if (p.G < 1) return "need at least one group";
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.dtype, T, return moe_detail::launch_weight_grad<T>(p, as_stream(stream)));
  return "unreachable dtype switch";
}

const char* moe_experts(const MoeExpertsParams& p, void* stream) {
  if (p.T <= 0 || p.D <= 0) return nullptr;
  if (p.E < 1 || p.E > moe_detail::kMaxGpuExperts) return "the GPU MoE kernels take 1 to 4096 experts";
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.dtype, T, return moe_detail::run_moe_experts<T>(p, as_stream(stream)));
  return "unreachable dtype switch";
}

// The WMMA / SIMT GEMMs find their tiles on the device and need no scratch; the sm_90a CUTLASS one keeps its
// per-group arrays and TMA descriptors there (16-bit dtypes only).
int64_t grouped_gemm_workspace(int64_t, int64_t, int64_t, int64_t G, DType dtype) {
#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
  if (dtype == DType::kBFloat16 || dtype == DType::kFloat16) return sm90::grouped_gemm_workspace(G);
#endif
  (void)G;
  (void)dtype;
  return 0;
}
int64_t grouped_gemm_weight_grad_workspace(int64_t, int64_t, int64_t, int64_t, DType) { return 0; }

int64_t moe_experts_workspace(int64_t T, int64_t top_k, int64_t D, int64_t I, int64_t E, DType dtype) {
  int64_t gemm_bytes = 0;
#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
  // Room for the CUTLASS path when the current device and sizes would take it (it falls back to the fused
  // path, which needs less, when a workspace sized otherwise comes in).
  if (moe_detail::experts_sm90_wanted(T * top_k, D, I, E, dtype)) gemm_bytes = sm90::grouped_gemm_workspace(E);
#endif
  return moe_detail::experts_workspace(nullptr, T, top_k, D, I, E, moe_detail::elem_bytes(dtype), gemm_bytes).bytes;
}

}  // namespace zaya_rt::gpu
