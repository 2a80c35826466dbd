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

}  // namespace

void block_sparse_forward(const BlockSparseProblem& p, int threads) {
  forward(BlockSparseSchedule(p, threads), sequence_args(p.attn, threads, kFwdKvTile));
}

void block_sparse_backward(const BlockSparseBackwardProblem& bp, int threads) {
  EngineArgs a = sequence_args(bp.fwd.attn, threads, kBwdKvTile);
  set_sequence_grads(a, bp, bp.fwd.attn.dtype);
  backward(BlockSparseSchedule(bp.fwd, threads), a);
}

}  // namespace attnkit::cpu
