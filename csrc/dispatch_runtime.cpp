#include <cmath>
#include <initializer_list>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "dispatch.h"
#include "dispatch_common.h"

namespace zaya_rt {
using namespace dispatch;

namespace {

using Sizes = std::initializer_list<std::pair<const char*, int64_t>>;

// What every page operation checks: its row counts (non-negative), the cache dtype, the sizes it needs
// positive, its pointers (when it has rows to move) and the device.
void check_cache(const char* op, Sizes counts, DType t, Sizes positive, bool any,
                 std::initializer_list<const void*> pointers, const Device& d) {
  for (const auto& [name, value] : counts) check_nonneg(op, name, value);
  if (!is_floating_16_32(t) && t != DType::kFloat64)
    bad(op, std::string("cache dtype must be float32, float16, bfloat16 or float64, got ") + dtype_name(t));
  for (const auto& [name, value] : positive) check_positive(op, name, value);
  for (const void* q : pointers)
    if (any && q == nullptr) bad(op, "null pointer");
  require_device(op, d);
}

// Host-side index checks of the CPU kernels. GPU index tensors stay on the device: nothing reads their values
// there (that would sync the host), so the GPU kernels skip out-of-range rows instead.
void check_slots(const char* op, const KvWriteParams& p) {
  const int64_t capacity = p.P * p.S;
  for (int64_t n = 0; n < p.N; ++n)
    if (p.slot_mapping[n] < -1 || p.slot_mapping[n] >= capacity)
      bad(op, "slot_mapping[" + std::to_string(n) + "] = " + std::to_string(p.slot_mapping[n]) +
                  " must lie in [-1, " + std::to_string(capacity) + ")");
}

// A page both read and written would make the result depend on the order of the copies.
void check_pages(const char* op, const CopyPagesParams& p) {
  std::vector<char> role(static_cast<size_t>(p.P), 0);  // bit 1: a source, bit 2: a destination
  for (int64_t i = 0; i < p.n; ++i)
    for (auto [name, page, bit] : {std::tuple{"src", p.src[i], 1}, std::tuple{"dst", p.dst[i], 2}}) {
      if (page < 0 || page >= p.P)
        bad(op, std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(page) +
                    " is not a page of the cache (0.." + std::to_string(p.P - 1) + ")");
      role[page] |= bit;
    }
  for (int64_t i = 0; i < p.n; ++i)
    if (role[p.dst[i]] == 3)
      bad(op, "page " + std::to_string(p.dst[i]) + " is both a source and a destination (dst[" + std::to_string(i) +
                  "]); overlapping copies are not supported");
}

void check_seq_lens(const char* op, const GatherTailParams& p) {
  for (int64_t b = 0; b < p.B; ++b)
    if (p.seq_lens[b] < 0 || p.seq_lens[b] > p.M * p.S)
      bad(op, "seq_lens[" + std::to_string(b) + "] = " + std::to_string(p.seq_lens[b]) +
                  " does not fit the block table (" + std::to_string(p.M) + " pages of " + std::to_string(p.S) + ")");
}

void check_sampling(const char* op, const SampleParams& p) {
  bool any_sampled = false;
  for (int64_t b = 0; b < p.B; ++b) {
    any_sampled = any_sampled || p.temperature[b] != 0.0f;
    const std::string row = "[" + std::to_string(b) + "]";
    if (!(p.temperature[b] >= 0.0f) || !std::isfinite(p.temperature[b]))
      bad(op, "temperature" + row + " must be finite and >= 0");
    if (p.top_k[b] < 0) bad(op, "top_k" + row + " must be >= 0");
    if (!(p.top_p[b] > 0.0f && p.top_p[b] <= 1.0f)) bad(op, "top_p" + row + " must lie in (0, 1]");
    if (!(p.min_p[b] >= 0.0f && p.min_p[b] <= 1.0f)) bad(op, "min_p" + row + " must lie in [0, 1]");
  }
  if (any_sampled && (p.workspace == nullptr || p.workspace_bytes < cpu::sample_workspace(p.B, p.V)))
    bad(op, "workspace too small");
}

// Runs the CPU kernel after its host-side index checks, or the GPU one, when there are rows to move.
template <typename P>
void run_rows(const char* op, const P& p, const Device& d, bool any, void (*host_check)(const char*, const P&),
              const char* (*cpu_fn)(const P&), const char* (*gpu_fn)(const P&, void*)) {
  if (!any) return;
  route(op, p, d, [op, host_check, cpu_fn](const P& q) { host_check(op, q); return cpu_fn(q); }, gpu_fn);
}

}  // namespace

void kv_write(const KvWriteParams& p, const Device& d) {
  const char* op = "kv_write";
  check_cache(op, {{"N", p.N}}, p.dtype, {{"row width", p.W}, {"page count", p.P}, {"page size", p.S}}, p.N > 0,
              {p.k_new, p.v_new, p.k_cache, p.v_cache, p.slot_mapping}, d);
  if (p.token_stride < p.W || p.page_stride < p.S * p.token_stride) bad(op, "cache strides overlap rows");
  run_rows(op, p, d, p.N > 0, check_slots, cpu::kv_write, gpu::kv_write);
}

void copy_pages(const CopyPagesParams& p, const Device& d) {
  const char* op = "copy_pages";
  check_cache(op, {{"n", p.n}}, p.dtype, {{"layer count", p.L}, {"page count", p.P}, {"page size", p.page_elems}},
              p.n > 0, {p.cache, p.src, p.dst}, d);
  if (p.page_stride < p.page_elems || p.layer_stride < p.P * p.page_stride) bad(op, "cache strides overlap pages");
  run_rows(op, p, d, p.n > 0, check_pages, cpu::copy_pages, gpu::copy_pages);
}

void gather_tail(const GatherTailParams& p, const Device& d) {
  const char* op = "gather_tail";
  check_cache(op, {{"B", p.B}, {"tau", p.tau}, {"block table width", p.M}}, p.dtype,
              {{"row width", p.W}, {"page count", p.P}, {"page size", p.S}}, p.B * p.tau > 0,
              {p.cache, p.block_table, p.seq_lens, p.out}, d);
  run_rows(op, p, d, p.B * p.tau > 0, check_seq_lens, cpu::gather_tail, gpu::gather_tail);
}

void sample_tokens(const SampleParams& p, const Device& d) {
  const char* op = "sample_tokens";
  check_float_dtype(op, "logits", p.dtype);
  check_nonneg(op, "B", p.B);
  check_positive(op, "vocabulary size", p.V);
  require_device(op, d);
  if (p.B == 0) return;
  if (!p.logits || !p.temperature || !p.top_k || !p.top_p || !p.min_p || !p.seed || !p.step || !p.out)
    bad(op, "null pointer");
  run_rows(op, p, d, true, check_sampling, cpu::sample_tokens, gpu::sample_tokens);  // GPU: no workspace
}

int64_t sample_workspace(const SampleParams& p, const Device& d) {
  require_device("sample_workspace", d);
  return d.type == DeviceType::kGpu ? 0 : cpu::sample_workspace(p.B, p.V);
}

}  // namespace zaya_rt
