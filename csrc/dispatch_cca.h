// Argument checks and backend choice for the CCA prep family (zaya_rt/cca.h). Bad arguments throw
// std::invalid_argument (ValueError in Python); a failing backend throws std::runtime_error.
#pragma once
#include "zaya_rt/cca.h"
#include "zaya_rt/common.h"

namespace zaya_rt {

// CPU: csrc/cpu/cca.cpp (forward, backward). GPU builds: cuda/cca_kernels.cuh (forward; its backward returns an
// error and zaya_rt.ops.cca_prep differentiates the reference there).
void cca_prep_fwd(const CcaPrepFwdParams& p, const Device& d);
void cca_prep_bwd(const CcaPrepBwdParams& p, const Device& d);
// Workspace bytes on device d for the current number of CPU threads.
int64_t cca_prep_fwd_workspace(const Device& d, int64_t T, int64_t B, int64_t Hq, int64_t Hk, int64_t dh, int64_t k0,
                               int64_t k1, int64_t rd);
int64_t cca_prep_bwd_workspace(const Device& d, int64_t T, int64_t B, int64_t Hq, int64_t Hk, int64_t dh, int64_t k0,
                               int64_t k1, int64_t rd);

}  // namespace zaya_rt
