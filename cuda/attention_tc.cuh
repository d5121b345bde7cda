// Tensor-core prefill forward (NVIDIA sm_80+, bf16/fp16, head dim 64 or 128, 16-byte aligned q/k/v rows);
// included by cuda/attention_kernels.cuh on CUDA. Hopper takes the wgmma kernel (cuda/attention_sm90.cuh)
// instead where it qualifies; ZAYA_RT_CUDA_ATTENTION=wmma forces this one there.
//
// A block of 4 warps owns 64 rows (the RowMap of the SIMT path: query positions x the q heads of one GQA group)
// and walks its key range in 64-key tiles staged in shared memory as 16-bit values. Per tile and warp (16 rows):
//   S = Q K^T   wmma 16x16x16, fp32 accumulators, stored to shared memory;
//   softmax     SIMT over the 16 rows: scale, causal/window mask, online max/sum in fp32, P rounded to the
//               input dtype (as flash-attention does) and the rescale factor per row;
//   O = a O + P V   O lives in shared memory in fp32 (rescaled by the SIMT pass, then loaded as the
//               accumulator of the P V wmma and stored back).
// Shared memory: Q, K, V tiles [64][d + 8] 16-bit, S [64][68] fp32, P [64][72] 16-bit, O [64][d + 4] fp32:
// 110 KiB at d = 128 (opted in with cudaFuncAttributeMaxDynamicSharedMemorySize).
#pragma once
#include "cuda/wmma_elem.cuh"

namespace zaya_rt::gpu::attn_detail {

constexpr int kTcRows = 64, kTcKeys = 64;

template <int D> struct TcLayout {
  static constexpr int LDT = D + 8, LDS = kTcKeys + 4, LDP = kTcKeys + 8, LDO = D + 4;
  static constexpr int q_off = 0;
  static constexpr int k_off = q_off + kTcRows * LDT * 2;
  static constexpr int v_off = k_off + kTcKeys * LDT * 2;
  static constexpr int s_off = v_off + kTcKeys * LDT * 2;
  static constexpr int p_off = s_off + kTcRows * LDS * 4;
  static constexpr int o_off = p_off + kTcRows * LDP * 2;
  static constexpr int a_off = o_off + kTcRows * LDO * 4;
  static constexpr int bytes = a_off + kTcRows * 4;
};

// wmma bf16 needs sm_80+.
inline bool attn_tensor_cores_ok() { return gpu_compute_capability() >= 80; }


template <typename T, int D>
__global__ ZAYA_RT_LAUNCH_BOUNDS(kThreads) void varlen_fwd_tc_kernel(AttnVarlenFwdParams p, VarlenGeometry geo) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // the launcher only picks this kernel on sm_80+
#else
  using E = typename WmmaElem<T>::type;
  using L = TcLayout<D>;
  extern __shared__ float smem[];
  char* base = reinterpret_cast<char*>(smem);
  T* Qs = reinterpret_cast<T*>(base + L::q_off);
  T* Ks = reinterpret_cast<T*>(base + L::k_off);
  T* Vs = reinterpret_cast<T*>(base + L::v_off);
  float* Ss = reinterpret_cast<float*>(base + L::s_off);
  T* Ps = reinterpret_cast<T*>(base + L::p_off);
  float* Os = reinterpret_cast<float*>(base + L::o_off);
  float* alpha_s = reinterpret_cast<float*>(base + L::a_off);

  const VarlenBlock blk = varlen_block(p, geo);
  if (!blk.valid) return;
  const int64_t q0 = blk.q0, Lq = blk.Lq, k0 = blk.k0, Lk = blk.Lk, G = blk.G, g = blk.g;
  const RowMap rm = blk.rm;
  const int rows = rm.nq * rm.nh;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int r0 = warp * 16;  // this warp's rows

  const T* q = static_cast<const T*>(p.q);
  copy_rows_16b<T, D, L::LDT, kThreads>(Qs, rows, kTcRows, [&](int r) {
    return q + (q0 + rm.token(r)) * p.q_token_stride + rm.head(r) * p.q_head_stride;
  });
  for (int idx = lane; idx < 16 * L::LDO; idx += kWarpSize) Os[r0 * L::LDO + idx] = 0.f;

  const int64_t off = Lk - Lq;
  const int64_t lo = key_range(off + rm.i0, Lk, p.causal, p.window).lo;
  const int64_t hi = key_range(off + rm.i0 + rm.nq - 1, Lk, p.causal, p.window).hi;
  float m[16], l[16];  // the same on every lane of the warp
#pragma unroll
  for (int rr = 0; rr < 16; ++rr) m[rr] = -INFINITY, l[rr] = 0.f;

  const T* kp = static_cast<const T*>(p.k) + k0 * p.k_token_stride + g * p.k_head_stride;
  const T* vp = static_cast<const T*>(p.v) + k0 * p.v_token_stride + g * p.v_head_stride;
  for (int64_t t0 = lo; t0 < hi; t0 += kTcKeys) {
    const int cnt = static_cast<int>(lmin(kTcKeys, hi - t0));
    __syncthreads();
    copy_rows_16b<T, D, L::LDT, kThreads>(Ks, cnt, kTcKeys, [&](int j) { return kp + (t0 + j) * p.k_token_stride; });
    copy_rows_16b<T, D, L::LDT, kThreads>(Vs, cnt, kTcKeys, [&](int j) { return vp + (t0 + j) * p.v_token_stride; });
    __syncthreads();
    if (r0 >= rows) continue;  // warp-uniform; no block barrier below until the next tile

    // S = Q K^T for the warp's 16 rows x 64 keys.
#pragma unroll
    for (int n = 0; n < kTcKeys / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.f);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, E, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, E, wmma::col_major> fb;
        wmma::load_matrix_sync(fa, reinterpret_cast<const E*>(Qs + r0 * L::LDT + kk * 16), L::LDT);
        wmma::load_matrix_sync(fb, reinterpret_cast<const E*>(Ks + n * 16 * L::LDT + kk * 16), L::LDT);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(Ss + r0 * L::LDS + n * 16, acc, L::LDS, wmma::mem_row_major);
    }
    warp_sync();

    // Online softmax over the tile, a row at a time (lanes over the 64 keys).
#pragma unroll
    for (int rr = 0; rr < 16; ++rr) {
      const int r = r0 + rr;
      float s[kTcKeys / 32];
      float mx = -INFINITY;
      const bool live = r < rows;
      const Range kr = key_range(off + rm.token(live ? r : 0), Lk, p.causal, p.window);
#pragma unroll
      for (int u = 0; u < kTcKeys / 32; ++u) {
        const int c = lane + 32 * u;
        const int64_t j = t0 + c;
        s[u] = (live && c < cnt && j >= kr.lo && j < kr.hi) ? Ss[r * L::LDS + c] * p.scale : -INFINITY;
        mx = fmaxf(mx, s[u]);
      }
      mx = warp_max(mx);
      const float m_new = fmaxf(m[rr], mx);
      const bool none = !(m_new > -INFINITY);
      const float alpha = none ? 1.f : __expf(m[rr] - m_new);
      float sum = 0.f;
#pragma unroll
      for (int u = 0; u < kTcKeys / 32; ++u) {
        const float e = none ? 0.f : __expf(s[u] - m_new);
        sum += e;
        Ps[r * L::LDP + lane + 32 * u] = from_float<T>(e);
      }
      sum = warp_sum(sum);
      l[rr] = l[rr] * alpha + sum;
      m[rr] = m_new;
      if (lane == 0) alpha_s[r] = alpha;
    }
    warp_sync();
    for (int idx = lane; idx < 16 * D; idx += kWarpSize) {
      const int rr = idx / D, c = idx - rr * D;
      Os[(r0 + rr) * L::LDO + c] *= alpha_s[r0 + rr];
    }
    warp_sync();

    // O += P V.
#pragma unroll
    for (int nb = 0; nb < D / 16; ++nb) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, Os + r0 * L::LDO + nb * 16, L::LDO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kTcKeys / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, E, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, E, wmma::row_major> fb;
        wmma::load_matrix_sync(fa, reinterpret_cast<const E*>(Ps + r0 * L::LDP + kk * 16), L::LDP);
        wmma::load_matrix_sync(fb, reinterpret_cast<const E*>(Vs + kk * 16 * L::LDT + nb * 16), L::LDT);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(Os + r0 * L::LDO + nb * 16, acc, L::LDO, wmma::mem_row_major);
    }
    warp_sync();
  }

  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int rr = 0; rr < 16; ++rr) {
    const int r = r0 + rr;
    if (r >= rows) break;
    const int64_t tok = q0 + rm.token(r), h = rm.head(r);
    const float inv = l[rr] > 0.f ? 1.f / l[rr] : 0.f;
    T* orow = out + tok * p.out_token_stride + h * p.out_head_stride;
    for (int c = lane; c < D; c += kWarpSize) orow[c] = from_float<T>(Os[r * L::LDO + c] * inv);
    if (p.lse != nullptr && lane == 0)
      p.lse[h * p.lse_head_stride + tok] = l[rr] > 0.f ? m[rr] + logf(l[rr]) : -INFINITY;
  }
#endif
}

template <typename T, int D> const char* launch_fwd_tc(const AttnVarlenFwdParams& p, gpuStream_t s) {
  const int64_t G = p.num_heads_q / p.num_heads_k;
  const VarlenGeometry geo = varlen_geometry(G, kTcRows);
  const dim3 grid(static_cast<unsigned>(packed_blocks(p.total_q, p.batch, geo.bm)),
                  static_cast<unsigned>(p.num_heads_k * geo.chunks));
  constexpr int bytes = TcLayout<D>::bytes;
#if !defined(ZAYA_RT_GPU_EMU)
  if (cudaFuncSetAttribute(varlen_fwd_tc_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) !=
      cudaSuccess)
    return launch_error();
#endif
  varlen_fwd_tc_kernel<T, D><<<grid, kThreads, bytes, s>>>(p, geo);
  return launch_error();
}

// The tensor-core path when it applies; null `taken` otherwise.
template <typename T>
const char* maybe_launch_fwd_tc(const AttnVarlenFwdParams& p, gpuStream_t s, bool* taken) {
  *taken = false;
  if constexpr (std::is_same_v<T, float>) {
    return nullptr;
  } else {
    if (!tc_fwd_operands_ok<T>(p) || !attn_tensor_cores_ok()) return nullptr;
    *taken = true;
    return p.head_dim == 64 ? launch_fwd_tc<T, 64>(p, s) : launch_fwd_tc<T, 128>(p, s);
  }
}

}  // namespace zaya_rt::gpu::attn_detail
