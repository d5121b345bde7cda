// MoE dispatch on the GPU: a stable counting sort of the T*k token slots by expert (bins E + 1, the last
// collecting skipped slots); one block for small inputs, a histogram / scan / rank / scatter chain for large
// ones. Integer counting only, no global atomics: the same result every run. One source for CUDA and HIP.
#pragma once
#include "cuda/moe_common.cuh"

namespace zaya_rt::gpu {
namespace moe_detail {

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

}  // namespace moe_detail
}  // namespace zaya_rt::gpu
