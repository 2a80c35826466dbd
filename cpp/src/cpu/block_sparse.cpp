// attnkit CPU backend: block-sparse attention = the engine run with the
// block-sparse tile schedule.
#include "block_sparse.hpp"

#include "block_sparse_schedule.hpp"
#include "engine.hpp"

namespace attnkit::cpu {

namespace {

// Score tile heights, as for dense attention (fmha.cpp): merged runs of listed
// kv blocks are cut into tiles of at most this many keys.
constexpr int64_t kFwdKvTile = 256;
constexpr int64_t kBwdKvTile = 128;

EngineArgs engine_args(const FmhaProblem& p, int threads) {
  EngineArgs a;
  a.dqk = p.head_dim_qk;
  a.dv = p.head_dim_v;
  a.scale = p.scale;
  a.q = TokenLayout::from(p.q, p.dtype);
  a.k = TokenLayout::from(p.k, p.dtype);
  a.v = TokenLayout::from(p.v, p.dtype);
  a.out = TokenLayout::from(p.out, p.dtype);
  if (p.lse) {
    a.lse.data = reinterpret_cast<char*>(p.lse);
    a.lse.dtype = DType::Float32;
    a.lse.batch_stride = p.lse_batch_stride;
    a.lse.token_stride[0] = p.lse_token_stride;
    a.lse.head_stride = p.lse_head_stride;
  }
  a.threads = threads;
  return a;
}

}  // namespace

void block_sparse_forward(const BlockSparseProblem& p, int threads) {
  EngineArgs a = engine_args(p.attn, threads);
  a.kv_tile = kFwdKvTile;
  forward(BlockSparseSchedule(p, threads), a);
}

void block_sparse_backward(const BlockSparseBackwardProblem& bp, int threads) {
  EngineArgs a = engine_args(bp.fwd.attn, threads);
  a.kv_tile = kBwdKvTile;
  const DType dt = bp.fwd.attn.dtype;
  a.dout = TokenLayout::from(bp.dout, dt);
  a.dq = TokenLayout::from(bp.dq, dt);
  a.dk = TokenLayout::from(bp.dk, dt);
  a.dv_ = TokenLayout::from(bp.dv, dt);
  if (bp.dlse) {
    a.dlse = a.lse;
    a.dlse.data = reinterpret_cast<char*>(const_cast<float*>(bp.dlse));
  }
  backward(BlockSparseSchedule(bp.fwd, threads), a);
}

}  // namespace attnkit::cpu
