// Tensor-core tiles of the grouped GEMMs (NVIDIA only, sm_80+; included by cuda/moe_gemm_launch.cuh on CUDA):
// bf16/fp16 operands, fp32 accumulators, nvcuda::wmma 16x16x16 fragments fed from shared memory that a
// cp.async pipeline fills kStages - 1 tiles ahead. Operands must allow 16-byte loads along their contiguous
// dimension (8 elements); the launchers in cuda/moe_gemm_launch.cuh check that and fall back to the SIMT
// kernels otherwise.
//
// Warp w of a block owns rows wm*WM + [0, WM) of the tile and the 16-column fragments j*(BN/FN) + wn*16,
// j < FN: fragment j and j + FN/2 are BN/2 columns apart, so a SwiGLU tile (gate columns in the first half,
// up columns in the second) has each gate value and its up value in the same lane and fragment element.
// The epilogue goes through a per-warp 16x16 fp32 staging tile (in the pipeline's shared memory) so that
// each lane writes 8 consecutive outputs.
#pragma once
#include <type_traits>

#include "cuda/async_copy.cuh"
#include "cuda/wmma_elem.cuh"

namespace zaya_rt::gpu::moe_detail {

template <int BM_, int BN_, int BK_, int WM_, int WN_, int STAGES_>
struct TcShape {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_, kStages = STAGES_;
  static constexpr int kWarpsM = BM / WM, kWarpsN = BN / WN, kWarps = kWarpsM * kWarpsN;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int FM = WM / 16, FN = WN / 16;
  static_assert(FN % 2 == 0, "SwiGLU pairs fragment j with fragment j + FN/2");
  static_assert(BK % 16 == 0 && kStages >= 2, "bad tile shape");
};
using TcBig = TcShape<128, 128, 32, 64, 32, 2>;   // 8 warps, 64x32 outputs each
using TcSmall = TcShape<32, 128, 32, 32, 32, 3>;  // 4 warps, 32x32 outputs each (few rows per group)

constexpr int kTcPad = 8;     // elements of padding per shared row: rows stay 16-byte aligned, banks spread
constexpr int kStageLd = 20;  // floats per row of a warp's epilogue staging tile

// Shared memory of one pipeline stage. K-major operands (forward): A [BM][BK+pad], B [BN][BK+pad]
// (row_major A, col_major B for wmma). I-major operands (weight gradient, contiguous along the output
// dimension): A [BK][BM+pad], B [BK][BN+pad] (col_major A, row_major B).
template <class S, bool kKMajor> struct TcSmem {
  static constexpr int kLdA = kKMajor ? S::BK + kTcPad : S::BM + kTcPad;
  static constexpr int kLdB = kKMajor ? S::BK + kTcPad : S::BN + kTcPad;
  static constexpr int kAElems = kKMajor ? S::BM * kLdA : S::BK * kLdA;
  static constexpr int kBElems = kKMajor ? S::BN * kLdB : S::BK * kLdB;
  static constexpr int kStageElems = kAElems + kBElems;
  static constexpr int kBytes = S::kStages * kStageElems * 2;
  static_assert(S::kWarps * 16 * kStageLd * 4 <= kBytes, "the epilogue staging tiles reuse the pipeline buffers");
  static_assert((kAElems * 2) % 32 == 0 && (kStageElems * 2) % 32 == 0, "wmma wants 32-byte aligned fragments");
};

// R x BK tile of a k-contiguous operand into smem[r][k]: 16-byte chunks, fixed rows per thread.
template <typename T, int R, int BK, int NT>
struct TcKMajorCopy {
  static constexpr int kChunks = BK / 8;
  static_assert(NT % kChunks == 0, "tile chunks must spread evenly over the threads");
  static constexpr int kRowsPerPass = NT / kChunks;
  static constexpr int kPasses = (R + kRowsPerPass - 1) / kRowsPerPass;
  const T* row[kPasses];
  const T* fallback;  // a global address for the zero-filling copies
  int64_t kext;
  int kc, r0;

  template <class Rows>
  ZAYA_RT_DEVICE_INLINE void init(const Rows& rows, const T* any, int64_t k_extent) {
    kc = threadIdx.x % kChunks;
    r0 = threadIdx.x / kChunks;
    fallback = any;
    kext = k_extent;
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const int r = r0 + p * kRowsPerPass;
      row[p] = r < R ? rows(r) : nullptr;
    }
  }
  ZAYA_RT_DEVICE_INLINE void issue(T* smem, int ld, int64_t k0) const {
    const int64_t k = k0 + kc * 8;
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const int r = r0 + p * kRowsPerPass;
      if (r < R) {
        const bool valid = row[p] != nullptr && k < kext;
        cp_async_16(smem + r * ld + kc * 8, valid ? row[p] + k : fallback, valid);
      }
    }
  }
};

// R x BK tile of an operand contiguous along r (element (r, k) at op + r + k * ks) into smem[k][r].
template <typename T, int R, int BK, int NT>
struct TcIMajorCopy {
  static constexpr int kChunks = R / 8;
  static_assert(NT % kChunks == 0, "tile chunks must spread evenly over the threads");
  static constexpr int kKPerPass = NT / kChunks;
  static constexpr int kPasses = (BK + kKPerPass - 1) / kKPerPass;
  const T* base;
  const T* fallback;
  int64_t ks, kext;
  int ic, k0l;

  ZAYA_RT_DEVICE_INLINE void init(const T* op, int64_t i_extent, int64_t k_stride, int64_t k_extent) {
    ic = threadIdx.x % kChunks;
    k0l = threadIdx.x / kChunks;
    base = ic * 8 < i_extent ? op + ic * 8 : nullptr;
    fallback = op;
    ks = k_stride;
    kext = k_extent;
  }
  ZAYA_RT_DEVICE_INLINE void issue(T* smem, int ld, int64_t k0) const {
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const int kl = k0l + p * kKPerPass;
      if (kl < BK) {
        const int64_t k = k0 + kl;
        const bool valid = base != nullptr && k < kext;
        cp_async_16(smem + kl * ld + ic * 8, valid ? base + k * ks : fallback, valid);
      }
    }
  }
};

using TcAcc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

template <class S, bool kKMajor, typename T, class CA, class CB>
ZAYA_RT_DEVICE_INLINE void tc_mainloop(const CA& ca, const CB& cb, int64_t kext, T* smem,
                                       TcAcc (&acc)[S::FM][S::FN]) {
  using L = TcSmem<S, kKMajor>;
  using E = typename WmmaElem<T>::type;
  using ALayout = std::conditional_t<kKMajor, wmma::row_major, wmma::col_major>;
  using BLayout = std::conditional_t<kKMajor, wmma::col_major, wmma::row_major>;
  const int warp = threadIdx.x / 32, wm = warp / S::kWarpsN, wn = warp % S::kWarpsN;
  const int64_t ktiles = dceil_div(kext, S::BK);
#pragma unroll
  for (int st = 0; st < S::kStages - 1; ++st) {
    if (st < ktiles) {
      ca.issue(smem + st * L::kStageElems, L::kLdA, int64_t{st} * S::BK);
      cb.issue(smem + st * L::kStageElems + L::kAElems, L::kLdB, int64_t{st} * S::BK);
    }
    cp_async_commit();
  }
  for (int64_t kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<S::kStages - 2>();
    __syncthreads();  // tile kt is in; every warp is done with the stage refilled below
    const int64_t nxt = kt + S::kStages - 1;
    if (nxt < ktiles) {
      T* st = smem + (nxt % S::kStages) * L::kStageElems;
      ca.issue(st, L::kLdA, nxt * S::BK);
      cb.issue(st + L::kAElems, L::kLdB, nxt * S::BK);
    }
    cp_async_commit();
    const T* As = smem + (kt % S::kStages) * L::kStageElems;
    const T* Bs = As + L::kAElems;
#pragma unroll
    for (int kk = 0; kk < S::BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, E, ALayout> af[S::FM];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, E, BLayout> bf[S::FN];
#pragma unroll
      for (int i = 0; i < S::FM; ++i) {
        const int m = wm * S::WM + i * 16;
        const T* src = kKMajor ? As + m * L::kLdA + kk : As + kk * L::kLdA + m;
        wmma::load_matrix_sync(af[i], reinterpret_cast<const E*>(src), L::kLdA);
      }
#pragma unroll
      for (int j = 0; j < S::FN; ++j) {
        const int n = j * (S::BN / S::FN) + wn * 16;
        const T* src = kKMajor ? Bs + n * L::kLdB + kk : Bs + kk * L::kLdB + n;
        wmma::load_matrix_sync(bf[j], reinterpret_cast<const E*>(src), L::kLdB);
      }
#pragma unroll
      for (int i = 0; i < S::FM; ++i)
#pragma unroll
        for (int j = 0; j < S::FN; ++j) wmma::mma_sync(acc[i][j], af[i], bf[j], acc[i][j]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the pipeline buffers become the epilogue's staging tiles
}

// Tile rows row0 + [0, BM) below row_end, tile columns col0 + [0, BN) (SwiGLU: [0, BN/2)) below ncols.
template <class S, typename T>
ZAYA_RT_DEVICE_INLINE void tc_epilogue(const EpiArgs& e, TcAcc (&acc)[S::FM][S::FN], float* staging, int64_t row0,
                                       int64_t row_end, int64_t col0, int64_t ncols) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, wm = warp / S::kWarpsN, wn = warp % S::kWarpsN;
  float* stage = staging + warp * 16 * kStageLd;
  const bool swiglu_epi = e.kind == Epi::kSwiGLU;
  const int rr = lane >> 1, cc = (lane & 1) * 8;
#pragma unroll
  for (int i = 0; i < S::FM; ++i) {
#pragma unroll
    for (int j = 0; j < S::FN; ++j) {
      if (swiglu_epi) {
        if (j >= S::FN / 2) continue;
        TcAcc f;
#pragma unroll
        for (int t = 0; t < f.num_elements; ++t)
          f.x[t] = swiglu<T>(acc[i][j].x[t], acc[i][(j + S::FN / 2) % S::FN].x[t]);
        wmma::store_matrix_sync(stage, f, kStageLd, wmma::mem_row_major);
      } else {
        wmma::store_matrix_sync(stage, acc[i][j], kStageLd, wmma::mem_row_major);
      }
      __syncwarp();
      const int64_t r = row0 + wm * S::WM + i * 16 + rr;
      const int64_t c = col0 + j * (S::BN / S::FN) + wn * 16 + cc;
      if (r < row_end && c < ncols) {
        float v[8];
#pragma unroll
        for (int t = 0; t < 8; ++t) v[t] = stage[rr * kStageLd + cc + t];
        write_span<T>(e, r, c, v, static_cast<int>(lmin(8, ncols - c)));
      }
      __syncwarp();
    }
  }
}

template <class S, typename T>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(S::kThreads) grouped_gemm_tc_kernel(const FwdArgs p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // never launched: tensor_cores_ok() keeps older GPUs on the SIMT kernels
#else
  using L = TcSmem<S, true>;
  __shared__ __align__(128) unsigned char smem_raw[L::kBytes];
  __shared__ int scan[S::kThreads];
  __shared__ RowTile tile;
  if (!find_row_tile(blockIdx.x, p.offsets, p.G, p.M, S::BM, scan, &tile)) return;
  const bool tail = tile.group == p.G;
  if (tail && !p.zero_tail) return;
  TcAcc acc[S::FM][S::FN];
#pragma unroll
  for (int i = 0; i < S::FM; ++i)
#pragma unroll
    for (int j = 0; j < S::FN; ++j) wmma::fill_fragment(acc[i][j], 0.f);
  const int64_t n_tile = blockIdx.y;
  if (!tail) {
    const T* a = static_cast<const T*>(p.a);
    const T* b = static_cast<const T*>(p.b) + tile.group * p.b_gs;
    TcKMajorCopy<T, S::BM, S::BK, S::kThreads> ca;
    TcKMajorCopy<T, S::BN, S::BK, S::kThreads> cb;
    ca.init(ForwardARows<T>{a, p.a_rs, p.a_rows, p.a_rows_div, tile.row0, tile.row_end}, a, p.K);
    cb.init(ForwardBRows<T, S::BN>{b, p.b_rs, n_tile, p.N, p.swiglu_I}, b, p.K);
    tc_mainloop<S, true, T>(ca, cb, p.K, reinterpret_cast<T*>(smem_raw), acc);
  }
  const int64_t col0 = p.epi.kind == Epi::kSwiGLU ? n_tile * (S::BN / 2) : n_tile * S::BN;
  tc_epilogue<S, T>(p.epi, acc, reinterpret_cast<float*>(smem_raw), tile.row0, tile.row_end, col0, p.N);
#endif
}

template <class S, typename T>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(S::kThreads) weight_grad_tc_kernel(const WgradArgs p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  using L = TcSmem<S, false>;
  __shared__ __align__(128) unsigned char smem_raw[L::kBytes];
  const int g = blockIdx.y;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x / p.tiles_k) * S::BM;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x % p.tiles_k) * S::BN;
  const int start = group_start(p.offsets, g, p.M);
  const int64_t rows = lmax(0, group_end(p.offsets, g, p.G, p.M) - start);
  TcAcc acc[S::FM][S::FN];
#pragma unroll
  for (int i = 0; i < S::FM; ++i)
#pragma unroll
    for (int j = 0; j < S::FN; ++j) wmma::fill_fragment(acc[i][j], 0.f);
  TcIMajorCopy<T, S::BM, S::BK, S::kThreads> ca;
  TcIMajorCopy<T, S::BN, S::BK, S::kThreads> cb;
  ca.init(static_cast<const T*>(p.dy) + start * p.dy_rs + i0, p.N - i0, p.dy_rs, rows);
  cb.init(static_cast<const T*>(p.a) + start * p.a_rs + j0, p.K - j0, p.a_rs, rows);
  tc_mainloop<S, false, T>(ca, cb, rows, reinterpret_cast<T*>(smem_raw), acc);
  EpiArgs e = p.epi;
  e.out = static_cast<char*>(e.out) + g * p.grad_gs * (e.out_f32 ? 4 : static_cast<int64_t>(sizeof(T)));
  tc_epilogue<S, T>(e, acc, reinterpret_cast<float*>(smem_raw), i0, p.N, j0, p.K);
#endif
}

template <class S, typename T>
const char* launch_forward_tc(const FwdArgs& p, int64_t n_tiles, gpuStream_t s, const char* what) {
  const dim3 grid(static_cast<unsigned>(ceil_div(p.M, S::BM) + p.G), static_cast<unsigned>(n_tiles));
  grouped_gemm_tc_kernel<S, T><<<grid, S::kThreads, 0, s>>>(p);
  return launch_result(what);
}

template <class S, typename T>
const char* launch_weight_grad_tc(const WgradArgs& p, gpuStream_t s) {
  const dim3 grid(static_cast<unsigned>(ceil_div(p.N, S::BM) * p.tiles_k), static_cast<unsigned>(p.G));
  weight_grad_tc_kernel<S, T><<<grid, S::kThreads, 0, s>>>(p);
  return launch_result("grouped_gemm_weight_grad");
}

}  // namespace zaya_rt::gpu::moe_detail
