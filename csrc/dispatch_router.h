// Argument checks and backend choice for the router (see csrc/dispatch_common.h for the conventions).
#pragma once
#include "zaya_rt/router.h"

namespace zaya_rt {

void zaya_router(const RouterParams& p, const Device& d);
// Bytes the CPU kernel needs (the GPU kernel needs none).
int64_t zaya_router_workspace(int64_t T, int64_t D, int64_t R, int64_t C);

}  // namespace zaya_rt
