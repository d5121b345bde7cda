// GPU page operations and fused sampler of zaya_rt/runtime.h, one source for CUDA (cuda/runtime.cu) and HIP
// (hip/runtime.hip). Same results as csrc/cpu/runtime.cpp and csrc/cpu/sampling.cpp.
//
// Page operations are byte copies, 16-byte accesses where both rows and the row length allow it:
//   kv_write     one block per new token row (k and v); slot < 0 (padding) or beyond the cache: no-op.
//   copy_pages   grid over (page pair x chunk of the page, layer); a pair naming a page outside the cache, or a
//                page that is both a source and a destination (the CPU rejects both): no-op.
//   gather_tail  one block per output row; positions < 0 and page ids outside the cache give zero rows.
//
// Sampler: one block per row. Temperature 0 is the first maximum (block reduction). Otherwise, as on the CPU,
// p_i = exp(x_i / t - max) in float64 (max p = 1), and the kept set is a prefix of the order "p descending, lower
// token id first among equal p": its length is found by radix selection over the 64 bits of p (non-negative
// doubles order like their bit patterns), 8 bits a pass, with shared-memory histograms of count (top-k: the
// rank k) and of mass (top-p: the last token whose preceding mass / top-k mass is < top_p), so nothing is
// sorted. The result is a cut: keep p > p_cut, and of the tokens with p == p_cut the `tie_keep` lowest ids.
// Then min-p (p >= min_p) and the inversion of u = sampling_uniform(seed, step) (the shared host/device
// function of zaya_rt/sampling_uniform.h, bit-identical to the CPU's) over the kept mass in ascending token
// order: each thread owns a contiguous token range, a block scan gives the mass before it.
// Accumulation is float64 throughout, like the CPU kernel. The sums run in another order than the CPU's
// (tree reductions and shared-memory atomics vs sequential loops), and device exp may differ from the host's by
// an ulp, so a row can pick another token than the CPU or the float64 reference only when a cumulative mass
// ratio lands within rounding of top_p or of u (and, through the histogram atomics, such a row may differ
// between runs). p is recomputed from the logits on every pass: no workspace.
//
// No allocation, no host synchronisation, launch errors returned as messages: graph-capturable.
#pragma once
#include <cmath>
#include <cstdint>

#include "cuda/compat.h"
#include "cuda/numeric.cuh"
#include "zaya_rt/runtime.h"

namespace zaya_rt::gpu {
namespace rt_detail {

constexpr int kCopyThreads = 128;
constexpr int64_t kChunkBytes = kCopyThreads * 16 * 4;  // copy_pages: bytes of a page per block
constexpr unsigned kMaxGrid = 1u << 20;                  // blocks of a launch; larger work loops (grid stride)
constexpr int kSampleThreads = 256;                      // a power of two, whole warps
constexpr int kBins = 256;                               // 8-bit radix digits

struct alignas(16) Vec16 { uint64_t lo, hi; };

inline int64_t element_bytes(DType t) {
  switch (t) {
    case DType::kFloat16: case DType::kBFloat16: return 2;
    case DType::kFloat64: case DType::kInt64: return 8;
    default: return 4;
  }
}

inline unsigned grid_for(int64_t items) {
  return static_cast<unsigned>(items < static_cast<int64_t>(kMaxGrid) ? items : kMaxGrid);
}

template <typename U>
ZAYA_RT_DEVICE_INLINE void copy_units(char* dst, const char* src, int64_t bytes) {
  U* d = reinterpret_cast<U*>(dst);
  const U* s = reinterpret_cast<const U*>(src);
  const int64_t n = bytes / static_cast<int64_t>(sizeof(U));
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) d[i] = s[i];
}

// dst[0, bytes) = src[0, bytes) with the threads of the block, in the widest access the alignment allows
// (every element is at least 2 bytes, so 2-byte units always fit).
ZAYA_RT_DEVICE_INLINE void block_copy(char* dst, const char* src, int64_t bytes) {
  const uint64_t a = reinterpret_cast<uint64_t>(dst) | reinterpret_cast<uint64_t>(src) | static_cast<uint64_t>(bytes);
  if (a % 16 == 0) copy_units<Vec16>(dst, src, bytes);
  else if (a % 8 == 0) copy_units<uint64_t>(dst, src, bytes);
  else if (a % 4 == 0) copy_units<uint32_t>(dst, src, bytes);
  else copy_units<uint16_t>(dst, src, bytes);
}

template <typename U>
ZAYA_RT_DEVICE_INLINE void zero_units(char* dst, int64_t bytes) {
  U* d = reinterpret_cast<U*>(dst);
  const int64_t n = bytes / static_cast<int64_t>(sizeof(U));
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) d[i] = U{};
}

ZAYA_RT_DEVICE_INLINE void block_zero(char* dst, int64_t bytes) {
  const uint64_t a = reinterpret_cast<uint64_t>(dst) | static_cast<uint64_t>(bytes);
  if (a % 16 == 0) zero_units<Vec16>(dst, bytes);
  else if (a % 4 == 0) zero_units<uint32_t>(dst, bytes);
  else zero_units<uint16_t>(dst, bytes);
}

__global__ ZAYA_RT_LAUNCH_BOUNDS(kCopyThreads) void kv_write_kernel(KvWriteParams p, int64_t eb) {
  const int64_t row_bytes = p.W * eb;
  for (int64_t n = blockIdx.x; n < p.N; n += gridDim.x) {
    const int64_t slot = p.slot_mapping[n];
    if (slot < 0 || slot >= p.P * p.S) continue;  // padding (-1), or out of range: skipped without an error
    const int64_t at = ((slot / p.S) * p.page_stride + (slot % p.S) * p.token_stride) * eb;
    block_copy(static_cast<char*>(p.k_cache) + at, static_cast<const char*>(p.k_new) + n * p.k_new_row_stride * eb,
               row_bytes);
    block_copy(static_cast<char*>(p.v_cache) + at, static_cast<const char*>(p.v_new) + n * p.v_new_row_stride * eb,
               row_bytes);
  }
}

// Whether a pair touches a page that is both a source and a destination: copies would race (the CPU rejects it).
ZAYA_RT_DEVICE_INLINE bool page_read_and_written(const CopyPagesParams& p, int64_t src, int64_t dst) {
  for (int64_t j = 0; j < p.n; ++j)
    if (p.dst[j] == src || p.src[j] == dst) return true;
  return false;
}

__global__ ZAYA_RT_LAUNCH_BOUNDS(kCopyThreads) void copy_pages_kernel(CopyPagesParams p, int64_t eb, int64_t chunks) {
  const int64_t page_bytes = p.page_elems * eb;
  for (int64_t l = blockIdx.y; l < p.L; l += gridDim.y) {
    for (int64_t w = blockIdx.x; w < p.n * chunks; w += gridDim.x) {
      const int64_t i = w / chunks, off = (w % chunks) * kChunkBytes;
      const int64_t src = p.src[i], dst = p.dst[i];
      if (src < 0 || src >= p.P || dst < 0 || dst >= p.P || page_read_and_written(p, src, dst)) continue;
      char* base = static_cast<char*>(p.cache) + l * p.layer_stride * eb;
      const int64_t bytes = page_bytes - off < kChunkBytes ? page_bytes - off : kChunkBytes;
      block_copy(base + dst * p.page_stride * eb + off, base + src * p.page_stride * eb + off, bytes);
    }
  }
}

__global__ ZAYA_RT_LAUNCH_BOUNDS(kCopyThreads) void gather_tail_kernel(GatherTailParams p, int64_t eb) {
  const int64_t row_bytes = p.W * eb;
  for (int64_t r = blockIdx.x; r < p.B * p.tau; r += gridDim.x) {
    const int64_t b = r / p.tau, j = r % p.tau;
    char* dst = static_cast<char*>(p.out) + r * row_bytes;
    const int64_t pos = static_cast<int64_t>(p.seq_lens[b]) - p.tau + j;
    const int64_t column = pos >= 0 ? pos / p.S : p.M;
    const int64_t page = column < p.M ? p.block_table[b * p.block_table_stride + column] : -1;
    if (page < 0 || page >= p.P) {
      block_zero(dst, row_bytes);
      continue;
    }
    block_copy(dst, static_cast<const char*>(p.cache) + (page * p.page_stride + (pos % p.S) * p.token_stride) * eb,
               row_bytes);
  }
}

// ---- sampler ---------------------------------------------------------------------------------------------

ZAYA_RT_DEVICE_INLINE uint64_t double_bits(double d) {
#if defined(ZAYA_RT_GPU_CUDA)
  return static_cast<uint64_t>(__double_as_longlong(d));
#else
  return __builtin_bit_cast(uint64_t, d);
#endif
}
ZAYA_RT_DEVICE_INLINE double bits_double(uint64_t u) {
#if defined(ZAYA_RT_GPU_CUDA)
  return __longlong_as_double(static_cast<long long>(u));
#else
  return __builtin_bit_cast(double, u);
#endif
}

struct SampleSmem {
  double d0[kSampleThreads], d1[kSampleThreads];    // reductions and scans
  int64_t i0[kSampleThreads], i1[kSampleThreads];
  double mass[kBins];
  unsigned int count[kBins];
  uint64_t prefix;
  int64_t need, tie_keep;
  double above;
  int done;
};

// A thread's run of histogram entries into one bin, added to shared memory when the bin changes: the first
// digits of p put most tokens into one or two bins, where an atomic per token would serialise the block.
template <bool kWithMass>
struct BinRun {
  int bin = -1;
  unsigned count = 0;
  double mass = 0.0;
  ZAYA_RT_DEVICE_INLINE void flush(SampleSmem& sm) {
    if (count == 0) return;
    atomicAdd(&sm.count[bin], count);
    if (kWithMass) atomicAdd(&sm.mass[bin], mass);
    count = 0, mass = 0.0;
  }
  ZAYA_RT_DEVICE_INLINE void add(SampleSmem& sm, int b, double m) {
    if (b != bin) flush(sm), bin = b;
    ++count, mass += m;
  }
};

// The kept prefix of the descending order: p > p_cut, or p == p_cut and among those the `tie_keep` lowest token
// ids (tie_keep < 0: all of them). Compared on the top 64 - shift bits of p's pattern (the cut may be found
// before all 8 digits are known); `all` keeps everything.
struct Cut {
  uint64_t prefix = 0;
  int shift = 0;
  int64_t tie_keep = -1;
  bool all = true;
  ZAYA_RT_DEVICE_INLINE bool above(uint64_t key) const { return all || (key >> shift) > prefix; }
  ZAYA_RT_DEVICE_INLINE bool tied(uint64_t key) const { return !all && (key >> shift) == prefix; }
  ZAYA_RT_DEVICE_INLINE bool keeps(uint64_t key, int64_t tie_rank) const {
    return above(key) || (tied(key) && (tie_keep < 0 || tie_rank < tie_keep));
  }
};

template <typename V, typename Op>
ZAYA_RT_DEVICE_INLINE V block_reduce(V v, V* buf, Op op) {
  const int t = threadIdx.x;
  buf[t] = v;
  __syncthreads();
  for (int s = kSampleThreads / 2; s > 0; s >>= 1) {
    if (t < s) buf[t] = op(buf[t], buf[t + s]);
    __syncthreads();
  }
  const V r = buf[0];
  __syncthreads();
  return r;
}

// Exclusive prefix sum over the threads (thread order), and the total.
template <typename V>
ZAYA_RT_DEVICE_INLINE V block_exclusive_scan(V v, V* a, V* b, V* total) {
  const int t = threadIdx.x;
  a[t] = v;
  __syncthreads();
  for (int s = 1; s < kSampleThreads; s <<= 1) {
    b[t] = t >= s ? a[t] + a[t - s] : a[t];
    __syncthreads();
    V* c = a; a = b; b = c;
  }
  const V excl = t == 0 ? V{} : a[t - 1];
  *total = a[kSampleThreads - 1];
  __syncthreads();
  return excl;
}

template <typename T>
struct Row {
  const T* x;
  double t, x_max;
  ZAYA_RT_DEVICE_INLINE double prob(int64_t i) const { return exp(static_cast<double>(to_float(x[i])) / t - x_max); }
};

template <typename T>
ZAYA_RT_DEVICE_INLINE void argmax_row(const T* x, int64_t V, SampleSmem& sm, int64_t* out) {
  float best = 0.f;
  int64_t at = -1, nan = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = to_float(x[i]);
    if (v != v) nan = 1;
    else if (at < 0 || v > best) best = v, at = i;
  }
  const int t = threadIdx.x;
  sm.d0[t] = best, sm.i0[t] = at, sm.i1[t] = nan;
  __syncthreads();
  for (int s = kSampleThreads / 2; s > 0; s >>= 1) {
    if (t < s) {
      const double vb = sm.d0[t + s];
      const int64_t ib = sm.i0[t + s];
      if (ib >= 0 && (sm.i0[t] < 0 || vb > sm.d0[t] || (vb == sm.d0[t] && ib < sm.i0[t]))) sm.d0[t] = vb, sm.i0[t] = ib;
      sm.i1[t] |= sm.i1[t + s];
    }
    __syncthreads();
  }
  if (t == 0) *out = sm.i1[0] ? -1 : sm.i0[0];
}

// Radix selection of the cut that keeps the top_k most probable tokens.
template <typename T>
ZAYA_RT_DEVICE_INLINE Cut top_k_cut(const Row<T>& row, int64_t V, int64_t top_k, SampleSmem& sm) {
  uint64_t prefix = 0;
  int64_t need = top_k;
  for (int shift = 56;; shift -= 8) {
    for (int i = threadIdx.x; i < kBins; i += blockDim.x) sm.count[i] = 0;
    __syncthreads();
    BinRun<false> run;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
      const uint64_t key = double_bits(row.prob(i));
      if (shift == 56 || (key >> (shift + 8)) == prefix) run.add(sm, static_cast<int>((key >> shift) & (kBins - 1)), 0.0);
    }
    run.flush(sm);
    __syncthreads();
    if (threadIdx.x == 0) {
      int64_t higher = 0;
      int bin = kBins - 1;
      for (; bin > 0; --bin) {
        if (higher + sm.count[bin] >= need) break;
        higher += sm.count[bin];
      }
      sm.need = need - higher;
      sm.prefix = (prefix << 8) | static_cast<uint64_t>(bin);
      sm.done = sm.count[bin] == sm.need;  // the whole bin is kept
    }
    __syncthreads();
    prefix = sm.prefix, need = sm.need;
    const bool done = sm.done != 0;
    __syncthreads();
    if (done || shift == 0) {
      Cut c;
      c.prefix = prefix, c.shift = shift, c.tie_keep = done ? -1 : need, c.all = false;
      return c;
    }
  }
}

// Radix descent to the cut of top-p within the top-k cut `k` whose kept mass is `mass`: the last kept token is
// the last one (descending order) whose preceding mass / mass is < top_p. The tokens that tie at a partial top-k
// cut (k.tie_keep >= 0, so p is one value q) go into the histogram as one group of k.tie_keep tokens.
template <typename T>
ZAYA_RT_DEVICE_INLINE Cut top_p_cut(const Row<T>& row, int64_t V, const Cut& k, double mass, double top_p,
                                    SampleSmem& sm) {
  const bool group = !k.all && k.tie_keep >= 0;
  const double q = bits_double(k.prefix);
  uint64_t prefix = 0;
  double above = 0.0;
  for (int shift = 56;; shift -= 8) {
    for (int i = threadIdx.x; i < kBins; i += blockDim.x) sm.count[i] = 0, sm.mass[i] = 0.0;
    __syncthreads();
    BinRun<true> run;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
      const double pi = row.prob(i);
      const uint64_t key = double_bits(pi);
      if (!(k.above(key) || (k.tied(key) && !group))) continue;
      if (shift == 56 || (key >> (shift + 8)) == prefix) run.add(sm, static_cast<int>((key >> shift) & (kBins - 1)), pi);
    }
    run.flush(sm);
    __syncthreads();
    if (threadIdx.x == 0) {
      int group_bin = -1;
      if (group && (shift == 56 || (k.prefix >> (shift + 8)) == prefix)) {
        group_bin = static_cast<int>((k.prefix >> shift) & (kBins - 1));
        sm.count[group_bin] += static_cast<unsigned>(k.tie_keep);
        sm.mass[group_bin] += static_cast<double>(k.tie_keep) * q;
      }
      double higher = 0.0, before = 0.0;
      int sel = -1;
      for (int bin = kBins - 1; bin >= 0; --bin) {
        if (sm.count[bin] == 0) continue;
        // the first non-empty bin always stays (a top_p that is 0 or NaN on the device keeps the top group)
        if (sel >= 0 && !((above + higher) / mass < top_p)) break;
        sel = bin, before = above + higher;
        higher += sm.mass[bin];
      }
      sm.prefix = (prefix << 8) | static_cast<uint64_t>(sel);
      sm.above = before;
      // One token left in the bin: the cut may stop here, unless it would be coarser than the top-k cut (then
      // `key >> shift >= prefix` would take in tokens top-k dropped).
      sm.done = sm.count[sel] == 1 && sel != group_bin && (k.all || shift <= k.shift);
      sm.tie_keep = -1;
      if (shift == 0) {  // sm.count[sel] tokens of one p: keep while the mass before each stays below top_p
        const double p_sel = bits_double(sm.prefix);
        int64_t j = 0;
        double cum = before;
        while (j < static_cast<int64_t>(sm.count[sel]) && cum / mass < top_p) cum += p_sel, ++j;
        sm.tie_keep = j;
      }
    }
    __syncthreads();
    prefix = sm.prefix, above = sm.above;
    const bool done = sm.done != 0;
    const int64_t tie_keep = sm.tie_keep;
    __syncthreads();
    if (done || shift == 0) {
      Cut c;
      c.prefix = prefix, c.shift = shift, c.tie_keep = done ? -1 : tie_keep, c.all = false;
      return c;
    }
  }
}

template <typename T>
__global__ ZAYA_RT_LAUNCH_BOUNDS(kSampleThreads) void sample_kernel(SampleParams p) {
  extern __shared__ float smem[];
  SampleSmem& sm = *reinterpret_cast<SampleSmem*>(smem);
  const int64_t b = blockIdx.x, V = p.V;
  const int tid = threadIdx.x;
  const T* x = static_cast<const T*>(p.logits) + b * p.row_stride;
  const float temperature = p.temperature[b];
  if (temperature == 0.0f) return argmax_row(x, V, sm, p.out + b);

  Row<T> row{x, static_cast<double>(temperature), 0.0};
  double x_max = -INFINITY;
  int64_t nan = 0;
  for (int64_t i = tid; i < V; i += blockDim.x) {
    const float v = to_float(x[i]);
    if (v != v) nan = 1;
    const double y = static_cast<double>(v) / row.t;
    x_max = y > x_max ? y : x_max;
  }
  x_max = block_reduce(x_max, sm.d0, [](double a, double c) { return a > c ? a : c; });
  nan = block_reduce(nan, sm.i0, [](int64_t a, int64_t c) { return a | c; });
  if (nan || !(x_max - x_max == 0.0)) {  // NaN, or no finite maximum
    if (tid == 0) p.out[b] = -1;
    return;
  }
  row.x_max = x_max;

  const int64_t top_k = p.top_k[b];
  const double top_p = p.top_p[b], min_p = p.min_p[b];
  Cut cut;  // keeps everything
  if (top_k > 0 && top_k < V) cut = top_k_cut(row, V, top_k, sm);
  if (top_p < 1.0) {
    double local = 0.0;
    const bool group = !cut.all && cut.tie_keep >= 0;
    for (int64_t i = tid; i < V; i += blockDim.x) {
      const double pi = row.prob(i);
      const uint64_t key = double_bits(pi);
      if (cut.above(key) || (cut.tied(key) && !group)) local += pi;
    }
    double mass = block_reduce(local, sm.d0, [](double a, double c) { return a + c; });
    if (group) mass += static_cast<double>(cut.tie_keep) * bits_double(cut.prefix);
    cut = top_p_cut(row, V, cut, mass, top_p, sm);
  }

  // Invert u over the kept mass in ascending token order; thread tid owns tokens [lo, hi).
  const int64_t seg = (V + kSampleThreads - 1) / kSampleThreads;
  const int64_t lo = tid * seg < V ? tid * seg : V, hi = lo + seg < V ? lo + seg : V;
  const bool ranked = !cut.all && cut.tie_keep >= 0;
  int64_t tie_rank0 = 0, ties_total = 0;
  if (ranked) {
    int64_t ties = 0;
    for (int64_t i = lo; i < hi; ++i) ties += cut.tied(double_bits(row.prob(i)));
    tie_rank0 = block_exclusive_scan(ties, sm.i0, sm.i1, &ties_total);
  }
  double local = 0.0;
  int64_t last = -1;
  for (int64_t i = lo, rank = tie_rank0; i < hi; ++i) {
    const double pi = row.prob(i);
    const uint64_t key = double_bits(pi);
    const bool tied = ranked && cut.tied(key);
    if (cut.keeps(key, rank) && pi >= min_p) local += pi, last = i;
    rank += tied;
  }
  double total = 0.0;
  const double offset = block_exclusive_scan(local, sm.d0, sm.d1, &total);
  const double target = sampling_uniform(p.seed[b], p.step[b]) * total;
  const int64_t crosses = last >= 0 && offset + local > target ? tid : kSampleThreads;
  const int64_t first = block_reduce(crosses, sm.i0, [](int64_t a, int64_t c) { return a < c ? a : c; });
  const int64_t last_kept = block_reduce(last, sm.i1, [](int64_t a, int64_t c) { return a > c ? a : c; });
  if (first == kSampleThreads) {
    if (tid == 0) p.out[b] = last_kept;  // rounding left u * total at or above the scanned total
    return;
  }
  if (tid != first) return;
  double cum = offset;
  int64_t pick = last;
  for (int64_t i = lo, rank = tie_rank0; i < hi; ++i) {
    const double pi = row.prob(i);
    const uint64_t key = double_bits(pi);
    const bool tied = ranked && cut.tied(key);
    if (cut.keeps(key, rank) && pi >= min_p) {
      cum += pi;
      if (cum > target) {
        pick = i;
        break;
      }
    }
    rank += tied;
  }
  p.out[b] = pick;
}

inline const char* launch_error() {
  const gpuError_t e = gpu_last_error();
  return e == gpuSuccess ? nullptr : gpu_error_string(e);
}

}  // namespace rt_detail

const char* kv_write(const KvWriteParams& p, void* stream) {
  using namespace rt_detail;
  if (p.N == 0) return nullptr;
  kv_write_kernel<<<grid_for(p.N), kCopyThreads, 0, as_stream(stream)>>>(p, element_bytes(p.dtype));
  return launch_error();
}

const char* copy_pages(const CopyPagesParams& p, void* stream) {
  using namespace rt_detail;
  if (p.n == 0 || p.L == 0) return nullptr;
  const int64_t chunks = (p.page_elems * element_bytes(p.dtype) + kChunkBytes - 1) / kChunkBytes;
  const dim3 grid(grid_for(p.n * chunks), static_cast<unsigned>(p.L < 65535 ? p.L : 65535));
  copy_pages_kernel<<<grid, kCopyThreads, 0, as_stream(stream)>>>(p, element_bytes(p.dtype), chunks);
  return launch_error();
}

const char* gather_tail(const GatherTailParams& p, void* stream) {
  using namespace rt_detail;
  if (p.B * p.tau == 0) return nullptr;
  gather_tail_kernel<<<grid_for(p.B * p.tau), kCopyThreads, 0, as_stream(stream)>>>(p, element_bytes(p.dtype));
  return launch_error();
}

const char* sample_tokens(const SampleParams& p, void* stream) {
  using namespace rt_detail;
  if (p.B == 0) return nullptr;
  if (p.B > 0x7fffffff) return "too many rows for one launch";
  const unsigned grid = static_cast<unsigned>(p.B);
  const size_t smem = sizeof(SampleSmem);
  ZAYA_RT_GPU_DISPATCH_FLOAT(p.dtype, T, sample_kernel<T><<<grid, kSampleThreads, smem, as_stream(stream)>>>(p));
  return launch_error();
}

}  // namespace zaya_rt::gpu
