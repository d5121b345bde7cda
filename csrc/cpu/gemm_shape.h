// Tile shape shared by every ISA build of the CPU GEMM, so workspace sizes can be computed once.
#pragma once
#include <cstdint>

namespace zaya_rt::cpu {
constexpr int kGemmMR = 12;       // rows of a register tile
constexpr int kGemmNR = 32;        // columns of a register tile (2 AVX-512 registers)
constexpr int kGemmNC = 4 * 32;    // columns of a packed B block
constexpr int64_t kPackedEntryBytes = 4;
}  // namespace zaya_rt::cpu
