// Argument checks and backend choice for the CCA prep family (zaya_rt/cca.h). Bad arguments throw
// std::invalid_argument (ValueError in Python); a failing backend throws std::runtime_error.
#pragma once
#include "zaya_rt/cca.h"
#include "zaya_rt/common.h"

namespace zaya_rt {

// CPU only so far: GPU callers use the reference composition (python/zaya_rt/ops/cca.py).
void cca_prep_fwd(const CcaPrepFwdParams& p, const Device& d);
void cca_prep_bwd(const CcaPrepBwdParams& p, const Device& d);
// Workspace bytes on device d for the current number of CPU threads.
// Workspace bytes of each entry point for the sizes in p (its pointers are not read).
int64_t cca_prep_fwd_workspace(const CcaPrepFwdParams& p, const Device& d);
int64_t cca_prep_bwd_workspace(const CcaPrepBwdParams& p, const Device& d);

}  // namespace zaya_rt
