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

// Walks the key chunks a q tile visits: the schedule's ranges [k0, k1), widened
// to multiples of Math::kAlign and cut into chunks of at most `chunk` keys.
// f(c0, nk, k0, k1, full, bits) gets the chunk [c0, c0 + nk), its range and the
// query vectors it reaches; after score(), apply_masks() masks the widened keys
// and the schedule's elements.
template <class Math, class Sched, class F>
void for_each_chunk(const Sched& s, const ProblemRef& P, int64_t t, int64_t chunk, F&& f) {
  s.for_each_kv_tile(P, t, [&](int64_t k0, int64_t k1, bool full, auto... qv) {
    const uint32_t bits = active_vectors(qv...);
    if (bits == 0) return;
    const int64_t a0 = k0 / Math::kAlign * Math::kAlign, a1 = round_up(k1, Math::kAlign);
    for (int64_t c0 = a0; c0 < a1; c0 += chunk) f(c0, std::min(chunk, a1 - c0), k0, k1, full, bits);
  });
}

template <class Sched>
void apply_masks(const Sched& s, const ProblemRef& P, int64_t t, int64_t c0, int64_t nk,
                 int64_t k0, int64_t k1, bool full, float* ST) {
  const int64_t lo = std::max(c0, k0), hi = std::min(c0 + nk, k1);
  for (int64_t j = c0; j < lo; ++j) std::fill(ST + (j - c0) * kQ, ST + (j - c0 + 1) * kQ, -INFINITY);
  for (int64_t j = hi; j < c0 + nk; ++j) std::fill(ST + (j - c0) * kQ, ST + (j - c0 + 1) * kQ, -INFINITY);
  if (!full && hi > lo) s.mask(P, t, lo, hi - lo, ST + (lo - c0) * kQ);
}

template <class Math, class Sched>
void run_forward(const Sched& s, const EngineArgs& a, const Math& math, int threads) {
  const KernelTable& K = kernels();
  const int64_t Dv = a.dv, nkt = a.kv_tile;
  const auto items = q_work_items(s);
  const int64_t orows = math.out_rows();
  const int64_t own = math.fwd_scratch_floats();
  const int64_t st_rows = std::max(nkt, round_up(Dv, kLanes));  // ST also holds the output rows
  const int64_t per_thread = own + orows * kQ + st_rows * kQ + 3 * kQ + kLanes;
  FloatBuffer scratch(per_thread * threads);

  parallel_for(static_cast<int64_t>(items.size()), threads, [&](int64_t it) {
    float* ws = scratch.get() + per_thread * thread_index();  // the policy's scratch
    float* OT = ws + own;            // [orows][kQ] unnormalised output
    float* ST = OT + orows * kQ;     // [nkt][kQ]   scores, then probabilities
    float* m = ST + st_rows * kQ;    // running max (log2 domain)
    float* l = m + kQ;               // running sum
    float* alpha = l + kQ;

    const ProblemRef P = s.problem(items[it].first);
    const int64_t t = items[it].second;
    int64_t tok[kQ];
    const int n = s.q_tile(P, t, tok);
    // The output rows are written last; their misses overlap the tile's work.
    for (int i = 0; i < n; ++i)
      prefetch_row(a.out.row(P.b, tok[i], P.hq), Dv * dtype_size(a.out.dtype), true);

    math.begin();
    math.fwd_load_q(P, tok, n, ws);
    std::fill(OT, OT + orows * kQ, 0.f);
    std::fill(m, m + kQ, -INFINITY);
    std::fill(l, l + kQ, 0.f);
    for_each_chunk<Math>(s, P, t, nkt, [&](int64_t c0, int64_t nk, int64_t k0, int64_t k1, bool full,
                                           uint32_t bits) {
      math.scores(P.kvp, c0, nk, ws, ST, bits);
      math.finish_scores(ST, nk, nullptr);
      if (bits != kAllQueryVectors) fill_vectors(ST, nk, ~bits & kAllQueryVectors, -INFINITY);
      apply_masks(s, P, t, c0, nk, k0, k1, full, ST);
      if (math.softmax(ST, nk, m, l, alpha, ws)) K.scale_rows(OT, orows, alpha);
      math.pv(P.kvp, c0, nk, ST, ws, OT, bits);
    });
    math.end();

    // out_i = O_i / l_i; a row that saw no key has l == 0: output 0 and lse -inf, never NaN.
    for (int i = 0; i < kQ; ++i) alpha[i] = i < n && l[i] > 0 ? 1.f / l[i] : 0.f;
    K.scale_rows(OT, Dv, alpha);
    const int64_t ldo = round_up(Dv, kLanes);
    float* O = ST;  // [kQ][ldo] output rows
    K.transpose32(OT, kQ, Dv, kQ, O, ldo);
    for (int i = 0; i < n; ++i) {
      store_row(O + i * ldo, Dv, a.out.dtype, a.out.row(P.b, tok[i], P.hq));
      if (a.lse.data) {
        const float lse = l[i] > 0 ? (m[i] + std::log2(l[i])) * kLn2 : -INFINITY;
        *reinterpret_cast<float*>(a.lse.row(P.b, tok[i], P.hq)) = lse;
      }
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

  const int64_t own = math.bwd_scratch_floats();
  const int64_t acc_local = chunks > 1 ? 0 : max_rows * (ldk + ldv);
  const int64_t dmax = std::max(D, Dv);
  const int64_t per_thread = own + 3 * nkt * kQ + 2 * kQ + 2 * dmax + kLanes + acc_local;
  FloatBuffer scratch(per_thread * threads);

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
    std::fill(dKacc, dKacc + nrows * ldk, 0.f);
    std::fill(dVacc, dVacc + nrows * ldv, 0.f);
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

      for_each_chunk<Math>(s, P, t, nkt, [&](int64_t c0, int64_t nk, int64_t k0, int64_t k1,
                                             bool full, uint32_t bits) {
        math.scores(P.kvp, c0, nk, math.bwd_qt(ws), ST, bits);
        float* cg = a.softcap > 0 ? CG : nullptr;
        math.finish_scores(ST, nk, cg);
        if (const uint32_t off = ~bits & kAllQueryVectors) {
          // Inactive lanes get P = 0, and no stale value can make a NaN.
          fill_vectors(ST, nk, off, -INFINITY);
          if (cg) fill_vectors(cg, nk, off, 0.f);
        }
        apply_masks(s, P, t, c0, nk, k0, k1, full, ST);
        math.grad_step(P.kvp, c0, nk, n, ST, dPT, cg, lse2, delta, dKacc, dVacc, ws, bits);
      });
      math.store_dq(P, tok, n, ws);
    }
    math.end();
    if (chunks == 1) {
      for (int64_t r = 0; r < KV.nk; ++r) {
        const int64_t tok = s.kv_token(KV, r);
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
        for (int which = 0; which < 2; ++which) {
          const int64_t dim = which ? Dv : D;
          const int64_t off = which ? rows_total * ldk + g * ldv : g * ldk;
          std::fill(row, row + dim, 0.f);
          for (int64_t c = 0; c < chunks; ++c) {
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
