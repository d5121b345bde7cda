// Host emulation of the AMD GPU wave operations the HIP kernels use (tools/gpu_emu; included by
// tools/gpu_emu/cuda/compat.h): HIP's __shfl_xor and the CDNA3 matrix-core builtins
// __builtin_amdgcn_mfma_f32_16x16x16bf16_1k and __builtin_amdgcn_mfma_f32_16x16x16f16, as wave-collective
// operations: every lane (a std::thread) publishes its operands to the wave's scratch, waits for the whole
// wave, and computes its own result items. Only meaningful at --warp 64 (the MFMA builtins abort otherwise).
//
// The element <-> (lane, item) mapping is AMD's, not the kernel's: it was taken from AMD's Matrix Instruction
// Calculator (github.com/ROCm/amd_matrix_instruction_calculator at 2ef9189, `matrix_calculator.py -a cdna3
// -i v_mfma_f32_16x16x16_bf16 --matrix-layout --A-matrix / --B-matrix / --D-matrix`; _f16 lists the same),
// all 64 lanes x 4 items of each matrix checked against these formulas:
//   A[i][k] = item k % 4 of lane i + 16 (k / 4)      (A is M x K = 16 x 16)
//   B[k][j] = item k % 4 of lane j + 16 (k / 4)      (B is K x N)
//   D[i][j] = item i % 4 of lane j + 16 (i / 4)      (C and D are M x N, fp32)
// so a kernel that indexes its fragments wrongly gets wrong answers here. CBSZ/ABID/BLGP must be 0 (the only
// form used). Arithmetic: exact 16-bit products summed in fp32 in k order onto C; the hardware's internal
// summation order / precision may differ within fp32 rounding, denormal handling is not modelled.
#pragma once
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace emu::amdgcn {
typedef float f32x4 __attribute__((vector_size(16)));
typedef short b16x4 __attribute__((vector_size(8)));
typedef _Float16 f16x4 __attribute__((vector_size(8)));

inline int lane() { return static_cast<int>(ctx.thread.x % ZAYA_RT_EMU_WARP); }
inline std::atomic<int64_t> mfma_calls{0};  // MFMA instructions issued (counted once per wave)

// All lanes of the wave exchange one float through the scratch; returns lane src's value.
inline float exchange(float v, int src) {
  ctx.wave_scratch[lane()] = v;
  ctx.warp_bar->arrive_and_wait();
  const float r = ctx.wave_scratch[src];
  ctx.warp_bar->arrive_and_wait();
  return r;
}

inline float bf16_value(short bits) {
  return __builtin_bit_cast(float, static_cast<uint32_t>(static_cast<uint16_t>(bits)) << 16);
}

// D = A B + C, 16x16x16, with a / b this lane's 4 items of A / B as floats.
inline f32x4 mfma_16x16x16(const float (&a)[4], const float (&b)[4], f32x4 c, int cbsz, int abid, int blgp) {
  if (ZAYA_RT_EMU_WARP != 64 || cbsz != 0 || abid != 0 || blgp != 0) {
    std::fprintf(stderr, "emulated MFMA needs --warp 64 and CBSZ = ABID = BLGP = 0\n");
    std::abort();
  }
  const int l = lane();
  if (l == 0) ++mfma_calls;
  float* s = ctx.wave_scratch;  // lane x: A items at s[8 x .. 8 x + 3], B items at s[8 x + 4 .. 8 x + 7]
  for (int e = 0; e < 4; ++e) s[8 * l + e] = a[e], s[8 * l + 4 + e] = b[e];
  ctx.warp_bar->arrive_and_wait();
  auto A = [&](int i, int k) { return s[8 * (i + 16 * (k / 4)) + k % 4]; };
  auto B = [&](int k, int j) { return s[8 * (j + 16 * (k / 4)) + 4 + k % 4]; };
  f32x4 d;
  const int j = l % 16;
  for (int e = 0; e < 4; ++e) {
    const int i = 4 * (l / 16) + e;  // this lane's item e is D[i][j]
    float acc = c[e];
    for (int k = 0; k < 16; ++k) acc += A(i, k) * B(k, j);
    d[e] = acc;
  }
  ctx.warp_bar->arrive_and_wait();
  return d;
}

inline f32x4 mfma_bf16(b16x4 a, b16x4 b, f32x4 c, int cbsz, int abid, int blgp) {
  float fa[4], fb[4];
  for (int e = 0; e < 4; ++e) fa[e] = bf16_value(a[e]), fb[e] = bf16_value(b[e]);
  return mfma_16x16x16(fa, fb, c, cbsz, abid, blgp);
}
inline f32x4 mfma_f16(f16x4 a, f16x4 b, f32x4 c, int cbsz, int abid, int blgp) {
  float fa[4], fb[4];
  for (int e = 0; e < 4; ++e) fa[e] = static_cast<float>(a[e]), fb[e] = static_cast<float>(b[e]);
  return mfma_16x16x16(fa, fb, c, cbsz, abid, blgp);
}
}  // namespace emu::amdgcn

// HIP's __shfl_xor (hip_runtime.h): lane l gets the value of lane l ^ mask within its group of `width` lanes.
inline float __shfl_xor(float v, int mask, int width = ZAYA_RT_EMU_WARP) {
  const int l = emu::amdgcn::lane();
  const int src = ((l ^ mask) < (l / width + 1) * width) ? (l ^ mask) : l;
  return emu::amdgcn::exchange(v, src);
}

#define __builtin_amdgcn_mfma_f32_16x16x16bf16_1k ::emu::amdgcn::mfma_bf16
#define __builtin_amdgcn_mfma_f32_16x16x16f16 ::emu::amdgcn::mfma_f16
