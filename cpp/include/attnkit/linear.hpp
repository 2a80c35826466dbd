// attnkit: linear attention (DESIGN §2.4), C++ entry points.
//
// One recurrence covers plain linear attention, RetNet, Lightning Attention
// and simple-GLA / Mamba2-style scalar gating:
//
//   S_t = exp(g_t) * S_{t-1} + k_t^T v_t,     o_t = scale * q_t S_t
//
// with the gate g absent (g = 0), per head ([Hq], a constant decay) or per
// token ([B, S, Hq], or [total, Hq] for varlen), in log space. States are
// float32 [N, Hq, Dk, Dv] (N = batch, or the number of varlen sequences).
// See docs/linear.md for the exact semantics and the choices made.
#pragma once

#include <cmath>

#include "attnkit/attnkit.hpp"

namespace attnkit {

struct LinearAttentionOptions {
  bool is_causal = true;   // false: o = scale * q (S_0 + sum_j k_j^T v_j), no gate
  float scale = NAN;       // NaN = Dk ** -0.5
  // o_t = (q_t S_t) / (q_t z_t), z_t = exp(g_t) z_{t-1} + k_t; 0 where q_t z_t == 0.
  // Cannot be combined with initial/final states (z is not part of the state).
  bool normalize = false;
  const TensorView* g = nullptr;              // [Hq] or [B, S, Hq] ([total, Hq] varlen); any float dtype
  const TensorView* initial_state = nullptr;  // float32 [N, Hq, Dk, Dv], optional (0 when absent)
  const TensorView* cu_seqlens = nullptr;     // int32 [N + 1] offsets into packed [total, H, D] tensors
};

// q [B, S, Hq, Dk], k [B, S, Hkv, Dk], v [B, S, Hkv, Dv] -> out [B, S, Hq, Dv] (q's dtype);
// final_state (optional) float32 [N, Hq, Dk, Dv] = S after the last token. final_state may
// alias options.initial_state (an in-place decode step).
void linear_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                      const TensorView& out, const TensorView* final_state,
                      const LinearAttentionOptions& opts = {}, const ExecConfig& exec = {});

// Gradients of linear_attention(). dout (optional: absent = 0) has out's shape; dfinal_state
// (optional) is the gradient reaching final_state. dq, dk, dv are written (shapes of q, k, v);
// dg (optional, the shape and dtype of options.g) and dinitial_state (optional, float32 state
// shape) too. Deterministic.
void linear_attention_backward(const TensorView* dout, const TensorView& q, const TensorView& k,
                               const TensorView& v, const TensorView* dfinal_state,
                               const TensorView& dq, const TensorView& dk, const TensorView& dv,
                               const TensorView* dg, const TensorView* dinitial_state,
                               const LinearAttentionOptions& opts = {},
                               const ExecConfig& exec = {});

// One decode step (or a few tokens): q [B, n, Hq, Dk], ..., state float32 [B, Hq, Dk, Dv];
// writes out and new_state (which may be `state` itself, updating it in place).
// g: nullptr, [Hq] or [B, n, Hq]. Same as linear_attention(causal, initial_state = state,
// final_state = new_state), so a prefix call followed by steps equals one full call.
inline void linear_attention_step(const TensorView& q, const TensorView& k, const TensorView& v,
                                  const TensorView& state, const TensorView& out,
                                  const TensorView& new_state, const TensorView* g = nullptr,
                                  float scale = NAN, const ExecConfig& exec = {}) {
  LinearAttentionOptions o;
  o.is_causal = true;
  o.scale = scale;
  o.g = g;
  o.initial_state = &state;
  linear_attention(q, k, v, out, &new_state, o, exec);
}

}  // namespace attnkit
