// attnkit CPU backend: the 1-D sequence schedule (dense, causal, sliding window,
// varlen). One problem per (sequence, query head); query i of a sequence sees
// keys [lo(i), hi(i)) with bottom-right alignment (DESIGN §2.1).
#pragma once

#include <algorithm>
#include <cmath>

#include "engine.hpp"

namespace attnkit::cpu {

class SeqSchedule {
 public:
  SeqSchedule(const FmhaProblem& p, int64_t kv_tile) : p_(p), kv_tile_(kv_tile) {
    group_ = p.heads_q / p.heads_kv;
  }

  int64_t num_problems() const { return p_.batch * p_.heads_q; }
  int64_t num_kv_problems() const { return p_.batch * p_.heads_kv; }

  ProblemRef problem(int64_t idx) const {
    ProblemRef r;
    const int64_t s = idx / p_.heads_q;
    r.hq = idx % p_.heads_q;
    r.hkv = r.hq / group_;
    r.kvp = s * p_.heads_kv + r.hkv;
    int64_t q0, sq, sk;
    seq_extent(s, &q0, &sq, nullptr, &sk);
    r.b = p_.varlen() ? 0 : s;
    r.n_q_tiles = (sq + kQ - 1) / kQ;
    r.aux[0] = q0;       // first query token id
    r.aux[1] = sq;
    r.aux[2] = sk;
    return r;
  }

  KvProblemRef kv_problem(int64_t kp) const {
    KvProblemRef r;
    const int64_t s = kp / p_.heads_kv;
    r.hkv = kp % p_.heads_kv;
    r.b = p_.varlen() ? 0 : s;
    int64_t k0, sk;
    seq_extent(s, nullptr, nullptr, &k0, &sk);
    r.nk = sk;
    r.token_base = k0;
    return r;
  }

  int64_t kv_token(const KvProblemRef& kv, int64_t idx) const { return kv.token_base + idx; }

  template <class F>
  void for_each_problem_of_kv(int64_t kp, F&& f) const {
    const int64_t s = kp / p_.heads_kv, hkv = kp % p_.heads_kv;
    for (int64_t g = 0; g < group_; ++g) f(s * p_.heads_q + hkv * group_ + g);
  }

  int q_tile(const ProblemRef& r, int64_t t, int64_t* tok) const {
    const int64_t q0 = t * kQ;
    const int n = static_cast<int>(std::min<int64_t>(kQ, r.aux[1] - q0));
    for (int i = 0; i < n; ++i) tok[i] = r.aux[0] + q0 + i;
    return n;
  }

  // Each kv tile of [lo, hi) is split where the keys every row of the q tile
  // sees begin and end ([full_lo, full_hi), rounded to 32 so that the AMX path's
  // 32-key alignment adds no work), so only the diagonal bands need the mask.
  template <class F>
  void for_each_kv_tile(const ProblemRef& r, int64_t t, F&& f) const {
    const int64_t sq = r.aux[1], sk = r.aux[2];
    const int64_t q0 = t * kQ, q1 = std::min(sq, q0 + kQ);
    const int64_t lo = lo_of(q0, sq, sk), hi = hi_of(q1 - 1, sq, sk);
    if (lo >= hi) return;
    const int64_t flo = lo_of(q1 - 1, sq, sk), fhi = hi_of(q0, sq, sk);
    const int64_t full_lo = flo == 0 ? 0 : round_up(flo, 32);
    const int64_t full_hi = fhi == sk ? sk : fhi / 32 * 32;
    for (int64_t kb = lo / kv_tile_ * kv_tile_; kb < hi; kb += kv_tile_) {
      const int64_t a = std::max(kb, lo), e = std::min(kb + kv_tile_, hi);
      const int64_t fa = std::clamp(full_lo, a, e), fe = std::clamp(full_hi, fa, e);
      if (fa > a) f(a, fa, false);
      if (fe > fa) f(fa, fe, true);
      if (e > fe) f(fe, e, false);
    }
  }

  // Rows see contiguous key ranges whose ends grow with the row, so for each key
  // the masked rows are a prefix (key at or past hi) and a suffix (key before lo).
  void mask(const ProblemRef& r, int64_t t, int64_t k0, int64_t nk, float* S) const {
    const int64_t sq = r.aux[1], sk = r.aux[2];
    int64_t lo[kQ], hi[kQ];
    for (int i = 0; i < kQ; ++i) {
      lo[i] = lo_of(t * kQ + i, sq, sk);
      hi[i] = hi_of(t * kQ + i, sq, sk);
    }
    int prefix = 0, suffix = kQ;  // rows [0, prefix) have hi <= key; rows [suffix, kQ) have lo > key
    while (suffix > 0 && lo[suffix - 1] > k0) --suffix;
    for (int64_t j = 0; j < nk; ++j) {
      const int64_t key = k0 + j;
      while (prefix < kQ && hi[prefix] <= key) ++prefix;
      while (suffix < kQ && lo[suffix] <= key) ++suffix;
      float* s = S + j * kQ;
      std::fill(s, s + prefix, -INFINITY);
      std::fill(s + std::max(suffix, prefix), s + kQ, -INFINITY);
    }
  }

 private:
  // First and one-past-last key of query row i (clamped to [0, sk]).
  int64_t lo_of(int64_t i, int64_t sq, int64_t sk) const {
    if (p_.window.left < 0) return 0;
    return std::clamp<int64_t>(i + (sk - sq) - p_.window.left, 0, sk);
  }
  int64_t hi_of(int64_t i, int64_t sq, int64_t sk) const {
    if (p_.window.right < 0) return sk;
    return std::clamp<int64_t>(i + (sk - sq) + p_.window.right + 1, 0, sk);
  }
  void seq_extent(int64_t s, int64_t* q0, int64_t* sq, int64_t* k0, int64_t* sk) const {
    if (p_.varlen()) {
      if (q0) *q0 = p_.cu_seqlens_q[s];
      if (sq) *sq = p_.cu_seqlens_q[s + 1] - p_.cu_seqlens_q[s];
      if (k0) *k0 = p_.cu_seqlens_k[s];
      if (sk) *sk = p_.cu_seqlens_k[s + 1] - p_.cu_seqlens_k[s];
    } else {
      if (q0) *q0 = 0;
      if (sq) *sq = p_.seqlen_q;
      if (k0) *k0 = 0;
      if (sk) *sk = p_.seqlen_k;
    }
  }

  FmhaProblem p_;
  int64_t kv_tile_;
  int64_t group_ = 1;
};

}  // namespace attnkit::cpu
