// What every grouped-GEMM mainloop shares: the argument structs (forward, weight gradient, epilogue), the
// ragged row-tile search over device offsets, and the epilogue stores (linear, gate-scaled, SwiGLU).
#pragma once
#include "cuda/moe_common.cuh"

namespace zaya_rt::gpu {
namespace moe_detail {

enum class Epi : int32_t { kLinear = 0, kSwiGLU = 1 };

// Where a GEMM tile's values go. kLinear: out[map(r) * out_rs + c] = scale(r) * v with map(r) = out_rows[r]
// (or r) and scale(r) = row_scale[r] (or 1). kSwiGLU: out[r * out_rs + i] = SiLU(g) * u from the tile's
// paired gate and up columns. Stored as fp32 when out_f32, else in the GEMM's dtype.
struct EpiArgs {
  Epi kind;
  bool out_f32;
  void* out;
  int64_t out_rs;
  const int32_t* out_rows;
  const float* row_scale;
};

// out[M, ncols] = A_g . B_g^T over ragged row groups. A element (r, k) = a[src(r) * a_rs + k * a_cs] with
// src(r) = a_rows[r] / a_rows_div when gathering (else r). B element (n, k) = b[g * b_gs + n * b_rs + k * b_cs].
// swiglu_I > 0: the epilogue is kSwiGLU over I output columns, column tile t holding gate rows
// [t * BN/2, (t+1) * BN/2) of B and the up rows I + the same.
struct FwdArgs {
  const void* a;
  int64_t a_rs, a_cs;
  const int32_t* a_rows;
  int32_t a_rows_div;
  const void* b;
  int64_t b_gs, b_rs, b_cs;
  const int32_t* offsets;
  int32_t G, M;
  int64_t N, K;  // output columns (I when SwiGLU), inner size
  int64_t swiglu_I;
  bool zero_tail;  // write zeros to the rows past offsets[G-1]
  EpiArgs epi;
};

// grad[g][n, k] = sum over the group's rows r of dy[r, n] * a[r, k].
struct WgradArgs {
  const void* dy;
  int64_t dy_rs, dy_cs;
  const void* a;
  int64_t a_rs, a_cs;
  const int32_t* offsets;
  int32_t G, M;
  int64_t N, K;
  int32_t tiles_k;  // column tiles of grad (over K)
  EpiArgs epi;      // kLinear into grad_b, out_rs = its row stride; group stride below
  int64_t grad_gs;
};

// Rows [start, end) of group g of a ragged row space with M rows; g == G is the tail past offsets[G-1].
// Offsets are clamped into [0, M], so bad offsets cannot send a block out of bounds.
ZAYA_RT_DEVICE_INLINE int group_start(const int32_t* offsets, int g, int M) {
  return g == 0 ? 0 : static_cast<int>(lmin(lmax(offsets[g - 1], 0), M));
}
ZAYA_RT_DEVICE_INLINE int group_end(const int32_t* offsets, int g, int G, int M) {
  return g == G ? M : static_cast<int>(lmin(lmax(offsets[g], 0), M));
}

struct RowTile {
  int group, row0, row_end;
};

// Row tile `tile` of the ragged row space: groups 0..G-1 by offsets, then the tail group G, each cut into
// BM-row tiles in order. Threads take contiguous runs of groups, count their tiles, and a block scan says
// which thread holds the tile. False (for the whole block) when `tile` is past the last one.
ZAYA_RT_DEVICE_INLINE bool find_row_tile(int64_t tile, const int32_t* offsets, int G, int M, int BM, int* scan,
                                         RowTile* out) {
  const int groups = G + 1, nt = blockDim.x, per = (groups + nt - 1) / nt;
  const int lo = imin(groups, static_cast<int>(threadIdx.x) * per), hi = imin(groups, lo + per);
  if (threadIdx.x == 0) out->group = -1;
  int local = 0;
  for (int g = lo; g < hi; ++g) {
    const int rows = group_end(offsets, g, G, M) - group_start(offsets, g, M);
    local += rows > 0 ? (rows + BM - 1) / BM : 0;
  }
  int total;
  int64_t before = block_inclusive_scan(local, scan, total) - local;  // ends with a barrier
  if (tile >= before && tile < before + local) {
    for (int g = lo; g < hi; ++g) {
      const int start = group_start(offsets, g, M), rows = group_end(offsets, g, G, M) - start;
      const int tiles = rows > 0 ? (rows + BM - 1) / BM : 0;
      if (tile < before + tiles) {
        out->group = g;
        out->row0 = start + static_cast<int>(tile - before) * BM;
        out->row_end = static_cast<int>(lmin(start + rows, static_cast<int64_t>(out->row0) + BM));
        break;
      }
      before += tiles;
    }
  }
  __syncthreads();
  return out->group >= 0;
}

template <typename T> ZAYA_RT_DEVICE_INLINE float swiglu(float g, float u) {
  g = round_to<T>(g);
  u = round_to<T>(u);
  return g / (1.f + expf(-g)) * u;
}

// d[i] = scale * v[i] for i < n <= N, as one vector store when the whole span fits and is aligned.
// Compile-time N keeps v in registers.
template <typename TO, int N>
ZAYA_RT_DEVICE_INLINE void store_span(TO* d, float scale, const float (&v)[N], int n) {
  float s[N];
#pragma unroll
  for (int i = 0; i < N; ++i) s[i] = scale * v[i];
  if (n == N && reinterpret_cast<uintptr_t>(d) % (N * sizeof(TO)) == 0) {
    store_n<N>(d, s);
    return;
  }
#pragma unroll
  for (int i = 0; i < N; ++i)
    if (i < n) d[i] = from_float<TO>(s[i]);
}

// Writes values v[0, n) to output row r (a grouped row), columns c, c+1, ... (all inside the output).
template <typename T, int N>
ZAYA_RT_DEVICE_INLINE void write_span(const EpiArgs& e, int64_t r, int64_t c, const float (&v)[N], int n) {
  const int64_t orow = e.out_rows ? e.out_rows[r] : r;
  const float scale = e.row_scale ? e.row_scale[r] : 1.f;
  if (e.out_f32)
    store_span(static_cast<float*>(e.out) + orow * e.out_rs + c, scale, v, n);
  else
    store_span(static_cast<T*>(e.out) + orow * e.out_rs + c, scale, v, n);
}

// Row pointers of the forward operands (element (row, 0), or null outside the operand).
template <typename T> struct ForwardARows {
  const T* a;
  int64_t rs;
  const int32_t* map;
  int32_t div;
  int row0, row_end;
  ZAYA_RT_DEVICE_INLINE const T* operator()(int r) const {
    const int row = row0 + r;
    if (row >= row_end) return nullptr;
    const int64_t src = map ? map[row] / div : row;
    return a + src * rs;
  }
};

template <typename T, int BN> struct ForwardBRows {
  const T* b;  // group's matrix
  int64_t rs, n_tile, N, swiglu_I;
  ZAYA_RT_DEVICE_INLINE const T* operator()(int j) const {
    if (swiglu_I > 0) {
      constexpr int half = BN / 2;
      const int64_t i = n_tile * half + (j < half ? j : j - half);
      if (i >= swiglu_I) return nullptr;
      return b + (j < half ? i : swiglu_I + i) * rs;
    }
    const int64_t n = n_tile * BN + j;
    return n < N ? b + n * rs : nullptr;
  }
};

}  // namespace moe_detail
}  // namespace zaya_rt::gpu
