// attnkit: block-sparse attention (DESIGN §2.3).
//
// A block mask splits queries into blocks of q_block rows and keys into blocks
// of kv_block keys (the last block of each may be partial). For every (batch,
// head, q block) it lists the kv blocks that the q block attends -- FlexAttention's
// kv_num_blocks / kv_indices format:
//
//   kv_num_blocks  int32 [Bm, Hm, nQ]        how many entries of kv_indices are used
//   kv_indices     int32 [Bm, Hm, nQ, maxK]  kv block ids; entries past the count are ignored
//
// with nQ = ceil(Sq / q_block), kv block ids in [0, ceil(Sk / kv_block)), no id
// repeated within a row, Bm in {1, B} and Hm in {1, Hkv, Hq} (an Hkv-sized head
// axis applies to every query head of the group). Listed blocks are attended
// fully; is_causal additionally applies the element-wise causal mask, bottom-right
// aligned as in attention(). The order of the listed ids does not matter.
#pragma once

#include <cmath>
#include <cstdint>

#include "attnkit/attnkit.hpp"

namespace attnkit {

struct BlockMaskView {
  int64_t q_block = 0;   // query rows per block (>= 1)
  int64_t kv_block = 0;  // keys per block (>= 1)
  TensorView kv_num_blocks;  // int32 [Bm, Hm, nQ], any strides, host (CPU) memory
  TensorView kv_indices;     // int32 [Bm, Hm, nQ, maxK], any strides, host (CPU) memory
};

struct BlockSparseOptions {
  bool is_causal = false;  // bottom-right aligned element mask on top of the blocks
  float scale = NAN;       // NaN = head_dim_qk ** -0.5
};

// q [B, Sq, Hq, D], k [B, Sk, Hkv, D], v [B, Sk, Hkv, Dv] -> out [B, Sq, Hq, Dv],
// lse [B, Sq, Hq] float32 (optional). Rows that attend no key give 0 and -inf.
void block_sparse_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                            const BlockMaskView& mask, const TensorView& out,
                            const TensorView* lse, const BlockSparseOptions& opts = {},
                            const ExecConfig& exec = {});

// Gradients of block_sparse_attention() (dq, dk, dv have the shapes of q, k, v),
// deterministic on the CPU. `dlse` (optional, lse's shape and strides) is the
// gradient reaching the forward's lse.
void block_sparse_attention_backward(const TensorView& dout, const TensorView& q,
                                     const TensorView& k, const TensorView& v,
                                     const TensorView& out, const TensorView& lse,
                                     const BlockMaskView& mask, const TensorView& dq,
                                     const TensorView& dk, const TensorView& dv,
                                     const BlockSparseOptions& opts = {},
                                     const ExecConfig& exec = {}, const TensorView* dlse = nullptr);

}  // namespace attnkit
