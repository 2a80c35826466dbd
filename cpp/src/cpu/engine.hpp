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
//       // the others see none, and the engine skips their work. `full` then speaks
//       // of the set vectors only.
//     void mask(const ProblemRef&, int64_t t, int64_t k0, int64_t nk, float* S) const;
//       // S^T tile [nk][kQ]: set masked (key k0+j, query row i) entries to -inf
//     template <class F> void for_each_problem_of_kv(int64_t kp, F&& f) const;  // f(p)
//   };
//
// Scores are kept transposed, S^T[key][query row], so the kQ = 64 query rows of a
// tile run along SIMD lanes: row statistics are lane-wise, K and V rows are read
// by broadcast (no transposition of K or V is ever needed), and the only packing
// is of the query tile, amortised over every key it meets.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
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

// The query vectors (kQ / kLanes groups of kLanes lanes) of a tile that one kv
// range reaches; schedules that pass none reach all of them (see the top).
constexpr uint32_t kAllQueryVectors = (1u << (kQ / kLanes)) - 1;
struct QueryVectors {
  uint32_t bits = kAllQueryVectors;
};

namespace detail {

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
  for (int v = 0; v < kQ / kLanes; ++v)
    if ((which >> v) & 1u)
      for (int64_t j = 0; j < nk; ++j) std::fill(S + j * kQ + v * kLanes, S + j * kQ + (v + 1) * kLanes, value);
}

// Workspace holding K and V of every kv problem as fp32 rows, in the schedule's
// kv order, rows padded to a multiple of 16 floats (the backward reads K rows as
// a GEMM panel).
struct KvWorkspace {
  FloatBuffer k, v;
  std::vector<int64_t> base;  // first row of each kv problem
  int64_t ldk = 0, ldv = 0;
};

template <class Sched>
void pack_kv(const Sched& s, const EngineArgs& a, KvWorkspace& ws, int threads) {
  const int64_t nkp = s.num_kv_problems();
  ws.base.assign(nkp + 1, 0);
  for (int64_t kp = 0; kp < nkp; ++kp) ws.base[kp + 1] = ws.base[kp] + s.kv_problem(kp).nk;
  ws.ldk = round_up(a.dqk, kLanes);
  ws.ldv = round_up(a.dv, kLanes);
  const int64_t rows = ws.base[nkp];
  ws.k.reset(rows * ws.ldk + kLanes);
  ws.v.reset(rows * ws.ldv + kLanes);
  constexpr int64_t kChunk = 256;
  std::vector<std::pair<int64_t, int64_t>> items;
  for (int64_t kp = 0; kp < nkp; ++kp)
    for (int64_t r = 0; r < ws.base[kp + 1] - ws.base[kp]; r += kChunk) items.push_back({kp, r});
  parallel_for(static_cast<int64_t>(items.size()), threads, [&](int64_t it) {
    const int64_t kp = items[it].first, r0 = items[it].second;
    const KvProblemRef kv = s.kv_problem(kp);
    const int64_t r1 = std::min(kv.nk, r0 + kChunk);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t tok = s.kv_token(kv, r);
      float* kd = ws.k.get() + (ws.base[kp] + r) * ws.ldk;
      float* vd = ws.v.get() + (ws.base[kp] + r) * ws.ldv;
      load_row(a.k.row(kv.b, tok, kv.hkv), a.k.dtype, a.dqk, kd);
      load_row(a.v.row(kv.b, tok, kv.hkv), a.v.dtype, a.dv, vd);
      std::fill(kd + a.dqk, kd + ws.ldk, 0.f);
      std::fill(vd + a.dv, vd + ws.ldv, 0.f);
    }
  });
}

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

// Packs query rows transposed: dst[d][i] = src_i[d] * mul, zero for i >= n.
inline void pack_transposed(const TokenLayout& L, const ProblemRef& P, int64_t head,
                            const int64_t* tok, int n, int64_t dim, float mul, float* row_tmp,
                            float* dst) {
  std::fill(dst, dst + dim * kQ, 0.f);
  for (int i = 0; i < n; ++i) {
    load_row(L.row(P.b, tok[i], head), L.dtype, dim, row_tmp);
    for (int64_t d = 0; d < dim; ++d) dst[d * kQ + i] = row_tmp[d] * mul;
  }
}

}  // namespace detail

// ---------------------------------------------------------------------------
// Forward: out (and lse if a.lse.data) for every problem of the schedule.
// ---------------------------------------------------------------------------
template <class Sched>
void forward(const Sched& s, const EngineArgs& a) {
  const KernelTable& K = kernels();
  const int threads = resolve_threads(a.threads);
  const int64_t D = a.dqk, Dv = a.dv;
  const int64_t nkt = a.kv_tile;

  // K and V are always widened/copied into a packed workspace once (O(tokens)):
  // besides converting dtypes, packing removes the large head stride between
  // rows, which otherwise costs ~40% of fp32 speed in cache-set conflicts.
  detail::KvWorkspace ws;
  detail::pack_kv(s, a, ws, threads);

  const auto items = detail::q_work_items(s);
  const int64_t d_max = std::max(D, Dv);
  const int64_t per_thread = D * kQ + Dv * kQ + nkt * kQ + 4 * kQ + d_max + kLanes;
  FloatBuffer scratch(per_thread * threads);

  parallel_for(static_cast<int64_t>(items.size()), threads, [&](int64_t it) {
    float* base = scratch.get() + per_thread * thread_index();
    float* QT = base;               // [D][kQ]   queries, pre-scaled
    float* OT = QT + D * kQ;        // [Dv][kQ]  unnormalised output
    float* ST = OT + Dv * kQ;       // [nkt][kQ] scores, then probabilities
    float* m = ST + nkt * kQ;       // running max (log2 domain)
    float* l = m + kQ;              // running sum
    float* alpha = l + kQ;
    float* row = alpha + 2 * kQ;    // one row of D or Dv floats

    const ProblemRef P = s.problem(items[it].first);
    const int64_t t = items[it].second;
    int64_t tok[kQ];
    const int n = s.q_tile(P, t, tok);

    // Softcap works on natural-scale scores; otherwise fold log2(e) into q so the
    // softmax runs on exp2.
    const float qmul = a.softcap > 0 ? a.scale : a.scale * kLog2e;
    detail::pack_transposed(a.q, P, P.hq, tok, n, D, qmul, row, QT);
    std::fill(OT, OT + Dv * kQ, 0.f);
    std::fill(m, m + kQ, -INFINITY);
    std::fill(l, l + kQ, 0.f);

    const float* kbase = ws.k.get() + ws.base[P.kvp] * ws.ldk;
    const float* vbase = ws.v.get() + ws.base[P.kvp] * ws.ldv;
    const int64_t ldk = ws.ldk, ldv = ws.ldv;

    s.for_each_kv_tile(P, t, [&](int64_t k0, int64_t k1, bool full, auto... qv) {
      const uint32_t bits = detail::active_vectors(qv...);
      if (bits == 0) return;
      for (int64_t c0 = k0; c0 < k1; c0 += nkt) {
        const int64_t nk = std::min(nkt, k1 - c0);
        // S^T[j][i] = k_j . q_i (active vectors only)
        detail::for_each_vector_run(bits, [&](int v0, int v1) {
          K.gemm(nk, v1 - v0, D, kbase + c0 * ldk, ldk, 1, QT + v0 * kLanes, kQ,
                 ST + v0 * kLanes, kQ, false);
        });
        if (a.softcap > 0) K.softcap(ST, nk, a.softcap, nullptr);
        if (bits != kAllQueryVectors) detail::fill_vectors(ST, nk, ~bits & kAllQueryVectors, -INFINITY);
        if (!full) s.mask(P, t, c0, nk, ST);
        if (K.softmax_step(ST, nk, m, l, alpha)) K.scale_rows(OT, Dv, alpha);
        // O^T[d][i] += sum_j v_j[d] * P^T[j][i]
        detail::for_each_vector_run(bits, [&](int v0, int v1) {
          K.gemm(Dv, v1 - v0, nk, vbase + c0 * ldv, 1, ldv, ST + v0 * kLanes, kQ,
                 OT + v0 * kLanes, kQ, true);
        });
      }
    });

    for (int i = 0; i < n; ++i) {
      // A row that saw no key has l == 0: output 0 and lse -inf, never NaN.
      const float inv = l[i] > 0 ? 1.f / l[i] : 0.f;
      for (int64_t d = 0; d < Dv; ++d) row[d] = OT[d * kQ + i] * inv;
      store_row(row, Dv, a.out.dtype, a.out.row(P.b, tok[i], P.hq));
      if (a.lse.data) {
        const float lse = l[i] > 0 ? (m[i] + std::log2(l[i])) * kLn2 : -INFINITY;
        *reinterpret_cast<float*>(a.lse.row(P.b, tok[i], P.hq)) = lse;
      }
    }
  });
}

// ---------------------------------------------------------------------------
// Backward: dq, dk, dv from q, k, v, out, dout and the forward's lse.
//
// Work is query-major: a unit owns a fixed chunk of (problem, q tile) pairs of
// one kv problem, computes their dq completely, and accumulates dk/dv of the
// keys it touches into its own fp32 buffer. Chunks are summed in a fixed order,
// and the chunk count depends only on the shapes, so results are bitwise
// reproducible whatever the thread count.
// ---------------------------------------------------------------------------
template <class Sched>
void backward(const Sched& s, const EngineArgs& a) {
  const KernelTable& K = kernels();
  const int threads = resolve_threads(a.threads);
  const int64_t D = a.dqk, Dv = a.dv;
  const int64_t nkt = a.kv_tile;

  detail::KvWorkspace ws;
  detail::pack_kv(s, a, ws, threads);  // K rows double as the dq GEMM's panel
  const int64_t ldk = ws.ldk, ldv = ws.ldv;
  const int64_t nkp = s.num_kv_problems();

  // The q tiles reading each kv problem, in a fixed order.
  std::vector<std::vector<std::pair<int64_t, int64_t>>> work(nkp);
  int64_t max_nk = 0;
  for (int64_t kp = 0; kp < nkp; ++kp) {
    s.for_each_problem_of_kv(kp, [&](int64_t p) {
      const int64_t nt = s.problem(p).n_q_tiles;
      for (int64_t t = 0; t < nt; ++t) work[kp].push_back({p, t});
    });
    max_nk = std::max(max_nk, s.kv_problem(kp).nk);
  }
  int64_t max_tiles = 1;
  for (auto& w : work) max_tiles = std::max<int64_t>(max_tiles, static_cast<int64_t>(w.size()));
  // Enough units (>= 16) to keep cores busy when there are few kv heads, within a
  // 1 GiB budget for the per-chunk partial sums.
  int64_t chunks = std::min<int64_t>(max_tiles, std::max<int64_t>(1, (16 + nkp - 1) / nkp));
  const int64_t rows_total = ws.base[nkp];
  const int64_t bytes_per_chunk = rows_total * (ldk + ldv) * 4;
  while (chunks > 1 && chunks * bytes_per_chunk > (int64_t(1) << 30)) --chunks;

  FloatBuffer partial;
  if (chunks > 1) partial.reset(chunks * rows_total * (ldk + ldv), false);

  const int64_t acc_local = chunks > 1 ? 0 : max_nk * (ldk + ldv);
  const int64_t per_thread = D * kQ + kQ * ldk + Dv * kQ + kQ * ldv + kQ * ldk  // QT Qr dOT dOr dQ
                             + 3 * nkt * kQ                                      // ST dPT CG
                             + 4 * kQ + std::max(D, Dv) * 2 + kLanes + acc_local;
  FloatBuffer scratch(per_thread * threads);

  auto write_rows = [&](const TokenLayout& L, const KvProblemRef& kv, const float* src,
                        int64_t ld, int64_t dim) {
    for (int64_t r = 0; r < kv.nk; ++r)
      store_row(src + r * ld, dim, L.dtype, L.row(kv.b, s.kv_token(kv, r), kv.hkv));
  };

  parallel_for(nkp * chunks, threads, [&](int64_t unit) {
    const int64_t kp = unit / chunks, c = unit % chunks;
    const auto& list = work[kp];
    const int64_t n_items = static_cast<int64_t>(list.size());
    const int64_t i0 = n_items * c / chunks, i1 = n_items * (c + 1) / chunks;
    const KvProblemRef KV = s.kv_problem(kp);

    float* base = scratch.get() + per_thread * thread_index();
    float* QT = base;                  // [D][kQ]   q * scale * log2e (or * scale with softcap)
    float* Qr = QT + D * kQ;           // [kQ][ldk] q rows
    float* dOT = Qr + kQ * ldk;        // [Dv][kQ]
    float* dOr = dOT + Dv * kQ;        // [kQ][ldv]
    float* dQ = dOr + kQ * ldv;        // [kQ][ldk]
    float* ST = dQ + kQ * ldk;         // [nkt][kQ]
    float* dPT = ST + nkt * kQ;        // [nkt][kQ]
    float* CG = dPT + nkt * kQ;        // [nkt][kQ] softcap gradient
    float* lse2 = CG + nkt * kQ;
    float* delta = lse2 + kQ;
    float* row = delta + 2 * kQ;       // scratch rows
    float* row2 = row + std::max(D, Dv);
    float* dKacc;
    float* dVacc;
    if (chunks > 1) {
      dKacc = partial.get() + c * rows_total * (ldk + ldv) + ws.base[kp] * ldk;
      dVacc = partial.get() + c * rows_total * (ldk + ldv) + rows_total * ldk + ws.base[kp] * ldv;
    } else {
      dKacc = row2 + std::max(D, Dv) + kLanes;
      dVacc = dKacc + max_nk * ldk;
    }
    std::fill(dKacc, dKacc + KV.nk * ldk, 0.f);
    std::fill(dVacc, dVacc + KV.nk * ldv, 0.f);

    const float* kbase = ws.k.get() + ws.base[kp] * ldk;
    const float* vbase = ws.v.get() + ws.base[kp] * ldv;
    const float qmul = a.softcap > 0 ? a.scale : a.scale * kLog2e;

    for (int64_t w = i0; w < i1; ++w) {
      const ProblemRef P = s.problem(list[w].first);
      const int64_t t = list[w].second;
      int64_t tok[kQ];
      const int n = s.q_tile(P, t, tok);

      std::fill(QT, QT + D * kQ, 0.f);
      std::fill(Qr, Qr + kQ * ldk, 0.f);
      std::fill(dOT, dOT + Dv * kQ, 0.f);
      std::fill(dOr, dOr + kQ * ldv, 0.f);
      std::fill(dQ, dQ + kQ * ldk, 0.f);
      for (int i = 0; i < kQ; ++i) {
        lse2[i] = INFINITY;  // padding rows: P = exp2(S - inf) = 0
        delta[i] = 0.f;
      }
      for (int i = 0; i < n; ++i) {
        load_row(a.q.row(P.b, tok[i], P.hq), a.q.dtype, D, Qr + i * ldk);
        for (int64_t d = 0; d < D; ++d) QT[d * kQ + i] = Qr[i * ldk + d] * qmul;
        load_row(a.dout.row(P.b, tok[i], P.hq), a.dout.dtype, Dv, dOr + i * ldv);
        load_row(a.out.row(P.b, tok[i], P.hq), a.out.dtype, Dv, row);
        float dsum = 0.f;
        for (int64_t d = 0; d < Dv; ++d) {
          dOT[d * kQ + i] = dOr[i * ldv + d];
          dsum += dOr[i * ldv + d] * row[d];
        }
        delta[i] = dsum;
        const float lse = *reinterpret_cast<const float*>(a.lse.row(P.b, tok[i], P.hq));
        // Rows that saw nothing (lse -inf) get P = 0 everywhere.
        lse2[i] = lse == -INFINITY ? INFINITY : lse * kLog2e;
        if (a.dlse.data) delta[i] -= *reinterpret_cast<const float*>(a.dlse.row(P.b, tok[i], P.hq));
      }

      s.for_each_kv_tile(P, t, [&](int64_t k0, int64_t k1, bool full, auto... qv) {
        const uint32_t bits = detail::active_vectors(qv...);
        if (bits == 0) return;
        const uint32_t inactive = ~bits & kAllQueryVectors;
        for (int64_t c0 = k0; c0 < k1; c0 += nkt) {
          const int64_t nk = std::min(nkt, k1 - c0);
          detail::for_each_vector_run(bits, [&](int v0, int v1) {
            K.gemm(nk, v1 - v0, D, kbase + c0 * ldk, ldk, 1, QT + v0 * kLanes, kQ,
                   ST + v0 * kLanes, kQ, false);
          });
          const float* cg = nullptr;
          if (a.softcap > 0) {
            K.softcap(ST, nk, a.softcap, CG);
            cg = CG;
          }
          if (inactive) {  // inactive lanes: P = 0, and no stale value can make a NaN
            detail::fill_vectors(ST, nk, inactive, -INFINITY);
            if (cg) detail::fill_vectors(CG, nk, inactive, 0.f);
          }
          if (!full) s.mask(P, t, c0, nk, ST);
          // dP^T[j][i] = v_j . dO_i
          detail::for_each_vector_run(bits, [&](int v0, int v1) {
            K.gemm(nk, v1 - v0, Dv, vbase + c0 * ldv, ldv, 1, dOT + v0 * kLanes, kQ,
                   dPT + v0 * kLanes, kQ, false);
          });
          if (inactive) detail::fill_vectors(dPT, nk, inactive, 0.f);
          K.softmax_grad(ST, dPT, nk, lse2, delta, a.scale, cg);
          detail::for_each_vector_run(bits, [&](int v0, int v1) {
            const int r0 = v0 * kLanes, r1 = std::min(v1 * kLanes, n);  // valid query rows
            if (r1 <= r0) return;
            // dV[j] += sum_i P^T[j][i] dO_i ; dK[j] += sum_i dS^T[j][i] q_i
            K.gemm(nk, ldv / kLanes, r1 - r0, ST + r0, kQ, 1, dOr + r0 * ldv, ldv,
                   dVacc + c0 * ldv, ldv, true);
            K.gemm(nk, ldk / kLanes, r1 - r0, dPT + r0, kQ, 1, Qr + r0 * ldk, ldk,
                   dKacc + c0 * ldk, ldk, true);
            // dQ[i] += sum_j dS^T[j][i] k_j
            K.gemm(r1 - r0, ldk / kLanes, nk, dPT + r0, 1, kQ, kbase + c0 * ldk, ldk,
                   dQ + r0 * ldk, ldk, true);
          });
        }
      });
      for (int i = 0; i < n; ++i)
        store_row(dQ + i * ldk, D, a.dq.dtype, a.dq.row(P.b, tok[i], P.hq));
    }
    if (chunks == 1) {
      write_rows(a.dk, KV, dKacc, ldk, D);
      write_rows(a.dv_, KV, dVacc, ldv, Dv);
    }
  });

  if (chunks > 1) {
    // Deterministic reduction over chunks, in chunk order.
    constexpr int64_t kRows = 64;
    std::vector<std::pair<int64_t, int64_t>> items;
    for (int64_t kp = 0; kp < nkp; ++kp)
      for (int64_t r = 0; r < ws.base[kp + 1] - ws.base[kp]; r += kRows) items.push_back({kp, r});
    parallel_for(static_cast<int64_t>(items.size()), threads, [&](int64_t it) {
      const int64_t kp = items[it].first;
      const KvProblemRef KV = s.kv_problem(kp);
      float* row = scratch.get() + per_thread * thread_index();
      const int64_t r1 = std::min(KV.nk, items[it].second + kRows);
      for (int64_t r = items[it].second; r < r1; ++r) {
        const int64_t g = ws.base[kp] + r;
        const int64_t tok = s.kv_token(KV, r);
        for (int which = 0; which < 2; ++which) {
          const int64_t ld = which ? ldv : ldk, dim = which ? Dv : D;
          const int64_t off = which ? rows_total * ldk + g * ldv : g * ldk;
          std::fill(row, row + dim, 0.f);
          for (int64_t c = 0; c < chunks; ++c) {
            const float* src = partial.get() + c * rows_total * (ldk + ldv) + off;
            for (int64_t d = 0; d < dim; ++d) row[d] += src[d];
          }
          (void)ld;
          const TokenLayout& L = which ? a.dv_ : a.dk;
          store_row(row, dim, L.dtype, L.row(KV.b, tok, KV.hkv));
        }
      }
    });
  }
}

}  // namespace attnkit::cpu
