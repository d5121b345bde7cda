// CDNA3 (gfx940/941/942) matrix-core fragments for one wave64: 16x16x16 tiles of v_mfma_f32_16x16x16_bf16 /
// _f16 (clang builtins __builtin_amdgcn_mfma_f32_16x16x16bf16_1k / __builtin_amdgcn_mfma_f32_16x16x16f16),
// fp32 accumulators. Under tools/gpu_emu the same builtins are host code (tools/gpu_emu/amdgcn_mfma.h).
//
// Lane layout, for lane l in 0..63 and item e in 0..3 of the lane's 4-element vector (from AMD's Matrix
// Instruction Calculator, github.com/ROCm/amd_matrix_instruction_calculator at 2ef9189,
// `matrix_calculator.py -a cdna3 -i v_mfma_f32_16x16x16_bf16 --matrix-layout --{A,B,D}-matrix`, identical
// for _f16; the same mapping the CDNA3 ISA guide's MFMA chapter gives):
//   A (M x K)        item e of lane l = A[l % 16][4 * (l / 16) + e]
//   B (K x N)        item e of lane l = B[4 * (l / 16) + e][l % 16]
//   C / D (M x N)    item e of lane l = D[4 * (l / 16) + e][l % 16]
// So a lane's accumulator items sit exactly where the B operand of a following MFMA wants them: D of one
// product, rounded to 16 bits, is the B operand of the next without any data movement (what the attention
// kernel uses for P).
#pragma once
#include <cstdint>

#include "cuda/compat.h"
#include "cuda/numeric.cuh"

namespace zaya_rt::gpu::mfma {

// GCC-style vectors: the types clang's amdgcn builtins take, and ones g++ (the emulator) also knows.
typedef float f32x4 __attribute__((vector_size(16)));
typedef short b16x4 __attribute__((vector_size(8)));     // 4 bf16 or fp16 values as bits
typedef _Float16 f16x4 __attribute__((vector_size(8)));

constexpr int kTile = 16;

ZAYA_RT_DEVICE_INLINE int lane_id() { return static_cast<int>(threadIdx.x % kWarpSize); }
// The row (A) / column (B, C, D) index a lane holds: l % 16; the first of its 4 k (A, B) or row (C, D) indices.
ZAYA_RT_DEVICE_INLINE int lane_col() { return lane_id() % kTile; }
ZAYA_RT_DEVICE_INLINE int lane_k0() { return 4 * (lane_id() / kTile); }

// Fragment from a row-major 16x16 tile m (element [i][j] at m[i * ld + j]), items m[l % 16][4 (l / 16) + e]:
// the A operand of m, or the B operand of m^T. One 8-byte load: m and ld must keep 4 elements 8-byte aligned.
template <typename T> ZAYA_RT_DEVICE_INLINE b16x4 load_rows(const T* m, int ld) {
  return *reinterpret_cast<const b16x4*>(m + lane_col() * ld + lane_k0());
}
// Fragment m[4 (l / 16) + e][l % 16] of a row-major tile: the B operand of m, or the A operand of m^T.
template <typename T> ZAYA_RT_DEVICE_INLINE b16x4 load_cols(const T* m, int ld) {
  const uint16_t* p = reinterpret_cast<const uint16_t*>(m) + lane_k0() * ld + lane_col();
  b16x4 f;
#pragma unroll
  for (int e = 0; e < 4; ++e) f[e] = static_cast<short>(p[e * ld]);
  return f;
}

// Four fp32 values rounded to T (bf16 / f16, round to nearest even) as an operand fragment.
template <typename T> ZAYA_RT_DEVICE_INLINE b16x4 to_operand(const float (&x)[4]) {
  b16x4 f;
#pragma unroll
  for (int e = 0; e < 4; ++e) f[e] = static_cast<short>(from_float<T>(x[e]).bits);
  return f;
}

// d = a b + c for one 16x16x16 tile (all 64 lanes of the wave must execute it together).
template <typename T> ZAYA_RT_DEVICE_INLINE f32x4 mma(b16x4 a, b16x4 b, f32x4 c);
template <> ZAYA_RT_DEVICE_INLINE f32x4 mma<bf16>(b16x4 a, b16x4 b, f32x4 c) {
  return __builtin_amdgcn_mfma_f32_16x16x16bf16_1k(a, b, c, 0, 0, 0);
}
template <> ZAYA_RT_DEVICE_INLINE f32x4 mma<f16>(b16x4 a, b16x4 b, f32x4 c) {
  return __builtin_amdgcn_mfma_f32_16x16x16f16(__builtin_bit_cast(f16x4, a), __builtin_bit_cast(f16x4, b), c, 0,
                                               0, 0);
}

ZAYA_RT_DEVICE_INLINE f32x4 zeros() { return f32x4{0.f, 0.f, 0.f, 0.f}; }

// Max / sum over the 4 lanes that hold the same accumulator column (l, l ^ 16, l ^ 32, l ^ 48).
ZAYA_RT_DEVICE_INLINE float column_max(float v) {
  v = fmaxf(v, __shfl_xor(v, 16, kWarpSize));
  return fmaxf(v, __shfl_xor(v, 32, kWarpSize));
}
ZAYA_RT_DEVICE_INLINE float column_sum(float v) {
  v += __shfl_xor(v, 16, kWarpSize);
  return v + __shfl_xor(v, 32, kWarpSize);
}

}  // namespace zaya_rt::gpu::mfma
