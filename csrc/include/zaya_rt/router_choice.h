// The router's biased top-1 choice, one definition for the CPU kernel (csrc/cpu/router_rows.h) and the GPU
// kernels (cuda/router_body.cuh): choice = argmax(p + balancing_bias) in torch.argmax's order, as
// ref.zaya_router computes it: the first NaN score wins (NaN probabilities from NaN/inf inputs, or a NaN bias
// entry), otherwise the first maximum (an all -inf bias gives class 0). gate = p[choice], 0 for the skip class.
#pragma once
#include <cstdint>

#include "zaya_rt/host_device.h"

namespace zaya_rt {

struct RouterChoice {
  int64_t index = -1;
  float score = 0.f;
  float prob = 0.f;

  // Offers class c (visited in increasing order) with its probability and biased score.
  ZAYA_RT_HOST_DEVICE void offer(int64_t c, float p, float s) {
    const bool best_is_nan = score != score;
    if (index < 0 || (!best_is_nan && (s != s || s > score))) {
      index = c;
      score = s;
      prob = p;
    }
  }

  // The gate of the choice among C classes, the last of which is the skip class.
  ZAYA_RT_HOST_DEVICE float gate(int64_t C) const { return index == C - 1 ? 0.f : prob; }
};

}  // namespace zaya_rt
