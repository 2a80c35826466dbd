// attnkit CPU backend: the types shared by the engine (engine.hpp) and its
// math policies (math_fma.hpp, math_amx.hpp): operand addressing, problem
// references handed out by schedules, and the engine's arguments.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../problem.hpp"
#include "kernels.hpp"
#include "parallel.hpp"

namespace attnkit::cpu {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Maps (batch, token id, head) to an element offset. Token ids are flat over
// 1-3 token dims (row-major), so strided multi-dimensional inputs need no copy.
struct TokenLayout {
  char* data = nullptr;
  DType dtype = DType::Float32;
  int64_t batch_stride = 0, head_stride = 0;
  int ndims = 1;
  int64_t dims[3] = {1, 1, 1};
  int64_t token_stride[3] = {0, 0, 0};

  int64_t offset(int64_t b, int64_t t, int64_t h) const {
    int64_t off = b * batch_stride + h * head_stride;
    if (ndims == 1) return off + t * token_stride[0];
    for (int d = ndims - 1; d >= 0; --d) {
      off += (t % dims[d]) * token_stride[d];
      t /= dims[d];
    }
    return off;
  }
  void* row(int64_t b, int64_t t, int64_t h) const {
    return data + offset(b, t, h) * dtype_size(dtype);
  }
  static TokenLayout from(const Operand& o, DType dt) {
    TokenLayout l;
    l.data = static_cast<char*>(o.data);
    l.dtype = dt;
    l.batch_stride = o.batch_stride;
    l.head_stride = o.head_stride;
    l.token_stride[0] = o.token_stride;
    return l;
  }
};

struct ProblemRef {
  int64_t b = 0;        // batch index used for operand addressing
  int64_t hq = 0, hkv = 0;
  int64_t kvp = 0;      // kv problem id
  int64_t n_q_tiles = 0;
  int64_t aux[6] = {};  // schedule-private (sequence lengths, offsets, group...)
};

struct KvProblemRef {
  int64_t b = 0, hkv = 0;
  int64_t nk = 0;          // keys in this kv problem's index space
  int64_t token_base = 0;  // for identity schedules
  int64_t aux[4] = {};
};

// Rows of [B, S, H, D] operands are strided by H*D elements, which the hardware
// prefetchers do not follow across pages: loops over rows ask for them ahead.
constexpr int64_t kPrefetchRows = 8;
inline void prefetch_row(const void* p, int64_t bytes, bool write = false) {
  const char* c = static_cast<const char*>(p);
  for (int64_t o = 0; o < bytes; o += 64) {
    if (write)
      __builtin_prefetch(c + o, 1);
    else
      __builtin_prefetch(c + o, 0);
  }
}

struct EngineArgs {
  int64_t dqk = 0, dv = 0;
  float scale = 1.f;
  float softcap = 0.f;
  TokenLayout q, k, v, out;
  // lse: float32, addressed like the other operands (head_dim absent)
  TokenLayout lse;
  // backward only
  TokenLayout dout, dq, dk, dv_;
  TokenLayout dlse;  // optional, laid out like lse
  int threads = 0;
  int64_t kv_tile = 128;  // max keys per score tile
};

// Engine arguments of a token-sequence problem ([B, S, H, D] operands, lse
// [B, S, H]): dense attention (fmha.cpp) and block-sparse attention.
inline EngineArgs sequence_args(const FmhaProblem& p, int threads, int64_t kv_tile) {
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
  a.kv_tile = kv_tile;
  return a;
}

// The backward operands (dout, dq, dk, dv, optional dlse laid out like lse) of
// a token-sequence backward problem (FmhaBackwardProblem, BlockSparseBackwardProblem).
template <class BackwardProblem>
void set_sequence_grads(EngineArgs& a, const BackwardProblem& bp, DType dt) {
  a.dout = TokenLayout::from(bp.dout, dt);
  a.dq = TokenLayout::from(bp.dq, dt);
  a.dk = TokenLayout::from(bp.dk, dt);
  a.dv_ = TokenLayout::from(bp.dv, dt);
  if (bp.dlse) {
    a.dlse = a.lse;
    a.dlse.data = reinterpret_cast<char*>(const_cast<float*>(bp.dlse));
  }
}

// Active query vectors (see for_each_kv_tile in engine.hpp): a schedule may tell
// the engine that only some of a tile's kQ / kLanes query vectors (lanes
// [16v, 16v+16)) see a key range; the others' work is skipped.
constexpr uint32_t kAllQueryVectors = (1u << (kQ / kLanes)) - 1;
struct QueryVectors {
  uint32_t bits = kAllQueryVectors;
};

// A schedule whose key ranges mostly start on multiples of 16 keys (rather than
// of 32, the AMX tile depth) declares `static constexpr bool kKeyRanges16 = true;`:
// the AMX policy then starts chunks on multiples of 16 (it keeps a second copy of
// V^T / K^T shifted by 16 keys) instead of widening each range to 32-aligned keys.
template <class S, class = void>
struct key_ranges_16 : std::false_type {};
template <class S>
struct key_ranges_16<S, std::void_t<decltype(S::kKeyRanges16)>> : std::bool_constant<S::kKeyRanges16> {};

namespace detail {
// One key range handed out by a schedule's for_each_kv_tile.
struct KvRange {
  int64_t k0, k1;
  uint32_t bits;
  bool full;
};

// A piece of a multi-segment chunk of one query vector: keys [c0, c0 + nk) of
// the segment [k0, k1), stored from score row `row` on (rows of the pieces of a
// chunk follow each other).
struct ChunkPiece {
  int64_t c0, nk, k0, k1, row;
  bool full;
};
constexpr int kMaxPieces = 32;

inline uint32_t active_vectors() { return kAllQueryVectors; }
inline uint32_t active_vectors(QueryVectors qv) { return qv.bits & kAllQueryVectors; }

// f(v0, v1) for each maximal run [v0, v1) of set bits; all bits = one run [0, kQ/kLanes).
template <class F>
void for_each_vector_run(uint32_t bits, F&& f) {
  constexpr int nv = kQ / kLanes;
  for (int v = 0; v < nv;) {
    if (!((bits >> v) & 1u)) {
      ++v;
      continue;
    }
    int e = v + 1;
    while (e < nv && ((bits >> e) & 1u)) ++e;
    f(v, e);
    v = e;
  }
}

// Sets the lanes of the vectors in `which` to `value` in a tile [nk][kQ].
inline void fill_vectors(float* S, int64_t nk, uint32_t which, float value) {
  for_each_vector_run(which, [&](int v0, int v1) {
    for (int64_t j = 0; j < nk; ++j) std::fill(S + j * kQ + v0 * kLanes, S + j * kQ + v1 * kLanes, value);
  });
}

}  // namespace detail

}  // namespace attnkit::cpu
