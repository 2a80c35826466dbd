// attnkit: attention kernels for the CPU and NVIDIA GPUs.
//
// C++ entry points. Callers own every buffer: inputs and pre-allocated outputs
// are passed as TensorViews (any strides with a unit innermost stride); the
// device is taken from the tensors. Errors are thrown as attnkit::Error.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "attnkit/error.hpp"
#include "attnkit/tensor.hpp"
#include "attnkit/version.hpp"

namespace attnkit {

// How a call runs (not what it computes).
struct ExecConfig {
  void* stream = nullptr;  // CUDA: cudaStream_t to run on (null = default stream)
  int num_threads = 0;     // CPU: worker threads (0 = OpenMP default)
};

// ---------------------------------------------------------------- FMHA (DESIGN §2.1)
struct AttentionOptions {
  bool is_causal = false;          // bottom-right aligned
  int64_t window_left = -1;        // -1 = unbounded
  int64_t window_right = -1;       // -1 = unbounded; is_causal forces 0
  float softcap = 0.f;             // 0 = off
  float scale = NAN;               // NaN = head_dim_qk ** -0.5
  // varlen: int32 [B+1] offsets into packed [total, H, D] tensors (both or neither)
  const TensorView* cu_seqlens_q = nullptr;
  const TensorView* cu_seqlens_k = nullptr;
};

// q [B, Sq, Hq, D], k [B, Sk, Hkv, D], v [B, Sk, Hkv, Dv] -> out [B, Sq, Hq, Dv],
// lse [B, Sq, Hq] float32 (optional, natural log). Varlen drops the B axis.
void attention(const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& out, const TensorView* lse, const AttentionOptions& opts = {},
               const ExecConfig& exec = {});

// Gradients of attention(): dq, dk, dv are written (same shapes as q, k, v).
// `lse` is the forward's float32 log-sum-exp; `dlse` (optional, lse's shape and
// strides) is the gradient flowing into lse when it was used downstream.
void attention_backward(const TensorView& dout, const TensorView& q, const TensorView& k,
                        const TensorView& v, const TensorView& out, const TensorView& lse,
                        const TensorView& dq, const TensorView& dk, const TensorView& dv,
                        const AttentionOptions& opts = {}, const ExecConfig& exec = {},
                        const TensorView* dlse = nullptr);

// Combines partial attentions over disjoint key sets exactly:
// out = sum_i exp(lse_i - lse) * out_i, lse = log sum_i exp(lse_i).
// outs[i]: [..., H, Dv] (any float dtype), lses[i]: [..., H] float32; rows whose
// every lse is -inf give 0 and -inf. CPU tensors.
void merge_attentions(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses,
                      const TensorView& out, const TensorView* lse, const ExecConfig& exec = {});

// ---------------------------------------------------------------- build information
struct BuildInfo {
  std::string version;
  std::string cpu_isa;                    // ISA of the micro-kernels in use
  std::vector<std::string> cpu_isas;      // ISAs compiled in that this CPU can run
  std::vector<std::string> cpu_features;  // relevant features of this CPU
  int max_threads = 1;
  bool openmp = false;
  bool cuda = false;
  std::string cuda_archs;                 // "" when built without CUDA
  std::vector<std::string> cuda_kernels;
};
BuildInfo build_info();

// Forces the CPU micro-kernel ISA ("avx512", "avx2", "generic"; "" = automatic).
void set_cpu_isa(const std::string& name);

}  // namespace attnkit

#include "attnkit/gna.hpp"  // neighborhood attention (needs the declarations above)
#include "attnkit/block_sparse.hpp"  // block-sparse attention (likewise)
#include "attnkit/linear.hpp"  // linear attention (DESIGN §2.4)
