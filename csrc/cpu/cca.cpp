// CPU CCA prep kernels (math in zaya_rt/cca.h; workspace layout in cpu/cca_layout.h). Compiled once per ISA.
//
// Forward: one OpenMP task per (block of kCcaBlock packed tokens, conv head). Per sequence segment of its block a
// task runs the depthwise conv into a small fp32 buffer and expands it into conv1 windows; then the grouped conv
// of the whole block runs as one register-tiled GEMM against the packed weights (decode-sized inputs: 12-row dot
// products that read each weight row once), and the epilogue adds the residual path, normalises, applies the
// temperature and RoPE and writes q or k: one pass over q/k. Values and states are plain copies.
// Backward: recompute A and Y per task and differentiate RoPE/temperature/norm into dY (rows padded per sequence),
// then the grouped conv's input and weight gradients as GEMMs, then the depthwise conv's, residual, value and state
// gradients.
#include <omp.h>

#include <algorithm>
#include <vector>
#include <cmath>
#include <type_traits>

#include "cpu/cca_decode_tile.h"
#include "cpu/cca_layout.h"
#include "cpu/gemm_core.h"
#include "cpu/isa_kernels.h"
#include "cpu/numeric.h"
#include "zaya_rt/cca.h"
#include "zaya_rt/cca_grad.h"

namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA {
namespace {

float load_dyn(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kBFloat16: return load(static_cast<const bf16*>(p), i);
    case DType::kFloat16: return load(static_cast<const f16*>(p), i);
    default: return static_cast<const float*>(p)[i];
  }
}

void store_dyn(void* p, DType t, int64_t i, float v) {
  switch (t) {
    case DType::kBFloat16: store(static_cast<bf16*>(p), i, v); break;
    case DType::kFloat16: store(static_cast<f16*>(p), i, v); break;
    default: static_cast<float*>(p)[i] = v;
  }
}

float position(const void* pos, DType t, int64_t i) {
  return t == DType::kInt32 ? static_cast<float>(static_cast<const int32_t*>(pos)[i])
                            : static_cast<float>(static_cast<const int64_t*>(pos)[i]);
}

// The sequence holding packed token t: the last b with cu[b] <= t (empty sequences before it are skipped).
int64_t seq_of(const int32_t* cu, int64_t B, int64_t t) {
  return std::upper_bound(cu, cu + B + 1, static_cast<int32_t>(t)) - cu - 1;
}

// dst[0, width) = src[0, n) followed by zeros (n <= width <= 16 on AVX-512).
inline void copy_padded(const float* src, int n, int width, float* dst) {
#if defined(__AVX512F__)
  if (width <= 16) {
    const auto mask = [](int k) { return static_cast<__mmask16>((1u << k) - 1u); };
    _mm512_mask_storeu_ps(dst, mask(width), _mm512_maskz_loadu_ps(mask(n), src));
    return;
  }
#endif
  for (int i = 0; i < n; ++i) dst[i] = src[i];
  for (int i = n; i < width; ++i) dst[i] = 0.f;
}

// What forward and backward share: sizes, inputs, and the fp32 copies in the workspace.
template <typename T, typename W>
struct Shared {
  CcaDims s;
  const T *qp, *kp;
  int64_t qp_rs, kp_rs;
  const W *conv0_w, *conv0_b, *conv1_w, *conv1_b, *temp_in;
  const void* cs_in;
  int64_t cs_b, cs_c;
  DType sdt;
  const void* pos;
  DType pos_dt;
  const int32_t* cu;
  const float* inv_freq;
  float norm_eps;
  float *w0t, *b0, *b1, *temp, *cs, *packed_w;  // w0t is [k0][C]

  // Pre-conv column c of sequence b at position p (p < 0: the incoming state).
  float x_at(int64_t b, int64_t p, int64_t c) const {
    const int64_t qd = s.Hq * s.d;
    if (p >= 0) {
      const int64_t t = cu[b] + p;
      return c < qd ? load(qp, t * qp_rs + c) : load(kp, t * kp_rs + (c - qd));
    }
    return cs_in ? load_dyn(cs_in, sdt, b * cs_b + c * cs_c + (s.K + p)) : 0.f;
  }

  // Head g's d columns of the token at position p >= 0 of sequence b.
  const T* x_row(int64_t b, int64_t p, int64_t g) const {
    const int64_t t = cu[b] + p;
    return g < s.Hq ? qp + t * qp_rs + g * s.d : kp + t * kp_rs + (g - s.Hq) * s.d;
  }

  // Inside a parallel region: weights to fp32, the cos/sin table, and (if packed) conv1 as GEMM B panels.
  void prepare() const {
    const int64_t C = s.C;
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t j = 0; j < s.k0; ++j) w0t[j * C + c] = load(conv0_w, c * s.k0 + j);
      b0[c] = load(conv0_b, c);
      b1[c] = load(conv1_b, c);
      if (c < s.Hk) temp[c] = load(temp_in, c);
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < s.T; ++t) {
      const float pt = position(pos, pos_dt, t);
      float* row = cs + t * s.rd;
      for (int64_t i = 0; i < s.half; ++i) {
        const float ang = pt * inv_freq[i];
        row[i] = std::cos(ang);
        row[s.half + i] = std::sin(ang);
      }
    }
    if (s.packed) {
#pragma omp for schedule(static)
      for (int64_t gp = 0; gp < s.H * s.npan; ++gp) {
        const int64_t g = gp / s.npan, pn = gp % s.npan;
        const Source<W> src{conv1_w + g * s.d * s.Kq, s.Kq, 1};
        const int cnt = static_cast<int>(std::min<int64_t>(kNR, s.d - pn * kNR));
        pack_rows<kNR, W, false>(src, pn * kNR, cnt, s.Kq, packed_w + gp * s.Kq * kNR);
      }
    }
  }

  // Depthwise conv of head g for positions p_lo .. p_hi-1 of sequence b into abuf ([rows][d], fp32).
  void depthwise(int64_t b, int64_t g, int64_t p_lo, int64_t p_hi, float* abuf) const {
    const int64_t d = s.d, c0 = g * d;
    for (int64_t p = p_lo; p < p_hi; ++p) {
      float* a = abuf + (p - p_lo) * d;
      const float* bias = b0 + c0;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) a[j] = bias[j];
      for (int64_t k = 0; k < s.k0; ++k) {
        const int64_t px = p - (s.k0 - 1) + k;
        const float* w = w0t + k * s.C + c0;
        if (px >= 0) {
          const T* row = x_row(b, px, g);
#pragma omp simd
          for (int64_t j = 0; j < d; ++j) a[j] += w[j] * load(row, j);
        } else if (cs_in && sdt == DType::kFloat32) {  // the runtime's fp32 state: no per-element dtype switch
          const float* st = static_cast<const float*>(cs_in) + b * cs_b + c0 * cs_c + (s.K + px);
#pragma omp simd
          for (int64_t j = 0; j < d; ++j) a[j] += w[j] * st[j * cs_c];
        } else if (cs_in) {
          for (int64_t j = 0; j < d; ++j) a[j] += w[j] * x_at(b, px, c0 + j);
        }
      }
    }
  }

  // Expands n depthwise rows (abuf holds n + k1 - 1 rows of d) into conv1 windows: arows[r][j*k1 + s] =
  // abuf[r + s][j], the layout of a conv1 weight row.
  void windows(int64_t n, const float* abuf, float* arows) const {
    const int64_t d = s.d, k1 = s.k1;
#if defined(__AVX512F__)
    if (k1 == 2 && d % 16 == 0) {  // the model's conv: each row interleaved with the next
      for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 0; j < d; j += 16)
          store_interleaved(_mm512_loadu_ps(abuf + r * d + j), _mm512_loadu_ps(abuf + (r + 1) * d + j),
                            arows + r * s.Kq + 2 * j);
      return;
    }
#endif
    for (int64_t r = 0; r < n; ++r) {
      float* ar = arows + r * s.Kq;
      for (int64_t k = 0; k < k1; ++k) {
        const float* src = abuf + (r + k) * d;
        for (int64_t j = 0; j < d; ++j) ar[j * k1 + k] = src[j];
      }
    }
  }

  // y[r][0..d) = conv1 of head g over n window rows (bias included): a register-tiled GEMM against the packed
  // weights, or (decode-sized inputs) dot products that read each weight row once for all rows (the AVX-512 ones
  // rearrange arows in place).
  void grouped_conv(int64_t g, int64_t n, float* arows, float* y, float* pa, float* tile) const {
    const int64_t d = s.d, Kq = s.Kq;
    const float* bias = b1 + g * d;
    if (s.packed) {
      const Source<float> src{arows, Kq, 1};
      for (int64_t r0 = 0; r0 < n; r0 += kMR) {
        const int cnt = static_cast<int>(std::min<int64_t>(kMR, n - r0));
        pack_rows<kMR, float, false>(src, r0, cnt, Kq, pa);
        for (int64_t pn = 0; pn < s.npan; ++pn) {
          micro_kernel<float, false>(Kq, pa, packed_w + (g * s.npan + pn) * Kq * kNR, tile, false);
          const int64_t nc = std::min<int64_t>(kNR, d - pn * kNR);
          for (int i = 0; i < cnt; ++i) {
            float* yr = y + (r0 + i) * d + pn * kNR;
            const float* tr = tile + i * kNR;
            for (int64_t c = 0; c < nc; ++c) yr[c] = tr[c] + bias[pn * kNR + c];
          }
        }
      }
      return;
    }
    const W* w = conv1_w + g * d * Kq;
#if defined(__AVX512F__)
    if (conv_rows_take(d, Kq)) {
      conv_rows(arows, n, w, g + 1 < s.H ? w + d * Kq : nullptr, bias, d, Kq, y);  // tasks run heads in order
      return;
    }
#endif
    // Groups of kMR weight rows (independent accumulators) against each window row; pa holds the
    // fp32 copy of a group when the weights are 16-bit.
    const float* wrows[kMR];
    float dots[kMR];
    for (int64_t c0 = 0; c0 < d; c0 += kMR) {
      const int m = static_cast<int>(std::min<int64_t>(kMR, d - c0));
      for (int i = 0; i < m; ++i) {
        if constexpr (std::is_same_v<W, float>) {
          wrows[i] = w + (c0 + i) * Kq;
        } else {
          float* dst = pa + i * Kq;
          for (int64_t q = 0; q < Kq; ++q) dst[q] = load(w, (c0 + i) * Kq + q);
          wrows[i] = dst;
        }
      }
      thread_local std::vector<float> wpacked;
      if (wpacked.size() < static_cast<size_t>(m * Kq)) wpacked.resize(m * Kq);
      pack_dot_rows<float>(wrows, m, Kq, wpacked.data());
      for (int64_t r = 0; r < n; ++r) {
        const float* brow = arows + r * Kq;
        dot_rows<float>(wpacked.data(), wrows, m, &brow, 1, Kq, dots);
        for (int i = 0; i < m; ++i) y[r * d + c0 + i] = bias[c0 + i] + dots[i];
      }
    }
  }

  // pre = y + residual path of head g at token t (in place on y's row).
  void add_residual(int64_t g, int64_t t, float* pre) const {
    const int64_t d = s.d;
    if (g < s.Hq) {
      const T* q = qp + t * qp_rs + g * d;
      const T* k = kp + t * kp_rs + (g / s.G) * d;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) pre[j] += (load(q, j) + load(k, j)) * 0.5f;
      return;
    }
    // the mean over the group's q heads of (q_h + k) / 2
    const int64_t kh = g - s.Hq;
    const T* k = kp + t * kp_rs + kh * d;
    const float w = 0.5f / static_cast<float>(s.G);
    for (int64_t h = kh * s.G; h < (kh + 1) * s.G; ++h) {
      const T* q = qp + t * qp_rs + h * d;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) pre[j] += w * load(q, j);
    }
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) pre[j] += 0.5f * load(k, j);
  }

  // sqrt(d) / max(|pre|, eps); also returns |pre|.
  float norm_scale(const float* pre, float* nrm) const {
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < s.d; ++j) ss += pre[j] * pre[j];
    *nrm = std::sqrt(ss);
    return std::sqrt(static_cast<float>(s.d)) / std::max(*nrm, norm_eps);
  }
};

// The Shared view of forward or backward params P (the same field names) over workspace layout L.
template <typename T, typename W, typename P>
Shared<T, W> make_shared(const CcaDims& s, const P& p, const CcaInputsLayout& L) {
  float* ws = static_cast<float*>(p.workspace);
  return Shared<T, W>{s, static_cast<const T*>(p.qp), static_cast<const T*>(p.kp), p.qp_row_stride,
                      p.kp_row_stride, static_cast<const W*>(p.conv0_w), static_cast<const W*>(p.conv0_b),
                      static_cast<const W*>(p.conv1_w), static_cast<const W*>(p.conv1_b),
                      static_cast<const W*>(p.temp), p.conv_state_in, p.cs_in_batch_stride, p.cs_in_channel_stride,
                      p.state_dtype, p.positions, p.pos_dtype, p.cu_seqlens, p.inv_freq, p.norm_eps, ws + L.w0,
                      ws + L.b0, ws + L.b1, ws + L.temp, ws + L.cs, ws + L.packed_w};
}

// Sizes, workspace layout and workspace floats of forward or backward params P (Layout: CcaFwdLayout or
// CcaBwdLayout).
template <typename Layout, typename P>
struct Plan {
  CcaDims s;
  Layout L;
  int64_t avail;
  explicit Plan(const P& p)
      : s(p.T, p.B, p.Hq, p.Hk, p.d, p.k0, p.k1, p.rd, std::is_same_v<Layout, CcaBwdLayout>), L(s),
        avail(p.workspace_bytes / 4) {}
  bool fits() const { return avail >= L.entries(1); }
};

int thread_budget(int64_t avail, int64_t thread0, int64_t per_thread) {
  const int64_t slots = (avail - thread0) / per_thread;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), slots)));
}

// One thread's forward scratch (CcaFwdLayout::per_thread), carved from base.
struct ConvScratch {
  float *abuf, *pa, *y, *arows, *tile;
  ConvScratch(float* base, const CcaDims& s)
      : abuf(base),
        pa(abuf + cca_round16((kCcaBlock + s.k1) * s.d)),
        y(pa + cca_round16(s.Kq * kMR)),
        arows(y + cca_round16(kCcaBlock * s.d)),
        tile(arows + cca_round16(kCcaBlock * s.Kq)) {}
  float* end() const { return tile + kMR * kNR; }
};

// ------------------------------------------------------------------------------------------------ forward

// Inside a parallel region: v = [v_cur, shifted v_del] and the outgoing states, with state type S.
template <typename S, typename T, typename W>
void values_and_states(const CcaPrepFwdParams& p, const Shared<T, W>& x) {
  const CcaDims& s = x.s;
  const int32_t* cu = p.cu_seqlens;
  const int64_t V = s.V, K = s.K, qd = s.Hq * s.d, kd = s.Hk * s.d;
  const T* vc = static_cast<const T*>(p.v_cur);
  const T* vd = static_cast<const T*>(p.v_del);
  const S* vs_in = static_cast<const S*>(p.v_state_in);
  const S* cs_in = static_cast<const S*>(p.conv_state_in);
  T* vo = static_cast<T*>(p.v);
#pragma omp for schedule(static) nowait
  for (int64_t t = 0; t < s.T; ++t) {
    const int64_t b = seq_of(cu, s.B, t);
    T* vr = vo + t * p.v_row_stride;
    const T* cur = vc + t * p.v_cur_row_stride;
    for (int64_t i = 0; i < V; ++i) vr[i] = cur[i];
    if (t > cu[b]) {
      const T* prev = vd + (t - 1) * p.v_del_row_stride;
      for (int64_t i = 0; i < V; ++i) vr[V + i] = prev[i];
    } else {
      const S* st = vs_in ? vs_in + b * p.vs_in_batch_stride : nullptr;
      for (int64_t i = 0; i < V; ++i) store(vr, V + i, st ? load(st, i) : 0.f);
    }
  }
  S* cs_out = static_cast<S*>(p.conv_state_out);
  S* vs_out = static_cast<S*>(p.v_state_out);
  const int64_t oc = p.cs_out_channel_stride;
#pragma omp for schedule(static) nowait
  for (int64_t b = 0; b < s.B; ++b) {
    const int64_t len = cu[b + 1] - cu[b];
    for (int64_t i = 0; i < K; ++i) {
      const int64_t pos = len - K + i;
      S* o = cs_out + b * p.cs_out_batch_stride + i;
      if (pos >= 0) {
        const T* q = x.qp + (cu[b] + pos) * x.qp_rs;
        const T* k = x.kp + (cu[b] + pos) * x.kp_rs;
        for (int64_t c = 0; c < qd; ++c) store(o, c * oc, load(q, c));
        for (int64_t c = 0; c < kd; ++c) store(o, (qd + c) * oc, load(k, c));
      } else if (cs_in) {
        const S* src = cs_in + b * p.cs_in_batch_stride + (K + pos);
        for (int64_t c = 0; c < s.C; ++c) o[c * oc] = src[c * p.cs_in_channel_stride];
      } else {
        for (int64_t c = 0; c < s.C; ++c) store(o, c * oc, 0.f);
      }
    }
    S* vso = vs_out + b * p.vs_out_batch_stride;
    if (len > 0) {
      const T* last = vd + (cu[b + 1] - 1) * p.v_del_row_stride;
      for (int64_t i = 0; i < V; ++i) store(vso, i, load(last, i));
    } else {
      for (int64_t i = 0; i < V; ++i) store(vso, i, vs_in ? load(vs_in, b * p.vs_in_batch_stride + i) : 0.f);
    }
  }
}

template <typename T, typename W>
const char* fwd_impl(const CcaPrepFwdParams& p) {
  const Plan<CcaFwdLayout, CcaPrepFwdParams> plan(p);
  if (!plan.fits()) return "workspace too small";
  const CcaDims& s = plan.s;
  const CcaFwdLayout& L = plan.L;
  // A decode step of a single sequence or a few (the dot-product path, few tokens) runs on one thread: waking
  // the others costs about as much as it saves, and a descheduled helper thread stalls the whole call on a busy
  // machine. From kCcaThreadedTokens tokens on (a decode batch) the heads' tasks pay for it.
  const int threads =
      s.packed || s.T >= kCcaThreadedTokens ? thread_budget(plan.avail, L.thread0, L.per_thread) : 1;
  const auto x = make_shared<T, W>(s, p, L);
  float* ws = static_cast<float*>(p.workspace);
  const int32_t* cu = p.cu_seqlens;
  const int64_t d = s.d, H = s.H;
  const int64_t nblocks = (s.T + kCcaBlock - 1) / kCcaBlock;
  T* qo = static_cast<T*>(p.q);
  T* ko = static_cast<T*>(p.k);

#pragma omp parallel num_threads(threads)
  {
    x.prepare();
    const ConvScratch sc(ws + L.thread0 + omp_get_thread_num() * L.per_thread, s);

#pragma omp for schedule(static) nowait
    for (int64_t task = 0; task < nblocks * H; ++task) {
      const int64_t g = task % H, tb = (task / H) * kCcaBlock, t_end = std::min(s.T, tb + kCcaBlock);
      for (int64_t t0 = tb; t0 < t_end;) {
        const int64_t b = seq_of(cu, s.B, t0);
        const int64_t t1 = std::min<int64_t>(t_end, cu[b + 1]), p0 = t0 - cu[b];
        x.depthwise(b, g, p0 - (s.k1 - 1), t1 - cu[b], sc.abuf);
        x.windows(t1 - t0, sc.abuf, sc.arows + (t0 - tb) * s.Kq);
        t0 = t1;
      }
      x.grouped_conv(g, t_end - tb, sc.arows, sc.y, sc.pa, sc.tile);
      for (int64_t r = 0; r < t_end - tb; ++r) {
        const int64_t t = tb + r;
        float* pre = sc.y + r * d;
        x.add_residual(g, t, pre);
        float nrm;
        float scale = x.norm_scale(pre, &nrm);
        T* out = g < s.Hq ? qo + t * p.q_row_stride + g * p.q_head_stride
                          : ko + t * p.k_row_stride + (g - s.Hq) * p.k_head_stride;
        if (g >= s.Hq) scale *= x.temp[g - s.Hq];
        const float* cs = x.cs + t * s.rd;
        const int64_t hf = s.half;
#pragma omp simd
        for (int64_t i = 0; i < hf; ++i) {
          const float x1 = pre[i] * scale, x2 = pre[i + hf] * scale;
          store(out, i, x1 * cs[i] - x2 * cs[hf + i]);
          store(out, i + hf, x2 * cs[i] + x1 * cs[hf + i]);
        }
#pragma omp simd
        for (int64_t j = s.rd; j < d; ++j) store(out, j, pre[j] * scale);
      }
    }

    switch (p.state_dtype) {
      case DType::kBFloat16: values_and_states<bf16>(p, x); break;
      case DType::kFloat16: values_and_states<f16>(p, x); break;
      default: values_and_states<float>(p, x);
    }
  }
  return nullptr;
}

// ----------------------------------------------------------------------------------------------- backward
//
// Steps, in the order bwd_impl runs them (each an omp-for over its tasks, a barrier between phases):
//   0. transpose_conv1, zero_padding_rows;
//   1. recompute_block (A into the padded buffer, Y), then output_grads_to_dy: per row, rope_backward,
//      temperature_backward and qk_norm_backward turn grad_q / grad_k into dY = d(pre);
//   2. conv1_weight_grad (dW1, db1 per head) and conv1_input_grad (dA per block and head);
//   3. token_grads (depthwise conv + residual backward into grad_qp/grad_kp, value-shift backward), state_grads,
//      conv0_grads, and the dtemp reduction over threads.

template <typename T, typename W>
struct Backward {
  const CcaPrepBwdParams& p;
  const Shared<T, W>& x;
  const CcaBwdLayout& L;
  const CcaDims& s;
  float *abuf_all, *dy, *da, *packed_wt;

  Backward(const CcaPrepBwdParams& p_, const Shared<T, W>& x_, const CcaBwdLayout& L_)
      : p(p_), x(x_), L(L_), s(x_.s) {
    float* ws = static_cast<float*>(p.workspace);
    abuf_all = ws + L.a;
    dy = ws + L.dy;
    da = ws + L.da;
    packed_wt = ws + L.packed_wt;
  }

  // Row of position pp (>= -(k1-1)) of sequence b in the padded buffers.
  int64_t row_of(int64_t b, int64_t pp) const { return L.guard + x.cu[b] + b * (s.k1 - 1) + (s.k1 - 1) + pp; }

  // --- phase 0

  // Panel gp of the transposed conv1: B'[j, s'*d + c] = W1[c, j, k1-1-s'] (dY's window rows shift by s').
  void transpose_conv1(int64_t gp) const {
    const int64_t d = s.d, Kq = s.Kq, k1 = s.k1;
    const int64_t g = gp / s.npan, j0 = (gp % s.npan) * kNR;
    float* dst = packed_wt + gp * Kq * kNR;
    const W* w = x.conv1_w + g * d * Kq;
    for (int64_t sp = 0; sp < k1; ++sp)
      for (int64_t c = 0; c < d; ++c) {
        float* e = dst + (sp * d + c) * kNR;
        for (int64_t i = 0; i < kNR; ++i) e[i] = j0 + i < d ? load(w, c * Kq + (j0 + i) * k1 + (k1 - 1 - sp)) : 0.f;
      }
  }

  // Zeroes the padding rows of sequence b (b == -1: the front guard; b == B: the back guard). dY's padding is
  // always zero; A's and dA's too where no task writes them (the guards, empty sequences).
  void zero_padding_rows(int64_t b) const {
    const int64_t C = s.C, k1 = s.k1;
    auto zero_rows = [&](int64_t r0, int64_t r1, bool all) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = 0; c < C; ++c) {
          dy[r * C + c] = 0.f;
          if (all) abuf_all[r * C + c] = da[r * C + c] = 0.f;
        }
    };
    if (b == -1) zero_rows(0, L.guard, true);
    else if (b == s.B) zero_rows(L.rows - L.guard, L.rows, true);
    else zero_rows(row_of(b, -(k1 - 1)), row_of(b, 0), x.cu[b + 1] == x.cu[b]);
  }

  // --- phase 1

  // The forward's depthwise and grouped conv of head g over tokens tb .. t_end-1: A rows into the padded buffer,
  // Y (conv1 with its bias, before the residual path) into sc.y.
  void recompute_block(int64_t g, int64_t tb, int64_t t_end, const ConvScratch& sc) const {
    const int32_t* cu = x.cu;
    const int64_t d = s.d, C = s.C, k1 = s.k1;
    for (int64_t t0 = tb; t0 < t_end;) {
      const int64_t b = seq_of(cu, s.B, t0);
      const int64_t t1 = std::min<int64_t>(t_end, cu[b + 1]), n = t1 - t0, p0 = t0 - cu[b];
      x.depthwise(b, g, p0 - (k1 - 1), p0 + n, sc.abuf);
      for (int64_t r = (p0 == 0 ? 0 : k1 - 1); r < n + k1 - 1; ++r) {
        float* dst = abuf_all + row_of(b, p0 - (k1 - 1) + r) * C + g * d;
        for (int64_t j = 0; j < d; ++j) dst[j] = sc.abuf[r * d + j];
      }
      x.windows(n, sc.abuf, sc.arows + (t0 - tb) * s.Kq);
      t0 = t1;
    }
    x.grouped_conv(g, t_end - tb, sc.arows, sc.y, sc.pa, sc.tile);
  }

  // du = RoPE^T(go) of the token at t, into dyr.
  void rope_backward(int64_t t, const T* go, float* dyr) const {
    const float* cs = x.cs + t * s.rd;
    const int64_t hf = s.half;
#pragma omp simd
    for (int64_t i = 0; i < hf; ++i) {
      cca_grad::rope_pair(load(go, i), load(go, i + hf), cs[i], cs[hf + i], dyr[i], dyr[i + hf]);
    }
#pragma omp simd
    for (int64_t j = s.rd; j < s.d; ++j) dyr[j] = load(go, j);
  }

  // k heads: out = temp * scale * pre, so dtemp += <du, pre> * scale and du *= temp.
  void temperature_backward(int64_t kh, const float* pre, float scale, float* dyr, float* dtemp) const {
    const int64_t d = s.d;
    const float tv = x.temp[kh];
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < d; ++j) acc += dyr[j] * pre[j];
    dtemp[kh] += acc * scale;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) dyr[j] *= tv;
  }

  // n = scale * pre with scale = sqrt(d) / max(|pre|, eps): cca_grad::qk_norm per element (in place on dyr).
  void qk_norm_backward(const float* pre, float nrm, float scale, float* dyr) const {
    const int64_t d = s.d;
    float dot = 0.f;
    if (nrm > p.norm_eps) {
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < d; ++j) dot += dyr[j] * pre[j];
    }
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) dyr[j] = cca_grad::qk_norm(dyr[j], pre[j], dot, nrm, scale, p.norm_eps);
  }

  // The output gradient of head g at token t (nullptr when that output has none).
  const T* output_grad(int64_t g, int64_t t) const {
    if (g < s.Hq) {
      const T* gq = static_cast<const T*>(p.grad_q);
      return gq ? gq + t * p.gq_row_stride + g * p.gq_head_stride : nullptr;
    }
    const T* gk = static_cast<const T*>(p.grad_k);
    return gk ? gk + t * p.gk_row_stride + (g - s.Hq) * p.gk_head_stride : nullptr;
  }

  // dY rows of head g over tokens tb .. t_end-1 from the output gradients; y holds the recomputed Y rows.
  void output_grads_to_dy(int64_t g, int64_t tb, int64_t t_end, float* y, float* dtemp) const {
    const int32_t* cu = x.cu;
    const int64_t d = s.d, C = s.C;
    for (int64_t t0 = tb; t0 < t_end;) {
      const int64_t b = seq_of(cu, s.B, t0);
      const int64_t t1 = std::min<int64_t>(t_end, cu[b + 1]), n = t1 - t0, p0 = t0 - cu[b];
      for (int64_t r = 0; r < n; ++r) {
        const int64_t t = t0 + r;
        float* pre = y + (t - tb) * d;
        x.add_residual(g, t, pre);
        float nrm;
        const float scale = x.norm_scale(pre, &nrm);
        const T* go = output_grad(g, t);
        float* dyr = dy + row_of(b, p0 + r) * C + g * d;
        if (go == nullptr) {
          for (int64_t j = 0; j < d; ++j) dyr[j] = 0.f;
          continue;
        }
        rope_backward(t, go, dyr);
        if (g >= s.Hq) temperature_backward(g - s.Hq, pre, scale, dyr, dtemp);
        qk_norm_backward(pre, nrm, scale, dyr);
      }
      t0 = t1;
    }
  }

  // --- phase 2

  // dW1 and db1 of head g: dW1[c, j*k1 + s] = sum over rows r of dY[r, c] A[r + s - (k1-1), j], a GEMM over
  // chunks of dY rows with M = c and N = s*d + j, so that each 16-lane group of a B panel is (mostly) a piece of
  // one A row; its tiles accumulate over the chunks and are written out permuted. db1 sums dY's rows on the way.
  void conv1_weight_grad(int64_t g, float* wa, float* wb, float* wtiles) const {
    constexpr int64_t kKC = CcaBwdLayout::kWeightGradChunk;
    constexpr int kGroups = kNR / 16;  // 16-lane groups per B panel row
    const int64_t d = s.d, C = s.C, Kq = s.Kq, k1 = s.k1;
    const int64_t npa = L.wa_panels, npb = L.wb_panels, r_end = L.rows - L.guard;
    float* db = p.grad_conv1_b + g * d;
    for (int64_t j = 0; j < d; ++j) db[j] = 0.f;
    // Each 16-lane group of a B panel row: its first n = s0*d + j0 and how many lanes hold entries (0: padding);
    // a group within one A row is one copy (the straddling ones are filled per lane).
    struct Group { int64_t s0, j0; int valid; bool one_row; };
    constexpr int64_t kMaxGroups = 64;
    Group groups[kMaxGroups];
    const int64_t ngroups = npb * kGroups;
    const bool grouped = ngroups <= kMaxGroups;
    for (int64_t grp = 0; grouped && grp < ngroups; ++grp) {
      const int64_t n0 = grp * 16, valid = std::clamp<int64_t>(Kq - n0, 0, 16);
      groups[grp] = {n0 / d, n0 % d, static_cast<int>(valid), n0 % d + valid <= d};
    }
    bool first = true;
    for (int64_t r0 = L.guard; r0 < r_end; r0 += kKC) {
      const int64_t kc = std::min(kKC, r_end - r0);
      for (int64_t q = 0; q < kc; ++q) {
        const float* dyr = dy + (r0 + q) * C + g * d;
#pragma omp simd
        for (int64_t j = 0; j < d; ++j) db[j] += dyr[j];
        for (int64_t i = 0; i < npa; ++i)
          copy_padded(dyr + i * kMR, static_cast<int>(std::min<int64_t>(kMR, d - i * kMR)), kMR,
                      wa + (i * kKC + q) * kMR);
        const float* a_rows = abuf_all + (r0 + q - (k1 - 1)) * C + g * d;  // A row of window shift s: + s*C
        for (int64_t grp = 0; grp < ngroups; ++grp) {
          float* e = wb + ((grp / kGroups) * kKC + q) * kNR + (grp % kGroups) * 16;
          if (grouped && groups[grp].one_row) {
            copy_padded(a_rows + groups[grp].s0 * C + groups[grp].j0, groups[grp].valid, 16, e);
          } else {
            for (int64_t l = 0, n = grp * 16; l < 16; ++l, ++n) e[l] = n < Kq ? a_rows[(n / d) * C + n % d] : 0.f;
          }
        }
      }
      for (int64_t jn = 0; jn < npb; ++jn)  // a B panel stays in L1 while the smaller A panels pass
        for (int64_t i = 0; i < npa; ++i)
          micro_kernel<float, false>(kc, wa + i * kMR * kKC, wb + jn * kNR * kKC,
                                     wtiles + (i * npb + jn) * kMR * kNR, !first);
      first = false;
    }
    float* gw = p.grad_conv1_w + g * d * Kq;
    for (int64_t c = 0; c < d; ++c) {
      const float* tiles_c = wtiles + (c / kMR) * npb * kMR * kNR + (c % kMR) * kNR;
      for (int64_t sp = 0; sp < k1; ++sp)
        for (int64_t j = 0, n = sp * d; j < d; ++j, ++n)
          gw[c * Kq + j * k1 + sp] = first ? 0.f : tiles_c[(n / kNR) * kMR * kNR + n % kNR];
    }
  }

  // dA = conv1^T dY for head g over the tokens of block tblock (and the k1-1 rows before each sequence).
  void conv1_input_grad(int64_t g, int64_t tblock, float* pa2, float* tile) const {
    const int32_t* cu = x.cu;
    const int64_t d = s.d, C = s.C, Kq = s.Kq, k1 = s.k1;
    const int64_t t_end = std::min(s.T, (tblock + 1) * kCcaBlock);
    for (int64_t t0 = tblock * kCcaBlock; t0 < t_end;) {
      const int64_t b = seq_of(cu, s.B, t0);
      const int64_t t1 = std::min<int64_t>(t_end, cu[b + 1]), p0 = t0 - cu[b];
      const int64_t plo = p0 == 0 ? -(k1 - 1) : p0, n = (t1 - cu[b]) - plo, r_base = row_of(b, plo);
      for (int64_t r0 = 0; r0 < n; r0 += kMR) {
        const int cnt = static_cast<int>(std::min<int64_t>(kMR, n - r0));
        for (int64_t sp = 0; sp < k1; ++sp)  // K entries s'*d + c: dY's rows shifted by s'
          pack_rows<kMR, float, false>(Source<float>{dy + (r_base + r0 + sp) * C + g * d, C, 1}, 0, cnt, d,
                                       pa2 + sp * d * kMR);
        for (int64_t pn = 0; pn < s.npan; ++pn) {
          micro_kernel<float, false>(Kq, pa2, packed_wt + (g * s.npan + pn) * Kq * kNR, tile, false);
          const int64_t nc = std::min<int64_t>(kNR, d - pn * kNR);
          for (int i = 0; i < cnt; ++i) {
            float* dst = da + (r_base + r0 + i) * C + g * d + pn * kNR;
            for (int64_t c = 0; c < nc; ++c) dst[c] = tile[i * kNR + c];
          }
        }
      }
      t0 = t1;
    }
  }

  // --- phase 3

  // Gradient reaching pre-conv column c of sequence b (length len) at position px (>= -K): through the depthwise
  // conv, and (for the last K positions) from the outgoing conv state.
  float dx_at(int64_t b, int64_t len, int64_t px, int64_t c) const {
    const int64_t C = s.C, k1 = s.k1;
    float acc = 0.f;
    for (int64_t k = 0; k < s.k0; ++k) {
      const int64_t pa_ = px + (s.k0 - 1) - k;
      if (pa_ >= -(k1 - 1) && pa_ < len) acc += x.w0t[k * C + c] * da[row_of(b, pa_) * C + c];
    }
    if (px >= len - s.K)
      acc += p.grad_conv_state_out ? load_dyn(p.grad_conv_state_out, p.state_dtype,
                                              b * p.gcs_batch_stride + c * p.gcs_channel_stride + (px - (len - s.K)))
                                   : 0.f;
    return acc;
  }

  // grad_qp / grad_kp of token t: the conv path (dx_at's sum, for a whole row into gx [C]) plus the residual path
  // (q head h: (q_h + k_{h/G}) / 2; k head: the mean over its G q heads of (q + k) / 2).
  void projection_grads(int64_t t, int64_t b, int64_t len, int64_t pt, float* gx) const {
    const int64_t d = s.d, C = s.C, G = s.G, qd = s.Hq * d;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) gx[c] = 0.f;
    for (int64_t k = 0; k < s.k0; ++k) {
      const int64_t pa_ = pt + (s.k0 - 1) - k;  // >= pt >= 0
      if (pa_ >= len) continue;
      const float* w = x.w0t + k * C;
      const float* dar = da + row_of(b, pa_) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) gx[c] += w[c] * dar[c];
    }
    if (pt >= len - s.K && p.grad_conv_state_out)
      for (int64_t c = 0; c < C; ++c)
        gx[c] += load_dyn(p.grad_conv_state_out, p.state_dtype,
                          b * p.gcs_batch_stride + c * p.gcs_channel_stride + (pt - (len - s.K)));
    const float* dyr = dy + row_of(b, pt) * C;
    T* gq = static_cast<T*>(p.grad_qp) + t * p.gqp_row_stride;
    T* gk = static_cast<T*>(p.grad_kp) + t * p.gkp_row_stride;
    for (int64_t h = 0; h < s.Hq; ++h) {
      const float *dq = dyr + h * d, *dk = dyr + qd + (h / G) * d, *gh = gx + h * d;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) store(gq, h * d + j, gh[j] + cca_grad::residual_qp(dq[j], dk[j], G));
    }
    for (int64_t kh = 0; kh < s.Hk; ++kh) {
      const float *dk = dyr + qd + kh * d, *gh = gx + qd + kh * d, *dq0 = dyr + kh * G * d;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) {
        float acc = 0.f;
        for (int64_t i = 0; i < G; ++i) acc += dq0[i * d + j];
        store(gk, kh * d + j, gh[j] + cca_grad::residual_kp(acc, dk[j]));
      }
    }
  }

  // Value shift backward at token t: v = [v_cur, v_del shifted down one token], so grad_v_cur[t] = grad_v[t, :V]
  // and grad_v_del[t] = grad_v[t+1, V:] (the outgoing v state's gradient at a sequence's last token).
  void value_shift_grads(int64_t t, int64_t b, int64_t len, int64_t pt) const {
    const int64_t V = s.V;
    const T* gv = static_cast<const T*>(p.grad_v);
    T* gvc = static_cast<T*>(p.grad_v_cur) + t * p.gvc_row_stride;
    T* gvd = static_cast<T*>(p.grad_v_del) + t * p.gvd_row_stride;
    if (gv) {
      const T* src = gv + t * p.gv_row_stride;
#pragma omp simd
      for (int64_t i = 0; i < V; ++i) gvc[i] = src[i];
    } else {
      for (int64_t i = 0; i < V; ++i) store(gvc, i, 0.f);
    }
    if (gv && pt + 1 < len) {
      const T* src = gv + (t + 1) * p.gv_row_stride + V;
#pragma omp simd
      for (int64_t i = 0; i < V; ++i) gvd[i] = src[i];
    } else {
      for (int64_t i = 0; i < V; ++i)
        store(gvd, i, pt + 1 == len && p.grad_v_state_out
                          ? load_dyn(p.grad_v_state_out, p.state_dtype, b * p.gvs_batch_stride + i) : 0.f);
    }
  }

  void token_grads(int64_t t, float* gx) const {
    const int32_t* cu = x.cu;
    const int64_t b = seq_of(cu, s.B, t), len = cu[b + 1] - cu[b], pt = t - cu[b];
    projection_grads(t, b, len, pt, gx);
    value_shift_grads(t, b, len, pt);
  }

  // Gradients of sequence b's incoming conv state (positions -K .. -1) and v state (v of its first token, or
  // passed through from the outgoing state when the sequence is empty).
  void state_grads(int64_t b) const {
    const int64_t C = s.C, V = s.V, len = x.cu[b + 1] - x.cu[b];
    const T* gv = static_cast<const T*>(p.grad_v);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < s.K; ++i)
        store_dyn(p.grad_conv_state_in, p.state_dtype, (b * C + c) * s.K + i, dx_at(b, len, i - s.K, c));
    for (int64_t i = 0; i < V; ++i) {
      float g = 0.f;
      if (len > 0) g = gv ? load(gv, x.cu[b] * p.gv_row_stride + V + i) : 0.f;
      else if (p.grad_v_state_out) g = load_dyn(p.grad_v_state_out, p.state_dtype, b * p.gvs_batch_stride + i);
      store_dyn(p.grad_v_state_in, p.state_dtype, b * V + i, g);
    }
  }

  // conv0 weight and bias gradients of chunk ch: up to 32 channels of one head (small k0 accumulates in
  // registers, larger k0 in the output).
  void conv0_grads(int64_t ch) const {
    const int32_t* cu = x.cu;
    const int64_t d = s.d, C = s.C, k1 = s.k1, chunks_per_head = (d + 31) / 32;
    const int64_t g = ch / chunks_per_head, j0 = (ch % chunks_per_head) * 32, w = std::min<int64_t>(32, d - j0);
    const int64_t c0 = g * d + j0;
    float acc_b[32] = {}, acc_w[8][32] = {};
    float* gw0 = p.grad_conv0_w;
    const bool small_k0 = s.k0 <= 8;
    if (!small_k0)
      for (int64_t j = 0; j < w; ++j)
        for (int64_t k = 0; k < s.k0; ++k) gw0[(c0 + j) * s.k0 + k] = 0.f;
    for (int64_t b = 0; b < s.B; ++b) {
      const int64_t len = cu[b + 1] - cu[b];
      for (int64_t pp = -(k1 - 1); pp < len; ++pp) {
        const float* dar = da + row_of(b, pp) * C + c0;
        for (int64_t j = 0; j < w; ++j) acc_b[j] += dar[j];
        for (int64_t k = 0; k < s.k0; ++k) {
          const int64_t px = pp - (s.k0 - 1) + k;
          float* aw = small_k0 ? acc_w[k] : nullptr;
          if (px >= 0) {
            const T* row = x.x_row(b, px, g) + j0;
            if (small_k0) {
#pragma omp simd
              for (int64_t j = 0; j < w; ++j) aw[j] += dar[j] * load(row, j);
            } else {
              for (int64_t j = 0; j < w; ++j) gw0[(c0 + j) * s.k0 + k] += dar[j] * load(row, j);
            }
          } else if (x.cs_in) {
            for (int64_t j = 0; j < w; ++j) {
              const float v = dar[j] * x.x_at(b, px, c0 + j);
              if (small_k0) aw[j] += v;
              else gw0[(c0 + j) * s.k0 + k] += v;
            }
          }
        }
      }
    }
    for (int64_t j = 0; j < w; ++j) {
      p.grad_conv0_b[c0 + j] = acc_b[j];
      if (small_k0)
        for (int64_t k = 0; k < s.k0; ++k) gw0[(c0 + j) * s.k0 + k] = acc_w[k][j];
    }
  }
};

template <typename T, typename W>
const char* bwd_impl(const CcaPrepBwdParams& p) {
  const Plan<CcaBwdLayout, CcaPrepBwdParams> plan(p);
  if (!plan.fits()) return "workspace too small";
  const CcaDims& s = plan.s;
  const CcaBwdLayout& L = plan.L;
  const int threads = thread_budget(plan.avail, L.thread0, L.per_thread);
  const auto x = make_shared<T, W>(s, p, L);
  const Backward<T, W> bw(p, x, L);
  float* ws = static_cast<float*>(p.workspace);
  const int64_t H = s.H, Kq = s.Kq;
  const int64_t nblocks = (s.T + kCcaBlock - 1) / kCcaBlock;
  const int64_t conv0_chunks = H * ((s.d + 31) / 32);

#pragma omp parallel num_threads(threads)
  {
    x.prepare();
    // Per thread: dtemp partials | forward scratch | dA's A panel | dW1's A and B panels and tiles | a row.
    constexpr int64_t kKC = CcaBwdLayout::kWeightGradChunk;
    float* dtemp = ws + L.thread0 + omp_get_thread_num() * L.per_thread;
    const ConvScratch sc(dtemp + cca_round16(s.Hk), s);
    float* pa2 = sc.end();
    float* wa = pa2 + cca_round16(Kq * kMR);
    float* wb = wa + cca_round16(L.wa_panels * kMR * kKC);
    float* wtiles = wb + cca_round16(L.wb_panels * kNR * kKC);
    float* row_buf = wtiles + L.wa_panels * L.wb_panels * kMR * kNR;
    for (int64_t i = 0; i < s.Hk; ++i) dtemp[i] = 0.f;

#pragma omp for schedule(static) nowait
    for (int64_t gp = 0; gp < H * s.npan; ++gp) bw.transpose_conv1(gp);
#pragma omp for schedule(static)
    for (int64_t b = -1; b <= s.B; ++b) bw.zero_padding_rows(b);

#pragma omp for schedule(static)
    for (int64_t task = 0; task < nblocks * H; ++task) {
      const int64_t g = task % H, tb = (task / H) * kCcaBlock, t_end = std::min(s.T, tb + kCcaBlock);
      bw.recompute_block(g, tb, t_end, sc);
      bw.output_grads_to_dy(g, tb, t_end, sc.y, dtemp);
    }

    // The first H tasks (the weight gradients) are the longest.
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < H + nblocks * H; ++task) {
      if (task < H) bw.conv1_weight_grad(task, wa, wb, wtiles);
      else bw.conv1_input_grad((task - H) % H, (task - H) / H, pa2, sc.tile);
    }

#pragma omp for schedule(static) nowait
    for (int64_t t = 0; t < s.T; ++t) bw.token_grads(t, row_buf);
#pragma omp for schedule(static) nowait
    for (int64_t b = 0; b < s.B; ++b) bw.state_grads(b);
#pragma omp for schedule(static) nowait
    for (int64_t ch = 0; ch < conv0_chunks; ++ch) bw.conv0_grads(ch);
#pragma omp barrier
#pragma omp single
    for (int64_t kh = 0; kh < s.Hk; ++kh) {
      float acc = 0.f;
      for (int th = 0; th < omp_get_num_threads(); ++th) acc += ws[L.thread0 + th * L.per_thread + kh];
      p.grad_temp[kh] = acc;
    }
  }
  return nullptr;
}

template <template <typename, typename> class Fn, typename P>
const char* route_types(const P& p) {
  if (p.w_dtype != p.dtype && p.w_dtype != DType::kFloat32) return "weights must have the activations' dtype or float32";
  switch (p.dtype) {
    case DType::kFloat32: return Fn<float, float>::run(p);
    case DType::kBFloat16:
      return p.w_dtype == DType::kFloat32 ? Fn<bf16, float>::run(p) : Fn<bf16, bf16>::run(p);
    case DType::kFloat16:
      return p.w_dtype == DType::kFloat32 ? Fn<f16, float>::run(p) : Fn<f16, f16>::run(p);
    default: return "unsupported dtype (expected float32, float16 or bfloat16)";
  }
}

template <typename T, typename W> struct Fwd { static const char* run(const CcaPrepFwdParams& p) { return fwd_impl<T, W>(p); } };
template <typename T, typename W> struct Bwd { static const char* run(const CcaPrepBwdParams& p) { return bwd_impl<T, W>(p); } };

}  // namespace

const char* cca_prep_fwd(const CcaPrepFwdParams& p) { return route_types<Fwd>(p); }
const char* cca_prep_bwd(const CcaPrepBwdParams& p) { return route_types<Bwd>(p); }

}  // namespace zaya_rt::cpu::ZAYA_RT_CPU_ISA
