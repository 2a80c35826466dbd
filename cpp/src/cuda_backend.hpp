// attnkit internal: the seam between the host-side dispatcher and the CUDA backend.
//
// When the library is built without CUDA (ATTNKIT_CUDA=OFF, or AUTO without nvcc),
// cpp/src/cuda_stub.cpp implements these and every call raises Unsupported.
#pragma once

#include <string>
#include <vector>

#include "problem.hpp"

namespace attnkit::cuda {

// Was the library built with the CUDA backend?
bool compiled();
// Semicolon-separated arch list the kernels were built for ("" when none).
std::string compiled_archs();
// One line per compiled kernel configuration, e.g. "sm90 fwd bf16 hd128".
std::vector<std::string> compiled_kernels();

// Run on the caller's stream (cudaStream_t passed as void*; null = legacy default).
// Throw attnkit::Error(Unsupported) naming what is supported when the
// (arch, dtype, head_dim, feature) combination has no kernel.
void fmha_forward(const FmhaProblem& p, void* stream);
void fmha_backward(const FmhaBackwardProblem& p, void* stream);

}  // namespace attnkit::cuda
