// Register-only throughput loops: the GFLOP/s one core reaches with vdpbf16ps and with fp32 FMAs when nothing
// but the instruction itself limits it (24 independent accumulators, operands held in registers). The yardstick
// for the GEMM micro-kernel and one input of the per-host choice between the two bf16 paths.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {

#if defined(__AVX512F__)
constexpr int kPeakChains = 24;

// FLOPs of `iters` rounds of kPeakChains instructions; Dot: vdpbf16ps (64 FLOPs each), else FMA (32 FLOPs).
template <bool Dot> __attribute__((noinline)) double peak_loop_flops(int64_t iters) {
  __m512 acc[kPeakChains];
#pragma GCC unroll 24
  for (int i = 0; i < kPeakChains; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  __m512i a = _mm512_set1_epi32(0x3f803f80), b = _mm512_set1_epi32(0x3f003f00);
  for (int64_t it = 0; it < iters; ++it) {
    asm volatile("" : "+v"(a), "+v"(b));  // the operands stay in registers but the loop cannot be folded
#pragma GCC unroll 24
    for (int i = 0; i < kPeakChains; ++i) {
#if defined(__AVX512BF16__)
      if constexpr (Dot) acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)a, (__m512bh)b);
      else
#endif
        acc[i] = _mm512_fmadd_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(b), acc[i]);
    }
  }
  __m512 s = acc[0];
  for (int i = 1; i < kPeakChains; ++i) s = _mm512_add_ps(s, acc[i]);
  asm volatile("" : : "v"(s));
  return static_cast<double>(iters) * kPeakChains * (Dot ? 64.0 : 32.0);
}

// Best GFLOP/s of `trials` runs of about 0.5 ms each (the best trial is the one least disturbed by other load).
template <bool Dot> double peak_gflops(int trials) {
  constexpr int64_t kIters = 40000;  // ~1M instructions
  double best = 0.0;
  for (int t = 0; t < trials; ++t) {
    const double t0 = omp_get_wtime();
    const double flops = peak_loop_flops<Dot>(kIters);
    best = std::max(best, flops / std::max(omp_get_wtime() - t0, 1e-9) * 1e-9);
  }
  return best;
}
#endif

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
