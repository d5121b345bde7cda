// CPU varlen attention backward, flash-style recomputation from the saved log-sum-exp, in two passes that
// need no atomics: (1) per (sequence, kv head, key block) the block's dK and dV summed over every query and
// GQA head that sees it; (2) per (sequence, kv head, query block) dQ. Rows are fp32 copies; inner loops are
// vectorised dot products and axpys over d. Compiled once per ISA.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/attention_tile.h"
#include "zaya_rt/attention.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {
namespace {

constexpr int64_t BN = kAttnBlockN;

struct BwdItem {
  int64_t seq, head_k, a, b;  // keys (pass 1) or queries (pass 2) [a, b) of the sequence
};

template <typename T>
void rows_to_f32(const T* base, int64_t token_stride, int64_t head_stride, int64_t t0, int64_t count, int64_t h,
                 int64_t d, float* dst) {
  for (int64_t j = 0; j < count; ++j) to_f32(base + (t0 + j) * token_stride + h * head_stride, d, dst + j * d);
}

template <typename T>
const char* varlen_bwd_t(const AttnVarlenBwdParams& p) {
  const int64_t hq = p.num_heads_q, hk = p.num_heads_k, G = hq / hk, d = p.head_dim, Tq = p.total_q;
  const std::vector<AttnSeq> seqs = attn_sequences(p.cu_seqlens_q, p.cu_seqlens_k, p.batch);
  float* delta = static_cast<float*>(p.workspace);  // [hq][Tq]
  char* scratch = static_cast<char*>(p.workspace) + attn_align(4 * hq * Tq);
  const int64_t slab = attn_bwd_thread_bytes(G, d);
  const int64_t room = (static_cast<char*>(p.workspace) + p.workspace_bytes - scratch) / slab;
  if (room < 1) return "workspace too small";
  const int threads = static_cast<int>(std::min<int64_t>(room, omp_get_max_threads()));
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const T* out = static_cast<const T*>(p.out);
  const T* dout = static_cast<const T*>(p.dout);
  const int64_t bq = attn_bwd_block_q(G);

  std::vector<BwdItem> key_items, query_items;
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < hk; ++h) {
      for (int64_t a = 0; a < seqs[b].lk; a += BN) key_items.push_back({b, h, a, std::min(seqs[b].lk, a + BN)});
      for (int64_t a = 0; a < seqs[b].lq; a += bq) query_items.push_back({b, h, a, std::min(seqs[b].lq, a + bq)});
    }
  const int64_t n1 = static_cast<int64_t>(key_items.size()), n2 = static_cast<int64_t>(query_items.size());

#pragma omp parallel num_threads(threads) if (Tq * p.total_k >= 4096)
  {
    float* kf = reinterpret_cast<float*>(scratch + omp_get_thread_num() * slab);  // [BN][d]
    float* vf = kf + BN * d;                                                      // [BN][d]
    float* dk = vf + BN * d;                                                      // [BN][d]
    float* dv = dk + BN * d;                                                      // [BN][d]
    float* qg = dv + BN * d;                                                      // [G][d]
    float* dog = qg + G * d;                                                      // [G][d]
    float* qb = dog + G * d;                                                      // [bq * G][d]
    float* dob = qb + bq * G * d;                                                 // [bq * G][d]
    float* dqb = dob + bq * G * d;                                                // [bq * G][d]

    // delta = rowsum(dO * O) in fp32.
#pragma omp for schedule(static)
    for (int64_t i = 0; i < Tq; ++i)
      for (int64_t h = 0; h < hq; ++h) {
        to_f32(out + i * p.out_token_stride + h * p.out_head_stride, d, qg);
        to_f32(dout + i * p.dout_token_stride + h * p.dout_head_stride, d, dog);
        delta[h * Tq + i] = dot_f32(qg, dog, d);
      }

    // Pass 1: dK, dV of a key block.
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < n1; ++item) {
      const BwdItem& it = key_items[item];
      const AttnSeq& s = seqs[it.seq];
      const int64_t cnt = it.b - it.a, shift = s.lk - s.lq;
      rows_to_f32(k, p.k_token_stride, p.k_head_stride, s.k0 + it.a, cnt, it.head_k, d, kf);
      rows_to_f32(v, p.v_token_stride, p.v_head_stride, s.k0 + it.a, cnt, it.head_k, d, vf);
      std::fill(dk, dk + cnt * d, 0.f);
      std::fill(dv, dv + cnt * d, 0.f);
      // Queries whose position reaches the block: pos >= a (causal) and pos - (b - 1) < window.
      int64_t i_lo = p.causal ? std::max<int64_t>(0, it.a - shift) : 0;
      int64_t i_hi = p.window > 0 ? std::min<int64_t>(s.lq, it.b - 1 + p.window - shift) : s.lq;
      for (int64_t i = i_lo; i < i_hi; ++i) {
        const KeyRange kr = attn_key_range(shift + i, s.lk, p.causal, p.window);
        const int64_t lo = std::max(kr.lo, it.a) - it.a, hi = std::min(kr.hi, it.b) - it.a;
        if (lo >= hi) continue;
        for (int64_t g = 0; g < G; ++g) {
          const int64_t h = it.head_k * G + g, row = s.q0 + i;
          const float lse = p.lse[h * p.lse_head_stride + row];
          if (lse == -INFINITY) continue;
          to_f32(q + row * p.q_token_stride + h * p.q_head_stride, d, qg);
          to_f32(dout + row * p.dout_token_stride + h * p.dout_head_stride, d, dog);
          const float dl = delta[h * Tq + row];
          for (int64_t j = lo; j < hi; ++j) {
            const float pr = std::exp(dot_f32(qg, kf + j * d, d) * p.scale - lse);
            axpy_f32(pr, dog, dv + j * d, d);
            const float ds = pr * (dot_f32(dog, vf + j * d, d) - dl);
            axpy_f32(ds * p.scale, qg, dk + j * d, d);
          }
        }
      }
      T* dkp = static_cast<T*>(p.dk);
      T* dvp = static_cast<T*>(p.dv);
      for (int64_t j = 0; j < cnt; ++j) {
        const int64_t t = s.k0 + it.a + j;
        store_scaled(dkp + t * p.dk_token_stride + it.head_k * p.dk_head_stride, dk + j * d, 1.f, static_cast<int>(d));
        store_scaled(dvp + t * p.dv_token_stride + it.head_k * p.dv_head_stride, dv + j * d, 1.f, static_cast<int>(d));
      }
    }

    // Pass 2: dQ of a query block (all heads of the group).
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < n2; ++item) {
      const BwdItem& it = query_items[item];
      const AttnSeq& s = seqs[it.seq];
      const int64_t cnt = it.b - it.a, shift = s.lk - s.lq, rows = cnt * G;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t row = s.q0 + it.a + r / G, h = it.head_k * G + r % G;
        to_f32(q + row * p.q_token_stride + h * p.q_head_stride, d, qb + r * d);
        to_f32(dout + row * p.dout_token_stride + h * p.dout_head_stride, d, dob + r * d);
      }
      std::fill(dqb, dqb + rows * d, 0.f);
      const KeyRange first = attn_key_range(shift + it.a, s.lk, p.causal, p.window);
      const KeyRange last = attn_key_range(shift + it.b - 1, s.lk, p.causal, p.window);
      const int64_t k_lo = first.lo, k_hi = std::max(first.hi, last.hi);
      for (int64_t k0 = k_lo; k0 < k_hi; k0 += BN) {
        const int64_t kcnt = std::min(BN, k_hi - k0);
        rows_to_f32(k, p.k_token_stride, p.k_head_stride, s.k0 + k0, kcnt, it.head_k, d, kf);
        rows_to_f32(v, p.v_token_stride, p.v_head_stride, s.k0 + k0, kcnt, it.head_k, d, vf);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = it.a + r / G, h = it.head_k * G + r % G, row = s.q0 + i;
          const float lse = p.lse[h * p.lse_head_stride + row];
          if (lse == -INFINITY) continue;
          const KeyRange kr = attn_key_range(shift + i, s.lk, p.causal, p.window);
          const int64_t lo = std::max(kr.lo, k0) - k0, hi = std::min(kr.hi, k0 + kcnt) - k0;
          const float dl = delta[h * Tq + row];
          for (int64_t j = lo; j < hi; ++j) {
            const float pr = std::exp(dot_f32(qb + r * d, kf + j * d, d) * p.scale - lse);
            const float ds = pr * (dot_f32(dob + r * d, vf + j * d, d) - dl);
            axpy_f32(ds * p.scale, kf + j * d, dqb + r * d, d);
          }
        }
      }
      T* dqp = static_cast<T*>(p.dq);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t row = s.q0 + it.a + r / G, h = it.head_k * G + r % G;
        store_scaled(dqp + row * p.dq_token_stride + h * p.dq_head_stride, dqb + r * d, 1.f, static_cast<int>(d));
      }
    }
  }
  return nullptr;
}

}  // namespace

const char* attention_varlen_bwd(const AttnVarlenBwdParams& p) {
  ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, return varlen_bwd_t<T>(p));
  return nullptr;
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
