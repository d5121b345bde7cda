// Launch plans of the grouped GEMMs: tile size by group size, SIMT vs tensor-core (cuda/moe_gemm_tc.cuh) vs
// the sm_90a CUTLASS grouped GEMM (cuda/moe_gemm_sm90.h), chosen per call, for the forward and the weight
// gradient.
#pragma once
#include "cuda/moe_gemm_simt.cuh"
#if defined(ZAYA_RT_MOE_TENSOR_CORES)
#include "cuda/moe_gemm_tc.cuh"
#endif
#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
#include "cuda/moe_gemm_sm90.h"
#endif

namespace zaya_rt::gpu {
namespace moe_detail {

#if defined(ZAYA_RT_MOE_TENSOR_CORES)
constexpr bool kTensorCoreBuild = true;
#else
constexpr bool kTensorCoreBuild = false;
#endif

// Every GEMM tile is 128 output columns wide (a SwiGLU tile: 64 gate + 64 up columns), so the column grid
// does not depend on the kernel picked.
constexpr int kTileN = 128;
static_assert(SimtBig::BN == kTileN && SimtSmall::BN == kTileN, "column tiles");
#if defined(ZAYA_RT_MOE_TENSOR_CORES)
static_assert(TcBig::BN == kTileN && TcSmall::BN == kTileN, "column tiles");
#endif

// Few rows per group (decode, small batches): 32-row tiles waste less work on rows no group has.
inline bool few_rows(int64_t M, int64_t G) { return M < 64 * G; }

#if defined(ZAYA_RT_MOE_TENSOR_CORES)
// wmma needs sm_80+ for bf16; the build targets sm_80 and sm_90a, but a build for an older GPU must not
// take the tensor-core path.
inline bool tensor_cores_ok() { return gpu_compute_capability() >= 80; }
#endif

template <typename T> constexpr int vec_elems() { return 16 / static_cast<int>(sizeof(T)); }

// The forward GEMM on the best kernel for these operands. vec: both operands allow 16-byte loads along k.
template <typename T>
const char* launch_forward(const FwdArgs& p, bool vec, int64_t n_tiles, gpuStream_t s, const char* what) {
  if (p.M <= 0 || n_tiles <= 0) return nullptr;
  if (n_tiles > 65535) return "too many output columns for one launch";
  const bool small = few_rows(p.M, p.G);
#if defined(ZAYA_RT_MOE_TENSOR_CORES)
  if constexpr (!std::is_same_v<T, float>) {
    if (vec && tensor_cores_ok()) {
      if (small) return launch_forward_tc<TcSmall, T>(p, n_tiles, s, what);
      return launch_forward_tc<TcBig, T>(p, n_tiles, s, what);
    }
  }
#endif
  // 16-bit operands on a tensor-core build only get here when the fast path is not possible: they take the
  // scalar kernel rather than a vectorised SIMT one that would never run on the targets.
  if constexpr (std::is_same_v<T, float> || !kTensorCoreBuild) {
    constexpr int kV = vec_elems<T>();
    if (vec && small) {
      const dim3 grid(static_cast<unsigned>(ceil_div(p.M, SimtSmall::BM) + p.G), static_cast<unsigned>(n_tiles));
      grouped_gemm_simt_kernel<SimtSmall, T, kV><<<grid, SimtSmall::kThreads, 0, s>>>(p);
      return launch_result(what);
    }
    if (vec) {
      const dim3 grid(static_cast<unsigned>(ceil_div(p.M, SimtBig::BM) + p.G), static_cast<unsigned>(n_tiles));
      grouped_gemm_simt_kernel<SimtBig, T, kV><<<grid, SimtBig::kThreads, 0, s>>>(p);
      return launch_result(what);
    }
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(p.M, SimtSmall::BM) + p.G), static_cast<unsigned>(n_tiles));
  grouped_gemm_simt_kernel<SimtSmall, T, 1><<<grid, SimtSmall::kThreads, 0, s>>>(p);
  return launch_result(what);
}

// ==== sm_90a CUTLASS grouped GEMM: when to take it (cuda/moe_gemm_sm90.h) ====================================

enum class GemmChoice { kAuto, kCutlass, kWmma, kBad };

// ZAYA_RT_CUDA_GROUPED_GEMM, read on every call so that a benchmark can switch paths between calls.
inline GemmChoice gemm_choice() {
  const int c = env_choice("ZAYA_RT_CUDA_GROUPED_GEMM", {"auto", "cutlass", "wmma"});
  return c < 0 ? GemmChoice::kBad : static_cast<GemmChoice>(c);
}

#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
// True on a compute capability 9.0 device (the sm_90a code runs there only).
inline bool is_sm90_device() { return gpu_compute_capability() == 90; }

// The CUTLASS kernel for this call, or nullptr for the WMMA / SIMT path.
template <typename T>
auto sm90_kernel(const GroupedGemmParams& q, GemmChoice choice) -> const char* (*)(const GroupedGemmParams&, int,
                                                                                   cudaStream_t) {
  if constexpr (std::is_same_v<T, float>) {
    return nullptr;
  } else {
    if (choice == GemmChoice::kWmma) return nullptr;
    // auto: decode-like calls (groups averaging under 64 rows) stay on the 32-row WMMA tiles until measured.
    if (choice == GemmChoice::kAuto && few_rows(q.M, q.G)) return nullptr;
    if (!sm90::qualifies(q) || !is_sm90_device()) return nullptr;
    return std::is_same_v<T, bf16> ? sm90::grouped_gemm_bf16 : sm90::grouped_gemm_f16;
  }
}
#endif

// Both operands allow 16-byte loads along k.
template <typename T>
bool forward_vec(const GroupedGemmParams& q) {
  constexpr int64_t es = sizeof(T);
  return q.a_col_stride == 1 && q.b_col_stride == 1 && q.K % vec_elems<T>() == 0 &&
         aligned16(q.a, q.a_row_stride, es) && aligned16(q.b, q.b_row_stride, es) && (q.b_group_stride * es) % 16 == 0;
}

template <typename T>
const char* launch_grouped_gemm(const GroupedGemmParams& q, gpuStream_t s) {
  if (q.M >= INT32_MAX || q.G >= INT32_MAX / 2) return "too many rows or groups for one launch";
  const GemmChoice choice = gemm_choice();
  if (choice == GemmChoice::kBad) return "ZAYA_RT_CUDA_GROUPED_GEMM must be auto, cutlass or wmma";
#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
  if (const auto kernel = sm90_kernel<T>(q, choice)) return kernel(q, gpu_multiprocessor_count(132), s);
#endif
  const FwdArgs p{q.a, q.a_row_stride, q.a_col_stride, nullptr, 1, q.b, q.b_group_stride, q.b_row_stride,
                  q.b_col_stride, q.offsets, static_cast<int32_t>(q.G), static_cast<int32_t>(q.M), q.N, q.K, 0,
                  /*zero_tail=*/true, EpiArgs{Epi::kLinear, false, q.out, q.out_row_stride, nullptr, nullptr}};
  return launch_forward<T>(p, forward_vec<T>(q), ceil_div(q.N, kTileN), s, "grouped_gemm");
}

// The kernel family launch_grouped_gemm takes for these operands on the current device (for tests and
// benchmarks): "cutlass_sm90", "wmma" or "simt".
template <typename T>
const char* grouped_gemm_path(const GroupedGemmParams& q) {
  const GemmChoice choice = gemm_choice();
#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
  if (choice != GemmChoice::kBad && sm90_kernel<T>(q, choice) != nullptr) return "cutlass_sm90";
#endif
  (void)choice;
#if defined(ZAYA_RT_MOE_TENSOR_CORES)
  if constexpr (!std::is_same_v<T, float>) {
    if (forward_vec<T>(q) && tensor_cores_ok()) return "wmma";
  }
#endif
  return "simt";
}

template <typename T>
const char* launch_weight_grad(const GroupedGemmWeightGradParams& q, gpuStream_t s) {
  if (q.grad_dtype != q.dtype && q.grad_dtype != DType::kFloat32)
    return "grad_b must have the dtype of dy and a, or float32";
  if (q.M >= INT32_MAX) return "too many rows for one launch";
  if (q.G > 65535) return "the GPU weight gradient takes at most 65535 groups";
  constexpr int kTile = 128;  // BM = BN = 128 for both weight-gradient kernels (SimtBig, TcBig)
  const int64_t tiles_k = ceil_div(q.K, kTile), tiles = ceil_div(q.N, kTile) * tiles_k;
  if (tiles >= INT32_MAX) return "grad_b too large for one launch";
  const WgradArgs p{q.dy, q.dy_row_stride, q.dy_col_stride, q.a, q.a_row_stride, q.a_col_stride, q.offsets,
                    static_cast<int32_t>(q.G), static_cast<int32_t>(q.M), q.N, q.K, static_cast<int32_t>(tiles_k),
                    EpiArgs{Epi::kLinear, q.grad_dtype == DType::kFloat32, q.grad_b, q.grad_b_row_stride, nullptr,
                            nullptr},
                    q.grad_b_group_stride};
  constexpr int64_t es = sizeof(T);
  constexpr int kV = vec_elems<T>();
  const bool vec = q.dy_col_stride == 1 && q.a_col_stride == 1 && q.N % kV == 0 && q.K % kV == 0 &&
                   aligned16(q.dy, q.dy_row_stride, es) && aligned16(q.a, q.a_row_stride, es);
#if defined(ZAYA_RT_MOE_TENSOR_CORES)
  if constexpr (!std::is_same_v<T, float>) {
    if (vec && tensor_cores_ok()) return launch_weight_grad_tc<TcBig, T>(p, s);
  }
#endif
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(q.G));
  static_assert(SimtBig::BM == kTile && SimtBig::BN == kTile, "weight-gradient tiles");
#if defined(ZAYA_RT_MOE_TENSOR_CORES)
  static_assert(TcBig::BM == kTile && TcBig::BN == kTile, "weight-gradient tiles");
#endif
  if constexpr (std::is_same_v<T, float> || !kTensorCoreBuild) {
    if (vec) {
      weight_grad_simt_kernel<SimtBig, T, kV><<<grid, SimtBig::kThreads, 0, s>>>(p);
      return launch_result("grouped_gemm_weight_grad");
    }
  }
  weight_grad_simt_kernel<SimtBig, T, 1><<<grid, SimtBig::kThreads, 0, s>>>(p);
  return launch_result("grouped_gemm_weight_grad");
}

}  // namespace moe_detail
}  // namespace zaya_rt::gpu
