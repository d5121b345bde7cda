// Argument checks and backend choice for the router (see csrc/dispatch_common.h for the conventions).
#pragma once
#include "zaya_rt/router.h"

namespace zaya_rt {

void zaya_router(const RouterParams& p, const Device& d);
// Bytes of p.workspace for p's sizes: the CPU kernel's scratch; the GPU kernel needs none (0).
int64_t zaya_router_workspace(const RouterParams& p, const Device& d);

}  // namespace zaya_rt
