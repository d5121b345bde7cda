// Runs the GPU router kernel bodies (cuda/router_body.cuh) on the CPU: every block, warp and thread, phase by
// phase, with the wmma tensor-core tiles replaced by a plain 16x16x16 product that checks wmma's alignment
// rules. Built by tools/gpu_emu/build.py --source emu_router (for tests/test_router_emulation.py) into a shared
// library and called through ctypes.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/router_body.cuh"

namespace zaya_rt::gpu::router_detail {
namespace {

std::string g_error;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "router emulation: %s\n", what);
  std::abort();
}

// One block: phases run for all threads (or warps of 32, the CUDA warp the wmma tiles assume) in turn.
template <class Regs, class Acc>
struct HostExec {
  std::vector<Regs> regs_ = std::vector<Regs>(kThreads);
  std::vector<Acc> acc_ = std::vector<Acc>(kThreads);
  template <class F> void each(F&& f) {
    for (int t = 0; t < kThreads; ++t) f(t);
  }
  template <class F> void each_warp(F&& f) {
    for (int w = 0; w < kThreads / 32; ++w) f(w);
  }
  void sync() {}
  Regs& regs(int t) { return regs_[t]; }
  Acc& acc(int t) { return acc_[t]; }
};

// nvcuda::wmma 16x16x16 with fp32 accumulators, emulated; checks load/store_matrix_sync's requirements
// (256-bit aligned pointers, ldm a multiple of 16 bytes).
template <typename T>
struct EmuMma {
  struct Tile { float v[16][16]; };
  using A = Tile;
  using B = Tile;
  using Acc = Tile;
  static void check(const void* p, int ld, int elem) {
    if (reinterpret_cast<uintptr_t>(p) % 32 != 0) fail("wmma pointer not 32-byte aligned");
    if ((ld * elem) % 16 != 0) fail("wmma ldm not a multiple of 16 bytes");
  }
  static void zero(Acc& c) { std::memset(&c, 0, sizeof c); }
  static void load_a(A& a, const T* p, int ld) {  // row-major [i][k]
    check(p, ld, sizeof(T));
    for (int i = 0; i < 16; ++i)
      for (int k = 0; k < 16; ++k) a.v[i][k] = to_float(p[i * ld + k]);
  }
  static void load_b(B& b, const T* p, int ld) {  // column-major: element (k, j) at p[j * ld + k]
    check(p, ld, sizeof(T));
    for (int k = 0; k < 16; ++k)
      for (int j = 0; j < 16; ++j) b.v[k][j] = to_float(p[j * ld + k]);
  }
  static void mma(Acc& c, const A& a, const B& b) {
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 16; ++j) {
        float s = 0.f;
        for (int k = 0; k < 16; ++k) s += a.v[i][k] * b.v[k][j];
        c.v[i][j] += s;
      }
  }
  static void store(float* p, const Acc& c, int ld) {
    check(p, ld, 4);
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 16; ++j) p[i * ld + j] = c.v[i][j];
  }
};

template <typename T, int TB, bool Vec, class Mma>
void run_head(const HeadArgs& a) {
  HostExec<TileRegs<T, Vec>, typename AccFor<Mma, TB>::type> ex;
  const size_t bytes = static_cast<size_t>(round_up(a.L.bytes, 128));
  auto* smem = static_cast<unsigned char*>(std::aligned_alloc(128, bytes));
  const int64_t blocks = (a.p.T + TB - 1) / TB;
  for (int64_t b = 0; b < blocks; ++b) {
    std::memset(smem, 0xff, bytes);  // NaN in every dtype: reading shared memory nobody wrote shows up
    head_block<T, TB, Vec, Mma>(ex, a, smem, b);
  }
  std::free(smem);
}

template <typename T, int V>
void run_down(const RouterParams& p, int warp_size) {
  for (int64_t r = 0; r < p.R; ++r)
    for (int64_t t0 = 0; t0 < p.T; t0 += kDownTokens) {
      const int nb = static_cast<int>(p.T - t0 < kDownTokens ? p.T - t0 : kDownTokens);
      float total[kDownTokens] = {};
      for (int lane = 0; lane < warp_size; ++lane) {
        float part[kDownTokens];
        down_lane_partial<T, V>(p, r, t0, nb, lane, warp_size, part);
        for (int t = 0; t < kDownTokens; ++t) total[t] += part[t];
      }
      down_finish<T>(p, r, t0, nb, total);
    }
}

template <typename T, int TB, bool Vec>
const char* run_head_mma(const HeadArgs& a, bool tensor_cores) {
  if constexpr (sizeof(T) == 2) {
    if (tensor_cores) return run_head<T, TB, Vec, EmuMma<T>>(a), nullptr;
  } else {
    if (tensor_cores) return "tensor-core tiles are for bf16/fp16 only";
  }
  run_head<T, TB, Vec, SimtMma>(a);
  return nullptr;
}

template <typename T>
const char* emulate(const RouterParams& p, int tb, bool tensor_cores, bool vec_down, bool vec_head, int warp_size) {
  constexpr int V = kVecBytes / static_cast<int>(sizeof(T));
  auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % kVecBytes == 0; };
  if (vec_down && !(p.D % V == 0 && aligned(p.x) && aligned(p.down_w) && (p.T <= 1 || p.x_row_stride % V == 0)))
    return "vectorised down projection requested for operands that do not allow it";
  if (vec_head && !(p.R % V == 0 && aligned(p.fc1_w) && aligned(p.fc2_w) && aligned(p.out_w)))
    return "vectorised weight tiles requested for operands that do not allow it";
  HeadArgs a{p, p.z0, p.z0_row_stride, 0, head_layout(tb, p.R, p.C, sizeof(T))};
  if (p.z0 == nullptr) {
    if (vec_down)
      run_down<T, V>(p, warp_size);
    else
      run_down<T, 1>(p, warp_size);
    a.z_pre = p.z;
    a.z_pre_row_stride = p.R;
    a.z_pre_f32 = 1;
  }
  switch (tb) {
    case 16: return vec_head ? run_head_mma<T, 16, true>(a, tensor_cores) : run_head_mma<T, 16, false>(a, tensor_cores);
    case 32: return vec_head ? run_head_mma<T, 32, true>(a, tensor_cores) : run_head_mma<T, 32, false>(a, tensor_cores);
    case 64: return vec_head ? run_head_mma<T, 64, true>(a, tensor_cores) : run_head_mma<T, 64, false>(a, tensor_cores);
    default: return "tokens per block must be 16, 32 or 64";
  }
}

}  // namespace
}  // namespace zaya_rt::gpu::router_detail

// Arguments as zaya_rt._C.zaya_router takes them (dtype codes of zaya_rt::DType), then the kernel choices the
// GPU launcher would make: tokens per head block, tensor-core tiles, vectorised loads, the warp width.
extern "C" const char* zaya_router_emulate(const void* x, int64_t x_rs, const void* z_prev, int64_t zp_rs, int zp_dt,
                                           const void* down_w, const void* down_b, const void* eda,
                                           const void* norm_w, const void* fc1_w, const void* fc1_b,
                                           const void* fc2_w, const void* fc2_b, const void* out_w, const float* bias,
                                           int dtype, float eps, float* logits, float* gate, int64_t* choice, float* z,
                                           int64_t T, int64_t D, int64_t R, int64_t C, const void* z0, int64_t z0_rs,
                                           int tb, int tensor_cores, int vec_down, int vec_head, int warp_size) {
  using namespace zaya_rt;
  using namespace zaya_rt::gpu::router_detail;
  RouterParams p{x, x_rs, z_prev, zp_rs, static_cast<DType>(zp_dt), down_w, down_b, eda, norm_w, fc1_w, fc1_b,
                 fc2_w, fc2_b, out_w, bias, static_cast<DType>(dtype), eps, logits, gate, choice, z, T, D, R, C,
                 nullptr, 0, z0, z0_rs};
  switch (p.dtype) {
    case DType::kFloat32: return emulate<float>(p, tb, tensor_cores, vec_down, vec_head, warp_size);
    case DType::kFloat16: return emulate<gpu::f16>(p, tb, tensor_cores, vec_down, vec_head, warp_size);
    case DType::kBFloat16: return emulate<gpu::bf16>(p, tb, tensor_cores, vec_down, vec_head, warp_size);
    default: return "unsupported dtype";
  }
}
