// Argument decoding shared by the csrc/bindings*.cpp files: tensors arrive from Python as raw addresses,
// dtype codes and device codes.
#pragma once
#include <cstdint>
#include <stdexcept>

#include "zaya_rt/common.h"

namespace zaya_rt::bindings {

using Ptr = uintptr_t;
template <typename T = void> inline T* ptr(Ptr p) { return reinterpret_cast<T*>(p); }
inline DType dt(int code) {
  if (code < 0 || code > static_cast<int>(DType::kFloat64)) throw std::invalid_argument("zaya_rt: bad dtype code");
  return static_cast<DType>(code);
}
inline Device dev(int type, int index, Ptr stream) {
  if (type != 0 && type != 1) throw std::invalid_argument("zaya_rt: bad device type code");
  return Device{static_cast<DeviceType>(type), index, ptr(stream)};
}

}  // namespace zaya_rt::bindings
