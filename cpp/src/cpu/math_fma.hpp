// attnkit CPU backend: the fp32 math policy of the engine (every dtype on every
// ISA; bf16 too where the CPU has no bf16 matrix unit).
//
// K and V are widened once into fp32 rows; query tiles are packed transposed
// (Q^T[d][query]) and every product runs on the register-blocked fp32
// micro-GEMM of the kernel table. Scores are pre-scaled through q (scale *
// log2(e), or scale alone when softcap maps them to the log2 domain itself).
//
// A math policy gives the engine (engine.hpp) packed operands and the tile
// products; the engine owns the schedule walk, the masks, the online softmax
// bookkeeping, the work split and the deterministic reductions. Interface:
//   kAlign                        key ranges are widened to multiples of this
//   rows                          padded row offsets of every kv problem (KvRows)
//   scratch_floats()              per-thread scratch the policy needs
//   begin() / end()               around each work item (per-thread unit state)
//   forward:  load_q, scores, finish_scores, softmax, pv, out_rows()
//   backward: load_q, scores, finish_scores, grad_step, store_dq
#pragma once

#include "engine_types.hpp"

namespace attnkit::cpu {

// Row offsets of every kv problem inside a packed workspace; each problem's
// row count is rounded up to `align` (the tail rows are zero).
struct KvRows {
  std::vector<int64_t> base;  // num_kv_problems + 1 entries

  template <class Sched>
  void init(const Sched& s, int64_t align) {
    const int64_t nkp = s.num_kv_problems();
    base.assign(nkp + 1, 0);
    for (int64_t kp = 0; kp < nkp; ++kp) base[kp + 1] = base[kp] + round_up(s.kv_problem(kp).nk, align);
  }
  int64_t total() const { return base.back(); }
  int64_t count() const { return static_cast<int64_t>(base.size()) - 1; }
};

// Calls f(kv, r, tok) for every key row r of every kv problem (kv problem
// ref, index within it, token id), in parallel chunks of rows.
template <class Sched, class F>
void for_each_kv_row(const Sched& s, int threads, F&& f) {
  constexpr int64_t kChunk = 256;
  std::vector<std::pair<int64_t, int64_t>> items;
  const int64_t nkp = s.num_kv_problems();
  for (int64_t kp = 0; kp < nkp; ++kp)
    for (int64_t r = 0; r < s.kv_problem(kp).nk; r += kChunk) items.push_back({kp, r});
  parallel_for(static_cast<int64_t>(items.size()), threads, [&](int64_t it) {
    const int64_t kp = items[it].first, r0 = items[it].second;
    const KvProblemRef kv = s.kv_problem(kp);
    const int64_t r1 = std::min(kv.nk, r0 + kChunk);
    for (int64_t r = r0; r < r1; ++r) f(kp, kv, r, s.kv_token(kv, r));
  });
}

class FmaMath {
 public:
  static constexpr int64_t kAlign = 1;
  KvRows rows;

  template <class Sched>
  FmaMath(const Sched& s, const EngineArgs& a, int threads) : a_(a), K_(kernels()) {
    rows.init(s, 1);
    ldk_ = round_up(a.dqk, kLanes);
    ldv_ = round_up(a.dv, kLanes);
    // K and V are widened/copied once (O(tokens)): besides converting dtypes,
    // packing removes the large head stride between rows, which otherwise
    // costs ~40% of fp32 speed in cache-set conflicts.
    k_.reset(rows.total() * ldk_ + kLanes);
    v_.reset(rows.total() * ldv_ + kLanes);
    for_each_kv_row(s, threads, [&](int64_t kp, const KvProblemRef& kv, int64_t r, int64_t tok) {
      float* kd = k_.get() + (rows.base[kp] + r) * ldk_;
      float* vd = v_.get() + (rows.base[kp] + r) * ldv_;
      load_row(a.k.row(kv.b, tok, kv.hkv), a.k.dtype, a.dqk, kd);
      load_row(a.v.row(kv.b, tok, kv.hkv), a.v.dtype, a.dv, vd);
      std::fill(kd + a.dqk, kd + ldk_, 0.f);
      std::fill(vd + a.dv, vd + ldv_, 0.f);
    });
    qmul_ = a.softcap > 0 ? a.scale : a.scale * kLog2e;
  }

  // dK / dV accumulator row widths (shared with the engine's reductions).
  int64_t ldk() const { return ldk_; }
  int64_t ldv() const { return ldv_; }
  int64_t out_rows() const { return a_.dv; }
  void begin() const {}
  void end() const {}

  // ---------------------------------------------------------------- forward
  int64_t fwd_scratch_floats() const { return a_.dqk * kQ + kQ * ldk_; }

  // Q^T[d][i] = q_i[d] * qmul, zero past the n rows of the tile.
  void fwd_load_q(const ProblemRef& P, const int64_t* tok, int n, float* ws) const {
    float* QT = ws;
    float* Qr = ws + a_.dqk * kQ;  // [kQ][ldk] rows
    load_q_rows(P, tok, n, Qr);
    transpose_scaled(Qr, QT);
  }

  // S^T[j][i] = k_j . q_i (scaled) for keys [c0, c0 + nk) of kv problem kvp, on the
  // query vectors in `bits` (the others' lanes are left as they are).
  void scores(int64_t kvp, int64_t c0, int64_t nk, const float* QT, float* ST,
              uint32_t bits = kAllQueryVectors) const {
    detail::for_each_vector_run(bits, [&](int v0, int v1) {
      K_.gemm(nk, v1 - v0, a_.dqk, krow(kvp, c0), ldk_, 1, QT + v0 * kLanes, kQ,
              ST + v0 * kLanes, kQ, false);
    });
  }

  // Soft-capping (into the log2 domain); cap_grad (nullable) receives its derivative.
  void finish_scores(float* ST, int64_t nk, float* cap_grad) const {
    if (a_.softcap > 0) K_.softcap(ST, nk, a_.softcap, cap_grad);
  }

  bool softmax(float* ST, int64_t nk, float* m, float* l, float* alpha, float*) const {
    return K_.softmax_step(ST, nk, m, l, alpha);
  }

  // O^T[d][i] += sum_j v_j[d] * P^T[j][i] (P^T overwrote S^T).
  void pv(int64_t kvp, int64_t c0, int64_t nk, const float* PT, const float*, float* OT,
          uint32_t bits = kAllQueryVectors) const {
    detail::for_each_vector_run(bits, [&](int v0, int v1) {
      K_.gemm(a_.dv, v1 - v0, nk, vrow(kvp, c0), 1, ldv_, PT + v0 * kLanes, kQ, OT + v0 * kLanes,
              kQ, true);
    });
  }

  // ---------------------------------------------------------------- backward
  // Scratch: QT [D][kQ], Qr [kQ][ldk], dOT [Dv][kQ], dOr [kQ][ldv], dQ [kQ][ldk].
  int64_t bwd_scratch_floats() const {
    return a_.dqk * kQ + kQ * ldk_ + a_.dv * kQ + kQ * ldv_ + kQ * ldk_;
  }

  void bwd_load_q(const ProblemRef& P, const int64_t* tok, int n, float* ws) const {
    float *QT, *Qr, *dOT, *dOr, *dQ;
    bwd_split(ws, &QT, &Qr, &dOT, &dOr, &dQ);
    load_q_rows(P, tok, n, Qr);
    transpose_scaled(Qr, QT);
    std::fill(dOr, dOr + kQ * ldv_, 0.f);
    for (int i = 0; i < n; ++i)
      load_row(a_.dout.row(P.b, tok[i], P.hq), a_.dout.dtype, a_.dv, dOr + i * ldv_);
    K_.transpose32(dOr, ldv_, kQ, a_.dv, dOT, kQ);
    std::fill(dQ, dQ + kQ * ldk_, 0.f);
  }

  float* bwd_qt(float* ws) const { return ws; }

  // Given masked scores S^T of keys [c0, c0 + nk): dP^T = V dO^T, then
  // P and dS (in place), then dV += P^T dO, dK += dS^T Q, dQ += dS K.
  void grad_step(int64_t kvp, int64_t c0, int64_t nk, int n, float* ST, float* dPT,
                 const float* cap_grad, const float* lse2, const float* delta, float* dKacc,
                 float* dVacc, float* ws, uint32_t bits = kAllQueryVectors) const {
    float *QT, *Qr, *dOT, *dOr, *dQ;
    bwd_split(ws, &QT, &Qr, &dOT, &dOr, &dQ);
    detail::for_each_vector_run(bits, [&](int v0, int v1) {
      K_.gemm(nk, v1 - v0, a_.dv, vrow(kvp, c0), ldv_, 1, dOT + v0 * kLanes, kQ,
              dPT + v0 * kLanes, kQ, false);
    });
    if (bits != kAllQueryVectors) detail::fill_vectors(dPT, nk, ~bits & kAllQueryVectors, 0.f);
    K_.softmax_grad(ST, dPT, nk, lse2, delta, a_.scale, cap_grad);
    detail::for_each_vector_run(bits, [&](int v0, int v1) {
      const int r0 = v0 * kLanes, r1 = std::min(v1 * kLanes, n);  // valid query rows
      if (r1 <= r0) return;
      K_.gemm(nk, ldv_ / kLanes, r1 - r0, ST + r0, kQ, 1, dOr + r0 * ldv_, ldv_, dVacc + c0 * ldv_,
              ldv_, true);
      K_.gemm(nk, ldk_ / kLanes, r1 - r0, dPT + r0, kQ, 1, Qr + r0 * ldk_, ldk_,
              dKacc + c0 * ldk_, ldk_, true);
      K_.gemm(r1 - r0, ldk_ / kLanes, nk, dPT + r0, 1, kQ, krow(kvp, c0), ldk_, dQ + r0 * ldk_,
              ldk_, true);
    });
  }

  void store_dq(const ProblemRef& P, const int64_t* tok, int n, float* ws) const {
    float *QT, *Qr, *dOT, *dOr, *dQ;
    bwd_split(ws, &QT, &Qr, &dOT, &dOr, &dQ);
    for (int i = 0; i < n; ++i)
      store_row(dQ + i * ldk_, a_.dqk, a_.dq.dtype, a_.dq.row(P.b, tok[i], P.hq));
  }

 private:
  // Query rows of the tile, zero past n and past D (width ldk).
  void load_q_rows(const ProblemRef& P, const int64_t* tok, int n, float* Qr) const {
    std::fill(Qr, Qr + kQ * ldk_, 0.f);
    for (int i = 0; i < n; ++i) load_row(a_.q.row(P.b, tok[i], P.hq), a_.q.dtype, a_.dqk, Qr + i * ldk_);
  }
  // QT[d][i] = Qr[i][d] * qmul.
  void transpose_scaled(const float* Qr, float* QT) const {
    float mul[kQ];
    std::fill(mul, mul + kQ, qmul_);
    K_.transpose32(Qr, ldk_, kQ, a_.dqk, QT, kQ);
    K_.scale_rows(QT, a_.dqk, mul);
  }
  const float* krow(int64_t kvp, int64_t c0) const { return k_.get() + (rows.base[kvp] + c0) * ldk_; }
  const float* vrow(int64_t kvp, int64_t c0) const { return v_.get() + (rows.base[kvp] + c0) * ldv_; }
  void bwd_split(float* ws, float** QT, float** Qr, float** dOT, float** dOr, float** dQ) const {
    *QT = ws;
    *Qr = *QT + a_.dqk * kQ;
    *dOT = *Qr + kQ * ldk_;
    *dOr = *dOT + a_.dv * kQ;
    *dQ = *dOr + kQ * ldv_;
  }

  const EngineArgs& a_;
  const KernelTable& K_;
  FloatBuffer k_, v_;
  int64_t ldk_ = 0, ldv_ = 0;
  float qmul_ = 1.f;
};

}  // namespace attnkit::cpu
