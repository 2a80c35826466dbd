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

}  // namespace detail

class AmxMath {
 public:
  // Shared walks gather a tile's ranges into chunks (engine.hpp): O^T stays in
  // tile registers over a chunk and each V^T block serves all its vectors.
  static constexpr bool kTileChunks = true;
  KvRows rows;

  template <class Sched>
  AmxMath(const Sched& s, const EngineArgs& a, int threads, bool backward)
      : a_(a), K_(kernels()), B_(*kernels().bf16) {
    // Chunks start on multiples of 16 keys for schedules that ask for it (then 32
    // zero rows per kv problem let a chunk run past its end), else of 32.
    start16_ = key_ranges_16<Sched>::value;
    rows.init(s, 32, start16_ ? 32 : 0);
    ldk32_ = round_up(a.dqk, 32);
    ldv32_ = round_up(a.dv, 32);
    d16_ = round_up(a.dqk, kLanes);
    dv16_ = round_up(a.dv, kLanes);
    const int64_t R = rows.total();
    const auto alloc = [](FloatBuffer& b, int64_t halves) { b.reset((halves + 1) / 2 + kLanes); };
    alloc(kb_, R * ldk32_);
    if (backward) alloc(vb_, R * ldv32_);
    // Every packed element is written exactly once (rows, their zero tails and
    // the zero padding rows), so no buffer is cleared first. The AMX policy runs
    // only for bf16 inputs: rows are copied as they are.
    // The forward reads V^T, the backward K^T (k-blocked, see transpose_keys), and
    // with 16-aligned chunks also a copy shifted by 16 keys. The row copies (K; and
    // V in the backward) run in the same work items: one parallel region less, and
    // on a shared machine each region's barrier can cost a preempted thread's
    // time slice.
    FloatBuffer& t = backward ? kt_ : vt_;
    FloatBuffer& ts = backward ? kts_ : vts_;
    const TokenLayout& L = backward ? a.k : a.v;
    const int64_t dim = backward ? a.dqk : a.dv, dims = backward ? d16_ : dv16_;
    zero_row_.assign(dims, 0);
    alloc(t, R * dims);
    if (start16_) alloc(ts, R * dims);
    const auto copy_rows = [&](int64_t kp, const KvProblemRef& kv, int64_t r0, int64_t n, const int64_t* tok,
                               int64_t nc) {
      const int64_t g = rows.base[kp] + r0;
      uint16_t* kd = detail::u16(kb_) + g * ldk32_;
      gather_key_rows(a.k, kv, tok, n, a.dqk, ldk32_, kd);
      std::fill(kd + n * ldk32_, kd + nc * ldk32_, uint16_t(0));  // padding rows
      if (backward) {
        uint16_t* vd = detail::u16(vb_) + g * ldv32_;
        gather_key_rows(a.v, kv, tok, n, a.dv, ldv32_, vd);
        std::fill(vd + n * ldv32_, vd + nc * ldv32_, uint16_t(0));
      }
    };
    transpose_keys(s, L, dim, dims, detail::u16(t), start16_ ? detail::u16(ts) : nullptr, threads, copy_rows);
    prescale_ = a.softcap > 0 || !(a.scale > 0);
    c_ = a.softcap > 0 ? 1.f : prescale_ ? kLog2e : a.scale * kLog2e;
    std::fill(scale_lanes_, scale_lanes_ + kQ, a.scale);
  }

  // Chunks start on multiples of 32 (or 16) keys and hold multiples of 32 (the
  // tile depth).
  int64_t chunk_start(int64_t k) const { return start16_ ? k / 16 * 16 : k / 32 * 32; }
  int64_t chunk_keys(int64_t n) const { return round_up(n, 32); }

  int64_t ldk() const { return d16_; }
  int64_t ldv() const { return dv16_; }
  int64_t out_rows() const { return dv16_; }
  void begin() const { B_.begin(); }
  void end() const { B_.end(); }

  // ---------------------------------------------------------------- forward
  // Scratch (bf16): Q^T VNNI [ldk32/2][2kQ], P^T VNNI [kv_tile/2][2kQ].
  int64_t fwd_scratch_floats() const { return (ldk32_ * kQ + a_.kv_tile * kQ) / 2 + kLanes; }

  // Q^T VNNI straight from the input rows (pairs of dims are 32-bit units).
  void fwd_load_q(const ProblemRef& P, const int64_t* tok, int n, float* ws) const {
    uint16_t* QTv = reinterpret_cast<uint16_t*>(ws);
    const void* src[kQ];
    for (int i = 0; i < kQ; ++i) src[i] = i < n ? a_.q.row(P.b, tok[i], P.hq) : nullptr;
    K_.gather_transpose32(src, kQ, 2 * a_.dqk, ldk32_ / 2, QTv, kQ);
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

  // Writes P^T (VNNI) for the chunk's rows from row 0 on.
  bool softmax(float* ST, int64_t nk, float* m, float* l, float* alpha, float* ws, int v0 = 0,
               int v1 = kQ / kLanes) const {
    return B_.softmax_step_vnni(ST, nk, c_, m, l, alpha, fwd_pv(ws), v0, v1);
  }

  // Keys [c0, c0 + nk) whose probabilities are the chunk's P^T rows from `prow` on.
  void pv(int64_t kvp, int64_t c0, int64_t nk, const float*, float* ws, float* OT,
          uint32_t bits = kAllQueryVectors, int64_t prow = 0) const {
    const uint16_t* vt = key_blocks(vt_, vts_, kvp, c0, dv16_);
    const uint16_t* pt = fwd_pv(ws) + prow * kQ;  // VNNI: row pairs of 2 * kQ halves
    detail::for_each_vector_run(bits, [&](int v0, int v1) {
      B_.tile_gemm_ks(dv16_, (v1 - v0) * kLanes, nk, vt, 32, 32 * dv16_, pt + 2 * kLanes * v0,
                      2 * kQ, OT + kLanes * v0, kQ, true);
    });
  }

  // A chunk of query vector v gathered from several key pieces (engine.hpp:
  // for_each_vector_chunk): S^T rows of all pieces with Q^T in tile registers,
  // and O^T in tile registers over all pieces.
  void scores_pieces(int64_t kvp, const detail::ChunkPiece* pc, int np, const float* ws, float* ST,
                     int v) const {
    const uint16_t* QTv = reinterpret_cast<const uint16_t*>(ws);
    const uint16_t* A[detail::kMaxPieces];
    int64_t M[detail::kMaxPieces];
    for (int i = 0; i < np; ++i) {
      A[i] = detail::u16c(kb_) + (rows.base[kvp] + pc[i].c0) * ldk32_;
      M[i] = pc[i].nk;
    }
    B_.tile_gemm_gather_m(np, A, M, ldk32_, ldk32_, QTv + 2 * kLanes * v, 2 * kQ, ST + kLanes * v, kQ);
  }
  void pv_pieces(int64_t kvp, const detail::ChunkPiece* pc, int np, const float*, float* ws, float* OT,
                 int v) const {
    const uint16_t* A[detail::kMaxPieces];
    int64_t K[detail::kMaxPieces];
    for (int i = 0; i < np; ++i) {
      A[i] = key_blocks(vt_, vts_, kvp, pc[i].c0, dv16_);
      K[i] = pc[i].nk;
    }
    B_.tile_gemm_gather_k(dv16_, np, A, K, 32, 32 * dv16_, fwd_pv(ws) + 2 * kLanes * v, 2 * kQ,
                          OT + kLanes * v, kQ, true);
  }

  // Tile chunks (engine.hpp): the softmax of vector v over its pieces of the
  // chunk, and O^T += V^T P^T over all pieces, each for the vectors in its bits.
  bool softmax_rows(float* ST, int np, const int64_t* r0, const int64_t* nr, float* m, float* l,
                    float* alpha, float* ws, int v) const {
    return B_.softmax_step_vnni_rows(ST, np, r0, nr, c_, m, l, alpha, fwd_pv(ws), v);
  }
  void pv_chunk(int64_t kvp, const detail::ChunkPiece* pc, const uint32_t* bits, int np, float* ws,
                float* OT) const {
    const uint16_t* A[detail::kMaxPieces];
    int64_t K[detail::kMaxPieces], row[detail::kMaxPieces];
    for (int i = 0; i < np; ++i) {
      A[i] = key_blocks(vt_, vts_, kvp, pc[i].c0, dv16_);
      K[i] = pc[i].nk;
      row[i] = pc[i].row;
    }
    B_.tile_gemm_vectors(dv16_, np, A, K, row, bits, 32 * dv16_, fwd_pv(ws), 2 * kQ, OT, kQ);
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
    // Inactive vectors get P = dS = 0 (the dV / dK products contract over all lanes).
    B_.softmax_grad_bf16(ST, dPT, nk, c_, lse2, delta, a_.scale, cap_grad, b.P, b.dS, b.dSv, bits);
    // dV and dK contract over the queries (K = 64 in steps of 32): inactive lanes
    // hold P = dS = 0 and add nothing.
    B_.tile_gemm(nk, dv16_, kQ, b.P, kQ, b.dOv, 2 * dv16_, dVacc + c0 * dv16_, dv16_, true);
    B_.tile_gemm(nk, d16_, kQ, b.dS, kQ, b.Qv, 2 * d16_, dKacc + c0 * d16_, d16_, true);
    const uint16_t* kt = key_blocks(kt_, kts_, kvp, c0, d16_);
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

  // A transposed operand (V^T or K^T) from key c0 on, as tile_gemm_ks's A (lda
  // 32, k slices 32 * dims apart): the plain copy when c0 is a multiple of 32, else
  // the copy shifted by 16 keys.
  const uint16_t* key_blocks(const FloatBuffer& plain, const FloatBuffer& shifted, int64_t kvp,
                             int64_t c0, int64_t dims) const {
    if (c0 % 32 == 0) return detail::u16c(plain) + (rows.base[kvp] + c0) * dims;
    return detail::u16c(shifted) + (rows.base[kvp] + c0 + 16) * dims;
  }

  // bf16 rows of a query tile, [kQ][width], zero past n rows and past dim.
  void load_rows(const TokenLayout& L, const ProblemRef& P, const int64_t* tok, int n, int64_t dim,
                 int64_t width, uint16_t* out) const {
    // The rows are one head of [B, S, H, D]: strided, so the hardware prefetchers
    // do not see them coming; asking for all of them first overlaps the misses.
    for (int i = 0; i < n; ++i) prefetch_row(L.row(P.b, tok[i], P.hq), 2 * dim);
    std::fill(out, out + kQ * width, uint16_t(0));
    for (int i = 0; i < n; ++i) std::memcpy(out + i * width, L.row(P.b, tok[i], P.hq), 2 * dim);
  }

  // The operand's key rows transposed in 32-key blocks, straight from the input
  // rows: element (d, g) of packed row g at out[(g/32)*32*dims + d*32 + g%32] (the
  // tile_gemm_ks layout) and, if `shifted`, at the same place of row g + 16 there
  // (32-key blocks starting at the keys 16 mod 32; the block past a problem's end
  // is the next problem's first, never read for this one). Key pairs are
  // interleaved into 32-bit units, which are then transposed; padding keys and
  // dims are zero.
  // Each item first calls copy_rows(kp, kv, r0, n, tok, nc): rows [r0, r0 + nc)
  // of the packed rows, n of them keys with the token ids tok, the rest padding.
  template <class Sched, class CopyRows>
  void transpose_keys(const Sched& s, const TokenLayout& L, int64_t dim, int64_t dims, uint16_t* out,
                      uint16_t* shifted, int threads, CopyRows&& copy_rows) const {
    // Items of kBlock rows; each gathers 16 rows before its first too (zero before
    // a problem's first row), so that the shifted blocks (rows [G - 16, G + 16)
    // for G a multiple of 32) are whole 16-pair transposes as well.
    constexpr int64_t kBlock = 128, kLead = 16;
    const auto items = row_block_items(rows.count(), kBlock,
                                       [&](int64_t kp) { return rows.base[kp + 1] - rows.base[kp]; });
    const int64_t per = (kBlock + kLead) * dims + kLanes;  // rows, then pairs (halves: 2x)
    FloatBuffer tmp(threads * per);
    parallel_for(static_cast<int64_t>(items.size()), threads, [&](int64_t it) {
      const int64_t kp = items[it].first, r0 = items[it].second;
      const KvProblemRef kv = s.kv_problem(kp);
      const int64_t nr = rows.base[kp + 1] - rows.base[kp], nc = std::min(kBlock, nr - r0);
      // rowbuf row i is packed row r0 - kLead + i, for i < kLead + nc.
      uint16_t* rowbuf = reinterpret_cast<uint16_t*>(tmp.get() + thread_index() * per);
      uint16_t* pairs = rowbuf + (kBlock + kLead) * dims;  // [(kLead + nc) / 2][dims] 32-bit units
      const int64_t g0 = std::max<int64_t>(r0 - kLead, 0), g1 = std::min(kv.nk, r0 + nc);
      int64_t tok[kBlock + kLead];
      for (int64_t g = g0; g < g1; ++g) tok[g - g0] = s.kv_token(kv, g);
      const int64_t own = r0 - g0;  // tok[own + i] is packed row r0 + i
      copy_rows(kp, kv, r0, std::max<int64_t>(0, g1 - r0), static_cast<const int64_t*>(tok + own), nc);
      const int64_t i0 = g0 - (r0 - kLead), i1 = std::max(i0, g1 - (r0 - kLead));
      if (dim == dims) {
        // Pairs straight from the input rows (no padding dims to clear); missing and
        // padding keys read a zero row.
        const uint16_t* src[kBlock + kLead];
        for (int64_t i = 0; i < kLead + nc; ++i) {
          const int64_t tk = i >= i0 && i < i1 ? tok[i - i0] : -1;
          src[i] = tk < 0 ? zero_row_.data() : static_cast<const uint16_t*>(L.row(kv.b, tk, kv.hkv));
        }
        constexpr int64_t kAhead = 8;  // rows prefetched ahead: the key order is not the memory order
        const int64_t nrow = kLead + nc;
        for (int64_t i = 0; i < std::min(nrow, kAhead); ++i)
          for (int64_t o = 0; o < 2 * dims; o += 64) __builtin_prefetch(reinterpret_cast<const char*>(src[i]) + o);
        for (int64_t p = 0; p < nrow / 2; ++p) {
          for (int64_t i = 2 * p + kAhead; i < std::min(nrow, 2 * p + kAhead + 2); ++i)
            for (int64_t o = 0; o < 2 * dims; o += 64) __builtin_prefetch(reinterpret_cast<const char*>(src[i]) + o);
          K_.interleave16(src[2 * p], src[2 * p + 1], dims, pairs + 2 * p * dims);
        }
      } else {
        std::fill(rowbuf, rowbuf + i0 * dims, uint16_t(0));
        if (g1 > g0) gather_key_rows(L, kv, tok, g1 - g0, dim, dims, rowbuf + i0 * dims);
        std::fill(rowbuf + i1 * dims, rowbuf + (kLead + nc) * dims, uint16_t(0));
        for (int64_t p = 0; p < (kLead + nc) / 2; ++p)
          K_.interleave16(rowbuf + 2 * p * dims, rowbuf + (2 * p + 1) * dims, dims, pairs + 2 * p * dims);
      }
      for (int64_t b = 0; b < nc; b += 32) {
        // Plain block at r0 + b: rows [r0 + b, r0 + b + 32) = pairs from (kLead + b) / 2.
        K_.transpose32(pairs + (kLead + b) * dims, dims, 16, dims, out + (rows.base[kp] + r0 + b) * dims, 16);
        // Shifted block at G = r0 + b: rows [G - 16, G + 16) = pairs from b / 2.
        if (shifted)
          K_.transpose32(pairs + b * dims, dims, 16, dims, shifted + (rows.base[kp] + r0 + b) * dims, 16);
      }
    });
  }

  const EngineArgs& a_;
  const KernelTable& K_;
  const Bf16Kernels& B_;
  FloatBuffer kb_, vb_, vt_, kt_, vts_, kts_;
  std::vector<uint16_t> zero_row_;  // stands for missing and padding keys when packing
  int64_t ldk32_ = 0, ldv32_ = 0, d16_ = 0, dv16_ = 0;
  bool start16_ = false;
  bool prescale_ = false;
  float c_ = 1.f;
  float scale_lanes_[kQ];
};

}  // namespace attnkit::cpu
