// Linear layer over weights packed once into column panels (layout in zaya_rt/packed_linear.h): the CPU
// runtime's GEMM for decode-sized batches. Each panel of 48 output columns is read once per 8 rows of x and
// multiplied as outer products (x values broadcast, 16 columns per vector) into 24 fp32 accumulators, so
// no horizontal sums and no per-call packing of W are needed. A bf16 weight is stored as bf16 pairs along K:
// on hosts whose bf16 GEMMs take vdpbf16ps (bf16_gemm_rates().dot_chosen) a bf16 x multiplies them with one
// vdpbf16ps per pair, elsewhere the pairs are widened to fp32 in registers for FMAs. Compiled once per ISA; the
// layout does not depend on it.
#include <omp.h>

#include <algorithm>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu/epilogue.h"
#include "cpu/gemm_core.h"
#include "cpu/isa_kernels.h"
#include "cpu/numeric.h"
#include "zaya_rt/packed_linear.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {
namespace {

constexpr int kPanel = static_cast<int>(kPackedPanel);
constexpr int kRowsPerChunk = 8;
constexpr int64_t kParallelMinFlops = 1 << 20;
constexpr int64_t kBlockRows = 64;        // panel rows per block (12 KB) when few row chunks share the panel
constexpr int64_t kMaxBlockedChunks = 4;  // up to 32 rows of x
constexpr int64_t kPrefetchRows = 24;     // panel rows ahead (4.5 KB)

template <typename T> uint32_t bits16(T v) {
  uint16_t b;
  std::memcpy(&b, &v, 2);
  return b;
}

template <typename T> void pack_t(const PackLinearParams& p) {
  const T* w = static_cast<const T*>(p.weight);
  const int64_t panels = packed_linear_panels(p.N), rows = packed_linear_rows(p.dtype, p.K);
  float* bias_out = static_cast<float*>(p.packed) + panels * rows * kPanel;
#pragma omp parallel for schedule(static) if (p.N * p.K >= kParallelMinFlops)
  for (int64_t panel = 0; panel < panels; ++panel) {
    for (int c = 0; c < kPanel; ++c) {
      const int64_t n = panel * kPanel + c;
      const T* row = n < p.N ? w + n * p.weight_row_stride : nullptr;
      if constexpr (std::is_same_v<T, bf16>) {
        uint32_t* dst = static_cast<uint32_t*>(p.packed) + panel * rows * kPanel + c;
        for (int64_t j = 0; j < rows; ++j) {
          const uint32_t lo = row ? bits16(row[2 * j]) : 0u;
          const uint32_t hi = row && 2 * j + 1 < p.K ? bits16(row[2 * j + 1]) : 0u;
          dst[j * kPanel] = lo | hi << 16;
        }
      } else {
        float* dst = static_cast<float*>(p.packed) + panel * rows * kPanel + c;
        for (int64_t k = 0; k < rows; ++k) dst[k * kPanel] = row ? load(row, k) : 0.f;
      }
      bias_out[n] = n < p.N && p.bias ? load(static_cast<const T*>(p.bias), n) : 0.f;
    }
  }
}

#if defined(__AVX512F__)
// The end of a chunk: its MR x 48 accumulators go back to `tile` (more blocks follow) or, on the last block, to
// out (the first `cols` columns) plus the bias.
template <typename T, int MR>
inline void finish_chunk(const __m512* acc, float* tile, bool last, const float* bias, T* out, int64_t out_stride,
                         int cols) {
  if (!last) {
#pragma GCC unroll 24
    for (int i = 0; i < MR * 3; ++i) _mm512_storeu_ps(tile + 16 * i, acc[i]);
    return;
  }
  __mmask16 masks[3];
  for (int v = 0; v < 3; ++v) {
    const int n = std::clamp(cols - 16 * v, 0, 16);
    masks[v] = static_cast<__mmask16>((1u << n) - 1u);
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 3
    for (int v = 0; v < 3; ++v)
      store_vec(out + m * out_stride + 16 * v, _mm512_add_ps(acc[m * 3 + v], _mm512_loadu_ps(bias + 16 * v)),
                masks[v]);
}

// Rows [j0, j1) of one panel for MR rows of x (a: MR fp32 rows of lda floats, indexed by absolute k). The
// accumulators start from zero (first) or `tile`, and end in `tile` or, on the last block, in out (48 columns,
// the first `cols` valid) plus the bias.
template <typename T, int MR>
void panel_chunk(const float* a, int64_t lda, const void* panel, int64_t j0, int64_t j1, float* tile, bool first,
                 bool last, const float* bias, T* out, int64_t out_stride, int cols) {
  __m512 acc[MR * 3];
#pragma GCC unroll 24
  for (int i = 0; i < MR * 3; ++i) acc[i] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(tile + 16 * i);
  if constexpr (std::is_same_v<T, bf16>) {
    const uint32_t* b = static_cast<const uint32_t*>(panel) + j0 * kPanel;
    const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
    for (int64_t j = j0; j < j1; ++j, b += kPanel) {
      __m512 even[3], odd[3];
#pragma GCC unroll 3
      for (int v = 0; v < 3; ++v) {
        _mm_prefetch(reinterpret_cast<const char*>(b + kPrefetchRows * kPanel + 16 * v), _MM_HINT_T0);
        const __m512i pairs = _mm512_loadu_si512(b + 16 * v);
        even[v] = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
        odd[v] = _mm512_castsi512_ps(_mm512_and_si512(pairs, high));
      }
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        const __m512 ae = _mm512_set1_ps(a[m * lda + 2 * j]);
#pragma GCC unroll 3
        for (int v = 0; v < 3; ++v) acc[m * 3 + v] = _mm512_fmadd_ps(ae, even[v], acc[m * 3 + v]);
        const __m512 ao = _mm512_set1_ps(a[m * lda + 2 * j + 1]);
#pragma GCC unroll 3
        for (int v = 0; v < 3; ++v) acc[m * 3 + v] = _mm512_fmadd_ps(ao, odd[v], acc[m * 3 + v]);
      }
    }
  } else {
    const float* b = static_cast<const float*>(panel) + j0 * kPanel;
    for (int64_t k = j0; k < j1; ++k, b += kPanel) {
      __m512 bv[3];
#pragma GCC unroll 3
      for (int v = 0; v < 3; ++v) {
        _mm_prefetch(reinterpret_cast<const char*>(b + kPrefetchRows * kPanel + 16 * v), _MM_HINT_T0);
        bv[v] = _mm512_loadu_ps(b + 16 * v);
      }
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        const __m512 av = _mm512_set1_ps(a[m * lda + k]);
#pragma GCC unroll 3
        for (int v = 0; v < 3; ++v) acc[m * 3 + v] = _mm512_fmadd_ps(av, bv[v], acc[m * 3 + v]);
      }
    }
  }
  finish_chunk<T, MR>(acc, tile, last, bias, out, out_stride, cols);
}

#if defined(__AVX512BF16__)
// panel_chunk for a bf16 x and weight through vdpbf16ps: a holds MR rows of x as bf16 pairs (lda pairs apart).
template <int MR>
void panel_chunk_dot(const uint32_t* a, int64_t lda, const void* panel, int64_t j0, int64_t j1, float* tile,
                     bool first, bool last, const float* bias, bf16* out, int64_t out_stride, int cols) {
  __m512 acc[MR * 3];
#pragma GCC unroll 24
  for (int i = 0; i < MR * 3; ++i) acc[i] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(tile + 16 * i);
  const uint32_t* b = static_cast<const uint32_t*>(panel) + j0 * kPanel;
  for (int64_t j = j0; j < j1; ++j, b += kPanel) {
    __m512bh pairs[3];
#pragma GCC unroll 3
    for (int v = 0; v < 3; ++v) {
      _mm_prefetch(reinterpret_cast<const char*>(b + kPrefetchRows * kPanel + 16 * v), _MM_HINT_T0);
      pairs[v] = (__m512bh)_mm512_loadu_si512(b + 16 * v);
    }
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[m * lda + j]));
#pragma GCC unroll 3
      for (int v = 0; v < 3; ++v) acc[m * 3 + v] = _mm512_dpbf16_ps(acc[m * 3 + v], av, pairs[v]);
    }
  }
  finish_chunk<bf16, MR>(acc, tile, last, bias, out, out_stride, cols);
}

void chunk_dispatch_dot(int mr, const uint32_t* a, int64_t lda, const void* panel, int64_t j0, int64_t j1,
                        float* tile, bool first, bool last, const float* bias, bf16* out, int64_t out_stride,
                        int cols) {
  switch (mr) {
#define ZAYA_RT_PANEL_CASE(R) \
  case R: return panel_chunk_dot<R>(a, lda, panel, j0, j1, tile, first, last, bias, out, out_stride, cols);
    ZAYA_RT_PANEL_CASE(1) ZAYA_RT_PANEL_CASE(2) ZAYA_RT_PANEL_CASE(3) ZAYA_RT_PANEL_CASE(4)
    ZAYA_RT_PANEL_CASE(5) ZAYA_RT_PANEL_CASE(6) ZAYA_RT_PANEL_CASE(7) ZAYA_RT_PANEL_CASE(8)
#undef ZAYA_RT_PANEL_CASE
  }
}
#endif
#else
template <typename T, int MR>
void panel_chunk(const float* a, int64_t lda, const void* panel, int64_t j0, int64_t j1, float* tile, bool first,
                 bool last, const float* bias, T* out, int64_t out_stride, int cols) {
  float acc[MR][kPanel] = {};
  if (!first) std::memcpy(acc, tile, sizeof(acc));
  float bv0[kPanel], bv1[kPanel];
  for (int64_t j = j0; j < j1; ++j) {
    if constexpr (std::is_same_v<T, bf16>) {
      const uint32_t* b = static_cast<const uint32_t*>(panel) + j * kPanel;
      for (int c = 0; c < kPanel; ++c) {
        const uint32_t lo = b[c] << 16, hi = b[c] & 0xffff0000u;
        std::memcpy(&bv0[c], &lo, 4);
        std::memcpy(&bv1[c], &hi, 4);
      }
      for (int m = 0; m < MR; ++m) {
        const float ae = a[m * lda + 2 * j], ao = a[m * lda + 2 * j + 1];
#pragma omp simd
        for (int c = 0; c < kPanel; ++c) acc[m][c] = acc[m][c] + ae * bv0[c] + ao * bv1[c];
      }
    } else {
      const float* b = static_cast<const float*>(panel) + j * kPanel;
      for (int m = 0; m < MR; ++m) {
        const float av = a[m * lda + j];
#pragma omp simd
        for (int c = 0; c < kPanel; ++c) acc[m][c] += av * b[c];
      }
    }
  }
  if (!last) {
    std::memcpy(tile, acc, sizeof(acc));
    return;
  }
  for (int m = 0; m < MR; ++m)
    for (int c = 0; c < cols; ++c) store(out + m * out_stride, c, acc[m][c] + bias[c]);
}
#endif

template <typename T>
void chunk_dispatch(int mr, const float* a, int64_t lda, const void* panel, int64_t j0, int64_t j1, float* tile,
                    bool first, bool last, const float* bias, T* out, int64_t out_stride, int cols) {
  switch (mr) {
#define ZAYA_RT_PANEL_CASE(R) \
  case R: return panel_chunk<T, R>(a, lda, panel, j0, j1, tile, first, last, bias, out, out_stride, cols);
    ZAYA_RT_PANEL_CASE(1) ZAYA_RT_PANEL_CASE(2) ZAYA_RT_PANEL_CASE(3) ZAYA_RT_PANEL_CASE(4)
    ZAYA_RT_PANEL_CASE(5) ZAYA_RT_PANEL_CASE(6) ZAYA_RT_PANEL_CASE(7) ZAYA_RT_PANEL_CASE(8)
#undef ZAYA_RT_PANEL_CASE
  }
}

// Whether a bf16 linear takes vdpbf16ps: the choice the bf16 GEMMs make on this host (measured once).
template <typename T> bool use_dot() {
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, bf16>) return bf16_gemm_rates().dot_chosen;
#endif
  return false;
}

template <typename T, bool Dot> void linear_t(const PackedLinearParams& p) {
  constexpr bool kDot = Dot && std::is_same_v<T, bf16> && kHasBf16Dot;
  const int64_t M = p.M, N = p.N, K = p.K;
  const int64_t lda = (K + 1) / 2 * 2;
  float* a = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p.workspace) + 63) & ~uintptr_t{63});
  uint32_t* a_pairs = reinterpret_cast<uint32_t*>(a);  // kDot: x rows as bf16 pairs, lda / 2 pairs apart
  const T* x = static_cast<const T*>(p.x);
#pragma omp parallel for schedule(static) if (M * K >= kParallelMinFlops)
  for (int64_t m = 0; m < M; ++m) {
    const T* row = x + m * p.x_row_stride;
    if constexpr (kDot) {
      for (int64_t j = 0; j < lda / 2; ++j)
        a_pairs[m * (lda / 2) + j] = bits16(row[2 * j]) | (2 * j + 1 < K ? bits16(row[2 * j + 1]) << 16 : 0u);
    } else {
      for (int64_t k = 0; k < K; ++k) a[m * lda + k] = load(row, k);
      if (lda > K) a[m * lda + K] = 0.f;
    }
  }
  const int64_t panels = packed_linear_panels(N), rows = packed_linear_rows(p.dtype, K);
  const int64_t panel_floats = rows * kPanel;
  const float* bias = static_cast<const float*>(p.packed) + panels * panel_floats;
  const int64_t chunks = (M + kRowsPerChunk - 1) / kRowsPerChunk;
  T* out = static_cast<T*>(p.out);
  const int threads = M * N * K >= kParallelMinFlops ? static_cast<int>(std::min<int64_t>(panels, omp_get_max_threads())) : 1;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t panel = 0; panel < panels; ++panel) {
    const void* b = static_cast<const uint32_t*>(p.packed) + panel * panel_floats;
    const int cols = static_cast<int>(std::min<int64_t>(kPanel, N - panel * kPanel));
    // A few chunks take the panel in blocks of rows, all chunks per block, so that each block is read from
    // memory once and from L1 after that; many chunks run over the whole panel each (it stays in L2).
    const int64_t block = chunks <= kMaxBlockedChunks ? kBlockRows : rows;
    float tile[kMaxBlockedChunks][kRowsPerChunk * kPanel];
    for (int64_t j0 = 0; j0 < rows; j0 += block) {
      const int64_t j1 = std::min(rows, j0 + block);
      for (int64_t c = 0, m0 = 0; c < chunks; ++c) {
        const int mr = static_cast<int>(M / chunks + (c < M % chunks ? 1 : 0));
        float* t = block < rows ? tile[c] : nullptr;
        T* o = out + m0 * p.out_row_stride + panel * kPanel;
#if defined(__AVX512BF16__)
        if constexpr (kDot) {
          chunk_dispatch_dot(mr, a_pairs + m0 * (lda / 2), lda / 2, b, j0, j1, t, j0 == 0, j1 == rows,
                             bias + panel * kPanel, o, p.out_row_stride, cols);
          m0 += mr;
          continue;
        }
#endif
        chunk_dispatch<T>(mr, a + m0 * lda, lda, b, j0, j1, t, j0 == 0, j1 == rows, bias + panel * kPanel, o,
                          p.out_row_stride, cols);
        m0 += mr;
      }
    }
  }
}

}  // namespace

const char* pack_linear_weight(const PackLinearParams& p) {
  ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, pack_t<T>(p));
  return nullptr;
}

const char* packed_linear(const PackedLinearParams& p) {
  if (p.M == 0) return nullptr;
  ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, use_dot<T>() ? linear_t<T, true>(p) : linear_t<T, false>(p));
  return nullptr;
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
