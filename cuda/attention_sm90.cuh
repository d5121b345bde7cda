// Hopper (sm_90a) varlen prefill forward on warpgroup MMA (wgmma), bf16/fp16, head dim 64 or 128. Compiled
// only for sm_90a, one dtype per file (cuda/attention_sm90_bf16.cu, cuda/attention_sm90_f16.cu); chosen by
// cuda/attention_kernels.cuh (see cuda/attention_sm90.h). All PTX lives in cuda/sm90_ptx.cuh, which the host
// emulation (tools/gpu_emu) replaces.
//
// A block is one warpgroup (128 threads) owning 64 rows, the RowMap of the other paths (query positions x the
// q heads of one GQA group, so each K/V tile is read once for the group). Per 64-key tile:
//   stage    K [64 keys][D] and V^T [D][64 keys] into shared memory as 16-bit values in the K-major no-swizzle
//            layout of 8-row x 16-byte core matrices (V transposed on the way in, 8x8 blocks per thread, so
//            that both MMAs read K-major operands); Q was staged once the same way.
//   S = Q K^T  D/16 wgmma m64n64k16, A and B from shared memory by descriptor, fp32 accumulators.
//   softmax  on the accumulator fragments: scale (in log2 units), causal / window / padding mask, running
//            max and sum per row in fp32 (a row's 64 scores sit in the 4 threads of a quad: 2 shuffles).
//   O += P V   P rounded to the input dtype and re-packed in registers: the m64nNk16 accumulator layout of S is
//            the A register layout of the next MMA, k16 slice j being accumulators 8j .. 8j + 7. 4 wgmma
//            m64nDk16 with A from registers, B = V^T by descriptor; O (D/2 fp32 per thread) rescaled in place.
// Output O / l and lse = (m + log2 l) ln 2 from the fragments. No host sync, no allocation: graph capturable.
// Shared memory: 3 x 64 x D x 2 bytes (48 KiB at D = 128).
// Not yet: TMA + mbarrier staging, a producer warp and a second consumer warpgroup (FA3-style overlap);
// the loads here are plain 16-byte loads between the MMAs.
#pragma once
#include <cmath>
#include <cstdint>

#include "cuda/attention_common.cuh"
#include "cuda/compat.h"
#include "cuda/numeric.cuh"
#include "cuda/sm90_ptx.cuh"
#include "zaya_rt/attention.h"

namespace zaya_rt::gpu::attn_sm90 {

using attn_detail::key_range;
using attn_detail::lmin;
using attn_detail::Range;
using attn_detail::RowMap;
using attn_detail::varlen_block;
using attn_detail::VarlenBlock;
using attn_detail::VarlenGeometry;

constexpr int kThreads = 128;  // one warpgroup
constexpr int kRows = 64, kKeys = 64;

template <int D> struct Layout {
  static constexpr int q_off = 0;
  static constexpr int k_off = q_off + kRows * D * 2;
  static constexpr int v_off = k_off + kKeys * D * 2;
  static constexpr int bytes = v_off + D * kKeys * 2;
};

// Byte offset of element (r, c) in a tile of R rows stored K-major without swizzle: core matrix (r / 8, c / 8)
// holds rows r..r+7 x 8 elements as 8 x 16 contiguous bytes; core matrices run down the rows first, so the
// SBO (next 8 rows) is 128 bytes and the LBO (next 8 columns) R * 16 bytes.
template <int R> ZAYA_RT_DEVICE_INLINE int core_off(int r, int c) {
  return ((c >> 3) * (R >> 3) + (r >> 3)) * 128 + (r & 7) * 16 + (c & 7) * 2;
}
// Descriptor of the k16 slice kk of such a tile.
template <int R> ZAYA_RT_DEVICE_INLINE uint64_t slice_desc(uint32_t tile_addr, int kk) {
  return wg::make_desc(tile_addr + static_cast<uint32_t>(core_off<R>(0, 16 * kk)), R * 16, 128);
}

// Rows j < count of D elements (row j at row_ptr(j)) into a K-major tile of R rows; rows up to R zero-filled.
// Consecutive threads take consecutive rows, so each 8-thread phase writes one 128-byte core matrix.
template <typename T, int D, int R, typename RowPtr>
ZAYA_RT_DEVICE_INLINE void stage_rows(char* tile, int count, RowPtr row_ptr) {
  for (int idx = threadIdx.x; idx < R * (D / 8); idx += kThreads) {
    const int j = idx % R, c = (idx / R) * 8;
    Pack<T, 8> v;
    if (j < count) {
      v = *reinterpret_cast<const Pack<T, 8>*>(row_ptr(j) + c);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) v.v[e].bits = 0;
    }
    *reinterpret_cast<Pack<T, 8>*>(tile + core_off<R>(j, c)) = v;
  }
}

// V rows j < count (keys) into V^T [D][kKeys], K-major along the keys: a thread transposes an 8 keys x 8
// columns block in registers and writes it as one core matrix.
template <typename T, int D, typename RowPtr>
ZAYA_RT_DEVICE_INLINE void stage_v_transposed(char* tile, int count, RowPtr row_ptr) {
  for (int idx = threadIdx.x; idx < (kKeys / 8) * (D / 8); idx += kThreads) {
    const int kg = idx % (kKeys / 8), c0 = (idx / (kKeys / 8)) * 8;
    Pack<T, 8> in[8], out[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int j = kg * 8 + i;
      if (j < count) {
        in[i] = *reinterpret_cast<const Pack<T, 8>*>(row_ptr(j) + c0);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) in[i].v[e].bits = 0;
      }
    }
#pragma unroll
    for (int e = 0; e < 8; ++e)
#pragma unroll
      for (int i = 0; i < 8; ++i) out[e].v[i] = in[i].v[e];
#pragma unroll
    for (int e = 0; e < 8; ++e) *reinterpret_cast<Pack<T, 8>*>(tile + core_off<D>(c0 + e, kg * 8)) = out[e];
  }
}

template <typename T> ZAYA_RT_DEVICE_INLINE uint32_t pack2(float lo, float hi) {
  return static_cast<uint32_t>(from_float<T>(lo).bits) | static_cast<uint32_t>(from_float<T>(hi).bits) << 16;
}

template <typename T, int D>
__global__ __launch_bounds__(kThreads) void varlen_fwd_sm90_kernel(AttnVarlenFwdParams p, VarlenGeometry geo) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // built for sm_90a only; the launcher never picks it elsewhere
#else
  using L = Layout<D>;
  constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
  extern __shared__ float smem[];
  char* base = reinterpret_cast<char*>(smem);
  const uint32_t q_addr = wg::smem_addr(base + L::q_off);
  const uint32_t k_addr = wg::smem_addr(base + L::k_off);
  const uint32_t v_addr = wg::smem_addr(base + L::v_off);

  const VarlenBlock blk = varlen_block(p, geo);
  if (!blk.valid) return;
  const int64_t q0 = blk.q0, Lq = blk.Lq, k0 = blk.k0, Lk = blk.Lk, G = blk.G, g = blk.g;
  const RowMap rm = blk.rm;
  const int rows = rm.nq * rm.nh;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, quad_col = 2 * (lane % 4);

  const T* q = static_cast<const T*>(p.q);
  stage_rows<T, D, kRows>(base + L::q_off, rows, [&](int r) {
    return q + (q0 + rm.token(r)) * p.q_token_stride + rm.head(r) * p.q_head_stride;
  });

  // This thread's two accumulator rows (h = 0, 1) and the keys each may see.
  const int64_t off = Lk - Lq;
  int row[2];
  bool live[2];
  Range kr[2];
  float m[2], l[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    row[h] = warp * 16 + lane / 4 + 8 * h;
    live[h] = row[h] < rows;
    kr[h] = key_range(off + rm.token(live[h] ? row[h] : 0), Lk, p.causal, p.window);
    m[h] = -INFINITY, l[h] = 0.f;
  }
  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;

  const int64_t lo = key_range(off + rm.i0, Lk, p.causal, p.window).lo;
  const int64_t hi = key_range(off + rm.i0 + rm.nq - 1, Lk, p.causal, p.window).hi;
  const float scale_log2 = p.scale * kLog2e;
  const T* kp = static_cast<const T*>(p.k) + k0 * p.k_token_stride + g * p.k_head_stride;
  const T* vp = static_cast<const T*>(p.v) + k0 * p.v_token_stride + g * p.v_head_stride;
  for (int64_t t0 = lo; t0 < hi; t0 += kKeys) {
    const int cnt = static_cast<int>(lmin(kKeys, hi - t0));
    __syncthreads();  // every thread is past the previous tile's MMAs (waited on) before K/V are overwritten
    stage_rows<T, D, kKeys>(base + L::k_off, cnt, [&](int j) { return kp + (t0 + j) * p.k_token_stride; });
    stage_v_transposed<T, D>(base + L::v_off, cnt, [&](int j) { return vp + (t0 + j) * p.v_token_stride; });
    wg::fence_proxy_async();
    __syncthreads();

    float s[kKeys / 2];
    wg::fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      wg::mma_ss_n64<T>(s, slice_desc<kRows>(q_addr, kk), slice_desc<kKeys>(k_addr, kk), kk > 0 ? 1 : 0);
    wg::commit();
    wg::wait<0>();
    wg::fence_operand(s);

    // Online softmax on the fragments: s[4i + 2h + e] is (row[h], key t0 + 8i + quad_col + e).
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = -INFINITY;
#pragma unroll
      for (int i = 0; i < kKeys / 8; ++i)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = 8 * i + quad_col + e;
          const int64_t j = t0 + c;
          float& x = s[4 * i + 2 * h + e];
          x = (live[h] && c < cnt && j >= kr[h].lo && j < kr[h].hi) ? x * scale_log2 : -INFINITY;
          mx = fmaxf(mx, x);
        }
      mx = wg::quad_max(mx);
      const float m_new = fmaxf(m[h], mx);
      const bool none = !(m_new > -INFINITY);
      const float alpha = none ? 1.f : exp2f(m[h] - m_new);
      float sum = 0.f;
#pragma unroll
      for (int i = 0; i < kKeys / 8; ++i)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[4 * i + 2 * h + e];
          x = none ? 0.f : exp2f(x - m_new);
          sum += x;
        }
      sum = wg::quad_sum(sum);
      l[h] = l[h] * alpha + sum;
      m[h] = m_new;
#pragma unroll
      for (int i = 0; i < D / 8; ++i) o[4 * i + 2 * h] *= alpha, o[4 * i + 2 * h + 1] *= alpha;
    }

    uint32_t pa[kKeys / 16][4];
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) pa[kk][r] = pack2<T>(s[8 * kk + 2 * r], s[8 * kk + 2 * r + 1]);
    wg::fence();
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) wg::mma_rs<T, D>(o, pa[kk], slice_desc<D>(v_addr, kk), 1);
    wg::commit();
    wg::wait<0>();
    wg::fence_operand(o);
  }

  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (!live[h]) continue;
    const int64_t tok = q0 + rm.token(row[h]), head = rm.head(row[h]);
    const float inv = l[h] > 0.f ? 1.f / l[h] : 0.f;
    T* orow = out + tok * p.out_token_stride + head * p.out_head_stride;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      orow[8 * i + quad_col] = from_float<T>(o[4 * i + 2 * h] * inv);
      orow[8 * i + quad_col + 1] = from_float<T>(o[4 * i + 2 * h + 1] * inv);
    }
    if (p.lse != nullptr && lane % 4 == 0)
      p.lse[head * p.lse_head_stride + tok] = l[h] > 0.f ? (m[h] + log2f(l[h])) * kLn2 : -INFINITY;
  }
#endif
}

template <typename T, int D> const char* launch(const AttnVarlenFwdParams& p, gpuStream_t s) {
  const int64_t G = p.num_heads_q / p.num_heads_k;
  const VarlenGeometry geo = attn_detail::varlen_geometry(G, kRows);
  const dim3 grid(static_cast<unsigned>(attn_detail::packed_blocks(p.total_q, p.batch, geo.bm)),
                  static_cast<unsigned>(p.num_heads_k * geo.chunks));
  constexpr int bytes = Layout<D>::bytes;
#if !defined(ZAYA_RT_GPU_EMU)
  if constexpr (bytes > 48 * 1024) {
    if (cudaFuncSetAttribute(varlen_fwd_sm90_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) !=
        cudaSuccess)
      return cudaGetErrorString(cudaGetLastError());
  }
#endif
  varlen_fwd_sm90_kernel<T, D><<<grid, kThreads, bytes, s>>>(p, geo);
  const gpuError_t e = gpu_last_error();
  return e == gpuSuccess ? nullptr : gpu_error_string(e);
}

// Head dim 64 or 128 (the caller checked cuda/attention_sm90.h's qualifies()).
template <typename T> const char* launch_any(const AttnVarlenFwdParams& p, gpuStream_t s) {
  return p.head_dim == 64 ? launch<T, 64>(p, s) : launch<T, 128>(p, s);
}

}  // namespace zaya_rt::gpu::attn_sm90
