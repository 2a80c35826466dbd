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
//   chunk_start(k), chunk_keys(n) a key range [k0, k1) is computed as the chunk
//                                 [a0, a0 + chunk_keys(k1 - a0)), a0 = chunk_start(k0)
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

  // `slack` more zero rows per problem let chunks run up to that far past its end.
  template <class Sched>
  void init(const Sched& s, int64_t align, int64_t slack = 0) {
    const int64_t nkp = s.num_kv_problems();
    base.assign(nkp + 1, 0);
    for (int64_t kp = 0; kp < nkp; ++kp)
      base[kp + 1] = base[kp] + round_up(s.kv_problem(kp).nk, align) + slack;
  }
  int64_t total() const { return base.back(); }
  int64_t count() const { return static_cast<int64_t>(base.size()) - 1; }
};

// Packing work items (kv problem, first row) of `block` rows each, rows_of(kp)
// rows in kv problem kp. Row blocks outermost, kv problems (heads) inside: the
// heads of a token sit side by side in its input row, so neighbouring items read
// neighbouring memory. Head by head, each pass read a head's 2 cache lines out of
// every token row and the hardware prefetchers fetched the rest in vain: measured
// 10-14% of a block-sparse forward with an empty mask (packing only), 2-4% of a
// 2-D / 3-D neighborhood bf16 forward.
template <class RowsOf>
std::vector<std::pair<int64_t, int64_t>> row_block_items(int64_t nkp, int64_t block, RowsOf&& rows_of) {
  int64_t most = 0;
  for (int64_t kp = 0; kp < nkp; ++kp) most = std::max(most, rows_of(kp));
  std::vector<std::pair<int64_t, int64_t>> items;
  for (int64_t r = 0; r < most; r += block)
    for (int64_t kp = 0; kp < nkp; ++kp)
      if (r < rows_of(kp)) items.push_back({kp, r});
  return items;
}

// Calls f(kp, kv, r0, n, tok) for blocks of key rows [r0, r0 + n) of every kv
// problem (kv problem id, ref, token ids of the block), in parallel.
template <class Sched, class F>
void for_each_kv_block(const Sched& s, int threads, F&& f) {
  constexpr int64_t kBlock = 64;
  const auto items = row_block_items(s.num_kv_problems(), kBlock, [&](int64_t kp) { return s.kv_problem(kp).nk; });
  parallel_for(static_cast<int64_t>(items.size()), threads, [&](int64_t it) {
    const int64_t kp = items[it].first, r0 = items[it].second;
    const KvProblemRef kv = s.kv_problem(kp);
    const int64_t n = std::min(kv.nk - r0, kBlock);
    int64_t tok[kBlock];
    for (int64_t i = 0; i < n; ++i) tok[i] = s.kv_token(kv, r0 + i);
    f(kp, kv, r0, n, static_cast<const int64_t*>(tok));
  });
}

// Copies (gathers) a block of key rows of layout L into dst (rows dst_width
// elements of the layout's dtype apart, zero past dim); padding keys (token -1)
// give zero rows.
inline void gather_key_rows(const TokenLayout& L, const KvProblemRef& kv, const int64_t* tok, int64_t n,
                            int64_t dim, int64_t dst_width, void* dst) {
  constexpr int64_t kBatch = 64;
  const void* src[kBatch];
  const int64_t es = dtype_size(L.dtype);
  for (int64_t i0 = 0; i0 < n; i0 += kBatch) {
    const int64_t m = std::min(kBatch, n - i0);
    for (int64_t i = 0; i < m; ++i) src[i] = tok[i0 + i] < 0 ? nullptr : L.row(kv.b, tok[i0 + i], kv.hkv);
    kernels().gather_rows(src, m, dim * es, static_cast<char*>(dst) + i0 * dst_width * es, dst_width * es);
  }
}

class FmaMath {
 public:
  // Shared walks run range by range (engine.hpp): fp32 GEMMs gain nothing from
  // longer chunks, and its softmax steps are on all rows of a range anyway.
  static constexpr bool kTileChunks = false;
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
    for_each_kv_block(s, threads, [&](int64_t kp, const KvProblemRef& kv, int64_t r0, int64_t n,
                                      const int64_t* tok) {
      float* kd = k_.get() + (rows.base[kp] + r0) * ldk_;
      float* vd = v_.get() + (rows.base[kp] + r0) * ldv_;
      if (a.k.dtype == DType::Float32) {
        gather_key_rows(a.k, kv, tok, n, a.dqk, ldk_, kd);
        gather_key_rows(a.v, kv, tok, n, a.dv, ldv_, vd);
        return;
      }
      for (int64_t i = 0; i < n; ++i, kd += ldk_, vd += ldv_) {
        if (tok[i] < 0) {  // padding key
          std::fill(kd, kd + ldk_, 0.f);
          std::fill(vd, vd + ldv_, 0.f);
          continue;
        }
        load_row(a.k.row(kv.b, tok[i], kv.hkv), a.k.dtype, a.dqk, kd);
        load_row(a.v.row(kv.b, tok[i], kv.hkv), a.v.dtype, a.dv, vd);
        std::fill(kd + a.dqk, kd + ldk_, 0.f);
        std::fill(vd + a.dv, vd + ldv_, 0.f);
      }
    });
    qmul_ = a.softcap > 0 ? a.scale : a.scale * kLog2e;
  }

  // Any key range is computed as it is.
  int64_t chunk_start(int64_t k) const { return k; }
  int64_t chunk_keys(int64_t n) const { return n; }

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
    if (a_.q.dtype == DType::Float32) {
      // Q^T straight from the input rows (its rows past dqk spill into Qr, unused here).
      const void* src[kQ];
      for (int i = 0; i < kQ; ++i) src[i] = i < n ? a_.q.row(P.b, tok[i], P.hq) : nullptr;
      K_.gather_transpose32(src, kQ, 4 * a_.dqk, ldk_, QT, kQ);
      float mul[kQ];
      std::fill(mul, mul + kQ, qmul_);
      K_.scale_rows(QT, a_.dqk, mul);
      return;
    }
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

  // Online-softmax step of the query vectors [v0, v1); true if O^T must be rescaled.
  bool softmax(float* ST, int64_t nk, float* m, float* l, float* alpha, float*, int v0 = 0,
               int v1 = kQ / kLanes) const {
    return K_.softmax_step(ST, nk, m, l, alpha, v0, v1);
  }

  // O^T[d][i] += sum_j v_j[d] * P^T[j][i] (P^T overwrote S^T; PT points at the
  // chunk's score row `prow`, which the fp32 policy does not need otherwise).
  void pv(int64_t kvp, int64_t c0, int64_t nk, const float* PT, const float*, float* OT,
          uint32_t bits = kAllQueryVectors, int64_t /*prow*/ = 0) const {
    detail::for_each_vector_run(bits, [&](int v0, int v1) {
      K_.gemm(a_.dv, v1 - v0, nk, vrow(kvp, c0), 1, ldv_, PT + v0 * kLanes, kQ, OT + v0 * kLanes,
              kQ, true);
    });
  }

  // A chunk of query vector v gathered from several key pieces (engine.hpp:
  // for_each_vector_chunk): the same products, piece by piece.
  void scores_pieces(int64_t kvp, const detail::ChunkPiece* pc, int np, const float* QT, float* ST,
                     int v) const {
    for (int i = 0; i < np; ++i) scores(kvp, pc[i].c0, pc[i].nk, QT, ST + pc[i].row * kQ, 1u << v);
  }
  void pv_pieces(int64_t kvp, const detail::ChunkPiece* pc, int np, const float* PT, float* ws,
                 float* OT, int v) const {
    for (int i = 0; i < np; ++i) pv(kvp, pc[i].c0, pc[i].nk, PT + pc[i].row * kQ, ws, OT, 1u << v);
  }
  // Tile chunks are not used with this policy (kTileChunks); these keep the
  // engine's code for them compiling.
  bool softmax_rows(float*, int, const int64_t*, const int64_t*, float*, float*, float*, float*,
                    int) const {
    return false;
  }
  void pv_chunk(int64_t, const detail::ChunkPiece*, const uint32_t*, int, float*, float*) const {}

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
    // Lanes of inactive vectors are neither computed nor read below.
    detail::for_each_vector_run(bits, [&](int v0, int v1) {
      K_.softmax_grad(ST, dPT, nk, lse2, delta, a_.scale, cap_grad, v0, v1);
    });
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
