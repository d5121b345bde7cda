// CPU paged decode attention: work items (sequence, kv head, context split) read each K/V row once for all
// the GQA group's heads and all n query tokens, in chunks of keys (scores, one vectorised exp per row and
// chunk, then P.V); partial results are merged per query row with their log-sum-exps (a single split writes
// its rows directly). With AVX-512 and head dims 32/64/128/256 the register tiles of attention_decode_tile.h
// read K/V rows straight from the pages; other builds and head dims widen each chunk to fp32 first. Compiled
// once per ISA.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/attention_decode_tile.h"
#include "cpu/attention_tile.h"
#include "zaya_rt/attention.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {
namespace {

constexpr int64_t kChunk = kAttnDecodeChunk;
constexpr int64_t kDecodeL2Keys = 256;  // keys per item prefetched into L2 up front

template <typename T> inline void prefetch_row_l2(const T* row, int64_t n) {
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int64_t off = 0; off < n * static_cast<int64_t>(sizeof(T)); off += 64) __builtin_prefetch(bytes + off, 0, 2);
}

// One work item: query rows [rows][d] (pre-scaled fp32, in the kernel's column order) against the keys
// [t_begin, t_end) of sequence b, kv head h; o [rows][d], m [rows], l [rows] are its running softmax state.
template <typename T>
struct DecodeItem {
  const AttnPagedDecodeParams& p;
  const T *kc, *vc;
  const int32_t* pages;
  int64_t h, L, n, G, rows, d, t_begin, t_end;
  int shift;
  float score_scale;  // what the register tiles multiply q.k by (1 where qf is pre-scaled)
  const float* qf;
  float *o, *m, *l;

  const T* k_row(int64_t t) const {
    const int64_t page = pages[t >> shift], slot = t & (p.page_size - 1);
    return kc + page * p.k_page_stride + slot * p.k_slot_stride + h * p.k_head_stride;
  }
  const T* v_row(int64_t t) const {
    const int64_t page = pages[t >> shift], slot = t & (p.page_size - 1);
    return vc + page * p.v_page_stride + slot * p.v_slot_stride + h * p.v_head_stride;
  }
  // Keys [lo, hi) of chunk [t0, t0 + cnt) that query row `row` may see, relative to t0 (lo >= hi: none).
  KeyRange chunk_range(int64_t row, int64_t t0, int64_t cnt) const {
    const KeyRange kr = attn_key_range(L - n + row / G, L, true, p.window);
    return {std::max(kr.lo, t0) - t0, std::min(kr.hi, t0 + cnt) - t0};
  }
  // Folds the row's scores sr[lo, hi) into its running max and sum; sr becomes the probabilities (zero outside
  // [lo, hi)) and the return value the factor the row's earlier output is scaled by.
  float softmax_step(int64_t row, float* sr, int64_t cnt, KeyRange kr) const {
    if (kr.lo >= kr.hi) {
      std::fill(sr, sr + cnt, 0.f);
      return 1.f;
    }
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int64_t j = kr.lo; j < kr.hi; ++j) mx = sr[j] > mx ? sr[j] : mx;
    const float m_new = std::max(m[row], mx);
    const float alpha = std::exp(m[row] - m_new);
    const float sum = exp_shifted(sr + kr.lo, kr.hi - kr.lo, m_new);
    std::fill(sr, sr + kr.lo, 0.f);
    std::fill(sr + kr.hi, sr + cnt, 0.f);
    l[row] = l[row] * alpha + sum;
    m[row] = m_new;
    return alpha;
  }
};

#if defined(__AVX512F__)
// The item through the register tiles (d = 16 * ND): per chunk the K/V row addresses are looked up once (the
// next chunk's are looked up and prefetched meanwhile), then each tile of query rows takes scores, softmax and
// P.V from the same rows.
template <typename T, int ND>
void run_item_tiles(const DecodeItem<T>& it, float* sc, const T** row_ptrs) {
  constexpr int RT = kDecodeTileRows<ND>;
  const T** k_rows[2] = {row_ptrs, row_ptrs + 2 * kChunk};
  const T** v_rows[2] = {row_ptrs + kChunk, row_ptrs + 3 * kChunk};
  auto look_up = [&](int64_t t0, int buf) {
    const int64_t cnt = std::min(kChunk, it.t_end - t0);
    for (int64_t j = 0; j < cnt; ++j) {
      k_rows[buf][j] = it.k_row(t0 + j);
      v_rows[buf][j] = it.v_row(t0 + j);
      prefetch_row(k_rows[buf][j], it.d);
      prefetch_row(v_rows[buf][j], it.d);
    }
  };
  // Decode reads each K/V row once, from memory: ask for the rows kDecodeL2Keys ahead into L2 (the item's first
  // ones all at once: many misses in flight), and for the next chunk's rows into L1.
  auto to_l2 = [&](int64_t t_lo, int64_t t_hi) {
    for (int64_t t = t_lo; t < std::min(it.t_end, t_hi); ++t) {
      prefetch_row_l2(it.k_row(t), it.d);
      prefetch_row_l2(it.v_row(t), it.d);
    }
  };
  to_l2(it.t_begin, it.t_begin + kDecodeL2Keys);
  look_up(it.t_begin, 0);
  for (int64_t t0 = it.t_begin, buf = 0; t0 < it.t_end; t0 += kChunk, buf ^= 1) {
    const int64_t cnt = std::min(kChunk, it.t_end - t0);
    to_l2(t0 + kDecodeL2Keys, t0 + kDecodeL2Keys + kChunk);
    if (t0 + kChunk < it.t_end) look_up(t0 + kChunk, static_cast<int>(buf ^ 1));
    for (int64_t r0 = 0; r0 < it.rows; r0 += RT) {
      const int R = static_cast<int>(std::min<int64_t>(RT, it.rows - r0));
      const float* q = it.qf + r0 * it.d;
      float* s = sc + r0 * kChunk;
      with_tile_rows<RT>(R, [&](auto r) {
        decode_scores<T, ND, decltype(r)::value>(q, k_rows[buf], cnt, it.score_scale, s, kChunk);
      });
      float alpha[RT];
      int64_t j0 = cnt, j1 = 0;  // the keys any row of the tile sees
      for (int r = 0; r < R; ++r) {
        const KeyRange kr = it.chunk_range(r0 + r, t0, cnt);
        alpha[r] = it.softmax_step(r0 + r, s + r * kChunk, cnt, kr);
        if (kr.lo < kr.hi) j0 = std::min(j0, kr.lo), j1 = std::max(j1, kr.hi);
      }
      if (j0 >= j1) continue;  // no key of this chunk for these rows: their outputs keep their scale (alpha 1)
      float* o = it.o + r0 * it.d;
      with_tile_rows<RT>(R, [&](auto r) {
        decode_pv<T, ND, decltype(r)::value>(s, kChunk, v_rows[buf], j0, j1, alpha, o);
      });
    }
  }
}
#endif

// The item with each chunk's K/V rows widened to fp32 first (kf, vf [kChunk][d]).
template <typename T>
void run_item_widened(const DecodeItem<T>& it, float* sc, float* kf, float* vf) {
  const int64_t d = it.d;
  for (int64_t t0 = it.t_begin; t0 < it.t_end; t0 += kChunk) {
    const int64_t cnt = std::min(kChunk, it.t_end - t0);
    // Decode is bound by memory latency: ask for the next chunk's rows (page ids are random) while this
    // chunk computes.
    for (int64_t t = t0 + kChunk; t < std::min(it.t_end, t0 + 2 * kChunk); ++t) {
      prefetch_row(it.k_row(t), d);
      prefetch_row(it.v_row(t), d);
    }
    for (int64_t j = 0; j < cnt; ++j) {
      to_f32(it.k_row(t0 + j), d, kf + j * d);
      to_f32(it.v_row(t0 + j), d, vf + j * d);
    }
    scores_block(it.qf, it.rows, kf, cnt, d, sc, kChunk);  // every row against every key; masks below
    for (int64_t row = 0; row < it.rows; ++row) {
      const KeyRange kr = it.chunk_range(row, t0, cnt);
      if (kr.lo >= kr.hi) continue;
      float* sr = sc + row * kChunk;
      const float alpha = it.softmax_step(row, sr, cnt, kr);
      pv_accumulate(sr + kr.lo, vf + kr.lo * d, kr.hi - kr.lo, d, alpha, it.o + row * d);
    }
  }
}

template <typename T>
const char* decode_t(const AttnPagedDecodeParams& p) {
  const int64_t B = p.batch, n = p.num_queries, hq = p.num_heads_q, hk = p.num_heads_k, d = p.head_dim;
  const int64_t G = hq / hk, rows = n * G;
  const int64_t threads_max = omp_get_max_threads();
  const int64_t splits = attn_decode_splits(B, hk, p.max_pages * p.page_size, p.num_splits, threads_max);
  const int64_t slot_floats = rows * (d + 2);
  float* partials = static_cast<float*>(p.workspace);
  char* scratch = static_cast<char*>(p.workspace) + attn_align(4 * attn_decode_partials_floats(B, n, hq, d, splits));
  const int64_t slab = attn_decode_thread_bytes(rows, d);
  const int64_t room = (static_cast<char*>(p.workspace) + p.workspace_bytes - scratch) / slab;
  if (room < 1) return "workspace too small";
  const int threads = static_cast<int>(std::min(room, threads_max));
  int shift = 0;
  while ((int64_t{1} << shift) < p.page_size) ++shift;
#if defined(__AVX512F__)
  const bool tiles = decode_tiles_take(d);
  const bool q_bf16 = tiles && kDecodeBf16Dot<T>;  // queries stay bf16 (see decode_scores)
#else
  const bool tiles = false, q_bf16 = false;
#endif

  const T* q = static_cast<const T*>(p.q);
  T* out = static_cast<T*>(p.out);
  const int64_t items = B * hk * splits;
  // Writes row `row` of (b, h) from its output acc (the kernel's column order) divided by total.
  auto write_row = [&](int64_t b, int64_t h, int64_t row, float* acc, float total, float* spare) {
    const int64_t i = row / G, g = row % G;
    T* dst = out + b * p.out_batch_stride + i * p.out_token_stride + (h * G + g) * p.out_head_stride;
#if defined(__AVX512F__)
    if (tiles) {
      lanes_to_row<T>(acc, d, spare);
      acc = spare;
    }
#endif
    store_scaled(dst, acc, total > 0.f ? 1.f / total : 0.f, static_cast<int>(d));
  };

#pragma omp parallel num_threads(threads) if (items > 1)
  {
    char* mine = scratch + omp_get_thread_num() * slab;
    float* qf = reinterpret_cast<float*>(mine);   // [rows][d], pre-scaled
    float* sc = qf + rows * d;                    // [rows][kChunk]
    float* kf = sc + rows * kChunk;               // [kChunk][d] (the tiles: K/V row addresses)
    float* vf = kf + kChunk * d;                  // [kChunk][d] (the tiles: one output row in element order)
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t b = item / (hk * splits), h = (item / splits) % hk, s = item % splits;
      float* o = partials + item * slot_floats;  // o [rows][d], m [rows], l [rows]
      float* m = o + rows * d;
      float* l = m + rows;
      std::fill(o, o + rows * d, 0.f);
      std::fill(m, m + rows, -INFINITY);
      std::fill(l, l + rows, 0.f);
      const int64_t L = p.seq_lens[b];
      // The keys any query of this sequence may see, cut into `splits` equal parts.
      const int64_t first = p.window > 0 ? std::max<int64_t>(0, L - n - p.window + 1) : 0;
      const int64_t per = attn_ceil(std::max<int64_t>(0, L - first), splits);
      const int64_t t_begin = first + s * per, t_end = std::min(L, t_begin + per);
      if (L > 0 && t_begin < t_end) {
        for (int64_t i = 0; i < n; ++i)
          for (int64_t g = 0; g < G; ++g) {
            const T* src = q + b * p.q_batch_stride + i * p.q_token_stride + (h * G + g) * p.q_head_stride;
            float* dst = qf + (i * G + g) * d;
#if defined(__AVX512F__)
            if (q_bf16) {
              std::memcpy(dst, src, d * sizeof(T));
              continue;
            }
            if (tiles) {
              row_to_lanes(src, d, p.scale, dst);
              continue;
            }
#endif
            for (int64_t c = 0; c < d; ++c) dst[c] = load(src, c) * p.scale;
          }
        const DecodeItem<T> it{p, static_cast<const T*>(p.k_cache), static_cast<const T*>(p.v_cache),
                               p.block_table + b * p.block_table_stride, h, L, n, G, rows, d, t_begin, t_end,
                               shift, q_bf16 ? p.scale : 1.f, qf, o, m, l};
#if defined(__AVX512F__)
        const T** row_ptrs = reinterpret_cast<const T**>(kf);
        switch (tiles ? d : 0) {
          case 32: run_item_tiles<T, 2>(it, sc, row_ptrs); break;
          case 64: run_item_tiles<T, 4>(it, sc, row_ptrs); break;
          case 128: run_item_tiles<T, 8>(it, sc, row_ptrs); break;
          case 256: run_item_tiles<T, 16>(it, sc, row_ptrs); break;
          default: run_item_widened(it, sc, kf, vf);
        }
#else
        run_item_widened(it, sc, kf, vf);
#endif
      }
      if (splits == 1)
        for (int64_t row = 0; row < rows; ++row) write_row(b, h, row, o + row * d, l[row], vf);
    }

    // Merge the splits of each (sequence, kv head) and write the rows.
    if (splits > 1) {
#pragma omp for schedule(static)
      for (int64_t bh = 0; bh < B * hk; ++bh) {
        const float* base = partials + bh * splits * slot_floats;
        for (int64_t row = 0; row < rows; ++row) {
          float mx = -INFINITY;
          for (int64_t s = 0; s < splits; ++s) mx = std::max(mx, base[s * slot_floats + rows * d + row]);
          float* acc = qf;  // this thread's scratch, free again
          std::fill(acc, acc + d, 0.f);
          float total = 0.f;
          if (mx != -INFINITY) {
            for (int64_t s = 0; s < splits; ++s) {
              const float* slot = base + s * slot_floats;
              const float ls = slot[rows * d + rows + row];
              if (ls == 0.f) continue;
              const float w = std::exp(slot[rows * d + row] - mx);
              total += w * ls;
              axpy_f32(w, slot + row * d, acc, d);
            }
          }
          write_row(bh / hk, bh % hk, row, acc, total, vf);
        }
      }
    }
  }
  return nullptr;
}

}  // namespace

const char* attention_decode(const AttnPagedDecodeParams& p) {
  ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, return decode_t<T>(p));
  return nullptr;
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
