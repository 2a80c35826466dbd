// attnkit CPU backend: the AMX-bf16 math policy of the engine (bf16 inputs on
// CPUs with AMX tiles; see math_fma.hpp for the policy interface).
//
// Layouts, chosen so that no operand is ever transposed inside the key loop:
//   S^T  = K . Q^T     A = K rows (bf16, packed once), B = Q^T in VNNI (per q tile)
//   O^T += V^T . P^T   A = V^T (bf16, packed once),    B = P^T in VNNI (from the softmax)
//   dP^T = V . dO^T    A = V rows,                     B = dO^T in VNNI
//   dV  += P^T . dO    A = P^T rows (bf16),            B = dO in VNNI by query pairs
//   dK  += dS^T . Q    A = dS^T rows (bf16),           B = Q in VNNI by query pairs
//   dQ^T += K^T . dS^T A = K^T (bf16, packed once),    B = dS^T in VNNI
// The query index stays on the SIMD lanes of every fp32 tile (as in the fp32
// path), so softmax statistics remain lane-wise. Scores are raw q.k; the
// softmax folds scale*log2(e) in (c), except with softcap or a scale <= 0,
// where the scores are scaled first so that masking happens after scaling.
// Key ranges are widened to multiples of 32 (the tile K depth); the engine
// masks the widened keys, and each kv problem's packed rows are zero-padded.
#pragma once

#include "math_fma.hpp"

namespace attnkit::cpu {

namespace detail {

inline uint16_t* u16(FloatBuffer& b) { return reinterpret_cast<uint16_t*>(b.get()); }
inline const uint16_t* u16c(const FloatBuffer& b) { return reinterpret_cast<const uint16_t*>(b.get()); }

// n elements of any input dtype as bf16 bits (tmp: n floats of scratch).
inline void row_to_bf16(const void* src, DType dt, int64_t n, uint16_t* dst, float* tmp) {
  if (dt == DType::BFloat16) {
    std::memcpy(dst, src, 2 * n);
    return;
  }
  load_row(src, dt, n, tmp);
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bf16(tmp[i]);
}

}  // namespace detail

class AmxMath {
 public:
  static constexpr int64_t kAlign = 32;
  KvRows rows;

  template <class Sched>
  AmxMath(const Sched& s, const EngineArgs& a, int threads, bool backward)
      : a_(a), K_(kernels()), B_(*kernels().bf16) {
    rows.init(s, kAlign);
    ldk32_ = round_up(a.dqk, 32);
    ldv32_ = round_up(a.dv, 32);
    d16_ = round_up(a.dqk, kLanes);
    dv16_ = round_up(a.dv, kLanes);
    const int64_t R = rows.total();
    const auto alloc = [](FloatBuffer& b, int64_t halves) { b.reset((halves + 1) / 2 + kLanes); };
    alloc(kb_, R * ldk32_);
    if (backward) alloc(vb_, R * ldv32_);
    // Every packed element is written exactly once (rows, their zero tails and
    // the zero padding rows), so no buffer is cleared first.
    const int64_t dmax = std::max(a.dqk, a.dv);
    FloatBuffer tmp(threads * (dmax + kLanes));
    for_each_kv_row(s, threads, [&](int64_t kp, const KvProblemRef& kv, int64_t r, int64_t tok) {
      float* t = tmp.get() + (dmax + kLanes) * thread_index();
      const int64_t g = rows.base[kp] + r;
      if (r + kPrefetchRows < kv.nk)  // strided rows defeat the hardware prefetchers
        prefetch_row(a.k.row(kv.b, s.kv_token(kv, r + kPrefetchRows), kv.hkv),
                     a.dqk * dtype_size(a.k.dtype));
      fetch_row(a.k, kv, tok, a.dqk, ldk32_, detail::u16(kb_) + g * ldk32_, t);
      if (backward) fetch_row(a.v, kv, tok, a.dv, ldv32_, detail::u16(vb_) + g * ldv32_, t);
    });
    for (int64_t kp = 0; kp < rows.count(); ++kp)
      for (int64_t g = rows.base[kp] + s.kv_problem(kp).nk; g < rows.base[kp + 1]; ++g) {
        std::fill(detail::u16(kb_) + g * ldk32_, detail::u16(kb_) + (g + 1) * ldk32_, uint16_t(0));
        if (backward) std::fill(detail::u16(vb_) + g * ldv32_, detail::u16(vb_) + (g + 1) * ldv32_, uint16_t(0));
      }
    // The forward reads V^T, the backward K^T (k-blocked, see transpose_keys).
    if (backward) {
      alloc(kt_, R * d16_);
      transpose_keys(s, a.k, a.dqk, d16_, detail::u16(kt_), threads);
    } else {
      alloc(vt_, R * dv16_);
      transpose_keys(s, a.v, a.dv, dv16_, detail::u16(vt_), threads);
    }
    prescale_ = a.softcap > 0 || !(a.scale > 0);
    c_ = a.softcap > 0 ? 1.f : prescale_ ? kLog2e : a.scale * kLog2e;
    std::fill(scale_lanes_, scale_lanes_ + kQ, a.scale);
  }

  int64_t ldk() const { return d16_; }
  int64_t ldv() const { return dv16_; }
  int64_t out_rows() const { return dv16_; }
  void begin() const { B_.begin(); }
  void end() const { B_.end(); }

  // ---------------------------------------------------------------- forward
  // Scratch (bf16): Q^T VNNI [ldk32/2][2kQ], P^T VNNI [kv_tile/2][2kQ], q rows [kQ][ldk32].
  int64_t fwd_scratch_floats() const { return (2 * ldk32_ * kQ + a_.kv_tile * kQ) / 2 + kLanes; }

  void fwd_load_q(const ProblemRef& P, const int64_t* tok, int n, float* ws) const {
    uint16_t* QTv = reinterpret_cast<uint16_t*>(ws);
    uint16_t* Qrows = fwd_pv(ws) + a_.kv_tile * kQ;
    load_rows(a_.q, P, tok, n, a_.dqk, ldk32_, Qrows);
    K_.transpose32(Qrows, ldk32_ / 2, kQ, ldk32_ / 2, QTv, kQ);
  }

  // Active query vectors (bits) are column runs of 16: of Q^T VNNI (2 halves per
  // query) and of the fp32 tiles.
  void scores(int64_t kvp, int64_t c0, int64_t nk, const float* ws, float* ST,
              uint32_t bits = kAllQueryVectors) const {
    const uint16_t* QTv = reinterpret_cast<const uint16_t*>(ws);
    const uint16_t* k = detail::u16c(kb_) + (rows.base[kvp] + c0) * ldk32_;
    detail::for_each_vector_run(bits, [&](int v0, int v1) {
      B_.tile_gemm(nk, (v1 - v0) * kLanes, ldk32_, k, ldk32_, QTv + 2 * kLanes * v0, 2 * kQ,
                   ST + kLanes * v0, kQ, false);
    });
  }

  void finish_scores(float* ST, int64_t nk, float* cap_grad) const {
    if (prescale_) K_.scale_rows(ST, nk, scale_lanes_);
    if (a_.softcap > 0) K_.softcap(ST, nk, a_.softcap, cap_grad);
  }

  bool softmax(float* ST, int64_t nk, float* m, float* l, float* alpha, float* ws) const {
    return B_.softmax_step_vnni(ST, nk, c_, m, l, alpha, fwd_pv(ws));
  }

  void pv(int64_t kvp, int64_t c0, int64_t nk, const float*, float* ws, float* OT,
          uint32_t bits = kAllQueryVectors) const {
    const uint16_t* vt = detail::u16c(vt_) + (rows.base[kvp] + c0) * dv16_;
    detail::for_each_vector_run(bits, [&](int v0, int v1) {
      B_.tile_gemm_ks(dv16_, (v1 - v0) * kLanes, nk, vt, 32, 32 * dv16_,
                      fwd_pv(ws) + 2 * kLanes * v0, 2 * kQ, OT + kLanes * v0, kQ, true);
    });
  }

  // ---------------------------------------------------------------- backward
  // Scratch (bf16 unless noted): Q^T VNNI, dO^T VNNI, Q VNNI-by-query-pairs,
  // dO VNNI-by-query-pairs, P^T rows, dS^T rows, dS^T VNNI, q rows, dO rows;
  // then dQ^T and dQ rows (fp32).
  int64_t bwd_scratch_floats() const {
    return (bwd_halves() + 1) / 2 + 2 * d16_ * kQ + kLanes;
  }

  void bwd_load_q(const ProblemRef& P, const int64_t* tok, int n, float* ws) const {
    Bwd b = bwd_split(ws);
    for (int i = 0; i < n; ++i)  // written by store_dq at the end of the tile
      prefetch_row(a_.dq.row(P.b, tok[i], P.hq), a_.dqk * dtype_size(a_.dq.dtype), true);
    load_rows(a_.q, P, tok, n, a_.dqk, ldk32_, b.Qrows);
    load_rows(a_.dout, P, tok, n, a_.dv, ldv32_, b.dOrows);
    K_.transpose32(b.Qrows, ldk32_ / 2, kQ, ldk32_ / 2, b.QTv, kQ);
    K_.transpose32(b.dOrows, ldv32_ / 2, kQ, ldv32_ / 2, b.dOTv, kQ);
    for (int p = 0; p < kQ / 2; ++p) {
      K_.interleave16(b.Qrows + 2 * p * ldk32_, b.Qrows + (2 * p + 1) * ldk32_, d16_, b.Qv + 2 * p * d16_);
      K_.interleave16(b.dOrows + 2 * p * ldv32_, b.dOrows + (2 * p + 1) * ldv32_, dv16_, b.dOv + 2 * p * dv16_);
    }
    std::fill(b.dQT, b.dQT + d16_ * kQ, 0.f);
  }

  const float* bwd_qt(const float* ws) const { return ws; }  // Q^T VNNI is first

  void grad_step(int64_t kvp, int64_t c0, int64_t nk, int, float* ST, float* dPT,
                 const float* cap_grad, const float* lse2, const float* delta, float* dKacc,
                 float* dVacc, float* ws, uint32_t bits = kAllQueryVectors) const {
    Bwd b = bwd_split(ws);
    const uint16_t* vrow = detail::u16c(vb_) + (rows.base[kvp] + c0) * ldv32_;
    detail::for_each_vector_run(bits, [&](int v0, int v1) {
      B_.tile_gemm(nk, (v1 - v0) * kLanes, ldv32_, vrow, ldv32_, b.dOTv + 2 * kLanes * v0, 2 * kQ,
                   dPT + kLanes * v0, kQ, false);
    });
    if (bits != kAllQueryVectors) detail::fill_vectors(dPT, nk, ~bits & kAllQueryVectors, 0.f);
    B_.softmax_grad_bf16(ST, dPT, nk, c_, lse2, delta, a_.scale, cap_grad, b.P, b.dS, b.dSv);
    // dV and dK contract over the queries (K = 64 in steps of 32): inactive lanes
    // hold P = dS = 0 and add nothing.
    B_.tile_gemm(nk, dv16_, kQ, b.P, kQ, b.dOv, 2 * dv16_, dVacc + c0 * dv16_, dv16_, true);
    B_.tile_gemm(nk, d16_, kQ, b.dS, kQ, b.Qv, 2 * d16_, dKacc + c0 * d16_, d16_, true);
    const uint16_t* kt = detail::u16c(kt_) + (rows.base[kvp] + c0) * d16_;
    detail::for_each_vector_run(bits, [&](int v0, int v1) {
      B_.tile_gemm_ks(d16_, (v1 - v0) * kLanes, nk, kt, 32, 32 * d16_, b.dSv + 2 * kLanes * v0,
                      2 * kQ, b.dQT + kLanes * v0, kQ, true);
    });
  }

  void store_dq(const ProblemRef& P, const int64_t* tok, int n, float* ws) const {
    Bwd b = bwd_split(ws);
    K_.transpose32(b.dQT, kQ, a_.dqk, kQ, b.dQ, d16_);
    for (int i = 0; i < n; ++i) store_row(b.dQ + i * d16_, a_.dqk, a_.dq.dtype, a_.dq.row(P.b, tok[i], P.hq));
  }

 private:
  struct Bwd {
    uint16_t *QTv, *dOTv, *Qv, *dOv, *P, *dS, *dSv, *Qrows, *dOrows;
    float *dQT, *dQ;
  };
  int64_t bwd_halves() const {
    return 2 * (ldk32_ * kQ + ldv32_ * kQ) + kQ * d16_ + kQ * dv16_ + 3 * a_.kv_tile * kQ;
  }
  Bwd bwd_split(float* ws) const {
    Bwd b;
    b.QTv = reinterpret_cast<uint16_t*>(ws);
    b.dOTv = b.QTv + ldk32_ * kQ;
    b.Qv = b.dOTv + ldv32_ * kQ;
    b.dOv = b.Qv + kQ * d16_;
    b.P = b.dOv + kQ * dv16_;
    b.dS = b.P + a_.kv_tile * kQ;
    b.dSv = b.dS + a_.kv_tile * kQ;
    b.Qrows = b.dSv + a_.kv_tile * kQ;
    b.dOrows = b.Qrows + kQ * ldk32_;
    b.dQT = ws + (bwd_halves() + 1) / 2;
    b.dQ = b.dQT + d16_ * kQ;
    return b;
  }
  uint16_t* fwd_pv(float* ws) const { return reinterpret_cast<uint16_t*>(ws) + ldk32_ * kQ; }

  // bf16 rows of a query tile, [kQ][width], zero past n rows and past dim.
  void load_rows(const TokenLayout& L, const ProblemRef& P, const int64_t* tok, int n, int64_t dim,
                 int64_t width, uint16_t* out) const {
    // The rows are one head of [B, S, H, D]: strided, so the hardware prefetchers
    // do not see them coming; asking for all of them first overlaps the misses.
    for (int i = 0; i < n; ++i) prefetch_row(L.row(P.b, tok[i], P.hq), 2 * dim);
    std::fill(out, out + kQ * width, uint16_t(0));
    for (int i = 0; i < n; ++i) std::memcpy(out + i * width, L.row(P.b, tok[i], P.hq), 2 * dim);
  }

  // One key row as bf16, `width` wide (zero past dim).
  static void fetch_row(const TokenLayout& L, const KvProblemRef& kv, int64_t tok, int64_t dim,
                        int64_t width, uint16_t* dst, float* tmp) {
    detail::row_to_bf16(L.row(kv.b, tok, kv.hkv), L.dtype, dim, dst, tmp);
    std::fill(dst + dim, dst + width, uint16_t(0));
  }

  // The operand's key rows transposed in 32-key blocks: element (d, r) at
  // out[(r/32)*32*dims + d*32 + r%32] (the tile_gemm_ks layout), straight from
  // the input rows. Key pairs are interleaved into 32-bit units, which are then
  // transposed block by block; padding keys and dims are zero.
  template <class Sched>
  void transpose_keys(const Sched& s, const TokenLayout& L, int64_t dim, int64_t dims, uint16_t* out,
                      int threads) const {
    constexpr int64_t kChunk = 256;
    std::vector<std::pair<int64_t, int64_t>> items;
    for (int64_t kp = 0; kp < rows.count(); ++kp)
      for (int64_t r = 0; r < rows.base[kp + 1] - rows.base[kp]; r += kChunk) items.push_back({kp, r});
    const int64_t per = kChunk * dims / 2 + dims + dim + kLanes;  // pairs, two rows, fp32 row
    FloatBuffer tmp(threads * per);
    parallel_for(static_cast<int64_t>(items.size()), threads, [&](int64_t it) {
      const int64_t kp = items[it].first, r0 = items[it].second;
      const KvProblemRef kv = s.kv_problem(kp);
      const int64_t nr = rows.base[kp + 1] - rows.base[kp], nc = std::min(kChunk, nr - r0);
      float* base = tmp.get() + thread_index() * per;
      uint16_t* pairs = reinterpret_cast<uint16_t*>(base);
      uint16_t* two = pairs + kChunk * dims;  // rows 2p and 2p+1
      float* f32 = base + kChunk * dims / 2 + dims;
      for (int64_t p = 0; p < nc / 2; ++p) {
        if (r0 + 2 * p + kPrefetchRows + 1 < kv.nk)
          for (int e = 0; e < 2; ++e)
            prefetch_row(L.row(kv.b, s.kv_token(kv, r0 + 2 * p + kPrefetchRows + e), kv.hkv),
                         dim * dtype_size(L.dtype));
        for (int e = 0; e < 2; ++e) {
          const int64_t r = r0 + 2 * p + e;
          if (r < kv.nk) fetch_row(L, kv, s.kv_token(kv, r), dim, dims, two + e * dims, f32);
          else std::fill(two + e * dims, two + (e + 1) * dims, uint16_t(0));
        }
        K_.interleave16(two, two + dims, dims, pairs + 2 * p * dims);
      }
      for (int64_t b = 0; b < nc; b += 32)
        K_.transpose32(pairs + b * dims, dims, 16, dims, out + (rows.base[kp] + r0 + b) * dims, 16);
    });
  }

  const EngineArgs& a_;
  const KernelTable& K_;
  const Bf16Kernels& B_;
  FloatBuffer kb_, vb_, vt_, kt_;
  int64_t ldk32_ = 0, ldv32_ = 0, d16_ = 0, dv16_ = 0;
  bool prescale_ = false;
  float c_ = 1.f;
  float scale_lanes_[kQ];
};

}  // namespace attnkit::cpu
