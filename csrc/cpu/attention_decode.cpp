// CPU paged decode attention: work items (sequence, kv head, context split) read each K/V row once for all
// the GQA group's heads and all n query tokens, in chunks of keys (scores, one vectorised exp per row and
// chunk, then P.V); partial results are merged per query row with their log-sum-exps. Compiled once per ISA.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "cpu/attention_tile.h"
#include "zaya_rt/attention.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {
namespace {

constexpr int64_t kChunk = kAttnDecodeChunk;

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
  const int64_t slot_mask = p.page_size - 1;

  const T* q = static_cast<const T*>(p.q);
  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  const int64_t items = B * hk * splits;

#pragma omp parallel num_threads(threads) if (items > 1)
  {
    char* mine = scratch + omp_get_thread_num() * slab;
    float* qf = reinterpret_cast<float*>(mine);   // [rows][d], pre-scaled
    float* sc = qf + rows * d;                    // [rows][kChunk]
    float* kf = sc + rows * kChunk;               // [kChunk][d]
    float* vf = kf + kChunk * d;                  // [kChunk][d]
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t b = item / (hk * splits), h = (item / splits) % hk, s = item % splits;
      float* slot = partials + item * slot_floats;  // o [rows][d], m [rows], l [rows]
      float* o = slot;
      float* m = slot + rows * d;
      float* l = m + rows;
      std::fill(o, o + rows * d, 0.f);
      std::fill(m, m + rows, -INFINITY);
      std::fill(l, l + rows, 0.f);
      const int64_t L = p.seq_lens[b];
      if (L <= 0) continue;
      // The keys any query of this sequence may see, cut into `splits` equal parts.
      const int64_t first = p.window > 0 ? std::max<int64_t>(0, L - n - p.window + 1) : 0;
      const int64_t per = attn_ceil(L - first, splits);
      const int64_t t_begin = first + s * per, t_end = std::min(L, t_begin + per);
      if (t_begin >= t_end) continue;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t g = 0; g < G; ++g) {
          const T* src = q + b * p.q_batch_stride + i * p.q_token_stride + (h * G + g) * p.q_head_stride;
          float* dst = qf + (i * G + g) * d;
          for (int64_t c = 0; c < d; ++c) dst[c] = load(src, c) * p.scale;
        }
      const int32_t* pages = p.block_table + b * p.block_table_stride;
      for (int64_t t0 = t_begin; t0 < t_end; t0 += kChunk) {
        const int64_t cnt = std::min(kChunk, t_end - t0);
        // Decode is bound by memory latency: ask for the next chunk's rows (page ids are random) while this
        // chunk computes.
        for (int64_t t = t0 + kChunk; t < std::min(t_end, t0 + 2 * kChunk); ++t) {
          const int64_t page = pages[t >> shift], slot_in_page = t & slot_mask;
          prefetch_row(kc + page * p.k_page_stride + slot_in_page * p.k_slot_stride + h * p.k_head_stride, d);
          prefetch_row(vc + page * p.v_page_stride + slot_in_page * p.v_slot_stride + h * p.v_head_stride, d);
        }
        for (int64_t j = 0; j < cnt; ++j) {
          const int64_t t = t0 + j, page = pages[t >> shift], slot_in_page = t & slot_mask;
          to_f32(kc + page * p.k_page_stride + slot_in_page * p.k_slot_stride + h * p.k_head_stride, d, kf + j * d);
          to_f32(vc + page * p.v_page_stride + slot_in_page * p.v_slot_stride + h * p.v_head_stride, d, vf + j * d);
        }
        scores_block(qf, rows, kf, cnt, d, sc, kChunk);  // every row against every key; masks below
        for (int64_t row = 0; row < rows; ++row) {
          const int64_t pos = L - n + row / G;
          const KeyRange kr = attn_key_range(pos, L, true, p.window);
          const int64_t lo = std::max(kr.lo, t0) - t0, hi = std::min(kr.hi, t0 + cnt) - t0;
          if (lo >= hi) continue;
          float* sr = sc + row * kChunk;
          float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
          for (int64_t j = lo; j < hi; ++j) mx = sr[j] > mx ? sr[j] : mx;
          const float m_new = std::max(m[row], mx);
          const float alpha = std::exp(m[row] - m_new);
          const float sum = exp_shifted(sr + lo, hi - lo, m_new);
          pv_accumulate(sr + lo, vf + lo * d, hi - lo, d, alpha, o + row * d);
          l[row] = l[row] * alpha + sum;
          m[row] = m_new;
        }
      }
    }

    // Merge the splits of each (sequence, kv head) and write the rows.
    T* out = static_cast<T*>(p.out);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * hk; ++bh) {
      const int64_t b = bh / hk, h = bh % hk;
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
        const int64_t i = row / G, g = row % G;
        T* dst = out + b * p.out_batch_stride + i * p.out_token_stride + (h * G + g) * p.out_head_stride;
        store_scaled(dst, acc, total > 0.f ? 1.f / total : 0.f, static_cast<int>(d));
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
