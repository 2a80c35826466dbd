// attnkit CPU backend: dense / causal / window / varlen attention = the engine
// run with the 1-D sequence schedule.
#include "backend.hpp"
#include "engine.hpp"
#include "schedule_seq.hpp"

namespace attnkit::cpu {

namespace {

// Score tile height: 256 keys amortise the per-tile softmax and rescale work and
// the AMX accumulator traffic of O^T (~5% over 128 keys, measured), while S^T
// (256 x 64 floats) stays in L2 next to the query panel.
constexpr int64_t kFwdKvTile = 256;
constexpr int64_t kBwdKvTile = 128;

}  // namespace

void fmha_forward(const FmhaProblem& p, int threads) {
  const EngineArgs a = sequence_args(p, threads, kFwdKvTile);
  forward(SeqSchedule(p, a.kv_tile), a);
}

void fmha_backward(const FmhaBackwardProblem& bp, int threads) {
  EngineArgs a = sequence_args(bp.fwd, threads, kBwdKvTile);
  set_sequence_grads(a, bp, bp.fwd.dtype);
  backward(SeqSchedule(bp.fwd, a.kv_tile), a);
}

}  // namespace attnkit::cpu
