// Plain types shared by every kernel family: no PyTorch, no CUDA headers.
#pragma once
#include <cstdint>

namespace zaya_rt {

// Numbering is part of the Python <-> _C contract (python/zaya_rt/ops/_lib.py).
enum class DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kInt32 = 3, kInt64 = 4, kFloat64 = 5 };

// kGpu is CUDA or HIP, whichever backend this build carries (PyTorch calls both "cuda").
enum class DeviceType : int32_t { kCpu = 0, kGpu = 1 };

struct Device {
  DeviceType type = DeviceType::kCpu;
  int32_t index = 0;
  void* stream = nullptr;  // cudaStream_t / hipStream_t; ignored on CPU
};

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    case DType::kFloat64: return "float64";
  }
  return "unknown";
}

inline bool is_floating_16_32(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16;
}

}  // namespace zaya_rt
