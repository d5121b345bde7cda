// The per-element pieces of the CCA prep backward (zaya_rt/cca.h), written once for host and device code (as
// norm_rows.h is for the norms), so that the CPU backward (csrc/cpu/cca.cpp: rope_backward, qk_norm_backward,
// projection_grads) and the GPU one (cuda/cca_bwd_kernels.cuh) cannot drift.
#pragma once
#include <cstdint>

#include "zaya_rt/host_device.h"

namespace zaya_rt::cca_grad {

// RoPE^T of one rotated pair: out = (x1 cos - x2 sin, x2 cos + x1 sin), so
// dx1 = g1 cos + g2 sin and dx2 = g2 cos - g1 sin.
ZAYA_RT_HOST_DEVICE inline void rope_pair(float g1, float g2, float cs, float sn, float& d1, float& d2) {
  d1 = g1 * cs + g2 * sn;
  d2 = g2 * cs - g1 * sn;
}

// n = scale * pre with scale = sqrt(d) / max(|pre|, eps): d pre_j from dn_j, given dot = <dn, pre>. Above eps,
// scale * (dn_j - pre_j <dn, pre> / |pre|^2); at or below it the norm is a constant and the gradient scale * dn_j.
ZAYA_RT_HOST_DEVICE inline float qk_norm(float dn, float pre, float dot, float nrm, float scale, float eps) {
  return nrm > eps ? scale * (dn - pre * (dot / (nrm * nrm))) : scale * dn;
}

// The residual path's gradient to qp of q head h, channel j: qpre_h = ... + (qp_h + kp_{h/G}) / 2 and
// kpre_{h/G} = ... + (mean_{group} qp + kp_{h/G}) / 2, given dY of q head h and of its kv head.
ZAYA_RT_HOST_DEVICE inline float residual_qp(float dy_q, float dy_k, int64_t G) {
  return 0.5f * dy_q + 0.5f / static_cast<float>(G) * dy_k;
}

// ... and to kp of kv head g, channel j, given the sum of dY over its G q heads and its own dY.
ZAYA_RT_HOST_DEVICE inline float residual_kp(float dy_q_sum, float dy_k) { return 0.5f * dy_q_sum + 0.5f * dy_k; }

}  // namespace zaya_rt::cca_grad
