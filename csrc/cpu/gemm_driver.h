// Runs a list of GEMM jobs C_j[M_j, N_j] = A_j . B_j^T on all threads: packs each job's A once into MR-row
// panels, then hands out (job, NC-column block) tasks; each task packs its B block into the thread's
// buffer and sweeps every A panel of the job. Jobs with few rows and contiguous K take a dot-product path
// that reads each B row once (decode). Results reach the caller tile by tile through an epilogue.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/gemm_core.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {

constexpr int kNC = kGemmNC;      // columns per B block
// Packed K entries per L1-resident slice of a B panel: 32 KiB of floats, 16 KiB of bf16 pairs, whose slice then
// stays in L1 next to the A panel slice streaming past it (measured a few % faster on Zen 4 than 32 KiB).
template <typename T, bool Dot> constexpr int64_t kKC = PackMode<T, Dot>::bf16 ? 128 : 256;
// Tasks whose C tiles fit in this many floats (L2-sized) run K blocks outermost.
constexpr int64_t kKOuterMaxTileFloats = 64 * 1024;

template <typename T> struct GemmJob {
  Source<T> a, b;
  int64_t M, N, K;
};

// Entries (4 bytes each) of workspace the driver needs for these job sizes.
inline int64_t gemm_packed_a_entries(int64_t total_rows, int64_t jobs, int64_t kp) {
  return (total_rows + jobs * kMR) * kp;
}
inline int64_t gemm_b_block_entries(int64_t kp) { return kp * kNC; }

inline bool use_dot_path(int64_t M, int64_t a_cs, int64_t b_cs) {
  return M <= kDotMaxRows && a_cs == 1 && b_cs == 1;
}

// Asks for the start (up to 1 KiB) of rows[0 .. g)[k0 .. k1) to be brought into L2; the hardware prefetcher
// follows a stream once it is going.
template <typename T> inline void prefetch_rows(const T* const* rows, int g, int64_t k0, int64_t k1) {
  for (int i = 0; i < g; ++i) {
    const char* lo = reinterpret_cast<const char*>(rows[i] + k0);
    const char* hi = std::min(reinterpret_cast<const char*>(rows[i] + k1), lo + 1024);
    for (const char* q = lo; q < hi; q += 64) __builtin_prefetch(q, 0, 2);
  }
}

// The decode dot path: add(r, b, value) receives <A_r, B_b> over each K block, for the m (<= kDotMaxRows) rows
// of A (a_packed: interleaved by pack_dot_rows; a_rows for the K tail) and nb rows of B given by row(b), all
// contiguous along K. K blocks run outer, so the block's slice of A stays in L1 while B's rows stream past,
// kDotMaxB at a time.
template <typename T, typename Row, typename Add>
void dot_rows_k_blocked(const DotA<T>* a_packed, const T* const* a_rows, int m, int nb, const Row& row, int64_t K,
                        const Add& add) {
  float dots[kDotMaxRows * kDotMaxB];
  const T* group[kDotMaxB];
  const T* next[kDotMaxB];
  const int64_t kb = dot_k_block<T>(m, K);
  for (int64_t k0 = 0; k0 < K; k0 += kb) {
    const int64_t k1 = std::min(K, k0 + kb);
    for (int j = 0; j < nb; j += kDotMaxB) {
      const int g = std::min(kDotMaxB, nb - j);
      for (int i = 0; i < g; ++i) group[i] = row(j + i);
      // The next group's rows (or the first group's next K block) are on their way from L3 while this group
      // computes: short row slices give the hardware prefetcher no time to ramp up.
      const int jn = j + kDotMaxB < nb ? j + kDotMaxB : 0;
      const int gn = std::min(kDotMaxB, nb - jn);
      for (int i = 0; i < gn; ++i) next[i] = row(jn + i);
      if (j + kDotMaxB < nb) prefetch_rows(next, gn, k0, k1);
      else if (k1 < K) prefetch_rows(next, gn, k1, std::min(K, k1 + kb));
      dot_rows(a_packed, a_rows, m, group, g, K, k0, k1, dots);
      for (int i = 0; i < g; ++i)
        for (int r = 0; r < m; ++r) add(r, j + i, dots[r * g + i]);
    }
  }
}

// epi(job, tile[kTileRows][kNR], m0, mr, n0, nr, sub): tile rows 0..mr-1 and columns 0..nr-1 are C_job[m0 + r,
// n0 + c]; sub is the NR-panel index within its B block. One task (a job's B block) runs on one thread and
// delivers its sub-panels in order, each sweeping all rows of the job before the next sub-panel starts.
template <typename T, bool Dot, typename Epi>
void run_gemm_jobs(const std::vector<GemmJob<T>>& jobs, typename PackMode<T, Dot>::Entry* packed_a,
                   typename PackMode<T, Dot>::Entry* b_blocks, int max_threads, const Epi& epi) {
  using Entry = typename PackMode<T, Dot>::Entry;
  const int64_t njobs = static_cast<int64_t>(jobs.size());
  std::vector<int64_t> a_offset(njobs + 1, 0), panel_start(njobs + 1, 0);
  int64_t kp_max = 0;
  for (int64_t j = 0; j < njobs; ++j) {
    const auto& job = jobs[j];
    const int64_t kp = packed_k<T, Dot>(job.K);
    kp_max = std::max(kp_max, kp);
    const bool dot = use_dot_path(job.M, job.a.col_stride, job.b.col_stride);
    const int64_t panels = dot ? 0 : (job.M + kMR - 1) / kMR;
    panel_start[j + 1] = panel_start[j] + panels;
    a_offset[j + 1] = a_offset[j] + panels * kMR * kp;
  }
  struct Task { int64_t job, n0; };
  std::vector<Task> tasks;
  for (int64_t j = 0; j < njobs; ++j) {
    const auto& job = jobs[j];
    if (job.M == 0 || job.N == 0) continue;
    for (int64_t n0 = 0; n0 < job.N; n0 += kNC) tasks.push_back({j, n0});
  }
  const int64_t total_panels = panel_start[njobs];
  const bool all_dot = total_panels == 0;
  const int64_t ntasks = static_cast<int64_t>(tasks.size());
  const int64_t work = total_panels + ntasks;
  const int threads = std::max(1, std::min<int>(max_threads, static_cast<int>(std::max<int64_t>(1, work))));

#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t p = 0; p < total_panels; ++p) {
      const int64_t j = std::upper_bound(panel_start.begin(), panel_start.end(), p) - panel_start.begin() - 1;
      const auto& job = jobs[j];
      const int64_t local = p - panel_start[j];
      const int64_t kp = packed_k<T, Dot>(job.K);
      const int64_t m0 = local * kMR;
      pack_rows<kMR, T, Dot>(job.a, m0, static_cast<int>(std::min<int64_t>(kMR, job.M - m0)), job.K,
                     packed_a + a_offset[j] + local * kMR * kp);
    }
    Entry* b_block = b_blocks + omp_get_thread_num() * kp_max * kNC;
    alignas(64) float tile[kTileRows * kNR];
    auto run_task = [&](int64_t t) {
      const auto& job = jobs[tasks[t].job];
      const int64_t n0 = tasks[t].n0;
      const int64_t nc = std::min<int64_t>(kNC, job.N - n0);
      const int subs = static_cast<int>((nc + kNR - 1) / kNR);
      if (use_dot_path(job.M, job.a.col_stride, job.b.col_stride)) {
        const T* a_rows[kDotMaxRows];
        for (int64_t r = 0; r < job.M; ++r) a_rows[r] = job.a.row(r);
        thread_local std::vector<DotA<T>> a_store;
        constexpr int64_t kSlack = 64 / sizeof(DotA<T>);  // room to start the copy on a cache line
        if (a_store.size() < static_cast<size_t>(job.M * job.K + kSlack)) a_store.resize(job.M * job.K + kSlack);
        DotA<T>* a_packed = reinterpret_cast<DotA<T>*>((reinterpret_cast<uintptr_t>(a_store.data()) + 63) & ~uintptr_t{63});
        pack_dot_rows(a_rows, static_cast<int>(job.M), job.K, a_packed);
        // K blocks outer (the A slice stays in L1), the task's sub-panels and their B rows inner; the
        // partial sums of the task's columns wait in `tiles`.
        alignas(64) float tiles[kNC / kNR][kTileRows * kNR];
        for (int s = 0; s < subs; ++s) std::fill(tiles[s], tiles[s] + job.M * kNR, 0.f);
        // Non-null B rows of the task go kDotMaxB at a time; gathered-out (null) rows give zero columns.
        int cols[kNC];
        const T* brows[kNC];
        int nb = 0;
        for (int c = 0; c < nc; ++c) {
          const T* brow = job.b.row(n0 + c);
          if (brow == nullptr) continue;
          cols[nb] = c;
          brows[nb++] = brow;
        }
        dot_rows_k_blocked<T>(a_packed, a_rows, static_cast<int>(job.M), nb, [&](int b) { return brows[b]; }, job.K,
                              [&](int r, int b, float v) { tiles[cols[b] / kNR][r * kNR + cols[b] % kNR] += v; });
        for (int s = 0; s < subs; ++s)
          epi(tasks[t].job, tiles[s], int64_t{0}, static_cast<int>(job.M), n0 + s * kNR,
              static_cast<int>(std::min<int64_t>(kNR, nc - s * kNR)), s);
        return;
      }
      const int64_t kp = packed_k<T, Dot>(job.K);
      for (int s = 0; s < subs; ++s)
        pack_rows<kNR, T, Dot>(job.b, n0 + s * kNR, static_cast<int>(std::min<int64_t>(kNR, nc - s * kNR)), job.K,
                       b_block + s * kp * kNR);
      thread_local std::vector<float> c_tiles;
      const int64_t panels = (job.M + kMR - 1) / kMR;
      const Entry* pa = packed_a + a_offset[tasks[t].job];
      auto deliver = [&](const float* tiles_of_sub, int s) {
        for (int64_t panel = 0; panel < panels; ++panel) {
          const int64_t m0 = panel * kMR;
          epi(tasks[t].job, tiles_of_sub + panel * kMR * kNR, m0,
              static_cast<int>(std::min<int64_t>(kMR, job.M - m0)), n0 + s * kNR,
              static_cast<int>(std::min<int64_t>(kNR, nc - s * kNR)), s);
        }
      };
      if (panels * subs * kMR * kNR <= kKOuterMaxTileFloats) {
        // Few rows: K blocks outer, so each A panel slice is read from L2 once per K block for all
        // sub-panels; the partial C tiles of the whole task wait in the per-thread buffer.
        const size_t need = static_cast<size_t>(subs * panels * kMR * kNR);
        if (c_tiles.size() < need) c_tiles.resize(need);
        if (kp == 0) std::fill(c_tiles.begin(), c_tiles.begin() + need, 0.f);
        for (int64_t k0 = 0; k0 < kp; k0 += kKC<T, Dot>) {
          const int64_t kc = std::min<int64_t>(kKC<T, Dot>, kp - k0);
          for (int s = 0; s < subs; ++s)
            for (int64_t panel = 0; panel < panels; ++panel)
              micro_kernel<T, Dot>(kc, pa + panel * kMR * kp + k0 * kMR, b_block + s * kp * kNR + k0 * kNR,
                                   c_tiles.data() + (s * panels + panel) * kMR * kNR, k0 > 0);
        }
        for (int s = 0; s < subs; ++s) deliver(c_tiles.data() + s * panels * kMR * kNR, s);
        return;
      }
      // Sub-panel outer, K blocks, A panels inner: one B panel slice (kKC entries) stays in L1 while the
      // A panel slices stream; partial C tiles of the whole job wait in a per-thread buffer.
      if (c_tiles.size() < static_cast<size_t>(panels * kMR * kNR)) c_tiles.resize(panels * kMR * kNR);
      for (int s = 0; s < subs; ++s) {
        const Entry* pb = b_block + s * kp * kNR;
        for (int64_t k0 = 0; k0 < kp; k0 += kKC<T, Dot>) {
          const int64_t kc = std::min<int64_t>(kKC<T, Dot>, kp - k0);
          for (int64_t panel = 0; panel < panels; ++panel)
            micro_kernel<T, Dot>(kc, pa + panel * kMR * kp + k0 * kMR, pb + k0 * kNR, c_tiles.data() + panel * kMR * kNR,
                            k0 > 0);
        }
        if (kp == 0) std::fill(c_tiles.begin(), c_tiles.begin() + panels * kMR * kNR, 0.f);
        deliver(c_tiles.data(), s);
      }
    };
    // Decode-sized dot-product tasks are uniform: a static split keeps each thread on the same weight rows from
    // call to call (they stay in its L2 when they fit). Panel tasks vary, so they are handed out one at a time.
    if (all_dot) {
#pragma omp for schedule(static)
      for (int64_t t = 0; t < ntasks; ++t) run_task(t);
    } else {
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < ntasks; ++t) run_task(t);
    }
  }
}

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
