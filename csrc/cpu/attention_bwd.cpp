// CPU varlen attention backward, flash-style recomputation from the saved log-sum-exp. A work item is one
// (sequence, kv head): it stages its query rows (the GQA group's heads, head-major) and key blocks in fp32,
// then per key block of 64 keys sweeps the query tiles that reach it: S = Q K^T and dP = dO V^T as register
// tiles, P = exp(S * scale - lse), dS = P * (dP - delta) * scale, then dV += P^T dO and dK += dS^T Q into the
// block's accumulators and dQ += dS K into the item's dQ rows. The item owns all it writes, so threads need no
// atomics. Tiles the causal/window mask hides are never computed; per 8-query strip only the 32-key chunks
// some query reaches are, and the products over keys or queries run over the reached range only. With fewer
// items than about two per thread, an item's key blocks are split into ranges that run in parallel, each
// range past the first accumulating dQ in its own copy (summed when dQ is stored). Compiled once per ISA.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/attention_bwd_tile.h"
#include "cpu/attention_tile.h"
#include "zaya_rt/attention.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {
namespace {

constexpr int64_t BN = kAttnBlockN;
constexpr int64_t SR = kAttnBwdStrip;
constexpr int64_t TR = kAttnBwdTileRows;
static_assert(SR == kBwdTileM && BN % kBwdTileN == 0, "tile shapes");

// The fp32 staging regions of attn_bwd_shared_bytes.
struct BwdStage {
  int64_t dp, rows_cap, key_cap;  // padded d; rows per q head; keys per kv head
  float *q, *dout, *dq;           // [hq][rows_cap][dp]
  float* dq_parts;                // [parts - 1][hq][rows_cap][dp]: dQ of the key ranges past an item's first
  int64_t parts;
  float *lse, *delta;             // [hq][rows_cap]
  float *k, *kt, *vt;             // [hk][key_cap / 64][64 x dp]
};

struct BwdItem {
  int64_t seq, head_k, row0, block0;  // row0 / block0: the sequence's first staged row / key block
};

// Key blocks [kb0, kb1) of an item; part 0 accumulates dQ in BwdStage::dq, part p > 0 in dq_parts[p - 1].
struct BwdUnit {
  int64_t item, kb0, kb1, part, cost;
};

// Per-thread scratch (attn_bwd_thread_bytes).
struct BwdScratch {
  float *dk, *dv;  // [BN][dp]
  float *s, *dp;   // [TR][BN]
  float* orow;     // [SR][dp]: a strip's O rows
};

template <typename T>
void stage_row(const T* src, int64_t d, int64_t dp, float* dst) {
  to_f32(src, d, dst);
  std::fill(dst + d, dst + dp, 0.f);
}

// Converts the item's query rows (Q, dO, lse, delta; dQ zeroed) and key blocks (K, K^T, V^T) to fp32.
template <typename T>
void stage_item(const AttnVarlenBwdParams& p, const AttnSeq& s, const BwdItem& it, const BwdStage& st,
                const BwdScratch& ws) {
  const int64_t G = p.num_heads_q / p.num_heads_k, d = p.head_dim, dp = st.dp;
  const int64_t lqp = attn_ceil(s.lq, SR) * SR;
  const T* q = static_cast<const T*>(p.q);
  const T* out = static_cast<const T*>(p.out);
  const T* dout = static_cast<const T*>(p.dout);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t h = it.head_k * G + g, base = h * st.rows_cap + it.row0;
    std::fill(st.dq + base * dp, st.dq + (base + lqp) * dp, 0.f);
    for (int64_t i0 = 0; i0 < lqp; i0 += SR) {
      for (int64_t i = i0; i < i0 + SR; ++i) {
        float* qf = st.q + (base + i) * dp;
        float* dof = st.dout + (base + i) * dp;
        float* of = ws.orow + (i - i0) * dp;
        if (i >= s.lq) {
          std::fill(qf, qf + dp, 0.f);
          std::fill(dof, dof + dp, 0.f);
          std::fill(of, of + dp, 0.f);
          st.lse[base + i] = INFINITY;
          continue;
        }
        const int64_t row = s.q0 + i;
        stage_row(q + row * p.q_token_stride + h * p.q_head_stride, d, dp, qf);
        stage_row(dout + row * p.dout_token_stride + h * p.dout_head_stride, d, dp, dof);
        stage_row(out + row * p.out_token_stride + h * p.out_head_stride, d, dp, of);
        const float lse = p.lse[h * p.lse_head_stride + row];
        st.lse[base + i] = lse == -INFINITY ? INFINITY : lse;  // a query that sees no key: P = 0
      }
      strip_dots(ws.orow, st.dout + (base + i0) * dp, dp, dp, st.delta + base + i0);
    }
  }
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const int64_t nkb = attn_ceil(s.lk, BN);
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const int64_t off = (it.head_k * st.key_cap / BN + it.block0 + kb) * BN * dp;
    float* kf = st.k + off;
    float* kt = st.kt + off;
    float* vt = st.vt + off;
    float* vrow = ws.orow;  // free until the next item
    for (int64_t j = 0; j < BN; ++j) {
      const int64_t t = s.k0 + kb * BN + j;
      if (kb * BN + j < s.lk) {
        stage_row(k + t * p.k_token_stride + it.head_k * p.k_head_stride, d, dp, kf + j * dp);
        stage_row(v + t * p.v_token_stride + it.head_k * p.v_head_stride, d, dp, vrow);
      } else {
        std::fill(kf + j * dp, kf + (j + 1) * dp, 0.f);
        std::fill(vrow, vrow + dp, 0.f);
      }
      for (int64_t c = 0; c < dp; ++c) {
        kt[c * BN + j] = kf[j * dp + c];
        vt[c * BN + j] = vrow[c];
      }
    }
  }
}

// One (query tile, key block) step: rows [ta, ta + n) of q head g (n a multiple of SR) against keys
// [key0, key0 + BN) of the sequence, staged at kf / kt / vt.
void tile_step(const AttnVarlenBwdParams& p, const AttnSeq& s, const BwdStage& st, const BwdScratch& ws, float* dq,
               int64_t base, int64_t ta, int64_t n, int64_t key0, const float* kf, const float* kt, const float* vt) {
  const int64_t dp = st.dp, shift = s.lk - s.lq;
  const float* qg = st.q + base * dp;
  const float* dog = st.dout + base * dp;
  float* dqg = dq + base * dp;
  const float* lse = st.lse + base;
  const float* delta = st.delta + base;
  // Keys [lo, hi) of the block each 8-row strip reaches (the union over its live rows).
  int64_t strip_lo[TR / SR], strip_hi[TR / SR];
  for (int64_t r0 = 0; r0 < n; r0 += SR) {
    const int64_t i0 = ta + r0, last = std::min(i0 + SR, s.lq) - 1;
    int64_t lo = 0, hi = 0;
    if (last >= i0) {
      lo = std::clamp<int64_t>(attn_key_range(shift + i0, s.lk, p.causal, p.window).lo - key0, 0, BN);
      hi = std::clamp<int64_t>(attn_key_range(shift + last, s.lk, p.causal, p.window).hi - key0, 0, BN);
    }
    strip_lo[r0 / SR] = lo, strip_hi[r0 / SR] = std::max(lo, hi);
    for (int64_t c0 = lo / kBwdTileN * kBwdTileN; c0 < hi; c0 += kBwdTileN) {
      fma_tile(dp, qg + i0 * dp, 1, dp, kt + c0, BN, ws.s + r0 * BN + c0, BN, false);
      fma_tile(dp, dog + i0 * dp, 1, dp, vt + c0, BN, ws.dp + r0 * BN + c0, BN, false);
    }
  }
  for (int64_t r = 0; r < n; ++r) {
    const int64_t i = ta + r;
    int64_t lo = 0, hi = 0;
    if (i < s.lq && lse[i] != INFINITY) {
      const KeyRange kr = attn_key_range(shift + i, s.lk, p.causal, p.window);
      lo = std::clamp<int64_t>(kr.lo - key0, 0, BN), hi = std::clamp<int64_t>(kr.hi - key0, 0, BN);
    }
    softmax_grad_row(ws.s + r * BN, ws.dp + r * BN, BN, lo, hi, p.scale, lse[i], delta[i]);
  }
  // dV += P^T dO and dK += dS^T Q per 8-key strip, over the tile rows that see one of its keys; then dQ += dS K
  // per strip, over the keys it reaches. Column chunks outermost: one chunk of dO, Q or K stays in L1 meanwhile.
  const int64_t kcnt = std::min(BN, s.lk - key0);
  int64_t key_rl[BN / kBwdTileM], key_rh[BN / kBwdTileM];
  for (int64_t j0 = 0; j0 < BN; j0 += kBwdTileM) {
    const int64_t rl = p.causal ? key0 + j0 - shift - ta : 0;
    const int64_t rh = p.window > 0 ? key0 + j0 + kBwdTileM + p.window - 1 - shift - ta : n;
    key_rl[j0 / kBwdTileM] = std::clamp<int64_t>(rl, 0, n);
    key_rh[j0 / kBwdTileM] = j0 < kcnt ? std::clamp<int64_t>(rh, 0, n) : 0;
  }
  for (int64_t c0 = 0; c0 < dp; c0 += kBwdTileN) {
    for (int64_t j0 = 0; j0 < kcnt; j0 += kBwdTileM) {
      const int64_t rl = key_rl[j0 / kBwdTileM], rh = key_rh[j0 / kBwdTileM];
      if (rl < rh)
        fma_tile(rh - rl, ws.s + rl * BN + j0, BN, 1, dog + (ta + rl) * dp + c0, dp, ws.dv + j0 * dp + c0, dp, true);
    }
    for (int64_t j0 = 0; j0 < kcnt; j0 += kBwdTileM) {
      const int64_t rl = key_rl[j0 / kBwdTileM], rh = key_rh[j0 / kBwdTileM];
      if (rl < rh)
        fma_tile(rh - rl, ws.dp + rl * BN + j0, BN, 1, qg + (ta + rl) * dp + c0, dp, ws.dk + j0 * dp + c0, dp, true);
    }
    for (int64_t r0 = 0; r0 < n; r0 += SR) {
      const int64_t lo = strip_lo[r0 / SR], hi = strip_hi[r0 / SR];
      if (lo < hi)
        fma_tile(hi - lo, ws.dp + r0 * BN + lo, 1, BN, kf + lo * dp + c0, dp, dqg + (ta + r0) * dp + c0, dp, true);
    }
  }
}

// Queries [i_lo, i_hi) of a sequence whose position reaches keys [key0, key0 + kcnt): pos >= key0 (causal) and
// pos - window < key0 + kcnt - 1.
struct QueryRange {
  int64_t lo, hi;
};
QueryRange queries_reaching(const AttnVarlenBwdParams& p, const AttnSeq& s, int64_t key0, int64_t kcnt) {
  const int64_t shift = s.lk - s.lq;
  const int64_t lo = p.causal ? std::max<int64_t>(0, key0 - shift) : 0;
  const int64_t hi = p.window > 0 ? std::min<int64_t>(s.lq, key0 + kcnt - 1 + p.window - shift) : s.lq;
  return {std::min(lo, s.lq), std::max(lo, hi)};
}

// dK and dV of key blocks [u.kb0, u.kb1) of an item, and their share of its dQ.
template <typename T>
void run_unit(const AttnVarlenBwdParams& p, const AttnSeq& s, const BwdItem& it, const BwdUnit& u,
              const BwdStage& st, const BwdScratch& ws) {
  const int64_t G = p.num_heads_q / p.num_heads_k, d = p.head_dim, dp = st.dp;
  float* dq = st.dq;
  if (u.part > 0) {
    dq = st.dq_parts + (u.part - 1) * p.num_heads_q * st.rows_cap * dp;
    const int64_t lqp = attn_ceil(s.lq, SR) * SR;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t base = (it.head_k * G + g) * st.rows_cap + it.row0;
      std::fill(dq + base * dp, dq + (base + lqp) * dp, 0.f);
    }
  }
  T* dkp = static_cast<T*>(p.dk);
  T* dvp = static_cast<T*>(p.dv);
  for (int64_t kb = u.kb0; kb < u.kb1; ++kb) {
    const int64_t key0 = kb * BN, kcnt = std::min(BN, s.lk - key0);
    const int64_t off = (it.head_k * st.key_cap / BN + it.block0 + kb) * BN * dp;
    std::fill(ws.dk, ws.dk + BN * dp, 0.f);
    std::fill(ws.dv, ws.dv + BN * dp, 0.f);
    const QueryRange qr = queries_reaching(p, s, key0, kcnt);
    if (qr.lo < qr.hi) {
      const int64_t r_begin = qr.lo / SR * SR, r_end = attn_ceil(qr.hi, SR) * SR;
      for (int64_t g = 0; g < G; ++g) {
        const int64_t base = (it.head_k * G + g) * st.rows_cap + it.row0;
        for (int64_t ta = r_begin; ta < r_end; ta += TR)
          tile_step(p, s, st, ws, dq, base, ta, std::min(TR, r_end - ta), key0, st.k + off, st.kt + off,
                    st.vt + off);
      }
    }
    for (int64_t j = 0; j < kcnt; ++j) {
      const int64_t t = s.k0 + key0 + j;
      store_scaled(dkp + t * p.dk_token_stride + it.head_k * p.dk_head_stride, ws.dk + j * dp, 1.f,
                   static_cast<int>(d));
      store_scaled(dvp + t * p.dv_token_stride + it.head_k * p.dv_head_stride, ws.dv + j * dp, 1.f,
                   static_cast<int>(d));
    }
  }
}

// dQ of an item: the sum of its `parts` key ranges' accumulators, stored in T.
template <typename T>
void store_dq(const AttnVarlenBwdParams& p, const AttnSeq& s, const BwdItem& it, int64_t parts, const BwdStage& st,
              const BwdScratch& ws) {
  const int64_t G = p.num_heads_q / p.num_heads_k, d = p.head_dim, dp = st.dp;
  const int64_t part_stride = p.num_heads_q * st.rows_cap * dp;
  T* dqp = static_cast<T*>(p.dq);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t h = it.head_k * G + g, base = h * st.rows_cap + it.row0;
    for (int64_t i = 0; i < s.lq; ++i) {
      const float* row = st.dq + (base + i) * dp;
      if (parts > 1) {
        std::copy(row, row + d, ws.orow);
        for (int64_t part = 1; part < parts; ++part)
          axpy_f32(1.f, st.dq_parts + (part - 1) * part_stride + (base + i) * dp, ws.orow, d);
        row = ws.orow;
      }
      store_scaled(dqp + (s.q0 + i) * p.dq_token_stride + h * p.dq_head_stride, row, 1.f, static_cast<int>(d));
    }
  }
}

// Splits each item's key blocks into up to `parts` ranges of about equal cost (query rows reaching them).
std::vector<BwdUnit> make_units(const AttnVarlenBwdParams& p, const std::vector<AttnSeq>& seqs,
                                const std::vector<BwdItem>& items, int64_t parts, std::vector<int64_t>& item_parts) {
  std::vector<BwdUnit> units;
  item_parts.assign(items.size(), 1);
  for (size_t i = 0; i < items.size(); ++i) {
    const AttnSeq& s = seqs[items[i].seq];
    const int64_t nkb = attn_ceil(s.lk, BN);
    std::vector<int64_t> cost(nkb);
    int64_t total = 0;
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const QueryRange qr = queries_reaching(p, s, kb * BN, std::min(BN, s.lk - kb * BN));
      cost[kb] = (qr.hi - qr.lo) + 1;
      total += cost[kb];
    }
    const int64_t n = std::max<int64_t>(1, std::min(parts, nkb));
    int64_t kb = 0, acc = 0;
    for (int64_t part = 0; part < n; ++part) {
      // At least one block per part, and one left for each later part; the last part takes the rest.
      const int64_t kb0 = kb, target = total * (part + 1) / n, last = part == n - 1 ? nkb : nkb - (n - 1 - part);
      int64_t c = 0;
      while (kb < last && (kb == kb0 || part == n - 1 || acc + cost[kb] <= target)) acc += cost[kb], c += cost[kb++];
      units.push_back({static_cast<int64_t>(i), kb0, kb, part, c});
    }
    item_parts[i] = n;
  }
  return units;
}

template <typename T>
const char* varlen_bwd_t(const AttnVarlenBwdParams& p) {
  const int64_t hq = p.num_heads_q, hk = p.num_heads_k, d = p.head_dim;
  const std::vector<AttnSeq> seqs = attn_sequences(p.cu_seqlens_q, p.cu_seqlens_k, p.batch);
  BwdStage st;
  st.dp = attn_bwd_dp(d);
  st.rows_cap = attn_bwd_rows_cap(p.total_q, p.batch);
  st.key_cap = attn_num_blocks(p.total_k, p.batch) * BN;
  char* at = static_cast<char*>(p.workspace);
  auto take = [&](int64_t bytes) { float* r = reinterpret_cast<float*>(at); at += attn_align(bytes); return r; };
  const int64_t rows = hq * st.rows_cap, keys = hk * st.key_cap;
  st.q = take(4 * rows * st.dp), st.dout = take(4 * rows * st.dp), st.dq = take(4 * rows * st.dp);
  st.lse = take(4 * rows), st.delta = take(4 * rows);
  st.k = take(4 * keys * st.dp), st.kt = take(4 * keys * st.dp), st.vt = take(4 * keys * st.dp);
  const int64_t slab = attn_bwd_thread_bytes(d);
  const char* end = static_cast<char*>(p.workspace) + p.workspace_bytes;
  st.parts = attn_bwd_parts(p.batch, hk, omp_get_max_threads());
  if (end - at < attn_bwd_parts_bytes(p.total_q, p.batch, hq, d, st.parts) + slab) st.parts = 1;
  st.dq_parts = take(attn_bwd_parts_bytes(p.total_q, p.batch, hq, d, st.parts));
  const int64_t room = (end - at) / slab;
  if (room < 1) return "workspace too small";
  const int threads = static_cast<int>(std::min<int64_t>(room, omp_get_max_threads()));

  std::vector<BwdItem> items;
  for (int64_t b = 0, row0 = 0, block0 = 0; b < p.batch; ++b) {
    for (int64_t h = 0; h < hk; ++h) items.push_back({b, h, row0, block0});
    row0 += attn_ceil(seqs[b].lq, SR) * SR;
    block0 += attn_ceil(seqs[b].lk, BN);
  }
  std::vector<int64_t> item_parts;
  std::vector<BwdUnit> units = make_units(p, seqs, items, st.parts, item_parts);
  // The costliest units first so that dynamic scheduling balances.
  std::stable_sort(units.begin(), units.end(), [](const BwdUnit& a, const BwdUnit& b) { return a.cost > b.cost; });
  const int64_t n_items = static_cast<int64_t>(items.size()), n_units = static_cast<int64_t>(units.size());

#pragma omp parallel num_threads(threads) if (n_units > 1 && p.total_q * p.total_k >= 4096)
  {
    char* mine = at + omp_get_thread_num() * slab;
    auto carve = [&](int64_t bytes) { float* r = reinterpret_cast<float*>(mine); mine += attn_align(bytes); return r; };
    BwdScratch ws;
    ws.dk = carve(4 * BN * st.dp), ws.dv = carve(4 * BN * st.dp);
    ws.s = carve(4 * TR * BN), ws.dp = carve(4 * TR * BN);
    ws.orow = carve(4 * SR * st.dp);
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < n_items; ++i) stage_item<T>(p, seqs[items[i].seq], items[i], st, ws);
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < n_units; ++u) {
      const BwdItem& it = items[units[u].item];
      run_unit<T>(p, seqs[it.seq], it, units[u], st, ws);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < n_items; ++i) store_dq<T>(p, seqs[items[i].seq], items[i], item_parts[i], st, ws);
  }
  return nullptr;
}

}  // namespace

const char* attention_varlen_bwd(const AttnVarlenBwdParams& p) {
  ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, return varlen_bwd_t<T>(p));
  return nullptr;
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
