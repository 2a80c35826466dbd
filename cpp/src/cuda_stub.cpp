// attnkit: the CUDA seam when the library is built without CUDA. Every call
// explains how to get a CUDA build instead of failing obscurely.
#include "attnkit/error.hpp"
#include "cuda_backend.hpp"

namespace attnkit::cuda {

namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw Error(ErrorCode::Unsupported,
              std::string(what) +
                  ": this attnkit build has no CUDA backend (CPU only). Rebuild with "
                  "-DATTNKIT_CUDA=ON (needs nvcc and the nvidia-cutlass headers), or pass CPU tensors");
}
}  // namespace

bool compiled() { return false; }
std::string compiled_archs() { return ""; }
std::vector<std::string> compiled_kernels() { return {}; }
void fmha_forward(const FmhaProblem&, void*) { no_cuda("attention"); }
void fmha_backward(const FmhaBackwardProblem&, void*) { no_cuda("attention_backward"); }

}  // namespace attnkit::cuda
