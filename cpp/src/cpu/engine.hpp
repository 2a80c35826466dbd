// attnkit CPU backend: the one tiled online-softmax engine (forward and backward).
//
// Every softmax family (dense, causal, window, varlen, neighborhood, block-sparse)
// runs through forward()/backward() below; they differ only in the Schedule:
//
//   struct Schedule {
//     int64_t num_problems() const;             // (batch, q head[, group]) units
//     ProblemRef problem(int64_t p) const;
//     int64_t num_kv_problems() const;          // (batch, kv head[, group]) units
//     KvProblemRef kv_problem(int64_t kp) const;
//     int64_t kv_token(const KvProblemRef&, int64_t idx) const;  // kv index -> token id
//       // or -1: a padding key (zero K and V rows; the schedule masks it for every
//       // query and never marks a range holding it full)
//     int q_tile(const ProblemRef&, int64_t t, int64_t* tok) const;  // token ids, <= kQ
//     template <class F> void for_each_kv_tile(const ProblemRef&, int64_t t, F&& f) const;
//       // f(k0, k1, full): kv index range [k0, k1); full = no element is masked
//       // or f(k0, k1, full, QueryVectors{bits}): only the 16-lane query vectors
//       // whose bit is set (lanes [16v, 16v+16)) see keys of the range; the lanes of
//       // the others see none, and the engine skips their GEMM work (their scores
//       // are set to -inf). `full` then speaks of the set vectors only.
//     void mask(const ProblemRef&, int64_t t, int64_t k0, int64_t nk, float* S) const;
//       // S^T tile [nk][kQ]: set masked (key k0+j, query row i) entries to -inf
//     template <class F> void for_each_problem_of_kv(int64_t kp, F&& f) const;  // f(p)
//   };
//
// Scores are kept transposed, S^T[key][query row], so the kQ = 64 query rows of a
// tile run along SIMD lanes: row statistics are lane-wise, K and V rows are read
// by broadcast (no transposition of K or V is ever needed), and the only packing
// is of the query tile, amortised over every key it meets.
//
// The arithmetic comes from a math policy: FmaMath (fp32 micro-GEMMs, every
// dtype and ISA) or AmxMath (bf16 inputs on CPUs with AMX tiles). The skeleton
// below -- work split, schedule walk, masks, online-softmax bookkeeping,
// deterministic reductions -- is the same for both.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "engine_types.hpp"
#include "math_amx.hpp"
#include "math_fma.hpp"

namespace attnkit::cpu {

namespace detail {

// All (problem, q tile) work items; tiles of one problem are listed last-first,
// which starts the most expensive causal tiles early under dynamic scheduling.
template <class Sched>
std::vector<std::pair<int64_t, int64_t>> q_work_items(const Sched& s) {
  std::vector<std::pair<int64_t, int64_t>> items;
  const int64_t np = s.num_problems();
  for (int64_t p = 0; p < np; ++p) {
    const int64_t nt = s.problem(p).n_q_tiles;
    for (int64_t t = nt - 1; t >= 0; --t) items.push_back({p, t});
  }
  return items;
}

// The key ranges of q tile t in the schedule's order (empty ones and ranges no
// query vector sees dropped).
template <class Sched>
void collect_ranges(const Sched& s, const ProblemRef& P, int64_t t, std::vector<KvRange>& R) {
  R.clear();
  s.for_each_kv_tile(P, t, [&](int64_t k0, int64_t k1, bool full, auto... qv) {
    const uint32_t bits = active_vectors(qv...);
    if (bits != 0 && k1 > k0) R.push_back({k0, k1, bits, full});
  });
}

// Walks the key chunks of ranges R: each range [k0, k1), widened as the policy
// needs (math.chunk_start, math.chunk_keys), cut into chunks of at most `chunk`
// keys. f(c0, nk, k0, k1, full, bits) gets the chunk [c0, c0 + nk), its range and
// the query vectors it reaches; after score(), apply_masks() masks the widened
// keys and the schedule's elements.
template <class Math, class F>
void for_each_chunk(const Math& math, const std::vector<KvRange>& R, int64_t chunk, F&& f) {
  for (const KvRange& r : R) {
    const int64_t a0 = math.chunk_start(r.k0), a1 = a0 + math.chunk_keys(r.k1 - a0);
    for (int64_t c0 = a0; c0 < a1; c0 += chunk) f(c0, std::min(chunk, a1 - c0), r.k0, r.k1, r.full, r.bits);
  }
}

// The key chunks query vector v visits on its own: its ranges in R (contiguous
// ones merged into one segment), each widened as the policy needs, packed into
// chunks of at most `chunk` score rows. f(pieces, count, rows) per chunk.
template <class Math, class F>
void for_each_vector_chunk(const Math& math, const std::vector<KvRange>& R, int v, int64_t chunk,
                           F&& f) {
  ChunkPiece pc[kMaxPieces];
  int np = 0;
  int64_t rows = 0;
  auto flush = [&] {
    if (np) f(static_cast<const ChunkPiece*>(pc), np, rows);
    np = 0;
    rows = 0;
  };
  auto add_segment = [&](int64_t k0, int64_t k1, bool full) {
    const int64_t a0 = math.chunk_start(k0), a1 = a0 + math.chunk_keys(k1 - a0);
    for (int64_t c0 = a0; c0 < a1; c0 += chunk) {
      const int64_t nk = std::min(chunk, a1 - c0);
      if (rows + nk > chunk || np == kMaxPieces) flush();
      pc[np++] = {c0, nk, k0, k1, rows, full};
      rows += nk;
    }
  };
  int64_t s0 = -1, s1 = -1;
  bool sfull = true;
  for (const KvRange& r : R) {
    if (!((r.bits >> v) & 1u)) continue;
    if (r.k0 == s1) {
      s1 = r.k1;
      sfull = sfull && r.full;
      continue;
    }
    if (s0 >= 0) add_segment(s0, s1, sfull);
    s0 = r.k0;
    s1 = r.k1;
    sfull = r.full;
  }
  if (s0 >= 0) add_segment(s0, s1, sfull);
  flush();
}

// A tile's ranges gathered into chunks of at most `chunk` score rows: each range
// widened as the policy needs and cut into pieces of at most `chunk` keys.
// f(pieces, bits, count, rows) per chunk; bits[i] are piece i's query vectors.
template <class Math, class F>
void for_each_tile_chunk(const Math& math, const std::vector<KvRange>& R, int64_t chunk, F&& f) {
  ChunkPiece pc[kMaxPieces];
  uint32_t bits[kMaxPieces];
  int np = 0;
  int64_t rows = 0;
  auto flush = [&] {
    if (np) f(static_cast<const ChunkPiece*>(pc), static_cast<const uint32_t*>(bits), np, rows);
    np = 0;
    rows = 0;
  };
  for (const KvRange& r : R) {
    const int64_t a0 = math.chunk_start(r.k0), a1 = a0 + math.chunk_keys(r.k1 - a0);
    for (int64_t c0 = a0; c0 < a1; c0 += chunk) {
      const int64_t nk = std::min(chunk, a1 - c0);
      if (rows + nk > chunk || np == kMaxPieces) flush();
      bits[np] = r.bits;
      pc[np++] = {c0, nk, r.k0, r.k1, rows, r.full};
      rows += nk;
    }
  }
  flush();
}

// Schedules may offer mask(P, t, k0, nk, S, QueryVectors): the same, for the
// lanes of the given vectors only (the others may be left as they are).
template <class S, class = void>
struct has_vector_mask : std::false_type {};
template <class S>
struct has_vector_mask<S, std::void_t<decltype(std::declval<const S&>().mask(
                              std::declval<const ProblemRef&>(), int64_t(), int64_t(), int64_t(),
                              static_cast<float*>(nullptr), QueryVectors{}))>> : std::true_type {};

// Masks chunk [c0, c0 + nk) of range [k0, k1): keys outside the range (widening)
// entirely, the range's keys through the schedule unless it is full. Lanes of
// vectors outside `bits` may be left as they are.
template <class Sched>
void apply_masks(const Sched& s, const ProblemRef& P, int64_t t, int64_t c0, int64_t nk,
                 int64_t k0, int64_t k1, bool full, float* ST, uint32_t bits = kAllQueryVectors) {
  const int64_t lo = std::max(c0, k0), hi = std::min(c0 + nk, k1);
  if (lo > c0) fill_vectors(ST, lo - c0, bits, -INFINITY);
  if (c0 + nk > hi) fill_vectors(ST + (hi - c0) * kQ, c0 + nk - hi, bits, -INFINITY);
  if (full || hi <= lo) return;
  if constexpr (has_vector_mask<Sched>::value)
    s.mask(P, t, lo, hi - lo, ST + (lo - c0) * kQ, QueryVectors{bits});
  else
    s.mask(P, t, lo, hi - lo, ST + (lo - c0) * kQ);
}

// Whether a tile's query vectors are walked one at a time (vector passes) rather
// than together. Together, a range costs every vector it reaches its widened
// length (chunk_keys) and the vectors share each key row the GEMMs load; when
// the vectors reach different keys (neighborhood attention) the ranges become
// short and many, and the widening adds up. On its own, a vector's contiguous
// ranges merge into few long segments. The walk that computes fewer score rows
// wins; the shared one needs 10% fewer to be kept (its key rows serve several
// vectors).
template <class Math>
bool vector_passes(const Math& math, const std::vector<KvRange>& R) {
  uint32_t all = kAllQueryVectors;
  int64_t shared = 0;
  for (const KvRange& r : R) {
    all &= r.bits;
    shared += math.chunk_keys(r.k1 - math.chunk_start(r.k0)) * __builtin_popcount(r.bits);
  }
  if (all == kAllQueryVectors) return false;
  int64_t own = 0;
  for (int v = 0; v < kQ / kLanes; ++v) {
    int64_t s0 = -1, s1 = -1;
    for (const KvRange& r : R) {
      if (!((r.bits >> v) & 1u)) continue;
      if (r.k0 == s1) {
        s1 = r.k1;
        continue;
      }
      if (s0 >= 0) own += math.chunk_keys(s1 - math.chunk_start(s0));
      s0 = r.k0;
      s1 = r.k1;
    }
    if (s0 >= 0) own += math.chunk_keys(s1 - math.chunk_start(s0));
  }
  return own * 10 < shared * 9;
}

template <class Math, class Sched>
void run_forward(const Sched& s, const EngineArgs& a, const Math& math, int threads) {
  const KernelTable& K = kernels();
  const int64_t Dv = a.dv, nkt = a.kv_tile;
  const auto items = q_work_items(s);
  const int64_t orows = math.out_rows();
  const int64_t own = math.fwd_scratch_floats();
  const int64_t st_rows = nkt;
  const int64_t per_thread = own + orows * kQ + st_rows * kQ + 3 * kQ + kLanes;
  FloatBuffer scratch(per_thread * threads);
  std::vector<std::vector<KvRange>> ranges(threads);

  parallel_for(static_cast<int64_t>(items.size()), threads, [&](int64_t it) {
    float* ws = scratch.get() + per_thread * thread_index();  // the policy's scratch
    float* OT = ws + own;            // [orows][kQ] unnormalised output
    float* ST = OT + orows * kQ;     // [nkt][kQ]   scores, then probabilities
    float* m = ST + st_rows * kQ;    // running max (log2 domain)
    float* l = m + kQ;               // running sum
    float* alpha = l + kQ;
    std::vector<KvRange>& R = ranges[thread_index()];

    const ProblemRef P = s.problem(items[it].first);
    const int64_t t = items[it].second;
    int64_t tok[kQ];
    const int n = s.q_tile(P, t, tok);
    // The output rows are written last; their misses overlap the tile's work.
    for (int i = 0; i < n; ++i)
      prefetch_row(a.out.row(P.b, tok[i], P.hq), Dv * dtype_size(a.out.dtype), true);

    std::fill(OT, OT + orows * kQ, 0.f);
    std::fill(m, m + kQ, -INFINITY);
    std::fill(l, l + kQ, 0.f);
    collect_ranges(s, P, t, R);
    // A tile that meets no key (an empty block-sparse row, a varlen pad) only
    // writes zeros: its queries are not even read.
    if (!R.empty()) {
      math.begin();
      math.fwd_load_q(P, tok, n, ws);
      if (Math::kTileChunks && !vector_passes(math, R)) {
        // The tile's ranges in chunks of rows shared by the vectors that reach them:
        // scores per piece for its vectors, the softmax per vector over its pieces
        // (one reference max per chunk), then O^T += V^T P^T over the whole chunk.
        for_each_tile_chunk(math, R, nkt, [&](const ChunkPiece* pc, const uint32_t* bits, int np,
                                              int64_t rows) {
          uint32_t any = 0;
          for (int i = 0; i < np; ++i) {
            math.scores(P.kvp, pc[i].c0, pc[i].nk, ws, ST + pc[i].row * kQ, bits[i]);
            any |= bits[i];
          }
          math.finish_scores(ST, rows, nullptr);
          for (int i = 0; i < np; ++i)
            apply_masks(s, P, t, pc[i].c0, pc[i].nk, pc[i].k0, pc[i].k1, pc[i].full, ST + pc[i].row * kQ,
                        bits[i]);
          for (int v = 0; v < kQ / kLanes; ++v) {
            if (!((any >> v) & 1u)) continue;
            int64_t r0[kMaxPieces], nr[kMaxPieces];
            int nv = 0;
            for (int i = 0; i < np; ++i)
              if ((bits[i] >> v) & 1u) r0[nv] = pc[i].row, nr[nv++] = pc[i].nk;
            if (math.softmax_rows(ST, nv, r0, nr, m, l, alpha, ws, v)) K.scale_lanes(OT, orows, alpha, v, v + 1);
          }
          math.pv_chunk(P.kvp, pc, bits, np, ws, OT);
        });
      } else if (!vector_passes(math, R)) {
        for_each_chunk(math, R, nkt, [&](int64_t c0, int64_t nk, int64_t k0, int64_t k1, bool full,
                                         uint32_t bits) {
          // Lanes of vectors outside `bits` keep stale values: every step below skips them.
          math.scores(P.kvp, c0, nk, ws, ST, bits);
          math.finish_scores(ST, nk, nullptr);
          apply_masks(s, P, t, c0, nk, k0, k1, full, ST, bits);
          for_each_vector_run(bits, [&](int v0, int v1) {
            if (math.softmax(ST, nk, m, l, alpha, ws, v0, v1)) K.scale_lanes(OT, orows, alpha, v0, v1);
          });
          math.pv(P.kvp, c0, nk, ST, ws, OT, bits);
        });
      } else {
        for (int v = 0; v < kQ / kLanes; ++v) {
          const uint32_t vb = 1u << v;
          for_each_vector_chunk(math, R, v, nkt, [&](const ChunkPiece* pc, int np, int64_t rows) {
            math.scores_pieces(P.kvp, pc, np, ws, ST, v);
            math.finish_scores(ST, rows, nullptr);
            for (int i = 0; i < np; ++i)
              apply_masks(s, P, t, pc[i].c0, pc[i].nk, pc[i].k0, pc[i].k1, pc[i].full, ST + pc[i].row * kQ, vb);
            if (math.softmax(ST, rows, m, l, alpha, ws, v, v + 1)) K.scale_lanes(OT, orows, alpha, v, v + 1);
            math.pv_pieces(P.kvp, pc, np, ST, ws, OT, v);
          });
        }
      }
      math.end();
    }

    // out_i = O_i / l_i; a row that saw no key has l == 0: output 0 and lse -inf, never NaN.
    for (int i = 0; i < kQ; ++i) alpha[i] = i < n && l[i] > 0 ? 1.f / l[i] : 0.f;
    void* orow[kQ];
    for (int i = 0; i < n; ++i) orow[i] = a.out.row(P.b, tok[i], P.hq);
    K.store_transposed(OT, Dv, alpha, n, orow, a.out.dtype);
    if (a.lse.data)
      for (int i = 0; i < n; ++i) {
        const float lse = l[i] > 0 ? (m[i] + std::log2(l[i])) * kLn2 : -INFINITY;
        *reinterpret_cast<float*>(a.lse.row(P.b, tok[i], P.hq)) = lse;
      }
  });
}

// Backward: work is query-major: a unit owns a fixed chunk of (problem, q tile)
// pairs of one kv problem, computes their dq completely, and accumulates dk/dv
// of the keys it touches into its own fp32 buffer. Chunks are summed in a fixed
// order, and the chunk count depends only on the shapes, so results are bitwise
// reproducible whatever the thread count.
template <class Math, class Sched>
void run_backward(const Sched& s, const EngineArgs& a, const Math& math, int threads) {
  const int64_t D = a.dqk, Dv = a.dv;
  const int64_t nkt = a.kv_tile;
  const int64_t ldk = math.ldk(), ldv = math.ldv();
  const KvRows& rows = math.rows;
  const int64_t nkp = s.num_kv_problems();

  // The q tiles reading each kv problem, in a fixed order.
  std::vector<std::vector<std::pair<int64_t, int64_t>>> work(nkp);
  int64_t max_rows = 0;
  for (int64_t kp = 0; kp < nkp; ++kp) {
    s.for_each_problem_of_kv(kp, [&](int64_t p) {
      const int64_t nt = s.problem(p).n_q_tiles;
      for (int64_t t = 0; t < nt; ++t) work[kp].push_back({p, t});
    });
    max_rows = std::max(max_rows, rows.base[kp + 1] - rows.base[kp]);
  }
  int64_t max_tiles = 1;
  for (auto& w : work) max_tiles = std::max<int64_t>(max_tiles, static_cast<int64_t>(w.size()));
  // Enough units (>= 16) to keep cores busy when there are few kv heads, within a
  // 1 GiB budget for the per-chunk partial sums.
  int64_t chunks = std::min<int64_t>(max_tiles, std::max<int64_t>(1, (16 + nkp - 1) / nkp));
  const int64_t rows_total = rows.total();
  const int64_t bytes_per_chunk = rows_total * (ldk + ldv) * 4;
  while (chunks > 1 && chunks * bytes_per_chunk > (int64_t(1) << 30)) --chunks;

  FloatBuffer partial;
  if (chunks > 1) partial.reset(chunks * rows_total * (ldk + ldv), false);
  // The key rows [lo, hi) each unit's chunks can reach: only those of its partial
  // buffer are cleared and summed (a unit of neighborhood attention reaches a band
  // of keys, not the whole problem). Depends only on the shapes: deterministic.
  std::vector<std::pair<int64_t, int64_t>> reach(chunks > 1 ? nkp * chunks : 0);
  if (chunks > 1)
    parallel_for(nkp * chunks, threads, [&](int64_t unit) {
      const int64_t kp = unit / chunks, c = unit % chunks;
      const auto& list = work[kp];
      const int64_t n_items = static_cast<int64_t>(list.size());
      const int64_t nrows = rows.base[kp + 1] - rows.base[kp];
      int64_t lo = nrows, hi = 0;
      for (int64_t w = n_items * c / chunks; w < n_items * (c + 1) / chunks; ++w)
        s.for_each_kv_tile(s.problem(list[w].first), list[w].second, [&](int64_t k0, int64_t k1, bool, auto...) {
          if (k1 <= k0) return;
          const int64_t a0 = math.chunk_start(k0);
          lo = std::min(lo, a0);
          hi = std::max(hi, std::min(nrows, a0 + math.chunk_keys(k1 - a0)));
        });
      reach[unit] = {lo, std::max(lo, hi)};
    });

  const int64_t own = math.bwd_scratch_floats();
  const int64_t acc_local = chunks > 1 ? 0 : max_rows * (ldk + ldv);
  const int64_t dmax = std::max(D, Dv);
  const int64_t per_thread = own + 3 * nkt * kQ + 2 * kQ + 2 * dmax + kLanes + acc_local;
  FloatBuffer scratch(per_thread * threads);
  std::vector<std::vector<KvRange>> ranges(threads);

  parallel_for(nkp * chunks, threads, [&](int64_t unit) {
    const int64_t kp = unit / chunks, c = unit % chunks;
    const auto& list = work[kp];
    const int64_t n_items = static_cast<int64_t>(list.size());
    const int64_t i0 = n_items * c / chunks, i1 = n_items * (c + 1) / chunks;
    const KvProblemRef KV = s.kv_problem(kp);
    const int64_t nrows = rows.base[kp + 1] - rows.base[kp];

    float* ws = scratch.get() + per_thread * thread_index();  // the policy's scratch
    float* ST = ws + own;           // [nkt][kQ] scores, then P
    float* dPT = ST + nkt * kQ;     // [nkt][kQ] dP, then dS
    float* CG = dPT + nkt * kQ;     // [nkt][kQ] softcap gradient
    float* lse2 = CG + nkt * kQ;
    float* delta = lse2 + kQ;
    float* row = delta + kQ;        // two rows of max(D, Dv) floats
    std::vector<KvRange>& R = ranges[thread_index()];
    float* dKacc;
    float* dVacc;
    if (chunks > 1) {
      float* part = partial.get() + c * rows_total * (ldk + ldv);
      dKacc = part + rows.base[kp] * ldk;
      dVacc = part + rows_total * ldk + rows.base[kp] * ldv;
    } else {
      dKacc = row + 2 * dmax + kLanes;
      dVacc = dKacc + max_rows * ldk;
    }
    const int64_t z0 = chunks > 1 ? reach[unit].first : 0, z1 = chunks > 1 ? reach[unit].second : nrows;
    std::fill(dKacc + z0 * ldk, dKacc + z1 * ldk, 0.f);
    std::fill(dVacc + z0 * ldv, dVacc + z1 * ldv, 0.f);
    math.begin();

    for (int64_t w = i0; w < i1; ++w) {
      const ProblemRef P = s.problem(list[w].first);
      const int64_t t = list[w].second;
      int64_t tok[kQ];
      const int n = s.q_tile(P, t, tok);

      math.bwd_load_q(P, tok, n, ws);
      for (int i = 0; i < kQ; ++i) {
        lse2[i] = INFINITY;  // padding rows: P = exp2(S - inf) = 0
        delta[i] = 0.f;
      }
      for (int i = 0; i < n; ++i) {
        // delta_i = rowsum(dO_i * O_i), minus dlse_i when lse was used downstream.
        float* o = row;
        float* dout = row + dmax;
        load_row(a.out.row(P.b, tok[i], P.hq), a.out.dtype, Dv, o);
        load_row(a.dout.row(P.b, tok[i], P.hq), a.dout.dtype, Dv, dout);
        float dsum = 0.f;
        for (int64_t d = 0; d < Dv; ++d) dsum += dout[d] * o[d];
        delta[i] = dsum;
        if (a.dlse.data) delta[i] -= *reinterpret_cast<const float*>(a.dlse.row(P.b, tok[i], P.hq));
        const float lse = *reinterpret_cast<const float*>(a.lse.row(P.b, tok[i], P.hq));
        // Rows that saw nothing (lse -inf) get P = 0 everywhere.
        lse2[i] = lse == -INFINITY ? INFINITY : lse * kLog2e;
      }

      collect_ranges(s, P, t, R);
      for_each_chunk(math, R, nkt, [&](int64_t c0, int64_t nk, int64_t k0, int64_t k1, bool full,
                                       uint32_t bits) {
        math.scores(P.kvp, c0, nk, math.bwd_qt(ws), ST, bits);
        float* cg = a.softcap > 0 ? CG : nullptr;
        math.finish_scores(ST, nk, cg);
        // Lanes of vectors outside `bits` keep stale values: grad_step skips them.
        apply_masks(s, P, t, c0, nk, k0, k1, full, ST, bits);
        math.grad_step(P.kvp, c0, nk, n, ST, dPT, cg, lse2, delta, dKacc, dVacc, ws, bits);
      });
      math.store_dq(P, tok, n, ws);
    }
    math.end();
    if (chunks == 1) {
      for (int64_t r = 0; r < KV.nk; ++r) {
        const int64_t tok = s.kv_token(KV, r);
        if (tok < 0) continue;  // padding key
        store_row(dKacc + r * ldk, D, a.dk.dtype, a.dk.row(KV.b, tok, KV.hkv));
        store_row(dVacc + r * ldv, Dv, a.dv_.dtype, a.dv_.row(KV.b, tok, KV.hkv));
      }
    }
  });

  if (chunks > 1) {
    // Deterministic reduction over chunks, in chunk order.
    constexpr int64_t kRows = 64;
    std::vector<std::pair<int64_t, int64_t>> items;
    for (int64_t kp = 0; kp < nkp; ++kp)
      for (int64_t r = 0; r < s.kv_problem(kp).nk; r += kRows) items.push_back({kp, r});
    parallel_for(static_cast<int64_t>(items.size()), threads, [&](int64_t it) {
      const int64_t kp = items[it].first;
      const KvProblemRef KV = s.kv_problem(kp);
      float* row = scratch.get() + per_thread * thread_index();
      const int64_t r1 = std::min(KV.nk, items[it].second + kRows);
      for (int64_t r = items[it].second; r < r1; ++r) {
        const int64_t g = rows.base[kp] + r;
        const int64_t tok = s.kv_token(KV, r);
        if (tok < 0) continue;  // padding key
        for (int which = 0; which < 2; ++which) {
          const int64_t dim = which ? Dv : D;
          const int64_t off = which ? rows_total * ldk + g * ldv : g * ldk;
          std::fill(row, row + dim, 0.f);
          for (int64_t c = 0; c < chunks; ++c) {
            const auto& rc = reach[kp * chunks + c];
            if (r < rc.first || r >= rc.second) continue;  // this unit's keys do not include r
            const float* src = partial.get() + c * rows_total * (ldk + ldv) + off;
            for (int64_t d = 0; d < dim; ++d) row[d] += src[d];
          }
          const TokenLayout& L = which ? a.dv_ : a.dk;
          store_row(row, dim, L.dtype, L.row(KV.b, tok, KV.hkv));
        }
      }
    });
  }
}

// bf16 inputs take the AMX policy where the CPU has AMX tiles.
inline bool use_amx(const EngineArgs& a) {
  return kernels().bf16 != nullptr && a.q.dtype == DType::BFloat16;
}

}  // namespace detail

// Forward: out (and lse if a.lse.data) for every problem of the schedule.
template <class Sched>
void forward(const Sched& s, const EngineArgs& a) {
  const int threads = resolve_threads(a.threads);
  if (detail::use_amx(a))
    detail::run_forward(s, a, AmxMath(s, a, threads, false), threads);
  else
    detail::run_forward(s, a, FmaMath(s, a, threads), threads);
}

// Backward: dq, dk, dv from q, k, v, out, dout and the forward's lse.
template <class Sched>
void backward(const Sched& s, const EngineArgs& a) {
  const int threads = resolve_threads(a.threads);
  if (detail::use_amx(a))
    detail::run_backward(s, a, AmxMath(s, a, threads, true), threads);
  else
    detail::run_backward(s, a, FmaMath(s, a, threads), threads);
}

}  // namespace attnkit::cpu
