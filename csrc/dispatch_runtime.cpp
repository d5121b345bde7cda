#include "dispatch_runtime.h"

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "dispatch_common.h"

namespace zaya_rt {
using namespace dispatch;

namespace {

void check_cache_dtype(const char* op, DType t) {
  if (!is_floating_16_32(t) && t != DType::kFloat64)
    bad(op, std::string("cache dtype must be float32, float16, bfloat16 or float64, got ") + dtype_name(t));
}

}  // namespace

void kv_write(const KvWriteParams& p, const Device& d) {
  const char* op = "kv_write";
  check_cache_dtype(op, p.dtype);
  check_nonneg(op, "N", p.N);
  check_positive(op, "row width", p.W);
  check_positive(op, "page count", p.P);
  check_positive(op, "page size", p.S);
  if (p.token_stride < p.W || p.page_stride < p.S * p.token_stride) bad(op, "cache strides overlap rows");
  if (p.N > 0 && (!p.k_new || !p.v_new || !p.k_cache || !p.v_cache || !p.slot_mapping)) bad(op, "null pointer");
  require_device(op, d);
  if (p.N == 0) return;
  // GPU index tensors stay on the device: nothing here reads their values (that would sync the host).
  if (d.type == DeviceType::kGpu) return finish(op, gpu::kv_write(p, d.stream));
  const int64_t capacity = p.P * p.S;
  for (int64_t n = 0; n < p.N; ++n)
    if (p.slot_mapping[n] < -1 || p.slot_mapping[n] >= capacity)
      bad(op, "slot_mapping[" + std::to_string(n) + "] = " + std::to_string(p.slot_mapping[n]) +
                  " must lie in [-1, " + std::to_string(capacity) + ")");
  finish(op, cpu::kv_write(p));
}

void copy_pages(const CopyPagesParams& p, const Device& d) {
  const char* op = "copy_pages";
  check_cache_dtype(op, p.dtype);
  check_nonneg(op, "n", p.n);
  check_positive(op, "layer count", p.L);
  check_positive(op, "page count", p.P);
  check_positive(op, "page size", p.page_elems);
  if (p.page_stride < p.page_elems || p.layer_stride < p.P * p.page_stride) bad(op, "cache strides overlap pages");
  if (p.n > 0 && (!p.cache || !p.src || !p.dst)) bad(op, "null pointer");
  require_device(op, d);
  if (p.n == 0) return;
  if (d.type == DeviceType::kGpu) return finish(op, gpu::copy_pages(p, d.stream));
  // A page both read and written would make the result depend on the order of the copies.
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
  finish(op, cpu::copy_pages(p));
}

void gather_tail(const GatherTailParams& p, const Device& d) {
  const char* op = "gather_tail";
  check_cache_dtype(op, p.dtype);
  check_nonneg(op, "B", p.B);
  check_nonneg(op, "tau", p.tau);
  check_positive(op, "row width", p.W);
  check_positive(op, "page count", p.P);
  check_positive(op, "page size", p.S);
  check_nonneg(op, "block table width", p.M);
  if (p.B * p.tau > 0 && (!p.cache || !p.block_table || !p.seq_lens || !p.out)) bad(op, "null pointer");
  require_device(op, d);
  if (p.B * p.tau == 0) return;
  if (d.type == DeviceType::kGpu) return finish(op, gpu::gather_tail(p, d.stream));
  for (int64_t b = 0; b < p.B; ++b)
    if (p.seq_lens[b] < 0 || p.seq_lens[b] > p.M * p.S)
      bad(op, "seq_lens[" + std::to_string(b) + "] = " + std::to_string(p.seq_lens[b]) +
                  " does not fit the block table (" + std::to_string(p.M) + " pages of " + std::to_string(p.S) + ")");
  finish(op, cpu::gather_tail(p));
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
  if (d.type == DeviceType::kGpu) return finish(op, gpu::sample_tokens(p, d.stream));  // no workspace
  bool any_sampled = false;
  for (int64_t b = 0; b < p.B; ++b) {
    any_sampled = any_sampled || p.temperature[b] != 0.0f;
    const std::string row = "[" + std::to_string(b) + "]";
    if (!(p.temperature[b] >= 0.0f) || !std::isfinite(p.temperature[b])) bad(op, "temperature" + row + " must be finite and >= 0");
    if (p.top_k[b] < 0) bad(op, "top_k" + row + " must be >= 0");
    if (!(p.top_p[b] > 0.0f && p.top_p[b] <= 1.0f)) bad(op, "top_p" + row + " must lie in (0, 1]");
    if (!(p.min_p[b] >= 0.0f && p.min_p[b] <= 1.0f)) bad(op, "min_p" + row + " must lie in [0, 1]");
  }
  if (any_sampled && (p.workspace == nullptr || p.workspace_bytes < cpu::sample_workspace(p.B, p.V)))
    bad(op, "workspace too small");
  finish(op, cpu::sample_tokens(p));
}

int64_t sample_workspace(const SampleParams& p, const Device& d) {
  require_device("sample_workspace", d);
  return d.type == DeviceType::kGpu ? 0 : cpu::sample_workspace(p.B, p.V);
}

}  // namespace zaya_rt
