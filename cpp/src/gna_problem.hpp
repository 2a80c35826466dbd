// attnkit internal: validated, backend-neutral description of one neighborhood
// attention call (DESIGN §2.2). gna_api.cpp builds it; the backends consume it.
#pragma once

#include <algorithm>
#include <cstdint>

#include "problem.hpp"

namespace attnkit {

// A strided operand [B, *spatial, H, dim] with unit innermost stride. The spatial
// axes are right-aligned in token_stride[3]: a 1-D input uses token_stride[2], a
// 2-D one token_stride[1..2]; unused axes have size 1 and stride 0.
struct NaOperand {
  void* data = nullptr;
  int64_t batch_stride = 0;
  int64_t token_stride[3] = {0, 0, 0};
  int64_t head_stride = 0;
};

// The neighborhood of one spatial axis (DESIGN §2.2). Unused axes (see NaOperand)
// have size 1 and window 1, which makes them neutral.
struct NaAxis {
  int64_t size = 1;
  int64_t kernel = 1;
  int64_t stride = 1;
  int64_t dilation = 1;
  bool causal = false;

  int64_t groups() const { return dilation; }
  // Number of coordinates x with x % dilation == g.
  int64_t group_len(int64_t g) const { return (size - g + dilation - 1) / dilation; }
  // Half-open window [lo, hi) of in-group index i in a group of length ng.
  void window(int64_t i, int64_t ng, int64_t* lo, int64_t* hi) const {
    if (causal) {
      const int64_t leader = std::min((i / stride) * stride + stride - 1, ng - 1);
      *lo = std::max<int64_t>(leader - (kernel - 1), 0);
      *hi = std::min(i, ng - 1) + 1;
    } else {
      const int64_t wl = kernel / 2, wr = kernel / 2 + kernel % 2 - 1;
      const int64_t leader = std::min((i / stride) * stride + stride / 2, ng - 1);
      const int64_t centre = std::clamp(leader, wl, ng - 1 - wr);
      *lo = centre - wl;
      *hi = centre + wr + 1;
    }
  }
};

struct NaProblem {
  DType dtype = DType::Float32;
  Device device{};
  int ndim = 1;  // spatial dims, 1..3
  int64_t batch = 0, heads_q = 0, heads_kv = 0, head_dim_qk = 0, head_dim_v = 0;
  NaAxis axis[3];  // right-aligned like NaOperand::token_stride
  float scale = 1.f;
  NaOperand q, k, v, out;
  float* lse = nullptr;  // optional; [B, *spatial, Hq] float32
  NaOperand lse_layout;  // strides of lse (data unused)
  // Additional KV tokens ([B, n_extra, Hkv, D|Dv]); n_extra == 0 when absent.
  int64_t n_extra = 0;
  Operand extra_k, extra_v;

  int64_t tokens() const { return axis[0].size * axis[1].size * axis[2].size; }
};

struct NaBackwardProblem {
  NaProblem fwd;  // lse required
  NaOperand dout, dq, dk, dv;
  const float* dlse = nullptr;  // optional, laid out like lse
  Operand d_extra_k, d_extra_v;  // when fwd.n_extra > 0
};

}  // namespace attnkit
