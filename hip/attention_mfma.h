// Matrix-core prefill forward for CDNA3 (HIP, gfx94x, wave64; bf16/fp16, head dim 32/64/128/256, q/k/v rows
// 16-byte aligned); included by cuda/attention_kernels.cuh on HIP, the counterpart of cuda/attention_tc.cuh.
//
// A block of 4 waves owns 64 rows (the RowMap of the SIMT path: query positions x the q heads of one GQA
// group), 16 per wave, and walks its key range in tiles of BN keys (64, 32 at d = 256) staged in LDS as 16-bit
// values [BN][d + 8]. Everything per row stays in registers, in the MFMA lane layout (hip/mfma_fragment.h):
//   S^T = K Q^T   A = a 16-key block of K from LDS, B = Q^T: the wave's 16 query rows, loaded once from global
//                 memory into B fragments. Lane l gets the scores of query row l % 16 for 4 keys per block.
//   softmax       per lane in fp32 on those scores (scale, causal/window mask, online max/sum; the row's 4
//                 lanes combine by xor shuffles over lanes 16 and 32); P rounded to the input dtype (as the
//                 sm_80 path and flash-attention do).
//   O^T += V^T P^T  A = V^T from LDS, B = P^T: the S^T accumulators, rounded, are already B fragments.
//                 Lane l holds O[row l % 16][16 nb + 4 (l / 16) + e], so the rescale by alpha and the final
//                 1 / l are per lane, no LDS round trip.
// Fully masked tiles are skipped per block (key range) and per wave (its rows' range).
#pragma once
#include "hip/mfma_fragment.h"

namespace zaya_rt::gpu::attn_detail {

constexpr int kMfmaWaves = 4;
constexpr int kMfmaThreads = kMfmaWaves * 64;
constexpr int kMfmaRows = kMfmaWaves * mfma::kTile;

template <int D> struct MfmaLayout {
  static constexpr int BN = D > 128 ? 32 : 64;  // keys per tile
  static constexpr int LD = D + 8;              // LDS row stride (elements): rows stay 16-byte aligned
  static constexpr int bytes = 2 * BN * LD * 2;  // K and V tiles
};


template <typename T, int D>
__global__ ZAYA_RT_LAUNCH_BOUNDS(kMfmaThreads) void varlen_fwd_mfma_kernel(AttnVarlenFwdParams p,
                                                                         VarlenGeometry geo) {
  using L = MfmaLayout<D>;
  constexpr int BN = L::BN, LD = L::LD, NB = BN / 16, ND = D / 16;
  extern __shared__ float smem[];
  T* Ks = reinterpret_cast<T*>(smem);
  T* Vs = Ks + BN * LD;

  const VarlenBlock blk = varlen_block(p, geo);
  if (!blk.valid) return;
  const int64_t q0 = blk.q0, Lq = blk.Lq, k0 = blk.k0, Lk = blk.Lk, G = blk.G, g = blk.g;
  const RowMap rm = blk.rm;
  const int rows = rm.nq * rm.nh;
  const int wave = threadIdx.x / kWarpSize;
  const int r0 = wave * mfma::kTile;
  const int my_row = r0 + mfma::lane_col();  // the query row whose scores / outputs this lane holds
  const bool live = my_row < rows;
  const int kq = mfma::lane_k0();            // first of the lane's 4 keys (S) or head-dim columns (O) per block

  // Q^T as B fragments: lane l holds q[row l % 16][16 kk + 4 (l / 16) + e]; dead rows are zero.
  mfma::b16x4 qf[ND];
  const T* q = static_cast<const T*>(p.q);
  const T* qrow = live ? q + (q0 + rm.token(my_row)) * p.q_token_stride + rm.head(my_row) * p.q_head_stride : q;
#pragma unroll
  for (int kk = 0; kk < ND; ++kk) {
    qf[kk] = live ? *reinterpret_cast<const mfma::b16x4*>(qrow + kk * 16 + kq) : mfma::b16x4{0, 0, 0, 0};
  }
  mfma::f32x4 o[ND];
#pragma unroll
  for (int nb = 0; nb < ND; ++nb) o[nb] = mfma::zeros();
  float m = -INFINITY, l = 0.f;  // this lane's row, the same on its 4 lanes

  const int64_t off = Lk - Lq;
  const int64_t lo = key_range(off + rm.i0, Lk, p.causal, p.window).lo;
  const int64_t hi = key_range(off + rm.i0 + rm.nq - 1, Lk, p.causal, p.window).hi;
  // The keys this wave's rows see (wave-uniform), and this lane's row's keys.
  const int last = static_cast<int>(lmin(r0 + mfma::kTile, rows)) - 1;
  const Range wr{key_range(off + rm.token(r0 < rows ? r0 : 0), Lk, p.causal, p.window).lo,
                 key_range(off + rm.token(last >= 0 ? last : 0), Lk, p.causal, p.window).hi};
  const Range kr = key_range(off + rm.token(live ? my_row : 0), Lk, p.causal, p.window);

  const T* kp = static_cast<const T*>(p.k) + k0 * p.k_token_stride + g * p.k_head_stride;
  const T* vp = static_cast<const T*>(p.v) + k0 * p.v_token_stride + g * p.v_head_stride;
  for (int64_t t0 = lo; t0 < hi; t0 += BN) {
    const int cnt = static_cast<int>(lmin(BN, hi - t0));
    __syncthreads();
    copy_rows_16b<T, D, LD, kMfmaThreads>(Ks, cnt, BN, [&](int j) { return kp + (t0 + j) * p.k_token_stride; });
    copy_rows_16b<T, D, LD, kMfmaThreads>(Vs, cnt, BN, [&](int j) { return vp + (t0 + j) * p.v_token_stride; });
    __syncthreads();
    if (r0 >= rows || t0 >= wr.hi || t0 + cnt <= wr.lo) continue;  // wave-uniform; no barrier until the next tile

    // S^T = K Q^T: s[n][e] = q[my_row] . k[t0 + 16 n + kq + e].
    mfma::f32x4 s[NB];
#pragma unroll
    for (int n = 0; n < NB; ++n) {
      s[n] = mfma::zeros();
#pragma unroll
      for (int kk = 0; kk < ND; ++kk)
        s[n] = mfma::mma<T>(mfma::load_rows(Ks + n * 16 * LD + kk * 16, LD), qf[kk], s[n]);
    }

    // Online softmax of this lane's row over the tile.
    float mx = -INFINITY;
#pragma unroll
    for (int n = 0; n < NB; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = n * 16 + kq + e;
        const int64_t j = t0 + c;
        s[n][e] = (live && c < cnt && j >= kr.lo && j < kr.hi) ? s[n][e] * p.scale : -INFINITY;
        mx = fmaxf(mx, s[n][e]);
      }
    mx = mfma::column_max(mx);
    const float m_new = fmaxf(m, mx);
    const bool none = !(m_new > -INFINITY);
    const float alpha = none ? 1.f : __expf(m - m_new);
    float sum = 0.f;
    mfma::b16x4 pf[NB];  // P^T as B fragments
#pragma unroll
    for (int n = 0; n < NB; ++n) {
      float pe[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        pe[e] = none ? 0.f : __expf(s[n][e] - m_new);
        sum += pe[e];
      }
      pf[n] = mfma::to_operand<T>(pe);
    }
    sum = mfma::column_sum(sum);
    l = l * alpha + sum;
    m = m_new;

    // O^T = alpha O^T + V^T P^T.
#pragma unroll
    for (int nb = 0; nb < ND; ++nb) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[nb][e] *= alpha;
#pragma unroll
      for (int n = 0; n < NB; ++n)
        o[nb] = mfma::mma<T>(mfma::load_cols(Vs + n * 16 * LD + nb * 16, LD), pf[n], o[nb]);
    }
  }

  if (!live) return;
  const int64_t tok = q0 + rm.token(my_row), h = rm.head(my_row);
  const float inv = l > 0.f ? 1.f / l : 0.f;
  T* orow = static_cast<T*>(p.out) + tok * p.out_token_stride + h * p.out_head_stride;
#pragma unroll
  for (int nb = 0; nb < ND; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e) orow[nb * 16 + kq + e] = from_float<T>(o[nb][e] * inv);
  if (p.lse != nullptr && kq == 0) p.lse[h * p.lse_head_stride + tok] = l > 0.f ? m + logf(l) : -INFINITY;
}

template <typename T, int D> const char* launch_fwd_mfma(const AttnVarlenFwdParams& p, gpuStream_t s) {
  const int64_t G = p.num_heads_q / p.num_heads_k;
  const VarlenGeometry geo = varlen_geometry(G, kMfmaRows);
  const dim3 grid(static_cast<unsigned>(packed_blocks(p.total_q, p.batch, geo.bm)),
                  static_cast<unsigned>(p.num_heads_k * geo.chunks));
  varlen_fwd_mfma_kernel<T, D><<<grid, kMfmaThreads, MfmaLayout<D>::bytes, s>>>(p, geo);
  return launch_error();
}

// Whether the matrix-core path applies: bf16/fp16, wave64, d in {32, 64, 128, 256}, q/k/v with 16-byte aligned
// rows and 8-element strides (otherwise the SIMT kernel runs).
template <typename T>
bool mfma_fwd_operands_ok(const AttnVarlenFwdParams& p) {
  if constexpr (std::is_same_v<T, float>) {
    return false;
  } else {
    const int64_t d = p.head_dim;
    if ((d != 32 && d != 64 && d != 128 && d != 256) || kWarpSize != 64) return false;
    return vec_ok<T>(p.q, d, {p.q_token_stride, p.q_head_stride}) &&
           vec_ok<T>(p.k, d, {p.k_token_stride, p.k_head_stride}) &&
           vec_ok<T>(p.v, d, {p.v_token_stride, p.v_head_stride});
  }
}

// Launches the MFMA forward; the caller has checked mfma_fwd_operands_ok.
template <typename T>
const char* launch_fwd_mfma_dispatch(const AttnVarlenFwdParams& p, gpuStream_t s) {
  if constexpr (std::is_same_v<T, float>) {
    return "mfma forward: fp32 has no MFMA path";
  } else {
    switch (p.head_dim) {
      case 32: return launch_fwd_mfma<T, 32>(p, s);
      case 64: return launch_fwd_mfma<T, 64>(p, s);
      case 128: return launch_fwd_mfma<T, 128>(p, s);
      default: return launch_fwd_mfma<T, 256>(p, s);
    }
  }
}

}  // namespace zaya_rt::gpu::attn_detail
