// Argument checks and backend choice for the batched Newton-Schulz orthogonalisation: bad input throws
// std::invalid_argument (ValueError), a failing kernel std::runtime_error.
#pragma once
#include "zaya_rt/common.h"
#include "zaya_rt/newton_schulz.h"

namespace zaya_rt {

void newton_schulz(const NewtonSchulzParams& p, const Device& d);
// Workspace bytes for p's dtype and sizes (its pointers are not read).
int64_t newton_schulz_workspace(const NewtonSchulzParams& p, const Device& d);

}  // namespace zaya_rt
