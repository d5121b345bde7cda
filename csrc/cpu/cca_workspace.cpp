// Host-side workspace sizes of the CPU CCA prep kernels (layout in cpu/cca_layout.h).
#include "cpu/cca_layout.h"
#include "zaya_rt/cca.h"

namespace zaya_rt::cpu {

int64_t cca_prep_fwd_workspace(int64_t T, int64_t B, int64_t Hq, int64_t Hk, int64_t d, int64_t k0, int64_t k1,
                               int64_t rd, int threads) {
  const CcaDims s(T, B, Hq, Hk, d, k0, k1, rd, false);
  return CcaFwdLayout(s).entries(threads < 1 ? 1 : threads) * 4;
}

int64_t cca_prep_bwd_workspace(int64_t T, int64_t B, int64_t Hq, int64_t Hk, int64_t d, int64_t k0, int64_t k1,
                               int64_t rd, int threads) {
  const CcaDims s(T, B, Hq, Hk, d, k0, k1, rd, true);
  return CcaBwdLayout(s).entries(threads < 1 ? 1 : threads) * 4;
}

}  // namespace zaya_rt::cpu
