// Argument checks and backend choice. Errors are thrown as std::invalid_argument (bad input,
// ValueError in Python) or std::runtime_error (a backend failed, RuntimeError in Python).
#pragma once
#include "zaya_rt/common.h"
#include "zaya_rt/norms.h"

namespace zaya_rt {

const char* gpu_backend_name();  // "cuda", "hip" or "none"

void rms_norm_fwd(const RmsNormFwdParams& p, const Device& d);
void rms_norm_bwd(const RmsNormBwdParams& p, const Device& d);
void residual_rms_norm_fwd(const ResidualRmsNormFwdParams& p, const Device& d);
void residual_rms_norm_bwd(const ResidualRmsNormBwdParams& p, const Device& d);
int64_t norm_bwd_num_partials(const Device& d, int64_t rows, int64_t dim);

}  // namespace zaya_rt
