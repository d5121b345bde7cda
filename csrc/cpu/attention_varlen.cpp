// CPU varlen attention forward, flash-style: K^T and V are packed once per (kv head, 64-key block) into the
// GEMM micro-kernel's panel layout; then each work item (sequence, kv head, block of queries x the GQA group's
// heads as rows) sweeps the key blocks its mask reaches with an online softmax, keeping a [rows, d] fp32
// accumulator. Blocks wholly outside the causal/window mask are skipped, the others masked per row.
// Compiled once per ISA.
#include <omp.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <vector>

#include "cpu/attention_tile.h"
#include "cpu/isa_kernels.h"
#include "zaya_rt/attention.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {

// bf16 scores and P.V through vdpbf16ps (bf16 pairs, P rounded to bf16) or fp32 FMAs after conversion while
// packing. ZAYA_RT_CPU_BF16_DOT / set_cpu_bf16_dot force one; the default is fp32 FMAs, measured faster on the
// development machine (T=2048, Hq=8, Hk=2, d=128 causal: 325 ms with FMAs against 432 ms with vdpbf16ps).
bool attn_bf16_dot() { return bf16_dot_override() == 1; }

namespace {

constexpr int64_t BN = kAttnBlockN;
constexpr int64_t kChunksPerBlock = BN / kNR;
constexpr int64_t kBlocksPerGroup = 8;  // 512 keys: 512 KB of fp32 K and V at d = 128

template <typename T, bool Dot> struct PackedKV {
  using Entry = typename PackMode<T, Dot>::Entry;
  Entry* k;  // [hk][block][chunk of 32 keys][kpd][32]
  Entry* v;  // [hk][block][d chunk of 32][kpn][32]
  int64_t blocks, kpd, d_chunks;
  std::vector<int64_t> first_block;  // per sequence

  Entry* k_chunk(int64_t h, int64_t blk, int64_t c) const {
    return k + ((h * blocks + blk) * kChunksPerBlock + c) * kpd * kNR;
  }
  Entry* v_chunk(int64_t h, int64_t blk, int64_t dc) const {
    return v + ((h * blocks + blk) * d_chunks + dc) * packed_k<T, Dot>(BN) * kNR;
  }
};

// Packs every sequence's K^T and V blocks for all kv heads (in parallel).
template <typename T, bool Dot>
void pack_kv(const T* k, int64_t k_ts, int64_t k_hs, const T* v, int64_t v_ts, int64_t v_hs, int64_t hk, int64_t d,
             const std::vector<AttnSeq>& seqs, PackedKV<T, Dot>& pk) {
  std::vector<std::pair<int64_t, int64_t>> blocks;  // (sequence, block within it)
  pk.first_block.assign(seqs.size(), 0);
  for (size_t b = 0; b < seqs.size(); ++b) {
    pk.first_block[b] = static_cast<int64_t>(blocks.size());
    for (int64_t j = 0; j < attn_ceil(seqs[b].lk, BN); ++j) blocks.push_back({static_cast<int64_t>(b), j});
  }
  const int64_t nb = static_cast<int64_t>(blocks.size());
#pragma omp parallel for schedule(static) if (nb * hk * d >= 8192)
  for (int64_t task = 0; task < nb * hk; ++task) {
    const int64_t h = task / nb, gb = task % nb;
    const AttnSeq& s = seqs[blocks[gb].first];
    const int64_t key0 = s.k0 + blocks[gb].second * BN;
    const int64_t n = std::min(BN, s.k0 + s.lk - key0);
    const T* rows[kNR];
    for (int64_t c = 0; c < kChunksPerBlock; ++c) {
      for (int64_t i = 0; i < kNR; ++i) {
        const int64_t j = c * kNR + i;
        rows[i] = j < n ? k + (key0 + j) * k_ts + h * k_hs : nullptr;
      }
      pack_row_ptrs<kNR, T, Dot>(rows, d, 1, pk.k_chunk(h, gb, c));
    }
    // V^T rows are the d columns, read along the keys (column stride = token stride).
    const T* vbase = v + key0 * v_ts + h * v_hs;
    for (int64_t dc = 0; dc < pk.d_chunks; ++dc) {
      for (int64_t i = 0; i < kNR; ++i) rows[i] = dc * kNR + i < d ? vbase + dc * kNR + i : nullptr;
      pack_row_ptrs<kNR, T, Dot>(rows, n, v_ts, pk.v_chunk(h, gb, dc));
    }
  }
}

struct FwdItem {
  int64_t seq, head_k, qa, qb;  // queries [qa, qb) of the sequence (local indices)
};

template <typename T, bool Dot>
struct FwdScratch {
  using Entry = typename PackMode<T, Dot>::Entry;
  Entry* q;      // [panels][kpd][MR]
  float* o;      // [panels][d_chunks][MR][NR]
  float* m;      // [rows]
  float* l;      // [rows]
  float* s;      // [MR][BN]
  Entry* p;      // [kpn][MR]

  static FwdScratch carve(char* base, int64_t rows, int64_t d, int64_t d_chunks) {
    FwdScratch f;
    char* at = base;
    auto take = [&](int64_t bytes) { char* r = at; at += attn_align(bytes); return r; };
    f.q = reinterpret_cast<Entry*>(take(rows * d * 4));
    f.o = reinterpret_cast<float*>(take(rows * d_chunks * kNR * 4));
    f.m = reinterpret_cast<float*>(take(rows * 4));
    f.l = reinterpret_cast<float*>(take(rows * 4));
    f.s = reinterpret_cast<float*>(take(kMR * BN * 4));
    f.p = reinterpret_cast<Entry*>(take(BN * kMR * 4));
    return f;
  }
};

// Online-softmax update of one panel's rows with the raw scores s[MR][BN] of a key block (n valid keys,
// block start `key0` within the sequence). Writes P into the packed panel and returns, per row, the factor
// the accumulator must be rescaled by.
template <typename T, bool Dot>
void softmax_panel(float* s, int64_t n, int64_t key0, const int64_t* pos, int rows, const AttnVarlenFwdParams& p,
                   float* m, float* l, float* alpha, typename PackMode<T, Dot>::Entry* pp) {
  const int64_t kpn = packed_k<T, Dot>(n);
  for (int r = 0; r < kMR; ++r) {
    float* sr = s + r * BN;
    alpha[r] = 1.f;
    KeyRange kr{0, 0};
    if (r < rows) {
      kr = attn_key_range(pos[r], key0 + n, p.causal, p.window);
      kr.lo = std::max<int64_t>(kr.lo - key0, 0);
      kr.hi = std::max<int64_t>(kr.hi - key0, 0);
    }
    if (kr.lo >= kr.hi) {
      for (int64_t j = 0; j < n; ++j) sr[j] = 0.f;
    } else {
      const float mx = scale_max(sr + kr.lo, kr.hi - kr.lo, p.scale);
      const float m_new = std::max(m[r], mx);
      alpha[r] = std::exp(m[r] - m_new);  // 0 when m was -inf (the accumulator is 0 then)
      const float sum = exp_shifted(sr + kr.lo, kr.hi - kr.lo, m_new);
      for (int64_t j = 0; j < kr.lo; ++j) sr[j] = 0.f;
      for (int64_t j = kr.hi; j < n; ++j) sr[j] = 0.f;
      l[r] = l[r] * alpha[r] + sum;
      m[r] = m_new;
    }
  }
  if constexpr (PackMode<T, Dot>::bf16) {
    for (int64_t q = 0; q < kpn; ++q)
      for (int r = 0; r < kMR; ++r) {
        const float lo = s[r * BN + 2 * q];
        const float hi = 2 * q + 1 < n ? s[r * BN + 2 * q + 1] : 0.f;
        pp[q * kMR + r] = bf16_bits(lo) | (bf16_bits(hi) << 16);
      }
  } else {
    for (int64_t j = 0; j < kpn; ++j)
      for (int r = 0; r < kMR; ++r) pp[j * kMR + r] = s[r * BN + j];
  }
}

template <typename T, bool Dot>
void run_item(const FwdItem& it, const AttnVarlenFwdParams& p, const AttnSeq& seq, const PackedKV<T, Dot>& pk,
              FwdScratch<T, Dot>& ws) {
  using Entry = typename PackMode<T, Dot>::Entry;
  const int64_t G = p.num_heads_q / p.num_heads_k, d = p.head_dim, dch = pk.d_chunks;
  const int64_t rows = (it.qb - it.qa) * G;
  const int64_t panels = attn_ceil(rows, kMR);
  const T* q = static_cast<const T*>(p.q);
  const int64_t shift = seq.lk - seq.lq;  // query i sits at position shift + i

  std::vector<int64_t> pos(panels * kMR, -1);
  for (int64_t pi = 0; pi < panels; ++pi) {
    const T* ptrs[kMR];
    for (int r = 0; r < kMR; ++r) {
      const int64_t row = pi * kMR + r;
      if (row < rows) {
        const int64_t qi = it.qa + row / G, h = it.head_k * G + row % G;
        ptrs[r] = q + (seq.q0 + qi) * p.q_token_stride + h * p.q_head_stride;
        pos[row] = shift + qi;
      } else {
        ptrs[r] = nullptr;
      }
    }
    pack_row_ptrs<kMR, T, Dot>(ptrs, d, 1, ws.q + pi * pk.kpd * kMR);
  }
  std::fill(ws.o, ws.o + panels * dch * kMR * kNR, 0.f);
  std::fill(ws.m, ws.m + panels * kMR, -INFINITY);
  std::fill(ws.l, ws.l + panels * kMR, 0.f);

  const int64_t seq_first = pk.first_block[it.seq];
  // Each panel's reach in key blocks [lo_blk, hi_blk).
  std::vector<int64_t> lo_blk(panels), hi_blk(panels);
  int64_t first = INT64_MAX, last = 0;
  for (int64_t pi = 0; pi < panels; ++pi) {
    const int live = static_cast<int>(std::min<int64_t>(kMR, rows - pi * kMR));
    const int64_t pos_lo = pos[pi * kMR], pos_hi = pos[pi * kMR + live - 1];
    const int64_t key_hi = p.causal ? std::min(seq.lk, pos_hi + 1) : seq.lk;
    const int64_t key_lo = p.window > 0 ? std::max<int64_t>(0, pos_lo - p.window + 1) : 0;
    lo_blk[pi] = key_lo / BN;
    hi_blk[pi] = std::max(lo_blk[pi], key_hi > 0 ? attn_ceil(key_hi, BN) : 0);
    first = std::min(first, lo_blk[pi]);
    last = std::max(last, hi_blk[pi]);
  }
  // Key blocks in groups that stay in L2 while every panel sweeps them; within a group, panel-outer keeps one
  // panel's Q and O in L1 while the group's K/V blocks stream from L2.
  for (int64_t group0 = first; group0 < last; group0 += kBlocksPerGroup) {
    for (int64_t pi = 0; pi < panels; ++pi) {
      const Entry* qa = ws.q + pi * pk.kpd * kMR;
      const int live = static_cast<int>(std::min<int64_t>(kMR, rows - pi * kMR));
      const int64_t* ppos = pos.data() + pi * kMR;
      float* o = ws.o + pi * dch * kMR * kNR;
      const int64_t blk_end = std::min(group0 + kBlocksPerGroup, hi_blk[pi]);
      for (int64_t blk = std::max(group0, lo_blk[pi]); blk < blk_end; ++blk) {
        const int64_t key0 = blk * BN, n = std::min(BN, seq.lk - key0);
        const int64_t kpn = packed_k<T, Dot>(n);
        float tile[kMR * kNR];
        for (int64_t c = 0; c * kNR < n; ++c) {
          micro_kernel<T, Dot>(pk.kpd, qa, pk.k_chunk(it.head_k, seq_first + blk, c), tile, false);
          for (int r = 0; r < kMR; ++r)
            for (int64_t j = 0; j < kNR; ++j) ws.s[r * BN + c * kNR + j] = tile[r * kNR + j];
        }
        float alpha[kMR];
        softmax_panel<T, Dot>(ws.s, n, key0, ppos, live, p, ws.m + pi * kMR, ws.l + pi * kMR, alpha, ws.p);
        for (int64_t dc = 0; dc < dch; ++dc) {
          float* od = o + dc * kMR * kNR;
          for (int r = 0; r < kMR; ++r)
            if (alpha[r] != 1.f)
              for (int64_t j = 0; j < kNR; ++j) od[r * kNR + j] *= alpha[r];
          micro_kernel<T, Dot>(kpn, ws.p, pk.v_chunk(it.head_k, seq_first + blk, dc), od, true);
        }
      }
    }
  }

  T* out = static_cast<T*>(p.out);
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t qi = it.qa + row / G, h = it.head_k * G + row % G;
    const int64_t pi = row / kMR, r = row % kMR;
    const float l = ws.l[row];
    const float inv = l > 0.f ? 1.f / l : 0.f;
    T* dst = out + (seq.q0 + qi) * p.out_token_stride + h * p.out_head_stride;
    const float* o = ws.o + pi * dch * kMR * kNR + r * kNR;
    for (int64_t dc = 0; dc < dch; ++dc)
      store_scaled(dst + dc * kNR, o + dc * kMR * kNR, inv, static_cast<int>(std::min<int64_t>(kNR, d - dc * kNR)));
    if (p.lse) p.lse[h * p.lse_head_stride + seq.q0 + qi] = l > 0.f ? ws.m[row] + std::log(l) : -INFINITY;
  }
}

template <typename T, bool Dot>
const char* varlen_fwd_t(const AttnVarlenFwdParams& p) {
  using Entry = typename PackMode<T, Dot>::Entry;
  const int64_t hk = p.num_heads_k, G = p.num_heads_q / hk, d = p.head_dim;
  const std::vector<AttnSeq> seqs = attn_sequences(p.cu_seqlens_q, p.cu_seqlens_k, p.batch);

  char* cursor = static_cast<char*>(p.workspace);
  char* end = cursor + p.workspace_bytes;
  PackedKV<T, Dot> pk;
  pk.blocks = attn_num_blocks(p.total_k, p.batch);
  pk.kpd = packed_k<T, Dot>(d);
  pk.d_chunks = attn_d_chunks(d);
  const int64_t k_bytes = hk * pk.blocks * kChunksPerBlock * pk.kpd * kNR * 4;
  const int64_t v_bytes = hk * pk.blocks * pk.d_chunks * packed_k<T, Dot>(BN) * kNR * 4;
  pk.k = reinterpret_cast<Entry*>(cursor);
  cursor += attn_align(k_bytes);
  pk.v = reinterpret_cast<Entry*>(cursor);
  cursor += attn_align(v_bytes);
  const int64_t slab = attn_fwd_thread_bytes(G, d);
  const int64_t room = (end - cursor) / slab;
  if (room < 1) return "workspace too small";
  const int threads = static_cast<int>(std::min<int64_t>(room, omp_get_max_threads()));

  pack_kv<T, Dot>(static_cast<const T*>(p.k), p.k_token_stride, p.k_head_stride, static_cast<const T*>(p.v),
                  p.v_token_stride, p.v_head_stride, hk, d, seqs, pk);

  // Work items, the costliest (latest causal query blocks) first so dynamic scheduling balances.
  const int64_t bq = attn_block_q(G);
  std::vector<FwdItem> items;
  std::vector<int64_t> cost;
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t qa = 0; qa < seqs[b].lq; qa += bq)
      for (int64_t h = 0; h < hk; ++h) {
        const int64_t qb = std::min(seqs[b].lq, qa + bq);
        items.push_back({b, h, qa, qb});
        const int64_t reach = p.causal ? std::max<int64_t>(0, seqs[b].lk - seqs[b].lq + qb) : seqs[b].lk;
        cost.push_back(p.window > 0 ? std::min<int64_t>(reach, p.window + bq) : reach);
      }
  std::vector<int64_t> order(items.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });

  const int64_t nitems = static_cast<int64_t>(items.size());
#pragma omp parallel num_threads(threads) if (nitems > 1 && p.total_q * p.total_k >= 4096)
  {
    FwdScratch<T, Dot> ws = FwdScratch<T, Dot>::carve(cursor + omp_get_thread_num() * slab,
                                                      attn_ceil(attn_item_rows(G), kMR) * kMR, d, pk.d_chunks);
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < nitems; ++i) {
      const FwdItem& it = items[order[i]];
      run_item<T, Dot>(it, p, seqs[it.seq], pk, ws);
    }
  }
  return nullptr;
}

}  // namespace

const char* attention_varlen_fwd(const AttnVarlenFwdParams& p) {
  ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, {
    if constexpr (std::is_same_v<T, bf16> && kHasBf16Dot) {
      if (attn_bf16_dot()) return varlen_fwd_t<T, true>(p);
    }
    return varlen_fwd_t<T, false>(p);
  });
  return nullptr;
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
