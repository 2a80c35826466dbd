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

EngineArgs engine_args(const FmhaProblem& p, int threads) {
  EngineArgs a;
  a.dqk = p.head_dim_qk;
  a.dv = p.head_dim_v;
  a.scale = p.scale;
  a.softcap = p.softcap;
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

void fmha_forward(const FmhaProblem& p, int threads) {
  EngineArgs a = engine_args(p, threads);
  a.kv_tile = kFwdKvTile;
  forward(SeqSchedule(p, a.kv_tile), a);
}

void fmha_backward(const FmhaBackwardProblem& bp, int threads) {
  EngineArgs a = engine_args(bp.fwd, threads);
  a.kv_tile = kBwdKvTile;
  a.dout = TokenLayout::from(bp.dout, bp.fwd.dtype);
  a.dq = TokenLayout::from(bp.dq, bp.fwd.dtype);
  a.dk = TokenLayout::from(bp.dk, bp.fwd.dtype);
  a.dv_ = TokenLayout::from(bp.dv, bp.fwd.dtype);
  if (bp.dlse) {
    a.dlse = a.lse;
    a.dlse.data = reinterpret_cast<char*>(const_cast<float*>(bp.dlse));
  }
  backward(SeqSchedule(bp.fwd, a.kv_tile), a);
}

}  // namespace attnkit::cpu
