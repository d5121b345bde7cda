// Argument checks and backend choice for the norms family (see csrc/dispatch_common.h for the conventions).
#pragma once
#include "zaya_rt/norms.h"

namespace zaya_rt {

void rms_norm_fwd(const RmsNormFwdParams& p, const Device& d);
void rms_norm_bwd(const RmsNormBwdParams& p, const Device& d);
void residual_rms_norm_fwd(const ResidualRmsNormFwdParams& p, const Device& d);
void residual_rms_norm_bwd(const ResidualRmsNormBwdParams& p, const Device& d);
int64_t norm_bwd_num_partials(const Device& d, int64_t rows, int64_t dim);

}  // namespace zaya_rt
