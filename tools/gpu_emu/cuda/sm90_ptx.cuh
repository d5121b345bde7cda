// Host emulation of cuda/sm90_ptx.cuh (the PTX of the sm_90a attention forward) for tools/gpu_emu: the same
// names, implemented from the PTX ISA (section numbers of ISA 8.x/9.0, chapter 9.7.15 "Asynchronous Warpgroup
// Level Matrix Multiply-Accumulate Instructions"). The kernel's block must be exactly one warpgroup (128
// emulated threads), so warpgroup-collective operations synchronise on the block barrier.
//
// What is checked, beyond the arithmetic:
//   descriptors  decoded field by field (9.7.15.5.1.2.2): reserved bits, base offset and swizzle mode must be
//                zero (the no-swizzle K-major layout is the only one emulated), every element address must lie
//                inside the block's dynamic shared memory.
//   asynchrony   wgmma.mma_async only records the operation; it runs when a wgmma.wait_group retires its
//                group, reading shared memory, the A registers and the accumulators then. A kernel that reads
//                accumulators, or rewrites A registers or an operand tile, before the wait gets wrong numbers
//                here, as it may on the hardware (9.7.15: those registers and that memory must not be accessed
//                until the wait).
//   fragments    the m64nNk16 accumulator and A-register layouts (9.7.15.5.1.1.1) are applied element by
//                element: A fragments of all 128 threads are gathered into the 64x16 matrix before the MMA.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "cuda/compat.h"
#include "cuda/numeric.cuh"

namespace zaya_rt::gpu::wg {

[[noreturn]] inline void emu_fail(const char* what) {
  std::fprintf(stderr, "sm90 emulation: %s\n", what);
  std::abort();
}

// Shared state space address: the byte offset into the block's dynamic shared memory (which starts at 0 here;
// on the GPU it starts wherever the runtime puts it, the kernel never assumes otherwise).
inline uint32_t smem_addr(const void* p) {
  const auto off = static_cast<const char*>(p) - reinterpret_cast<const char*>(::emu::ctx.smem);
  if (off < 0 || static_cast<size_t>(off) > ::emu::ctx.smem_bytes) emu_fail("smem_addr of a non-shared pointer");
  return static_cast<uint32_t>(off);
}

// 9.7.15.5.1.2.2 Matrix Descriptor Format: matrix-descriptor-encode(x) = (x & 0x3FFFF) >> 4 of the start
// address (bits 13-0), the leading dimension byte offset (29-16) and the stride dimension byte offset (45-32);
// base offset (51-49) and swizzle mode (63-62) left 0 = no swizzle.
inline uint64_t make_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  auto enc = [](uint32_t x) { return static_cast<uint64_t>((x & 0x3FFFFu) >> 4); };
  return enc(addr) | enc(lbo) << 16 | enc(sbo) << 32;
}

struct Desc {
  uint32_t start, lbo, sbo;
};
inline Desc decode(uint64_t d) {
  const uint64_t reserved = (0x3ull << 14) | (0x3ull << 30) | (0x7ull << 46) | (0x3FFull << 52);
  if (d & reserved) emu_fail("descriptor has reserved bits set");
  if ((d >> 49) & 0x7) emu_fail("descriptor base offset is non-zero (only the no-swizzle layout is emulated)");
  if ((d >> 62) != 0) emu_fail("descriptor swizzle mode is not 0 (only the no-swizzle layout is emulated)");
  return {static_cast<uint32_t>(d & 0x3FFF) << 4, static_cast<uint32_t>((d >> 16) & 0x3FFF) << 4,
          static_cast<uint32_t>((d >> 32) & 0x3FFF) << 4};
}
// 9.7.15.5.1.2 Shared Memory Matrix Layout, K-major, no swizzle ("interleaved"): canonical layout
// ((8,m),(T,2k)):((1T,SBO),(1,LBO)) in 16-bit elements with T = 8: row mn % 8 of a core matrix at 16 bytes,
// 8-row groups at SBO bytes, the 8-element halves of the k16 slice at LBO bytes (9.7.15.5.1.2.1).
template <typename T> inline float load_kmajor(const Desc& d, int mn, int k) {
  const uint32_t addr = d.start + (mn / 8) * d.sbo + (mn % 8) * 16 + (k / 8) * d.lbo + (k % 8) * 2;
  if (addr + 2 > ::emu::ctx.smem_bytes) emu_fail("descriptor addresses past the dynamic shared memory");
  T v;
  std::memcpy(&v.bits, reinterpret_cast<const char*>(::emu::ctx.smem) + addr, 2);
  return to_float(v);
}

// A pending wgmma.mma_async (D = A B + scale_d D, m64nNk16, 16-bit inputs, fp32 accumulators).
struct Mma {
  float* d;
  int n;
  bool bf16_inputs, a_in_regs;
  uint64_t desc_a, desc_b;
  const uint32_t* a;  // the kernel's A registers (alive until the wait), read at retirement
  int scale_d;
  int group;  // -1 until committed
};
struct WarpgroupState {
  std::vector<Mma> pending;
  int committed = 0, retired = 0;
};
inline thread_local WarpgroupState state;
// A of the MMA being retired, gathered from the 128 threads' fragments, and each thread's view of the
// instruction's warpgroup-uniform operands (one block runs at a time).
inline float gathered_a[64][16];
inline uint64_t uniform_ops[128][4];

inline void block_barrier() {
  if (::emu::ctx.block_dim.x * ::emu::ctx.block_dim.y * ::emu::ctx.block_dim.z != 128)
    emu_fail("a wgmma block must be one warpgroup of 128 threads");
  ::emu::ctx.block_bar->arrive_and_wait();
}

// Thread t's coordinates in the m64nNk16 fragments (9.7.15.5.1.1.1): rows 16 (t / 32) + (t % 32) / 4 (+ 8),
// columns 2 (t % 4) (+ 1) of each 8-column block.
inline int frag_row0() { return 16 * static_cast<int>(threadIdx.x / 32) + static_cast<int>(threadIdx.x % 32) / 4; }
inline int frag_col0() { return 2 * static_cast<int>(threadIdx.x % 4); }

template <typename T> inline void run_typed(const Mma& op) {
  const unsigned tid = threadIdx.x;
  const uint64_t mine[4] = {op.a_in_regs ? 0 : op.desc_a, op.desc_b, static_cast<uint64_t>(op.scale_d),
                            static_cast<uint64_t>(op.n)};
  for (int i = 0; i < 4; ++i) uniform_ops[tid][i] = mine[i];
  block_barrier();  // every thread's registers and shared-memory writes are in
  // .sync.aligned: all threads of the warpgroup execute the same instruction with the same descriptors
  for (int i = 0; i < 4; ++i)
    if (uniform_ops[tid][i] != uniform_ops[0][i]) emu_fail("wgmma operands differ across the warpgroup");
  const int r0 = frag_row0(), c0 = frag_col0();
  if (op.a_in_regs) {
    // "Multiplicand A in registers": a0..a7 (low half of a[0] first) = A[r][c], A[r][c+1], A[r+8][c],
    // A[r+8][c+1], A[r][c+8], A[r][c+9], A[r+8][c+8], A[r+8][c+9] with r = r0 % 64, c = c0.
    for (int j = 0; j < 8; ++j) {
      T v{static_cast<uint16_t>(op.a[j / 2] >> (16 * (j % 2)))};
      const int r = r0 + 8 * ((j / 2) % 2), c = c0 + (j % 2) + 8 * (j / 4);
      gathered_a[r][c] = to_float(v);
    }
    block_barrier();
  }
  const Desc b = decode(op.desc_b);
  Desc a{};
  if (!op.a_in_regs) a = decode(op.desc_a);
  // Accumulator D: d[4i + 2h + e] = D[r0 + 8h][8i + c0 + e].
  std::vector<float> out(op.n / 2);
  for (int idx = 0; idx < op.n / 2; ++idx) {
    const int i = idx / 4, h = (idx / 2) % 2, e = idx % 2;
    const int r = r0 + 8 * h, c = 8 * i + c0 + e;
    float acc = op.scale_d ? op.d[idx] : 0.f;
    for (int k = 0; k < 16; ++k) {
      const float av = op.a_in_regs ? gathered_a[r][k] : load_kmajor<T>(a, r, k);
      acc += av * load_kmajor<T>(b, c, k);  // B K-major: row c of the N x K storage
    }
    out[idx] = acc;
  }
  for (int idx = 0; idx < op.n / 2; ++idx) op.d[idx] = out[idx];
  block_barrier();  // gathered_a free for the next MMA
}

inline void fence_proxy_async() {}  // shared memory is one coherent array here
inline void fence() {}              // registers are not renamed here; deferred MMAs keep the ordering
template <int N> inline void fence_operand(float (&)[N]) {}

// wgmma.commit_group: the uncommitted MMAs become the newest group.
inline void commit() {
  for (Mma& op : state.pending)
    if (op.group < 0) op.group = state.committed;
  ++state.committed;
}
// wgmma.wait_group N: retire (run, in issue order) every committed group but the newest N.
template <int N> inline void wait() {
  const int upto = state.committed - N;
  std::vector<Mma> keep;
  for (const Mma& op : state.pending) {
    if (op.group >= 0 && op.group < upto) {
      if (op.bf16_inputs) run_typed<bf16>(op); else run_typed<f16>(op);
    } else {
      keep.push_back(op);
    }
  }
  state.pending.swap(keep);
  if (upto > state.retired) state.retired = upto;
}

template <typename T> inline void mma_ss_n64(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  state.pending.push_back(Mma{d, 64, std::is_same_v<T, bf16>, false, desc_a, desc_b, nullptr, scale_d, -1});
}
template <typename T, int N>
inline void mma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
  static_assert(N == 64 || N == 128, "instantiated for n64 and n128 only");
  state.pending.push_back(Mma{d, N, std::is_same_v<T, bf16>, true, 0, desc_b, a, scale_d, -1});
}

// shfl.sync.bfly with lane masks 1 then 2 (9.7.9.6 "shfl.sync"): the same pairing order as the hardware.
inline float quad_reduce(float v, bool is_max) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  float* slot = ::emu::ctx.warp_slots;
  auto step = [&](float x, int mask) {
    slot[lane] = x;
    ::emu::ctx.warp_bar->arrive_and_wait();
    const float other = slot[lane ^ mask];
    ::emu::ctx.warp_bar->arrive_and_wait();
    return is_max ? std::fmax(x, other) : x + other;
  };
  return step(step(v, 1), 2);
}
inline float quad_max(float v) { return quad_reduce(v, true); }
inline float quad_sum(float v) { return quad_reduce(v, false); }

}  // namespace zaya_rt::gpu::wg
