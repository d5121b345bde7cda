// The sm_90a grouped GEMM template (interface and contract: cuda/moe_gemm_sm90.h). Included only by the
// one-instantiation files cuda/moe_gemm_sm90_<dtype>.cu, which CMake compiles for sm_90a alone.
//
// CUTLASS conventions used here: a GEMM is (M, N, K) with A as (M, K), B as (N, K) and D as (M, N), each with a
// CuTe stride per mode. Row-major A [M, K] is stride (lda, 1); our b_g [N, K] with unit stride along K is
// CUTLASS's ColumnMajor B, stride (ldb, 1); row-major D [M, N] is stride (ldd, 1). The third (batch) mode is
// static 0 in the grouped kernels: groups are addressed by the pointer arrays.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/kernel_hardware_info.h"
#include "cuda/moe_gemm_sm90.h"

namespace zaya_rt::gpu::sm90 {

// Cooperative persistent kernel (two consumer warpgroups share a 128 x 256 tile, 64 x 256 fp32 accumulators
// each), clusters of two CTAs along M that multicast their shared B tile, pipeline depth from the shared
// memory left after the epilogue. For MoE prefill/training shapes (hundreds of rows per group, N and K in
// the thousands).
template <typename Element>
struct GroupedGemmConfig {
  using ProblemShape = cutlass::gemm::GroupProblemShape<cute::Shape<int, int, int>>;  // (M_g, N, K)
  using LayoutA = cutlass::layout::RowMajor;
  using LayoutB = cutlass::layout::ColumnMajor;
  using LayoutD = cutlass::layout::RowMajor;
  static constexpr int kAlignment = 16 / sizeof(Element);
  using TileShape = cute::Shape<cute::_128, cute::_256, cute::_64>;
  using ClusterShape = cute::Shape<cute::_2, cute::_1, cute::_1>;
  using KernelSchedule = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative;
  using EpilogueSchedule = cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative;

  // D = 1 * acc, rounded to Element; no C operand (void source).
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, LayoutD*, kAlignment, Element, LayoutD*,
      kAlignment, EpilogueSchedule, cutlass::epilogue::fusion::LinearCombination<Element, float, void, float>>::
      CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA*, kAlignment, Element, LayoutB*,
      kAlignment, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideD = typename Kernel::InternalStrideD;
  using Shape = typename ProblemShape::UnderlyingProblemShape;

  // Layout guards: the unit (static 1) stride must be K for A and B and N for D; the leading one is dynamic.
  static_assert(std::is_same_v<StrideA, cute::Stride<int64_t, cute::Int<1>, cute::Int<0>>>, "A: (lda, 1, 0)");
  static_assert(std::is_same_v<StrideB, cute::Stride<int64_t, cute::Int<1>, cute::Int<0>>>, "B: (ldb, 1, 0)");
  static_assert(std::is_same_v<StrideD, cute::Stride<int64_t, cute::Int<1>, cute::Int<0>>>, "D: (ldd, 1, 0)");
  static_assert(sizeof(StrideA) == 8 && sizeof(Shape) == 12, "setup_layout() sizes");
};

template <typename T>  // the CUTLASS element type
struct SetupArgs {
  const T* a;
  const T* b;
  T* out;
  int64_t a_rs, b_gs, b_rs, out_rs;
  const int32_t* offsets;
  int64_t G, M, N, K;
  char* ws;
  SetupLayout layout;
};

// Block 0 writes the per-group arrays; every block zeroes its share of the rows past offsets[G-1] in
// 16-byte stores (N and out_rs are multiples of 8 elements on this path).
template <class Cfg, typename T>
__global__ void __launch_bounds__(256) grouped_gemm_setup_kernel(const SetupArgs<T> p) {
  if (blockIdx.x == 0) {
    auto* shapes = reinterpret_cast<typename Cfg::Shape*>(p.ws + p.layout.shapes);
    auto** ptr_a = reinterpret_cast<const T**>(p.ws + p.layout.ptr_a);
    auto** ptr_b = reinterpret_cast<const T**>(p.ws + p.layout.ptr_b);
    auto** ptr_out = reinterpret_cast<T**>(p.ws + p.layout.ptr_out);
    auto* stride_a = reinterpret_cast<typename Cfg::StrideA*>(p.ws + p.layout.stride_a);
    auto* stride_b = reinterpret_cast<typename Cfg::StrideB*>(p.ws + p.layout.stride_b);
    auto* stride_out = reinterpret_cast<typename Cfg::StrideD*>(p.ws + p.layout.stride_out);
    for (int64_t g = threadIdx.x; g < p.G; g += blockDim.x) {
      const GroupRows r = group_rows(p.offsets, g, p.M);
      const GroupOperands o = group_operands(r, g, p.a_rs, p.b_gs, p.out_rs);
      shapes[g] = typename Cfg::Shape{r.rows, static_cast<int>(p.N), static_cast<int>(p.K)};
      ptr_a[g] = p.a + o.a;
      ptr_b[g] = p.b + o.b;
      ptr_out[g] = p.out + o.out;
      stride_a[g] = cute::make_stride(p.a_rs, cute::Int<1>{}, cute::Int<0>{});
      stride_b[g] = cute::make_stride(p.b_rs, cute::Int<1>{}, cute::Int<0>{});
      stride_out[g] = cute::make_stride(p.out_rs, cute::Int<1>{}, cute::Int<0>{});
    }
  }
  const int64_t row0 = tail_row0(p.offsets, p.G, p.M);
  const int64_t chunks_per_row = p.N / 8, chunks = (p.M - row0) * chunks_per_row;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < chunks;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = row0 + i / chunks_per_row, c = (i % chunks_per_row) * 8;
    *reinterpret_cast<uint4*>(p.out + r * p.out_rs + c) = make_uint4(0, 0, 0, 0);
  }
}

// Piece `offset` of the workspace (null when only sizes are wanted).
inline char* piece(char* ws, int64_t offset) { return ws ? ws + offset : nullptr; }

template <class Cfg>
typename Cfg::Gemm::Arguments gemm_arguments(const SetupLayout& l, char* ws, int64_t G, int device, int sm_count) {
  using Gemm = typename Cfg::Gemm;
  using ElementA = typename Gemm::ElementA;
  using ElementB = typename Gemm::ElementB;
  using ElementD = typename Gemm::EpilogueOutputOp::ElementOutput;
  typename Gemm::Arguments args{};
  args.mode = cutlass::gemm::GemmUniversalMode::kGrouped;
  // No host problem shapes: the group tile scheduler reads the device ones, and the grid is one CTA per SM.
  args.problem_shape = {static_cast<int>(G), reinterpret_cast<typename Cfg::Shape*>(piece(ws, l.shapes)), nullptr};
  args.mainloop.ptr_A = reinterpret_cast<const ElementA**>(piece(ws, l.ptr_a));
  args.mainloop.dA = reinterpret_cast<typename Cfg::StrideA*>(piece(ws, l.stride_a));
  args.mainloop.ptr_B = reinterpret_cast<const ElementB**>(piece(ws, l.ptr_b));
  args.mainloop.dB = reinterpret_cast<typename Cfg::StrideB*>(piece(ws, l.stride_b));
  auto& fusion = args.epilogue.thread;
  fusion.alpha = 1.f;
  fusion.beta = 0.f;
  fusion.alpha_ptr = nullptr;
  fusion.beta_ptr = nullptr;
  fusion.alpha_ptr_array = nullptr;
  fusion.beta_ptr_array = nullptr;
  args.epilogue.ptr_C = nullptr;  // void source
  args.epilogue.dC = reinterpret_cast<typename Cfg::StrideD*>(piece(ws, l.stride_out));
  args.epilogue.ptr_D = reinterpret_cast<ElementD**>(piece(ws, l.ptr_out));
  args.epilogue.dD = reinterpret_cast<typename Cfg::StrideD*>(piece(ws, l.stride_out));
  args.hw_info.device_id = device;
  args.hw_info.sm_count = sm_count;
  return args;
}

// CUTLASS's workspace for kMaxSms SMs: it depends on the SM count only (TMA descriptors per SM), not on the
// problem shapes.
template <class Cfg>
int64_t cutlass_workspace() {
  static const int64_t bytes = [] {
    const SetupLayout l = setup_layout(1, 0);
    auto args = gemm_arguments<Cfg>(l, nullptr, 1, 0, kMaxSms);
    return static_cast<int64_t>(Cfg::Gemm::get_workspace_size(args));
  }();
  return bytes;
}

inline const char* failure(const char* what, const std::string& detail) {
  thread_local std::string msg;
  msg = std::string("grouped_gemm (sm90 CUTLASS): ") + what + ": " + detail;
  return msg.c_str();
}

template <typename T>
const char* run_grouped_gemm(const GroupedGemmParams& q, int sm_count, cudaStream_t s) {
  using Cfg = GroupedGemmConfig<T>;
  const SetupLayout l = setup_layout(q.G, cutlass_workspace<Cfg>());
  if (q.workspace_bytes < l.bytes) return "grouped_gemm (sm90 CUTLASS): workspace too small (use grouped_gemm_workspace)";
  char* ws = static_cast<char*>(q.workspace);
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return failure("cudaGetDevice", cudaGetErrorString(cudaGetLastError()));

  const SetupArgs<T> setup{static_cast<const T*>(q.a), static_cast<const T*>(q.b), static_cast<T*>(q.out),
                           q.a_row_stride, q.b_group_stride, q.b_row_stride, q.out_row_stride, q.offsets, q.G, q.M,
                           q.N, q.K, ws, l};
  const int64_t tail_chunks = q.M * (q.N / 8);  // an upper bound: the tail is at most every row
  const int blocks = static_cast<int>(std::min<int64_t>(std::max<int64_t>((tail_chunks + 255) / 256, 1), 1024));
  grouped_gemm_setup_kernel<Cfg, T><<<blocks, 256, 0, s>>>(setup);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return failure("setup kernel", cudaGetErrorString(e));

  sm_count = std::min(sm_count, kMaxSms);
  auto args = gemm_arguments<Cfg>(l, ws, q.G, device, sm_count);
  typename Cfg::Gemm gemm;
  cutlass::Status st = gemm.can_implement(args);
  if (st != cutlass::Status::kSuccess) return failure("can_implement", cutlass::cutlassGetStatusString(st));
  st = gemm.initialize(args, ws + l.cutlass, s);
  if (st != cutlass::Status::kSuccess) return failure("initialize", cutlass::cutlassGetStatusString(st));
  st = gemm.run(s);
  if (st != cutlass::Status::kSuccess) return failure("run", cutlass::cutlassGetStatusString(st));
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return failure("launch", cudaGetErrorString(e));
  return nullptr;
}

}  // namespace zaya_rt::gpu::sm90
