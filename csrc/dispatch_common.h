// Shared by the csrc/dispatch_*.cpp files: errors, pointer and size checks, and the CPU/GPU routing.
// Bad input throws std::invalid_argument (ValueError in Python); a kernel that reports a failure throws
// std::runtime_error (RuntimeError). Every message starts with "zaya_rt.<op>: ".
// A build with a GPU backend defines ZAYA_RT_WITH_GPU (and ZAYA_RT_WITH_CUDA or ZAYA_RT_WITH_HIP); without it,
// csrc/gpu_stubs.cpp links the gpu:: entry points and require_device() rejects GPU calls before they are reached.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "zaya_rt/common.h"

namespace zaya_rt::dispatch {

[[noreturn]] inline void bad(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string("zaya_rt.") + op + ": " + what);
}

inline void need(const char* op, bool ok, const std::string& what) {
  if (!ok) bad(op, what);
}

// Turns a kernel's error string (nullptr = success) into an exception.
inline void finish(const char* op, const char* err) {
  if (err != nullptr) throw std::runtime_error(std::string("zaya_rt.") + op + ": " + err);
}

inline void check_ptr(const char* op, const char* name, const void* p, bool needed) {
  if (needed && p == nullptr) bad(op, std::string(name) + " is a null pointer");
}

inline void check_float_dtype(const char* op, const char* name, DType t) {
  if (!is_floating_16_32(t))
    bad(op, std::string(name) + " must be float32, float16 or bfloat16, got " + dtype_name(t));
}

inline void check_nonneg(const char* op, const char* name, int64_t v) {
  if (v < 0) bad(op, std::string(name) + " must be non-negative, got " + std::to_string(v));
}

inline void check_positive(const char* op, const char* name, int64_t v) {
  if (v <= 0) bad(op, std::string(name) + " must be positive, got " + std::to_string(v));
}

// Rows of `width` elements `stride` apart must not overlap (checked only when there are two rows or more).
inline void check_stride(const char* op, const char* name, int64_t stride, int64_t width, int64_t rows) {
  if (rows > 1 && stride < width)
    bad(op, std::string(name) + " row stride " + std::to_string(stride) + " is smaller than its row (" +
                std::to_string(width) + ")");
}

// A pointer argument and whether it must be set.
struct PtrArg {
  const char* name;
  const void* ptr;
  bool needed;
};

inline void check_ptrs(const char* op, std::initializer_list<PtrArg> args) {
  for (const PtrArg& a : args) check_ptr(op, a.name, a.ptr, a.needed);
}

// A row-major operand: rows of `width` elements `row_stride` apart, at `ptr` (needed when there are rows).
struct RowsArg {
  const char* name;
  const void* ptr;
  int64_t row_stride, width;
};

// check_ptr and check_stride for each operand of `rows` rows.
inline void check_rows(const char* op, int64_t rows, std::initializer_list<RowsArg> args) {
  for (const RowsArg& a : args) {
    check_ptr(op, a.name, a.ptr, rows > 0);
    check_stride(op, a.name, a.row_stride, a.width, rows);
  }
}

constexpr bool gpu_built() {
#if defined(ZAYA_RT_WITH_GPU)
  return true;
#else
  return false;
#endif
}

inline const char* gpu_backend_name() {
#if defined(ZAYA_RT_WITH_CUDA)
  return "cuda";
#elif defined(ZAYA_RT_WITH_HIP)
  return "hip";
#else
  return "none";
#endif
}

// Rejects an unknown device type, and a GPU device on a build without a GPU backend.
inline void require_device(const char* op, const Device& d) {
  if (d.type != DeviceType::kCpu && d.type != DeviceType::kGpu) bad(op, "unknown device type");
  if (d.type == DeviceType::kGpu && !gpu_built())
    bad(op, "this zaya_rt._C has no GPU backend (rebuild with ZAYA_RT_CUDA=ON or ZAYA_RT_HIP=ON)");
}

// Calls the CPU kernel, or the GPU one on the device's stream.
template <typename Params, typename CpuFn, typename GpuFn>
void route(const char* op, const Params& p, const Device& d, CpuFn cpu_fn, GpuFn gpu_fn) {
  require_device(op, d);
  if (d.type == DeviceType::kCpu) return finish(op, cpu_fn(p));
  finish(op, gpu_fn(p, d.stream));
}

}  // namespace zaya_rt::dispatch
