// Per-group problem setup of the sm_90a CUTLASS grouped GEMM (cuda/moe_gemm_sm90.cuh), as plain host/device
// C++ so that tests/cpp/test_moe_gemm_sm90_setup.cpp can check it with g++: group g of the ragged row space
// (rows grouped by the int32 cumulative ends `offsets`) and where its operands start. Offsets are clamped into
// [0, M] and a group whose end lies before its start is empty, the rules of group_start/group_end in
// cuda/moe_gemm_common.cuh, so the CUTLASS and WMMA paths agree on any offsets and never leave the operands.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define ZAYA_RT_HD __host__ __device__ inline
#else
#define ZAYA_RT_HD inline
#endif

namespace zaya_rt::gpu::sm90 {

// Group g (0 <= g < G) of a [M, K] x [G, N, K]^T grouped GEMM: rows [row0, row0 + rows) of a and out.
struct GroupRows {
  int64_t row0;
  int32_t rows;
};

ZAYA_RT_HD int64_t clamp_row(int64_t v, int64_t M) { return v < 0 ? 0 : (v > M ? M : v); }

ZAYA_RT_HD GroupRows group_rows(const int32_t* offsets, int64_t g, int64_t M) {
  const int64_t start = g == 0 ? 0 : clamp_row(offsets[g - 1], M);
  const int64_t end = clamp_row(offsets[g], M);
  return GroupRows{start, static_cast<int32_t>(end > start ? end - start : 0)};
}

// First row written as zeros: rows [tail_row0, M) belong to no group.
ZAYA_RT_HD int64_t tail_row0(const int32_t* offsets, int64_t G, int64_t M) { return clamp_row(offsets[G - 1], M); }

// Element offsets of group g's operands: a and out by its first row, b by the group.
struct GroupOperands {
  int64_t a, b, out;
};

ZAYA_RT_HD GroupOperands group_operands(const GroupRows& r, int64_t g, int64_t a_row_stride, int64_t b_group_stride,
                                        int64_t out_row_stride) {
  return GroupOperands{r.row0 * a_row_stride, g * b_group_stride, r.row0 * out_row_stride};
}

// Byte layout of the setup arrays in the caller's workspace, each piece 256-byte aligned, followed by
// CUTLASS's own workspace. The stride types are 8-byte (one int64 mode, the others static).
struct SetupLayout {
  int64_t shapes, ptr_a, ptr_b, ptr_out, stride_a, stride_b, stride_out, cutlass, bytes;
};

ZAYA_RT_HD int64_t align256(int64_t bytes) { return (bytes + 255) / 256 * 256; }

ZAYA_RT_HD SetupLayout setup_layout(int64_t G, int64_t cutlass_bytes) {
  SetupLayout l{};
  int64_t used = 0;
  auto carve = [&](int64_t bytes) {
    const int64_t at = used;
    used += align256(bytes);
    return at;
  };
  l.shapes = carve(G * 3 * 4);  // (M_g, N, K) int32
  l.ptr_a = carve(G * 8);
  l.ptr_b = carve(G * 8);
  l.ptr_out = carve(G * 8);
  l.stride_a = carve(G * 8);
  l.stride_b = carve(G * 8);
  l.stride_out = carve(G * 8);
  l.cutlass = carve(cutlass_bytes);
  l.bytes = used;
  return l;
}

}  // namespace zaya_rt::gpu::sm90
