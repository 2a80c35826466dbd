// attnkit CUDA backend: the host side behind cpp/src/cuda_backend.hpp.
//
// A call: check what the kernels cover (registry.cpp), make the tensors' device
// current for the call, pick the kernel for the device's arch from the generated
// table, hand it the caller's stream. Nothing here synchronises the device or
// allocates in the steady state: the backward's workspace is cached per
// (device, stream) and grown with stream-ordered allocations only when a larger
// problem comes.
#include <cuda_runtime.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>

#include "attnkit/error.hpp"
#include "cuda_backend.hpp"
#include "registry.hpp"

namespace attnkit::cuda {

extern const KernelTable kKernelTable;  // kernel_table.cpp, written by cuda/generate.py

namespace {

void check_cuda(cudaError_t e, const char* fn, const char* what) {
  if (e == cudaSuccess) return;
  const ErrorCode code = e == cudaErrorMemoryAllocation ? ErrorCode::OutOfMemory : ErrorCode::DeviceError;
  throw Error(code, std::string(fn) + ": " + what + " failed: " + cudaGetErrorString(e));
}

struct ComputeCapability {
  int major = 0, minor = 0;
};

ComputeCapability compute_capability(const char* fn, int device) {
  static std::mutex mu;
  static std::map<int, ComputeCapability> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  ComputeCapability cc;
  check_cuda(cudaDeviceGetAttribute(&cc.major, cudaDevAttrComputeCapabilityMajor, device), fn,
             "reading the GPU's compute capability");
  check_cuda(cudaDeviceGetAttribute(&cc.minor, cudaDevAttrComputeCapabilityMinor, device), fn,
             "reading the GPU's compute capability");
  cache[device] = cc;
  return cc;
}

// Makes `device` current for the scope (the tensors' device, which need not be
// the caller's current one), and restores the previous device.
class DeviceGuard {
 public:
  DeviceGuard(const char* fn, int device) {
    check_cuda(cudaGetDevice(&prev_), fn, "cudaGetDevice");
    if (prev_ != device) {
      check_cuda(cudaSetDevice(device), fn, "cudaSetDevice");
      changed_ = true;
    }
  }
  ~DeviceGuard() {
    if (changed_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool changed_ = false;
};

// Per (device, stream) scratch memory. The lock is held for the whole backward
// call (workspace use + launches, host-side only), so a concurrent call on the
// same stream cannot free a buffer that an earlier-enqueued launch still uses:
// frees are stream-ordered after every earlier use.
struct WorkspaceCache {
  std::mutex mu;
  std::map<std::pair<int, void*>, std::pair<void*, size_t>> buffers;

  void* get(const char* fn, int device, void* stream, size_t bytes) {
    auto& [ptr, size] = buffers[{device, stream}];
    if (size >= bytes) return ptr;
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (ptr != nullptr) {
      check_cuda(cudaFreeAsync(ptr, s), fn, "cudaFreeAsync (workspace)");
      ptr = nullptr;
      size = 0;
    }
    const size_t grown = bytes + bytes / 4;  // headroom for slightly larger calls
    check_cuda(cudaMallocAsync(&ptr, grown, s), fn, "cudaMallocAsync (workspace)");
    size = grown;
    return ptr;
  }
};

WorkspaceCache& workspaces() {
  static WorkspaceCache* w = new WorkspaceCache();  // never destroyed: no CUDA calls at exit
  return *w;
}

}  // namespace

bool compiled() { return true; }

std::string compiled_archs() { return kKernelTable.archs; }

std::vector<std::string> compiled_kernels() { return kernel_names(kKernelTable); }

void fmha_forward(const FmhaProblem& p, void* stream) {
  const char* fn = "attention";
  check_supported(fn, p);
  DeviceGuard guard(fn, p.device.index);
  const ComputeCapability cc = compute_capability(fn, p.device.index);
  const KernelEntry& e = find_kernel(kKernelTable, fn, cc.major, cc.minor, Direction::Forward, p.dtype,
                                     int(p.head_dim_qk), std::getenv("ATTNKIT_CUDA_VARIANT"));
  e.forward(p, stream);
}

void fmha_backward(const FmhaBackwardProblem& p, void* stream) {
  const char* fn = "attention_backward";
  check_supported(fn, p);
  AK_CHECK(p.fwd.lse != nullptr, InvalidArgument, fn, ": the forward's lse is required");
  DeviceGuard guard(fn, p.fwd.device.index);
  const ComputeCapability cc = compute_capability(fn, p.fwd.device.index);
  const KernelEntry& e = find_kernel(kKernelTable, fn, cc.major, cc.minor, Direction::Backward,
                                     p.fwd.dtype, int(p.fwd.head_dim_qk), std::getenv("ATTNKIT_CUDA_VARIANT"));
  WorkspaceCache& w = workspaces();
  std::lock_guard<std::mutex> lock(w.mu);
  void* ws = w.get(fn, p.fwd.device.index, stream, e.workspace_bytes(p));
  e.backward(p, ws, stream);
}

}  // namespace attnkit::cuda
