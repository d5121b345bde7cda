// Sizes and workspace layout of the CPU CCA prep kernels, shared by the per-ISA kernels (csrc/cpu/cca.cpp) and
// the host-side workspace queries (csrc/cpu/cca_workspace.cpp). All workspace entries are 4 bytes (fp32).
#pragma once
#include <algorithm>
#include <cstdint>

#include "cpu/gemm_shape.h"

namespace zaya_rt::cpu {

constexpr int64_t kCcaBlock = 4 * kGemmMR;  // tokens per task
constexpr int64_t kCcaDotMaxTokens = 16;    // up to this many tokens the forward uses dot products (no packing)
constexpr int64_t kCcaThreadedTokens = 8;   // from this many tokens the forward runs on all threads

struct CcaDims {
  int64_t T, B, Hq, Hk, G, H, d, C, k0, k1, K, rd, half, V, Kq, npan;
  bool packed;  // conv1 weights packed into GEMM panels (else dot products)
  CcaDims(int64_t T_, int64_t B_, int64_t Hq_, int64_t Hk_, int64_t d_, int64_t k0_, int64_t k1_, int64_t rd_,
          bool backward)
      : T(T_), B(B_), Hq(Hq_), Hk(Hk_), G(Hk_ > 0 ? Hq_ / Hk_ : 1), H(Hq_ + Hk_), d(d_), C((Hq_ + Hk_) * d_),
        k0(k0_), k1(k1_), K((k0_ - 1) + (k1_ - 1)), rd(rd_), half(rd_ / 2), V(Hk_ * d_ / 2), Kq(d_ * k1_),
        npan((d_ + kGemmNR - 1) / kGemmNR), packed(backward || T_ > kCcaDotMaxTokens) {}
};

inline int64_t cca_round16(int64_t n) { return (n + 15) / 16 * 16; }

// What forward and backward workspaces start with: [w0 C*k0 | b0 C | b1 C | temp Hk | cos/sin T*rd]; packed_w
// (conv1 as GEMM B panels, H*npan*Kq*NR entries when packed) follows.
struct CcaInputsLayout {
  int64_t w0, b0, b1, temp, cs, packed_w;
  explicit CcaInputsLayout(const CcaDims& s) {
    w0 = 0;
    b0 = w0 + cca_round16(s.C * s.k0);
    b1 = b0 + cca_round16(s.C);
    temp = b1 + cca_round16(s.C);
    cs = temp + cca_round16(s.Hk);
    packed_w = cs + cca_round16(s.T * s.rd);
  }
  static int64_t packed_entries(const CcaDims& s) { return s.H * s.npan * s.Kq * kGemmNR; }
};

// Forward: the inputs' part, packed conv1 (if packed), per-thread scratch.
struct CcaFwdLayout : CcaInputsLayout {
  int64_t thread0, per_thread;
  explicit CcaFwdLayout(const CcaDims& s) : CcaInputsLayout(s) {
    thread0 = packed_w + (s.packed ? packed_entries(s) : 0);
    // abuf (block + k1 - 1 rows of d) | packed A (Kq * MR) | y (block * d) | A windows (block * Kq) | tile
    per_thread = cca_round16((kCcaBlock + s.k1) * s.d) + cca_round16(s.Kq * kGemmMR) +
                 cca_round16(kCcaBlock * s.d) + cca_round16(kCcaBlock * s.Kq) + kGemmMR * kGemmNR;
  }
  int64_t entries(int threads) const { return thread0 + threads * per_thread; }
};

// Backward: the inputs' part, packed conv1, the transposed packed conv1 (for the input gradient), three padded
// [P, C] buffers (A, dY, dA; sequence b's rows start at g + b*(k1-1) + cu[b] with (k1-1) guard rows g front and
// back), then per thread: partials of dtemp, the forward's scratch, the input gradient's A panel, the weight
// gradient's A and B panels and its tiles, and a row of C floats for the token gradients.
struct CcaBwdLayout : CcaInputsLayout {
  static constexpr int64_t kWeightGradChunk = 128;  // rows of dY per weight-gradient GEMM step
  int64_t packed_wt, rows, a, dy, da, thread0, per_thread;
  int64_t guard;
  int64_t wa_panels, wb_panels;  // the weight gradient's A panels (dY^T: d rows) and B panels (A windows: Kq)
  explicit CcaBwdLayout(const CcaDims& s) : CcaInputsLayout(s) {
    guard = s.k1 - 1;
    rows = s.T + s.B * (s.k1 - 1) + 2 * guard;
    packed_wt = packed_w + packed_entries(s);
    a = packed_wt + packed_entries(s);
    dy = a + cca_round16(rows * s.C);
    da = dy + cca_round16(rows * s.C);
    thread0 = da + cca_round16(rows * s.C);
    wa_panels = (s.d + kGemmMR - 1) / kGemmMR;
    wb_panels = (s.Kq + kGemmNR - 1) / kGemmNR;
    const int64_t kc = kWeightGradChunk;
    per_thread = cca_round16(s.Hk) + CcaFwdLayout(s).per_thread + cca_round16(s.Kq * kGemmMR) +
                 cca_round16(wa_panels * kGemmMR * kc) + cca_round16(wb_panels * kGemmNR * kc) +
                 wa_panels * wb_panels * kGemmMR * kGemmNR + cca_round16(s.C);
  }
  int64_t entries(int threads) const { return thread0 + threads * per_thread; }
};

}  // namespace zaya_rt::cpu
