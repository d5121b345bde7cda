// The expert block on the GPU: dispatch -> per-row gates -> gate_up GEMM with a SwiGLU epilogue -> down GEMM
// with a gate-scaled epilogue -> combine (or the CUTLASS gather/GEMM/SwiGLU/GEMM/combine chain on sm_90).
#pragma once
#include "cuda/moe_dispatch.cuh"
#include "cuda/moe_gemm_launch.cuh"

namespace zaya_rt::gpu {
namespace moe_detail {

// The gate of each routed row (in expert order), as fp32: row_gate[r] = gate[sorted_slots[r]].
template <typename TG>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(256)
    row_gate_kernel(const TG* gate, int64_t slots, int64_t experts, const int32_t* offsets,
                    const int32_t* sorted_slots, float* row_gate) {
  const int64_t routed = offsets[experts - 1];
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < lmin(slots, routed);
       r += static_cast<int64_t>(gridDim.x) * blockDim.x)
    row_gate[r] = to_float(gate[sorted_slots[r]]);
}

// One block per token (grid-stride). top-1: zeroes the rows of tokens without an expert (the others were
// written by the down GEMM). top-k: out[t] = sum of the token's slot rows of y_rows, in slot order.
template <typename T>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(256)
    combine_kernel(int64_t tokens, int64_t top_k, int64_t D, const int32_t* slot_rows, const float* y_rows, T* out,
                   int64_t out_rs) {
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    T* dst = out + t * out_rs;
    if (top_k == 1) {
      if (slot_rows[t] >= 0) continue;
      for (int64_t n = threadIdx.x; n < D; n += blockDim.x) dst[n] = from_float<T>(0.f);
      continue;
    }
    for (int64_t n = threadIdx.x; n < D; n += blockDim.x) {
      float acc = 0.f;
      for (int64_t j = 0; j < top_k; ++j) {
        const int32_t row = slot_rows[t * top_k + j];
        if (row >= 0) acc += y_rows[static_cast<int64_t>(row) * D + n];
      }
      dst[n] = from_float<T>(acc);
    }
  }
}

// The experts workspace, carved in 256-byte aligned pieces (base == nullptr: only the size). The fused WMMA /
// SIMT path needs y_rows for top-k > 1; the sm_90a CUTLASS path (gemm_bytes > 0) instead keeps the gathered
// token rows (later the down GEMM's output rows) and the gate_up output, plus the grouped GEMM's workspace.
struct ExpertsWorkspace {
  int32_t *counts, *offsets, *sorted_slots, *slot_rows;
  float* row_gate;
  void* act;       // [S, I] in the model dtype
  float* y_rows;   // [S, D] fp32, top-k > 1 only (fused path)
  void* rows;      // [S, D] in the model dtype: gathered x, then down output (CUTLASS path)
  void* h;         // [S, 2I] in the model dtype: gate_up output (CUTLASS path)
  void* gemm;      // the grouped GEMM workspace (CUTLASS path)
  int64_t gemm_bytes, bytes;
};

inline ExpertsWorkspace experts_workspace(void* base, int64_t tokens, int64_t top_k, int64_t D, int64_t I,
                                          int64_t E, int64_t esize, int64_t gemm_bytes = 0) {
  const int64_t slots = tokens * top_k;
  ExpertsWorkspace w{};
  int64_t used = 0;
  auto carve = [&](int64_t bytes) -> void* {
    void* p = base ? static_cast<char*>(base) + used : nullptr;
    used += (bytes + 255) / 256 * 256;
    return p;
  };
  w.counts = static_cast<int32_t*>(carve(E * 4));
  w.offsets = static_cast<int32_t*>(carve(E * 4));
  w.sorted_slots = static_cast<int32_t*>(carve(slots * 4));
  w.slot_rows = static_cast<int32_t*>(carve(slots * 4));
  w.row_gate = static_cast<float*>(carve(slots * 4));
  w.act = carve(slots * I * esize);
  if (gemm_bytes > 0) {
    w.rows = carve(slots * D * esize);
    w.h = carve(slots * 2 * I * esize);
    w.gemm = carve(gemm_bytes);
    w.gemm_bytes = gemm_bytes;
  } else {
    w.y_rows = top_k > 1 ? static_cast<float*>(carve(slots * D * 4)) : nullptr;
  }
  w.bytes = used;
  return w;
}

#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
// ---- experts on the sm_90a CUTLASS grouped GEMM: gather -> GEMM -> SwiGLU -> GEMM -> gate-scaled combine ----
// The same rounding points as the fused path (gate and up outputs rounded to the model dtype before SiLU(g) * u,
// the activation stored in the model dtype) except one: the down GEMM's rows are rounded to the model dtype
// before the gate scales them (the fused path scales the fp32 accumulators).

constexpr int kRowsVec = 8;  // 16-bit elements per 16-byte access

// rows[r] = hidden[sorted_slots[r] / top_k] for the routed rows r < offsets[E-1].
template <typename T>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(256)
    gather_rows_kernel(const T* hidden, int64_t hidden_rs, const int32_t* sorted_slots, int64_t top_k,
                       const int32_t* offsets, int64_t experts, int64_t D, T* rows) {
  const int64_t routed = offsets[experts - 1], per_row = D / kRowsVec;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < routed * per_row;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / per_row, c = (i % per_row) * kRowsVec;
    const int64_t t = sorted_slots[r] / top_k;
    *reinterpret_cast<Pack<T, kRowsVec>*>(rows + r * D + c) =
        *reinterpret_cast<const Pack<T, kRowsVec>*>(hidden + t * hidden_rs + c);
  }
}

// act[r, i] = SiLU(h[r, i]) * h[r, I + i] for the routed rows (h already holds model-dtype values).
template <typename T>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(256)
    swiglu_rows_kernel(const T* h, const int32_t* offsets, int64_t experts, int64_t I, T* act) {
  const int64_t routed = offsets[experts - 1], per_row = I / kRowsVec;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < routed * per_row;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / per_row, c = (i % per_row) * kRowsVec;
    float g[kRowsVec], u[kRowsVec], v[kRowsVec];
    load_n<kRowsVec>(h + r * 2 * I + c, g);
    load_n<kRowsVec>(h + r * 2 * I + I + c, u);
#pragma unroll
    for (int e = 0; e < kRowsVec; ++e) v[e] = swiglu<T>(g[e], u[e]);
    store_n<kRowsVec>(act + r * I + c, v);
  }
}

// out[t] = sum over the token's slots (in slot order) of row_gate[row] * y[row]; tokens without an expert get
// zeros. One block per token (grid-stride).
template <typename T>
__global__ void ZAYA_RT_LAUNCH_BOUNDS(256)
    combine_rows_kernel(int64_t tokens, int64_t top_k, int64_t D, const int32_t* slot_rows, const float* row_gate,
                        const T* y, T* out, int64_t out_rs) {
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    for (int64_t n = threadIdx.x; n < D; n += blockDim.x) {
      float acc = 0.f;
      for (int64_t j = 0; j < top_k; ++j) {
        const int32_t row = slot_rows[t * top_k + j];
        if (row >= 0) acc += row_gate[row] * to_float(y[static_cast<int64_t>(row) * D + n]);
      }
      out[t * out_rs + n] = from_float<T>(acc);
    }
  }
}

inline int grid_for(int64_t items) { return static_cast<int>(std::clamp<int64_t>(ceil_div(items, 256), 1, 4096)); }

// The two grouped GEMMs of the expert block as sm_90a CUTLASS calls over workspace w (bases only: the device
// offsets decide the rows). Valid once w is carved with gemm_bytes.
inline GroupedGemmParams experts_gate_up_gemm(const MoeExpertsParams& q, const ExpertsWorkspace& w, DType dt) {
  const int64_t S = q.T * q.top_k;
  return GroupedGemmParams{w.rows, q.D, 1, q.gate_up, q.gate_up_expert_stride, q.gate_up_row_stride, 1, w.offsets,
                           w.h, 2 * q.I, dt, S, 2 * q.I, q.D, q.E, w.gemm, w.gemm_bytes};
}
inline GroupedGemmParams experts_down_gemm(const MoeExpertsParams& q, const ExpertsWorkspace& w, DType dt) {
  const int64_t S = q.T * q.top_k;
  return GroupedGemmParams{w.act, q.I, 1, q.down, q.down_expert_stride, q.down_row_stride, 1, w.offsets,
                           w.rows, q.D, dt, S, q.D, q.I, q.E, w.gemm, w.gemm_bytes};
}

// Whether moe_experts takes the CUTLASS path for these sizes on this device (workspace aside): the choice of
// grouped_gemm (auto: groups averaging >= 64 rows), 16-bit dtype, D and I in whole 16-byte chunks.
inline bool experts_sm90_wanted(int64_t slots, int64_t D, int64_t I, int64_t E, DType dtype) {
  const GemmChoice choice = gemm_choice();
  if (choice == GemmChoice::kWmma || choice == GemmChoice::kBad) return false;
  if (dtype != DType::kBFloat16 && dtype != DType::kFloat16) return false;
  if (choice == GemmChoice::kAuto && few_rows(slots, E)) return false;
  return I > 0 && D % kRowsVec == 0 && I % kRowsVec == 0 && is_sm90_device();
}

template <typename T>
const char* run_experts_sm90(const MoeExpertsParams& q, const ExpertsWorkspace& w, gpuStream_t s) {
  const int64_t S = q.T * q.top_k, D = q.D, I = q.I, E = q.E;
  const DType dt = std::is_same_v<T, bf16> ? DType::kBFloat16 : DType::kFloat16;
  auto* gemm = std::is_same_v<T, bf16> ? sm90::grouped_gemm_bf16 : sm90::grouped_gemm_f16;
  const int sms = gpu_multiprocessor_count(132);
  gather_rows_kernel<T><<<grid_for(S * D / kRowsVec), 256, 0, s>>>(static_cast<const T*>(q.hidden),
                                                                   q.hidden_row_stride, w.sorted_slots, q.top_k,
                                                                   w.offsets, E, D, static_cast<T*>(w.rows));
  if (const char* err = launch_result("moe_experts (gather)")) return err;
  if (const char* err = gemm(experts_gate_up_gemm(q, w, dt), sms, s)) return err;
  swiglu_rows_kernel<T><<<grid_for(S * I / kRowsVec), 256, 0, s>>>(static_cast<const T*>(w.h), w.offsets, E, I,
                                                                   static_cast<T*>(w.act));
  if (const char* err = launch_result("moe_experts (SwiGLU)")) return err;
  if (const char* err = gemm(experts_down_gemm(q, w, dt), sms, s)) return err;
  const int token_blocks = static_cast<int>(std::clamp<int64_t>(q.T, 1, 16384));
  combine_rows_kernel<T><<<token_blocks, 256, 0, s>>>(q.T, q.top_k, D, w.slot_rows, w.row_gate,
                                                      static_cast<const T*>(w.rows), static_cast<T*>(q.out),
                                                      q.out_row_stride);
  return launch_result("moe_experts (combine)");
}
#endif

template <typename T>
const char* run_moe_experts(const MoeExpertsParams& q, gpuStream_t s) {
  const int64_t slots = q.T * q.top_k, E = q.E, D = q.D, I = q.I;
  if (slots >= INT32_MAX) return "too many token slots for int32 rows";
  constexpr int64_t es = sizeof(T);
  ExpertsWorkspace w = experts_workspace(q.workspace, q.T, q.top_k, D, I, E, es);
  if (q.workspace_bytes < w.bytes) return "workspace too small (use moe_experts_workspace)";
  bool sm90_path = false;
#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
  // Taken when the caller's workspace has room for it (moe_experts_workspace sizes it when wanted) and both
  // GEMMs qualify; otherwise the fused path below.
  if constexpr (!std::is_same_v<T, float>) {
    if (experts_sm90_wanted(slots, D, I, E, q.dtype)) {
      const ExpertsWorkspace w9 = experts_workspace(q.workspace, q.T, q.top_k, D, I, E, es,
                                                    sm90::grouped_gemm_workspace(E));
      const DType dt = q.dtype;
      if (q.workspace_bytes >= w9.bytes && sm90::qualifies(experts_gate_up_gemm(q, w9, dt)) &&
          sm90::qualifies(experts_down_gemm(q, w9, dt)) && sm90::aligned16(q.hidden) &&
          q.hidden_row_stride % kRowsVec == 0) {
        w = w9;
        sm90_path = true;
      }
    }
  }
#endif
  if (const char* err = run_dispatch(q.expert_index, q.index_dtype, slots, E, w.offsets, w.counts, w.sorted_slots,
                                     w.slot_rows, s))
    return err;

  const int gate_blocks = static_cast<int>(std::clamp<int64_t>(ceil_div(slots, 256), 1, 4096));
  switch (q.gate_dtype) {
    case DType::kFloat32:
      row_gate_kernel<<<gate_blocks, 256, 0, s>>>(static_cast<const float*>(q.gate), slots, E, w.offsets,
                                                  w.sorted_slots, w.row_gate);
      break;
    case DType::kFloat16:
      row_gate_kernel<<<gate_blocks, 256, 0, s>>>(static_cast<const f16*>(q.gate), slots, E, w.offsets,
                                                  w.sorted_slots, w.row_gate);
      break;
    case DType::kBFloat16:
      row_gate_kernel<<<gate_blocks, 256, 0, s>>>(static_cast<const bf16*>(q.gate), slots, E, w.offsets,
                                                  w.sorted_slots, w.row_gate);
      break;
    default: return "gate must be float32, float16 or bfloat16";
  }
  if (const char* err = launch_result("moe_experts (gates)")) return err;
#if defined(ZAYA_RT_GPU_CUDA) && defined(ZAYA_RT_WITH_CUTLASS_SM90)
  if constexpr (!std::is_same_v<T, float>) {
    if (sm90_path) return run_experts_sm90<T>(q, w, s);
  }
#endif
  (void)sm90_path;

  constexpr int kV = vec_elems<T>();
  const int32_t M = static_cast<int32_t>(slots), G = static_cast<int32_t>(E);
  if (I > 0) {
    // act[r, :] = SwiGLU(gate_up_e . x_token(r)) over the gathered token rows.
    const FwdArgs up{q.hidden, q.hidden_row_stride, 1, w.sorted_slots, static_cast<int32_t>(q.top_k), q.gate_up,
                     q.gate_up_expert_stride, q.gate_up_row_stride, 1, w.offsets, G, M, I, D, I,
                     /*zero_tail=*/false, EpiArgs{Epi::kSwiGLU, false, w.act, I, nullptr, nullptr}};
    const bool vec = D % kV == 0 && aligned16(q.hidden, q.hidden_row_stride, es) &&
                     aligned16(q.gate_up, q.gate_up_row_stride, es) && (q.gate_up_expert_stride * es) % 16 == 0;
    if (const char* err = launch_forward<T>(up, vec, ceil_div(I, kTileN / 2), s, "moe_experts (gate_up)")) return err;
  }
  // y = gate * down_e . act: top-1 straight into the token's row of out, top-k into fp32 rows.
  const bool rows_out = q.top_k > 1;
  const FwdArgs down{w.act, I, 1, nullptr, 1, q.down, q.down_expert_stride, q.down_row_stride, 1, w.offsets, G, M,
                     D, I, 0, /*zero_tail=*/false,
                     EpiArgs{Epi::kLinear, rows_out, rows_out ? static_cast<void*>(w.y_rows) : q.out,
                             rows_out ? D : q.out_row_stride, rows_out ? nullptr : w.sorted_slots, w.row_gate}};
  const bool vec = I % kV == 0 && aligned16(w.act, I, es) && aligned16(q.down, q.down_row_stride, es) &&
                   (q.down_expert_stride * es) % 16 == 0;
  if (const char* err = launch_forward<T>(down, vec, ceil_div(D, kTileN), s, "moe_experts (down)")) return err;

  const int token_blocks = static_cast<int>(std::clamp<int64_t>(q.T, 1, 16384));
  combine_kernel<T><<<token_blocks, 256, 0, s>>>(q.T, q.top_k, D, w.slot_rows, w.y_rows, static_cast<T*>(q.out),
                                                 q.out_row_stride);
  return launch_result("moe_experts (combine)");
}

}  // namespace moe_detail
}  // namespace zaya_rt::gpu
