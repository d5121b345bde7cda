// ZAYA1 router (SPEC section 3, step 6), forward, fused: down projection with the EDA carry, RMSNorm, the
// three-layer GELU MLP, softmax over E + 1 classes and the biased top-1 choice with a skip class.
// Legend: T tokens, D hidden, R router width, C = E + 1 classes. Weights in nn.Linear layout ([out, in]) and
// one dtype (f32/f16/bf16); statistics, logits, the bias add and the choice in fp32.
#pragma once
#include "zaya_rt/common.h"

namespace zaya_rt {

struct RouterParams {
  const void* x; int64_t x_row_stride;            // [T, D]
  const void* z_prev; int64_t z_prev_row_stride;  // [T, R] in z_prev_dtype, or null (first layer)
  DType z_prev_dtype;
  const void* down_w; const void* down_b;         // [R, D], [R]
  const void* eda_scale;                          // [R] or null
  const void* norm_w;                             // [R]
  const void* fc1_w; const void* fc1_b;           // [R, R], [R]
  const void* fc2_w; const void* fc2_b;           // [R, R], [R]
  const void* out_w;                              // [C, R]
  const float* balancing_bias;                    // [C]
  DType dtype;                                    // of x and the weights
  float eps;
  float* logits;    // [T, C]
  float* gate;      // [T]: probability of the choice, 0 for skip
  int64_t* choice;  // [T]: argmax(p + bias), C - 1 = skip
  float* z;         // [T, R]: this layer's router state (after EDA), fp32
  int64_t T, D, R, C;
  void* workspace; int64_t workspace_bytes;  // CPU kernel only (zaya_router_workspace); the GPU one needs none
  // GPU only, optional: x W_down^T + b_down already computed (in dtype, [T, R], unit inner stride), e.g. by a
  // cuBLAS GEMM at large T; the kernel then starts from it (EDA onwards). Null: the kernel does the projection.
  const void* z0 = nullptr; int64_t z0_row_stride = 0;
};

namespace cpu {
const char* zaya_router(const RouterParams& p);
int64_t zaya_router_workspace(int64_t T, int64_t D, int64_t R, int64_t C);
}  // namespace cpu

namespace gpu {
const char* zaya_router(const RouterParams& p, void* stream);
}  // namespace gpu

}  // namespace zaya_rt
