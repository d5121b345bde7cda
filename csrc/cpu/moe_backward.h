// The CPU backward of the fused expert block (MoeExpertsBackwardParams), included by csrc/cpu/moe.cpp once per
// ISA. Up to five GEMM passes over the dispatched rows, the elementwise work in their epilogues:
//   (h = x W1^T when not kept) -> dact = dout W2, with the SwiGLU backward, act and the gate's gradient in its
//   epilogue -> grad_W2 = (gate dout)^T act, grad_W1 = dh^T x and dx = dh W1 (scattered to the tokens' rows).
#pragma once
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/epilogue.h"
#include "cpu/gemm_driver.h"
#include "cpu/moe_backward_shape.h"
#include "cpu/numeric.h"
#include "cpu/workspace_carve.h"
#include "zaya_rt/moe.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {

// For c < n, from dact[c] = (W2^T dout)[c] (fp32) and the row's gate-up products hg (gate half) and hu (up half)
// in T: act[c] = SiLU(hg) hu, dh_up[c] = gate dact SiLU(hg), dh_gate[c] = gate dact hu SiLU'(hg). Returns
// sum_c dact[c] act[c] (fp32, act unrounded): the row's gate gradient over these columns.
template <typename T>
inline float swiglu_backward_row(const float* dact, const T* hg, const T* hu, float gate, T* act, T* dh_gate,
                                 T* dh_up, int n) {
  int c = 0;
  float dot = 0.f;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  const __m512 one = _mm512_set1_ps(1.f), gv = _mm512_set1_ps(gate);
  for (; c < n; c += 16) {
    const int w = std::min(16, n - c);
    const __mmask16 m = static_cast<__mmask16>(w >= 16 ? 0xffffu : (1u << w) - 1u);
    const __m512 d = _mm512_maskz_loadu_ps(m, dact + c);
    const __m512 g = load_floats(hg + c, w), u = load_floats(hu + c, w);
    const __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    const __m512 silu = _mm512_mul_ps(g, s);
    const __m512 a = _mm512_mul_ps(silu, u);
    acc = _mm512_fmadd_ps(d, a, acc);
    const __m512 dd = _mm512_mul_ps(d, gv);
    store_vec(act + c, a, m);
    store_vec(dh_up + c, _mm512_mul_ps(dd, silu), m);
    const __m512 dsilu = _mm512_mul_ps(s, _mm512_fmadd_ps(g, _mm512_sub_ps(one, s), one));  // s (1 + g (1 - s))
    store_vec(dh_gate + c, _mm512_mul_ps(_mm512_mul_ps(dd, u), dsilu), m);
  }
  dot = _mm512_reduce_add_ps(acc);
#endif
  for (; c < n; ++c) {
    const float g = load(hg, c), u = load(hu, c);
    const float s = 1.f / (1.f + std::exp(-g));
    const float silu = g * s, a = silu * u, dd = dact[c] * gate;
    dot += dact[c] * a;
    store(act, c, a);
    store(dh_up, c, dd * silu);
    store(dh_gate, c, dd * u * s * (1.f + g * (1.f - s)));
  }
  return dot;
}

template <typename T, bool Dot, typename TG>
const char* moe_experts_backward_t(const MoeExpertsBackwardParams& p) {
  using Entry = typename PackMode<T, Dot>::Entry;
  const int64_t slots = p.T * p.top_k, E = p.E, D = p.D, I = p.I, I2 = 2 * I;
  for (int64_t e = 0, prev = 0; e < E; prev = p.offsets[e++])
    if (p.offsets[e] < prev || p.offsets[e] > slots) return "offsets must be non-decreasing and at most T * top_k";
  const int64_t rows = p.offsets[E - 1];
  const int64_t col_blocks = (I + kNR - 1) / kNR;
  const bool need_x = p.grad_gate_up != nullptr || p.h == nullptr;
  const int64_t width = std::max(D, I2);

  char* cursor = static_cast<char*>(p.workspace);
  int32_t* row_tokens = carve<int32_t>(cursor, slots);
  T* x = carve<T>(cursor, need_x ? slots * D : 0);
  T* h_buf = carve<T>(cursor, p.h ? 0 : slots * I2);
  T* dy = carve<T>(cursor, p.grad_down ? slots * D : 0);
  T* act = carve<T>(cursor, slots * I);
  T* dh = carve<T>(cursor, slots * I2);
  float* partials = carve<float>(cursor, slots * col_blocks);
  float* dx_rows = carve<float>(cursor, p.top_k > 1 ? slots * D : 0);
  Entry* packed_a = carve<Entry>(cursor, moe_backward_packed_a_entries(slots, E, D, I, kMR));
  const int64_t kp_max = std::max(packed_k<T, Dot>(width), packed_k<T, Dot>(slots));
  const int64_t room = (static_cast<char*>(p.workspace) + p.workspace_bytes - cursor) /
                       (gemm_b_block_entries(std::max<int64_t>(kp_max, 1)) * static_cast<int64_t>(sizeof(Entry)));
  if (room < 1) return "workspace too small";
  Entry* b_blocks = reinterpret_cast<Entry*>(cursor);
  const int threads = static_cast<int>(std::min<int64_t>(room, omp_get_max_threads()));

  const T* hidden = static_cast<const T*>(p.hidden);
  const T* dout = static_cast<const T*>(p.grad_out);
  const T* w1 = static_cast<const T*>(p.gate_up);
  const T* w2 = static_cast<const T*>(p.down);
  const TG* gate = static_cast<const TG*>(p.gate);
  const int32_t* sorted_slots = p.sorted_slots;

  // Each row's token; its hidden row (for grad_W1 and the recomputed h) and its gate-scaled gradient row.
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t token = sorted_slots[r] / p.top_k;
    row_tokens[r] = static_cast<int32_t>(token);
    if (need_x) std::memcpy(x + r * D, hidden + token * p.hidden_row_stride, D * sizeof(T));
    if (p.grad_down == nullptr) continue;
    const float g = load(gate, sorted_slots[r]);
    const T* src = dout + token * p.grad_out_row_stride;
    T* dst = dy + r * D;
    for (int64_t c = 0; c < D; ++c) store(dst, c, g * load(src, c));
  }

  std::vector<GemmJob<T>> jobs(E, GemmJob<T>{Source<T>{nullptr, 0, 0}, Source<T>{nullptr, 0, 0}, 0, 0, 0});
  std::vector<int64_t> row0(E);
  for (int64_t e = 0, start = 0; e < E; start = p.offsets[e++]) {
    row0[e] = start;
    jobs[e].M = p.offsets[e] - start;
  }
  auto set_jobs = [&](auto a_of, auto b_of, int64_t N, int64_t K) {
    for (int64_t e = 0; e < E; ++e) {
      jobs[e].a = a_of(e);
      jobs[e].b = b_of(e);
      jobs[e].N = N;
      jobs[e].K = K;
    }
  };

  const T* h = static_cast<const T*>(p.h);
  if (h == nullptr) {  // h = x W1^T
    set_jobs([&](int64_t e) { return Source<T>{x + row0[e] * D, D, 1}; },
             [&](int64_t e) { return Source<T>{w1 + e * p.gate_up_expert_stride, p.gate_up_row_stride, 1}; }, I2, D);
    run_gemm_jobs<T, Dot>(jobs, packed_a, b_blocks, threads,
                          [&](int64_t j, const float* tile, int64_t m0, int mr, int64_t n0, int nr, int) {
                            for (int r = 0; r < mr; ++r)
                              store_scaled(h_buf + (row0[j] + m0 + r) * I2 + n0, tile + r * kNR, 1.f, nr);
                          });
    h = h_buf;
  }

  // dact = dout W2 (B = W2^T: element (i, d) at i + d * row stride), the SwiGLU backward in the epilogue.
  set_jobs([&](int64_t e) { return Source<T>{dout, p.grad_out_row_stride, 1, row_tokens + row0[e]}; },
           [&](int64_t e) { return Source<T>{w2 + e * p.down_expert_stride, 1, p.down_row_stride}; }, I, D);
  run_gemm_jobs<T, Dot>(jobs, packed_a, b_blocks, threads,
                        [&](int64_t j, const float* tile, int64_t m0, int mr, int64_t n0, int nr, int) {
                          for (int r = 0; r < mr; ++r) {
                            const int64_t row = row0[j] + m0 + r;
                            const T* hr = h + row * I2;
                            T* dhr = dh + row * I2;
                            partials[row * col_blocks + n0 / kNR] = swiglu_backward_row(
                                tile + r * kNR, hr + n0, hr + I + n0, load(gate, sorted_slots[row]), act + row * I + n0,
                                dhr + n0, dhr + I + n0, nr);
                          }
                        });

  if (p.grad_gate != nullptr) {
    TG* grad_gate = static_cast<TG*>(p.grad_gate);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t s = 0; s < slots; ++s) {
      const int32_t row = p.slot_rows[s];
      float v = 0.f;
      if (row >= 0)
        for (int64_t b = 0; b < col_blocks; ++b) v += partials[row * col_blocks + b];
      store(grad_gate, s, v);
    }
  }
  // The last passes: grad_W2[e] = dy_e^T act_e, grad_W1[e] = dh_e^T x_e (A and B transposed views, inner
  // dimension = the expert's rows; experts without rows get zeros) and dx = dh W1 (B = W1^T: element (d, j) at
  // d + j * row stride), whose top-1 rows go straight to their token's row.
  enum Kind { kGradDown, kGradGateUp, kDx };
  T* grad_down = static_cast<T*>(p.grad_down);
  T* grad_gate_up = static_cast<T*>(p.grad_gate_up);
  T* grad_hidden = static_cast<T*>(p.grad_hidden);
  auto run_pass = [&](Kind kind) {
    for (int64_t e = 0; e < E; ++e) {
      const int64_t start = row0[e], n = p.offsets[e] - start;
      if (kind == kGradDown) jobs[e] = {{dy + start * D, 1, D}, {act + start * I, 1, I}, n ? D : 0, I, n};
      if (kind == kGradGateUp) jobs[e] = {{dh + start * I2, 1, I2}, {x + start * D, 1, D}, n ? I2 : 0, D, n};
      if (kind == kDx)
        jobs[e] = {{dh + start * I2, I2, 1}, {w1 + e * p.gate_up_expert_stride, 1, p.gate_up_row_stride}, n, D, I2};
    }
    T* grad = kind == kGradDown ? grad_down : grad_gate_up;
    const int64_t size = kind == kGradDown ? D * I : I2 * D, ld = kind == kGradDown ? I : D;
    if (kind != kDx) {
#pragma omp parallel for schedule(static) num_threads(threads)
      for (int64_t e = 0; e < E; ++e)
        if (p.offsets[e] == row0[e])
          for (int64_t i = 0; i < size; ++i) store(grad + e * size, i, 0.f);
    }
    run_gemm_jobs<T, Dot>(
        jobs, packed_a, b_blocks, threads, [&](int64_t e, const float* tile, int64_t m0, int mr, int64_t n0, int nr, int) {
          for (int r = 0; r < mr; ++r) {
            const float* src = tile + r * kNR;
            if (kind != kDx) {
              store_scaled(grad + e * size + (m0 + r) * ld + n0, src, 1.f, nr);
            } else {
              const int64_t row = row0[e] + m0 + r;
              if (p.top_k == 1) store_scaled(grad_hidden + row_tokens[row] * p.grad_hidden_row_stride + n0, src, 1.f, nr);
              else store_scaled(dx_rows + row * D + n0, src, 1.f, nr);
            }
          }
        });
  };
  if (grad_down) run_pass(kGradDown);
  if (grad_gate_up) run_pass(kGradGateUp);
  if (grad_hidden) run_pass(kDx);
  if (grad_hidden == nullptr) return nullptr;

  // Tokens without a routed slot get zeros; with top-k each token sums its slots' rows in slot order (fp32).
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t t = 0; t < p.T; ++t) {
    T* dst = grad_hidden + t * p.grad_hidden_row_stride;
    if (p.top_k == 1) {
      if (p.slot_rows[t] < 0)
        for (int64_t n = 0; n < D; ++n) store(dst, n, 0.f);
      continue;
    }
    for (int64_t n = 0; n < D; ++n) {
      float acc = 0.f;
      for (int64_t s = 0; s < p.top_k; ++s) {
        const int32_t row = p.slot_rows[t * p.top_k + s];
        if (row >= 0) acc += dx_rows[static_cast<int64_t>(row) * D + n];
      }
      store(dst, n, acc);
    }
  }
  return nullptr;
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
