// Carving a caller-provided CPU workspace into typed, 64-byte aligned pieces (the MoE and Newton-Schulz kernels).
#pragma once
#include <cstdint>

namespace zaya_rt::cpu {

// The next `count` elements of E at `cursor`; advances the cursor past them, rounded up to 64 bytes.
template <typename E> E* carve(char*& cursor, int64_t count) {
  auto* p = reinterpret_cast<E*>(cursor);
  cursor += ((count * static_cast<int64_t>(sizeof(E)) + 63) / 64) * 64;
  return p;
}

}  // namespace zaya_rt::cpu
