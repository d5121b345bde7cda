// pybind11 functions of the CCA prep family: raw addresses, strides, sizes and dtype codes in the order of
// the params structs in zaya_rt/cca.h (python/zaya_rt/ops/cca.py builds the calls).
#include <pybind11/pybind11.h>

#include "bindings_args.h"

#include <cstdint>
#include <stdexcept>

#include "dispatch_cca.h"

namespace py = pybind11;

namespace {

using namespace zaya_rt::bindings;
using zaya_rt::Device;
using zaya_rt::DType;

// tensors: qp, kp, v_cur, v_del, conv0_w, conv0_b, conv1_w, conv1_b, temp, conv_state_in, v_state_in, positions,
// cu_seqlens, inv_freq, q, k, v, conv_state_out, v_state_out, workspace (addresses, 0 = none);
// strides: qp, kp, v_cur, v_del rows, cs_in batch/channel, vs_in batch, q row/head, k row/head, v row,
// cs_out batch/channel, vs_out batch; dtypes: activations, weights, state, positions;
// sizes: T, B, Hq, Hk, d, k0, k1, rd.
void cca_prep_fwd(py::tuple tensors, py::tuple strides, py::tuple dtypes, py::tuple sizes, double norm_eps,
                  int64_t workspace_bytes, int dev_type, int dev_index, Ptr stream) {
  auto a = [&](int i) { return ptr(tensors[i].cast<Ptr>()); };
  auto s = [&](int i) { return strides[i].cast<int64_t>(); };
  auto z = [&](int i) { return sizes[i].cast<int64_t>(); };
  auto t = [&](int i) { return dt(dtypes[i].cast<int>()); };
  if (tensors.size() != 20 || strides.size() != 16 || dtypes.size() != 4 || sizes.size() != 8)
    throw std::invalid_argument("zaya_rt.cca_prep: bad argument tuple lengths");
  zaya_rt::CcaPrepFwdParams p{};
  p.qp = a(0); p.qp_row_stride = s(0);
  p.kp = a(1); p.kp_row_stride = s(1);
  p.v_cur = a(2); p.v_cur_row_stride = s(2);
  p.v_del = a(3); p.v_del_row_stride = s(3);
  p.dtype = t(0);
  p.conv0_w = a(4); p.conv0_b = a(5); p.conv1_w = a(6); p.conv1_b = a(7); p.temp = a(8);
  p.w_dtype = t(1);
  p.conv_state_in = a(9); p.cs_in_batch_stride = s(4); p.cs_in_channel_stride = s(5);
  p.v_state_in = a(10); p.vs_in_batch_stride = s(6);
  p.state_dtype = t(2);
  p.positions = a(11); p.pos_dtype = t(3);
  p.cu_seqlens = static_cast<const int32_t*>(a(12));
  p.inv_freq = static_cast<const float*>(a(13));
  p.q = a(14); p.q_row_stride = s(7); p.q_head_stride = s(8);
  p.k = a(15); p.k_row_stride = s(9); p.k_head_stride = s(10);
  p.v = a(16); p.v_row_stride = s(11);
  p.conv_state_out = a(17); p.cs_out_batch_stride = s(12); p.cs_out_channel_stride = s(13);
  p.v_state_out = a(18); p.vs_out_batch_stride = s(14);
  (void)s(15);
  p.T = z(0); p.B = z(1); p.Hq = z(2); p.Hk = z(3); p.d = z(4); p.k0 = z(5); p.k1 = z(6); p.rd = z(7);
  p.norm_eps = static_cast<float>(norm_eps);
  p.workspace = a(19); p.workspace_bytes = workspace_bytes;
  const Device d = dev(dev_type, dev_index, stream);
  py::gil_scoped_release nogil;
  zaya_rt::cca_prep_fwd(p, d);
}

// tensors: grad_q, grad_k, grad_v, grad_conv_state_out, grad_v_state_out, qp, kp, conv0_w, conv0_b, conv1_w,
// conv1_b, temp, conv_state_in, positions, cu_seqlens, inv_freq, grad_qp, grad_kp, grad_v_cur, grad_v_del,
// grad_conv_state_in, grad_v_state_in, grad_conv0_w, grad_conv0_b, grad_conv1_w, grad_conv1_b, grad_temp, workspace;
// strides: gq row/head, gk row/head, gv row, gcs batch/channel, gvs batch, qp row, kp row, cs_in batch/channel,
// grad_qp, grad_kp, grad_v_cur, grad_v_del rows.
void cca_prep_bwd(py::tuple tensors, py::tuple strides, py::tuple dtypes, py::tuple sizes, double norm_eps,
                  int64_t workspace_bytes, int dev_type, int dev_index, Ptr stream) {
  auto a = [&](int i) { return ptr(tensors[i].cast<Ptr>()); };
  auto s = [&](int i) { return strides[i].cast<int64_t>(); };
  auto z = [&](int i) { return sizes[i].cast<int64_t>(); };
  auto t = [&](int i) { return dt(dtypes[i].cast<int>()); };
  if (tensors.size() != 28 || strides.size() != 16 || dtypes.size() != 4 || sizes.size() != 8)
    throw std::invalid_argument("zaya_rt.cca_prep_backward: bad argument tuple lengths");
  zaya_rt::CcaPrepBwdParams p{};
  p.grad_q = a(0); p.gq_row_stride = s(0); p.gq_head_stride = s(1);
  p.grad_k = a(1); p.gk_row_stride = s(2); p.gk_head_stride = s(3);
  p.grad_v = a(2); p.gv_row_stride = s(4);
  p.grad_conv_state_out = a(3); p.gcs_batch_stride = s(5); p.gcs_channel_stride = s(6);
  p.grad_v_state_out = a(4); p.gvs_batch_stride = s(7);
  p.qp = a(5); p.qp_row_stride = s(8);
  p.kp = a(6); p.kp_row_stride = s(9);
  p.dtype = t(0);
  p.conv0_w = a(7); p.conv0_b = a(8); p.conv1_w = a(9); p.conv1_b = a(10); p.temp = a(11);
  p.w_dtype = t(1);
  p.conv_state_in = a(12); p.cs_in_batch_stride = s(10); p.cs_in_channel_stride = s(11);
  p.state_dtype = t(2);
  p.positions = a(13); p.pos_dtype = t(3);
  p.cu_seqlens = static_cast<const int32_t*>(a(14));
  p.inv_freq = static_cast<const float*>(a(15));
  p.grad_qp = a(16); p.gqp_row_stride = s(12);
  p.grad_kp = a(17); p.gkp_row_stride = s(13);
  p.grad_v_cur = a(18); p.gvc_row_stride = s(14);
  p.grad_v_del = a(19); p.gvd_row_stride = s(15);
  p.grad_conv_state_in = a(20); p.grad_v_state_in = a(21);
  p.grad_conv0_w = static_cast<float*>(a(22)); p.grad_conv0_b = static_cast<float*>(a(23));
  p.grad_conv1_w = static_cast<float*>(a(24)); p.grad_conv1_b = static_cast<float*>(a(25));
  p.grad_temp = static_cast<float*>(a(26));
  p.T = z(0); p.B = z(1); p.Hq = z(2); p.Hk = z(3); p.d = z(4); p.k0 = z(5); p.k1 = z(6); p.rd = z(7);
  p.norm_eps = static_cast<float>(norm_eps);
  p.workspace = a(27); p.workspace_bytes = workspace_bytes;
  const Device d = dev(dev_type, dev_index, stream);
  py::gil_scoped_release nogil;
  zaya_rt::cca_prep_bwd(p, d);
}

}  // namespace

void bind_cca(py::module_& m) {
  m.def("cca_prep_fwd", &cca_prep_fwd);
  m.def("cca_prep_bwd", &cca_prep_bwd);
  m.def("cca_prep_fwd_workspace", [](int dev_type, int64_t T, int64_t B, int64_t Hq, int64_t Hk, int64_t d,
                                     int64_t k0, int64_t k1, int64_t rd) {
    return zaya_rt::cca_prep_fwd_workspace(dev(dev_type, 0, 0), T, B, Hq, Hk, d, k0, k1, rd);
  });
  m.def("cca_prep_bwd_workspace", [](int dev_type, int64_t T, int64_t B, int64_t Hq, int64_t Hk, int64_t d,
                                     int64_t k0, int64_t k1, int64_t rd) {
    return zaya_rt::cca_prep_bwd_workspace(dev(dev_type, 0, 0), T, B, Hq, Hk, d, k0, k1, rd);
  });
}
