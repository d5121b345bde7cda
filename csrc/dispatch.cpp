#include "dispatch.h"

#include <omp.h>

#include <algorithm>
#include <stdexcept>
#include <initializer_list>
#include <string>
#include <utility>

#include "zaya_rt/norms.h"

namespace zaya_rt {
namespace {

[[noreturn]] void bad(const std::string& op, const std::string& what) {
  throw std::invalid_argument("zaya_rt." + op + ": " + what);
}

void check_dtype(const char* op, const char* name, DType t) {
  if (!is_floating_16_32(t))
    bad(op, std::string(name) + " must be float32, float16 or bfloat16, got " + dtype_name(t));
}

void check_rows(const char* op, int64_t rows, int64_t dim) {
  if (rows < 0) bad(op, "negative row count " + std::to_string(rows));
  if (dim <= 0) bad(op, "hidden size must be positive, got " + std::to_string(dim));
}

void check_ptr(const char* op, const char* name, const void* p, int64_t rows) {
  if (p == nullptr && rows > 0) bad(op, std::string(name) + " is a null pointer");
}

void check_stride(const char* op, const char* name, int64_t stride, int64_t dim, int64_t rows) {
  if (rows > 1 && stride < dim)
    bad(op, std::string(name) + " row stride " + std::to_string(stride) + " is smaller than the row (" +
                std::to_string(dim) + ")");
}

void finish(const char* op, const char* err) {
  if (err != nullptr) throw std::runtime_error(std::string("zaya_rt.") + op + ": " + err);
}

void require_gpu(const char* op) {
#if !defined(ZAYA_RT_WITH_GPU)
  bad(op, "this zaya_rt._C was built without a GPU backend (rebuild with ZAYA_RT_CUDA=ON or ZAYA_RT_HIP=ON)");
#else
  (void)op;
#endif
}

// Calls the CPU kernel or, on a GPU build, the GPU one.
template <typename Params, typename CpuFn, typename GpuFn>
void route(const char* op, const Params& p, const Device& d, CpuFn cpu_fn, GpuFn gpu_fn) {
  if (d.type == DeviceType::kCpu) return finish(op, cpu_fn(p));
  if (d.type != DeviceType::kGpu) bad(op, "unknown device type");
  require_gpu(op);
  finish(op, gpu_fn(p, d.stream));
}

}  // namespace

const char* gpu_backend_name() {
#if defined(ZAYA_RT_WITH_CUDA)
  return "cuda";
#elif defined(ZAYA_RT_WITH_HIP)
  return "hip";
#else
  return "none";
#endif
}

#if !defined(ZAYA_RT_WITH_GPU)
// A CPU-only build links these stubs; require_gpu() rejects GPU calls before they are reached.
namespace gpu {
const char* rms_norm_fwd(const RmsNormFwdParams&, void*) { return "no GPU backend"; }
const char* rms_norm_bwd(const RmsNormBwdParams&, void*) { return "no GPU backend"; }
const char* residual_rms_norm_fwd(const ResidualRmsNormFwdParams&, void*) { return "no GPU backend"; }
const char* residual_rms_norm_bwd(const ResidualRmsNormBwdParams&, void*) { return "no GPU backend"; }
int64_t norm_bwd_num_partials(int64_t, int64_t) { return 1; }
const char* moe_dispatch(const MoeDispatchParams&, void*) { return "no GPU backend"; }
const char* grouped_gemm(const GroupedGemmParams&, void*) { return "no GPU backend"; }
const char* grouped_gemm_weight_grad(const GroupedGemmWeightGradParams&, void*) { return "no GPU backend"; }
const char* moe_experts(const MoeExpertsParams&, void*) { return "no GPU backend"; }
int64_t grouped_gemm_workspace(int64_t, int64_t, int64_t, int64_t, DType) { return 0; }
int64_t grouped_gemm_weight_grad_workspace(int64_t, int64_t, int64_t, int64_t, DType) { return 0; }
int64_t moe_experts_workspace(int64_t, int64_t, int64_t, int64_t, int64_t, DType) { return 0; }
const char* zaya_router(const RouterParams&, void*) { return "no GPU backend"; }
}  // namespace gpu
#endif

void rms_norm_fwd(const RmsNormFwdParams& p, const Device& d) {
  const char* op = "rms_norm";
  check_rows(op, p.rows, p.dim);
  check_dtype(op, "x", p.x_dtype);
  check_dtype(op, "weight", p.w_dtype);
  if (!(p.eps >= 0.f)) bad(op, "eps must be a non-negative number");
  check_ptr(op, "x", p.x, p.rows);
  check_ptr(op, "weight", p.weight, 1);
  check_ptr(op, "out", p.out, p.rows);
  check_ptr(op, "rstd", p.rstd, p.rows);
  check_stride(op, "x", p.x_row_stride, p.dim, p.rows);
  check_stride(op, "out", p.out_row_stride, p.dim, p.rows);
  if (p.rows == 0) return;
  route(op, p, d, cpu::rms_norm_fwd, gpu::rms_norm_fwd);
}

void rms_norm_bwd(const RmsNormBwdParams& p, const Device& d) {
  const char* op = "rms_norm_backward";
  check_rows(op, p.rows, p.dim);
  check_dtype(op, "x", p.x_dtype);
  check_dtype(op, "weight", p.w_dtype);
  check_ptr(op, "grad_out", p.grad_out, p.rows);
  check_ptr(op, "x", p.x, p.rows);
  check_ptr(op, "weight", p.weight, 1);
  check_ptr(op, "rstd", p.rstd, p.rows);
  check_ptr(op, "grad_x", p.grad_x, p.rows);
  check_ptr(op, "partials", p.partials, 1);
  check_ptr(op, "grad_weight", p.grad_weight, 1);
  if (p.num_partials < 1) bad(op, "num_partials must be at least 1");
  check_stride(op, "grad_out", p.grad_out_row_stride, p.dim, p.rows);
  check_stride(op, "x", p.x_row_stride, p.dim, p.rows);
  check_stride(op, "grad_x", p.grad_x_row_stride, p.dim, p.rows);
  route(op, p, d, cpu::rms_norm_bwd, gpu::rms_norm_bwd);
}

void residual_rms_norm_fwd(const ResidualRmsNormFwdParams& p, const Device& d) {
  const char* op = "residual_rms_norm";
  check_rows(op, p.rows, p.dim);
  check_dtype(op, "y", p.y_dtype);
  check_dtype(op, "h", p.h_dtype);
  check_dtype(op, "weight", p.w_dtype);
  if (p.p_dtype != p.w_dtype) bad(op, "residual scale parameters must have the norm weight's dtype");
  if (!(p.eps >= 0.f)) bad(op, "eps must be a non-negative number");
  for (const void* q : {p.y_bias, p.y_scale, p.h_bias, p.h_scale, p.weight}) check_ptr(op, "parameter", q, 1);
  check_ptr(op, "y", p.y, p.rows);
  check_ptr(op, "h", p.h, p.rows);
  check_ptr(op, "r", p.r, p.rows);
  check_ptr(op, "out", p.out, p.rows);
  check_ptr(op, "rstd", p.rstd, p.rows);
  check_stride(op, "y", p.y_row_stride, p.dim, p.rows);
  check_stride(op, "h", p.h_row_stride, p.dim, p.rows);
  check_stride(op, "r", p.r_row_stride, p.dim, p.rows);
  check_stride(op, "out", p.out_row_stride, p.dim, p.rows);
  if (p.rows == 0) return;
  route(op, p, d, cpu::residual_rms_norm_fwd, gpu::residual_rms_norm_fwd);
}

void residual_rms_norm_bwd(const ResidualRmsNormBwdParams& p, const Device& d) {
  const char* op = "residual_rms_norm_backward";
  check_rows(op, p.rows, p.dim);
  check_dtype(op, "y", p.y_dtype);
  check_dtype(op, "h", p.h_dtype);
  check_dtype(op, "weight", p.w_dtype);
  if (p.p_dtype != p.w_dtype) bad(op, "residual scale parameters must have the norm weight's dtype");
  for (const void* q : {p.y_bias, p.y_scale, p.h_bias, p.h_scale, p.weight}) check_ptr(op, "parameter", q, 1);
  check_ptr(op, "grad_out", p.grad_out, p.rows);
  check_ptr(op, "y", p.y, p.rows);
  check_ptr(op, "h", p.h, p.rows);
  check_ptr(op, "r", p.r, p.rows);
  check_ptr(op, "rstd", p.rstd, p.rows);
  check_ptr(op, "grad_y", p.grad_y, p.rows);
  check_ptr(op, "grad_h", p.grad_h, p.rows);
  check_ptr(op, "partials", p.partials, 1);
  check_ptr(op, "grad_params", p.grad_params, 1);
  if (p.num_partials < 1) bad(op, "num_partials must be at least 1");
  check_stride(op, "grad_out", p.grad_out_row_stride, p.dim, p.rows);
  if (p.grad_r) check_stride(op, "grad_r", p.grad_r_row_stride, p.dim, p.rows);
  check_stride(op, "y", p.y_row_stride, p.dim, p.rows);
  check_stride(op, "h", p.h_row_stride, p.dim, p.rows);
  check_stride(op, "r", p.r_row_stride, p.dim, p.rows);
  check_stride(op, "grad_y", p.grad_y_row_stride, p.dim, p.rows);
  check_stride(op, "grad_h", p.grad_h_row_stride, p.dim, p.rows);
  route(op, p, d, cpu::residual_rms_norm_bwd, gpu::residual_rms_norm_bwd);
}

int64_t norm_bwd_num_partials(const Device& d, int64_t rows, int64_t dim) {
  if (d.type == DeviceType::kGpu) {
    require_gpu("norm_bwd_num_partials");
    return gpu::norm_bwd_num_partials(rows, dim);
  }
  // Enough chunks to feed every thread; few enough that the final reduction stays cheap.
  return std::max<int64_t>(1, std::min<int64_t>(rows, 4 * omp_get_max_threads()));
}

static void check_sizes(const char* op, std::initializer_list<std::pair<const char*, int64_t>> sizes) {
  for (const auto& [name, value] : sizes)
    if (value < 0) bad(op, std::string(name) + " must be non-negative, got " + std::to_string(value));
}

// Offsets live on the tensors' device; only host-resident ones can be checked without a sync.
static void check_host_offsets(const char* op, const Device& d, const int32_t* offsets, int64_t groups, int64_t rows) {
  if (d.type != DeviceType::kCpu) return;
  int32_t prev = 0;
  for (int64_t g = 0; g < groups; ++g) {
    if (offsets[g] < prev || offsets[g] > rows)
      bad(op, "offsets must be non-decreasing and at most the row count (" + std::to_string(rows) + "); offsets[" +
                  std::to_string(g) + "] = " + std::to_string(offsets[g]));
    prev = offsets[g];
  }
}

static void check_index_dtype(const char* op, DType t) {
  if (t != DType::kInt32 && t != DType::kInt64)
    bad(op, std::string("expert_index must be int32 or int64, got ") + dtype_name(t));
}

void moe_dispatch(const MoeDispatchParams& p, const Device& d) {
  const char* op = "moe_dispatch";
  check_sizes(op, {{"num_slots", p.num_slots}});
  if (p.num_experts < 1) bad(op, "num_experts must be at least 1");
  check_index_dtype(op, p.index_dtype);
  check_ptr(op, "expert_index", p.expert_index, p.num_slots);
  for (const void* q : {static_cast<const void*>(p.offsets), static_cast<const void*>(p.counts)})
    check_ptr(op, "offsets/counts", q, 1);
  check_ptr(op, "sorted_slots", p.sorted_slots, p.num_slots);
  check_ptr(op, "slot_rows", p.slot_rows, p.num_slots);
  route(op, p, d, cpu::moe_dispatch, gpu::moe_dispatch);
}

void grouped_gemm(const GroupedGemmParams& p, const Device& d) {
  const char* op = "grouped_gemm";
  check_sizes(op, {{"M", p.M}, {"N", p.N}, {"K", p.K}});
  if (p.G < 1) bad(op, "need at least one group");
  check_dtype(op, "a", p.dtype);
  check_ptr(op, "a", p.a, p.M * p.K);
  check_ptr(op, "b", p.b, p.N * p.K);
  check_ptr(op, "offsets", p.offsets, 1);
  check_ptr(op, "out", p.out, p.M * p.N);
  check_ptr(op, "workspace", p.workspace, 1);
  check_host_offsets(op, d, p.offsets, p.G, p.M);
  if (p.M * p.N == 0) return;
  route(op, p, d, cpu::grouped_gemm, gpu::grouped_gemm);
}

void grouped_gemm_weight_grad(const GroupedGemmWeightGradParams& p, const Device& d) {
  const char* op = "grouped_gemm_weight_grad";
  check_sizes(op, {{"M", p.M}, {"N", p.N}, {"K", p.K}});
  if (p.G < 1) bad(op, "need at least one group");
  check_dtype(op, "dy", p.dtype);
  check_dtype(op, "grad_b", p.grad_dtype);
  check_ptr(op, "dy", p.dy, p.M * p.N);
  check_ptr(op, "a", p.a, p.M * p.K);
  check_ptr(op, "offsets", p.offsets, 1);
  check_ptr(op, "grad_b", p.grad_b, p.N * p.K);
  check_ptr(op, "workspace", p.workspace, 1);
  check_host_offsets(op, d, p.offsets, p.G, p.M);
  if (p.N * p.K == 0) return;
  route(op, p, d, cpu::grouped_gemm_weight_grad, gpu::grouped_gemm_weight_grad);
}

void moe_experts(const MoeExpertsParams& p, const Device& d) {
  const char* op = "moe_experts";
  check_sizes(op, {{"T", p.T}, {"D", p.D}, {"I", p.I}});
  if (p.E < 1 || p.top_k < 1) bad(op, "need at least one expert and one slot per token");
  check_dtype(op, "hidden", p.dtype);
  check_dtype(op, "gate", p.gate_dtype);
  check_index_dtype(op, p.index_dtype);
  for (const void* q : {p.hidden, p.expert_index, p.gate, p.gate_up, p.down, static_cast<const void*>(p.out)})
    check_ptr(op, "tensor", q, p.T * p.D);
  check_ptr(op, "workspace", p.workspace, 1);
  if (p.T * p.D == 0) return;
  route(op, p, d, cpu::moe_experts, gpu::moe_experts);
}

void zaya_router(const RouterParams& p, const Device& d) {
  const char* op = "zaya_router";
  check_sizes(op, {{"T", p.T}});
  if (p.D < 1 || p.R < 1 || p.C < 2) bad(op, "need D >= 1, R >= 1 and at least one expert plus the skip class");
  check_dtype(op, "x", p.dtype);
  for (const void* q : {p.down_w, p.down_b, p.norm_w, p.fc1_w, p.fc1_b, p.fc2_w, p.fc2_b, p.out_w,
                        static_cast<const void*>(p.balancing_bias)})
    check_ptr(op, "weight", q, 1);
  if ((p.z_prev == nullptr) != (p.eda_scale == nullptr)) bad(op, "z_prev and eda_scale come together");
  if (p.z_prev != nullptr) check_dtype(op, "z_prev", p.z_prev_dtype);
  if (d.type == DeviceType::kCpu) {
    check_ptr(op, "workspace", p.workspace, 1);
    if (p.z0 != nullptr) bad(op, "z0 (a precomputed down projection) is for the GPU kernel only");
  } else if (p.z0 != nullptr) {
    check_stride(op, "z0", p.z0_row_stride, p.R, p.T);
  }
  if (p.T == 0) return;
  route(op, p, d, cpu::zaya_router, gpu::zaya_router);
}

int64_t zaya_router_workspace(int64_t T, int64_t D, int64_t R, int64_t C) {
  return cpu::zaya_router_workspace(T, D, R, C);
}

int64_t grouped_gemm_workspace(const Device& d, int64_t M, int64_t N, int64_t K, int64_t G, DType t) {
  if (d.type == DeviceType::kGpu) return gpu::grouped_gemm_workspace(M, N, K, G, t);
  return cpu::grouped_gemm_workspace(M, N, K, G, t);
}

int64_t grouped_gemm_weight_grad_workspace(const Device& d, int64_t M, int64_t N, int64_t K, int64_t G, DType t) {
  if (d.type == DeviceType::kGpu) return gpu::grouped_gemm_weight_grad_workspace(M, N, K, G, t);
  return cpu::grouped_gemm_weight_grad_workspace(M, N, K, G, t);
}

int64_t moe_experts_workspace(const Device& d, int64_t T, int64_t top_k, int64_t D, int64_t I, int64_t E, DType t) {
  if (d.type == DeviceType::kGpu) return gpu::moe_experts_workspace(T, top_k, D, I, E, t);
  return cpu::moe_experts_workspace(T, top_k, D, I, E, t);
}

}  // namespace zaya_rt
