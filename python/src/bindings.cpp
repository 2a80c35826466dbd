// attnkit._core: the thin nanobind layer over the C++ API.
//
// This file holds the module itself, the error mapping and build information;
// each family binds its functions in bindings_<family>.cpp (see common.hpp).
// The GIL is released while kernels run.
#include "common.hpp"
#include "cpu/kernels.hpp"

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
  attnkit_py::bind_gna(m);
  attnkit_py::bind_block_sparse(m);
  attnkit_py::bind_linear(m);
  attnkit_py::bind_host_pool(m);

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

  // Test hook for the internal bf16 GEMM primitive (cpu/kernels.hpp):
  // C (+)= A * B with A uint16 [M, K] (bf16 bits), B uint16 [K/2, 2N] (bf16 VNNI), C float32 [M, N].
  m.def(
      "_gemm_bf16",
      [](nb::ndarray<uint16_t, nb::ndim<2>, nb::c_contig, nb::device::cpu> A,
         nb::ndarray<uint16_t, nb::ndim<2>, nb::c_contig, nb::device::cpu> B,
         nb::ndarray<float, nb::ndim<2>, nb::c_contig, nb::device::cpu> C, bool accumulate) {
        const int64_t M = A.shape(0), K = A.shape(1), N = C.shape(1);
        AK_CHECK(K % 2 == 0 && B.shape(0) * 2 == K && B.shape(1) == 2 * N && C.shape(0) == M,
                 InvalidArgument, "_gemm_bf16: shapes do not match");
        nb::gil_scoped_release release;
        attnkit::cpu::gemm_bf16(M, N, K, A.data(), K, B.data(), 2 * N, C.data(), N, accumulate);
      },
      "A"_a, "B"_a, "C"_a, "accumulate"_a);

  // Asks Linux for transparent huge pages over the 2 MiB-aligned interior of a
  // freshly allocated host buffer (an output attnkit allocates; see
  // _tensors.py). Large allocations are fresh mmaps, and the first write to
  // every 4 KiB page faults: with huge pages a 32 MiB output faults 16 times
  // instead of 8192 (measured: allocate + fill of 32 MiB, 8.3 -> 2.1 ms).
  // Returns whether advice was given; a no-op elsewhere.
  m.def("_advise_huge_pages", &attnkit_py::advise_huge_pages, "ptr"_a, "nbytes"_a);
}
