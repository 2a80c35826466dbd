// attnkit CUDA backend: the table of compiled kernels and the choice among them.
//
// Plain C++ (no CUDA headers): the generated kernel_table.cpp fills a
// KernelEntry array, backend.cpp asks find_kernel() for the entry of a call, and
// tests/test_cuda_host.py compiles this file with a fake table on the CPU to check
// the selection and the error messages.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "attnkit/tensor.hpp"
#include "problem.hpp"

namespace attnkit::cuda {

enum class Direction { Forward, Backward };

// Launchers: `stream` is a cudaStream_t; `workspace` device memory of at least
// workspace_bytes(p) (backward only), owned by the caller.
using ForwardFn = void (*)(const FmhaProblem& p, void* stream);
using BackwardFn = void (*)(const FmhaBackwardProblem& p, void* workspace, void* stream);
using WorkspaceFn = size_t (*)(const FmhaBackwardProblem& p);

struct KernelEntry {
  int arch = 0;             // 90 (sm_90a) or 100 (sm_100a)
  Direction dir = Direction::Forward;
  DType dtype = DType::BFloat16;
  int head_dim = 0;         // Dqk == Dv
  const char* variant = ""; // e.g. "tma-wgmma-ws"
  ForwardFn forward = nullptr;
  BackwardFn backward = nullptr;
  WorkspaceFn workspace_bytes = nullptr;
};

struct KernelTable {
  const KernelEntry* entries = nullptr;
  int size = 0;
  const char* archs = "";  // as built, e.g. "90a;100a"
};

// "sm90 fwd bf16 hd128 (tma-wgmma-ws)"
std::string kernel_name(const KernelEntry& e);
// Every entry's name, in table order.
std::vector<std::string> kernel_names(const KernelTable& t);

// The arch code a device of compute capability major.minor runs: sm_90a code runs
// on 9.0 only, sm_100a code on 10.0 only (arch-specific targets are not
// forward-compatible). 0 when attnkit has no kernel family for it.
int arch_of_compute_capability(int major, int minor);

// The entry for (arch, dir, dtype, head_dim), or throws Error(Unsupported) naming
// what was asked and listing what this build has (for this arch, and every arch).
// Among several variants the table's first wins, unless `variant` names one that
// exists (ATTNKIT_CUDA_VARIANT, e.g. "mma-sync" to verify the portable kernel).
const KernelEntry& find_kernel(const KernelTable& t, const char* fn, int cc_major, int cc_minor,
                               Direction dir, DType dtype, int head_dim, const char* variant = nullptr);

// Checks the problem features the CUDA kernels cover (independent of the table):
// fp16/bf16, Dqk == Dv, no softcap, 16-byte aligned pointers and strides (TMA),
// sizes within int32. Throws Error(Unsupported / InvalidArgument) otherwise.
void check_supported(const char* fn, const FmhaProblem& p);
void check_supported(const char* fn, const FmhaBackwardProblem& p);

}  // namespace attnkit::cuda
