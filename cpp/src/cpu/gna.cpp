// attnkit CPU backend: neighborhood attention = the engine run with the
// Neighborhood schedule (gna_schedule.hpp); additional KV tokens = the engine run
// with the dense sequence schedule over them, merged exactly through the LSE.
#include "gna.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "attnkit/error.hpp"
#include "engine.hpp"
#include "gna_schedule.hpp"
#include "schedule_seq.hpp"

namespace attnkit::cpu {

// ---------------------------------------------------------------------------
// Element mask. It runs on almost every range (a vector block's window union is
// only partly seen by each of its lanes), so it has SIMD versions chosen at run
// time (the library's generic code is compiled for the baseline ISA). All give
// the same result.
// ---------------------------------------------------------------------------
namespace {

template <int ND>
void mask_rows_scalar(float* S, int64_t nk, const int32_t* crd, const int32_t* lo,
                      const int32_t* hi) {
  for (int64_t j = 0; j < nk; ++j)
    for (int i = 0; i < kQ; ++i) {
      bool ok = true;
      for (int d = 0; d < ND; ++d) {
        const int32_t x = crd[3 * j + d];
        ok = ok && lo[d * kQ + i] <= x && x < hi[d * kQ + i];
      }
      if (!ok) S[j * kQ + i] = -INFINITY;
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define AK_NA_X86 1

template <int ND>
__attribute__((target("avx512f"))) void mask_rows_avx512(float* S, int64_t nk, const int32_t* crd,
                                                         const int32_t* lo, const int32_t* hi) {
  constexpr int nv = kQ / 16;
  __m512i L[ND][nv], H[ND][nv];  // lane bounds stay in registers for the whole chunk
  for (int d = 0; d < ND; ++d)
    for (int v = 0; v < nv; ++v) {
      L[d][v] = _mm512_loadu_si512(lo + d * kQ + 16 * v);
      H[d][v] = _mm512_loadu_si512(hi + d * kQ + 16 * v);
    }
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < nk; ++j) {
    __m512i X[ND];
    for (int d = 0; d < ND; ++d) X[d] = _mm512_set1_epi32(crd[3 * j + d]);
    for (int v = 0; v < nv; ++v) {
      __mmask16 ok = 0xffff;
      for (int d = 0; d < ND; ++d) {
        ok = _mm512_mask_cmple_epi32_mask(ok, L[d][v], X[d]);
        ok = _mm512_mask_cmplt_epi32_mask(ok, X[d], H[d][v]);
      }
      _mm512_mask_storeu_ps(S + j * kQ + 16 * v, static_cast<__mmask16>(~ok), ninf);
    }
  }
}

template <int ND>
__attribute__((target("avx2"))) void mask_rows_avx2(float* S, int64_t nk, const int32_t* crd,
                                                    const int32_t* lo, const int32_t* hi) {
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  for (int64_t j = 0; j < nk; ++j) {
    __m256i X[ND];
    for (int d = 0; d < ND; ++d) X[d] = _mm256_set1_epi32(crd[3 * j + d]);
    for (int v = 0; v < kQ / 8; ++v) {
      __m256i bad = _mm256_setzero_si256();
      for (int d = 0; d < ND; ++d) {
        const __m256i l = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo + d * kQ + 8 * v));
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi + d * kQ + 8 * v));
        // bad |= (lo > x) | !(hi > x)
        bad = _mm256_or_si256(bad, _mm256_cmpgt_epi32(l, X[d]));
        bad = _mm256_or_si256(bad, _mm256_andnot_si256(_mm256_cmpgt_epi32(h, X[d]),
                                                       _mm256_set1_epi32(-1)));
      }
      float* s = S + j * kQ + 8 * v;
      _mm256_storeu_ps(s, _mm256_blendv_ps(_mm256_loadu_ps(s), ninf, _mm256_castsi256_ps(bad)));
    }
  }
}
#endif

using MaskFn = void (*)(float*, int64_t, const int32_t*, const int32_t*, const int32_t*);

template <int ND>
MaskFn pick_mask() {
#ifdef AK_NA_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return mask_rows_avx512<ND>;
  if (__builtin_cpu_supports("avx2")) return mask_rows_avx2<ND>;
#endif
  return mask_rows_scalar<ND>;
}

}  // namespace

void na_mask_rows(float* S, int64_t nk, const int32_t* crd, const int32_t* lo, const int32_t* hi,
                  int ndim) {
  static const MaskFn fns[3] = {pick_mask<1>(), pick_mask<2>(), pick_mask<3>()};
  fns[std::clamp(ndim, 1, 3) - 1](S, nk, crd, lo, hi);
}

// ---------------------------------------------------------------------------
// Plan
// ---------------------------------------------------------------------------
namespace {

// Mean extent of the window union of blocks of vb consecutive queries (group 0).
double mean_union(const NaAxis& ax, int64_t vb) {
  const int64_t ng = ax.group_len(0);
  double sum = 0;
  int64_t blocks = 0;
  for (int64_t b = 0; b < ng; b += vb, ++blocks) {
    int64_t lo, hi, l2, h2;
    ax.window(b, ng, &lo, &hi);
    ax.window(std::min(b + vb, ng) - 1, ng, &l2, &h2);
    sum += static_cast<double>(h2 - lo);
  }
  return sum / static_cast<double>(std::max<int64_t>(blocks, 1));
}

// Sum over the blocks of vb queries of the extent of the kv tiles (extent kt,
// boundaries at ko mod kt) that cover the block's window union (group 0).
int64_t covered(const NaAxis& ax, int64_t vb, int64_t kt, int64_t ko) {
  const int64_t ng = ax.group_len(0);
  const int64_t shift = (kt - ko % kt) % kt;
  auto start = [&](int64_t j) { return std::clamp<int64_t>(j * kt - shift, 0, ng); };
  int64_t sum = 0;
  for (int64_t b = 0; b < ng; b += vb) {
    int64_t lo, hi, l2, h2;
    ax.window(b, ng, &lo, &hi);
    ax.window(std::min(b + vb, ng) - 1, ng, &l2, &h2);
    sum += start((h2 - 1 + shift) / kt + 1) - start((lo + shift) / kt);
  }
  return sum;
}

// Developer knob for tuning and tests: ATTNKIT_GNA_PLAN="vb=1x4x4,qa=1x2x2,kt=1x4x1,ko=0x2x0"
// (axes right-aligned like NaAxis; entries on unused axes are ignored).
void apply_plan_override(NaPlan* plan, int ndim) {
  const char* env = std::getenv("ATTNKIT_GNA_PLAN");
  if (!env || !*env) return;
  NaPlan p = *plan;
  const char* c = env;
  auto bad = [&]() {
    throw Error(ErrorCode::InvalidArgument,
                std::string("ATTNKIT_GNA_PLAN must look like vb=1x4x4,qa=1x2x2,kt=1x4x1,ko=0x2x0 "
                            "(prod vb <= 16, prod qa <= 4, kt >= 1, 0 <= ko < kt), got '") +
                    env + "'");
  };
  while (*c) {
    int* dst = nullptr;
    if (!std::strncmp(c, "vb=", 3)) dst = p.vb;
    else if (!std::strncmp(c, "qa=", 3)) dst = p.qa;
    else if (!std::strncmp(c, "kt=", 3)) dst = p.kt;
    else if (!std::strncmp(c, "ko=", 3)) dst = p.ko;
    if (!dst) bad();
    c += 3;
    for (int d = 0; d < 3; ++d) {
      char* end;
      const long x = std::strtol(c, &end, 10);
      if (end == c || x < 0 || x > 1024) bad();
      dst[d] = static_cast<int>(x);
      c = end;
      if (d < 2 && *c++ != 'x') bad();
    }
    if (*c == ',') ++c;
  }
  for (int d = 0; d < 3 - ndim; ++d) p.vb[d] = p.qa[d] = p.kt[d] = 1, p.ko[d] = 0;
  int vol = 1, blocks = 1;
  for (int d = 0; d < 3; ++d) {
    if (p.vb[d] < 1 || p.qa[d] < 1 || p.kt[d] < 1 || p.ko[d] >= p.kt[d]) bad();
    vol *= p.vb[d];
    blocks *= p.qa[d];
  }
  if (vol > kLanes || blocks > kQVecs) bad();
  *plan = p;
}

}  // namespace

NaPlan choose_na_plan(const NaProblem& p) {
  NaPlan plan;
  const int d0 = 3 - p.ndim;
  // Vector block: the power-of-two box of <= 16 queries whose window union costs
  // least per query (16 lanes x union keys / queries), with a per-range overhead
  // amortised over the block's extent on the last axis (along which kv ranges are
  // contiguous): measured, 2x2x4 beats 4x2x2 by ~5% for 7x7x7 windows though its
  // union is 5% larger.
  double best = 1e300;
  for (int a = 1; a <= 16; a *= 2)
    for (int b = 1; a * b <= 16; b *= 2)
      for (int c = 1; a * b * c <= 16; c *= 2) {
        const int e[3] = {a, b, c};
        bool ok = true;
        double cost = 1;
        for (int d = 0; d < 3; ++d) {
          // Blocks no larger than the axis: clipped blocks would straddle vectors.
          if (e[d] > 1 && (d < d0 || e[d] > p.axis[d].group_len(0))) ok = false;
          cost *= mean_union(p.axis[d], e[d]);
        }
        if (!ok) continue;
        cost *= (1 + 0.4 / c) / static_cast<double>(a * b * c);
        if (cost < best * (1 - 1e-9)) {
          best = cost;
          for (int d = 0; d < 3; ++d) plan.vb[d] = e[d];
        }
      }
  // Four vector blocks per tile, arranged so that the tile's own window union (which
  // its softmax steps cover) is smallest per query. Tiles clipped by the grid's
  // edge are compacted, so a box larger than the grid costs lanes, not correctness.
  best = 1e300;
  for (int a = 1; a <= 4; a *= 2)
    for (int b = 1; a * b <= 4; b *= 2) {
      const int c = 4 / (a * b);
      const int e[3] = {a, b, c};
      bool ok = true;
      double cost = 1, vol = 1;
      for (int d = 0; d < 3; ++d) {
        const int64_t ext = int64_t(plan.vb[d]) * e[d];
        if (e[d] > 1 && d < d0) ok = false;
        cost *= mean_union(p.axis[d], ext);
        vol *= static_cast<double>(std::min(ext, p.axis[d].group_len(0)));
      }
      if (!ok) continue;
      cost /= vol;
      if (cost < best * (1 - 1e-9)) {
        best = cost;
        for (int d = 0; d < 3; ++d) plan.qa[d] = e[d];
      }
    }
  // kv tiles: the last axis is swept coordinate by coordinate (kt = 1); outer axes get
  // the largest tile whose boundaries fall (almost) on the vector blocks' union edges.
  for (int d = 0; d < 2; ++d) {
    if (d < d0) continue;
    int64_t best_cov = covered(p.axis[d], plan.vb[d], 1, 0);
    for (int kt = 2; kt <= 8; kt *= 2) {
      if (kt > 2 * plan.vb[d] * plan.qa[d]) break;
      for (int ko = 0; ko < kt; ++ko) {
        const int64_t cov = covered(p.axis[d], plan.vb[d], kt, ko);
        if (cov * 100 <= best_cov * 104) {
          plan.kt[d] = kt;
          plan.ko[d] = ko;
          break;
        }
      }
    }
  }
  // The AMX path widens every key range to multiples of 32 kv indices. kv tiles of
  // 32 keys (the outer extents times a last-axis extent) make every range start and
  // end on such a multiple: measured 13.2 -> 11.2 ms (2-D 64x64, 13x13, bf16).
  if (kernels().bf16 != nullptr && p.dtype == DType::BFloat16) {
    const int outer = plan.kt[0] * plan.kt[1];
    if (outer < 32) {
      plan.kt[2] = 32 / outer;
      int64_t best_cov = -1;
      for (int ko = 0; ko < plan.kt[2]; ++ko) {
        const int64_t cov = covered(p.axis[2], plan.vb[2], plan.kt[2], ko);
        if (best_cov < 0 || cov < best_cov) best_cov = cov, plan.ko[2] = ko;
      }
    }
  }
  apply_plan_override(&plan, p.ndim);
  return plan;
}

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------
namespace {

TokenLayout spatial_layout(const NaProblem& p, const NaOperand& o, DType dt) {
  TokenLayout l;
  l.data = static_cast<char*>(o.data);
  l.dtype = dt;
  l.batch_stride = o.batch_stride;
  l.head_stride = o.head_stride;
  l.ndims = p.ndim;
  for (int i = 0; i < p.ndim; ++i) {
    l.dims[i] = p.axis[3 - p.ndim + i].size;
    l.token_stride[i] = o.token_stride[3 - p.ndim + i];
  }
  return l;
}

// A contiguous float32 [B, T, H, dim] scratch operand, addressed by flat token id.
TokenLayout scratch_layout(float* data, int64_t tokens, int64_t heads, int64_t dim) {
  TokenLayout l;
  l.data = reinterpret_cast<char*>(data);
  l.dtype = DType::Float32;
  l.ndims = 1;
  l.head_stride = dim;
  l.token_stride[0] = heads * dim;
  l.batch_stride = tokens * heads * dim;
  return l;
}

EngineArgs base_args(const NaProblem& p, int threads) {
  EngineArgs a;
  a.dqk = p.head_dim_qk;
  a.dv = p.head_dim_v;
  a.scale = p.scale;
  a.q = spatial_layout(p, p.q, p.dtype);
  a.k = spatial_layout(p, p.k, p.dtype);
  a.v = spatial_layout(p, p.v, p.dtype);
  a.out = spatial_layout(p, p.out, p.dtype);
  if (p.lse) {
    a.lse = spatial_layout(p, p.lse_layout, DType::Float32);
    a.lse.data = reinterpret_cast<char*>(p.lse);
  }
  a.threads = threads;
  return a;
}

// The dense problem "every query against the additional tokens" for SeqSchedule.
FmhaProblem extra_problem(const NaProblem& p) {
  FmhaProblem f;
  f.dtype = p.dtype;
  f.batch = p.batch;
  f.seqlen_q = p.tokens();
  f.seqlen_k = p.n_extra;
  f.heads_q = p.heads_q;
  f.heads_kv = p.heads_kv;
  f.head_dim_qk = p.head_dim_qk;
  f.head_dim_v = p.head_dim_v;
  f.scale = p.scale;
  return f;
}

// The geometry depends only on the spatial shape and the window arguments, which
// training and inference loops repeat call after call: the last few (of grids up to
// 2^18 tokens, ~10 MB of tables each) are kept.
std::shared_ptr<const NaGeometry> geometry_for(const NaProblem& p, int threads) {
  static std::mutex mu;
  static std::vector<std::shared_ptr<const NaGeometry>> cache;  // most recent first
  constexpr size_t kKeep = 4;
  const NaPlan plan = choose_na_plan(p);
  if (p.tokens() > (int64_t(1) << 18)) return std::make_shared<const NaGeometry>(p, plan, threads);
  {
    std::lock_guard<std::mutex> lock(mu);
    for (size_t i = 0; i < cache.size(); ++i)
      if (cache[i]->matches(p, plan)) {
        auto g = cache[i];
        cache.erase(cache.begin() + static_cast<std::ptrdiff_t>(i));
        cache.insert(cache.begin(), g);
        return g;
      }
  }
  auto g = std::make_shared<const NaGeometry>(p, plan, threads);
  std::lock_guard<std::mutex> lock(mu);
  cache.insert(cache.begin(), g);
  if (cache.size() > kKeep) cache.pop_back();
  return g;
}

constexpr int64_t kFwdKvTile = 128;
constexpr int64_t kBwdKvTile = 64;

}  // namespace

void na_forward(const NaProblem& p, int threads) {
  threads = resolve_threads(threads);
  const auto geo = geometry_for(p, threads);
  NaSchedule sched(*geo, p.batch, p.heads_q, p.heads_kv);
  EngineArgs a = base_args(p, threads);
  a.kv_tile = kFwdKvTile;
  sched.set_prefetch(0, {&a.q, p.head_dim_qk, false});
  if (p.n_extra == 0) {
    sched.set_prefetch(1, {&a.out, p.head_dim_v, true});
    forward(sched, a);
    return;
  }
  // Two partial attentions over disjoint key sets, in float32, then the exact merge.
  const int64_t T = p.tokens(), rows = p.batch * T * p.heads_q, Dv = p.head_dim_v;
  FloatBuffer o1(rows * Dv), o2(rows * Dv), l1(rows), l2(rows);
  EngineArgs a1 = a;
  a1.out = scratch_layout(o1.get(), T, p.heads_q, Dv);
  a1.lse = scratch_layout(l1.get(), T, p.heads_q, 1);
  sched.set_prefetch(1, {&a1.out, p.head_dim_v, true});
  forward(sched, a1);
  EngineArgs a2 = a1;
  a2.k = TokenLayout::from(p.extra_k, p.dtype);
  a2.v = TokenLayout::from(p.extra_v, p.dtype);
  a2.out = scratch_layout(o2.get(), T, p.heads_q, Dv);
  a2.lse = scratch_layout(l2.get(), T, p.heads_q, 1);
  const FmhaProblem fp = extra_problem(p);
  forward(SeqSchedule(fp, kFwdKvTile), a2);

  constexpr int64_t kRows = 256;
  parallel_for((rows + kRows - 1) / kRows, threads, [&](int64_t blk) {
    float* row = o1.get() + blk * kRows * Dv;  // merged in place into o1
    for (int64_t r = blk * kRows; r < std::min(rows, (blk + 1) * kRows); ++r, row += Dv) {
      const float x1 = l1.get()[r], x2 = l2.get()[r];
      const float mx = std::max(x1, x2);
      float w1 = 0.f, w2 = 0.f, lse = -INFINITY;
      if (mx != -INFINITY) {
        w1 = std::exp(x1 - mx);
        w2 = std::exp(x2 - mx);
        lse = mx + std::log(w1 + w2);
        const float inv = 1.f / (w1 + w2);
        w1 *= inv;
        w2 *= inv;
      }
      const float* r2 = o2.get() + r * Dv;
      for (int64_t d = 0; d < Dv; ++d) row[d] = w1 * row[d] + w2 * r2[d];
      const int64_t h = r % p.heads_q, t = (r / p.heads_q) % T, b = r / (p.heads_q * T);
      store_row(row, Dv, p.dtype, a.out.row(b, t, h));
      if (a.lse.data) *reinterpret_cast<float*>(a.lse.row(b, t, h)) = lse;
    }
  });
}

void na_backward(const NaBackwardProblem& bp, int threads) {
  const NaProblem& p = bp.fwd;
  threads = resolve_threads(threads);
  const auto geo = geometry_for(p, threads);
  NaSchedule sched(*geo, p.batch, p.heads_q, p.heads_kv);
  EngineArgs a = base_args(p, threads);
  a.kv_tile = kBwdKvTile;
  a.dout = spatial_layout(p, bp.dout, p.dtype);
  a.dq = spatial_layout(p, bp.dq, p.dtype);
  a.dk = spatial_layout(p, bp.dk, p.dtype);
  a.dv_ = spatial_layout(p, bp.dv, p.dtype);
  if (bp.dlse) {
    a.dlse = a.lse;
    a.dlse.data = reinterpret_cast<char*>(const_cast<float*>(bp.dlse));
  }
  sched.set_prefetch(0, {&a.q, p.head_dim_qk, false});
  sched.set_prefetch(1, {&a.dout, p.head_dim_v, false});
  sched.set_prefetch(2, {&a.out, p.head_dim_v, false});
  if (p.n_extra == 0) {
    sched.set_prefetch(3, {&a.dq, p.head_dim_qk, true});
    backward(sched, a);
    return;
  }
  // With the final out and lse, each key set's part of the gradient is exact on its
  // own (P = exp(s - lse_final), delta = rowsum(dO * O_final)); dq is their sum.
  const int64_t T = p.tokens(), rows = p.batch * T * p.heads_q, D = p.head_dim_qk;
  FloatBuffer dq1(rows * D), dq2(rows * D);
  EngineArgs a1 = a;
  a1.dq = scratch_layout(dq1.get(), T, p.heads_q, D);
  sched.set_prefetch(3, {&a1.dq, p.head_dim_qk, true});
  backward(sched, a1);
  EngineArgs a2 = a1;
  a2.k = TokenLayout::from(p.extra_k, p.dtype);
  a2.v = TokenLayout::from(p.extra_v, p.dtype);
  a2.dk = TokenLayout::from(bp.d_extra_k, p.dtype);
  a2.dv_ = TokenLayout::from(bp.d_extra_v, p.dtype);
  a2.dq = scratch_layout(dq2.get(), T, p.heads_q, D);
  const FmhaProblem fp = extra_problem(p);
  backward(SeqSchedule(fp, kBwdKvTile), a2);

  constexpr int64_t kRows = 256;
  parallel_for((rows + kRows - 1) / kRows, threads, [&](int64_t blk) {
    for (int64_t r = blk * kRows; r < std::min(rows, (blk + 1) * kRows); ++r) {
      float* x = dq1.get() + r * D;
      const float* y = dq2.get() + r * D;
      for (int64_t d = 0; d < D; ++d) x[d] += y[d];
      const int64_t h = r % p.heads_q, t = (r / p.heads_q) % T, b = r / (p.heads_q * T);
      store_row(x, D, p.dtype, a.dq.row(b, t, h));
    }
  });
}

}  // namespace attnkit::cpu
