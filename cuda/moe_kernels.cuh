// GPU MoE kernels, one source for CUDA (cuda/moe.cu) and HIP (hip/moe.hip): dispatch (stable counting sort
// of token slots by expert), grouped GEMM and its weight gradient, and the expert block built from them
// (zaya_rt/moe.h). The math is that of the CPU kernels in csrc/cpu/moe.cpp: fp32 accumulation, the gate and
// up GEMM outputs rounded to the model dtype before SiLU(g) * u, the activation stored in the model dtype,
// gate-scaled down rows, top-k rows summed per token in slot order.
//
// Layout of the work:
//   dispatch      S = T*k slots, B = E + 1 bins (the last one collects the skipped slots). Up to
//                 max(kDispatchChunk, 2B) slots one block does everything: shared-memory histogram, scan,
//                 then rounds of blockDim slots in which a slot's rank among the earlier slots of its bin
//                 comes from warp votes (the lanes with the same bin) and per-warp counts. More slots:
//                 per-block histograms (kept in sorted_slots, which has room for them), a one-block column
//                 scan, per-block ranking into slot_rows, then a scatter that writes sorted_slots. Integer
//                 counting only: the same result on every run, no atomics on global memory.
//   grouped GEMM  output rows are cut per group into BM-row tiles; the grid is (ceil(M/BM) + G) row tiles x
//                 N tiles, an upper bound known on the host, and each block finds its group and rows by a
//                 block-wide scan over the device offsets (no host sync). Rows past offsets[G-1] form a last
//                 "group" that is written as zeros. Tiles are 128 columns wide and 128 rows tall, or 32 rows
//                 when groups average under 64 rows (decode). The mainloop is a shared-memory tiled GEMM:
//                   SIMT (every backend and dtype, any strides): BK = 16, fp32 tiles in shared memory, 256
//                   threads with 8x8 (128-row tiles) or 4x4 (32-row tiles) register blocks, the next tile
//                   prefetched into registers; 16-byte loads along k when sizes and alignment allow, else
//                   scalar loads with any strides.
//                   Tensor cores (CUDA sm_80+, bf16/fp16 with 16-byte aligned rows): wmma 16x16x16 with fp32
//                   accumulators, BK = 32, a cp.async pipeline of 2 (128-row tiles, 8 warps of 64x32) or 3
//                   (32-row tiles, 4 warps of 32x32) stages; cuda/moe_gemm_tc.cuh.
//                   Hopper (CUDA builds with CUTLASS, sm_90 devices, bf16/fp16, 16-byte aligned K-contiguous
//                   operands): the CUTLASS TMA + wgmma grouped GEMM of cuda/moe_gemm_sm90.h, chosen per call
//                   (ZAYA_RT_CUDA_GROUPED_GEMM); moe_experts then runs gather -> GEMM -> SwiGLU -> GEMM ->
//                   combine on it instead of the fused tiles.
//   weight grad   one block per (group, 128 x 128 tile) of grad_b; the inner dimension is the group's rows,
//                 found on the device; an empty group gives zeros. dy and a are read along their
//                 contiguous (column) dimension, the same two mainloops.
//   experts       dispatch -> per-row gate values -> gate_up GEMM over the gathered token rows with a SwiGLU
//                 epilogue (a column tile holds BN/2 gate columns and the matching BN/2 up columns) into
//                 act [S, I] -> down GEMM with a gate-scaled epilogue (top-1: straight into the token's out
//                 row; top-k: into fp32 rows [S, D]) -> a combine that sums each token's slots in slot order
//                 (top-k) or zeroes the rows of tokens without an expert (top-1).
//
// No allocation (the caller passes workspaces), no host synchronisation, launch errors returned as messages:
// every entry point can be captured in a CUDA/HIP graph.
#pragma once
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "cuda/compat.h"
#include "cuda/numeric.cuh"
#include "zaya_rt/moe.h"
#include "zaya_rt/moe_gpu_path.h"

#if defined(ZAYA_RT_GPU_CUDA)
#define ZAYA_RT_MOE_TENSOR_CORES 1  // the wmma tiles of cuda/moe_gemm_tc.cuh
#endif

namespace zaya_rt::gpu {
namespace moe_detail {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
ZAYA_RT_DEVICE_INLINE int imin(int a, int b) { return a < b ? a : b; }
ZAYA_RT_DEVICE_INLINE int64_t lmin(int64_t a, int64_t b) { return a < b ? a : b; }
ZAYA_RT_DEVICE_INLINE int64_t lmax(int64_t a, int64_t b) { return a > b ? a : b; }
ZAYA_RT_DEVICE_INLINE int64_t dceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// nullptr after a good launch; otherwise "<what>: <runtime message>" (valid until this thread's next failing
// launch; the dispatcher copies it into an exception at once).
inline const char* launch_result(const char* what) {
  const gpuError_t e = gpu_last_error();
  if (e == gpuSuccess) return nullptr;
  thread_local std::string msg;
  msg = std::string(what) + ": kernel launch failed: " + gpu_error_string(e);
  return msg.c_str();
}

inline int64_t elem_bytes(DType t) { return t == DType::kFloat32 ? 4 : 2; }

// True when `p + i * stride` is 16-byte aligned for every i (the base and the stride in bytes are).
inline bool aligned16(const void* p, int64_t stride_elems, int64_t esize) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (stride_elems * esize) % 16 == 0;
}

// Inclusive prefix sum of one int per thread over the block (Hillis-Steele in shared memory; buf holds
// blockDim.x ints). Every thread of the block must call it; `total` gets the block's sum.
ZAYA_RT_DEVICE_INLINE int block_inclusive_scan(int v, int* buf, int& total) {
  const int t = threadIdx.x, nt = blockDim.x;
  buf[t] = v;
  __syncthreads();
  for (int off = 1; off < nt; off <<= 1) {
    const int add = t >= off ? buf[t - off] : 0;
    __syncthreads();
    buf[t] += add;
    __syncthreads();
  }
  const int r = buf[t];
  total = buf[nt - 1];
  __syncthreads();  // buf may be reused at once
  return r;
}

// ==== dispatch ===============================================================================================

constexpr int kScanThreads = 1024;        // the most threads of a dispatch block
constexpr int64_t kMaxGpuExperts = 4096;
constexpr int kDispatchSmemInts = 11264;  // dynamic shared memory of a ranking block (44 KiB)
constexpr int64_t kDispatchChunk = 4096;  // slots per block on the multi-block path (at least)
constexpr int kHistThreads = 256;

template <typename TI>
ZAYA_RT_DEVICE_INLINE int expert_bin(const TI* index, int64_t s, int64_t experts) {
  const int64_t e = static_cast<int64_t>(index[s]);
  return (e >= 0 && e < experts) ? static_cast<int>(e) : static_cast<int>(experts);
}

// In-place exclusive prefix sum of data[0, n) (shared memory) by the whole block, each thread taking a
// contiguous run of entries. Ends with a barrier.
ZAYA_RT_DEVICE_INLINE void block_exclusive_scan(int* data, int n, int* buf) {
  const int nt = blockDim.x, per = (n + nt - 1) / nt;
  const int lo = imin(n, static_cast<int>(threadIdx.x) * per), hi = imin(n, lo + per);
  int local = 0;
  for (int i = lo; i < hi; ++i) local += data[i];
  int total;
  int run = block_inclusive_scan(local, buf, total) - local;
  for (int i = lo; i < hi; ++i) {
    const int c = data[i];
    data[i] = run;
    run += c;
  }
  __syncthreads();
}

// Stable ranking of the slots [begin, end): slot s of bin b gets row running[b] + (number of earlier slots
// of bin b in the range); running[] (bins ints, shared) ends advanced past the range. Rounds of blockDim
// slots: the lanes of a warp with the same bin find each other with one vote per bit of the bin, the
// first of them records the warp's count in wcnt[b][warp] (bins * warps ints, shared), and a pass over
// the bins turns those counts into each warp's first row. kFinal: write sorted_slots[row] = s and
// slot_rows[s] = row (or -1 for skipped slots); otherwise only slot_rows[s] = row.
template <typename TI, bool kFinal>
ZAYA_RT_DEVICE_INLINE void rank_slots(const TI* index, int64_t begin, int64_t end, int64_t experts, int* running,
                                      int* wcnt, int32_t* sorted_slots, int32_t* slot_rows) {
  const int bins = static_cast<int>(experts) + 1;
  const int nw = blockDim.x / kWarpSize, w = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  int bits = 0;
  while ((1 << bits) < bins) ++bits;
  for (int64_t base = begin; base < end; base += blockDim.x) {
    const int64_t s = base + threadIdx.x;
    const bool valid = s < end;
    const int b = valid ? expert_bin(index, s, experts) : 0;
    for (int i = threadIdx.x; i < bins * nw; i += blockDim.x) wcnt[i] = 0;
    lane_mask_t peers = warp_ballot(valid);
    for (int bit = 0; bit < bits; ++bit) {
      const bool set = (b >> bit) & 1;
      const lane_mask_t m = warp_ballot(set);
      peers &= set ? m : ~m;
    }
    const int rank = lane_count(peers & lanes_below(lane));
    __syncthreads();  // wcnt is zero
    if (valid && rank == 0) wcnt[b * nw + w] = lane_count(peers);
    __syncthreads();
    for (int i = threadIdx.x; i < bins; i += blockDim.x) {
      int run = running[i];
      for (int v = 0; v < nw; ++v) {
        const int c = wcnt[i * nw + v];
        wcnt[i * nw + v] = run;
        run += c;
      }
      running[i] = run;
    }
    __syncthreads();
    if (valid) {
      const int row = wcnt[b * nw + w] + rank;
      if (kFinal) {
        sorted_slots[row] = static_cast<int32_t>(s);
        slot_rows[s] = b < experts ? row : -1;
      } else {
        slot_rows[s] = row;
      }
    }
    __syncthreads();  // wcnt is cleared by the next round
  }
}

// Everything in one block (small S). Dynamic shared memory: running[bins], wcnt[bins * warps].
template <typename TI>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(kScanThreads)
    dispatch_single_kernel(const TI* index, int64_t slots, int64_t experts, int32_t* offsets, int32_t* counts,
                           int32_t* sorted_slots, int32_t* slot_rows) {
  extern __shared__ int dispatch_smem[];
  __shared__ int scan_buf[kScanThreads];
  const int bins = static_cast<int>(experts) + 1;
  int* running = dispatch_smem;
  int* wcnt = dispatch_smem + bins;
  for (int i = threadIdx.x; i < bins; i += blockDim.x) running[i] = 0;
  __syncthreads();
  for (int64_t s = threadIdx.x; s < slots; s += blockDim.x) atomicAdd(&running[expert_bin(index, s, experts)], 1);
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x) counts[e] = running[e];
  block_exclusive_scan(running, bins, scan_buf);
  for (int e = threadIdx.x; e < experts; e += blockDim.x) offsets[e] = running[e + 1];
  __syncthreads();
  rank_slots<TI, true>(index, 0, slots, experts, running, wcnt, sorted_slots, slot_rows);
}

// Multi-block path, step 1: the histogram of each chunk of slots into hist[block][bins].
template <typename TI>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(kHistThreads)
    dispatch_hist_kernel(const TI* index, int64_t slots, int64_t experts, int64_t chunk, int32_t* hist) {
  extern __shared__ int dispatch_smem[];
  const int bins = static_cast<int>(experts) + 1;
  for (int i = threadIdx.x; i < bins; i += blockDim.x) dispatch_smem[i] = 0;
  __syncthreads();
  const int64_t begin = blockIdx.x * chunk, end = lmin(slots, begin + chunk);
  for (int64_t s = begin + threadIdx.x; s < end; s += blockDim.x)
    atomicAdd(&dispatch_smem[expert_bin(index, s, experts)], 1);
  __syncthreads();
  for (int i = threadIdx.x; i < bins; i += blockDim.x) hist[blockIdx.x * bins + i] = dispatch_smem[i];
}

// Step 2 (one block): hist[c][b] becomes the first row of chunk c's slots of bin b; offsets and counts.
__global__ void ZAYA_RT_LAUNCH_BOUNDS(kScanThreads)
    dispatch_scan_kernel(int32_t* hist, int chunks, int64_t experts, int32_t* offsets, int32_t* counts) {
  extern __shared__ int dispatch_smem[];
  __shared__ int scan_buf[kScanThreads];
  const int bins = static_cast<int>(experts) + 1;
  int* start = dispatch_smem;
  for (int b = threadIdx.x; b < bins; b += blockDim.x) {
    int run = 0;
    for (int c = 0; c < chunks; ++c) {
      const int n = hist[c * bins + b];
      hist[c * bins + b] = run;
      run += n;
    }
    start[b] = run;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x) counts[e] = start[e];
  block_exclusive_scan(start, bins, scan_buf);
  for (int e = threadIdx.x; e < experts; e += blockDim.x) offsets[e] = start[e + 1];
  for (int i = threadIdx.x; i < chunks * bins; i += blockDim.x) hist[i] += start[i % bins];
}

// Step 3: each chunk ranks its slots from its first rows; slot_rows[s] = row (skipped ones too).
template <typename TI>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(kScanThreads)
    dispatch_rank_kernel(const TI* index, int64_t slots, int64_t experts, int64_t chunk, const int32_t* hist,
                         int32_t* slot_rows) {
  extern __shared__ int dispatch_smem[];
  const int bins = static_cast<int>(experts) + 1;
  int* running = dispatch_smem;
  int* wcnt = dispatch_smem + bins;
  for (int i = threadIdx.x; i < bins; i += blockDim.x) running[i] = hist[blockIdx.x * bins + i];
  __syncthreads();
  const int64_t begin = blockIdx.x * chunk, end = lmin(slots, begin + chunk);
  rank_slots<TI, false>(index, begin, end, experts, running, wcnt, nullptr, slot_rows);
}

// Step 4: sorted_slots from slot_rows (hist, kept in sorted_slots, is no longer needed); skipped -> -1.
__global__ void ZAYA_RT_LAUNCH_BOUNDS(256)
    dispatch_scatter_kernel(int64_t slots, int64_t experts, const int32_t* offsets, int32_t* slot_rows,
                            int32_t* sorted_slots) {
  const int32_t routed = offsets[experts - 1];
  for (int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; s < slots;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t row = slot_rows[s];
    sorted_slots[row] = static_cast<int32_t>(s);
    if (row >= routed) slot_rows[s] = -1;
  }
}

template <typename TI>
const char* launch_dispatch(const TI* index, int64_t slots, int64_t experts, int32_t* offsets, int32_t* counts,
                            int32_t* sorted_slots, int32_t* slot_rows, gpuStream_t s) {
  if (experts < 1 || experts > kMaxGpuExperts) return "the GPU MoE kernels take 1 to 4096 experts";
  if (slots >= INT32_MAX) return "too many token slots for int32 rows";
  const int bins = static_cast<int>(experts) + 1;
  const int warps = std::clamp(kDispatchSmemInts / bins - 1, 1, kScanThreads / kWarpSize);
  const int threads = warps * kWarpSize;
  const size_t rank_smem = static_cast<size_t>(bins) * (warps + 1) * sizeof(int);
  const int64_t chunk = std::max<int64_t>(kDispatchChunk, 2 * bins);
  if (slots <= chunk) {
    dispatch_single_kernel<TI><<<1, threads, rank_smem, s>>>(index, slots, experts, offsets, counts, sorted_slots,
                                                             slot_rows);
    return launch_result("moe_dispatch");
  }
  // hist needs chunks * bins <= slots ints of sorted_slots: chunks <= 2 slots / chunk and chunk >= 2 bins.
  const int chunks = static_cast<int>(ceil_div(slots, chunk));
  int32_t* hist = sorted_slots;
  const size_t bin_smem = static_cast<size_t>(bins) * sizeof(int);
  dispatch_hist_kernel<TI><<<chunks, kHistThreads, bin_smem, s>>>(index, slots, experts, chunk, hist);
  if (const char* err = launch_result("moe_dispatch (histogram)")) return err;
  dispatch_scan_kernel<<<1, kScanThreads, bin_smem, s>>>(hist, chunks, experts, offsets, counts);
  if (const char* err = launch_result("moe_dispatch (scan)")) return err;
  dispatch_rank_kernel<TI><<<chunks, threads, rank_smem, s>>>(index, slots, experts, chunk, hist, slot_rows);
  if (const char* err = launch_result("moe_dispatch (rank)")) return err;
  const int scatter_blocks = static_cast<int>(std::min<int64_t>(ceil_div(slots, 256), 4096));
  dispatch_scatter_kernel<<<scatter_blocks, 256, 0, s>>>(slots, experts, offsets, slot_rows, sorted_slots);
  return launch_result("moe_dispatch (scatter)");
}

inline const char* run_dispatch(const void* index, DType index_dtype, int64_t slots, int64_t experts,
                                int32_t* offsets, int32_t* counts, int32_t* sorted_slots, int32_t* slot_rows,
                                gpuStream_t s) {
  if (index_dtype == DType::kInt32)
    return launch_dispatch(static_cast<const int32_t*>(index), slots, experts, offsets, counts, sorted_slots,
                           slot_rows, s);
  if (index_dtype == DType::kInt64)
    return launch_dispatch(static_cast<const int64_t*>(index), slots, experts, offsets, counts, sorted_slots,
                           slot_rows, s);
  return "expert_index must be int32 or int64";
}

// ==== grouped GEMM: shared pieces ============================================================================

enum class Epi : int32_t { kLinear = 0, kSwiGLU = 1 };

// Where a GEMM tile's values go. kLinear: out[map(r) * out_rs + c] = scale(r) * v with map(r) = out_rows[r]
// (or r) and scale(r) = row_scale[r] (or 1). kSwiGLU: out[r * out_rs + i] = SiLU(g) * u from the tile's
// paired gate and up columns. Stored as fp32 when out_f32, else in the GEMM's dtype.
struct EpiArgs {
  Epi kind;
  bool out_f32;
  void* out;
  int64_t out_rs;
  const int32_t* out_rows;
  const float* row_scale;
};

// out[M, ncols] = A_g . B_g^T over ragged row groups. A element (r, k) = a[src(r) * a_rs + k * a_cs] with
// src(r) = a_rows[r] / a_rows_div when gathering (else r). B element (n, k) = b[g * b_gs + n * b_rs + k * b_cs].
// swiglu_I > 0: the epilogue is kSwiGLU over I output columns, column tile t holding gate rows
// [t * BN/2, (t+1) * BN/2) of B and the up rows I + the same.
struct FwdArgs {
  const void* a;
  int64_t a_rs, a_cs;
  const int32_t* a_rows;
  int32_t a_rows_div;
  const void* b;
  int64_t b_gs, b_rs, b_cs;
  const int32_t* offsets;
  int32_t G, M;
  int64_t N, K;  // output columns (I when SwiGLU), inner size
  int64_t swiglu_I;
  bool zero_tail;  // write zeros to the rows past offsets[G-1]
  EpiArgs epi;
};

// grad[g][n, k] = sum over the group's rows r of dy[r, n] * a[r, k].
struct WgradArgs {
  const void* dy;
  int64_t dy_rs, dy_cs;
  const void* a;
  int64_t a_rs, a_cs;
  const int32_t* offsets;
  int32_t G, M;
  int64_t N, K;
  int32_t tiles_k;  // column tiles of grad (over K)
  EpiArgs epi;      // kLinear into grad_b, out_rs = its row stride; group stride below
  int64_t grad_gs;
};

// Rows [start, end) of group g of a ragged row space with M rows; g == G is the tail past offsets[G-1].
// Offsets are clamped into [0, M], so bad offsets cannot send a block out of bounds.
ZAYA_RT_DEVICE_INLINE int group_start(const int32_t* offsets, int g, int M) {
  return g == 0 ? 0 : static_cast<int>(lmin(lmax(offsets[g - 1], 0), M));
}
ZAYA_RT_DEVICE_INLINE int group_end(const int32_t* offsets, int g, int G, int M) {
  return g == G ? M : static_cast<int>(lmin(lmax(offsets[g], 0), M));
}

struct RowTile {
  int group, row0, row_end;
};

// Row tile `tile` of the ragged row space: groups 0..G-1 by offsets, then the tail group G, each cut into
// BM-row tiles in order. Threads take contiguous runs of groups, count their tiles, and a block scan says
// which thread holds the tile. False (for the whole block) when `tile` is past the last one.
ZAYA_RT_DEVICE_INLINE bool find_row_tile(int64_t tile, const int32_t* offsets, int G, int M, int BM, int* scan,
                                         RowTile* out) {
  const int groups = G + 1, nt = blockDim.x, per = (groups + nt - 1) / nt;
  const int lo = imin(groups, static_cast<int>(threadIdx.x) * per), hi = imin(groups, lo + per);
  if (threadIdx.x == 0) out->group = -1;
  int local = 0;
  for (int g = lo; g < hi; ++g) {
    const int rows = group_end(offsets, g, G, M) - group_start(offsets, g, M);
    local += rows > 0 ? (rows + BM - 1) / BM : 0;
  }
  int total;
  int64_t before = block_inclusive_scan(local, scan, total) - local;  // ends with a barrier
  if (tile >= before && tile < before + local) {
    for (int g = lo; g < hi; ++g) {
      const int start = group_start(offsets, g, M), rows = group_end(offsets, g, G, M) - start;
      const int tiles = rows > 0 ? (rows + BM - 1) / BM : 0;
      if (tile < before + tiles) {
        out->group = g;
        out->row0 = start + static_cast<int>(tile - before) * BM;
        out->row_end = static_cast<int>(lmin(start + rows, static_cast<int64_t>(out->row0) + BM));
        break;
      }
      before += tiles;
    }
  }
  __syncthreads();
  return out->group >= 0;
}

template <typename T> ZAYA_RT_DEVICE_INLINE float swiglu(float g, float u) {
  g = round_to<T>(g);
  u = round_to<T>(u);
  return g / (1.f + expf(-g)) * u;
}

// d[i] = scale * v[i] for i < n <= N, as one vector store when the whole span fits and is aligned.
// Compile-time N keeps v in registers.
template <typename TO, int N>
ZAYA_RT_DEVICE_INLINE void store_span(TO* d, float scale, const float (&v)[N], int n) {
  float s[N];
#pragma unroll
  for (int i = 0; i < N; ++i) s[i] = scale * v[i];
  if (n == N && reinterpret_cast<uintptr_t>(d) % (N * sizeof(TO)) == 0) {
    store_n<N>(d, s);
    return;
  }
#pragma unroll
  for (int i = 0; i < N; ++i)
    if (i < n) d[i] = from_float<TO>(s[i]);
}

// Writes values v[0, n) to output row r (a grouped row), columns c, c+1, ... (all inside the output).
template <typename T, int N>
ZAYA_RT_DEVICE_INLINE void write_span(const EpiArgs& e, int64_t r, int64_t c, const float (&v)[N], int n) {
  const int64_t orow = e.out_rows ? e.out_rows[r] : r;
  const float scale = e.row_scale ? e.row_scale[r] : 1.f;
  if (e.out_f32)
    store_span(static_cast<float*>(e.out) + orow * e.out_rs + c, scale, v, n);
  else
    store_span(static_cast<T*>(e.out) + orow * e.out_rs + c, scale, v, n);
}

// Row pointers of the forward operands (element (row, 0), or null outside the operand).
template <typename T> struct ForwardARows {
  const T* a;
  int64_t rs;
  const int32_t* map;
  int32_t div;
  int row0, row_end;
  ZAYA_RT_DEVICE_INLINE const T* operator()(int r) const {
    const int row = row0 + r;
    if (row >= row_end) return nullptr;
    const int64_t src = map ? map[row] / div : row;
    return a + src * rs;
  }
};

template <typename T, int BN> struct ForwardBRows {
  const T* b;  // group's matrix
  int64_t rs, n_tile, N, swiglu_I;
  ZAYA_RT_DEVICE_INLINE const T* operator()(int j) const {
    if (swiglu_I > 0) {
      constexpr int half = BN / 2;
      const int64_t i = n_tile * half + (j < half ? j : j - half);
      if (i >= swiglu_I) return nullptr;
      return b + (j < half ? i : swiglu_I + i) * rs;
    }
    const int64_t n = n_tile * BN + j;
    return n < N ? b + n * rs : nullptr;
  }
};

// ==== SIMT tiled GEMM (every backend, every dtype, any strides) =============================================

template <int BM_, int BN_, int BK_, int TM_, int TN_>
struct SimtShape {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int kThreadsN = BN / TN, kThreadsM = BM / TM;
  static constexpr int kThreads = kThreadsM * kThreadsN;
  static constexpr int kLdA = BM + 4, kLdB = BN + 4;  // shared rows of fp32, [BK][BM + 4] and [BK][BN + 4]
  static_assert(TN % 2 == 0 && BN % 2 == 0, "thread columns come in two halves (SwiGLU pairs)");
};
using SimtBig = SimtShape<128, 128, 16, 8, 8>;   // 256 threads, 8x8 outputs each
using SimtSmall = SimtShape<32, 128, 16, 4, 4>;  // 256 threads, 4x4 outputs each (few rows per group)

// Loads an R x BK tile of an operand whose k elements of a row are `ks` apart (V consecutive ones per load,
// then ks == 1 and the k extent is a multiple of V), into shared memory transposed: smem[k][r], fp32.
// Each thread keeps the same rows for the whole mainloop.
template <typename T, int R, int BK, int V, int NT>
struct KMajorTile {
  static constexpr int kChunks = BK / V;
  static_assert(BK % V == 0 && NT % kChunks == 0, "tile chunks must spread evenly over the threads");
  static constexpr int kRowsPerPass = NT / kChunks;
  static constexpr int kPasses = (R + kRowsPerPass - 1) / kRowsPerPass;
  const T* row[kPasses];
  int64_t ks, kext;
  int kc, r0;
  float v[kPasses][V];

  template <class Rows>
  ZAYA_RT_DEVICE_INLINE void init(const Rows& rows, int64_t k_stride, int64_t k_extent) {
    kc = threadIdx.x % kChunks;
    r0 = threadIdx.x / kChunks;
    ks = k_stride;
    kext = k_extent;
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const int r = r0 + p * kRowsPerPass;
      row[p] = r < R ? rows(r) : nullptr;
    }
  }
  ZAYA_RT_DEVICE_INLINE void load(int64_t k0) {
    const int64_t k = k0 + kc * V;
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      if (row[p] != nullptr && k < kext) {
        if constexpr (V > 1) {
          load_n<V>(row[p] + k, v[p]);
        } else {
          v[p][0] = to_float(row[p][k * ks]);
        }
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) v[p][e] = 0.f;
      }
    }
  }
  ZAYA_RT_DEVICE_INLINE void store(float* smem, int ld) const {
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const int r = r0 + p * kRowsPerPass;
      if (r < R) {
#pragma unroll
        for (int e = 0; e < V; ++e) smem[(kc * V + e) * ld + r] = v[p][e];
      }
    }
  }
};

// Loads an R x BK tile of an operand stored along r (element (r, k) at base + r * is + k * ks, V consecutive
// r per load, then is == 1 and the r extent is a multiple of V) into smem[k][r], fp32.
template <typename T, int R, int BK, int V, int NT>
struct IMajorTile {
  static constexpr int kChunks = R / V;
  static_assert(R % V == 0 && NT % kChunks == 0, "tile chunks must spread evenly over the threads");
  static constexpr int kKPerPass = NT / kChunks;
  static constexpr int kPasses = (BK + kKPerPass - 1) / kKPerPass;
  const T* base;  // element (ic * V, 0), or null when that chunk is outside the operand
  int64_t ks, kext;
  int ic, k0l;
  float v[kPasses][V];

  ZAYA_RT_DEVICE_INLINE void init(const T* op, int64_t i_stride, int64_t k_stride, int64_t i_extent,
                                  int64_t k_extent) {
    ic = threadIdx.x % kChunks;
    k0l = threadIdx.x / kChunks;
    base = ic * V < i_extent ? op + static_cast<int64_t>(ic) * V * i_stride : nullptr;
    ks = k_stride;
    kext = k_extent;
  }
  ZAYA_RT_DEVICE_INLINE void load(int64_t k0) {
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const int kl = k0l + p * kKPerPass;
      const int64_t k = k0 + kl;
      if (base != nullptr && kl < BK && k < kext) {
        if constexpr (V > 1) {
          load_n<V>(base + k * ks, v[p]);
        } else {
          v[p][0] = to_float(base[k * ks]);
        }
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) v[p][e] = 0.f;
      }
    }
  }
  ZAYA_RT_DEVICE_INLINE void store(float* smem, int ld) const {
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const int kl = k0l + p * kKPerPass;
      if (kl < BK) {
#pragma unroll
        for (int e = 0; e < V; ++e) smem[kl * ld + ic * V + e] = v[p][e];
      }
    }
  }
};

// acc[i][j] += sum over k < kext of A(row_i, k) * B(col_j, k) for this thread's rows ty*TM + i and columns
// col_j = tx*TN/2 + j (j < TN/2) and BN/2 + tx*TN/2 + (j - TN/2). One shared buffer; the next tile is
// fetched into registers while the current one is multiplied.
template <class S, class LA, class LB>
ZAYA_RT_DEVICE_INLINE void simt_mainloop(LA& la, LB& lb, int64_t kext, float* As, float* Bs,
                                         float (&acc)[S::TM][S::TN]) {
  if (kext <= 0) return;
  const int tx = threadIdx.x % S::kThreadsN, ty = threadIdx.x / S::kThreadsN;
  constexpr int kHalf = S::TN / 2;
  la.load(0);
  lb.load(0);
  la.store(As, S::kLdA);
  lb.store(Bs, S::kLdB);
  __syncthreads();
  for (int64_t k0 = 0; k0 < kext; k0 += S::BK) {
    const bool more = k0 + S::BK < kext;
    if (more) {
      la.load(k0 + S::BK);
      lb.load(k0 + S::BK);
    }
#pragma unroll
    for (int kk = 0; kk < S::BK; ++kk) {
      float a[S::TM], b[S::TN];
#pragma unroll
      for (int i = 0; i < S::TM; ++i) a[i] = As[kk * S::kLdA + ty * S::TM + i];
#pragma unroll
      for (int j = 0; j < kHalf; ++j) {
        b[j] = Bs[kk * S::kLdB + tx * kHalf + j];
        b[kHalf + j] = Bs[kk * S::kLdB + S::BN / 2 + tx * kHalf + j];
      }
#pragma unroll
      for (int i = 0; i < S::TM; ++i)
#pragma unroll
        for (int j = 0; j < S::TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
    if (more) {
      la.store(As, S::kLdA);
      lb.store(Bs, S::kLdB);
      __syncthreads();
    }
  }
}

// Epilogue of a SIMT tile: rows row0 + ty*TM + i below row_end; columns from col0 (tile's first output
// column) below ncols. SwiGLU pairs column j with j + TN/2 (B rows BN/2 apart: gate and up).
template <class S, typename T>
ZAYA_RT_DEVICE_INLINE void simt_epilogue(const EpiArgs& e, const float (&acc)[S::TM][S::TN], int64_t row0,
                                         int64_t row_end, int64_t col0, int64_t ncols) {
  const int tx = threadIdx.x % S::kThreadsN, ty = threadIdx.x / S::kThreadsN;
  constexpr int kHalf = S::TN / 2;
#pragma unroll
  for (int i = 0; i < S::TM; ++i) {
    const int64_t r = row0 + ty * S::TM + i;
    if (r >= row_end) continue;
    if (e.kind == Epi::kSwiGLU) {
      float v[kHalf];
#pragma unroll
      for (int j = 0; j < kHalf; ++j) v[j] = swiglu<T>(acc[i][j], acc[i][kHalf + j]);
      const int64_t c = col0 + tx * kHalf;
      if (c < ncols) write_span<T>(e, r, c, v, static_cast<int>(lmin(kHalf, ncols - c)));
    } else {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t c = col0 + h * (S::BN / 2) + tx * kHalf;
        float v[kHalf];
#pragma unroll
        for (int j = 0; j < kHalf; ++j) v[j] = acc[i][h * kHalf + j];
        if (c < ncols) write_span<T>(e, r, c, v, static_cast<int>(lmin(kHalf, ncols - c)));
      }
    }
  }
}

template <class S, typename T, int V>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(S::kThreads) grouped_gemm_simt_kernel(const FwdArgs p) {
  __shared__ float As[S::BK * S::kLdA];
  __shared__ float Bs[S::BK * S::kLdB];
  __shared__ int scan[S::kThreads];
  __shared__ RowTile tile;
  if (!find_row_tile(blockIdx.x, p.offsets, p.G, p.M, S::BM, scan, &tile)) return;
  const bool tail = tile.group == p.G;
  if (tail && !p.zero_tail) return;
  float acc[S::TM][S::TN];
#pragma unroll
  for (int i = 0; i < S::TM; ++i)
#pragma unroll
    for (int j = 0; j < S::TN; ++j) acc[i][j] = 0.f;
  const int64_t n_tile = blockIdx.y;
  if (!tail) {
    KMajorTile<T, S::BM, S::BK, V, S::kThreads> la;
    KMajorTile<T, S::BN, S::BK, V, S::kThreads> lb;
    la.init(ForwardARows<T>{static_cast<const T*>(p.a), p.a_rs, p.a_rows, p.a_rows_div, tile.row0, tile.row_end},
            p.a_cs, p.K);
    lb.init(ForwardBRows<T, S::BN>{static_cast<const T*>(p.b) + tile.group * p.b_gs, p.b_rs, n_tile, p.N,
                                   p.swiglu_I},
            p.b_cs, p.K);
    simt_mainloop<S>(la, lb, p.K, As, Bs, acc);
  }
  const int64_t col0 = p.epi.kind == Epi::kSwiGLU ? n_tile * (S::BN / 2) : n_tile * S::BN;
  simt_epilogue<S, T>(p.epi, acc, tile.row0, tile.row_end, col0, p.N);
}

// The weight-gradient tile (group blockIdx.y, N tile x K tile blockIdx.x): A = dy_g^T, B = a_g^T, both
// loaded along their contiguous column dimension.
template <class S, typename T, int V>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(S::kThreads) weight_grad_simt_kernel(const WgradArgs p) {
  __shared__ float As[S::BK * S::kLdA];
  __shared__ float Bs[S::BK * S::kLdB];
  const int g = blockIdx.y;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x / p.tiles_k) * S::BM;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x % p.tiles_k) * S::BN;
  const int start = group_start(p.offsets, g, p.M);
  const int64_t rows = lmax(0, group_end(p.offsets, g, p.G, p.M) - start);
  float acc[S::TM][S::TN];
#pragma unroll
  for (int i = 0; i < S::TM; ++i)
#pragma unroll
    for (int j = 0; j < S::TN; ++j) acc[i][j] = 0.f;
  IMajorTile<T, S::BM, S::BK, V, S::kThreads> la;
  IMajorTile<T, S::BN, S::BK, V, S::kThreads> lb;
  la.init(static_cast<const T*>(p.dy) + start * p.dy_rs + i0 * p.dy_cs, p.dy_cs, p.dy_rs, p.N - i0, rows);
  lb.init(static_cast<const T*>(p.a) + start * p.a_rs + j0 * p.a_cs, p.a_cs, p.a_rs, p.K - j0, rows);
  simt_mainloop<S>(la, lb, rows, As, Bs, acc);
  EpiArgs e = p.epi;
  e.out = static_cast<char*>(e.out) + g * p.grad_gs * (e.out_f32 ? 4 : static_cast<int64_t>(sizeof(T)));
  // The epilogue maps tile columns h*BN/2 + tx*TN/2 + j; grad columns are j0 + that, rows i0 + ...
  simt_epilogue<S, T>(e, acc, i0, p.N, j0, p.K);
}

}  // namespace moe_detail
}  // namespace zaya_rt::gpu

#if defined(ZAYA_RT_MOE_TENSOR_CORES)
#include "cuda/moe_gemm_tc.cuh"
#endif
#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
#include "cuda/moe_gemm_sm90.h"
#endif

namespace zaya_rt::gpu {
namespace moe_detail {

// ==== launch plans ===========================================================================================

#if defined(ZAYA_RT_MOE_TENSOR_CORES)
constexpr bool kTensorCoreBuild = true;
#else
constexpr bool kTensorCoreBuild = false;
#endif

// Every GEMM tile is 128 output columns wide (a SwiGLU tile: 64 gate + 64 up columns), so the column grid
// does not depend on the kernel picked.
constexpr int kTileN = 128;
static_assert(SimtBig::BN == kTileN && SimtSmall::BN == kTileN, "column tiles");
#if defined(ZAYA_RT_MOE_TENSOR_CORES)
static_assert(TcBig::BN == kTileN && TcSmall::BN == kTileN, "column tiles");
#endif

// Few rows per group (decode, small batches): 32-row tiles waste less work on rows no group has.
inline bool few_rows(int64_t M, int64_t G) { return M < 64 * G; }

#if defined(ZAYA_RT_MOE_TENSOR_CORES)
// wmma needs sm_80+ for bf16; the build targets sm_80 and sm_90a, but a build for an older GPU must not
// take the tensor-core path. A device attribute query: no stream work, safe during graph capture.
inline bool tensor_cores_ok() {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return (void)cudaGetLastError(), false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
    return (void)cudaGetLastError(), false;
  return major >= 8;
}
#endif

template <typename T> constexpr int vec_elems() { return 16 / static_cast<int>(sizeof(T)); }

// The forward GEMM on the best kernel for these operands. vec: both operands allow 16-byte loads along k.
template <typename T>
const char* launch_forward(const FwdArgs& p, bool vec, int64_t n_tiles, gpuStream_t s, const char* what) {
  if (p.M <= 0 || n_tiles <= 0) return nullptr;
  if (n_tiles > 65535) return "too many output columns for one launch";
  const bool small = few_rows(p.M, p.G);
#if defined(ZAYA_RT_MOE_TENSOR_CORES)
  if constexpr (!std::is_same_v<T, float>) {
    if (vec && tensor_cores_ok()) {
      if (small) return launch_forward_tc<TcSmall, T>(p, n_tiles, s, what);
      return launch_forward_tc<TcBig, T>(p, n_tiles, s, what);
    }
  }
#endif
  // 16-bit operands on a tensor-core build only get here when the fast path is not possible: they take the
  // scalar kernel rather than a vectorised SIMT one that would never run on the targets.
  if constexpr (std::is_same_v<T, float> || !kTensorCoreBuild) {
    constexpr int kV = vec_elems<T>();
    if (vec && small) {
      const dim3 grid(static_cast<unsigned>(ceil_div(p.M, SimtSmall::BM) + p.G), static_cast<unsigned>(n_tiles));
      grouped_gemm_simt_kernel<SimtSmall, T, kV><<<grid, SimtSmall::kThreads, 0, s>>>(p);
      return launch_result(what);
    }
    if (vec) {
      const dim3 grid(static_cast<unsigned>(ceil_div(p.M, SimtBig::BM) + p.G), static_cast<unsigned>(n_tiles));
      grouped_gemm_simt_kernel<SimtBig, T, kV><<<grid, SimtBig::kThreads, 0, s>>>(p);
      return launch_result(what);
    }
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(p.M, SimtSmall::BM) + p.G), static_cast<unsigned>(n_tiles));
  grouped_gemm_simt_kernel<SimtSmall, T, 1><<<grid, SimtSmall::kThreads, 0, s>>>(p);
  return launch_result(what);
}

// ==== sm_90a CUTLASS grouped GEMM: when to take it (cuda/moe_gemm_sm90.h) ====================================

enum class GemmChoice { kAuto, kCutlass, kWmma, kBad };

// ZAYA_RT_CUDA_GROUPED_GEMM, read on every call so that a benchmark can switch paths between calls.
inline GemmChoice gemm_choice() {
  const char* v = std::getenv("ZAYA_RT_CUDA_GROUPED_GEMM");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return GemmChoice::kAuto;
  if (std::strcmp(v, "cutlass") == 0) return GemmChoice::kCutlass;
  if (std::strcmp(v, "wmma") == 0) return GemmChoice::kWmma;
  return GemmChoice::kBad;
}

#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
constexpr int kMaxCachedDevices = 64;

// True on a compute capability 9.0 device (the sm_90a code runs there only). One attribute query per device
// and process: no stream work, safe during graph capture.
inline bool is_sm90_device() {
  static std::atomic<int8_t> cache[kMaxCachedDevices] = {};  // 0 unknown, 1 yes, -1 no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return (void)cudaGetLastError(), false;
  if (dev >= 0 && dev < kMaxCachedDevices) {
    if (const int8_t c = cache[dev].load(std::memory_order_relaxed)) return c > 0;
  }
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
    return (void)cudaGetLastError(), false;
  const bool yes = major == 9 && minor == 0;
  if (dev >= 0 && dev < kMaxCachedDevices) cache[dev].store(yes ? 1 : -1, std::memory_order_relaxed);
  return yes;
}

// The CUTLASS kernel for this call, or nullptr for the WMMA / SIMT path.
template <typename T>
auto sm90_kernel(const GroupedGemmParams& q, GemmChoice choice) -> const char* (*)(const GroupedGemmParams&, int,
                                                                                   cudaStream_t) {
  if constexpr (std::is_same_v<T, float>) {
    return nullptr;
  } else {
    if (choice == GemmChoice::kWmma) return nullptr;
    // auto: decode-like calls (groups averaging under 64 rows) stay on the 32-row WMMA tiles until measured.
    if (choice == GemmChoice::kAuto && few_rows(q.M, q.G)) return nullptr;
    if (!sm90::qualifies(q) || !is_sm90_device()) return nullptr;
    return std::is_same_v<T, bf16> ? sm90::grouped_gemm_bf16 : sm90::grouped_gemm_f16;
  }
}
#endif

// Both operands allow 16-byte loads along k.
template <typename T>
bool forward_vec(const GroupedGemmParams& q) {
  constexpr int64_t es = sizeof(T);
  return q.a_col_stride == 1 && q.b_col_stride == 1 && q.K % vec_elems<T>() == 0 &&
         aligned16(q.a, q.a_row_stride, es) && aligned16(q.b, q.b_row_stride, es) && (q.b_group_stride * es) % 16 == 0;
}

template <typename T>
const char* launch_grouped_gemm(const GroupedGemmParams& q, gpuStream_t s) {
  if (q.M >= INT32_MAX || q.G >= INT32_MAX / 2) return "too many rows or groups for one launch";
  const GemmChoice choice = gemm_choice();
  if (choice == GemmChoice::kBad) return "ZAYA_RT_CUDA_GROUPED_GEMM must be auto, cutlass or wmma";
#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
  if (const auto kernel = sm90_kernel<T>(q, choice)) return kernel(q, gpu_multiprocessor_count(132), s);
#endif
  const FwdArgs p{q.a, q.a_row_stride, q.a_col_stride, nullptr, 1, q.b, q.b_group_stride, q.b_row_stride,
                  q.b_col_stride, q.offsets, static_cast<int32_t>(q.G), static_cast<int32_t>(q.M), q.N, q.K, 0,
                  /*zero_tail=*/true, EpiArgs{Epi::kLinear, false, q.out, q.out_row_stride, nullptr, nullptr}};
  return launch_forward<T>(p, forward_vec<T>(q), ceil_div(q.N, kTileN), s, "grouped_gemm");
}

// The kernel family launch_grouped_gemm takes for these operands on the current device (for tests and
// benchmarks): "cutlass_sm90", "wmma" or "simt".
template <typename T>
const char* grouped_gemm_path(const GroupedGemmParams& q) {
  const GemmChoice choice = gemm_choice();
#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
  if (choice != GemmChoice::kBad && sm90_kernel<T>(q, choice) != nullptr) return "cutlass_sm90";
#endif
  (void)choice;
#if defined(ZAYA_RT_MOE_TENSOR_CORES)
  if constexpr (!std::is_same_v<T, float>) {
    if (forward_vec<T>(q) && tensor_cores_ok()) return "wmma";
  }
#endif
  return "simt";
}

template <typename T>
const char* launch_weight_grad(const GroupedGemmWeightGradParams& q, gpuStream_t s) {
  if (q.grad_dtype != q.dtype && q.grad_dtype != DType::kFloat32)
    return "grad_b must have the dtype of dy and a, or float32";
  if (q.M >= INT32_MAX) return "too many rows for one launch";
  if (q.G > 65535) return "the GPU weight gradient takes at most 65535 groups";
  constexpr int kTile = 128;  // BM = BN = 128 for both weight-gradient kernels (SimtBig, TcBig)
  const int64_t tiles_k = ceil_div(q.K, kTile), tiles = ceil_div(q.N, kTile) * tiles_k;
  if (tiles >= INT32_MAX) return "grad_b too large for one launch";
  const WgradArgs p{q.dy, q.dy_row_stride, q.dy_col_stride, q.a, q.a_row_stride, q.a_col_stride, q.offsets,
                    static_cast<int32_t>(q.G), static_cast<int32_t>(q.M), q.N, q.K, static_cast<int32_t>(tiles_k),
                    EpiArgs{Epi::kLinear, q.grad_dtype == DType::kFloat32, q.grad_b, q.grad_b_row_stride, nullptr,
                            nullptr},
                    q.grad_b_group_stride};
  constexpr int64_t es = sizeof(T);
  constexpr int kV = vec_elems<T>();
  const bool vec = q.dy_col_stride == 1 && q.a_col_stride == 1 && q.N % kV == 0 && q.K % kV == 0 &&
                   aligned16(q.dy, q.dy_row_stride, es) && aligned16(q.a, q.a_row_stride, es);
#if defined(ZAYA_RT_MOE_TENSOR_CORES)
  if constexpr (!std::is_same_v<T, float>) {
    if (vec && tensor_cores_ok()) return launch_weight_grad_tc<TcBig, T>(p, s);
  }
#endif
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(q.G));
  static_assert(SimtBig::BM == kTile && SimtBig::BN == kTile, "weight-gradient tiles");
#if defined(ZAYA_RT_MOE_TENSOR_CORES)
  static_assert(TcBig::BM == kTile && TcBig::BN == kTile, "weight-gradient tiles");
#endif
  if constexpr (std::is_same_v<T, float> || !kTensorCoreBuild) {
    if (vec) {
      weight_grad_simt_kernel<SimtBig, T, kV><<<grid, SimtBig::kThreads, 0, s>>>(p);
      return launch_result("grouped_gemm_weight_grad");
    }
  }
  weight_grad_simt_kernel<SimtBig, T, 1><<<grid, SimtBig::kThreads, 0, s>>>(p);
  return launch_result("grouped_gemm_weight_grad");
}

// ==== experts ================================================================================================

// The gate of each routed row (in expert order), as fp32: row_gate[r] = gate[sorted_slots[r]].
template <typename TG>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(256)
    row_gate_kernel(const TG* gate, int64_t slots, int64_t experts, const int32_t* offsets,
                    const int32_t* sorted_slots, float* row_gate) {
  const int64_t routed = offsets[experts - 1];
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < lmin(slots, routed);
       r += static_cast<int64_t>(gridDim.x) * blockDim.x)
    row_gate[r] = to_float(gate[sorted_slots[r]]);
}

// One block per token (grid-stride). top-1: zeroes the rows of tokens without an expert (the others were
// written by the down GEMM). top-k: out[t] = sum of the token's slot rows of y_rows, in slot order.
template <typename T>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(256)
    combine_kernel(int64_t tokens, int64_t top_k, int64_t D, const int32_t* slot_rows, const float* y_rows, T* out,
                   int64_t out_rs) {
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    T* dst = out + t * out_rs;
    if (top_k == 1) {
      if (slot_rows[t] >= 0) continue;
      for (int64_t n = threadIdx.x; n < D; n += blockDim.x) dst[n] = from_float<T>(0.f);
      continue;
    }
    for (int64_t n = threadIdx.x; n < D; n += blockDim.x) {
      float acc = 0.f;
      for (int64_t j = 0; j < top_k; ++j) {
        const int32_t row = slot_rows[t * top_k + j];
        if (row >= 0) acc += y_rows[static_cast<int64_t>(row) * D + n];
      }
      dst[n] = from_float<T>(acc);
    }
  }
}

// The experts workspace, carved in 256-byte aligned pieces (base == nullptr: only the size). The fused WMMA /
// SIMT path needs y_rows for top-k > 1; the sm_90a CUTLASS path (gemm_bytes > 0) instead keeps the gathered
// token rows (later the down GEMM's output rows) and the gate_up output, plus the grouped GEMM's workspace.
struct ExpertsWorkspace {
  int32_t *counts, *offsets, *sorted_slots, *slot_rows;
  float* row_gate;
  void* act;       // [S, I] in the model dtype
  float* y_rows;   // [S, D] fp32, top-k > 1 only (fused path)
  void* rows;      // [S, D] in the model dtype: gathered x, then down output (CUTLASS path)
  void* h;         // [S, 2I] in the model dtype: gate_up output (CUTLASS path)
  void* gemm;      // the grouped GEMM workspace (CUTLASS path)
  int64_t gemm_bytes, bytes;
};

inline ExpertsWorkspace experts_workspace(void* base, int64_t tokens, int64_t top_k, int64_t D, int64_t I,
                                          int64_t E, int64_t esize, int64_t gemm_bytes = 0) {
  const int64_t slots = tokens * top_k;
  ExpertsWorkspace w{};
  int64_t used = 0;
  auto carve = [&](int64_t bytes) -> void* {
    void* p = base ? static_cast<char*>(base) + used : nullptr;
    used += (bytes + 255) / 256 * 256;
    return p;
  };
  w.counts = static_cast<int32_t*>(carve(E * 4));
  w.offsets = static_cast<int32_t*>(carve(E * 4));
  w.sorted_slots = static_cast<int32_t*>(carve(slots * 4));
  w.slot_rows = static_cast<int32_t*>(carve(slots * 4));
  w.row_gate = static_cast<float*>(carve(slots * 4));
  w.act = carve(slots * I * esize);
  if (gemm_bytes > 0) {
    w.rows = carve(slots * D * esize);
    w.h = carve(slots * 2 * I * esize);
    w.gemm = carve(gemm_bytes);
    w.gemm_bytes = gemm_bytes;
  } else {
    w.y_rows = top_k > 1 ? static_cast<float*>(carve(slots * D * 4)) : nullptr;
  }
  w.bytes = used;
  return w;
}

#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
// ---- experts on the sm_90a CUTLASS grouped GEMM: gather -> GEMM -> SwiGLU -> GEMM -> gate-scaled combine ----
// The same rounding points as the fused path (gate and up outputs rounded to the model dtype before SiLU(g) * u,
// the activation stored in the model dtype) except one: the down GEMM's rows are rounded to the model dtype
// before the gate scales them (the fused path scales the fp32 accumulators).

constexpr int kRowsVec = 8;  // 16-bit elements per 16-byte access

// rows[r] = hidden[sorted_slots[r] / top_k] for the routed rows r < offsets[E-1].
template <typename T>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(256)
    gather_rows_kernel(const T* hidden, int64_t hidden_rs, const int32_t* sorted_slots, int64_t top_k,
                       const int32_t* offsets, int64_t experts, int64_t D, T* rows) {
  const int64_t routed = offsets[experts - 1], per_row = D / kRowsVec;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < routed * per_row;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / per_row, c = (i % per_row) * kRowsVec;
    const int64_t t = sorted_slots[r] / top_k;
    *reinterpret_cast<Pack<T, kRowsVec>*>(rows + r * D + c) =
        *reinterpret_cast<const Pack<T, kRowsVec>*>(hidden + t * hidden_rs + c);
  }
}

// act[r, i] = SiLU(h[r, i]) * h[r, I + i] for the routed rows (h already holds model-dtype values).
template <typename T>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(256)
    swiglu_rows_kernel(const T* h, const int32_t* offsets, int64_t experts, int64_t I, T* act) {
  const int64_t routed = offsets[experts - 1], per_row = I / kRowsVec;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < routed * per_row;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / per_row, c = (i % per_row) * kRowsVec;
    float g[kRowsVec], u[kRowsVec], v[kRowsVec];
    load_n<kRowsVec>(h + r * 2 * I + c, g);
    load_n<kRowsVec>(h + r * 2 * I + I + c, u);
#pragma unroll
    for (int e = 0; e < kRowsVec; ++e) v[e] = swiglu<T>(g[e], u[e]);
    store_n<kRowsVec>(act + r * I + c, v);
  }
}

// out[t] = sum over the token's slots (in slot order) of row_gate[row] * y[row]; tokens without an expert get
// zeros. One block per token (grid-stride).
template <typename T>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(256)
    combine_rows_kernel(int64_t tokens, int64_t top_k, int64_t D, const int32_t* slot_rows, const float* row_gate,
                        const T* y, T* out, int64_t out_rs) {
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    for (int64_t n = threadIdx.x; n < D; n += blockDim.x) {
      float acc = 0.f;
      for (int64_t j = 0; j < top_k; ++j) {
        const int32_t row = slot_rows[t * top_k + j];
        if (row >= 0) acc += row_gate[row] * to_float(y[static_cast<int64_t>(row) * D + n]);
      }
      out[t * out_rs + n] = from_float<T>(acc);
    }
  }
}

inline int grid_for(int64_t items) { return static_cast<int>(std::clamp<int64_t>(ceil_div(items, 256), 1, 4096)); }

// The two grouped GEMMs of the expert block as sm_90a CUTLASS calls over workspace w (bases only: the device
// offsets decide the rows). Valid once w is carved with gemm_bytes.
inline GroupedGemmParams experts_gate_up_gemm(const MoeExpertsParams& q, const ExpertsWorkspace& w, DType dt) {
  const int64_t S = q.T * q.top_k;
  return GroupedGemmParams{w.rows, q.D, 1, q.gate_up, q.gate_up_expert_stride, q.gate_up_row_stride, 1, w.offsets,
                           w.h, 2 * q.I, dt, S, 2 * q.I, q.D, q.E, w.gemm, w.gemm_bytes};
}
inline GroupedGemmParams experts_down_gemm(const MoeExpertsParams& q, const ExpertsWorkspace& w, DType dt) {
  const int64_t S = q.T * q.top_k;
  return GroupedGemmParams{w.act, q.I, 1, q.down, q.down_expert_stride, q.down_row_stride, 1, w.offsets,
                           w.rows, q.D, dt, S, q.D, q.I, q.E, w.gemm, w.gemm_bytes};
}

// Whether moe_experts takes the CUTLASS path for these sizes on this device (workspace aside): the choice of
// grouped_gemm (auto: groups averaging >= 64 rows), 16-bit dtype, D and I in whole 16-byte chunks.
inline bool experts_sm90_wanted(int64_t slots, int64_t D, int64_t I, int64_t E, DType dtype) {
  const GemmChoice choice = gemm_choice();
  if (choice == GemmChoice::kWmma || choice == GemmChoice::kBad) return false;
  if (dtype != DType::kBFloat16 && dtype != DType::kFloat16) return false;
  if (choice == GemmChoice::kAuto && few_rows(slots, E)) return false;
  return I > 0 && D % kRowsVec == 0 && I % kRowsVec == 0 && is_sm90_device();
}

template <typename T>
const char* run_experts_sm90(const MoeExpertsParams& q, const ExpertsWorkspace& w, gpuStream_t s) {
  const int64_t S = q.T * q.top_k, D = q.D, I = q.I, E = q.E;
  const DType dt = std::is_same_v<T, bf16> ? DType::kBFloat16 : DType::kFloat16;
  auto* gemm = std::is_same_v<T, bf16> ? sm90::grouped_gemm_bf16 : sm90::grouped_gemm_f16;
  const int sms = gpu_multiprocessor_count(132);
  gather_rows_kernel<T><<<grid_for(S * D / kRowsVec), 256, 0, s>>>(static_cast<const T*>(q.hidden),
                                                                   q.hidden_row_stride, w.sorted_slots, q.top_k,
                                                                   w.offsets, E, D, static_cast<T*>(w.rows));
  if (const char* err = launch_result("moe_experts (gather)")) return err;
  if (const char* err = gemm(experts_gate_up_gemm(q, w, dt), sms, s)) return err;
  swiglu_rows_kernel<T><<<grid_for(S * I / kRowsVec), 256, 0, s>>>(static_cast<const T*>(w.h), w.offsets, E, I,
                                                                   static_cast<T*>(w.act));
  if (const char* err = launch_result("moe_experts (SwiGLU)")) return err;
  if (const char* err = gemm(experts_down_gemm(q, w, dt), sms, s)) return err;
  const int token_blocks = static_cast<int>(std::clamp<int64_t>(q.T, 1, 16384));
  combine_rows_kernel<T><<<token_blocks, 256, 0, s>>>(q.T, q.top_k, D, w.slot_rows, w.row_gate,
                                                      static_cast<const T*>(w.rows), static_cast<T*>(q.out),
                                                      q.out_row_stride);
  return launch_result("moe_experts (combine)");
}
#endif

template <typename T>
const char* run_moe_experts(const MoeExpertsParams& q, gpuStream_t s) {
  const int64_t slots = q.T * q.top_k, E = q.E, D = q.D, I = q.I;
  if (slots >= INT32_MAX) return "too many token slots for int32 rows";
  constexpr int64_t es = sizeof(T);
  ExpertsWorkspace w = experts_workspace(q.workspace, q.T, q.top_k, D, I, E, es);
  if (q.workspace_bytes < w.bytes) return "workspace too small (use moe_experts_workspace)";
  bool sm90_path = false;
#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
  // Taken when the caller's workspace has room for it (moe_experts_workspace sizes it when wanted) and both
  // GEMMs qualify; otherwise the fused path below.
  if constexpr (!std::is_same_v<T, float>) {
    if (experts_sm90_wanted(slots, D, I, E, q.dtype)) {
      const ExpertsWorkspace w9 = experts_workspace(q.workspace, q.T, q.top_k, D, I, E, es,
                                                    sm90::grouped_gemm_workspace(E));
      const DType dt = q.dtype;
      if (q.workspace_bytes >= w9.bytes && sm90::qualifies(experts_gate_up_gemm(q, w9, dt)) &&
          sm90::qualifies(experts_down_gemm(q, w9, dt)) && sm90::aligned16(q.hidden) &&
          q.hidden_row_stride % kRowsVec == 0) {
        w = w9;
        sm90_path = true;
      }
    }
  }
#endif
  if (const char* err = run_dispatch(q.expert_index, q.index_dtype, slots, E, w.offsets, w.counts, w.sorted_slots,
                                     w.slot_rows, s))
    return err;

  const int gate_blocks = static_cast<int>(std::clamp<int64_t>(ceil_div(slots, 256), 1, 4096));
  switch (q.gate_dtype) {
    case DType::kFloat32:
      row_gate_kernel<<<gate_blocks, 256, 0, s>>>(static_cast<const float*>(q.gate), slots, E, w.offsets,
                                                  w.sorted_slots, w.row_gate);
      break;
    case DType::kFloat16:
      row_gate_kernel<<<gate_blocks, 256, 0, s>>>(static_cast<const f16*>(q.gate), slots, E, w.offsets,
                                                  w.sorted_slots, w.row_gate);
      break;
    case DType::kBFloat16:
      row_gate_kernel<<<gate_blocks, 256, 0, s>>>(static_cast<const bf16*>(q.gate), slots, E, w.offsets,
                                                  w.sorted_slots, w.row_gate);
      break;
    default: return "gate must be float32, float16 or bfloat16";
  }
  if (const char* err = launch_result("moe_experts (gates)")) return err;
#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
  if constexpr (!std::is_same_v<T, float>) {
    if (sm90_path) return run_experts_sm90<T>(q, w, s);
  }
#endif
  (void)sm90_path;

  constexpr int kV = vec_elems<T>();
  const int32_t M = static_cast<int32_t>(slots), G = static_cast<int32_t>(E);
  if (I > 0) {
    // act[r, :] = SwiGLU(gate_up_e . x_token(r)) over the gathered token rows.
    const FwdArgs up{q.hidden, q.hidden_row_stride, 1, w.sorted_slots, static_cast<int32_t>(q.top_k), q.gate_up,
                     q.gate_up_expert_stride, q.gate_up_row_stride, 1, w.offsets, G, M, I, D, I,
                     /*zero_tail=*/false, EpiArgs{Epi::kSwiGLU, false, w.act, I, nullptr, nullptr}};
    const bool vec = D % kV == 0 && aligned16(q.hidden, q.hidden_row_stride, es) &&
                     aligned16(q.gate_up, q.gate_up_row_stride, es) && (q.gate_up_expert_stride * es) % 16 == 0;
    if (const char* err = launch_forward<T>(up, vec, ceil_div(I, kTileN / 2), s, "moe_experts (gate_up)")) return err;
  }
  // y = gate * down_e . act: top-1 straight into the token's row of out, top-k into fp32 rows.
  const bool rows_out = q.top_k > 1;
  const FwdArgs down{w.act, I, 1, nullptr, 1, q.down, q.down_expert_stride, q.down_row_stride, 1, w.offsets, G, M,
                     D, I, 0, /*zero_tail=*/false,
                     EpiArgs{Epi::kLinear, rows_out, rows_out ? static_cast<void*>(w.y_rows) : q.out,
                             rows_out ? D : q.out_row_stride, rows_out ? nullptr : w.sorted_slots, w.row_gate}};
  const bool vec = I % kV == 0 && aligned16(w.act, I, es) && aligned16(q.down, q.down_row_stride, es) &&
                   (q.down_expert_stride * es) % 16 == 0;
  if (const char* err = launch_forward<T>(down, vec, ceil_div(D, kTileN), s, "moe_experts (down)")) return err;

  const int token_blocks = static_cast<int>(std::clamp<int64_t>(q.T, 1, 16384));
  combine_kernel<T><<<token_blocks, 256, 0, s>>>(q.T, q.top_k, D, w.slot_rows, w.y_rows, static_cast<T*>(q.out),
                                                 q.out_row_stride);
  return launch_result("moe_experts (combine)");
}

}  // namespace moe_detail

// ==== entry points (zaya_rt/moe.h) ===========================================================================

const char* moe_dispatch(const MoeDispatchParams& p, void* stream) {
  return moe_detail::run_dispatch(p.expert_index, p.index_dtype, p.num_slots, p.num_experts, p.offsets, p.counts,
                                  p.sorted_slots, p.slot_rows, as_stream(stream));
}

const char* grouped_gemm(const GroupedGemmParams& p, void* stream) {
  if (p.M <= 0 || p.N <= 0) return nullptr;
  if (p.G < 1) return "need at least one group";
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.dtype, T, return moe_detail::launch_grouped_gemm<T>(p, as_stream(stream)));
  return "unreachable dtype switch";
}

const char* grouped_gemm_path(const GroupedGemmParams& p) {
  if (p.M <= 0 || p.N <= 0 || p.G < 1) return "none";
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.dtype, T, return moe_detail::grouped_gemm_path<T>(p));
  return "unreachable dtype switch";
}

bool built_with_cutlass_sm90() {
#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
  return true;
#else
  return false;
#endif
}

const char* grouped_gemm_weight_grad(const GroupedGemmWeightGradParams& p, void* stream) {
  if (p.N <= 0 || p.K <= 0) return nullptr;
  if (p.G < 1) return "need at least one group";
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.dtype, T, return moe_detail::launch_weight_grad<T>(p, as_stream(stream)));
  return "unreachable dtype switch";
}

const char* moe_experts(const MoeExpertsParams& p, void* stream) {
  if (p.T <= 0 || p.D <= 0) return nullptr;
  if (p.E < 1 || p.E > moe_detail::kMaxGpuExperts) return "the GPU MoE kernels take 1 to 4096 experts";
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.dtype, T, return moe_detail::run_moe_experts<T>(p, as_stream(stream)));
  return "unreachable dtype switch";
}

// The WMMA / SIMT GEMMs find their tiles on the device and need no scratch; the sm_90a CUTLASS one keeps its
// per-group arrays and TMA descriptors there (16-bit dtypes only).
int64_t grouped_gemm_workspace(int64_t, int64_t, int64_t, int64_t G, DType dtype) {
#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
  if (dtype == DType::kBFloat16 || dtype == DType::kFloat16) return sm90::grouped_gemm_workspace(G);
#endif
  (void)G;
  (void)dtype;
  return 0;
}
int64_t grouped_gemm_weight_grad_workspace(int64_t, int64_t, int64_t, int64_t, DType) { return 0; }

int64_t moe_experts_workspace(int64_t T, int64_t top_k, int64_t D, int64_t I, int64_t E, DType dtype) {
  int64_t gemm_bytes = 0;
#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
  // Room for the CUTLASS path when the current device and sizes would take it (it falls back to the fused
  // path, which needs less, when a workspace sized otherwise comes in).
  if (moe_detail::experts_sm90_wanted(T * top_k, D, I, E, dtype)) gemm_bytes = sm90::grouped_gemm_workspace(E);
#endif
  return moe_detail::experts_workspace(nullptr, T, top_k, D, I, E, moe_detail::elem_bytes(dtype), gemm_bytes).bytes;
}

}  // namespace zaya_rt::gpu
