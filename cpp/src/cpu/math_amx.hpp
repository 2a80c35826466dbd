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
    auto zeroed = [](FloatBuffer& b, int64_t halves) { b.reset((halves + 1) / 2 + kLanes, true); };
    zeroed(kb_, R * ldk32_);
    if (backward) {
      zeroed(vb_, R * ldv32_);
      zeroed(kt_, R * d16_);
    } else {
      zeroed(vt_, R * dv16_);
    }
    // Per thread: an fp32 row for widening, then a bf16 row.
    const int64_t dmax = std::max(a.dqk, a.dv), tmp_ld = 2 * dmax + kLanes;
    FloatBuffer tmp(threads * tmp_ld);
    for_each_kv_row(s, threads, [&](int64_t kp, const KvProblemRef& kv, int64_t r, int64_t tok) {
      float* t = tmp.get() + tmp_ld * thread_index();
      uint16_t* krow = detail::u16(kb_) + (rows.base[kp] + r) * ldk32_;
      detail::row_to_bf16(a.k.row(kv.b, tok, kv.hkv), a.k.dtype, a.dqk, krow, t);
      const int64_t nr = rows.base[kp + 1] - rows.base[kp];
      if (backward) {
        uint16_t* vrow = detail::u16(vb_) + (rows.base[kp] + r) * ldv32_;
        detail::row_to_bf16(a.v.row(kv.b, tok, kv.hkv), a.v.dtype, a.dv, vrow, t);
        uint16_t* kt = detail::u16(kt_) + rows.base[kp] * d16_;
        for (int64_t d = 0; d < a.dqk; ++d) kt[d * nr + r] = krow[d];
      } else {
        uint16_t* vt = detail::u16(vt_) + rows.base[kp] * dv16_;
        uint16_t* v = reinterpret_cast<uint16_t*>(t + dmax);
        detail::row_to_bf16(a.v.row(kv.b, tok, kv.hkv), a.v.dtype, a.dv, v, t);
        for (int64_t d = 0; d < a.dv; ++d) vt[d * nr + r] = v[d];
      }
    });
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
  // Scratch: Q^T VNNI [ldk32/2][2kQ], P^T VNNI [kv_tile/2][2kQ] (bf16), one row.
  int64_t fwd_scratch_floats() const {
    return (ldk32_ * kQ + a_.kv_tile * kQ) / 2 + std::max(a_.dqk, a_.dv) + kLanes;
  }

  void fwd_load_q(const ProblemRef& P, const int64_t* tok, int n, float* ws) const {
    uint16_t* QTv = reinterpret_cast<uint16_t*>(ws);
    float* row = ws + (ldk32_ * kQ + a_.kv_tile * kQ) / 2;
    pack_q_vnni(a_.q, P, tok, n, a_.dqk, ldk32_, QTv, row);
  }

  void scores(int64_t kvp, int64_t c0, int64_t nk, const float* ws, float* ST) const {
    const uint16_t* QTv = reinterpret_cast<const uint16_t*>(ws);
    B_.tile_gemm(nk, kQ, ldk32_, detail_k(kvp, c0), ldk32_, QTv, 2 * kQ, ST, kQ, false);
  }

  void finish_scores(float* ST, int64_t nk, float* cap_grad) const {
    if (prescale_) K_.scale_rows(ST, nk, scale_lanes_);
    if (a_.softcap > 0) K_.softcap(ST, nk, a_.softcap, cap_grad);
  }

  bool softmax(float* ST, int64_t nk, float* m, float* l, float* alpha, float* ws) const {
    return B_.softmax_step_vnni(ST, nk, c_, m, l, alpha, fwd_pv(ws));
  }

  void pv(int64_t kvp, int64_t c0, int64_t nk, const float*, float* ws, float* OT) const {
    const int64_t nr = rows.base[kvp + 1] - rows.base[kvp];
    const uint16_t* vt = reinterpret_cast<const uint16_t*>(vt_.get()) + rows.base[kvp] * dv16_ + c0;
    B_.tile_gemm(dv16_, kQ, nk, vt, nr, fwd_pv(ws), 2 * kQ, OT, kQ, true);
  }

  // ---------------------------------------------------------------- backward
  // Scratch (bf16 unless noted): Q^T VNNI, dO^T VNNI, Q VNNI-by-query-pairs,
  // dO VNNI-by-query-pairs, P^T rows, dS^T rows, dS^T VNNI, dQ^T (fp32), one row.
  int64_t bwd_scratch_floats() const {
    const int64_t halves = ldk32_ * kQ + ldv32_ * kQ + kQ * d16_ + kQ * dv16_ + 3 * a_.kv_tile * kQ;
    return (halves + 1) / 2 + d16_ * kQ + std::max(a_.dqk, a_.dv) + kLanes;
  }

  void bwd_load_q(const ProblemRef& P, const int64_t* tok, int n, float* ws) const {
    Bwd b = bwd_split(ws);
    std::fill(ws, ws + bwd_scratch_floats(), 0.f);
    pack_q_vnni(a_.q, P, tok, n, a_.dqk, ldk32_, b.QTv, b.row);
    pack_q_vnni(a_.dout, P, tok, n, a_.dv, ldv32_, b.dOTv, b.row);
    pack_rows_vnni(a_.q, P, tok, n, a_.dqk, d16_, b.Qv, b.row);
    pack_rows_vnni(a_.dout, P, tok, n, a_.dv, dv16_, b.dOv, b.row);
  }

  const float* bwd_qt(const float* ws) const { return ws; }  // Q^T VNNI is first

  void grad_step(int64_t kvp, int64_t c0, int64_t nk, int, float* ST, float* dPT,
                 const float* cap_grad, const float* lse2, const float* delta, float* dKacc,
                 float* dVacc, float* ws) const {
    Bwd b = bwd_split(ws);
    const uint16_t* vrow = reinterpret_cast<const uint16_t*>(vb_.get()) + (rows.base[kvp] + c0) * ldv32_;
    B_.tile_gemm(nk, kQ, ldv32_, vrow, ldv32_, b.dOTv, 2 * kQ, dPT, kQ, false);
    B_.softmax_grad_bf16(ST, dPT, nk, c_, lse2, delta, a_.scale, cap_grad, b.P, b.dS, b.dSv);
    B_.tile_gemm(nk, dv16_, kQ, b.P, kQ, b.dOv, 2 * dv16_, dVacc + c0 * dv16_, dv16_, true);
    B_.tile_gemm(nk, d16_, kQ, b.dS, kQ, b.Qv, 2 * d16_, dKacc + c0 * d16_, d16_, true);
    const int64_t nr = rows.base[kvp + 1] - rows.base[kvp];
    const uint16_t* kt = reinterpret_cast<const uint16_t*>(kt_.get()) + rows.base[kvp] * d16_ + c0;
    B_.tile_gemm(d16_, kQ, nk, kt, nr, b.dSv, 2 * kQ, b.dQT, kQ, true);
  }

  void store_dq(const ProblemRef& P, const int64_t* tok, int n, float* ws) const {
    Bwd b = bwd_split(ws);
    for (int i = 0; i < n; ++i) {
      for (int64_t d = 0; d < a_.dqk; ++d) b.row[d] = b.dQT[d * kQ + i];
      store_row(b.row, a_.dqk, a_.dq.dtype, a_.dq.row(P.b, tok[i], P.hq));
    }
  }

 private:
  struct Bwd {
    uint16_t *QTv, *dOTv, *Qv, *dOv, *P, *dS, *dSv;
    float *dQT, *row;
  };
  Bwd bwd_split(float* ws) const {
    Bwd b;
    uint16_t* h = reinterpret_cast<uint16_t*>(ws);
    b.QTv = h;
    b.dOTv = b.QTv + ldk32_ * kQ;
    b.Qv = b.dOTv + ldv32_ * kQ;
    b.dOv = b.Qv + kQ * d16_;
    b.P = b.dOv + kQ * dv16_;
    b.dS = b.P + a_.kv_tile * kQ;
    b.dSv = b.dS + a_.kv_tile * kQ;
    const int64_t halves = b.dSv + a_.kv_tile * kQ - h;
    b.dQT = ws + (halves + 1) / 2;
    b.row = b.dQT + d16_ * kQ;
    return b;
  }
  uint16_t* fwd_pv(float* ws) const { return reinterpret_cast<uint16_t*>(ws) + ldk32_ * kQ; }
  const uint16_t* detail_k(int64_t kvp, int64_t c0) const {
    return reinterpret_cast<const uint16_t*>(kb_.get()) + (rows.base[kvp] + c0) * ldk32_;
  }

  // X^T of a query tile in VNNI: out[(d/2)*2kQ + 2i + d%2] = x_i[d], zero-padded
  // to `depth` dims and kQ rows.
  void pack_q_vnni(const TokenLayout& L, const ProblemRef& P, const int64_t* tok, int n,
                   int64_t dim, int64_t depth, uint16_t* out, float* row) const {
    std::fill(out, out + depth * kQ, uint16_t(0));
    for (int i = 0; i < n; ++i) {
      load_row(L.row(P.b, tok[i], P.hq), L.dtype, dim, row);
      for (int64_t d = 0; d < dim; ++d) out[(d / 2) * 2 * kQ + 2 * i + (d & 1)] = float_to_bf16(row[d]);
    }
  }
  // X of a query tile in VNNI by query pairs: out[(i/2)*2*width + 2d + i%2] = x_i[d]
  // (out must be zero on entry: padding rows and dims stay zero).
  void pack_rows_vnni(const TokenLayout& L, const ProblemRef& P, const int64_t* tok, int n,
                      int64_t dim, int64_t width, uint16_t* out, float* row) const {
    for (int i = 0; i < n; ++i) {
      load_row(L.row(P.b, tok[i], P.hq), L.dtype, dim, row);
      uint16_t* o = out + (i / 2) * 2 * width + (i & 1);
      for (int64_t d = 0; d < dim; ++d) o[2 * d] = float_to_bf16(row[d]);
    }
  }

  const EngineArgs& a_;
  const KernelTable& K_;
  const Bf16Kernels& B_;
  FloatBuffer kb_, vt_, vb_, kt_;
  int64_t ldk32_ = 0, ldv32_ = 0, d16_ = 0, dv16_ = 0;
  bool prescale_ = false;
  float c_ = 1.f;
  float scale_lanes_[kQ];
};

}  // namespace attnkit::cpu
