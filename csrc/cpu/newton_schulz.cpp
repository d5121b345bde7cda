// Batched Newton-Schulz orthogonalisation (zaya_rt/newton_schulz.h) on the register-tiled CPU GEMM micro-kernel
// (cpu/gemm_core.h). Per step three products, each one parallel pass (two barriers) over every matrix of a chunk:
//   S = X X^T         only the tiles on or above the diagonal, mirrored into the lower triangle;
//   P = b S + c S S   the same over S (S S = S S^T since S is symmetric), P mirrored likewise;
//   X' = a X + P X    P's rows against the rows of X^T.
// The symmetric products cost about half of their full GEMMs, so a step costs about 1.5 m^2 n + 0.5 m^3
// multiply-adds instead of 2 m^2 n + m^3. Each product packs every panel of its operands once (bf16 pairs by
// 32-bit register transposes, X's columns by interleaving row pairs).
// The last step writes straight into the output, transposed back where rows > cols.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/epilogue.h"
#include "cpu/gemm_core.h"
#include "cpu/newton_schulz_shape.h"
#include "cpu/numeric.h"
#include "cpu/workspace_carve.h"
#include "zaya_rt/newton_schulz.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {
namespace {


// A [rows, cols] matrix addressed through strides.
template <typename T> struct View {
  T* base;
  int64_t rs, cs;
  inline T* at(int64_t r, int64_t c) const { return base + r * rs + c * cs; }
};

// X0 = round(X / max(round(||X||_F), round(eps))) for one matrix; X read through `in`.
template <typename T> void normalise(const View<const T>& in, int64_t m, int64_t n, float eps, T* x0) {
  double ss = 0.0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const double v = load(in.at(i, j), 0);
      ss += v * v;
    }
  const float norm = round_to<T>(static_cast<float>(std::sqrt(ss)));
  const float div = std::max(norm, round_to<T>(eps));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) store(x0 + i * n, j, load(in.at(i, j), 0) / div);
}

// dst[c] = round(alpha * acc[c] + beta * d[c]) for c < n (d unread when beta is 0); dst may be d.
template <typename T> inline void axpy_row(T* dst, const float* acc, float alpha, const T* d, float beta, int n) {
  int c = 0;
#if defined(__AVX512F__)
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (; c < n; c += 16) {
    const int k = std::min(16, n - c);
    const __mmask16 mask = static_cast<__mmask16>((1u << k) - 1u);
    __m512 v = _mm512_mul_ps(va, _mm512_maskz_loadu_ps(mask, acc + c));
    if (beta != 0.f) v = _mm512_fmadd_ps(vb, load_floats(d + c, k), v);
    store_vec(dst + c, v, mask);
  }
#endif
  for (; c < n; ++c) store(dst, c, alpha * acc[c] + (beta != 0.f ? beta * load(d, c) : 0.f));
}

// Copies the [mr, nr] block at (m0, n0) of a row-major matrix (row stride ld) into its transpose at (n0, m0)
// (row stride ldt), row by row of the transpose.
template <typename T> inline void transpose_block(const T* src, int64_t ld, T* dst, int64_t ldt, int64_t m0, int mr,
                                                  int64_t n0, int nr) {
  for (int q = 0; q < nr; ++q)
    for (int r = 0; r < mr; ++r) dst[(n0 + q) * ldt + m0 + r] = src[(m0 + r) * ld + n0 + q];
}

// Mirrors the upper-triangle part of the [mr, nr] tile at (m0, n0) of a symmetric [ld, ld] matrix below the
// diagonal.
template <typename T> inline void mirror(T* sm, int64_t ld, int64_t m0, int mr, int64_t n0, int nr) {
  for (int q = 0; q < nr; ++q) {
    const int64_t col = n0 + q;
    for (int r = 0; r < mr && m0 + r < col; ++r) sm[col * ld + m0 + r] = sm[(m0 + r) * ld + col];
  }
}

// Packs `count` (<= LANES) rows of a row-major [*, K] matrix, from row r0, into [Kp][LANES] entries.
template <int LANES, typename T, bool Dot>
void pack_panel(const T* m, int64_t K, int64_t r0, int count, typename PackMode<T, Dot>::Entry* dst) {
#if defined(__AVX512BF16__)
  if constexpr (PackMode<T, Dot>::bf16) {
    // A row's bf16 pairs are its 32-bit words: 16 x 16 word blocks transposed in registers.
    const int64_t kp = (K + 1) / 2;
    __m512 r[16];
    for (int64_t q0 = 0; q0 < kp; q0 += 16) {
      const int qn = static_cast<int>(std::min<int64_t>(16, kp - q0));
      const int en = static_cast<int>(std::min<int64_t>(32, K - 2 * q0));
      const __mmask32 mask = en == 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << en) - 1u);
      for (int i0 = 0; i0 < LANES; i0 += 16) {
        const int lanes = std::min(16, LANES - i0);
        for (int i = 0; i < 16; ++i)
          r[i] = i < lanes && i0 + i < count
                     ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(mask, m + (r0 + i0 + i) * K + 2 * q0))
                     : _mm512_setzero_ps();
        transpose16(r);
        const __mmask16 lane_mask = static_cast<__mmask16>((1u << lanes) - 1u);
        float* out = reinterpret_cast<float*>(dst);
        for (int k = 0; k < qn; ++k) _mm512_mask_storeu_ps(out + (q0 + k) * LANES + i0, lane_mask, r[k]);
      }
    }
    return;
  }
#endif
  pack_rows<LANES, T, Dot>(Source<T>{m + r0 * K, K, 1}, 0, count, K, dst);
}

// Packs columns n0 .. n0 + nr (nr <= kNR) of a row-major [K, ld] matrix as the rows of a B panel ([Kp][kNR]
// entries): the panel of X^T without forming X^T.
template <typename T, bool Dot>
void pack_columns(const T* m, int64_t ld, int64_t K, int64_t n0, int nr, typename PackMode<T, Dot>::Entry* dst) {
#if defined(__AVX512BF16__)
  if constexpr (PackMode<T, Dot>::bf16) {
    static_assert(kNR == 32, "one 32-lane bf16 vector per row segment");
    // Entry (q, c) = bits of m[2q][c] | bits of m[2q + 1][c] << 16: two row segments interleaved by vpermt2w.
    alignas(64) static constexpr uint16_t kLo[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                    8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
    const __m512i lo_idx = _mm512_load_si512(kLo);
    const __m512i hi_idx = _mm512_add_epi16(lo_idx, _mm512_set1_epi16(16));
    const __mmask32 mask = nr == 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << nr) - 1u);
    uint32_t* out = reinterpret_cast<uint32_t*>(dst);
    for (int64_t q = 0; q < (K + 1) / 2; ++q) {
      const __m512i even = _mm512_maskz_loadu_epi16(mask, m + 2 * q * ld + n0);
      const __m512i odd = 2 * q + 1 < K ? _mm512_maskz_loadu_epi16(mask, m + (2 * q + 1) * ld + n0) : _mm512_setzero_si512();
      _mm512_storeu_si512(out + q * kNR, _mm512_permutex2var_epi16(even, lo_idx, odd));
      _mm512_storeu_si512(out + q * kNR + 16, _mm512_permutex2var_epi16(even, hi_idx, odd));
    }
    return;
  }
#endif
  if constexpr (!PackMode<T, Dot>::bf16) {
    for (int64_t k = 0; k < K; ++k) {
      float* row = reinterpret_cast<float*>(dst) + k * kNR;
      for (int c = 0; c < kNR; ++c) row[c] = c < nr ? load(m + k * ld + n0, c) : 0.f;
    }
  }
}

// Packed K entries per slice of a product (a 16 KiB slice of a B panel).
constexpr int64_t kSliceK = 128;

// C = A B^T for `count` matrices, A [M, K] at a + mt * a_step and B [N, K] at b + mt * b_step, rows contiguous
// (with b_columns: C = A B for B [K, N] row-major).
// One parallel pass: every A panel is packed once up front; then each task (one matrix's kNR-row panel of B,
// packed into the thread's buffer `pb`) sweeps the A panels in K slices, only the panels at or above the
// diagonal when `symmetric` (C's lower triangle is left to the epilogue).
// epi(mt, tile[kMR][kNR], m0, mr, n0, nr) receives C_mt[m0 + r][n0 + c].
template <typename T, bool Dot, typename Epi>
void products(int64_t count, const T* a, int64_t a_step, const T* b, int64_t b_step, int64_t M, int64_t N, int64_t K,
              bool symmetric, bool b_columns, typename PackMode<T, Dot>::Entry* pa, typename PackMode<T, Dot>::Entry* pb,
              int threads, const Epi& epi) {
  using Entry = typename PackMode<T, Dot>::Entry;
  const int64_t kp = packed_k<T, Dot>(K);
  const int64_t a_panels = (M + kMR - 1) / kMR, b_panels = (N + kNR - 1) / kNR;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t idx = 0; idx < count * a_panels; ++idx) {
      const int64_t mt = idx / a_panels, q = idx % a_panels;
      pack_panel<kMR, T, Dot>(a + mt * a_step, K, q * kMR, static_cast<int>(std::min<int64_t>(kMR, M - q * kMR)),
                              pa + idx * kMR * kp);
    }
    Entry* pbj = pb + static_cast<int64_t>(omp_get_thread_num()) * kNR * kp;
    thread_local std::vector<float> tiles;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < count * b_panels; ++t) {
      const int64_t mt = t / b_panels, j = t % b_panels;
      const int64_t n0 = j * kNR;
      const int nr = static_cast<int>(std::min<int64_t>(kNR, N - n0));
      const int64_t i_end = symmetric ? std::min(a_panels, (n0 + nr + kMR - 1) / kMR) : a_panels;
      if (tiles.size() < static_cast<size_t>(i_end * kMR * kNR)) tiles.resize(i_end * kMR * kNR);
      if (b_columns) pack_columns<T, Dot>(b + mt * b_step, N, K, n0, nr, pbj);
      else pack_panel<kNR, T, Dot>(b + mt * b_step, K, n0, nr, pbj);
      // K slices outer: the B panel's slice stays in L1 while the A panels' slices stream past.
      for (int64_t k0 = 0; k0 < kp; k0 += kSliceK) {
        const int64_t kc = std::min(kSliceK, kp - k0);
        for (int64_t i = 0; i < i_end; ++i)
          micro_kernel<T, Dot>(kc, pa + (mt * a_panels + i) * kMR * kp + k0 * kMR, pbj + k0 * kNR,
                               tiles.data() + i * kMR * kNR, k0 > 0);
      }
      for (int64_t i = 0; i < i_end; ++i)
        epi(mt, tiles.data() + i * kMR * kNR, i * kMR, static_cast<int>(std::min<int64_t>(kMR, M - i * kMR)), n0, nr);
    }
  }
}

template <typename T, bool Dot> const char* newton_schulz_t(const NewtonSchulzParams& p) {
  using Entry = typename PackMode<T, Dot>::Entry;
  const bool transposed = p.rows > p.cols;
  const int64_t m = std::min(p.rows, p.cols), n = std::max(p.rows, p.cols);
  const int threads = omp_get_max_threads();
  const int64_t chunk = newton_schulz_cpu_chunk(p.batch, m, n, sizeof(T));
  char* cursor = static_cast<char*>(p.workspace);
  T* xs = carve<T>(cursor, chunk * m * n);  // the iterates X [m, n], updated in place
  T* s = carve<T>(cursor, chunk * m * m);
  T* pm = carve<T>(cursor, chunk * m * m);
  Entry* pa = carve<Entry>(cursor, newton_schulz_cpu_a_entries(chunk, m, n));
  Entry* pb = carve<Entry>(cursor, newton_schulz_cpu_b_entries(threads, n));
  if (cursor > static_cast<char*>(p.workspace) + p.workspace_bytes) return "workspace too small";
  const float a = p.a, b = p.b, c = p.c;
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);

  for (int64_t b0 = 0; b0 < p.batch; b0 += chunk) {
    const int64_t count = std::min(chunk, p.batch - b0);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t mt = 0; mt < count; ++mt) {
      const T* src = x + (b0 + mt) * p.x_batch_stride;
      const View<const T> in = transposed ? View<const T>{src, p.x_col_stride, p.x_row_stride}
                                          : View<const T>{src, p.x_row_stride, p.x_col_stride};
      T* x0 = xs + mt * m * n;
      normalise(in, m, n, p.eps, x0);
    }
    for (int64_t step = 0; step < p.steps; ++step) {
      // S = X X^T: upper triangle, mirrored.
      products<T, Dot>(count, xs, m * n, xs, m * n, m, m, n, true, false, pa, pb, threads,
                       [&](int64_t mt, const float* tile, int64_t m0, int mr, int64_t n0, int nr) {
                         T* sm = s + mt * m * m;
                         for (int r = 0; r < mr; ++r) {
                           const int q0 = static_cast<int>(std::clamp<int64_t>(m0 + r - n0, 0, nr));
                           axpy_row(sm + (m0 + r) * m + n0 + q0, tile + r * kNR + q0, 1.f, sm, 0.f, nr - q0);
                         }
                         mirror(sm, m, m0, mr, n0, nr);
                       });
      // P = b S + c S S (S symmetric, so S S = S S^T): upper triangle, mirrored.
      products<T, Dot>(count, s, m * m, s, m * m, m, m, m, true, false, pa, pb, threads,
                       [&](int64_t mt, const float* tile, int64_t m0, int mr, int64_t n0, int nr) {
                         const T* sm = s + mt * m * m;
                         T* pmm = pm + mt * m * m;
                         for (int r = 0; r < mr; ++r) {
                           const int q0 = static_cast<int>(std::clamp<int64_t>(m0 + r - n0, 0, nr));
                           const int64_t at = (m0 + r) * m + n0 + q0;
                           axpy_row(pmm + at, tile + r * kNR + q0, c, sm + at, b, nr - q0);
                         }
                         mirror(pmm, m, m0, mr, n0, nr);
                       });
      // X' = a X + P X, B panels packed from X's columns. X is updated in place: each task packs its columns
      // of X before its tiles land, and no other task reads them.
      const bool last = step + 1 == p.steps;
      products<T, Dot>(count, pm, m * m, xs, m * n, m, n, m, false, true, pa, pb, threads,
                       [&](int64_t mt, const float* tile, int64_t m0, int mr, int64_t n0, int nr) {
                         T* xm = xs + mt * m * n;
                         for (int r = 0; r < mr; ++r) {
                           T* row = xm + (m0 + r) * n + n0;
                           axpy_row(row, tile + r * kNR, 1.f, row, a, nr);
                         }
                         if (last && transposed) {
                           transpose_block(xm, n, out + (b0 + mt) * m * n, m, m0, mr, n0, nr);
                         } else if (last) {
                           T* o = out + (b0 + mt) * m * n;
                           for (int r = 0; r < mr; ++r)
                             std::copy(xm + (m0 + r) * n + n0, xm + (m0 + r) * n + n0 + nr, o + (m0 + r) * n + n0);
                         }
                       });
    }
    if (p.steps == 0) {
      for (int64_t mt = 0; mt < count; ++mt) {
        const View<T> dst = transposed ? View<T>{out + (b0 + mt) * m * n, 1, m} : View<T>{out + (b0 + mt) * m * n, n, 1};
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j) *dst.at(i, j) = xs[mt * m * n + i * n + j];
      }
    }
  }
  return nullptr;
}

}  // namespace

const char* newton_schulz(const NewtonSchulzParams& p, bool bf16_dot) {
  if (p.batch == 0 || p.rows == 0 || p.cols == 0) return nullptr;
  if (p.dtype == DType::kFloat32) return newton_schulz_t<float, false>(p);
  if (p.dtype != DType::kBFloat16) return "dtype must be float32 or bfloat16";
  if (kHasBf16Dot && bf16_dot) return newton_schulz_t<bf16, true>(p);
  return newton_schulz_t<bf16, false>(p);
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
