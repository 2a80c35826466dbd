// attnkit CPU backend: linear attention engine internals shared by the fp32
// chunk math and drivers (linear.cpp) and the AMX-bf16 chunk math
// (linear_bf16.cpp). See linear.cpp for the algorithm.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "../linear_problem.hpp"
#include "kernels.hpp"
#include "parallel.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define AK_LIN_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AK_LIN_ASAN 1
#endif
#endif

namespace attnkit::cpu::lin {

constexpr int64_t kC = 64;    // chunk length (tokens)
constexpr int64_t kBlk = 16;  // triangular sub-block = one SIMD panel of 16 floats
static_assert(kBlk == kLanes, "triangular blocks are one GEMM panel wide");

inline int64_t rup(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

inline float load_scalar(const void* p, DType dt) {
  switch (dt) {
    case DType::BFloat16: return bf16_to_float(*static_cast<const uint16_t*>(p));
    case DType::Float16: return half_to_float(*static_cast<const uint16_t*>(p));
    default: return *static_cast<const float*>(p);
  }
}
inline void store_scalar(float x, DType dt, void* p) {
  switch (dt) {
    case DType::BFloat16: *static_cast<uint16_t*>(p) = float_to_bf16(x); break;
    case DType::Float16: *static_cast<uint16_t*>(p) = float_to_half(x); break;
    default: *static_cast<float*>(p) = x; break;
  }
}

// Token rows of one [B, S, H, D] (or packed) operand.
struct Rows {
  char* data = nullptr;
  DType dt = DType::Float32;
  int64_t bs = 0, ts = 0, hs = 0;
  static Rows of(const Operand& o, DType dt) {
    Rows r;
    r.data = static_cast<char*>(o.data);
    r.dt = dt;
    r.bs = o.batch_stride;
    r.ts = o.token_stride;
    r.hs = o.head_stride;
    return r;
  }
  void* row(int64_t b, int64_t t, int64_t h) const {
    return data + (b * bs + t * ts + h * hs) * dtype_size(dt);
  }
};

struct Gate {
  GateKind kind = GateKind::None;
  const char* data = nullptr;
  DType dt = DType::Float32;
  int64_t bs = 0, ts = 0, hs = 0;
  static Gate of(const GateOperand& g) {
    Gate r;
    r.kind = g.kind;
    r.data = static_cast<const char*>(g.data);
    r.dt = g.dtype;
    r.bs = g.batch_stride;
    r.ts = g.token_stride;
    r.hs = g.head_stride;
    return r;
  }
  void* at(int64_t b, int64_t t, int64_t h) const {
    return const_cast<char*>(data) + (b * bs + t * ts + h * hs) * dtype_size(dt);
  }
  float value(int64_t b, int64_t t, int64_t h) const { return load_scalar(at(b, t, h), dt); }
};

// One (sequence, query head): tokens t0 .. t0+T-1 of operand batch b; `off` is
// the sequence's first row in flat per-token workspaces ([Hq][total tokens]).
struct Unit {
  int64_t b = 0, seq = 0, hq = 0, hkv = 0, t0 = 0, T = 0, off = 0;
  int64_t chunks() const { return (T + kC - 1) / kC; }
};

// A run of chunks [c0, c1) of one unit.
struct Segment {
  int64_t u = 0, s = 0, c0 = 0, c1 = 0;
};

struct Ctx {
  const KernelTable* K = nullptr;
  int64_t dk = 0, dv = 0, dve = 0, ldk = 0, ldv = 0;  // dve = dv (+1: normaliser column)
  int64_t heads_q = 0, group = 1, total = 0;
  float scale = 1.f;
  bool normalize = false, causal = true;
  Rows q, k, v, out;
  Gate g;
  StateOperand init, fin;
  // backward
  bool has_dout = false;
  Rows dout, dq, dk_, dv_;
  Gate dg;
  StateOperand dfin, dinit;
  // AMX-bf16 chunk math (bf16 inputs on AMX CPUs): Dk padded to the tile depth.
  bool amx = false;
  int64_t lk32 = 0, lv32 = 0;  // Dk, and Dv (+1), padded to the tile depth
  // AMX backward with a per-head dg: the decayed key/query operands and the
  // state / adjoint operands of the inter-chunk products are split into two bf16
  // terms (hi + lo, ~16 mantissa bits), so that q.dq and k.dk stay consistent to
  // ~1e-5 -- the per-head dg sums them with weights up to the sequence length.
  bool hp = false;
  int64_t ldmax() const { return std::max(ldk, ldv); }
  int64_t state_floats() const { return rup(dk, 32) * rup(dve, 32); }  // room for 32-row padding
};

inline Ctx make_ctx(const LinearProblem& p) {
  Ctx c;
  c.K = &kernels();
  c.dk = p.head_dim_k;
  c.dv = p.head_dim_v;
  c.dve = p.head_dim_v + (p.normalize ? 1 : 0);
  c.ldk = rup(c.dk, kLanes);
  c.ldv = rup(c.dve, kLanes);
  c.heads_q = p.heads_q;
  c.group = p.heads_q / p.heads_kv;
  c.scale = p.scale;
  c.normalize = p.normalize;
  c.causal = p.is_causal;
  c.q = Rows::of(p.q, p.dtype);
  c.k = Rows::of(p.k, p.dtype);
  c.v = Rows::of(p.v, p.dtype);
  c.out = Rows::of(p.out, p.dtype);
  c.g = Gate::of(p.g);
  c.init = p.initial_state;
  c.fin = p.final_state;
  c.lk32 = rup(c.dk, 32);
  c.lv32 = rup(c.dve, 32);
  c.amx = p.dtype == DType::BFloat16 && c.K->bf16 != nullptr;
  return c;
}

inline std::vector<Unit> make_units(const LinearProblem& p, int64_t* total) {
  std::vector<Unit> units;
  units.reserve(p.batch * p.heads_q);
  const int64_t G = p.heads_q / p.heads_kv;
  int64_t off = 0;
  for (int64_t n = 0; n < p.batch; ++n) {
    Unit u;
    u.seq = n;
    if (p.varlen()) {
      u.b = 0;
      u.t0 = p.cu_seqlens[n];
      u.T = p.cu_seqlens[n + 1] - p.cu_seqlens[n];
    } else {
      u.b = n;
      u.t0 = 0;
      u.T = p.seqlen;
    }
    u.off = off;
    off += u.T;
    for (int64_t h = 0; h < p.heads_q; ++h) {
      u.hq = h;
      u.hkv = h / G;
      units.push_back(u);
    }
  }
  *total = off;
  return units;
}

// Segmentation: items of at most W chunks, W chosen so that there are about
// 2 items per thread when units are few (a single unit still keeps every core
// busy); with enough units every unit is one segment (single pass, no scan).
struct Plan {
  std::vector<Segment> segs;            // all segments, unit-major, in chunk order
  std::vector<int64_t> first, count;    // per unit: index of its first segment, segment count
  std::vector<int64_t> order;           // segment indices, longest first (dynamic scheduling)
  bool segmented = false;               // some unit has more than one segment
};

inline Plan make_plan(const std::vector<Unit>& units, int threads) {
  Plan pl;
  const int64_t U = static_cast<int64_t>(units.size());
  int64_t total_chunks = 0;
  for (const Unit& u : units) total_chunks += u.chunks();
  constexpr int64_t kMinSegChunks = 4;
  int64_t W = threads > 1 ? std::max<int64_t>(kMinSegChunks, (total_chunks + 2 * threads - 1) / (2 * threads))
                          : std::max<int64_t>(1, total_chunks);
  pl.first.resize(U);
  pl.count.resize(U);
  for (int64_t i = 0; i < U; ++i) {
    const int64_t nc = units[i].chunks();
    const int64_t ns = nc <= W ? 1 : (nc + W - 1) / W;
    pl.first[i] = static_cast<int64_t>(pl.segs.size());
    pl.count[i] = ns;
    pl.segmented |= ns > 1;
    for (int64_t s = 0; s < ns; ++s)
      pl.segs.push_back({i, s, nc * s / ns, nc * (s + 1) / ns});
  }
  pl.order.resize(pl.segs.size());
  for (size_t i = 0; i < pl.order.size(); ++i) pl.order[i] = static_cast<int64_t>(i);
  std::stable_sort(pl.order.begin(), pl.order.end(), [&](int64_t a, int64_t b) {
    return pl.segs[a].c1 - pl.segs[a].c0 > pl.segs[b].c1 - pl.segs[b].c0;
  });
  return pl;
}

// ---------------------------------------------------------------- per-thread buffers
struct Bufs {
  // fp32 chunk operands
  float *Q, *K, *KT, *V, *Vd, *VT, *dO, *dOd, *P, *Bm, *D, *O, *T1, *S, *ST, *dH, *row;
  float *ed, *ekB, *f;
  float eB = 1.f;
  // bf16 chunk operands (AMX path): row-major A operands, VNNI B operands
  uint16_t *Qb;   // [kC][lk32]        q rows
  uint16_t *Kb;   // [kC][lk32]        k rows
  uint16_t *KTv;  // [lk32/2][2 kC]    K^T, VNNI
  uint16_t *Ab;   // [kC][lk32 + kC]   [q * scale * ed | P o D * scale]
  uint16_t *SVv;  // [(lk32 + kC)/2][2 ldv]  [S_in ; V], VNNI
  uint16_t *KdTb; // [lk32][kC]        (K diag(ekB))^T
  // backward (AMX path)
  uint16_t *Kv;    // [kC/2][2 lk32]   K, VNNI by token pairs
  uint16_t *Qv;    // [kC/2][2 lk32]   Q, VNNI by token pairs
  uint16_t *QTv;   // [lk32/2][2 kC]   Q^T, VNNI
  uint16_t *QdT;   // [lk32][kC]       (Q diag(scale ed))^T
  uint16_t *Vb;    // [kC][lv32]       v rows
  uint16_t *Vdb;   // [kC][lv32]       v rows * ekB
  uint16_t *VTv;   // [lv32/2][2 kC]   V^T, VNNI
  uint16_t *Db;    // [kC][lv32]       dOa rows
  uint16_t *Dv;    // [kC/2][2 ldv]    dOa, VNNI by token pairs
  uint16_t *Bmb;   // [kC][kC]         Bm rows
  uint16_t *BmTb;  // [kC][kC]         Bm^T rows
  uint16_t *PTb;   // [kC][kC]         P^T rows
  uint16_t *XTv;   // [lv32/2][2 lk32] S^T or (dH + E dS_final)^T, VNNI
  uint16_t *Xv;    // [lk32/2][2 ldv]  dH, VNNI by pairs of rows
  uint16_t *Fv;    // [lk32/2][2 ldv]  dS_final, VNNI by pairs of rows (split dg)
  uint16_t *Xb;    // [lk32][lv32]     bf16 rows of a state (for its transposed operand)
  // low halves of split operands (Ctx::hp)
  uint16_t *KdTlo, *QdTlo, *XTvlo, *Xvlo;
  // what the D matrix holds, for gates that do not vary by token (Decays::chunk
  // keeps D while it still applies)
  struct DecayKey {
    GateKind kind = GateKind::PerToken;
    int64_t n = -1;
    float g = 0.f;
  } D_key;

  static int64_t halves(const Ctx& c) {  // bf16 elements
    return 3 * kC * c.lk32 + kC * (c.lk32 + kC) + (c.lk32 + kC) * c.ldv + c.lk32 * kC +
           4 * kC * c.lk32 + 4 * kC * c.lv32 + kC * c.ldv + 3 * kC * kC + c.lv32 * c.lk32 +
           2 * c.lk32 * c.ldv + c.lk32 * c.lv32 + 2 * c.lk32 * kC + c.lv32 * c.lk32 +
           c.lk32 * c.ldv + 30 * 32;
  }
  static int64_t floats(const Ctx& c) {
    const int64_t m = c.ldmax();
    return 2 * kC * c.ldk + c.ldk * kC + 5 * kC * c.ldv + c.ldv * kC + 3 * kC * kC + std::max(m, kC) * kC +
           3 * c.state_floats() + m + kLanes + 3 * kC + (halves(c) + 1) / 2 + 64 * 32;
  }
  // Under AddressSanitizer every buffer is its own allocation, so that an
  // overflow from one into the next is reported (carving hides it).
  std::vector<std::unique_ptr<float[]>> owned;

  void carve(float* p, const Ctx& c) {
    const int64_t m = c.ldmax();
    auto take = [&](int64_t n) {
#ifdef AK_LIN_ASAN
      (void)p;
      owned.emplace_back(new float[rup(n, 16)]);
      return owned.back().get();
#else
      float* r = p;
      p += rup(n, 16);
      return r;
#endif
    };
    auto take16 = [&](int64_t n) { return reinterpret_cast<uint16_t*>(take((n + 1) / 2)); };
    Q = take(kC * c.ldk);
    K = take(kC * c.ldk);
    KT = take(c.ldk * kC);
    V = take(kC * c.ldv);
    Vd = take(kC * c.ldv);
    dO = take(kC * c.ldv);
    dOd = take(kC * c.ldv);
    O = take(kC * c.ldv);
    VT = take(c.ldv * kC);
    P = take(kC * kC);
    Bm = take(kC * kC);
    D = take(kC * kC);
    T1 = take(std::max(m, kC) * kC);  // also a [kC][kC] transpose tile (bf16 backward)
    S = take(c.state_floats());
    ST = take(c.state_floats());
    dH = take(c.state_floats());
    row = take(m + kLanes);
    ed = take(kC);
    ekB = take(kC);
    f = take(kC);
    Qb = take16(kC * c.lk32);
    Kb = take16(kC * c.lk32);
    KTv = take16(kC * c.lk32);
    Ab = take16(kC * (c.lk32 + kC));
    SVv = take16((c.lk32 + kC) * c.ldv);
    KdTb = take16(c.lk32 * kC);
    Kv = take16(kC * c.lk32);
    Qv = take16(kC * c.lk32);
    QTv = take16(kC * c.lk32);
    QdT = take16(c.lk32 * kC);
    Vb = take16(kC * c.lv32);
    Vdb = take16(kC * c.lv32);
    VTv = take16(kC * c.lv32);
    Db = take16(kC * c.lv32);
    Dv = take16(kC * c.ldv);
    Bmb = take16(kC * kC);
    BmTb = take16(kC * kC);
    PTb = take16(kC * kC);
    XTv = take16(c.lv32 * c.lk32);
    Xv = take16(c.lk32 * c.ldv);
    Fv = take16(c.lk32 * c.ldv);
    Xb = take16(c.lk32 * c.lv32);
    KdTlo = take16(c.lk32 * kC);
    QdTlo = take16(c.lk32 * kC);
    XTvlo = take16(c.lv32 * c.lk32);
    Xvlo = take16(c.lk32 * c.ldv);
  }
};

class Scratch {
 public:
  Scratch(const Ctx& c, int threads) : per_(rup(Bufs::floats(c) + 16 * 40, 16)) {
    buf_.reset(per_ * threads);
    bufs_.resize(threads);
    for (int t = 0; t < threads; ++t) bufs_[t].carve(buf_.get() + per_ * t, c);
  }
  Bufs& mine() { return bufs_[thread_index()]; }

 private:
  int64_t per_;
  FloatBuffer buf_;
  std::vector<Bufs> bufs_;
};

// ---------------------------------------------------------------- decays
// Per-unit gate source. Per head: exact powers pw[m] = exp(m * g_h) (double
// exp, m <= kC). Per token: products of exp(g_s) in float (each a range product).
struct Decays {
  GateKind kind = GateKind::None;
  float gamma = 0.f;  // per head: the gate
  float pw[kC + 1];

  void init(const Ctx& c, const Unit& u) {
    kind = c.g.kind;
    if (kind == GateKind::PerHead) {
      gamma = c.g.value(0, 0, u.hq);
      const double g = gamma;
      for (int64_t m = 0; m <= kC; ++m) pw[m] = static_cast<float>(std::exp(g * static_cast<double>(m)));
    }
  }

  // ed, ekB, eB and (if want_D) D for tokens [t, t + n) of unit u.
  void chunk(const Ctx& c, const Unit& u, int64_t t, int64_t n, Bufs& b, bool want_D) const {
    float* ed = b.ed;
    float* ekB = b.ekB;
    std::fill(ed + n, ed + kC, 0.f);  // tokens past n never contribute (and are never NaN)
    std::fill(ekB + n, ekB + kC, 0.f);
    // D depends only on (kind, gamma, n) unless the gate varies by token: keep the
    // thread's last one when it still applies.
    if (want_D && kind != GateKind::PerToken && b.D_key.kind == kind && b.D_key.n == n &&
        (kind == GateKind::None || b.D_key.g == gamma))
      want_D = false;
    else if (want_D)
      b.D_key = {kind, n, gamma};
    if (kind == GateKind::None) {
      std::fill(ed, ed + n, 1.f);
      std::fill(ekB, ekB + n, 1.f);
      b.eB = 1.f;
      if (want_D)
        for (int64_t i = 0; i < kC; ++i) {
          float* d = b.D + i * kC;
          for (int64_t j = 0; j < kC; ++j) d[j] = (j <= i && i < n) ? 1.f : 0.f;
        }
      return;
    }
    if (kind == GateKind::PerHead) {
      for (int64_t i = 0; i < n; ++i) {
        ed[i] = pw[i + 1];
        ekB[i] = pw[n - 1 - i];
      }
      b.eB = pw[n];
      if (want_D)
        for (int64_t i = 0; i < kC; ++i) {
          float* d = b.D + i * kC;
          for (int64_t j = 0; j < kC; ++j) d[j] = (j <= i && i < n) ? pw[i - j] : 0.f;
        }
      return;
    }
    float* f = b.f;
    for (int64_t s = 0; s < n; ++s) f[s] = std::exp(c.g.value(u.b, u.t0 + t + s, u.hq));
    float p = 1.f;
    for (int64_t i = 0; i < n; ++i) {
      p *= f[i];
      ed[i] = p;
    }
    b.eB = p;
    p = 1.f;
    for (int64_t j = n - 1; j >= 0; --j) {
      ekB[j] = p;
      p *= f[j];
    }
    if (want_D) {
      // Row i is row i-1 times f_i, with 1 on the diagonal: every entry is the
      // product over its own range (j, i], so it never overflows spuriously.
      for (int64_t i = 0; i < kC; ++i) {
        float* d = b.D + i * kC;
        if (i >= n) {
          std::fill(d, d + kC, 0.f);
          continue;
        }
        if (i > 0) {
          const float* prev = d - kC;
          const float fi = f[i];
          for (int64_t j = 0; j < i; ++j) d[j] = prev[j] * fi;
        }
        d[i] = 1.f;
        std::fill(d + i + 1, d + kC, 0.f);
      }
    }
  }

  // Product of exp(g) over tokens [t, t + n) of unit u.
  float total(const Ctx& c, const Unit& u, int64_t t, int64_t n) const {
    if (kind == GateKind::None) return 1.f;
    if (kind == GateKind::PerHead)
      return static_cast<float>(std::exp(static_cast<double>(c.g.value(0, 0, u.hq)) * static_cast<double>(n)));
    float p = 1.f;
    for (int64_t s = 0; s < n; ++s) p *= std::exp(c.g.value(u.b, u.t0 + t + s, u.hq));
    return p;
  }
};

// ---------------------------------------------------------------- packing
// Row-major chunk operands [kC][ld] with zero padding (columns past the head
// dim, rows past n), and transposed ones [ld][kC] with zero columns past n: the
// GEMMs read whole 16-float panels and whole triangular blocks.
inline void pack_rows(const Rows& src, const Unit& u, int64_t hd, int64_t t, int64_t n, int64_t dim,
               int64_t ld, float* dst) {
  for (int64_t i = 0; i < kC; ++i) {
    float* d = dst + i * ld;
    if (i < n) {
      load_row(src.row(u.b, u.t0 + t + i, hd), src.dt, dim, d);
      std::fill(d + dim, d + ld, 0.f);
    } else {
      std::fill(d, d + ld, 0.f);
    }
  }
}

// X^T [ld][kC] of fp32 rows [t, t + n) of head `head` straight from the input
// (rows past n and units past dim zero), on the vector transpose kernel.
inline void transpose_rows_f32(const Ctx& c, const Rows& src, const Unit& u, int64_t head, int64_t t,
                               int64_t n, int64_t dim, int64_t ld, float* XT) {
  const void* rows[kC];
  for (int64_t i = 0; i < kC; ++i) rows[i] = i < n ? src.row(u.b, u.t0 + t + i, head) : nullptr;
  c.K->gather_transpose32(rows, kC, 4 * dim, ld, XT, kC);
}

// K rows (optional) and K^T (optional). fp32 K^T comes straight from the input
// rows through the vector transpose (the element loop below, kept for the other
// dtypes, cost 8-20% of the fp32 causal forward and backward); other dtypes
// convert each row once for both.
inline void pack_k(const Ctx& c, const Unit& u, int64_t t, int64_t n, Bufs& b, bool rows, bool trans) {
  if (rows) pack_rows(c.k, u, u.hkv, t, n, c.dk, c.ldk, b.K);
  if (!trans) return;
  if (c.k.dt == DType::Float32) {
    transpose_rows_f32(c, c.k, u, u.hkv, t, n, c.dk, c.ldk, b.KT);
    return;
  }
  std::fill(b.KT, b.KT + c.ldk * kC, 0.f);
  for (int64_t i = 0; i < n; ++i) {
    const float* r = b.K + i * c.ldk;
    if (!rows) {
      load_row(c.k.row(u.b, u.t0 + t + i, u.hkv), c.k.dt, c.dk, b.row);
      r = b.row;
    }
    for (int64_t d = 0; d < c.dk; ++d) b.KT[d * kC + i] = r[d];
  }
}

// V rows (with the normaliser's column of ones) and/or V^T.
inline void pack_v(const Ctx& c, const Unit& u, int64_t t, int64_t n, Bufs& b, bool rows, bool trans) {
  if (rows) {
    pack_rows(c.v, u, u.hkv, t, n, c.dv, c.ldv, b.V);
    if (c.normalize)
      for (int64_t i = 0; i < n; ++i) b.V[i * c.ldv + c.dv] = 1.f;
  }
  if (!trans) return;
  if (c.v.dt == DType::Float32) {
    transpose_rows_f32(c, c.v, u, u.hkv, t, n, c.dv, c.ldv, b.VT);
    if (c.normalize) std::fill(b.VT + c.dv * kC, b.VT + c.dv * kC + n, 1.f);
    return;
  }
  std::fill(b.VT, b.VT + c.ldv * kC, 0.f);
  for (int64_t i = 0; i < n; ++i) {
    const float* r = b.V + i * c.ldv;
    if (!rows) {
      load_row(c.v.row(u.b, u.t0 + t + i, u.hkv), c.v.dt, c.dv, b.row);
      r = b.row;
    }
    for (int64_t e = 0; e < c.dv; ++e) b.VT[e * kC + i] = r[e];
    if (c.normalize) b.VT[c.dv * kC + i] = 1.f;
  }
}

inline void pack_dout(const Ctx& c, const Unit& u, int64_t t, int64_t n, float* dst) {
  if (c.has_dout) {
    pack_rows(c.dout, u, u.hq, t, n, c.dv, c.ldv, dst);
  } else {
    std::fill(dst, dst + kC * c.ldv, 0.f);
  }
}

// X^T: dst[j][i] = src[i][j] for i < rows, j < cols (dst zero-padded to ldd columns... caller sized).
inline void transpose(const float* src, int64_t rows, int64_t cols, int64_t lds, float* dst, int64_t ldd,
               int64_t dst_rows) {
  for (int64_t j = 0; j < dst_rows; ++j) std::fill(dst + j * ldd, dst + (j + 1) * ldd, 0.f);
  constexpr int64_t T = 16;
  for (int64_t i0 = 0; i0 < rows; i0 += T)
    for (int64_t j0 = 0; j0 < cols; j0 += T) {
      const int64_t i1 = std::min(rows, i0 + T), j1 = std::min(cols, j0 + T);
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = j0; j < j1; ++j) dst[j * ldd + i] = src[i * lds + j];
    }
}


inline void scale_rows(float* X, int64_t rows, int64_t ld, const float* s, float mul) {
  for (int64_t i = 0; i < rows; ++i) {
    const float a = s[i] * mul;
    float* x = X + i * ld;
    for (int64_t e = 0; e < ld; ++e) x[e] *= a;
  }
}
inline void scale_cols(float* X, int64_t rows, int64_t ld, const float* s, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    float* x = X + r * ld;
    for (int64_t j = 0; j < n; ++j) x[j] *= s[j];
  }
}
inline void scale_all(float* X, int64_t n, float a) {
  for (int64_t i = 0; i < n; ++i) X[i] *= a;
}

inline void load_state(const Ctx& c, const StateOperand& st, const Unit& u, float* S) {
  std::fill(S, S + c.ldk * c.ldv, 0.f);
  if (!st.data) return;
  const float* src = st.at(u.seq, u.hq);
  for (int64_t d = 0; d < c.dk; ++d) std::memcpy(S + d * c.ldv, src + d * st.row_stride, sizeof(float) * c.dv);
}
inline void save_state(const Ctx& c, const float* S, const StateOperand& st, const Unit& u) {
  float* dst = st.at(u.seq, u.hq);
  for (int64_t d = 0; d < c.dk; ++d) std::memcpy(dst + d * st.row_stride, S + d * c.ldv, sizeof(float) * c.dv);
}

// Writes output rows; with normalize, o = num / den (den = the ones column), 0 where den == 0.
inline void store_out(const Ctx& c, const Unit& u, int64_t t, int64_t n, const float* O, float* row) {
  for (int64_t i = 0; i < n; ++i) {
    const float* o = O + i * c.ldv;
    if (c.normalize) {
      const float den = o[c.dv];
      const float inv = den != 0.f ? 1.f / den : 0.f;
      for (int64_t e = 0; e < c.dv; ++e) row[e] = o[e] * inv;
      store_row(row, c.dv, c.out.dt, c.out.row(u.b, u.t0 + t + i, u.hq));
    } else {
      store_row(o, c.dv, c.out.dt, c.out.row(u.b, u.t0 + t + i, u.hq));
    }
  }
}

// Software prefetch of one operand's rows [t, t + n) of head `head` (dim elements
// each): rows are short (a head's slice of a token) and far apart, a pattern the
// hardware prefetchers cover poorly. Into L2 (locality 2): an L1 prefetch a whole
// chunk ahead is evicted by the current chunk's operands before it is used
// (measured ~15% slower). `write` for rows about to be stored. A null operand is
// skipped.
inline void prefetch_rows(const Rows& r, const Unit& u, int64_t head, int64_t t, int64_t n, int64_t dim,
                          bool write = false) {
  if (!r.data) return;
  const int64_t bytes = dim * dtype_size(r.dt);
  for (int64_t i = 0; i < n; ++i) {
    const char* p = static_cast<const char*>(r.row(u.b, u.t0 + t + i, head));
    for (int64_t o = 0; o < bytes; o += 64) {
      if (write) __builtin_prefetch(p + o, 1, 2);
      else __builtin_prefetch(p + o, 0, 2);
    }
  }
}

// The q, k, v (and output, with write intent: its misses overlap compute) rows of
// tokens [t, t + n) of u: the next chunk, while this one computes.
inline void prefetch_chunk(const Ctx& c, const Unit& u, int64_t t, int64_t n) {
  prefetch_rows(c.q, u, u.hq, t, n, c.dk);
  prefetch_rows(c.k, u, u.hkv, t, n, c.dk);
  prefetch_rows(c.v, u, u.hkv, t, n, c.dv);
  prefetch_rows(c.out, u, u.hq, t, n, c.dv, true);
}

// ---------------------------------------------------------------- backward shared
struct BwdWork {
  // dg wanted, per token ([Hq][total]): the inter-chunk parts of q.dq and k.dk,
  // and the intra-chunk part of dg itself (pairs of the chunk crossing the token)
  FloatBuffer rq, rk, ri;
  // ... and, with dS_final, the final state's part of k.dk: f_j = decay(j -> T) k_j dS_final v_j^T
  FloatBuffer rf;
  FloatBuffer dfin_pad;     // dS_final per unit, [ldk][ldv] (dg with dS_final)
  FloatBuffer doa;          // normalize: dO adjusted for the normaliser, [Hq][total][ldv]
  FloatBuffer pdk, pdv;     // GQA: per query head dk/dv partials [Hq][total][ld]
  std::vector<double> fin0;  // per unit: <dS_final, decay(0 -> T) S_0>
  bool want_dg = false, gqa = false;
  int64_t idx(const Ctx& c, const Unit& u, int64_t t) const { return u.hq * c.total + u.off + t; }
};

// End of the reverse sweep over a unit's first segment on the split dS_final path
// (see backward_reverse_chunk in linear.cpp): d S_0 = dH + decay(0 -> T) dS_final (E), and
// <dS_final, decay(0 -> T) S_0> for dg.
inline void finish_split_adjoint(const Ctx& c, const Unit& u, int64_t ui, float* dH, bool zero, float E,
                                 BwdWork& w) {
  const float* F = w.dfin_pad.get() + ui * c.ldk * c.ldv;
  if (zero) std::fill(dH, dH + c.ldk * c.ldv, 0.f);
  for (int64_t i = 0; i < c.ldk * c.ldv; ++i) dH[i] += E * F[i];
  if (c.init.data) {
    const float* S0 = c.init.at(u.seq, u.hq);
    double acc = 0;
    for (int64_t d = 0; d < c.dk; ++d)
      for (int64_t e = 0; e < c.dv; ++e)
        acc += static_cast<double>(F[d * c.ldv + e]) * S0[d * c.init.row_stride + e];
    w.fin0[ui] = acc * E;
  }
}

// fp32 rows [n][ld] of tokens [t, t + n) into dst (its dtype) or, under GQA, into the
// per query head partials [Hq][total][ld].
inline void store_rows(const Ctx& c, const Unit& u, int64_t t, int64_t n, const float* X, int64_t ld,
                       int64_t dim, const Rows& dst, int64_t head, float* partial) {
  for (int64_t i = 0; i < n; ++i) {
    if (partial)
      std::memcpy(partial + (u.hq * c.total + u.off + t + i) * ld, X + i * ld, sizeof(float) * dim);
    else
      store_row(X + i * ld, dim, dst.dt, dst.row(u.b, u.t0 + t + i, head));
  }
}

// Rows of X^T ([dim][kC], tokens [t, t + n) of kv head u.hkv) stored as rows, through
// tmp ([kC][ld] floats) and the vector transpose kernel: 0-6% faster for the fp32
// causal backward than the element loop it replaces (in-process A/B).
inline void store_T(const Ctx& c, const Unit& u, int64_t t, int64_t n, const float* XT, int64_t dim,
                    const Rows& dst, float* partial, int64_t ld, float* tmp) {
  c.K->transpose32(XT, kC, dim, rup(n, kLanes), tmp, ld);
  store_rows(c, u, t, n, tmp, ld, dim, dst, u.hkv, partial);
}

// dOa for normalize: o = num/den -> d num = dO/den, d den = -(dO . o)/den (0 where den == 0).
// Needs O (raw, with den in column dv); writes b.dO in place.
inline void normalize_dout(const Ctx& c, int64_t n, Bufs& b) {
  for (int64_t i = 0; i < n; ++i) {
    float* d = b.dO + i * c.ldv;
    const float* o = b.O + i * c.ldv;
    const float den = o[c.dv];
    if (den == 0.f) {
      std::fill(d, d + c.ldv, 0.f);
      continue;
    }
    const float inv = 1.f / den;
    float dot = 0.f;
    for (int64_t e = 0; e < c.dv; ++e) {
      dot += d[e] * o[e] * inv;
      d[e] *= inv;
    }
    d[c.dv] = -dot * inv;
  }
}

// The chunk's dOa rows into b.dO (normalize: from the workspace written by the forward sweep).
inline void load_doa(const Ctx& c, const Unit& u, int64_t t, int64_t n, Bufs& b, const BwdWork& w) {
  if (c.normalize) {
    const float* src = w.doa.get() + w.idx(c, u, t) * c.ldv;
    std::memcpy(b.dO, src, sizeof(float) * n * c.ldv);
    std::fill(b.dO + n * c.ldv, b.dO + kC * c.ldv, 0.f);
  } else {
    pack_dout(c, u, t, n, b.dO);
  }
}

// P (raw q.k, lower block triangle) *= scale * D.
inline void decay_lower(const Ctx& c, int64_t n, const float* D, float* P) {
  for (int64_t i = 0; i < n; ++i) {
    float* p = P + i * kC;
    const float* d = D + i * kC;
    const int64_t cols = (i / kBlk + 1) * kBlk;
    for (int64_t j = 0; j < cols; ++j) p[j] *= c.scale * d[j];
  }
}

// The intra-chunk part of dg: with w_ij = (q_i.k_j) * Bm_ij (Bm = scale D_ij dOa_i.v_j,
// the loss's pair terms), out[s] = sum of w_ij over the chunk's pairs j < s <= i --
// exactly the pairs whose decay includes g_s. Computed from local sums (weights
// within one chunk), so it does not inherit the cancellation of the long
// q.dq - k.dk sums. P holds raw scores.
inline void intra_dg(const Ctx& c, int64_t n, const Bufs& b, float* out) {
  (void)c;
  double row[kC], col[kC];
  std::fill(row, row + n, 0.0);
  std::fill(col, col + n, 0.0);
  for (int64_t i = 1; i < n; ++i) {
    const float* p = b.P + i * kC;
    const float* m = b.Bm + i * kC;
    double rs = 0;
    for (int64_t j = 0; j < i; ++j) {
      const double wij = static_cast<double>(p[j]) * m[j];
      rs += wij;
      col[j] += wij;
    }
    row[i] = rs;
  }
  // M_0 = 0, M_{s+1} = M_s - (pairs of row s) + (pairs of column s)
  double M = 0;
  for (int64_t s = 0; s < n; ++s) {
    M += (s > 0 ? col[s - 1] - row[s - 1] : 0.0);
    out[s] = static_cast<float>(M);
  }
}

// Stores rows i < n of X [kC][ld] (first `dim` columns) into dst, or into the
// GQA partial buffer.
inline void store_R(const Ctx& c, const Unit& u, int64_t t, int64_t n, const float* X, int64_t ld,
             int64_t dim, const Rows& dst, float* partial) {
  for (int64_t i = 0; i < n; ++i) {
    if (partial)
      std::memcpy(partial + (u.hq * c.total + u.off + t + i) * ld, X + i * ld, sizeof(float) * dim);
    else
      store_row(X + i * ld, dim, dst.dt, dst.row(u.b, u.t0 + t + i, u.hkv));
  }
}

// Zero rows [ldk, lk32) of a state buffer: the bf16 path reads S as a K-depth
// of lk32 (the tile depth) rows.
inline void pad_state_rows(const Ctx& c, float* S) {
  std::fill(S + c.ldk * c.ldv, S + c.lk32 * c.ldv, 0.f);
}

// One unit's walk over its chunks inside a lockstep group (the forward and both
// backward sweeps, fp32 and bf16): its decays, the state it carries and, in a
// group, its own decay matrix and key, swapped into the thread's Bufs for its
// chunks (a lone unit uses the thread's: D null).
struct Cursor {
  const Unit* u = nullptr;
  int64_t ui = 0;        // its index in the units (read by the reverse sweep only)
  Decays dec;
  float* X = nullptr;    // the carried state: S (forward sweeps) or the adjoint dH (reverse)
  float* XT = nullptr;   // fp32 backward forward sweep: S^T
  bool zero = true;      // X is 0
  float sigma = 1.f;     // bf16 forward: the true state is sigma * X
  float E = 1.f;         // reverse: decay from the current chunk's end to the unit's end
  float* D = nullptr;
  Bufs::DecayKey D_key;
  uint16_t* Fv = nullptr;  // bf16 reverse, split: dS_final in VNNI by pairs of rows

  void start(const Ctx& c, const Unit* unit, int64_t index, float* state, bool is_zero, float* own_D) {
    u = unit;
    ui = index;
    dec.init(c, *unit);
    X = state;
    zero = is_zero;
    D = own_D;
  }
  void swap_decay(Bufs& b) {
    if (!D) return;
    std::swap(b.D, D);
    std::swap(b.D_key, D_key);
  }
};

// Cursors for units[0..nu) (ids ui0 + i) from states X[i] (zero[i]: 0), each with
// its own decay matrix in D (nu * kC * kC floats) when there are several.
inline void start_cursors(const Ctx& c, Cursor* cur, const Unit* units, int64_t ui0, int nu,
                          float* const* X, const bool* zero, float* D) {
  for (int i = 0; i < nu; ++i) cur[i].start(c, &units[i], ui0 + i, X[i], zero[i], nu > 1 ? D + i * kC * kC : nullptr);
}

// step(cursor, ch) for chunks [c0, c1) -- ascending, or descending for a reverse
// sweep -- and within each chunk for every cursor in turn.
template <class Step>
void lockstep_chunks(Cursor* cur, int nu, int64_t c0, int64_t c1, bool reverse, Step&& step) {
  for (int64_t k = 0; k < c1 - c0; ++k)
    for (int i = 0; i < nu; ++i) step(cur[i], reverse ? c1 - 1 - k : c0 + k);
}

// ---- AMX-bf16 chunk math (linear_bf16.cpp); tiles configured by the caller.
// Runs chunks [c0, c1) of nu <= kMaxLockstep units (heads of one sequence, the
// same chunks) chunk by chunk in lockstep, each from its state S[i] ([lk32][ldv],
// rows >= dk zero; zero[i]: S[i] is 0), writing outputs; S[i] ends as the state
// after chunk c1 - 1 (the last chunk of a unit updates it only if keep_state).
// Lockstep because the heads' rows of a token lie side by side in memory: each
// chunk's pages and cache lines serve all of them (a head's rows alone are a
// 256-byte slice of every 2 KiB token row: with 8 heads, one head at a time ran
// 1.5x slower than the same work over contiguous rows). D: nu * kC * kC floats
// of scratch (each unit keeps its decay matrix).
constexpr int kMaxLockstep = 8;
void bf16_forward_lockstep(const Ctx& c, const Unit* units, int nu, int64_t c0, int64_t c1, Bufs& b,
                           float* const* S, const bool* zero, bool keep_state, float* D);
// S = the state after chunks [c0, c1) from 0 (no outputs); *decay = their total decay.
void bf16_local_state(const Ctx& c, const Unit& u, int64_t c0, int64_t c1, Bufs& b, float* S,
                      float* decay);
// Backward sweeps, as fp32_backward_forward_lockstep / fp32_backward_reverse_lockstep in
// linear.cpp, for nu <= kMaxLockstep units units[0..nu) (ids ui0.., heads of one
// sequence with the same chunks) in lockstep like the forward: each from its
// state S[i] / adjoint dH[i] ([lk32][ldv], rows past dk zero; zero[i]: it is 0)
// and, in the reverse sweep, E[i] (decay from the segment's end to the unit's
// end). D: nu * kC * kC floats, Fv: nu * lk32 * ldv bf16 of scratch.
void bf16_backward_forward_lockstep(const Ctx& c, const Unit* units, int nu, int64_t c0, int64_t c1,
                                    Bufs& b, float* const* S, const bool* zero, BwdWork& w, float* D);
void bf16_backward_reverse_lockstep(const Ctx& c, const Unit* units, int64_t ui0, int nu,
                                    const Segment& sg, Bufs& b, float* const* dH, const bool* zero,
                                    const float* E, BwdWork& w, float* D, uint16_t* Fv);
void bf16_reverse_local(const Ctx& c, const Unit& u, int64_t c0, int64_t c1, Bufs& b, float* dH,
                        const BwdWork& w);
// Non-causal outputs o = scale q S for chunks [c0, c1) of unit u from its whole
// state S ([ldk][ldv] fp32; b.S and b.SVv are overwritten).
void bf16_noncausal_output(const Ctx& c, const Unit& u, int64_t c0, int64_t c1, Bufs& b, const float* S);
// The non-causal backward: dq for chunks [c0, c1) of unit u (ST: S^T in fp32, the
// normalize case's dq operand) and their part dH = sum scale q^T dOa of dS (from
// 0); then, from the whole dS, dk and dv (GQA: into the partial buffers).
void bf16_noncausal_dq(const Ctx& c, const Unit& u, int64_t c0, int64_t c1, Bufs& b, const float* S,
                       const float* ST, float* dH, BwdWork& w);
void bf16_noncausal_dkdv(const Ctx& c, const Unit& u, int64_t c0, int64_t c1, Bufs& b, const float* dS,
                         BwdWork& w);

}  // namespace attnkit::cpu::lin
