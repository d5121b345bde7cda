// The SIMT shared-memory tiled grouped GEMM (every backend and dtype, any strides) and its weight-gradient
// kernel: fp32 tiles in shared memory, register blocks, the next tile prefetched into registers.
#pragma once
#include "cuda/moe_gemm_common.cuh"

namespace zaya_rt::gpu {
namespace moe_detail {

template <int BM_, int BN_, int BK_, int TM_, int TN_>
struct SimtShape {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int kThreadsN = BN / TN, kThreadsM = BM / TM;
  static constexpr int kThreads = kThreadsM * kThreadsN;
  static constexpr int kLdA = BM + 4, kLdB = BN + 4;  // shared rows of fp32, [BK][BM + 4] and [BK][BN + 4]
  static_assert(TN % 2 == 0 && BN % 2 == 0, "thread columns come in two halves (SwiGLU pairs)");
};
using SimtBig = SimtShape<128, 128, 16, 8, 8>;   // 256 threads, 8x8 outputs each
using SimtSmall = SimtShape<32, 128, 16, 4, 4>;  // 256 threads, 4x4 outputs each (few rows per group)

// v = V consecutive elements at src (one vector load; with V == 1 the element at src), or zeros when !ok.
template <int V, typename T>
ZAYA_RT_DEVICE_INLINE void load_or_zero(const T* src, bool ok, float (&v)[V]) {
  if (ok) {
    if constexpr (V > 1) {
      load_n<V>(src, v);
    } else {
      v[0] = to_float(*src);
    }
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) v[e] = 0.f;
  }
}

// Loads an R x BK tile of an operand whose k elements of a row are `ks` apart (V consecutive ones per load,
// then ks == 1 and the k extent is a multiple of V), into shared memory transposed: smem[k][r], fp32.
// Each thread keeps the same rows for the whole mainloop.
template <typename T, int R, int BK, int V, int NT>
struct KMajorTile {
  static constexpr int kChunks = BK / V;
  static_assert(BK % V == 0 && NT % kChunks == 0, "tile chunks must spread evenly over the threads");
  static constexpr int kRowsPerPass = NT / kChunks;
  static constexpr int kPasses = (R + kRowsPerPass - 1) / kRowsPerPass;
  const T* row[kPasses];
  int64_t ks, kext;
  int kc, r0;
  float v[kPasses][V];

  template <class Rows>
  ZAYA_RT_DEVICE_INLINE void init(const Rows& rows, int64_t k_stride, int64_t k_extent) {
    kc = threadIdx.x % kChunks;
    r0 = threadIdx.x / kChunks;
    ks = k_stride;
    kext = k_extent;
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const int r = r0 + p * kRowsPerPass;
      row[p] = r < R ? rows(r) : nullptr;
    }
  }
  ZAYA_RT_DEVICE_INLINE void load(int64_t k0) {
    const int64_t k = k0 + kc * V;
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const bool ok = row[p] != nullptr && k < kext;
      load_or_zero<V>(ok ? row[p] + k * ks : nullptr, ok, v[p]);
    }
  }
  ZAYA_RT_DEVICE_INLINE void store(float* smem, int ld) const {
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const int r = r0 + p * kRowsPerPass;
      if (r < R) {
#pragma unroll
        for (int e = 0; e < V; ++e) smem[(kc * V + e) * ld + r] = v[p][e];
      }
    }
  }
};

// Loads an R x BK tile of an operand stored along r (element (r, k) at base + r * is + k * ks, V consecutive
// r per load, then is == 1 and the r extent is a multiple of V) into smem[k][r], fp32.
template <typename T, int R, int BK, int V, int NT>
struct IMajorTile {
  static constexpr int kChunks = R / V;
  static_assert(R % V == 0 && NT % kChunks == 0, "tile chunks must spread evenly over the threads");
  static constexpr int kKPerPass = NT / kChunks;
  static constexpr int kPasses = (BK + kKPerPass - 1) / kKPerPass;
  const T* base;  // element (ic * V, 0), or null when that chunk is outside the operand
  int64_t ks, kext;
  int ic, k0l;
  float v[kPasses][V];

  ZAYA_RT_DEVICE_INLINE void init(const T* op, int64_t i_stride, int64_t k_stride, int64_t i_extent,
                                  int64_t k_extent) {
    ic = threadIdx.x % kChunks;
    k0l = threadIdx.x / kChunks;
    base = ic * V < i_extent ? op + static_cast<int64_t>(ic) * V * i_stride : nullptr;
    ks = k_stride;
    kext = k_extent;
  }
  ZAYA_RT_DEVICE_INLINE void load(int64_t k0) {
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const int kl = k0l + p * kKPerPass;
      const int64_t k = k0 + kl;
      const bool ok = base != nullptr && kl < BK && k < kext;
      load_or_zero<V>(ok ? base + k * ks : nullptr, ok, v[p]);
    }
  }
  ZAYA_RT_DEVICE_INLINE void store(float* smem, int ld) const {
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const int kl = k0l + p * kKPerPass;
      if (kl < BK) {
#pragma unroll
        for (int e = 0; e < V; ++e) smem[kl * ld + ic * V + e] = v[p][e];
      }
    }
  }
};

// acc[i][j] += sum over k < kext of A(row_i, k) * B(col_j, k) for this thread's rows ty*TM + i and columns
// col_j = tx*TN/2 + j (j < TN/2) and BN/2 + tx*TN/2 + (j - TN/2). One shared buffer; the next tile is
// fetched into registers while the current one is multiplied.
template <class S, class LA, class LB>
ZAYA_RT_DEVICE_INLINE void simt_mainloop(LA& la, LB& lb, int64_t kext, float* As, float* Bs,
                                         float (&acc)[S::TM][S::TN]) {
  if (kext <= 0) return;
  const int tx = threadIdx.x % S::kThreadsN, ty = threadIdx.x / S::kThreadsN;
  constexpr int kHalf = S::TN / 2;
  la.load(0);
  lb.load(0);
  la.store(As, S::kLdA);
  lb.store(Bs, S::kLdB);
  __syncthreads();
  for (int64_t k0 = 0; k0 < kext; k0 += S::BK) {
    const bool more = k0 + S::BK < kext;
    if (more) {
      la.load(k0 + S::BK);
      lb.load(k0 + S::BK);
    }
#pragma unroll
    for (int kk = 0; kk < S::BK; ++kk) {
      float a[S::TM], b[S::TN];
#pragma unroll
      for (int i = 0; i < S::TM; ++i) a[i] = As[kk * S::kLdA + ty * S::TM + i];
#pragma unroll
      for (int j = 0; j < kHalf; ++j) {
        b[j] = Bs[kk * S::kLdB + tx * kHalf + j];
        b[kHalf + j] = Bs[kk * S::kLdB + S::BN / 2 + tx * kHalf + j];
      }
#pragma unroll
      for (int i = 0; i < S::TM; ++i)
#pragma unroll
        for (int j = 0; j < S::TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
    if (more) {
      la.store(As, S::kLdA);
      lb.store(Bs, S::kLdB);
      __syncthreads();
    }
  }
}

// Epilogue of a SIMT tile: rows row0 + ty*TM + i below row_end; columns from col0 (tile's first output
// column) below ncols. SwiGLU pairs column j with j + TN/2 (B rows BN/2 apart: gate and up).
template <class S, typename T>
ZAYA_RT_DEVICE_INLINE void simt_epilogue(const EpiArgs& e, const float (&acc)[S::TM][S::TN], int64_t row0,
                                         int64_t row_end, int64_t col0, int64_t ncols) {
  const int tx = threadIdx.x % S::kThreadsN, ty = threadIdx.x / S::kThreadsN;
  constexpr int kHalf = S::TN / 2;
#pragma unroll
  for (int i = 0; i < S::TM; ++i) {
    const int64_t r = row0 + ty * S::TM + i;
    if (r >= row_end) continue;
    if (e.kind == Epi::kSwiGLU) {
      float v[kHalf];
#pragma unroll
      for (int j = 0; j < kHalf; ++j) v[j] = swiglu<T>(acc[i][j], acc[i][kHalf + j]);
      const int64_t c = col0 + tx * kHalf;
      if (c < ncols) write_span<T>(e, r, c, v, static_cast<int>(lmin(kHalf, ncols - c)));
    } else {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t c = col0 + h * (S::BN / 2) + tx * kHalf;
        float v[kHalf];
#pragma unroll
        for (int j = 0; j < kHalf; ++j) v[j] = acc[i][h * kHalf + j];
        if (c < ncols) write_span<T>(e, r, c, v, static_cast<int>(lmin(kHalf, ncols - c)));
      }
    }
  }
}

template <class S, typename T, int V>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(S::kThreads) grouped_gemm_simt_kernel(const FwdArgs p) {
  __shared__ float As[S::BK * S::kLdA];
  __shared__ float Bs[S::BK * S::kLdB];
  __shared__ int scan[S::kThreads];
  __shared__ RowTile tile;
  if (!find_row_tile(blockIdx.x, p.offsets, p.G, p.M, S::BM, scan, &tile)) return;
  const bool tail = tile.group == p.G;
  if (tail && !p.zero_tail) return;
  float acc[S::TM][S::TN];
#pragma unroll
  for (int i = 0; i < S::TM; ++i)
#pragma unroll
    for (int j = 0; j < S::TN; ++j) acc[i][j] = 0.f;
  const int64_t n_tile = blockIdx.y;
  if (!tail) {
    KMajorTile<T, S::BM, S::BK, V, S::kThreads> la;
    KMajorTile<T, S::BN, S::BK, V, S::kThreads> lb;
    la.init(ForwardARows<T>{static_cast<const T*>(p.a), p.a_rs, p.a_rows, p.a_rows_div, tile.row0, tile.row_end},
            p.a_cs, p.K);
    lb.init(ForwardBRows<T, S::BN>{static_cast<const T*>(p.b) + tile.group * p.b_gs, p.b_rs, n_tile, p.N,
                                   p.swiglu_I},
            p.b_cs, p.K);
    simt_mainloop<S>(la, lb, p.K, As, Bs, acc);
  }
  const int64_t col0 = p.epi.kind == Epi::kSwiGLU ? n_tile * (S::BN / 2) : n_tile * S::BN;
  simt_epilogue<S, T>(p.epi, acc, tile.row0, tile.row_end, col0, p.N);
}

// The weight-gradient tile (group blockIdx.y, N tile x K tile blockIdx.x): A = dy_g^T, B = a_g^T, both
// loaded along their contiguous column dimension.
template <class S, typename T, int V>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(S::kThreads) weight_grad_simt_kernel(const WgradArgs p) {
  __shared__ float As[S::BK * S::kLdA];
  __shared__ float Bs[S::BK * S::kLdB];
  const int g = blockIdx.y;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x / p.tiles_k) * S::BM;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x % p.tiles_k) * S::BN;
  const int start = group_start(p.offsets, g, p.M);
  const int64_t rows = lmax(0, group_end(p.offsets, g, p.G, p.M) - start);
  float acc[S::TM][S::TN];
#pragma unroll
  for (int i = 0; i < S::TM; ++i)
#pragma unroll
    for (int j = 0; j < S::TN; ++j) acc[i][j] = 0.f;
  IMajorTile<T, S::BM, S::BK, V, S::kThreads> la;
  IMajorTile<T, S::BN, S::BK, V, S::kThreads> lb;
  la.init(static_cast<const T*>(p.dy) + start * p.dy_rs + i0 * p.dy_cs, p.dy_cs, p.dy_rs, p.N - i0, rows);
  lb.init(static_cast<const T*>(p.a) + start * p.a_rs + j0 * p.a_cs, p.a_cs, p.a_rs, p.K - j0, rows);
  simt_mainloop<S>(la, lb, rows, As, Bs, acc);
  EpiArgs e = p.epi;
  e.out = static_cast<char*>(e.out) + g * p.grad_gs * (e.out_f32 ? 4 : static_cast<int64_t>(sizeof(T)));
  // The epilogue maps tile columns h*BN/2 + tx*TN/2 + j; grad columns are j0 + that, rows i0 + ...
  simt_epilogue<S, T>(e, acc, i0, p.N, j0, p.K);
}

}  // namespace moe_detail
}  // namespace zaya_rt::gpu
