// CPU MoE kernels: dispatch (counting sort of token slots by expert), grouped GEMM and its weight gradient,
// and the fused expert block (gather -> gate_up GEMM with SwiGLU epilogue -> down GEMM with gate-scaled
// scatter; few token slots take the decode path of cpu/moe_decode.cpp after the dispatch). Compiled once per ISA.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/epilogue.h"
#include "cpu/gemm_driver.h"
#include "cpu/gemm_peak.h"
#include "cpu/isa_kernels.h"
#include "cpu/moe_backward.h"
#include "cpu/moe_decode.h"
#include "cpu/numeric.h"
#include "cpu/workspace_carve.h"
#include "zaya_rt/moe.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {
namespace {


inline int64_t read_index(const void* base, DType t, int64_t i) {
  return t == DType::kInt64 ? static_cast<const int64_t*>(base)[i] : static_cast<const int32_t*>(base)[i];
}

const char* dispatch_impl(const void* index, DType index_dtype, int64_t slots, int64_t experts, int32_t* counts,
                          int32_t* offsets, int32_t* sorted_slots, int32_t* slot_rows) {
  if (index_dtype != DType::kInt32 && index_dtype != DType::kInt64) return "expert_index must be int32 or int64";
  std::fill(counts, counts + experts, 0);
  for (int64_t s = 0; s < slots; ++s) {
    const int64_t e = read_index(index, index_dtype, s);
    if (e >= 0 && e < experts) ++counts[e];
  }
  int32_t running = 0;
  for (int64_t e = 0; e < experts; ++e) {
    offsets[e] = running + counts[e];
    counts[e] = running;  // becomes the next free row of expert e
    running = offsets[e];
  }
  int32_t skipped = running;
  for (int64_t s = 0; s < slots; ++s) {
    const int64_t e = read_index(index, index_dtype, s);
    const int32_t row = (e >= 0 && e < experts) ? counts[e]++ : skipped++;
    sorted_slots[row] = static_cast<int32_t>(s);
    slot_rows[s] = (e >= 0 && e < experts) ? row : -1;
  }
  return nullptr;
}

const char* check_offsets(const int32_t* offsets, int64_t groups, int64_t rows) {
  int32_t prev = 0;
  for (int64_t g = 0; g < groups; ++g) {
    if (offsets[g] < prev || offsets[g] > rows) return "offsets must be non-decreasing and at most the row count";
    prev = offsets[g];
  }
  return nullptr;
}

template <typename T, bool Dot>
const char* grouped_gemm_t(const GroupedGemmParams& p) {
  if (const char* err = check_offsets(p.offsets, p.G, p.M)) return err;
  using Entry = typename PackMode<T, Dot>::Entry;
  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);
  T* out = static_cast<T*>(p.out);
  std::vector<GemmJob<T>> jobs;
  std::vector<int64_t> row0;
  int64_t start = 0;
  for (int64_t g = 0; g < p.G; ++g) {
    const int64_t end = p.offsets[g];
    jobs.push_back({Source<T>{a + start * p.a_row_stride, p.a_row_stride, p.a_col_stride},
                    Source<T>{b + g * p.b_group_stride, p.b_row_stride, p.b_col_stride}, end - start, p.N, p.K});
    row0.push_back(start);
    start = end;
  }
  const int64_t kp = packed_k<T, Dot>(p.K);
  char* cursor = static_cast<char*>(p.workspace);
  Entry* packed_a = carve<Entry>(cursor, gemm_packed_a_entries(p.M, p.G, kp));
  Entry* b_blocks = carve<Entry>(cursor, 0);
  const int64_t room = (static_cast<char*>(p.workspace) + p.workspace_bytes - cursor) /
                       (gemm_b_block_entries(kp) * static_cast<int64_t>(sizeof(Entry)));
  if (room < 1) return "workspace too small";
  run_gemm_jobs<T, Dot>(jobs, packed_a, b_blocks, static_cast<int>(std::min<int64_t>(room, omp_get_max_threads())),
                   [&](int64_t j, const float* tile, int64_t m0, int mr, int64_t n0, int nr, int) {
                     for (int r = 0; r < mr; ++r)
                       store_scaled(out + (row0[j] + m0 + r) * p.out_row_stride + n0, tile + r * kNR, 1.f, nr);
                   });
  for (int64_t r = start; r < p.M; ++r)
    for (int64_t n = 0; n < p.N; ++n) store(out + r * p.out_row_stride, n, 0.f);
  return nullptr;
}

template <typename T, bool Dot, typename TG>
const char* weight_grad_t(const GroupedGemmWeightGradParams& p) {
  if (const char* err = check_offsets(p.offsets, p.G, p.M)) return err;
  using Entry = typename PackMode<T, Dot>::Entry;
  const T* dy = static_cast<const T*>(p.dy);
  const T* a = static_cast<const T*>(p.a);
  TG* grad = static_cast<TG*>(p.grad_b);
  std::vector<GemmJob<T>> jobs;
  int64_t start = 0, kp_max = 0, rows_total = 0;
  for (int64_t g = 0; g < p.G; ++g) {
    const int64_t rows = p.offsets[g] - start;
    // grad[g][n, k] = sum_r dy[start + r, n] * a[start + r, k]: A = dy_g^T, B = a_g^T, inner dim = rows.
    jobs.push_back({Source<T>{dy + start * p.dy_row_stride, p.dy_col_stride, p.dy_row_stride},
                    Source<T>{a + start * p.a_row_stride, p.a_col_stride, p.a_row_stride}, p.N, p.K, rows});
    kp_max = std::max(kp_max, packed_k<T, Dot>(rows));
    rows_total += p.N;
    start = p.offsets[g];
  }
  char* cursor = static_cast<char*>(p.workspace);
  Entry* packed_a = carve<Entry>(cursor, (p.N + kMR) * (p.M + p.G));
  Entry* b_blocks = carve<Entry>(cursor, 0);
  const int64_t room = (static_cast<char*>(p.workspace) + p.workspace_bytes - cursor) /
                       (std::max<int64_t>(1, gemm_b_block_entries(kp_max)) * static_cast<int64_t>(sizeof(Entry)));
  if (room < 1) return "workspace too small";
  // Empty groups still need zeros: the driver never calls the epilogue for an empty inner dimension.
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < p.G; ++g) {
    const int64_t rows = p.offsets[g] - (g ? p.offsets[g - 1] : 0);
    if (rows == 0)
      for (int64_t n = 0; n < p.N; ++n)
        for (int64_t k = 0; k < p.K; ++k) store(grad + g * p.grad_b_group_stride + n * p.grad_b_row_stride, k, 0.f);
  }
  for (auto& job : jobs)
    if (job.K == 0) job.M = 0;
  run_gemm_jobs<T, Dot>(jobs, packed_a, b_blocks, static_cast<int>(std::min<int64_t>(room, omp_get_max_threads())),
                   [&](int64_t g, const float* tile, int64_t m0, int mr, int64_t n0, int nr, int) {
                     for (int r = 0; r < mr; ++r)
                       store_scaled(grad + g * p.grad_b_group_stride + (m0 + r) * p.grad_b_row_stride + n0,
                                    tile + r * kNR, 1.f, nr);
                   });
  return nullptr;
}

template <typename T, bool Dot, typename TG>
const char* moe_experts_t(const MoeExpertsParams& p) {
  using Entry = typename PackMode<T, Dot>::Entry;
  const int64_t slots = p.T * p.top_k, E = p.E, D = p.D, I = p.I;
  const int64_t i_blocks = (I + kNR - 1) / kNR;  // virtual gate_up rows: [gate 32 | up 32] per block
  char* cursor = static_cast<char*>(p.workspace);
  int32_t* counts = carve<int32_t>(cursor, E);
  int32_t* offsets = carve<int32_t>(cursor, E);
  int32_t* sorted_slots = carve<int32_t>(cursor, slots);
  int32_t* slot_rows = carve<int32_t>(cursor, slots);
  int32_t* row_tokens = carve<int32_t>(cursor, slots);
  int32_t* virtual_rows = carve<int32_t>(cursor, 2 * i_blocks * kNR);
  T* act = carve<T>(cursor, slots * I);
  float* y_rows = p.top_k > 1 ? carve<float>(cursor, slots * D) : nullptr;
  Entry* packed_a = carve<Entry>(cursor, gemm_packed_a_entries(slots, E, std::max(packed_k<T, Dot>(D), packed_k<T, Dot>(I))));
  const int64_t kp_max = std::max(packed_k<T, Dot>(D), packed_k<T, Dot>(I));
  const int64_t room = (static_cast<char*>(p.workspace) + p.workspace_bytes - cursor) /
                       (gemm_b_block_entries(kp_max) * static_cast<int64_t>(sizeof(Entry)));
  if (room < 1) return "workspace too small";
  Entry* b_blocks = reinterpret_cast<Entry*>(cursor);
  const int threads = static_cast<int>(std::min<int64_t>(room, omp_get_max_threads()));

  if (const char* err = dispatch_impl(p.expert_index, p.index_dtype, slots, E, counts, offsets, sorted_slots,
                                      slot_rows))
    return err;
  T* keep_h = static_cast<T*>(p.keep_h);
  if (keep_h != nullptr) {  // the backward's dispatch, and zero h rows for the skipped slots
    std::copy(offsets, offsets + E, p.keep_offsets);
    std::copy(sorted_slots, sorted_slots + slots, p.keep_sorted_slots);
    std::copy(slot_rows, slot_rows + slots, p.keep_slot_rows);
    for (int64_t i = (E ? offsets[E - 1] : 0) * 2 * I; i < slots * 2 * I; ++i) store(keep_h, i, 0.f);
  }
  if (keep_h == nullptr && has_moe_decode() && use_moe_decode(slots, offsets, E))
    return moe_experts_decode(p, MoeDecodeRows{offsets, sorted_slots, slot_rows, act, y_rows}, Dot);
  const int64_t rows = E ? offsets[E - 1] : 0;
  for (int64_t r = 0; r < rows; ++r) row_tokens[r] = sorted_slots[r] / static_cast<int32_t>(p.top_k);
  for (int64_t blk = 0; blk < i_blocks; ++blk)
    for (int c = 0; c < kNR; ++c) {
      const int64_t i = blk * kNR + c;
      virtual_rows[2 * blk * kNR + c] = i < I ? static_cast<int32_t>(i) : -1;
      virtual_rows[(2 * blk + 1) * kNR + c] = i < I ? static_cast<int32_t>(I + i) : -1;
    }

  const T* hidden = static_cast<const T*>(p.hidden);
  const T* w1 = static_cast<const T*>(p.gate_up);
  const T* w2 = static_cast<const T*>(p.down);
  T* out = static_cast<T*>(p.out);
  const TG* gate = static_cast<const TG*>(p.gate);

  // gate_up GEMM over the gathered tokens; the epilogue pairs each gate tile with its up tile.
  std::vector<GemmJob<T>> jobs;
  std::vector<int64_t> row0;
  int64_t start = 0;
  for (int64_t e = 0; e < E; ++e) {
    jobs.push_back({Source<T>{hidden, p.hidden_row_stride, 1, row_tokens + start},
                    Source<T>{w1 + e * p.gate_up_expert_stride, p.gate_up_row_stride, 1, virtual_rows},
                    offsets[e] - start, 2 * i_blocks * kNR, D});
    row0.push_back(start);
    start = offsets[e];
  }
  run_gemm_jobs<T, Dot>(jobs, packed_a, b_blocks, threads,
                   [&](int64_t j, const float* tile, int64_t m0, int mr, int64_t n0, int, int sub) {
                     // Gate tiles (even sub-panels) wait in a per-thread buffer for their up tiles (odd ones).
                     thread_local std::vector<float> gate_tiles;
                     const size_t need = static_cast<size_t>((m0 / kMR + 1) * kTileRows * kNR);
                     if (gate_tiles.size() < need) gate_tiles.resize(std::max(need, gate_tiles.size() * 2));
                     float* gate_tile = gate_tiles.data() + (m0 / kMR) * kTileRows * kNR;
                     if (sub % 2 == 0) {
                       std::copy(tile, tile + std::max(mr, 1) * kNR, gate_tile);
                       return;
                     }
                     const int64_t i0 = (n0 / kNR - 1) / 2 * kNR;
                     const int nr = static_cast<int>(std::min<int64_t>(kNR, I - i0));
                     for (int r = 0; r < mr; ++r) {
                       const int64_t row = row0[j] + m0 + r;
                       store_swiglu(act + row * I + i0, gate_tile + r * kNR, tile + r * kNR, nr);
                       if (keep_h != nullptr) {
                         store_scaled(keep_h + row * 2 * I + i0, gate_tile + r * kNR, 1.f, nr);
                         store_scaled(keep_h + row * 2 * I + I + i0, tile + r * kNR, 1.f, nr);
                       }
                     }
                   });

  // down GEMM; the epilogue scales by the gate and writes each token's row (or its slot's row for top-k).
  for (int64_t e = 0; e < E; ++e) {
    jobs[e].a = Source<T>{act + row0[e] * I, I, 1};
    jobs[e].b = Source<T>{w2 + e * p.down_expert_stride, p.down_row_stride, 1};
    jobs[e].N = D;
    jobs[e].K = I;
  }
  run_gemm_jobs<T, Dot>(jobs, packed_a, b_blocks, threads,
                   [&](int64_t j, const float* tile, int64_t m0, int mr, int64_t n0, int nr, int) {
                     for (int r = 0; r < mr; ++r) {
                       const int64_t row = row0[j] + m0 + r;
                       const int32_t slot = sorted_slots[row];
                       const float g = load(gate, slot);
                       if (p.top_k == 1)
                         store_scaled(out + static_cast<int64_t>(slot) * p.out_row_stride + n0, tile + r * kNR, g, nr);
                       else
                         store_scaled(y_rows + row * D + n0, tile + r * kNR, g, nr);
                     }
                   });

  // Tokens without an expert get zeros; with top-k each token sums its slots' rows in slot order.
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t t = 0; t < p.T; ++t) {
    T* dst = out + t * p.out_row_stride;
    if (p.top_k == 1) {
      if (slot_rows[t] < 0)
        for (int64_t n = 0; n < D; ++n) store(dst, n, 0.f);
      continue;
    }
    for (int64_t n = 0; n < D; ++n) {
      float acc = 0.f;
      for (int64_t s = 0; s < p.top_k; ++s) {
        const int32_t row = slot_rows[t * p.top_k + s];
        if (row >= 0) acc += y_rows[static_cast<int64_t>(row) * D + n];
      }
      store(dst, n, acc);
    }
  }
  return nullptr;
}

// Seconds of one single-thread run of a bf16 GEMM job list (packing included), discarding the results.
template <bool Dot> double time_gemm_once(const std::vector<GemmJob<bf16>>& jobs, int64_t M, int64_t K) {
  using Entry = typename PackMode<bf16, Dot>::Entry;
  const int64_t kp = packed_k<bf16, Dot>(K);
  thread_local std::vector<Entry> packed_a, b_block;
  packed_a.resize(gemm_packed_a_entries(M, 1, kp));
  b_block.resize(gemm_b_block_entries(kp));
  float sink = 0.f;
  const double t0 = omp_get_wtime();
  run_gemm_jobs<bf16, Dot>(jobs, packed_a.data(), b_block.data(), 1,
                           [&](int64_t, const float* tile, int64_t, int, int64_t, int, int) { sink += tile[0]; });
  const double elapsed = omp_get_wtime() - t0;
  asm volatile("" : : "x"(sink));
  return elapsed;
}

// Measures, on one thread, a bf16 GEMM of an expert's size both ways and the register-only peaks of the two
// instructions: best of several short trials, all four interleaved, so that a burst of other load or a clock
// change on the host disturbs all of them or none. On some CPUs vdpbf16ps is no faster per FLOP than fp32
// FMAs, and then converting bf16 to fp32 while packing wins.
Bf16GemmRates measure_bf16_gemm_rates() {
  Bf16GemmRates rates;
#if defined(__AVX512BF16__)
  constexpr int64_t M = 192, N = 256, K = 512;
  constexpr int kTrials = 7;
  std::vector<bf16> a(M * K), b(N * K);
  for (int64_t i = 0; i < M * K; ++i) a[i].bits = static_cast<uint16_t>(0x3f80 + (i % 64));
  for (int64_t i = 0; i < N * K; ++i) b[i].bits = static_cast<uint16_t>(0x3f00 + (i % 32));
  const std::vector<GemmJob<bf16>> jobs{{Source<bf16>{a.data(), K, 1}, Source<bf16>{b.data(), K, 1}, M, N, K}};
  double dot = 1e30, fma = 1e30;
  for (int trial = 0; trial < kTrials; ++trial) {
    dot = std::min(dot, time_gemm_once<true>(jobs, M, K));
    fma = std::min(fma, time_gemm_once<false>(jobs, M, K));
    rates.dot_peak = std::max(rates.dot_peak, peak_gflops<true>(1));
    rates.fma_peak = std::max(rates.fma_peak, peak_gflops<false>(1));
  }
  const double flops = 2.0 * M * N * K * 1e-9;
  rates.has_dot = true;
  rates.dot_gemm = flops / std::max(dot, 1e-9);
  rates.fma_gemm = flops / std::max(fma, 1e-9);
#endif
  return rates;
}

const Bf16GemmRates& measured_rates() {
  static const Bf16GemmRates rates = measure_bf16_gemm_rates();
  return rates;
}

bool bf16_dot() {
  const int forced = bf16_dot_override();
  if (forced >= 0) return forced == 1;
  return measured_rates().dot_gemm > measured_rates().fma_gemm;
}

}  // namespace

Bf16GemmRates bf16_gemm_rates() {
  Bf16GemmRates rates = measured_rates();
  rates.dot_chosen = kHasBf16Dot && bf16_dot();
  return rates;
}

const char* moe_dispatch(const MoeDispatchParams& p) {
  return dispatch_impl(p.expert_index, p.index_dtype, p.num_slots, p.num_experts, p.counts, p.offsets,
                       p.sorted_slots, p.slot_rows);
}

// Runs BODY with bool DOT = whether bf16 inputs take the vdpbf16ps path (a run-time choice, see bf16_dot).
#define ZAYA_RT_WITH_DOT(T, DOT, ...)                                        \
  if (std::is_same_v<T, bf16> && kHasBf16Dot && bf16_dot()) {                \
    constexpr bool DOT = true;                                               \
    __VA_ARGS__;                                                             \
  } else {                                                                   \
    constexpr bool DOT = false;                                              \
    __VA_ARGS__;                                                             \
  }

const char* grouped_gemm(const GroupedGemmParams& p) {
  ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, ZAYA_RT_WITH_DOT(T, Dot, return grouped_gemm_t<T, Dot>(p)));
  return nullptr;
}

const char* grouped_gemm_weight_grad(const GroupedGemmWeightGradParams& p) {
  ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, ZAYA_RT_DISPATCH_FLOAT(p.grad_dtype, TG, ZAYA_RT_WITH_DOT(
      T, Dot, return weight_grad_t<T, Dot, TG>(p))));
  return nullptr;
}

const char* moe_experts(const MoeExpertsParams& p) {
  ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, ZAYA_RT_DISPATCH_FLOAT(p.gate_dtype, TG, ZAYA_RT_WITH_DOT(
      T, Dot, return moe_experts_t<T, Dot, TG>(p))));
  return nullptr;
}

const char* moe_experts_backward(const MoeExpertsBackwardParams& p) {
  ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, ZAYA_RT_DISPATCH_FLOAT(p.gate_dtype, TG, ZAYA_RT_WITH_DOT(
      T, Dot, return moe_experts_backward_t<T, Dot, TG>(p))));
  return nullptr;
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
