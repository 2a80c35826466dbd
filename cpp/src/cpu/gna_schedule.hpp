// attnkit CPU backend: the Neighborhood tile schedule (DESIGN §2.2, §3).
//
// Neighborhood attention = the shared engine (engine.hpp) run with this schedule.
//
// * Dilation splits the tokens into independent groups (coordinate x % dilation on
//   every axis); a problem is one (batch, query head, group), a kv problem one
//   (batch, kv head, group). All coordinates below are in-group coordinates.
// * Query tiles are spatially compact: a tile is `qa` (a box of <= 4) vector blocks,
//   each vector block a box of `vb` (<= 16) query tokens filling one 16-lane query
//   vector of the engine's 64-lane tile. E.g. 2-D 13x13: 4x4 blocks in a 2x2 box.
// * Keys are packed tile-major: the group's grid is cut into kv tiles of `kt`
//   coordinates per axis (boundaries at offset `ko`, chosen so that the edges of the
//   vector blocks' windows fall on tile boundaries), tiles ordered row-major and
//   keys row-major inside a tile. A kv tile row along the last axis is then one
//   contiguous kv index range.
// * A query tile visits only the kv tiles that intersect the union of its windows,
//   and for each range tells the engine which query vectors it reaches (their own
//   window unions are boxes): keys that a vector block cannot see cost it nothing.
//   Ranges every active lane sees entirely are `full` and skip the element mask.
//
// Everything that depends only on the geometry (query tile lanes and their
// windows, the kv order) is tabulated once per call and shared by every batch and
// head: memory O(tokens), no token x token mask anywhere.
#pragma once

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <vector>

#include "../gna_problem.hpp"
#include "engine.hpp"

namespace attnkit::cpu {

constexpr int kQVecs = kQ / kLanes;  // query vectors per tile

// How a call is tiled (see the top of this file). Spatial axes are right-aligned:
// a 1-D problem uses axis 2 only, 2-D axes 1 and 2; the others have size 1.
struct NaPlan {
  int vb[3] = {1, 1, 1};  // vector block, prod <= kLanes
  int qa[3] = {1, 1, 1};  // vector blocks per query tile, prod <= kQVecs
  int kt[3] = {1, 1, 1};  // kv tile extent
  int ko[3] = {0, 0, 0};  // kv tile boundaries sit at coordinates = ko (mod kt)
};

// Chooses a plan for the problem's axes (gna.cpp).
NaPlan choose_na_plan(const NaProblem& p);

// Mask kernel (gna.cpp): for rows j < nk, sets S[j][i] = -inf unless
// lo[d * kQ + i] <= crd[3 * j + d] < hi[d * kQ + i] for every axis d < ndim.
void na_mask_rows(float* S, int64_t nk, const int32_t* crd, const int32_t* lo,
                  const int32_t* hi, int ndim);

// Geometry shared by every batch and head.
class NaGeometry {
 public:
  // One query tile: its lanes (token ids, in-group windows per axis) and, per query
  // vector, the bounding box of its lanes' windows (union) and their intersection.
  struct QTile {
    int32_t n = 0;                     // valid lanes [0, n)
    int32_t lo[3][kQ], hi[3][kQ];      // lane windows (padding lanes: empty)
    int32_t ulo[kQVecs][3], uhi[kQVecs][3];  // union box per vector (empty: ulo > uhi)
    int32_t ilo[kQVecs][3], ihi[kQVecs][3];  // intersection box per vector
    int64_t tok[kQ];
  };
  struct Group {
    int64_t ng[3];        // in-group grid
    int64_t nqt[3];       // query tiles per axis
    int64_t first_tile;   // into tiles_
    int64_t kv0;          // first kv index of the group in the tables
    int64_t nkv;          // keys (= tokens) of the group
    int64_t shift[3];     // kv tile of coordinate x is (x + shift) / kt
    int64_t nkt[3];       // kv tiles per axis
  };

  NaGeometry(const NaProblem& p, const NaPlan& plan, int threads) : plan_(plan) {
    // Small grids are tabulated on one thread: a parallel region costs more than it
    // saves, and on a busy machine every region risks waiting for a descheduled thread.
    if (p.tokens() < (int64_t(1) << 18)) threads = 1;
    for (int d = 0; d < 3; ++d) axis_[d] = p.axis[d];
    ndim_ = p.ndim;
    for (int d = 0; d < 3; ++d) {
      spatial_stride_[d] = 1;
      for (int e = d + 1; e < 3; ++e) spatial_stride_[d] *= axis_[e].size;
    }
    const int64_t G = axis_[0].dilation * axis_[1].dilation * axis_[2].dilation;
    groups_.resize(G);
    int64_t tiles = 0, kv = 0;
    for (int64_t gi = 0; gi < G; ++gi) {
      Group& g = groups_[gi];
      int64_t gc[3];
      group_coords(gi, gc);
      g.first_tile = tiles;
      g.kv0 = kv;
      g.nkv = 1;
      int64_t nt = 1;
      for (int d = 0; d < 3; ++d) {
        g.ng[d] = axis_[d].group_len(gc[d]);
        const int64_t qb = int64_t(plan_.vb[d]) * plan_.qa[d];
        g.nqt[d] = (g.ng[d] + qb - 1) / qb;
        g.shift[d] = (plan_.kt[d] - plan_.ko[d] % plan_.kt[d]) % plan_.kt[d];
        g.nkt[d] = (g.ng[d] - 1 + g.shift[d]) / plan_.kt[d] + 1;
        g.nkv *= g.ng[d];
        nt *= g.nqt[d];
      }
      tiles += nt;
      kv += g.nkv;
    }
    tiles_.resize(tiles);
    kv_tok_.resize(kv);
    kv_crd_.resize(3 * kv);
    // Independent per group / tile: fill in parallel (large grids have ~T/64 tiles).
    parallel_for(G, threads, [&](int64_t gi) { fill_kv(gi); });
    parallel_for(tiles, threads, [&](int64_t ti) { fill_tile(ti); });
  }

  int64_t num_groups() const { return static_cast<int64_t>(groups_.size()); }
  const Group& group(int64_t g) const { return groups_[g]; }
  const QTile& tile(const Group& g, int64_t t) const { return tiles_[g.first_tile + t]; }
  int64_t kv_token(const Group& g, int64_t idx) const { return kv_tok_[g.kv0 + idx]; }
  const int32_t* kv_coords(const Group& g, int64_t idx) const { return &kv_crd_[3 * (g.kv0 + idx)]; }
  int ndim() const { return ndim_; }
  const NaPlan& plan() const { return plan_; }
  // Whether this geometry serves problem p with plan (see geometry_for in gna.cpp).
  bool matches(const NaProblem& p, const NaPlan& plan) const {
    if (p.ndim != ndim_) return false;
    for (int d = 0; d < 3; ++d) {
      const NaAxis& a = p.axis[d];
      const NaAxis& b = axis_[d];
      if (a.size != b.size || a.kernel != b.kernel || a.stride != b.stride ||
          a.dilation != b.dilation || a.causal != b.causal || plan.vb[d] != plan_.vb[d] ||
          plan.qa[d] != plan_.qa[d] || plan.kt[d] != plan_.kt[d] || plan.ko[d] != plan_.ko[d])
        return false;
    }
    return true;
  }

  // Start coordinate of kv tile j on axis d (j == nkt gives ng).
  int64_t tile_start(const Group& g, int d, int64_t j) const {
    return std::clamp<int64_t>(j * plan_.kt[d] - g.shift[d], 0, g.ng[d]);
  }
  int64_t tile_of(const Group& g, int d, int64_t x) const { return (x + g.shift[d]) / plan_.kt[d]; }
  // First kv index of kv tile (j0, j1, j2); j2 == nkt[2] gives the end of row (j0, j1).
  int64_t kv_index(const Group& g, int64_t j0, int64_t j1, int64_t j2) const {
    const int64_t s0 = tile_start(g, 0, j0), z0 = tile_start(g, 0, j0 + 1) - s0;
    const int64_t s1 = tile_start(g, 1, j1), z1 = tile_start(g, 1, j1 + 1) - s1;
    return (s0 * g.ng[1] + z0 * s1) * g.ng[2] + z0 * z1 * tile_start(g, 2, j2);
  }

 private:
  void group_coords(int64_t gi, int64_t* gc) const {
    gc[2] = gi % axis_[2].dilation;
    gc[1] = (gi / axis_[2].dilation) % axis_[1].dilation;
    gc[0] = gi / (axis_[2].dilation * axis_[1].dilation);
  }
  // Flat token id of in-group coordinates c in group gc.
  int64_t token_of(const int64_t* gc, const int64_t* c) const {
    int64_t t = 0;
    for (int d = 0; d < 3; ++d) t += (c[d] * axis_[d].dilation + gc[d]) * spatial_stride_[d];
    return t;
  }

  void fill_kv(int64_t gi) {
    const Group& g = groups_[gi];
    int64_t gc[3];
    group_coords(gi, gc);
    for (int64_t j0 = 0; j0 < g.nkt[0]; ++j0)
      for (int64_t j1 = 0; j1 < g.nkt[1]; ++j1)
        for (int64_t j2 = 0; j2 < g.nkt[2]; ++j2) {
          int64_t idx = g.kv0 + kv_index(g, j0, j1, j2);
          int64_t c[3];
          for (c[0] = tile_start(g, 0, j0); c[0] < tile_start(g, 0, j0 + 1); ++c[0])
            for (c[1] = tile_start(g, 1, j1); c[1] < tile_start(g, 1, j1 + 1); ++c[1])
              for (c[2] = tile_start(g, 2, j2); c[2] < tile_start(g, 2, j2 + 1); ++c[2], ++idx) {
                kv_tok_[idx] = token_of(gc, c);
                for (int d = 0; d < 3; ++d) kv_crd_[3 * idx + d] = static_cast<int32_t>(c[d]);
              }
        }
  }

  void fill_tile(int64_t ti) {
    // Find the group of tile ti (groups are few; tiles are listed group by group).
    int64_t gi = static_cast<int64_t>(
        std::upper_bound(groups_.begin(), groups_.end(), ti,
                         [](int64_t x, const Group& g) { return x < g.first_tile; }) -
        groups_.begin()) - 1;
    const Group& g = groups_[gi];
    int64_t gc[3];
    group_coords(gi, gc);
    const int64_t t = ti - g.first_tile;
    const int64_t tc[3] = {t / (g.nqt[1] * g.nqt[2]), (t / g.nqt[2]) % g.nqt[1], t % g.nqt[2]};
    QTile& T = tiles_[ti];
    int n = 0;
    // Lanes: the tile's vector blocks, each block's tokens row-major. Blocks go in
    // snake order (each row reversed after the previous one) so that consecutive
    // vectors hold adjacent blocks and the vectors a kv range reaches tend to be
    // consecutive (one GEMM run). Blocks clipped by the grid's edge are compacted
    // (vectors may then straddle blocks).
    for (int b0 = 0; b0 < plan_.qa[0]; ++b0)
      for (int s1 = 0; s1 < plan_.qa[1]; ++s1)
        for (int s2 = 0; s2 < plan_.qa[2]; ++s2) {
          const int b1 = (b0 % 2) ? plan_.qa[1] - 1 - s1 : s1;
          const int b2 = ((b0 * plan_.qa[1] + s1) % 2) ? plan_.qa[2] - 1 - s2 : s2;
          const int bc[3] = {b0, b1, b2};
          int64_t o[3], e[3];
          for (int d = 0; d < 3; ++d) {
            o[d] = (tc[d] * plan_.qa[d] + bc[d]) * plan_.vb[d];
            e[d] = std::min<int64_t>(o[d] + plan_.vb[d], g.ng[d]);
          }
          int64_t c[3];
          for (c[0] = o[0]; c[0] < e[0]; ++c[0])
            for (c[1] = o[1]; c[1] < e[1]; ++c[1])
              for (c[2] = o[2]; c[2] < e[2]; ++c[2]) {
                T.tok[n] = token_of(gc, c);
                for (int d = 0; d < 3; ++d) {
                  int64_t lo, hi;
                  axis_[d].window(c[d], g.ng[d], &lo, &hi);
                  T.lo[d][n] = static_cast<int32_t>(lo);
                  T.hi[d][n] = static_cast<int32_t>(hi);
                }
                ++n;
              }
        }
    T.n = n;
    for (int i = n; i < kQ; ++i) {
      T.tok[i] = 0;
      for (int d = 0; d < 3; ++d) {
        T.lo[d][i] = INT32_MAX;  // sees nothing
        T.hi[d][i] = INT32_MIN;
      }
    }
    for (int v = 0; v < kQVecs; ++v)
      for (int d = 0; d < 3; ++d) {
        int32_t ulo = INT32_MAX, uhi = INT32_MIN, ilo = INT32_MIN, ihi = INT32_MAX;
        for (int i = v * kLanes; i < std::min((v + 1) * kLanes, n); ++i) {
          ulo = std::min(ulo, T.lo[d][i]);
          uhi = std::max(uhi, T.hi[d][i]);
          ilo = std::max(ilo, T.lo[d][i]);
          ihi = std::min(ihi, T.hi[d][i]);
        }
        T.ulo[v][d] = ulo;
        T.uhi[v][d] = uhi;
        T.ilo[v][d] = ilo;
        T.ihi[v][d] = ihi;
      }
  }

  NaAxis axis_[3];
  int ndim_ = 1;
  int64_t spatial_stride_[3];
  NaPlan plan_;
  std::vector<Group> groups_;
  std::vector<QTile> tiles_;
  std::vector<int64_t> kv_tok_;
  std::vector<int32_t> kv_crd_;
};

// The engine's Schedule (see the top of engine.hpp).
class NaSchedule {
 public:
  // batch, heads_q, heads_kv of the call; geometry shared by all of them.
  NaSchedule(const NaGeometry& geo, int64_t batch, int64_t heads_q, int64_t heads_kv)
      : geo_(geo), batch_(batch), hq_(heads_q), hkv_(heads_kv), group_size_(heads_q / heads_kv) {}

  int64_t num_problems() const { return batch_ * hq_ * geo_.num_groups(); }
  int64_t num_kv_problems() const { return batch_ * hkv_ * geo_.num_groups(); }

  // Problem p = ((b * Hq + hq) * G + g): the groups of a head are adjacent.
  ProblemRef problem(int64_t p) const {
    const int64_t G = geo_.num_groups();
    ProblemRef r;
    r.aux[0] = p % G;
    r.hq = (p / G) % hq_;
    r.b = p / (G * hq_);
    r.hkv = r.hq / group_size_;
    r.kvp = (r.b * hkv_ + r.hkv) * G + r.aux[0];
    const auto& g = geo_.group(r.aux[0]);
    r.n_q_tiles = g.nqt[0] * g.nqt[1] * g.nqt[2];
    return r;
  }
  KvProblemRef kv_problem(int64_t kp) const {
    const int64_t G = geo_.num_groups();
    KvProblemRef r;
    r.aux[0] = kp % G;
    r.hkv = (kp / G) % hkv_;
    r.b = kp / (G * hkv_);
    r.nk = geo_.group(r.aux[0]).nkv;
    return r;
  }
  int64_t kv_token(const KvProblemRef& kv, int64_t idx) const {
    return geo_.kv_token(geo_.group(kv.aux[0]), idx);
  }
  template <class F>
  void for_each_problem_of_kv(int64_t kp, F&& f) const {
    const int64_t G = geo_.num_groups();
    const int64_t g = kp % G, hkv = (kp / G) % hkv_, b = kp / (G * hkv_);
    for (int64_t h = hkv * group_size_; h < (hkv + 1) * group_size_; ++h) f((b * hq_ + h) * G + g);
  }

  int q_tile(const ProblemRef& r, int64_t t, int64_t* tok) const {
    const auto& T = geo_.tile(geo_.group(r.aux[0]), t);
    std::copy(T.tok, T.tok + T.n, tok);
    // A tile's rows are a few short runs in memory (a box of tokens), which the
    // hardware prefetchers barely see: ask for all of them at once.
    for (const auto& pf : prefetch_) {
      if (!pf.layout) continue;
      const int64_t bytes = pf.dim * dtype_size(pf.layout->dtype);
      for (int i = 0; i < T.n; ++i) {
        const char* row = static_cast<const char*>(pf.layout->row(r.b, tok[i], r.hq));
        if (pf.write)
          for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(row + o, 1, 3);
        else
          for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(row + o, 0, 3);
      }
    }
    return T.n;
  }
  // Per-query rows the engine reads (or writes) for a tile -- q, out, dout, dq --
  // which q_tile prefetches (measured ~10% faster for 2-D windows).
  struct Prefetch {
    const TokenLayout* layout = nullptr;
    int64_t dim = 0;
    bool write = false;
  };
  void set_prefetch(int i, Prefetch p) { prefetch_[i] = p; }

  // Visits the kv tiles that intersect the union of the tile's windows, row by row
  // (rows along the last axis are contiguous kv ranges), as maximal runs of tiles
  // that reach the same query vectors.
  template <class F>
  void for_each_kv_tile(const ProblemRef& r, int64_t t, F&& f) const {
    const auto& g = geo_.group(r.aux[0]);
    const auto& T = geo_.tile(g, t);
    // Per vector and axis: kv tiles touched [ja, jb] and tiles inside the intersection [fa, fb].
    int64_t ja[kQVecs][3], jb[kQVecs][3], fa[kQVecs][3], fb[kQVecs][3];
    int64_t lo[3] = {INT64_MAX, INT64_MAX, INT64_MAX}, hi[3] = {-1, -1, -1};
    uint32_t live = 0;
    for (int v = 0; v < kQVecs; ++v) {
      if (T.ulo[v][0] > T.uhi[v][0]) continue;  // no lanes
      live |= 1u << v;
      for (int d = 0; d < 3; ++d) {
        ja[v][d] = geo_.tile_of(g, d, T.ulo[v][d]);
        jb[v][d] = geo_.tile_of(g, d, T.uhi[v][d] - 1);
        lo[d] = std::min(lo[d], ja[v][d]);
        hi[d] = std::max(hi[d], jb[v][d]);
        if (T.ilo[v][d] < T.ihi[v][d]) {
          fa[v][d] = geo_.tile_of(g, d, T.ilo[v][d]);
          if (geo_.tile_start(g, d, fa[v][d]) < T.ilo[v][d]) ++fa[v][d];
          fb[v][d] = geo_.tile_of(g, d, T.ihi[v][d] - 1);
          if (geo_.tile_start(g, d, fb[v][d] + 1) > T.ihi[v][d]) --fb[v][d];
        } else {
          fa[v][d] = 1;
          fb[v][d] = 0;
        }
      }
    }
    if (!live) return;

    int64_t run_k0 = -1, run_k1 = -1;
    uint32_t run_bits = 0;
    bool run_full = true;
    auto emit = [&](int64_t k0, int64_t k1, uint32_t bits, bool full) {
      if (run_k1 == k0 && run_bits == bits) {  // extend the run
        run_k1 = k1;
        run_full = run_full && full;
        return;
      }
      if (run_k0 >= 0) f(run_k0, run_k1, run_full, QueryVectors{run_bits});
      run_k0 = k0;
      run_k1 = k1;
      run_bits = bits;
      run_full = full;
    };

    for (int64_t j0 = lo[0]; j0 <= hi[0]; ++j0)
      for (int64_t j1 = lo[1]; j1 <= hi[1]; ++j1) {
        uint32_t row = 0, row_full = 0;
        int64_t cuts[4 * kQVecs + 2];
        int nc = 0;
        for (int v = 0; v < kQVecs; ++v) {
          if (!((live >> v) & 1u)) continue;
          if (j0 < ja[v][0] || j0 > jb[v][0] || j1 < ja[v][1] || j1 > jb[v][1]) continue;
          row |= 1u << v;
          if (j0 >= fa[v][0] && j0 <= fb[v][0] && j1 >= fa[v][1] && j1 <= fb[v][1])
            row_full |= 1u << v;
          cuts[nc++] = ja[v][2];
          cuts[nc++] = jb[v][2] + 1;
          if (fa[v][2] <= fb[v][2]) {
            cuts[nc++] = fa[v][2];
            cuts[nc++] = fb[v][2] + 1;
          }
        }
        if (!row) continue;
        std::sort(cuts, cuts + nc);
        nc = static_cast<int>(std::unique(cuts, cuts + nc) - cuts);
        // Between consecutive cuts the set of vectors reached (and their fullness) is constant.
        for (int c = 0; c + 1 < nc; ++c) {
          const int64_t a = cuts[c], e = cuts[c + 1];  // tiles [a, e) along the last axis
          uint32_t bits = 0;
          bool full = true;
          for (int v = 0; v < kQVecs; ++v) {
            if (!((row >> v) & 1u) || a < ja[v][2] || e - 1 > jb[v][2]) continue;
            bits |= 1u << v;
            full = full && ((row_full >> v) & 1u) && a >= fa[v][2] && e - 1 <= fb[v][2];
          }
          if (bits) emit(geo_.kv_index(g, j0, j1, a), geo_.kv_index(g, j0, j1, e), bits, full);
        }
      }
    if (run_k0 >= 0) f(run_k0, run_k1, run_full, QueryVectors{run_bits});
  }

  void mask(const ProblemRef& r, int64_t t, int64_t k0, int64_t nk, float* S) const {
    const auto& g = geo_.group(r.aux[0]);
    const auto& T = geo_.tile(g, t);
    // Spatial axes are right-aligned (axes 3 - ndim .. 2); the others are neutral.
    const int d0 = 3 - geo_.ndim();
    na_mask_rows(S, nk, geo_.kv_coords(g, k0) + d0, &T.lo[d0][0], &T.hi[d0][0], geo_.ndim());
  }

 private:
  const NaGeometry& geo_;
  int64_t batch_, hq_, hkv_, group_size_;
  Prefetch prefetch_[4];
};

}  // namespace attnkit::cpu
