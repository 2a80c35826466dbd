// attnkit internal: validated, backend-neutral description of a linear
// attention call (DESIGN §2.4), produced by linear_api.cpp.
#pragma once

#include <cstdint>

#include "problem.hpp"

namespace attnkit {

enum class GateKind : uint8_t { None, PerHead, PerToken };

// The gate g (log space), read element-wise in its own dtype: per head g[h]
// (head_stride), per token g[b, t, h] (batch/token/head strides; varlen: batch 0).
struct GateOperand {
  GateKind kind = GateKind::None;
  void* data = nullptr;
  DType dtype = DType::Float32;
  int64_t batch_stride = 0, token_stride = 0, head_stride = 0;
};

// A float32 state tensor [N, H, Dk, Dv] with unit innermost stride.
struct StateOperand {
  float* data = nullptr;
  int64_t seq_stride = 0, head_stride = 0, row_stride = 0;
  float* at(int64_t n, int64_t h) const { return data + n * seq_stride + h * head_stride; }
};

struct LinearProblem {
  DType dtype = DType::Float32;
  Device device{};
  int64_t batch = 0;      // sequences: B, or len(cu_seqlens) - 1
  int64_t seqlen = 0;     // per sequence (varlen: the longest)
  int64_t heads_q = 0, heads_kv = 0;
  int64_t head_dim_k = 0, head_dim_v = 0;
  float scale = 1.f;
  bool is_causal = true;
  bool normalize = false;
  const int32_t* cu_seqlens = nullptr;  // host-readable int32 [batch + 1] (CPU)
  int64_t total = 0;                    // varlen: packed token count
  Operand q, k, v, out;                 // varlen: batch_stride 0
  GateOperand g;
  StateOperand initial_state;           // data null: zeros
  StateOperand final_state;             // data null: not wanted
  bool varlen() const { return cu_seqlens != nullptr; }
};

struct LinearBackwardProblem {
  LinearProblem fwd;          // out / final_state unused
  bool has_dout = false;      // absent: dout = 0
  Operand dout, dq, dk, dv;
  GateOperand dg;             // kind None: not wanted; else laid out like fwd.g
  StateOperand dfinal_state;  // data null: 0
  StateOperand dinitial_state;  // data null: not wanted
};

}  // namespace attnkit
