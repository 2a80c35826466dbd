// attnkit._core: the thin nanobind layer over the C++ API.
//
// This file holds the module itself, the error mapping and build information;
// each family binds its functions in bindings_<family>.cpp (see common.hpp).
// The GIL is released while kernels run.
#include "common.hpp"

namespace {
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

  attnkit_py::bind_fmha(m);
  attnkit_py::bind_block_sparse(m);

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
