#include "dispatch.h"

#include <initializer_list>
#include <string>
#include <utility>

#include "dispatch_common.h"

namespace zaya_rt {

using namespace dispatch;

namespace {

void check_sizes(const char* op, std::initializer_list<std::pair<const char*, int64_t>> sizes) {
  for (const auto& [name, value] : sizes) check_nonneg(op, name, value);
}

// Offsets live on the tensors' device; only host-resident ones can be checked without a sync.
void check_host_offsets(const char* op, const Device& d, const int32_t* offsets, int64_t groups, int64_t rows) {
  if (d.type != DeviceType::kCpu) return;
  int32_t prev = 0;
  for (int64_t g = 0; g < groups; ++g) {
    if (offsets[g] < prev || offsets[g] > rows)
      bad(op, "offsets must be non-decreasing and at most the row count (" + std::to_string(rows) + "); offsets[" +
                  std::to_string(g) + "] = " + std::to_string(offsets[g]));
    prev = offsets[g];
  }
}

// Sizes, group offsets and workspace, as both grouped GEMMs take them.
template <typename P> void check_groups(const char* op, const P& p, const Device& d) {
  check_sizes(op, {{"M", p.M}, {"N", p.N}, {"K", p.K}});
  if (p.G < 1) bad(op, "need at least one group");
  check_ptr(op, "offsets", p.offsets, true);
  check_ptr(op, "workspace", p.workspace, true);
  check_host_offsets(op, d, p.offsets, p.G, p.M);
}

void check_index_dtype(const char* op, DType t) {
  if (t != DType::kInt32 && t != DType::kInt64)
    bad(op, std::string("expert_index must be int32 or int64, got ") + dtype_name(t));
}

// Expert ids live on the tensors' device; host-resident ones must each name an expert or the skip class E.
void check_host_expert_ids(const char* op, const Device& d, const void* index, DType t, int64_t n, int64_t E) {
  if (d.type != DeviceType::kCpu) return;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t e = t == DType::kInt64 ? static_cast<const int64_t*>(index)[i] : static_cast<const int32_t*>(index)[i];
    if (e < 0 || e > E)
      bad(op, "expert_index values must lie in [0, " + std::to_string(E) + "] (" + std::to_string(E) +
                  " = skip); expert_index[" + std::to_string(i) + "] = " + std::to_string(e));
  }
}

}  // namespace

void moe_dispatch(const MoeDispatchParams& p, const Device& d) {
  const char* op = "moe_dispatch";
  check_sizes(op, {{"num_slots", p.num_slots}});
  if (p.num_experts < 1) bad(op, "num_experts must be at least 1");
  check_index_dtype(op, p.index_dtype);
  check_ptr(op, "expert_index", p.expert_index, p.num_slots > 0);
  for (const void* q : {static_cast<const void*>(p.offsets), static_cast<const void*>(p.counts)})
    check_ptr(op, "offsets/counts", q, true);
  check_ptr(op, "sorted_slots", p.sorted_slots, p.num_slots > 0);
  check_ptr(op, "slot_rows", p.slot_rows, p.num_slots > 0);
  route(op, p, d, cpu::moe_dispatch, gpu::moe_dispatch);
}

void grouped_gemm(const GroupedGemmParams& p, const Device& d) {
  const char* op = "grouped_gemm";
  check_float_dtype(op, "a", p.dtype);
  check_ptrs(op, {{"a", p.a, p.M * p.K > 0}, {"b", p.b, p.N * p.K > 0}, {"out", p.out, p.M * p.N > 0}});
  check_groups(op, p, d);
  if (p.M * p.N == 0) return;
  if (p.K == 0)  // zaya_rt.ops.grouped_gemm returns the zeros itself
    bad(op, "K = 0 (an empty inner dimension): the kernels need K >= 1 where the output is not empty");
  route(op, p, d, cpu::grouped_gemm, gpu::grouped_gemm);
}

void grouped_gemm_weight_grad(const GroupedGemmWeightGradParams& p, const Device& d) {
  const char* op = "grouped_gemm_weight_grad";
  check_float_dtype(op, "dy", p.dtype);
  check_float_dtype(op, "grad_b", p.grad_dtype);
  check_ptrs(op, {{"dy", p.dy, p.M * p.N > 0}, {"a", p.a, p.M * p.K > 0}, {"grad_b", p.grad_b, p.N * p.K > 0}});
  check_groups(op, p, d);
  if (p.N * p.K == 0) return;
  route(op, p, d, cpu::grouped_gemm_weight_grad, gpu::grouped_gemm_weight_grad);
}

void moe_experts(const MoeExpertsParams& p, const Device& d) {
  const char* op = "moe_experts";
  check_sizes(op, {{"T", p.T}, {"D", p.D}, {"I", p.I}});
  if (p.E < 1 || p.top_k < 1) bad(op, "need at least one expert and one slot per token");
  check_float_dtype(op, "hidden", p.dtype);
  check_float_dtype(op, "gate", p.gate_dtype);
  check_index_dtype(op, p.index_dtype);
  for (const void* q : {p.hidden, p.expert_index, p.gate, p.gate_up, p.down, static_cast<const void*>(p.out)})
    check_ptr(op, "tensor", q, p.T * p.D > 0);
  check_ptr(op, "workspace", p.workspace, true);
  if (p.T * p.D == 0) return;
  check_host_expert_ids(op, d, p.expert_index, p.index_dtype, p.T * p.top_k, p.E);
  const bool keep = p.keep_h != nullptr;
  if (keep != (p.keep_offsets != nullptr) || keep != (p.keep_sorted_slots != nullptr) ||
      keep != (p.keep_slot_rows != nullptr))
    bad(op, "keep_offsets, keep_sorted_slots, keep_slot_rows and keep_h must be all set or all null");
  if (keep && d.type != DeviceType::kCpu) bad(op, "the kept outputs (keep_h, ...) are CPU only");
  if (p.I == 0)  // zaya_rt.ops.moe_experts returns the zeros itself
    bad(op, "I = 0 (experts of width 0): the kernels need I >= 1 where the output is not empty");
  route(op, p, d, cpu::moe_experts, gpu::moe_experts);
}

void moe_experts_backward(const MoeExpertsBackwardParams& p, const Device& d) {
  const char* op = "moe_experts_backward";
  require_device(op, d);
  if (d.type != DeviceType::kCpu) bad(op, "CPU only (the GPU backward composes grouped GEMMs in Python)");
  check_sizes(op, {{"T", p.T}, {"D", p.D}, {"I", p.I}});
  if (p.E < 1 || p.top_k < 1) bad(op, "need at least one expert and one slot per token");
  check_float_dtype(op, "hidden", p.dtype);
  check_float_dtype(op, "gate", p.gate_dtype);
  if (p.T * p.D * p.I == 0)  // zaya_rt.ops.moe_experts' backward returns the zeros itself
    bad(op, "T, D and I must be positive (empty blocks have all-zero gradients)");
  for (const void* q : {p.hidden, p.grad_out, p.gate, p.gate_up, p.down, static_cast<const void*>(p.offsets),
                        static_cast<const void*>(p.sorted_slots), static_cast<const void*>(p.slot_rows)})
    check_ptr(op, "input", q, true);
  check_ptr(op, "workspace", p.workspace, true);
  const int64_t slots = p.T * p.top_k;
  check_host_offsets(op, d, p.offsets, p.E, slots);
  for (int64_t i = 0; i < slots; ++i)  // the kernel indexes rows and slots through them
    if (p.sorted_slots[i] < 0 || p.sorted_slots[i] >= slots || p.slot_rows[i] < -1 || p.slot_rows[i] >= slots)
      bad(op, "sorted_slots must lie in [0, T * top_k) and slot_rows in [-1, T * top_k) (moe_dispatch's outputs); "
                  "entry " + std::to_string(i) + " has " + std::to_string(p.sorted_slots[i]) + " and " +
                  std::to_string(p.slot_rows[i]));
  finish(op, cpu::moe_experts_backward(p));
}

int64_t grouped_gemm_workspace(const GroupedGemmParams& p, const Device& d) {
  require_device("grouped_gemm_workspace", d);
  if (d.type == DeviceType::kGpu) return gpu::grouped_gemm_workspace(p.M, p.N, p.K, p.G, p.dtype);
  return cpu::grouped_gemm_workspace(p.M, p.N, p.K, p.G, p.dtype);
}

int64_t grouped_gemm_weight_grad_workspace(const GroupedGemmWeightGradParams& p, const Device& d) {
  require_device("grouped_gemm_weight_grad_workspace", d);
  if (d.type == DeviceType::kGpu) return gpu::grouped_gemm_weight_grad_workspace(p.M, p.N, p.K, p.G, p.dtype);
  return cpu::grouped_gemm_weight_grad_workspace(p.M, p.N, p.K, p.G, p.dtype);
}

int64_t moe_experts_workspace(const MoeExpertsParams& p, const Device& d) {
  require_device("moe_experts_workspace", d);
  if (d.type == DeviceType::kGpu) return gpu::moe_experts_workspace(p.T, p.top_k, p.D, p.I, p.E, p.dtype);
  return cpu::moe_experts_workspace(p.T, p.top_k, p.D, p.I, p.E, p.dtype);
}

int64_t moe_experts_backward_workspace(const MoeExpertsBackwardParams& p, const Device& d) {
  require_device("moe_experts_backward_workspace", d);
  return cpu::moe_experts_backward_workspace(p.T, p.top_k, p.D, p.I, p.E, p.dtype);
}

}  // namespace zaya_rt
