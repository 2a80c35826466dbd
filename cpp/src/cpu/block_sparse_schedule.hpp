// attnkit CPU backend: the block-sparse tile schedule (DESIGN §2.3, §3).
//
// The engine walks 64-row query tiles (kQ); the mask is given in q blocks of any
// size. At construction the schedule turns the mask into, per (mask row list,
// q tile), the sorted union of the kv blocks listed for the q blocks the tile
// covers, with a 64-bit row mask per kv block (bit i: row i of the tile belongs
// to a q block that lists it). Consecutive kv blocks merge into one key range,
// so dense stretches run as long score tiles. A range is `full` -- the engine's
// unmasked fast path -- when every valid row of the tile sees all of its keys:
// always the case when the tile lies inside one q block (q_block a multiple of
// 64, or 64 itself) and is_causal does not cut the range. Under is_causal a block
// is split where the keys every row sees end (rounded down to 32, the AMX path's
// key granularity), so only the diagonal band is masked. Only non-full ranges
// evaluate mask(), from the stored row masks and the causal bound, and tell the
// engine which 16-row query vectors see them at all (the others are skipped);
// no token x token mask exists anywhere. Memory: O(listed blocks x tiles per q block).
//
// Both engine directions are query-major, so the backward reuses these kv lists
// as they are: no transposed (q-major) lists are needed on the CPU (see
// docs/block_sparse.md).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../block_sparse_problem.hpp"
#include "engine.hpp"
#include "parallel.hpp"

namespace attnkit::cpu {

class BlockSparseSchedule {
  static_assert(kQ <= 64, "row masks are 64-bit: one bit per query row of a tile");

 public:
  // A run of consecutive listed kv blocks of one q tile, as a key range.
  struct Range {
    int64_t k0 = 0, k1 = 0;   // keys [k0, k1)
    int64_t first_rows = 0;   // non-full ranges: row mask of the block holding k0 in Tile::rows
    uint32_t vectors = kAllQueryVectors;  // query vectors (16 rows) that see any key of it
    bool full = false;        // no element of the tile x range is masked
  };
  struct Tile {
    std::vector<Range> ranges;
    std::vector<uint64_t> rows;  // row masks, one per kv block of each non-full range
  };

  BlockSparseSchedule(const BlockSparseProblem& p, int threads) : p_(p) {
    const FmhaProblem& a = p.attn;
    group_ = a.heads_q / a.heads_kv;
    n_tiles_ = (a.seqlen_q + kQ - 1) / kQ;
    offset_ = a.seqlen_k - a.seqlen_q;
    const int64_t n_lists = p.mask_batch * p.mask_heads;
    tiles_.resize(static_cast<size_t>(n_lists * n_tiles_));
    // The build is O(listed blocks x tiles per q block); small ones (the usual
    // case: ~10^4 entries) run on the calling thread, since one more parallel
    // region costs more than it saves, most of all on a shared machine where a
    // preempted worker stalls the whole team at the barrier.
    int64_t work = 0;
    const int64_t tiles_per_block = p.q_block / kQ + 2;
    for (int64_t mb = 0; mb < p.mask_batch; ++mb)
      for (int64_t mh = 0; mh < p.mask_heads; ++mh)
        for (int64_t qb = 0; qb < p.num_q_blocks; ++qb) work += p.count(mb, mh, qb);
    work *= tiles_per_block;
    const int nt = work < (int64_t(1) << 18) ? 1 : resolve_threads(threads);
    // Per-thread scratch: row-mask accumulators indexed by kv block, and the
    // list of blocks touched by the current tile.
    std::vector<uint64_t> acc(static_cast<size_t>(nt * p.num_kv_blocks), 0);
    std::vector<std::vector<int32_t>> touched(static_cast<size_t>(nt));
    parallel_for(n_lists * n_tiles_, nt, [&](int64_t it) {
      const int th = thread_index();
      build_tile(it / n_tiles_, it % n_tiles_, acc.data() + th * p_.num_kv_blocks, touched[th],
                 tiles_[static_cast<size_t>(it)]);
    });
  }

  int64_t num_problems() const { return p_.attn.batch * p_.attn.heads_q; }
  int64_t num_kv_problems() const { return p_.attn.batch * p_.attn.heads_kv; }

  ProblemRef problem(int64_t idx) const {
    ProblemRef r;
    r.b = idx / p_.attn.heads_q;
    r.hq = idx % p_.attn.heads_q;
    r.hkv = r.hq / group_;
    r.kvp = r.b * p_.attn.heads_kv + r.hkv;
    r.n_q_tiles = n_tiles_;
    const int64_t list = p_.mask_b(r.b) * p_.mask_heads + p_.mask_h(r.hq);
    r.aux[0] = list * n_tiles_;  // first tile of this problem's mask rows
    return r;
  }

  KvProblemRef kv_problem(int64_t kp) const {
    KvProblemRef r;
    r.b = kp / p_.attn.heads_kv;
    r.hkv = kp % p_.attn.heads_kv;
    r.nk = p_.attn.seqlen_k;
    return r;
  }

  int64_t kv_token(const KvProblemRef&, int64_t idx) const { return idx; }

  template <class F>
  void for_each_problem_of_kv(int64_t kp, F&& f) const {
    const int64_t b = kp / p_.attn.heads_kv, hkv = kp % p_.attn.heads_kv;
    for (int64_t g = 0; g < group_; ++g) f(b * p_.attn.heads_q + hkv * group_ + g);
  }

  int q_tile(const ProblemRef&, int64_t t, int64_t* tok) const {
    const int64_t q0 = t * kQ;
    const int n = static_cast<int>(std::min<int64_t>(kQ, p_.attn.seqlen_q - q0));
    for (int i = 0; i < n; ++i) tok[i] = q0 + i;
    return n;
  }

  template <class F>
  void for_each_kv_tile(const ProblemRef& r, int64_t t, F&& f) const {
    // Non-full ranges name the query vectors that see them (e.g. one 16-row q
    // block of a tile, or the lower rows of a causal diagonal band): the engine
    // skips the others' work.
    for (const Range& g : tile(r, t).ranges) f(g.k0, g.k1, g.full, QueryVectors{g.vectors});
  }

  // S^T[j][i] = -inf where row i of tile t may not see key k0 + j: its q block
  // does not list the key's kv block, or is_causal hides the key. The span may
  // cross ranges (the engine merges a query vector's contiguous ranges into one
  // segment); full ranges in it hide nothing.
  void mask(const ProblemRef& r, int64_t t, int64_t k0, int64_t nk, float* S) const {
    const Tile& T = tile(r, t);
    // The first range ending after k0.
    auto it = std::upper_bound(T.ranges.begin(), T.ranges.end(), k0,
                               [](int64_t x, const Range& g) { return x < g.k1; });
    for (; it != T.ranges.end() && it->k0 < k0 + nk; ++it) {
      const int64_t lo = std::max(k0, it->k0), hi = std::min(k0 + nk, it->k1);
      if (!it->full && hi > lo) mask_range(T, *it, t, lo, hi - lo, S + (lo - k0) * kQ);
    }
  }

 private:
  // mask() for keys [k0, k0 + nk) inside the non-full range g.
  void mask_range(const Tile& T, const Range& g, int64_t t, int64_t k0, int64_t nk, float* S) const {
    const int64_t kvb = p_.kv_block, kb_first = g.k0 / kvb;  // rows[] has one mask per block from here
    const uint64_t* rows = T.rows.data() + g.first_rows;
    const bool causal = p_.attn.is_causal;
    const int64_t row0 = t * kQ;
    // Per block, a lane mask (0: keep, 1: hide) that the key loop applies as a
    // branch-free select; causal hides a prefix of rows on top.
    int32_t hide[kQ];
    int64_t cur = -1;
    bool any_hidden = false;
    for (int64_t j = 0; j < nk; ++j) {
      const int64_t key = k0 + j, kb = key / kvb;
      if (kb != cur) {
        const uint64_t bits = rows[kb - kb_first];
        for (int i = 0; i < kQ; ++i) hide[i] = !((bits >> i) & 1u);
        any_hidden = bits != ~uint64_t(0);
        cur = kb;
      }
      float* s = S + j * kQ;
      if (any_hidden)
        for (int i = 0; i < kQ; ++i) s[i] = hide[i] ? -INFINITY : s[i];
      if (causal) {
        // Row i sees the key iff row0 + i + (Sk - Sq) >= key.
        const int64_t first_row = std::clamp<int64_t>(key - offset_ - row0, 0, kQ);
        std::fill(s, s + first_row, -INFINITY);
      }
    }
  }

  const Tile& tile(const ProblemRef& r, int64_t t) const {
    return tiles_[static_cast<size_t>(r.aux[0] + t)];
  }

  // Rows [a, e) of a tile as bits.
  static uint64_t row_bits(int64_t a, int64_t e) {
    const uint64_t upto_e = e >= 64 ? ~uint64_t(0) : (uint64_t(1) << e) - 1;
    const uint64_t below_a = a >= 64 ? ~uint64_t(0) : (uint64_t(1) << a) - 1;
    return upto_e & ~below_a;
  }

  void build_tile(int64_t list, int64_t t, uint64_t* acc, std::vector<int32_t>& touched,
                  Tile& T) const {
    const FmhaProblem& a = p_.attn;
    const int64_t mb = list / p_.mask_heads, mh = list % p_.mask_heads;
    const int64_t r0 = t * kQ, r1 = std::min(a.seqlen_q, r0 + kQ);
    const uint64_t valid = row_bits(0, r1 - r0);
    const int64_t qblk = p_.q_block, kvb = p_.kv_block;
    touched.clear();
    for (int64_t qb = r0 / qblk; qb <= (r1 - 1) / qblk; ++qb) {
      const uint64_t bits =
          row_bits(std::max(r0, qb * qblk) - r0, std::min(r1, (qb + 1) * qblk) - r0);
      const int64_t c = p_.count(mb, mh, qb);
      for (int64_t n = 0; n < c; ++n) {
        const int32_t kb = p_.index(mb, mh, qb, n);
        if (!acc[kb]) touched.push_back(kb);
        acc[kb] |= bits;
      }
    }
    std::sort(touched.begin(), touched.end());
    T.ranges.reserve(touched.size() * (a.is_causal ? 2 : 1));
    // Causal (bottom-right): keys below all_hi are seen by every row of the tile,
    // keys at or above any_hi by none.
    const int64_t all_hi = r0 + offset_ + 1, any_hi = r1 + offset_;
    for (const int32_t kb : touched) {
      const uint64_t rows = acc[kb];
      acc[kb] = 0;
      const int64_t k0 = int64_t(kb) * kvb;
      int64_t k1 = std::min(a.seqlen_k, k0 + kvb);
      const bool all_rows = rows == valid;
      if (!a.is_causal) {
        push(T, k0, k1, all_rows, rows, rows);
        continue;
      }
      k1 = std::min(k1, any_hi);
      if (k1 <= k0) continue;
      // Split at the causal bound (rounded down to 32 keys, the AMX path's
      // granularity) so that only the diagonal band evaluates the mask.
      const int64_t fh = all_rows ? std::clamp(all_hi / 32 * 32, k0, k1) : k0;
      if (fh > k0) push(T, k0, fh, true, rows, rows);
      // Rows below the one that sees key fh see nothing of [fh, k1).
      const int64_t first_row = std::clamp<int64_t>(fh - offset_ - r0, 0, 64);
      if (k1 > fh) push(T, fh, k1, false, rows, rows & ~row_bits(0, first_row));
    }
  }

  // Query vectors (16-row groups) with a row set in `rows`.
  static uint32_t vectors_of(uint64_t rows) {
    uint32_t v = 0;
    for (int i = 0; i < kQ / kLanes; ++i)
      if ((rows >> (i * kLanes)) & ((uint64_t(1) << kLanes) - 1)) v |= 1u << i;
    return v;
  }

  // Appends keys [k0, k1) of one kv block to the tile, extending the last range
  // when it ends at k0 with the same `full`. A non-full piece records the block's
  // row mask (each block has at most one non-full piece, its last).
  // `seeing`: the rows that see some key of the piece (for the query vectors).
  static void push(Tile& T, int64_t k0, int64_t k1, bool full, uint64_t rows, uint64_t seeing) {
    const uint32_t vec = full ? kAllQueryVectors : vectors_of(seeing);
    if (!T.ranges.empty() && T.ranges.back().k1 == k0 && T.ranges.back().full == full) {
      T.ranges.back().k1 = k1;
      T.ranges.back().vectors |= vec;
    } else {
      Range g;
      g.k0 = k0;
      g.k1 = k1;
      g.first_rows = static_cast<int64_t>(T.rows.size());
      g.vectors = vec;
      g.full = full;
      T.ranges.push_back(g);
    }
    if (!full) T.rows.push_back(rows);
  }

  BlockSparseProblem p_;
  int64_t group_ = 1, n_tiles_ = 0, offset_ = 0;
  std::vector<Tile> tiles_;  // [mask batch x mask head][q tile]
};

}  // namespace attnkit::cpu
