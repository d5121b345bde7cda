// Host check of the sm_90a grouped GEMM's per-group setup (cuda/moe_gemm_sm90_setup.h, the code the setup
// kernel runs on the device): group rows from cumulative offsets, operand offsets, the workspace layout.
// Built and run by tests/test_moe_gemm_sm90_setup.py with the host C++ compiler; prints "ok" or the failure.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda/moe_gemm_sm90_setup.h"

using namespace zaya_rt::gpu::sm90;

static int failures = 0;
#define CHECK(cond)                                               \
  do {                                                            \
    if (!(cond)) {                                                \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                 \
    }                                                             \
  } while (0)

// Rows of every group and the tail, as a brute-force reading of the offsets: row r belongs to the first group
// whose clamped end lies above it.
static void check_partition(const std::vector<int32_t>& offsets, int64_t M) {
  const int64_t G = static_cast<int64_t>(offsets.size());
  int64_t expect_start = 0;
  for (int64_t g = 0; g < G; ++g) {
    const GroupRows r = group_rows(offsets.data(), g, M);
    const int64_t end = std::min<int64_t>(std::max<int64_t>(offsets[g], 0), M);
    CHECK(r.row0 == expect_start);
    CHECK(r.rows == std::max<int64_t>(end - expect_start, 0));
    CHECK(r.rows >= 0 && r.row0 >= 0 && r.row0 + r.rows <= M);
    expect_start = end;
  }
  CHECK(tail_row0(offsets.data(), G, M) == expect_start);
}

int main() {
  {  // monotone offsets with empty groups, one-row groups and a tail
    const std::vector<int32_t> off = {5, 5, 6, 12, 12, 13};
    const GroupRows g0 = group_rows(off.data(), 0, 15), g1 = group_rows(off.data(), 1, 15);
    const GroupRows g2 = group_rows(off.data(), 2, 15), g5 = group_rows(off.data(), 5, 15);
    CHECK(g0.row0 == 0 && g0.rows == 5);
    CHECK(g1.row0 == 5 && g1.rows == 0);
    CHECK(g2.row0 == 5 && g2.rows == 1);
    CHECK(g5.row0 == 12 && g5.rows == 1);
    CHECK(tail_row0(off.data(), 6, 15) == 13);
    check_partition(off, 15);
  }
  {  // every row in the tail; all rows in one group; a single group
    const std::vector<int32_t> none = {0, 0, 0}, all = {0, 7, 7}, one = {4};
    check_partition(none, 4);
    CHECK(tail_row0(none.data(), 3, 4) == 0);
    check_partition(all, 7);
    CHECK(group_rows(all.data(), 1, 7).rows == 7 && tail_row0(all.data(), 3, 7) == 7);
    check_partition(one, 4);
    CHECK(group_rows(one.data(), 0, 4).rows == 4);
  }
  {  // offsets outside [0, M] or decreasing never leave the operands
    const std::vector<int32_t> bad = {-3, 20, 10, 2147483647};
    for (int64_t g = 0; g < 4; ++g) {
      const GroupRows r = group_rows(bad.data(), g, 15);
      CHECK(r.rows >= 0 && r.row0 >= 0 && r.row0 + r.rows <= 15);
    }
    CHECK(group_rows(bad.data(), 0, 15).rows == 0);
    CHECK(group_rows(bad.data(), 1, 15).rows == 15);
    CHECK(group_rows(bad.data(), 2, 15).rows == 0);  // end (10) before start (15): empty
    CHECK(tail_row0(bad.data(), 4, 15) == 15);
  }
  {  // ZAYA1-8B forward: 16 experts of 1024 rows, a [16384, 2048] x [16, 4096, 2048] GEMM
    std::vector<int32_t> off(16);
    for (int g = 0; g < 16; ++g) off[g] = 1024 * (g + 1);
    check_partition(off, 16384);
    const GroupRows r = group_rows(off.data(), 3, 16384);
    const GroupOperands o = group_operands(r, 3, 2048, 4096LL * 2048, 4096);
    CHECK(r.row0 == 3072 && r.rows == 1024);
    CHECK(o.a == 3072LL * 2048 && o.b == 3LL * 4096 * 2048 && o.out == 3072LL * 4096);
  }
  {  // workspace pieces: 256-byte aligned, in order, disjoint, inside `bytes`
    for (int64_t G : {1, 3, 16, 4096}) {
      const SetupLayout l = setup_layout(G, 1000);
      const int64_t at[] = {l.shapes, l.ptr_a, l.ptr_b, l.ptr_out, l.stride_a, l.stride_b, l.stride_out, l.cutlass};
      const int64_t size[] = {G * 12, G * 8, G * 8, G * 8, G * 8, G * 8, G * 8, 1000};
      for (int i = 0; i < 8; ++i) {
        CHECK(at[i] % 256 == 0);
        if (i > 0) CHECK(at[i] >= at[i - 1] + size[i - 1]);
      }
      CHECK(l.bytes >= l.cutlass + 1000 && l.bytes % 256 == 0);
    }
  }
  if (failures) return 1;
  std::printf("ok\n");
  return 0;
}
