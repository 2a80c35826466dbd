// attnkit: non-owning tensor view shared by every backend.
#pragma once

#include <cstdint>
#include <string>

namespace attnkit {

enum class DType : uint8_t { Float32, Float16, BFloat16, Int32, Int64, Other };
enum class DeviceKind : uint8_t { CPU, CUDA };

struct Device {
  DeviceKind kind = DeviceKind::CPU;
  int index = 0;
};

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
    default: return "unsupported dtype";
  }
}

inline int dtype_size(DType t) {
  switch (t) {
    case DType::Float32: case DType::Int32: return 4;
    case DType::Float16: case DType::BFloat16: return 2;
    case DType::Int64: return 8;
    default: return 0;
  }
}

constexpr int kMaxDims = 8;

// A strided view of memory owned by somebody else (NumPy, torch, ...).
// Shapes and strides are in elements, as in DLPack.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::Float32;
  Device device{};
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};

  int64_t size(int d) const { return shape[d < 0 ? d + ndim : d]; }
  int64_t strides(int d) const { return stride[d < 0 ? d + ndim : d]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  bool defined() const { return ndim > 0 || data != nullptr; }
  std::string shape_str() const {
    std::string s = "[";
    for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }
};

// Builds a contiguous (row-major) view; handy for C++ callers and tests.
inline TensorView make_view(void* data, DType dtype, std::initializer_list<int64_t> shape,
                            Device dev = {}) {
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.device = dev;
  t.ndim = static_cast<int>(shape.size());
  int i = 0;
  for (int64_t s : shape) t.shape[i++] = s;
  int64_t st = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    t.stride[d] = st;
    st *= t.shape[d];
  }
  return t;
}

}  // namespace attnkit
