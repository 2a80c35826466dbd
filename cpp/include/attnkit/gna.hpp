// attnkit: neighborhood attention / GNA (DESIGN §2.2), C++ entry points.
//
// Inputs are [B, *spatial, H, D] with 1-3 spatial dims (X | X, Y | X, Y, Z); K and V
// have the spatial shape of Q. Each query sees a box of keys around it, given per
// spatial dim by a window (kernel_size), a stride, a dilation and a causal flag.
// Included at the end of attnkit/attnkit.hpp.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "attnkit/attnkit.hpp"

namespace attnkit {

// Per-dim arguments hold either one value (used for every spatial dim) or exactly
// one value per spatial dim; anything else is an InvalidArgument.
struct NeighborhoodOptions {
  std::vector<int64_t> kernel_size;    // window per dim, 2 <= k, k * dilation <= size
  std::vector<int64_t> stride{1};      // 1 <= stride <= kernel_size
  std::vector<int64_t> dilation{1};    // >= 1
  std::vector<bool> is_causal{false};
  float scale = NAN;                   // NaN = head_dim_qk ** -0.5
  // Extra key/value tokens every query attends to, unmasked ([B, n_extra, Hkv, D] and
  // [B, n_extra, Hkv, Dv], dtype of q); both or neither. Merged exactly through the LSE.
  const TensorView* additional_keys = nullptr;
  const TensorView* additional_values = nullptr;
};

// q [B, *S, Hq, D], k [B, *S, Hkv, D], v [B, *S, Hkv, Dv] -> out [B, *S, Hq, Dv] and,
// when lse is given, lse [B, *S, Hq] (float32, natural log).
void neighborhood_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                            const TensorView& out, const TensorView* lse,
                            const NeighborhoodOptions& opts, const ExecConfig& exec = {});

// Gradients of neighborhood_attention(): dq, dk, dv (shapes of q, k, v) and, when
// opts has additional keys/values, d_additional_keys / d_additional_values (required
// then). `out` and `lse` are the forward's (with the additional tokens merged in);
// `dlse` (optional, lse's shape and strides) is the gradient reaching lse.
// Deterministic: the same inputs give bitwise the same gradients for any thread count.
void neighborhood_attention_backward(const TensorView& dout, const TensorView& q,
                                     const TensorView& k, const TensorView& v,
                                     const TensorView& out, const TensorView& lse,
                                     const TensorView& dq, const TensorView& dk,
                                     const TensorView& dv, const NeighborhoodOptions& opts,
                                     const ExecConfig& exec = {}, const TensorView* dlse = nullptr,
                                     const TensorView* d_additional_keys = nullptr,
                                     const TensorView* d_additional_values = nullptr);

}  // namespace attnkit
