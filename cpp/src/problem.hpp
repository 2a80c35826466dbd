// attnkit internal: validated, backend-neutral descriptions of one call.
//
// The host side (validate.cpp) turns user tensors + options into these structs;
// every backend (CPU engine, CUDA kernels) consumes them and nothing else, so
// validation and argument resolution happen exactly once.
#pragma once

#include <cstdint>

#include "attnkit/tensor.hpp"

namespace attnkit {

// A strided 4-D operand [batch, tokens, heads, dim] with unit innermost stride.
// For varlen ("packed") inputs batch==1 and `tokens` is the total token count.
struct Operand {
  void* data = nullptr;
  int64_t batch_stride = 0;  // elements
  int64_t token_stride = 0;  // elements
  int64_t head_stride = 0;   // elements
};

// Which keys a query row sees (DESIGN §2.1); all coordinates are within one sequence.
// Query i sees key j iff lo(i) <= j <= hi(i) with
//   lo(i) = left  < 0 ? 0        : i + offset - left
//   hi(i) = right < 0 ? Sk - 1   : i + offset + right,     offset = Sk - Sq (bottom-right).
// is_causal is window (left, 0) with left possibly unbounded.
struct Window1D {
  int64_t left = -1;   // -1: unbounded
  int64_t right = -1;  // -1: unbounded
  bool any() const { return left >= 0 || right >= 0; }
};

struct FmhaProblem {
  DType dtype = DType::Float32;
  Device device{};
  int64_t batch = 0;        // number of sequences (B, or len(cu_seqlens)-1 for varlen)
  int64_t seqlen_q = 0;     // per sequence; for varlen: the maximum
  int64_t seqlen_k = 0;
  int64_t heads_q = 0;
  int64_t heads_kv = 0;
  int64_t head_dim_qk = 0;
  int64_t head_dim_v = 0;
  float scale = 1.f;
  float softcap = 0.f;      // 0: off
  Window1D window{};        // causal folds into window.right = 0
  bool is_causal = false;   // kept for kernels that specialise on it
  // varlen: int32 offsets of length batch+1 (in the tensors' device memory), else null
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_k = nullptr;
  int64_t total_q = 0, total_k = 0;  // varlen: packed token counts
  Operand q, k, v, out;
  float* lse = nullptr;             // [B, Sq, Hq] (or [total_q, Hq]) float32, may be null
  int64_t lse_batch_stride = 0, lse_token_stride = 0, lse_head_stride = 0;
  bool varlen() const { return cu_seqlens_q != nullptr; }
};

struct FmhaBackwardProblem {
  FmhaProblem fwd;          // q, k, v, out, lse (lse required) as in the forward
  Operand dout, dq, dk, dv;
  // Optional gradient w.r.t. the forward's lse (same layout as lse): d lse_i / d s_ij
  // = P_ij, so it folds into the backward as delta_i -= dlse_i.
  const float* dlse = nullptr;
};

}  // namespace attnkit
