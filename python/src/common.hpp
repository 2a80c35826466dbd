// attnkit._core: helpers shared by the binding files of every family.
//
// Tensors arrive as nb::ndarray (DLPack / buffer protocol: NumPy, torch, JAX,
// CuPy) and are viewed in place -- never copied. Outputs are allocated by the
// Python layer in the caller's framework and passed in.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <optional>
#include <string>

#include "attnkit/attnkit.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace attnkit_py {

using attnkit::DType;
using attnkit::TensorView;
using AnyArray = nb::ndarray<>;

// uint16 arrays stand for bfloat16: NumPy cannot export ml_dtypes' bfloat16
// through DLPack, so the Python layer passes a uint16 view of such arrays (and
// rejects genuine integer inputs before they reach this module).
inline DType dtype_of(const nb::dlpack::dtype& d) {
  using nb::dlpack::dtype_code;
  const auto code = static_cast<dtype_code>(d.code);
  if (d.lanes != 1) return DType::Other;
  if (code == dtype_code::Float && d.bits == 32) return DType::Float32;
  if (code == dtype_code::Float && d.bits == 16) return DType::Float16;
  if (code == dtype_code::Bfloat && d.bits == 16) return DType::BFloat16;
  if (code == dtype_code::UInt && d.bits == 16) return DType::BFloat16;
  if (code == dtype_code::Int && d.bits == 32) return DType::Int32;
  if (code == dtype_code::Int && d.bits == 64) return DType::Int64;
  return DType::Other;
}

inline TensorView view_of(const AnyArray& a, const char* name) {
  AK_CHECK(a.ndim() <= static_cast<size_t>(attnkit::kMaxDims), InvalidArgument, name,
           " has ", a.ndim(), " dimensions; attnkit supports at most ", attnkit::kMaxDims);
  TensorView t;
  t.data = const_cast<void*>(a.data());
  t.dtype = dtype_of(a.dtype());
  t.ndim = static_cast<int>(a.ndim());
  for (int i = 0; i < t.ndim; ++i) {
    t.shape[i] = static_cast<int64_t>(a.shape(i));
    t.stride[i] = static_cast<int64_t>(a.stride(i));
  }
  const int dev = a.device_type();
  if (dev == nb::device::cpu::value) {
    t.device = {attnkit::DeviceKind::CPU, 0};
  } else if (dev == nb::device::cuda::value) {
    t.device = {attnkit::DeviceKind::CUDA, a.device_id()};
  } else {
    throw attnkit::Error(attnkit::ErrorCode::Unsupported,
                         std::string(name) + " is on an unsupported device (DLPack device type " +
                             std::to_string(dev) + "); attnkit runs on the CPU and CUDA GPUs");
  }
  return t;
}

// An optional tensor argument as a view, with a pointer that is null when absent.
struct OptView {
  TensorView view;
  bool present = false;
  OptView(const std::optional<AnyArray>& a, const char* name) {
    if (a) {
      view = view_of(*a, name);
      present = true;
    }
  }
  const TensorView* get() const { return present ? &view : nullptr; }
};

// Each family's binding file defines one of these; bindings.cpp calls them all.
void bind_fmha(nb::module_& m);
void bind_gna(nb::module_& m);
void bind_block_sparse(nb::module_& m);
void bind_linear(nb::module_& m);
void bind_host_pool(nb::module_& m);  // host_pool.cpp

// Asks Linux for transparent huge pages over the 2 MiB-aligned interior of a host
// buffer; returns whether advice was given (a no-op elsewhere). host_pool.cpp.
bool advise_huge_pages(uintptr_t ptr, size_t nbytes);

}  // namespace attnkit_py
