// Argument checks for the packed-weight linear layer (CPU only): bad input throws std::invalid_argument
// (ValueError), a failing kernel std::runtime_error.
#pragma once
#include "zaya_rt/common.h"
#include "zaya_rt/packed_linear.h"

namespace zaya_rt {

void pack_linear_weight(const PackLinearParams& p, const Device& d);
void packed_linear(const PackedLinearParams& p, const Device& d);
// Bytes of p.packed for p's dtype, N and K; bytes of the workspace packed_linear needs for p's M and K.
int64_t packed_linear_bytes(const PackLinearParams& p, const Device& d);
int64_t packed_linear_workspace(const PackedLinearParams& p, const Device& d);

}  // namespace zaya_rt
