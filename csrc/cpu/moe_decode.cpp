// Decode path of the fused expert block: few token slots (use_moe_decode in moe_decode.h). Each used expert's
// weights are streamed once in their stored layout (gate_up [2I, D], down [D, I], rows contiguous along K) as
// dot products with all of that expert's rows at once; no B packing. Threads split the output rows (gate/up
// pairs over I, then down rows over D) of every used expert, so the whole call is one parallel region with
// one barrier between the two products. Compiled once per ISA; only the AVX-512 build has it.
#include "cpu/moe_decode.h"

#include <omp.h>

#include <algorithm>
#include <type_traits>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu/epilogue.h"
#include "cpu/gemm_core.h"  // hsum_vectors, kHasBf16Dot
#include "cpu/numeric.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {

#if defined(__AVX512F__)
namespace {

constexpr int64_t kSliceCols = 48;   // output columns whose partial results wait in a thread's buffers
constexpr int64_t kSplitAlign = 16;  // thread slices start on whole vectors of the output rows
constexpr int64_t kMinMacsPerThread = 1 << 17;

// How a dtype's K vectors are read and multiplied: Mode::step elements per vector, load(p, lane mask),
// fma(acc, x, w) (fp32 accumulation; vdpbf16ps flushes denormals, as the packed GEMM's bf16 path does).
// fp32 and fp16 (widened by vcvtph2ps) use FMAs; bf16 uses vdpbf16ps on pairs (Dot) or widens each pair's
// halves into two fp32 vectors (lane j holds elements 2j and 2j + 1 in both, so sums pair up the same way).
template <typename T, bool Dot> struct Mode;
template <> struct Mode<float, false> {
  static constexpr int64_t step = 16;
  using Vec = __m512;
  static Vec load(const float* p, uint32_t m) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), p); }
  static __m512 fma(__m512 acc, Vec x, Vec w) { return _mm512_fmadd_ps(x, w, acc); }
};
template <> struct Mode<f16, false> {
  static constexpr int64_t step = 16;
  using Vec = __m512;
  static Vec load(const f16* p, uint32_t m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(static_cast<__mmask16>(m), p));
  }
  static __m512 fma(__m512 acc, Vec x, Vec w) { return _mm512_fmadd_ps(x, w, acc); }
};
template <> struct Mode<bf16, false> {
  static constexpr int64_t step = 32;
  using Vec = __m512i;
  static Vec load(const bf16* p, uint32_t m) { return _mm512_maskz_loadu_epi16(static_cast<__mmask32>(m), p); }
  static __m512 fma(__m512 acc, Vec x, Vec w) {
    const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
    acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(x, 16)),
                          _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)), acc);
    return _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(x, high)),
                           _mm512_castsi512_ps(_mm512_and_si512(w, high)), acc);
  }
};
#if defined(__AVX512BF16__)
template <> struct Mode<bf16, true> {
  static constexpr int64_t step = 32;
  using Vec = __m512;  // bf16 pairs
  static Vec load(const bf16* p, uint32_t m) {
    return _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(static_cast<__mmask32>(m), p));
  }
  static __m512 fma(__m512 acc, Vec x, Vec w) { return _mm512_dpbf16_ps(acc, (__m512bh)x, (__m512bh)w); }
};
#endif

// Tile shapes: G weight rows (G / 2 gate/up pairs, or G down rows) by up to tile_x_rows<G> rows of x. An
// expert with one row takes 8 weight rows, whose 8 independent sums keep the FMA pipes busy while the weights
// stream in; more rows take 4 by 4, so each weight vector feeds 4 products and each x vector 4 (3 or 4 by 6 run out
// of registers: GCC 12 then keeps the accumulators' home on the stack and stores them on every step).
template <int G> constexpr int tile_x_rows = G == 8 ? 1 : 4;

// out[m * G + g] = <x[m], w[g]> over K for M rows of x and G rows of w, all contiguous along K. The rows
// pf_ahead elements after each w row (the next tile's) are prefetched while this one computes.
template <typename T, bool Dot, int M, int G>
__attribute__((noinline)) void dot_tile(const T* const* x, const T* const* w, int64_t K, int64_t pf_ahead,
                                        float* out) {
  using V = Mode<T, Dot>;
  constexpr int64_t step = V::step;
  __m512 acc[M * G];
#pragma GCC unroll 32
  for (int i = 0; i < M * G; ++i) acc[i] = _mm512_setzero_ps();
  constexpr uint32_t full = step == 32 ? 0xffffffffu : 0xffffu;
  const uint32_t tail = (1u << (K % step)) - 1u;
  for (int64_t k = 0; k < K; k += step) {
    // A full mask costs what an unmasked load does; one loop body serves the K tail as well.
    const uint32_t mask = K - k >= step ? full : tail;
    typename V::Vec wv[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      wv[g] = V::load(w[g] + k, mask);
      _mm_prefetch(reinterpret_cast<const char*>(w[g] + pf_ahead + k), _MM_HINT_T0);
    }
#pragma GCC unroll 4
    for (int m = 0; m < M; ++m) {
      const typename V::Vec xv = V::load(x[m] + k, mask);
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) acc[m * G + g] = V::fma(acc[m * G + g], xv, wv[g]);
    }
  }
  hsum_vectors<M * G>(acc, out);
}

// dot_tile for m (1 .. tile_x_rows<G>) rows of x.
template <typename T, bool Dot, int G>
void dot_tile_rows(int m, const T* const* x, const T* const* w, int64_t K, int64_t pf_ahead, float* out) {
  if constexpr (tile_x_rows<G> == 1) {
    dot_tile<T, Dot, 1, G>(x, w, K, pf_ahead, out);
  } else {
    switch (m) {
      case 4: return dot_tile<T, Dot, 4, G>(x, w, K, pf_ahead, out);
      case 3: return dot_tile<T, Dot, 3, G>(x, w, K, pf_ahead, out);
      case 2: return dot_tile<T, Dot, 2, G>(x, w, K, pf_ahead, out);
      default: return dot_tile<T, Dot, 1, G>(x, w, K, pf_ahead, out);
    }
  }
}

// [begin, end) of n split over `parts`, slices a multiple of kSplitAlign long (the last one shorter).
struct Slice { int64_t begin, end; };
inline Slice thread_slice(int64_t n, int parts, int part) {
  const int64_t per = ((n + parts - 1) / parts + kSplitAlign - 1) / kSplitAlign * kSplitAlign;
  return {std::min(n, part * per), std::min(n, (part + 1) * per)};
}

// One expert's gate_up product and SwiGLU for its `rows` rows of x over intermediate columns [i0, i1):
// act[r] = SiLU(gate . x_r) * (up . x_r) rounded to T, as the general path's epilogue computes it.
template <typename T, bool Dot, int G>
void gate_up_rows(const MoeExpertsParams& p, const T* w1, const T* const* x, int64_t rows, int64_t i0, int64_t i1,
                  T* act) {
  constexpr int MR = tile_x_rows<G>, kPairs = G / 2;
  const int64_t I = p.I, ld = p.gate_up_row_stride;
  alignas(64) float gate[kMoeDecodeMaxExpertRows][kSliceCols], up[kMoeDecodeMaxExpertRows][kSliceCols];
  float tile[MR * G];
  const T* w[G];
  for (int64_t s0 = i0; s0 < i1; s0 += kSliceCols) {
    const int64_t s1 = std::min(i1, s0 + kSliceCols);
    for (int64_t i = s0; i < s1; i += kPairs) {
      // A short last tile repeats its last column; the repeats are not stored.
      for (int j = 0; j < kPairs; ++j) {
        const int64_t c = std::min(i + j, s1 - 1);
        w[j] = w1 + c * ld;
        w[kPairs + j] = w1 + (I + c) * ld;
      }
      for (int64_t m0 = 0; m0 < rows; m0 += MR) {
        const int mr = static_cast<int>(std::min<int64_t>(MR, rows - m0));
        dot_tile_rows<T, Dot, G>(mr, x + m0, w, p.D, m0 == 0 ? kPairs * ld : 0, tile);
        for (int m = 0; m < mr; ++m)
          for (int j = 0; j < kPairs && i + j < s1; ++j) {
            gate[m0 + m][i + j - s0] = tile[m * G + j];
            up[m0 + m][i + j - s0] = tile[m * G + kPairs + j];
          }
      }
    }
    for (int64_t m = 0; m < rows; ++m) store_swiglu(act + m * I + s0, gate[m], up[m], static_cast<int>(s1 - s0));
  }
}

// One expert's down product for its rows [r0, r0 + rows) over output columns [d0, d1), scaled by each slot's
// gate: written to the token's output row (top-1) or to the row's fp32 y row (top-k, summed later).
template <typename T, bool Dot, typename TG, int G>
void down_rows(const MoeExpertsParams& p, const MoeDecodeRows& rr, const T* w2, const T* const* a, int64_t r0,
               int64_t rows, int64_t d0, int64_t d1) {
  constexpr int MR = tile_x_rows<G>;
  const int64_t ld = p.down_row_stride;
  alignas(64) float y[kMoeDecodeMaxExpertRows][kSliceCols];
  float tile[MR * G];
  const T* w[G];
  T* out = static_cast<T*>(p.out);
  const TG* gate = static_cast<const TG*>(p.gate);
  for (int64_t s0 = d0; s0 < d1; s0 += kSliceCols) {
    const int64_t s1 = std::min(d1, s0 + kSliceCols);
    for (int64_t d = s0; d < s1; d += G) {
      for (int j = 0; j < G; ++j) w[j] = w2 + std::min(d + j, s1 - 1) * ld;
      for (int64_t m0 = 0; m0 < rows; m0 += MR) {
        const int mr = static_cast<int>(std::min<int64_t>(MR, rows - m0));
        dot_tile_rows<T, Dot, G>(mr, a + m0, w, p.I, m0 == 0 ? G * ld : 0, tile);
        for (int m = 0; m < mr; ++m)
          for (int j = 0; j < G && d + j < s1; ++j) y[m0 + m][d + j - s0] = tile[m * G + j];
      }
    }
    for (int64_t m = 0; m < rows; ++m) {
      const int32_t slot = rr.sorted_slots[r0 + m];
      const float g = load(gate, slot);
      const int n = static_cast<int>(s1 - s0);
      if (p.top_k == 1) store_scaled(out + static_cast<int64_t>(slot) * p.out_row_stride + s0, y[m], g, n);
      else store_scaled(rr.y_rows + (r0 + m) * p.D + s0, y[m], g, n);
    }
  }
}

// Output columns [d0, d1) of the tokens no expert wrote: zeros for skipped tokens (top-1), or each token's sum
// of its slots' rows in slot order (top-k).
template <typename T>
void finish_columns(const MoeExpertsParams& p, const MoeDecodeRows& rr, int64_t d0, int64_t d1) {
  T* out = static_cast<T*>(p.out);
  for (int64_t t = 0; t < p.T; ++t) {
    T* dst = out + t * p.out_row_stride;
    if (p.top_k == 1) {
      if (rr.slot_rows[t] < 0)
        for (int64_t n = d0; n < d1; ++n) store(dst, n, 0.f);
      continue;
    }
    for (int64_t n = d0; n < d1; ++n) {
      float acc = 0.f;
      for (int64_t s = 0; s < p.top_k; ++s) {
        const int32_t row = rr.slot_rows[t * p.top_k + s];
        if (row >= 0) acc += rr.y_rows[static_cast<int64_t>(row) * p.D + n];
      }
      store(dst, n, acc);
    }
  }
}

template <typename T, bool Dot, typename TG>
const char* decode_t(const MoeExpertsParams& p, const MoeDecodeRows& rr) {
  const int64_t E = p.E, I = p.I, D = p.D;
  const T* hidden = static_cast<const T*>(p.hidden);
  const T* w1 = static_cast<const T*>(p.gate_up);
  const T* w2 = static_cast<const T*>(p.down);
  T* act = static_cast<T*>(rr.act);
  // Row pointers of every dispatched row: its token's hidden row and its activation row.
  const int64_t rows = E ? rr.offsets[E - 1] : 0;
  const T* x_rows[kMoeDecodeMaxSlots];
  const T* a_rows[kMoeDecodeMaxSlots];
  for (int64_t r = 0; r < rows; ++r) {
    x_rows[r] = hidden + (rr.sorted_slots[r] / p.top_k) * p.hidden_row_stride;
    a_rows[r] = act + r * I;
  }
  const int64_t macs = 3 * rows * I * D;
  const int threads = static_cast<int>(
      std::clamp<int64_t>(macs / kMinMacsPerThread, 1, std::max(1, omp_get_max_threads())));
#pragma omp parallel num_threads(threads)
  {
    const int parts = omp_get_num_threads(), part = omp_get_thread_num();
    const Slice cols_i = thread_slice(I, parts, part), cols_d = thread_slice(D, parts, part);
    int64_t start = 0;
    for (int64_t e = 0; e < E; start = rr.offsets[e++]) {
      const int64_t n = rr.offsets[e] - start;
      const T* w = w1 + e * p.gate_up_expert_stride;
      if (n == 1) gate_up_rows<T, Dot, 8>(p, w, x_rows + start, n, cols_i.begin, cols_i.end, act + start * I);
      else if (n > 1) gate_up_rows<T, Dot, 4>(p, w, x_rows + start, n, cols_i.begin, cols_i.end, act + start * I);
    }
#pragma omp barrier
    start = 0;
    for (int64_t e = 0; e < E; start = rr.offsets[e++]) {
      const int64_t n = rr.offsets[e] - start;
      const T* w = w2 + e * p.down_expert_stride;
      if (n == 1) down_rows<T, Dot, TG, 8>(p, rr, w, a_rows + start, start, n, cols_d.begin, cols_d.end);
      else if (n > 1) down_rows<T, Dot, TG, 4>(p, rr, w, a_rows + start, start, n, cols_d.begin, cols_d.end);
    }
    finish_columns<T>(p, rr, cols_d.begin, cols_d.end);
  }
  return nullptr;
}

}  // namespace

bool has_moe_decode() { return true; }

const char* moe_experts_decode(const MoeExpertsParams& p, const MoeDecodeRows& rows, bool bf16_dot) {
  // The row buffers are sized by these limits.
  if (!use_moe_decode(p.T * p.top_k, rows.offsets, p.E))
    return "moe_experts_decode: more token slots, or rows on one expert, than the decode path takes";
  ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, ZAYA_RT_DISPATCH_FLOAT(p.gate_dtype, TG, {
    if constexpr (std::is_same_v<T, bf16> && kHasBf16Dot) {
      if (bf16_dot) return decode_t<T, true, TG>(p, rows);
    }
    return decode_t<T, false, TG>(p, rows);
  }));
  return nullptr;
}

#else

bool has_moe_decode() { return false; }
const char* moe_experts_decode(const MoeExpertsParams&, const MoeDecodeRows&, bool) {
  return "moe_experts_decode: this ISA build has no decode path";
}

#endif

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
