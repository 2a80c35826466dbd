// attnkit internal: a validated block-sparse call (DESIGN §2.3), as consumed by
// the backends. Built by block_sparse_api.cpp.
#pragma once

#include <cstdint>

#include "problem.hpp"

namespace attnkit {

struct BlockSparseProblem {
  // q, k, v, out, lse, shapes, scale; attn.is_causal carries is_causal (window unused).
  FmhaProblem attn;
  int64_t q_block = 1, kv_block = 1;
  int64_t num_q_blocks = 0;   // ceil(Sq / q_block)
  int64_t num_kv_blocks = 0;  // ceil(Sk / kv_block)
  int64_t mask_batch = 1;     // 1 (broadcast) or B
  int64_t mask_heads = 1;     // 1 (broadcast), Hkv or Hq
  bool mask_heads_are_kv = false;  // mask_heads == Hkv != Hq: head h reads row h / (Hq / Hkv)
  int64_t max_blocks = 0;     // kv_indices.shape[3]
  // Host pointers + element strides, validated: counts in [0, max_blocks], the
  // counted ids in [0, num_kv_blocks) and distinct within their row.
  const int32_t* kv_num_blocks = nullptr;
  int64_t num_stride[3] = {0, 0, 0};
  const int32_t* kv_indices = nullptr;
  int64_t idx_stride[4] = {0, 0, 0, 0};

  // Mask row (batch b, mask head, q block) for query head hq.
  int64_t mask_b(int64_t b) const { return mask_batch == 1 ? 0 : b; }
  int64_t mask_h(int64_t hq) const {
    if (mask_heads == 1) return 0;
    return mask_heads_are_kv ? hq / (attn.heads_q / attn.heads_kv) : hq;
  }
  int32_t count(int64_t mb, int64_t mh, int64_t qb) const {
    return kv_num_blocks[mb * num_stride[0] + mh * num_stride[1] + qb * num_stride[2]];
  }
  int32_t index(int64_t mb, int64_t mh, int64_t qb, int64_t n) const {
    return kv_indices[mb * idx_stride[0] + mh * idx_stride[1] + qb * idx_stride[2] +
                      n * idx_stride[3]];
  }
};

struct BlockSparseBackwardProblem {
  BlockSparseProblem fwd;  // lse required
  Operand dout, dq, dk, dv;
  const float* dlse = nullptr;  // optional, lse's layout
};

}  // namespace attnkit
