// attnkit._core: the thin nanobind layer over the C++ API.
//
// Tensors arrive as nb::ndarray (DLPack / buffer protocol: NumPy, torch, JAX,
// CuPy) and are viewed in place -- never copied. Outputs are allocated by the
// Python layer in the caller's framework and passed in. The GIL is released
// while kernels run.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "attnkit/attnkit.hpp"

namespace nb = nanobind;
using namespace nb::literals;
using attnkit::DType;
using attnkit::TensorView;

namespace {

using Array = nb::ndarray<nb::device::none>;
using AnyArray = nb::ndarray<>;

// uint16 arrays stand for bfloat16: NumPy cannot export ml_dtypes' bfloat16
// through DLPack, so the Python layer passes a uint16 view of such arrays (and
// rejects genuine integer inputs before they reach this module).
DType dtype_of(const nb::dlpack::dtype& d) {
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

TensorView view_of(const AnyArray& a, const char* name) {
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

attnkit::AttentionOptions fmha_options(bool is_causal, int64_t wl, int64_t wr, float softcap,
                                       float scale, const TensorView* cu_q,
                                       const TensorView* cu_k) {
  attnkit::AttentionOptions o;
  o.is_causal = is_causal;
  o.window_left = wl;
  o.window_right = wr;
  o.softcap = softcap;
  o.scale = scale;
  o.cu_seqlens_q = cu_q;
  o.cu_seqlens_k = cu_k;
  return o;
}

PyObject* g_unsupported = nullptr;

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "attnkit native core (use the attnkit package, not this module)";

  g_unsupported = PyErr_NewExceptionWithDoc(
      "attnkit.UnsupportedError",
      "The requested combination (device, dtype, head dim, feature) has no kernel in this build.",
      PyExc_NotImplementedError, nullptr);
  m.attr("UnsupportedError") = nb::borrow(g_unsupported);

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const attnkit::Error& e) {
      PyObject* type = PyExc_RuntimeError;
      switch (e.code()) {
        case attnkit::ErrorCode::InvalidArgument: type = PyExc_ValueError; break;
        case attnkit::ErrorCode::InvalidType: type = PyExc_TypeError; break;
        case attnkit::ErrorCode::Unsupported: type = g_unsupported; break;
        case attnkit::ErrorCode::OutOfMemory: type = PyExc_MemoryError; break;
        default: type = PyExc_RuntimeError; break;
      }
      PyErr_SetString(type, e.what());
    }
  });

  m.def(
      "attention_fwd",
      [](const AnyArray& q, const AnyArray& k, const AnyArray& v, const AnyArray& out,
         std::optional<AnyArray> lse, bool is_causal, int64_t window_left, int64_t window_right,
         float softcap, float scale, std::optional<AnyArray> cu_q, std::optional<AnyArray> cu_k,
         uintptr_t stream, int threads) {
        TensorView tq = view_of(q, "q"), tk = view_of(k, "k"), tv = view_of(v, "v"),
                   to = view_of(out, "out");
        TensorView tl, cq, ck;
        if (lse) tl = view_of(*lse, "lse");
        if (cu_q) cq = view_of(*cu_q, "cu_seqlens_q");
        if (cu_k) ck = view_of(*cu_k, "cu_seqlens_k");
        auto opts = fmha_options(is_causal, window_left, window_right, softcap, scale,
                                 cu_q ? &cq : nullptr, cu_k ? &ck : nullptr);
        attnkit::ExecConfig exec{reinterpret_cast<void*>(stream), threads};
        nb::gil_scoped_release release;
        attnkit::attention(tq, tk, tv, to, lse ? &tl : nullptr, opts, exec);
      },
      "q"_a, "k"_a, "v"_a, "out"_a, "lse"_a.none(), "is_causal"_a, "window_left"_a,
      "window_right"_a, "softcap"_a, "scale"_a, "cu_seqlens_q"_a.none(), "cu_seqlens_k"_a.none(),
      "stream"_a = 0, "threads"_a = 0, "Dense attention forward into preallocated out/lse.");

  m.def(
      "attention_bwd",
      [](const AnyArray& dout, const AnyArray& q, const AnyArray& k, const AnyArray& v,
         const AnyArray& out, const AnyArray& lse, const AnyArray& dq, const AnyArray& dk,
         const AnyArray& dv, bool is_causal, int64_t window_left, int64_t window_right,
         float softcap, float scale, std::optional<AnyArray> cu_q, std::optional<AnyArray> cu_k,
         std::optional<AnyArray> dlse, uintptr_t stream, int threads) {
        TensorView tdo = view_of(dout, "dout"), tq = view_of(q, "q"), tk = view_of(k, "k"),
                   tv = view_of(v, "v"), to = view_of(out, "out"), tl = view_of(lse, "lse"),
                   tdq = view_of(dq, "dq"), tdk = view_of(dk, "dk"), tdv = view_of(dv, "dv");
        TensorView cq, ck;
        if (cu_q) cq = view_of(*cu_q, "cu_seqlens_q");
        if (cu_k) ck = view_of(*cu_k, "cu_seqlens_k");
        auto opts = fmha_options(is_causal, window_left, window_right, softcap, scale,
                                 cu_q ? &cq : nullptr, cu_k ? &ck : nullptr);
        attnkit::ExecConfig exec{reinterpret_cast<void*>(stream), threads};
        nb::gil_scoped_release release;
        TensorView tdl;
        if (dlse) tdl = view_of(*dlse, "dlse");
        attnkit::attention_backward(tdo, tq, tk, tv, to, tl, tdq, tdk, tdv, opts, exec,
                                    dlse ? &tdl : nullptr);
      },
      "dout"_a, "q"_a, "k"_a, "v"_a, "out"_a, "lse"_a, "dq"_a, "dk"_a, "dv"_a, "is_causal"_a,
      "window_left"_a, "window_right"_a, "softcap"_a, "scale"_a, "cu_seqlens_q"_a.none(),
      "cu_seqlens_k"_a.none(), "dlse"_a.none(), "stream"_a = 0, "threads"_a = 0,
      "Dense attention backward into preallocated dq/dk/dv.");

  m.def(
      "merge_attentions",
      [](std::vector<AnyArray> outs, std::vector<AnyArray> lses, const AnyArray& out,
         std::optional<AnyArray> lse, int threads) {
        std::vector<TensorView> vo, vl;
        for (size_t i = 0; i < outs.size(); ++i) vo.push_back(view_of(outs[i], "outs[i]"));
        for (size_t i = 0; i < lses.size(); ++i) vl.push_back(view_of(lses[i], "lses[i]"));
        TensorView to = view_of(out, "out"), tl;
        if (lse) tl = view_of(*lse, "lse");
        attnkit::ExecConfig exec{nullptr, threads};
        nb::gil_scoped_release release;
        attnkit::merge_attentions(vo, vl, to, lse ? &tl : nullptr, exec);
      },
      "outs"_a, "lses"_a, "out"_a, "lse"_a.none(), "threads"_a = 0);

  m.def("build_info", []() {
    const attnkit::BuildInfo b = attnkit::build_info();
    nb::dict d;
    d["version"] = b.version;
    d["cpu_isa"] = b.cpu_isa;
    d["cpu_isas"] = b.cpu_isas;
    d["cpu_features"] = b.cpu_features;
    d["max_threads"] = b.max_threads;
    d["openmp"] = b.openmp;
    d["cuda"] = b.cuda;
    d["cuda_archs"] = b.cuda_archs;
    d["cuda_kernels"] = b.cuda_kernels;
    return d;
  });
  m.def("set_cpu_isa", [](const std::string& name) { attnkit::set_cpu_isa(name); }, "name"_a);
}
