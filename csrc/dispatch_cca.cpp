#include "dispatch.h"

#include <omp.h>

#include <cmath>
#include <initializer_list>
#include <utility>
#include <string>

#include "dispatch_common.h"

namespace zaya_rt {
using namespace dispatch;

namespace {

void check_sizes(const char* op, int64_t T, int64_t B, int64_t Hq, int64_t Hk, int64_t d, int64_t k0, int64_t k1,
                 int64_t rd, float eps) {
  need(op, T >= 0 && B >= 0, "token and sequence counts must be non-negative");
  need(op, Hq >= 1 && Hk >= 1 && Hq % Hk == 0, "num_q_heads must be a positive multiple of num_kv_heads");
  need(op, d >= 2 && d % 2 == 0, "head_dim must be even and at least 2, got " + std::to_string(d));
  need(op, k0 >= 1 && k1 >= 1, "conv kernel sizes must be at least 1");
  need(op, rd > 0 && rd <= d && rd % 2 == 0, "rope_dims must be even with 0 < rope_dims <= head_dim, got " +
                                                 std::to_string(rd));
  need(op, eps >= 0.f && std::isfinite(eps), "norm_eps must be finite and non-negative");
}

void check_types(const char* op, DType dtype, DType w_dtype, DType state_dtype, DType pos_dtype) {
  check_float_dtype(op, "activations", dtype);
  need(op, w_dtype == dtype || w_dtype == DType::kFloat32, "weights must have the activations' dtype or float32");
  need(op, state_dtype == dtype || state_dtype == DType::kFloat32, "state must have the activations' dtype or float32");
  need(op, pos_dtype == DType::kInt32 || pos_dtype == DType::kInt64, "positions must be int32 or int64");
}

// cu_seqlens is host memory on the CPU: checks it fully, so the kernel can trust it.
void check_cu_seqlens(const char* op, const int32_t* cu, int64_t B, int64_t T) {
  check_ptr(op, "cu_seqlens", cu, true);
  need(op, cu[0] == 0, "cu_seqlens must start at 0");
  for (int64_t b = 0; b < B; ++b)
    need(op, cu[b + 1] >= cu[b], "cu_seqlens must be non-decreasing (at index " + std::to_string(b + 1) + ")");
  need(op, cu[B] == T, "cu_seqlens must end at the token count " + std::to_string(T) + ", got " +
                           std::to_string(cu[B]));
}

// What forward and backward share: sizes, dtypes, the conv weights, RoPE table, positions and the qp/kp rows.
template <typename P> void check_common(const char* op, const P& p) {
  check_sizes(op, p.T, p.B, p.Hq, p.Hk, p.d, p.k0, p.k1, p.rd, p.norm_eps);
  check_types(op, p.dtype, p.w_dtype, p.state_dtype, p.pos_dtype);
  for (auto [name, ptr] : {std::pair{"conv0_w", p.conv0_w}, {"conv0_b", p.conv0_b}, {"conv1_w", p.conv1_w},
                           {"conv1_b", p.conv1_b}, {"temp", p.temp},
                           {"inv_freq", static_cast<const void*>(p.inv_freq)}, {"workspace", p.workspace}})
    check_ptr(op, name, ptr, true);
  check_ptr(op, "positions", p.positions, p.T > 0);
  check_rows(op, p.T, {{"qp", p.qp, p.qp_row_stride, p.Hq * p.d}, {"kp", p.kp, p.kp_row_stride, p.Hk * p.d}});
}

// The CPU kernels read cu_seqlens on the host (checked in full, so they can trust it) and need a workspace for
// at least one thread.
template <typename P> void check_cpu(const char* op, const P& p, int64_t workspace_needed) {
  check_cu_seqlens(op, p.cu_seqlens, p.B, p.T);
  need(op, p.workspace_bytes >= workspace_needed, "workspace is too small");
}

}  // namespace

void cca_prep_fwd(const CcaPrepFwdParams& p, const Device& dev) {
  const char* op = "cca_prep";
  check_common(op, p);
  const bool any = p.T > 0, K = (p.k0 - 1) + (p.k1 - 1) > 0;
  const int64_t kd = p.Hk * p.d, V = kd / 2;
  check_ptr(op, "q", p.q, any);
  check_ptr(op, "k", p.k, any);
  check_ptr(op, "conv_state_out", p.conv_state_out, p.B > 0 && K);
  check_ptr(op, "v_state_out", p.v_state_out, p.B > 0);
  check_rows(op, p.T, {{"v_cur", p.v_cur, p.v_cur_row_stride, V}, {"v_del", p.v_del, p.v_del_row_stride, V},
                       {"v", p.v, p.v_row_stride, kd}});
  need(op, p.q_head_stride >= p.d && p.k_head_stride >= p.d, "q/k head strides must be at least head_dim");
  check_stride(op, "q", p.q_row_stride, p.Hq * p.q_head_stride - (p.q_head_stride - p.d), p.T);
  check_stride(op, "k", p.k_row_stride, p.Hk * p.k_head_stride - (p.k_head_stride - p.d), p.T);
  require_device(op, dev);
  if (dev.type == DeviceType::kGpu)  // cu_seqlens stay on the device: not read here (no sync)
    need(op, p.workspace_bytes >= gpu::cca_prep_fwd_workspace(p.T, p.B, p.Hq, p.Hk, p.d, p.k0, p.k1, p.rd),
         "workspace is too small");
  route(op, p, dev, [op](const CcaPrepFwdParams& q) {
    check_cpu(op, q, cpu::cca_prep_fwd_workspace(q.T, q.B, q.Hq, q.Hk, q.d, q.k0, q.k1, q.rd, 1));
    return cpu::cca_prep_fwd(q);
  }, gpu::cca_prep_fwd);
}

void cca_prep_bwd(const CcaPrepBwdParams& p, const Device& dev) {
  const char* op = "cca_prep_backward";
  check_common(op, p);
  const bool K = (p.k0 - 1) + (p.k1 - 1) > 0;
  const int64_t qd = p.Hq * p.d, kd = p.Hk * p.d, V = kd / 2;
  for (auto [name, ptr] : {std::pair{"grad_conv0_w", static_cast<const void*>(p.grad_conv0_w)},
                           {"grad_conv0_b", static_cast<const void*>(p.grad_conv0_b)},
                           {"grad_conv1_w", static_cast<const void*>(p.grad_conv1_w)},
                           {"grad_conv1_b", static_cast<const void*>(p.grad_conv1_b)},
                           {"grad_temp", static_cast<const void*>(p.grad_temp)}})
    check_ptr(op, name, ptr, true);
  check_ptr(op, "grad_conv_state_in", p.grad_conv_state_in, p.B > 0 && K);
  check_ptr(op, "grad_v_state_in", p.grad_v_state_in, p.B > 0);
  check_rows(op, p.T, {{"grad_qp", p.grad_qp, p.gqp_row_stride, qd}, {"grad_kp", p.grad_kp, p.gkp_row_stride, kd},
                       {"grad_v_cur", p.grad_v_cur, p.gvc_row_stride, V},
                       {"grad_v_del", p.grad_v_del, p.gvd_row_stride, V}});
  if (p.grad_v) check_stride(op, "grad_v", p.gv_row_stride, kd, p.T);
  require_device(op, dev);
  if (dev.type == DeviceType::kGpu)  // cu_seqlens stay on the device: not read here (no sync)
    need(op, p.workspace_bytes >= gpu::cca_prep_bwd_workspace(p.T, p.B, p.Hq, p.Hk, p.d, p.k0, p.k1, p.rd),
         "workspace is too small");
  route(op, p, dev, [op](const CcaPrepBwdParams& q) {
    check_cpu(op, q, cpu::cca_prep_bwd_workspace(q.T, q.B, q.Hq, q.Hk, q.d, q.k0, q.k1, q.rd, 1));
    return cpu::cca_prep_bwd(q);
  }, gpu::cca_prep_bwd);
}

int64_t cca_prep_fwd_workspace(const CcaPrepFwdParams& p, const Device& d) {
  require_device("cca_prep_workspace", d);
  if (d.type == DeviceType::kGpu) return gpu::cca_prep_fwd_workspace(p.T, p.B, p.Hq, p.Hk, p.d, p.k0, p.k1, p.rd);
  return cpu::cca_prep_fwd_workspace(p.T, p.B, p.Hq, p.Hk, p.d, p.k0, p.k1, p.rd, omp_get_max_threads());
}

int64_t cca_prep_bwd_workspace(const CcaPrepBwdParams& p, const Device& d) {
  require_device("cca_prep_backward_workspace", d);
  if (d.type == DeviceType::kGpu) return gpu::cca_prep_bwd_workspace(p.T, p.B, p.Hq, p.Hk, p.d, p.k0, p.k1, p.rd);
  return cpu::cca_prep_bwd_workspace(p.T, p.B, p.Hq, p.Hk, p.d, p.k0, p.k1, p.rd, omp_get_max_threads());
}

}  // namespace zaya_rt
