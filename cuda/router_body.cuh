// The ZAYA1 router's GPU kernel bodies, written once for three compilers: nvcc (cuda/router.cu), clang -x hip
// (hip/router.hip) and a plain host C++ compiler (tools/gpu_emu/emu_router.cpp, which runs every block, warp and
// thread of these bodies on the CPU to test them without a GPU). See cuda/router_kernels.cuh for the design.
//
// Emulation contract: the bodies use no warp intrinsics and no __syncthreads themselves. A block's work is a
// sequence of phases `ex.each(fn(tid))` (every thread runs fn) and `ex.each_warp(fn(warp))` (every warp
// runs fn collectively) separated by `ex.sync()` (a block barrier). Per-thread state that lives across
// barriers (weight-tile registers, accumulators) is reached through ex.regs(tid) and ex.acc(tid or warp).
// On a GPU each thread runs its own slice of every phase; the emulator runs the phases one after another
// for all threads, which is exactly what the barriers guarantee. Tensor-core tiles go through an `Mma`
// policy: nvcuda::wmma on CUDA, a plain 16x16x16 emulation on the host, SimtMma (none) elsewhere.
//
// Numerics: those of the CPU kernel (csrc/cpu/router.cpp), term for term: fp32 accumulation and statistics;
// z rounded to the weight dtype after the bias and after the EDA add; the normalised value rounded before
// the norm weight; every GEMM output rounded to the weight dtype after its bias (and before GELU); logits
// rounded to the weight dtype; probabilities rounded to it before the balancing bias; the biased argmax of
// zaya_rt/router_choice.h (torch.argmax's order: the first NaN, else the lowest index on ties).
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "zaya_rt/router.h"
#include "zaya_rt/router_choice.h"

// Host emulation compiles this with tools/gpu_emu first on the include path: cuda/numeric.cuh is the real one,
// over the emulator's cuda/compat.h.
#include "cuda/numeric.cuh"
#if defined(__CUDACC__) || defined(__HIP__)
#define ZAYA_RT_ROUTER_FN __device__ inline
#define ZAYA_RT_ROUTER_HD __host__ __device__ inline
#else
#define ZAYA_RT_ROUTER_FN inline
#define ZAYA_RT_ROUTER_HD inline
#endif

namespace zaya_rt::gpu::router_detail {

// ---- shapes ------------------------------------------------------------------------------------------------

constexpr int kThreads = 256;        // head block: 16 x 16 threads for SIMT tiles, 8 warps of 32 for wmma
constexpr int kBN = 128, kBK = 32;   // weight tile streamed through shared memory: kBN outputs x kBK inputs
constexpr int kDownWarps = 4;        // down-projection block: one output row of z per warp
constexpr int kDownTokens = 8;       // tokens per down-projection block (accumulators per lane)
constexpr int kVecBytes = 16;        // one vector access

ZAYA_RT_ROUTER_HD constexpr int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// Shared memory of one head block of `tb` tokens (offsets in bytes from a 128-byte aligned base):
//   act     T [tb][ldA]      GEMM input: h0, then h1, then h2 (columns R .. ldA are zero)
//   scratch f32 [tb][ldS]    z, then each GEMM's fp32 output before its epilogue
//   wtile   T [kBN][ldW]     the weight tile being multiplied
//   red     f32 [tb][groups] partial sums of squares; rstd f32 [tb]
struct HeadLayout {
  int tb, ldA, ldS, ldW, groups;
  int64_t act, scratch, wtile, red, rstd, bytes;
};

inline HeadLayout head_layout(int tb, int64_t R, int64_t C, int64_t elem) {
  HeadLayout L{};
  L.tb = tb;
  L.groups = kThreads / tb;
  L.ldA = static_cast<int>(round_up(R, kBK) + kVecBytes / elem);  // + one 16-byte chunk: spreads banks
  L.ldS = static_cast<int>(round_up(R > C ? R : C, 16) + 4);
  L.ldW = static_cast<int>(kBK + kVecBytes / elem);
  auto carve = [&](int64_t bytes) {
    const int64_t at = L.bytes;
    L.bytes += round_up(bytes, 128);
    return at;
  };
  L.bytes = 0;
  L.act = carve(int64_t{tb} * L.ldA * elem);
  L.scratch = carve(int64_t{tb} * L.ldS * 4);
  L.wtile = carve(int64_t{kBN} * L.ldW * elem);
  L.red = carve(int64_t{kThreads} * 4);
  L.rstd = carve(int64_t{tb} * 4);
  return L;
}

// Where the head starts: z before the EDA add ([T, R], f32 or the weight dtype), already biased and rounded.
struct HeadArgs {
  RouterParams p;
  const void* z_pre;
  int64_t z_pre_row_stride;
  int32_t z_pre_f32;
  HeadLayout L;
};

template <typename T> ZAYA_RT_ROUTER_FN float ld(const T* p, int64_t i) { return to_float(p[i]); }

ZAYA_RT_ROUTER_FN float gelu_erf(float v) { return 0.5f * v * (1.f + erff(v * 0.70710678118654752f)); }

ZAYA_RT_ROUTER_FN float load_any(const void* p, DType t, int64_t i) {
  if (t == DType::kFloat32) return static_cast<const float*>(p)[i];
  if (t == DType::kBFloat16) return to_float(static_cast<const bf16*>(p)[i]);
  return to_float(static_cast<const f16*>(p)[i]);
}

// ---- down projection (small T): z_pre[t, r] = round(x[t] . W_down[r] + b[r]) into p.z ------------------------

// This lane's share of the kDownTokens dot products of output row r: elements lane*V + k*nlanes*V.
template <typename T, int V>
ZAYA_RT_ROUTER_FN void down_lane_partial(const RouterParams& p, int64_t r, int64_t t0, int nb, int lane, int nlanes,
                                         float (&acc)[kDownTokens]) {
#pragma unroll
  for (int t = 0; t < kDownTokens; ++t) acc[t] = 0.f;
  const T* w = static_cast<const T*>(p.down_w) + r * p.D;
  const T* x = static_cast<const T*>(p.x) + t0 * p.x_row_stride;
  for (int64_t d = int64_t{lane} * V; d < p.D; d += int64_t{nlanes} * V) {
    float wv[V];
    load_n<V>(w + d, wv);
#pragma unroll
    for (int t = 0; t < kDownTokens; ++t) {
      if (t < nb) {
        float xv[V];
        load_n<V>(x + t * p.x_row_stride + d, xv);
#pragma unroll
        for (int e = 0; e < V; ++e) acc[t] += xv[e] * wv[e];
      }
    }
  }
}

template <typename T>
ZAYA_RT_ROUTER_FN void down_finish(const RouterParams& p, int64_t r, int64_t t0, int nb, const float (&acc)[kDownTokens]) {
  const float b = ld(static_cast<const T*>(p.down_b), r);
#pragma unroll
  for (int t = 0; t < kDownTokens; ++t)
    if (t < nb) p.z[(t0 + t) * p.R + r] = round_to<T>(acc[t] + b);
}

// ---- head phases -------------------------------------------------------------------------------------------

template <typename T>
struct HeadSmem {
  T* act;
  float* scratch;
  T* wtile;
  float* red;
  float* rstd;
};

template <typename T>
ZAYA_RT_ROUTER_FN HeadSmem<T> carve_head(unsigned char* base, const HeadLayout& L) {
  return {reinterpret_cast<T*>(base + L.act), reinterpret_cast<float*>(base + L.scratch),
          reinterpret_cast<T*>(base + L.wtile), reinterpret_cast<float*>(base + L.red),
          reinterpret_cast<float*>(base + L.rstd)};
}

// z = z_pre (+ round(z_prev * eda)), rounded; written to p.z and to scratch (zero rows past the last token).
template <typename T, int TB>
ZAYA_RT_ROUTER_FN void phase_load_z(const HeadArgs& a, const HeadSmem<T>& s, int64_t t0, int nb, int tid) {
  const RouterParams& p = a.p;
  const int64_t R = p.R;
  const T* eda = static_cast<const T*>(p.eda_scale);
  for (int t = 0; t < TB; ++t)
    for (int64_t j = tid; j < R; j += kThreads) {
      float v = 0.f;
      if (t < nb) {
        const int64_t row = t0 + t;
        const int64_t zi = row * a.z_pre_row_stride + j;
        v = a.z_pre_f32 ? static_cast<const float*>(a.z_pre)[zi] : ld(static_cast<const T*>(a.z_pre), zi);
        if (p.z_prev != nullptr && eda != nullptr)
          v = round_to<T>(v + round_to<T>(load_any(p.z_prev, p.z_prev_dtype, row * p.z_prev_row_stride + j) *
                                          ld(eda, j)));
        p.z[row * R + j] = v;
      }
      s.scratch[t * a.L.ldS + j] = v;
    }
}

// red[t][g] = sum of z[t][j]^2 over j = g (mod groups).
template <typename T, int TB>
ZAYA_RT_ROUTER_FN void phase_sum_squares(const HeadArgs& a, const HeadSmem<T>& s, int tid) {
  const int G = kThreads / TB, t = tid / G, g = tid % G;
  const float* zr = s.scratch + t * a.L.ldS;
  float ss = 0.f;
  for (int64_t j = g; j < a.p.R; j += G) ss += zr[j] * zr[j];
  s.red[t * G + g] = ss;
}

template <typename T, int TB>
ZAYA_RT_ROUTER_FN void phase_rstd(const HeadArgs& a, const HeadSmem<T>& s, int tid) {
  if (tid >= TB) return;
  const int G = kThreads / TB;
  float ss = 0.f;
  for (int g = 0; g < G; ++g) ss += s.red[tid * G + g];
  s.rstd[tid] = 1.f / sqrtf(ss / static_cast<float>(a.p.R) + a.p.eps);
}

// act = round(z * rstd) * norm_w in T; the columns R .. round_up(R, kBK) become zero (GEMM K padding).
template <typename T, int TB>
ZAYA_RT_ROUTER_FN void phase_normalize(const HeadArgs& a, const HeadSmem<T>& s, int tid) {
  const int64_t R = a.p.R, KP = round_up(R, kBK);
  const T* nw = static_cast<const T*>(a.p.norm_w);
  for (int t = 0; t < TB; ++t)
    for (int64_t j = tid; j < KP; j += kThreads) {
      const float v = j < R ? round_to<T>(s.scratch[t * a.L.ldS + j] * s.rstd[t]) * ld(nw, j) : 0.f;
      s.act[t * a.L.ldA + j] = from_float<T>(v);
    }
}

// act[t][n] = GELU(round(scratch[t][n] + bias[n])) in T, n < N.
template <typename T, int TB>
ZAYA_RT_ROUTER_FN void phase_bias_gelu(const HeadArgs& a, const HeadSmem<T>& s, const void* bias, int64_t N, int tid) {
  const T* b = static_cast<const T*>(bias);
  for (int t = 0; t < TB; ++t)
    for (int64_t n = tid; n < N; n += kThreads) {
      const float v = round_to<T>(s.scratch[t * a.L.ldS + n] + ld(b, n));
      s.act[t * a.L.ldA + n] = from_float<T>(gelu_erf(v));
    }
}

// One thread per token: logits (rounded to T), softmax, the biased choice and its gate.
template <typename T, int TB>
ZAYA_RT_ROUTER_FN void phase_softmax_choice(const HeadArgs& a, const HeadSmem<T>& s, int64_t t0, int nb, int tid) {
  if (tid >= nb) return;
  const RouterParams& p = a.p;
  const int64_t C = p.C, row = t0 + tid;
  float* lr = s.scratch + tid * a.L.ldS;
  float* out = p.logits + row * C;
  float mx = round_to<T>(lr[0]);
  for (int64_t c = 0; c < C; ++c) {
    const float l = round_to<T>(lr[c]);
    lr[c] = l;
    out[c] = l;
    mx = mx < l ? l : mx;
  }
  float sum = 0.f;
  for (int64_t c = 0; c < C; ++c) sum += expf(lr[c] - mx);
  RouterChoice best;
  for (int64_t c = 0; c < C; ++c) {
    const float prob = round_to<T>(expf(lr[c] - mx) / sum);
    best.offer(c, prob, prob + p.balancing_bias[c]);
  }
  p.choice[row] = best.index;
  p.gate[row] = best.gate(C);
}

// ---- weight tiles: global -> registers (issued early) -> shared ---------------------------------------------

// kBN x kBK tile of W[N][K] (row-major, unit stride) starting at (n0, k0), zero outside the matrix. With Vec,
// K is a multiple of V and W 16-byte aligned, so whole chunks are in or out.
template <typename T, bool Vec>
struct TileRegs {
  static constexpr int V = kVecBytes / static_cast<int>(sizeof(T));
  static constexpr int kChunksPerRow = kBK / V;
  static constexpr int kChunks = kBN * kChunksPerRow / kThreads;
  static_assert(kBN * kChunksPerRow % kThreads == 0, "tile chunks must spread evenly over the threads");
  Pack<T, V> v[kChunks];
};

template <typename T, bool Vec>
ZAYA_RT_ROUTER_FN void tile_fetch(TileRegs<T, Vec>& r, const T* W, int64_t N, int64_t K, int64_t n0, int64_t k0, int tid) {
  using Regs = TileRegs<T, Vec>;
  constexpr int V = Regs::V;
#pragma unroll
  for (int c = 0; c < Regs::kChunks; ++c) {
    const int chunk = tid + c * kThreads;
    const int64_t n = n0 + chunk / Regs::kChunksPerRow, k = k0 + (chunk % Regs::kChunksPerRow) * V;
    if (Vec) {
      if (n < N && k < K) {
        r.v[c] = *reinterpret_cast<const Pack<T, V>*>(W + n * K + k);
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) r.v[c].v[e] = from_float<T>(0.f);
      }
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) r.v[c].v[e] = (n < N && k + e < K) ? W[n * K + k + e] : from_float<T>(0.f);
    }
  }
}

template <typename T, bool Vec>
ZAYA_RT_ROUTER_FN void tile_stash(const TileRegs<T, Vec>& r, T* wtile, int ldW, int tid) {
  using Regs = TileRegs<T, Vec>;
#pragma unroll
  for (int c = 0; c < Regs::kChunks; ++c) {
    const int chunk = tid + c * kThreads;
    const int n = chunk / Regs::kChunksPerRow, kc = chunk % Regs::kChunksPerRow;
    *reinterpret_cast<Pack<T, Regs::V>*>(wtile + n * ldW + kc * Regs::V) = r.v[c];
  }
}

// ---- tile products: scratch[t][n0 + n] = sum_k act[t][k] * W[n0 + n][k] -------------------------------------

// SIMT: thread (ti, ni) = (tid / 16, tid % 16) owns tokens ti + 16 a and outputs ni + 16 b of the tile.
struct SimtMma {};

template <int TB>
struct SimtAcc {
  float v[TB / 16][kBN / 16];
};

template <typename T, int TB>
ZAYA_RT_ROUTER_FN void simt_zero(SimtAcc<TB>& acc) {
#pragma unroll
  for (int i = 0; i < TB / 16; ++i)
#pragma unroll
    for (int j = 0; j < kBN / 16; ++j) acc.v[i][j] = 0.f;
}

template <typename T, int TB>
ZAYA_RT_ROUTER_FN void simt_step(SimtAcc<TB>& acc, const HeadSmem<T>& s, const HeadLayout& L, int64_t k0, int tid) {
  constexpr int K4 = 4;  // k values per shared-memory access (16 bytes of fp32, 8 of bf16/fp16)
  const int ti = tid / 16, ni = tid % 16;
  const T* arow = s.act + ti * L.ldA + k0;
  const T* wcol = s.wtile + ni * L.ldW;
#pragma unroll 2
  for (int kk = 0; kk < kBK; kk += K4) {
    float w[kBN / 16][K4];
#pragma unroll
    for (int b = 0; b < kBN / 16; ++b) load_n<K4>(wcol + b * 16 * L.ldW + kk, w[b]);
#pragma unroll
    for (int i = 0; i < TB / 16; ++i) {
      float x[K4];
      load_n<K4>(arow + i * 16 * L.ldA + kk, x);
#pragma unroll
      for (int b = 0; b < kBN / 16; ++b)
#pragma unroll
        for (int e = 0; e < K4; ++e) acc.v[i][b] += x[e] * w[b][e];
    }
  }
}

template <typename T, int TB>
ZAYA_RT_ROUTER_FN void simt_store(const SimtAcc<TB>& acc, const HeadSmem<T>& s, const HeadLayout& L, int64_t n0,
                                  int64_t N, int tid) {
  const int ti = tid / 16, ni = tid % 16;
#pragma unroll
  for (int i = 0; i < TB / 16; ++i)
#pragma unroll
    for (int b = 0; b < kBN / 16; ++b) {
      const int64_t n = n0 + ni + 16 * b;
      if (n < N) s.scratch[(ti + 16 * i) * L.ldS + n] = acc.v[i][b];
    }
}

// Tensor cores (Mma = a 16x16x16 policy): warp w owns the 16 output columns 16 w of the tile, all TB rows.
template <class Mma, int TB>
struct MmaAcc {
  typename Mma::Acc f[TB / 16];
};

template <class Mma, typename T, int TB>
ZAYA_RT_ROUTER_FN void mma_zero(MmaAcc<Mma, TB>& acc) {
#pragma unroll
  for (int i = 0; i < TB / 16; ++i) Mma::zero(acc.f[i]);
}

template <class Mma, typename T, int TB>
ZAYA_RT_ROUTER_FN void mma_step(MmaAcc<Mma, TB>& acc, const HeadSmem<T>& s, const HeadLayout& L, int64_t n0, int64_t N,
                                int64_t k0, int warp) {
  if (n0 + 16 * warp >= N) return;  // warp-uniform: no outputs here (the C-class GEMM)
#pragma unroll
  for (int kk = 0; kk < kBK; kk += 16) {
    typename Mma::B b;
    Mma::load_b(b, s.wtile + 16 * warp * L.ldW + kk, L.ldW);
#pragma unroll
    for (int i = 0; i < TB / 16; ++i) {
      typename Mma::A x;
      Mma::load_a(x, s.act + 16 * i * L.ldA + k0 + kk, L.ldA);
      Mma::mma(acc.f[i], x, b);
    }
  }
}

template <class Mma, typename T, int TB>
ZAYA_RT_ROUTER_FN void mma_store(const MmaAcc<Mma, TB>& acc, const HeadSmem<T>& s, const HeadLayout& L, int64_t n0,
                                 int64_t N, int warp) {
  if (n0 + 16 * warp >= N) return;
#pragma unroll
  for (int i = 0; i < TB / 16; ++i) Mma::store(s.scratch + 16 * i * L.ldS + n0 + 16 * warp, acc.f[i], L.ldS);
}

template <class Mma, int TB>
struct AccFor {
  using type = MmaAcc<Mma, TB>;
};
template <int TB>
struct AccFor<SimtMma, TB> {
  using type = SimtAcc<TB>;
};

// ---- the head of one block of TB tokens --------------------------------------------------------------------

// scratch[:, :N] = act[:, :K] W^T, streaming W through wtile; the next tile's loads are issued before the
// current tile is multiplied.
template <typename T, int TB, bool Vec, class Mma, class Exec>
ZAYA_RT_ROUTER_FN void head_gemm(Exec& ex, const HeadSmem<T>& s, const HeadLayout& L, const void* weight, int64_t N,
                                 int64_t K) {
  constexpr bool kTc = !std::is_same<Mma, SimtMma>::value;
  const T* W = static_cast<const T*>(weight);
  const int64_t tiles_n = (N + kBN - 1) / kBN, tiles_k = (K + kBK - 1) / kBK;
  ex.each([&](int tid) { tile_fetch<T, Vec>(ex.regs(tid), W, N, K, 0, 0, tid); });
  for (int64_t tn = 0; tn < tiles_n; ++tn) {
    const int64_t n0 = tn * kBN;
    if constexpr (kTc) {
      ex.each_warp([&](int w) { mma_zero<Mma, T, TB>(ex.acc(w)); });
    } else {
      ex.each([&](int tid) { simt_zero<T, TB>(ex.acc(tid)); });
    }
    for (int64_t tk = 0; tk < tiles_k; ++tk) {
      const int64_t k0 = tk * kBK;
      ex.each([&](int tid) { tile_stash<T, Vec>(ex.regs(tid), s.wtile, L.ldW, tid); });
      ex.sync();
      const int64_t next = tn * tiles_k + tk + 1;
      if (next < tiles_n * tiles_k)
        ex.each([&](int tid) {
          tile_fetch<T, Vec>(ex.regs(tid), W, N, K, (next / tiles_k) * kBN, (next % tiles_k) * kBK, tid);
        });
      if constexpr (kTc) {
        ex.each_warp([&](int w) { mma_step<Mma, T, TB>(ex.acc(w), s, L, n0, N, k0, w); });
      } else {
        ex.each([&](int tid) { simt_step<T, TB>(ex.acc(tid), s, L, k0, tid); });
      }
      ex.sync();
    }
    if constexpr (kTc) {
      ex.each_warp([&](int w) { mma_store<Mma, T, TB>(ex.acc(w), s, L, n0, N, w); });
    } else {
      ex.each([&](int tid) { simt_store<T, TB>(ex.acc(tid), s, L, n0, N, tid); });
    }
  }
  ex.sync();
}

template <typename T, int TB, bool Vec, class Mma, class Exec>
ZAYA_RT_ROUTER_FN void head_block(Exec& ex, const HeadArgs& a, unsigned char* smem, int64_t block) {
  const RouterParams& p = a.p;
  const HeadSmem<T> s = carve_head<T>(smem, a.L);
  const int64_t t0 = block * TB;
  const int nb = static_cast<int>(p.T - t0 < TB ? p.T - t0 : TB);
  ex.each([&](int tid) { phase_load_z<T, TB>(a, s, t0, nb, tid); });
  ex.sync();
  ex.each([&](int tid) { phase_sum_squares<T, TB>(a, s, tid); });
  ex.sync();
  ex.each([&](int tid) { phase_rstd<T, TB>(a, s, tid); });
  ex.sync();
  ex.each([&](int tid) { phase_normalize<T, TB>(a, s, tid); });
  ex.sync();
  head_gemm<T, TB, Vec, Mma>(ex, s, a.L, p.fc1_w, p.R, p.R);
  ex.each([&](int tid) { phase_bias_gelu<T, TB>(a, s, p.fc1_b, p.R, tid); });
  ex.sync();
  head_gemm<T, TB, Vec, Mma>(ex, s, a.L, p.fc2_w, p.R, p.R);
  ex.each([&](int tid) { phase_bias_gelu<T, TB>(a, s, p.fc2_b, p.R, tid); });
  ex.sync();
  head_gemm<T, TB, Vec, Mma>(ex, s, a.L, p.out_w, p.C, p.R);
  ex.each([&](int tid) { phase_softmax_choice<T, TB>(a, s, t0, nb, tid); });
}

}  // namespace zaya_rt::gpu::router_detail
