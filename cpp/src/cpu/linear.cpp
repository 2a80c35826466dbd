// attnkit CPU backend: linear attention (DESIGN §2.4) -- the chunked engine.
//
//   S_t = exp(g_t) S_{t-1} + k_t^T v_t,   o_t = scale q_t S_t
//
// A sequence is cut into chunks of kC = 64 tokens. Inside a chunk, with
// D[i][j] = prod_{s=j+1..i} exp(g_s) for j <= i (0 above the diagonal),
// ed[i] = prod_{s<=i} exp(g_s), ekB[j] = prod_{s>j} exp(g_s), eB = ed[n-1]:
//
//   O     = scale * (diag(ed) Q S_in + (Q K^T o D) V)        intra "left product"
//   S_out = eB S_in + K^T diag(ekB) V                         inter "right product"
//
// Every decay factor is a product over a contiguous token range, computed as a
// product of per-token factors exp(g_s) (never exp of a difference of large
// cumulative sums, never exp(+large) times exp(-large)): for g <= 0 each factor
// lies in [0, 1], so nothing overflows and strong decay only underflows to 0,
// exactly like the recurrence. g = -inf resets the state exactly.
//
// This file holds the drivers and the fp32 chunk math: its products are the
// kernel table's fp32 GEMM (KernelTable::gemm, the same micro-kernel as the
// softmax engine), used for every dtype. bf16 inputs on AMX CPUs run the same
// algorithm with bf16 tile GEMMs instead (linear_bf16.cpp); shared pieces are in
// linear_impl.hpp. Parallel work items are (sequence, head)
// units; when there are fewer units than threads can balance, long units are
// cut into segments of chunks and run in three passes (local states of each
// segment in parallel, a short sequential scan over segment states, then the
// segments in parallel from their true initial states).
//
// The backward runs the chunks forward (state S, giving dq) and then backward
// (adjoint state dH, giving dk, dv and d(initial_state)); dg comes from the
// identity dg_s = sum_{i>=s} (q_i.dq_i - k_i.dk_i) + <dS_final, S_final>,
// accumulated in double and regrouped so that no large sums cancel (see
// intra_dg, backward_reverse_chunk, compute_dg). GQA partial dk/dv are summed
// in a fixed order, so the result is reproducible run to run.
#include "linear.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "linear_impl.hpp"

namespace attnkit::cpu {

namespace {

using namespace lin;

// ---------------------------------------------------------------- chunk math
// Raw lower block triangle P[i][j] = A_i . BT[:, j] (block r: columns [0, 16(r+1))).
void scores_lower_raw(const Ctx& c, int64_t n, int64_t kdim, const float* A, int64_t lda,
                      const float* BT, float* P) {
  for (int64_t r0 = 0; r0 < n; r0 += kBlk)
    c.K->gemm(std::min(kBlk, n - r0), r0 / kLanes + 1, kdim, A + r0 * lda, lda, 1, BT, kC,
              P + r0 * kC, kC, false);
}

// P[i][j] = scale * D[i][j] * (A_i . BT[:, j]) on and below the diagonal, by
// 16-row blocks (block r computes columns [0, 16(r+1)) only: the rest is zero
// and never read).
void scores_lower(const Ctx& c, int64_t n, int64_t kdim, const float* A, int64_t lda,
                  const float* BT, const float* D, float* P) {
  for (int64_t r0 = 0; r0 < n; r0 += kBlk) {
    const int64_t rows = std::min(kBlk, n - r0), cols = r0 + kBlk;
    c.K->gemm(rows, cols / kLanes, kdim, A + r0 * lda, lda, 1, BT, kC, P + r0 * kC, kC, false);
    for (int64_t i = r0; i < r0 + rows; ++i) {
      float* p = P + i * kC;
      const float* d = D + i * kC;
      for (int64_t j = 0; j < cols; ++j) p[j] *= c.scale * d[j];
    }
  }
}

// O = diag(scale * ed) Q S_in + P V  (S null: S_in = 0). Needs Q, V, P (scores_lower on Q, K^T).
void chunk_output(const Ctx& c, int64_t n, Bufs& b, const float* S, float* O) {
  if (S) {
    c.K->gemm(n, c.ldv / kLanes, c.dk, b.Q, c.ldk, 1, S, c.ldv, O, c.ldv, false);
    scale_rows(O, n, c.ldv, b.ed, c.scale);
  } else {
    std::fill(O, O + n * c.ldv, 0.f);
  }
  for (int64_t r0 = 0; r0 < n; r0 += kBlk) {
    const int64_t rows = std::min(kBlk, n - r0);
    c.K->gemm(rows, c.ldv / kLanes, r0 + kBlk, b.P + r0 * kC, kC, 1, b.V, c.ldv, O + r0 * c.ldv,
              c.ldv, true);
  }
}

// S = eB S + sum_j ekB_j k_j^T v_j  (zero_in: S_in = 0). Needs K^T and V.
void state_update(const Ctx& c, int64_t n, Bufs& b, float* S, bool zero_in) {
  for (int64_t j = 0; j < n; ++j) {
    const float a = b.ekB[j];
    const float* v = b.V + j * c.ldv;
    float* vd = b.Vd + j * c.ldv;
    for (int64_t e = 0; e < c.ldv; ++e) vd[e] = v[e] * a;
  }
  if (!zero_in) scale_all(S, c.dk * c.ldv, b.eB);
  c.K->gemm(c.dk, c.ldv / kLanes, n, b.KT, kC, 1, b.Vd, c.ldv, S, c.ldv, !zero_in);
}

// S^T = eB S^T + sum_j ekB_j v_j^T k_j  (S^T [ldv][ldk]). Needs K rows and V rows.
void state_update_T(const Ctx& c, int64_t n, Bufs& b, float* ST, bool zero_in) {
  for (int64_t j = 0; j < n; ++j) {
    const float a = b.ekB[j];
    const float* k = b.K + j * c.ldk;
    float* kd = b.T1 + j * c.ldk;  // T1 is free here
    for (int64_t d = 0; d < c.ldk; ++d) kd[d] = k[d] * a;
  }
  if (!zero_in) scale_all(ST, c.dve * c.ldk, b.eB);
  c.K->gemm(c.dve, c.ldk / kLanes, n, b.V, 1, c.ldv, b.T1, c.ldk, ST, c.ldk, !zero_in);
}

// dH = eB dH + sum_i (scale ed_i q_i)^T dOa_i. Needs Q rows and dOa in b.dO.
void adjoint_update(const Ctx& c, int64_t n, Bufs& b, float* dH, bool zero_in) {
  for (int64_t i = 0; i < n; ++i) {
    const float a = b.ed[i] * c.scale;
    const float* x = b.dO + i * c.ldv;
    float* y = b.dOd + i * c.ldv;
    for (int64_t e = 0; e < c.ldv; ++e) y[e] = x[e] * a;
  }
  if (!zero_in) scale_all(dH, c.dk * c.ldv, b.eB);
  c.K->gemm(c.dk, c.ldv / kLanes, n, b.Q, 1, c.ldk, b.dOd, c.ldv, dH, c.ldv, !zero_in);
}

// ---------------------------------------------------------------- segment states (scan)
// Holds one [ldk][ldv] state per segment of segmented units, plus segment decays.
struct SegStates {
  FloatBuffer buf;
  std::vector<int64_t> slot;   // per segment: slot index or -1
  std::vector<float> decay;    // per segment: product of exp(g) over its tokens
  int64_t size = 0;
  float* at(int64_t seg) { return buf.get() + slot[seg] * size; }
};

void init_seg_states(const Ctx& c, const Plan& pl, SegStates& ss) {
  ss.size = c.ldk * c.ldv;
  ss.slot.assign(pl.segs.size(), -1);
  ss.decay.assign(pl.segs.size(), 1.f);
  int64_t n = 0;
  for (size_t u = 0; u < pl.first.size(); ++u)
    if (pl.count[u] > 1)
      for (int64_t s = 0; s < pl.count[u]; ++s) ss.slot[pl.first[u] + s] = n++;
  if (n) ss.buf.reset(n * ss.size);
}

// S = the state entering segment si: from the segment scan `ss` when its unit is
// segmented, else the operand `st` of its sequence (0 when absent). Returns
// whether S is zero.
bool load_entering_state(const Ctx& c, const Plan& pl, SegStates& ss, int64_t si, const Unit& u,
                         const StateOperand& st, float* S) {
  if (pl.count[pl.segs[si].u] > 1) {
    std::memcpy(S, ss.at(si), sizeof(float) * c.ldk * c.ldv);
    return false;
  }
  load_state(c, st, u, S);
  return st.data == nullptr;
}

template <class F>
void for_segments(const Plan& pl, int threads, bool only_segmented, F&& body) {
  std::vector<int64_t> items;
  for (int64_t i : pl.order)
    if (!only_segmented || pl.count[pl.segs[i].u] > 1) items.push_back(i);
  parallel_for(static_cast<int64_t>(items.size()), threads, [&](int64_t it) { body(items[it]); });
}

// Pass A + B of the forward recurrence: ss.at(seg) = the true state entering
// each segment of every segmented unit (the first one's is the initial state).
void forward_scan(const Ctx& c, const std::vector<Unit>& units, const Plan& pl, SegStates& ss,
                  Scratch& scratch, int threads) {
  for_segments(pl, threads, true, [&](int64_t si) {
    const Segment& sg = pl.segs[si];
    const Unit& u = units[sg.u];
    Bufs& b = scratch.mine();
    Decays dec;
    dec.init(c, u);
    float prod = 1.f;
    if (sg.s + 1 < pl.count[sg.u] && c.amx) {
      c.K->bf16->begin();
      bf16_local_state(c, u, sg.c0, sg.c1, b, ss.at(si + 1), &prod);
      c.K->bf16->end();
    } else if (sg.s + 1 < pl.count[sg.u]) {  // local state of this segment, from 0
      float* L = ss.at(si + 1);
      bool zero = true;
      for (int64_t ch = sg.c0; ch < sg.c1; ++ch) {
        const int64_t t = ch * kC, n = std::min(kC, u.T - t);
        dec.chunk(c, u, t, n, b, false);
        pack_k(c, u, t, n, b, false, true);
        pack_v(c, u, t, n, b, true, false);
        state_update(c, n, b, L, zero);
        zero = false;
        prod *= b.eB;
      }
    } else {
      prod = dec.total(c, u, sg.c0 * kC, std::min(u.T, sg.c1 * kC) - sg.c0 * kC);
    }
    ss.decay[si] = prod;
  });
  parallel_for(static_cast<int64_t>(units.size()), threads, [&](int64_t ui) {
    if (pl.count[ui] <= 1) return;
    const int64_t f0 = pl.first[ui];
    load_state(c, c.init, units[ui], ss.at(f0));
    for (int64_t s = 1; s < pl.count[ui]; ++s) {
      const float a = ss.decay[f0 + s - 1];
      const float* prev = ss.at(f0 + s - 1);
      float* cur = ss.at(f0 + s);
      for (int64_t i = 0; i < ss.size; ++i) cur[i] += a * prev[i];
    }
  });
}

// ---------------------------------------------------------------- non-causal
// o = scale q S, S = S_0 + sum_j k_j^T v_j over the whole sequence.
//
// The sums over tokens (S, and dS in the backward) run as GEMMs of depth up to
// kNB tokens: a long K keeps the micro-kernel's accumulators in registers
// instead of reloading the [Dk][Dv] sum every 64 tokens.
constexpr int64_t kNB = 512;

// Per-thread rows of the two operands of X += A^T B over a block of tokens.
class TokenSum {
 public:
  TokenSum(const Ctx& c, int threads) : c_(c), per_(kNB * (c.ldk + c.ldv) + 32) {
    buf_.reset(per_ * threads);
  }
  float* a(int64_t i) { return base() + i * c_.ldk; }            // [kNB][ldk]
  float* b(int64_t i) { return base() + kNB * c_.ldk + i * c_.ldv; }  // [kNB][ldv]
  // X += sum over the n buffered tokens of a_i^T b_i (X [ldk][ldv]).
  void flush(int64_t n, float* X) {
    if (n > 0) c_.K->gemm(c_.dk, c_.ldv / kLanes, n, a(0), 1, c_.ldk, b(0), c_.ldv, X, c_.ldv, true);
  }

 private:
  float* base() { return buf_.get() + per_ * thread_index(); }
  const Ctx& c_;
  int64_t per_;
  FloatBuffer buf_;
};

void noncausal_state(const Ctx& c, const std::vector<Unit>& units, const Plan& pl,
                     Scratch& scratch, int threads, FloatBuffer& states) {
  const int64_t sz = c.ldk * c.ldv;
  FloatBuffer parts(static_cast<int64_t>(pl.segs.size()) * sz);
  TokenSum acc(c, threads);
  for_segments(pl, threads, false, [&](int64_t si) {
    const Segment& sg = pl.segs[si];
    const Unit& u = units[sg.u];
    float* L = parts.get() + si * sz;
    std::fill(L, L + sz, 0.f);
    if (c.amx) {  // the token sum on AMX tiles: bf16 K^T and V, fp32 sums
      float decay;
      c.K->bf16->begin();
      bf16_local_state(c, u, sg.c0, sg.c1, scratch.mine(), L, &decay);
      c.K->bf16->end();
      return;
    }
    const int64_t t0 = sg.c0 * kC, t1 = std::min(u.T, sg.c1 * kC);
    int64_t m = 0;
    for (int64_t t = t0; t < t1; ++t) {
      if ((t - t0) % kC == 0 && t + kC < t1) {  // the next chunk's rows (see prefetch_rows)
        prefetch_rows(c.k, u, u.hkv, t + kC, std::min(kC, t1 - t - kC), c.dk);
        prefetch_rows(c.v, u, u.hkv, t + kC, std::min(kC, t1 - t - kC), c.dv);
      }
      float* kr = acc.a(m);
      float* vr = acc.b(m);
      load_row(c.k.row(u.b, u.t0 + t, u.hkv), c.k.dt, c.dk, kr);
      std::fill(kr + c.dk, kr + c.ldk, 0.f);
      load_row(c.v.row(u.b, u.t0 + t, u.hkv), c.v.dt, c.dv, vr);
      std::fill(vr + c.dv, vr + c.ldv, 0.f);
      if (c.normalize) vr[c.dv] = 1.f;
      if (++m == kNB || t + 1 == t1) {
        acc.flush(m, L);
        m = 0;
      }
    }
  });
  states.reset(static_cast<int64_t>(units.size()) * sz);
  parallel_for(static_cast<int64_t>(units.size()), threads, [&](int64_t ui) {
    float* S = states.get() + ui * sz;
    load_state(c, c.init, units[ui], S);
    for (int64_t s = 0; s < pl.count[ui]; ++s) {  // fixed order
      const float* L = parts.get() + (pl.first[ui] + s) * sz;
      for (int64_t i = 0; i < sz; ++i) S[i] += L[i];
    }
  });
}

void noncausal_forward(const Ctx& c, const std::vector<Unit>& units, const Plan& pl,
                       Scratch& scratch, int threads) {
  FloatBuffer states;
  noncausal_state(c, units, pl, scratch, threads, states);
  const int64_t sz = c.ldk * c.ldv;
  for_segments(pl, threads, false, [&](int64_t si) {
    const Segment& sg = pl.segs[si];
    const Unit& u = units[sg.u];
    Bufs& b = scratch.mine();
    const float* S = states.get() + sg.u * sz;
    if (c.amx) {
      c.K->bf16->begin();
      bf16_noncausal_output(c, u, sg.c0, sg.c1, b, S);
      c.K->bf16->end();
      return;
    }
    for (int64_t ch = sg.c0; ch < sg.c1; ++ch) {
      const int64_t t = ch * kC, n = std::min(kC, u.T - t);
      pack_rows(c.q, u, u.hq, t, n, c.dk, c.ldk, b.Q);
      c.K->gemm(n, c.ldv / kLanes, c.dk, b.Q, c.ldk, 1, S, c.ldv, b.O, c.ldv, false);
      scale_all(b.O, n * c.ldv, c.scale);
      store_out(c, u, t, n, b.O, b.row);
    }
  });
  if (c.fin.data)
    parallel_for(static_cast<int64_t>(units.size()), threads, [&](int64_t ui) {
      save_state(c, states.get() + ui * sz, c.fin, units[ui]);
    });
}

// The fp32 counterpart of bf16_forward_lockstep (linear_impl.hpp).
// Chunk ch (< c1) of cursor r: output rows, then the state update.
void fp32_forward_chunk(const Ctx& c, Cursor& r, int64_t ch, int64_t c1, Bufs& b, bool keep_state) {
  const Unit& u = *r.u;
  const int64_t t = ch * kC, n = std::min(kC, u.T - t);
  if (ch + 1 < c1) prefetch_chunk(c, u, t + kC, std::min(kC, u.T - t - kC));
  r.swap_decay(b);
  r.dec.chunk(c, u, t, n, b, true);
  pack_rows(c.q, u, u.hq, t, n, c.dk, c.ldk, b.Q);
  pack_k(c, u, t, n, b, false, true);
  pack_v(c, u, t, n, b, true, false);
  scores_lower(c, n, c.dk, b.Q, c.ldk, b.KT, b.D, b.P);
  chunk_output(c, n, b, r.zero ? nullptr : r.X, b.O);
  store_out(c, u, t, n, b.O, b.row);
  if (ch + 1 < u.chunks() || keep_state) {
    state_update(c, n, b, r.X, r.zero);
    r.zero = false;
  }
  r.swap_decay(b);
}

void fp32_forward_lockstep(const Ctx& c, const Unit* units, int nu, int64_t c0, int64_t c1, Bufs& b,
                           float* const* S, const bool* zero, bool keep_state, float* D) {
  Cursor cur[kMaxLockstep];
  start_cursors(c, cur, units, 0, nu, S, zero, D);
  lockstep_chunks(cur, nu, c0, c1, false, [&](Cursor& r, int64_t ch) { fp32_forward_chunk(c, r, ch, c1, b, keep_state); });
}

}  // namespace

// Lockstep groups (segment ids): segment s of consecutive units (heads) with the
// same sequence and chunks, as many as still gives every thread a group; a group
// never mixes sequences.
std::vector<std::vector<int64_t>> lockstep_groups(const std::vector<Unit>& units, const Plan& pl,
                                                  int threads) {
  const int64_t N = static_cast<int64_t>(pl.segs.size());
  const int64_t g = std::max<int64_t>(1, std::min<int64_t>(kMaxLockstep, N / std::max(threads, 1)));
  std::vector<std::vector<int64_t>> groups;
  for (int64_t u = 0; u < static_cast<int64_t>(units.size());) {
    int64_t n = 1;
    while (n < g && u + n < static_cast<int64_t>(units.size()) && units[u + n].seq == units[u].seq &&
           units[u + n].T == units[u].T && pl.count[u + n] == pl.count[u])
      ++n;
    for (int64_t s = 0; s < pl.count[u]; ++s) {
      std::vector<int64_t> grp;
      for (int64_t i = 0; i < n; ++i) grp.push_back(pl.first[u + i] + s);
      groups.push_back(std::move(grp));
    }
    u += n;
  }
  return groups;
}

// The causal forward: the groups run in lockstep (bf16_forward_lockstep on AMX,
// else fp32_forward_lockstep), their states entering from the segment scan
// (segmented units) or the initial state.
void lockstep_forward(const Ctx& c, const std::vector<Unit>& units, const Plan& pl, SegStates& ss,
                      Scratch& scratch, int threads) {
  const auto groups = lockstep_groups(units, pl, threads);
  const int64_t state = c.state_floats();
  parallel_for(static_cast<int64_t>(groups.size()), threads, [&](int64_t gi) {
    const std::vector<int64_t>& grp = groups[gi];
    const int nu = static_cast<int>(grp.size());
    const Segment& s0 = pl.segs[grp[0]];
    Bufs& b = scratch.mine();
    FloatBuffer buf(nu * (state + kC * kC));
    float* S[kMaxLockstep];
    bool zero[kMaxLockstep];
    for (int i = 0; i < nu; ++i) {
      const Segment& sg = pl.segs[grp[i]];
      S[i] = buf.get() + i * state;
      zero[i] = load_entering_state(c, pl, ss, grp[i], units[sg.u], c.init, S[i]);
      pad_state_rows(c, S[i]);
    }
    if (c.amx) {
      c.K->bf16->begin();
      bf16_forward_lockstep(c, &units[s0.u], nu, s0.c0, s0.c1, b, S, zero, c.fin.data != nullptr,
                            buf.get() + nu * state);
      c.K->bf16->end();
    } else {
      fp32_forward_lockstep(c, &units[s0.u], nu, s0.c0, s0.c1, b, S, zero, c.fin.data != nullptr,
                            buf.get() + nu * state);
    }
    for (int i = 0; i < nu; ++i) {
      const Segment& sg = pl.segs[grp[i]];
      if (c.fin.data && sg.s + 1 == pl.count[sg.u]) save_state(c, S[i], c.fin, units[sg.u]);
    }
  });
}

// ============================================================================ forward
void linear_forward(const LinearProblem& p, int threads_req) {
  Ctx c = make_ctx(p);
  int64_t total = 0;
  const std::vector<Unit> units = make_units(p, &total);
  c.total = total;
  if (units.empty()) return;
  const int threads = resolve_threads(threads_req);
  const Plan pl = make_plan(units, threads);
  Scratch scratch(c, threads);

  if (!c.causal) {
    noncausal_forward(c, units, pl, scratch, threads);
    return;
  }

  SegStates ss;
  if (pl.segmented) {
    init_seg_states(c, pl, ss);
    forward_scan(c, units, pl, ss, scratch, threads);
  }
  lockstep_forward(c, units, pl, ss, scratch, threads);
}

// ============================================================================ backward
namespace {

using namespace lin;

// The backward sweeps run the heads of a sequence in lockstep groups, as the
// forward (lockstep_groups), one Cursor per unit.

// Forward sweep, chunk ch (< c1): dq (and q.dq), dOa (normalize); the cursor's S^T
// (and S with normalize) carry the state.
void backward_forward_chunk(const Ctx& c, Cursor& r, int64_t ch, int64_t c1, Bufs& b, BwdWork& w) {
  const Unit& u = *r.u;
  const Decays& dec = r.dec;
  bool& zero = r.zero;
  r.swap_decay(b);
  const int64_t t = ch * kC, n = std::min(kC, u.T - t);
  if (ch + 1 < c1) prefetch_chunk(c, u, t + kC, std::min(kC, u.T - t - kC));
  dec.chunk(c, u, t, n, b, true);
  pack_rows(c.q, u, u.hq, t, n, c.dk, c.ldk, b.Q);
  pack_k(c, u, t, n, b, true, c.normalize);
  pack_v(c, u, t, n, b, true, true);
  pack_dout(c, u, t, n, b.dO);
  if (c.normalize) {
    scores_lower(c, n, c.dk, b.Q, c.ldk, b.KT, b.D, b.P);
    chunk_output(c, n, b, zero ? nullptr : r.X, b.O);
    normalize_dout(c, n, b);
    std::memcpy(w.doa.get() + w.idx(c, u, t) * c.ldv, b.dO, sizeof(float) * n * c.ldv);
  }
  // Bm[i][j] = scale D_ij dOa_i . v_j ; dq = diag(scale ed) dOa S^T + Bm K
  scores_lower(c, n, c.dve, b.dO, c.ldv, b.VT, b.D, b.Bm);
  float* dq = b.T1 + 0;  // [kC][ldk]; T1 is reused by state_update_T after dq is stored
  if (!zero) {
    c.K->gemm(n, c.ldk / kLanes, c.dve, b.dO, c.ldv, 1, r.XT, c.ldk, dq, c.ldk, false);
    scale_rows(dq, n, c.ldk, b.ed, c.scale);
  } else {
    std::fill(dq, dq + n * c.ldk, 0.f);
  }
  if (w.want_dg)  // q . dq, inter-chunk part (the intra part of dg comes from the reverse sweep)
    for (int64_t i = 0; i < n; ++i) {
      const float* qi = b.Q + i * c.ldk;
      const float* dqi = dq + i * c.ldk;
      float s = 0.f;
      for (int64_t d = 0; d < c.dk; ++d) s += qi[d] * dqi[d];
      w.rq.get()[w.idx(c, u, t + i)] = s;
    }
  for (int64_t r0 = 0; r0 < n; r0 += kBlk) {
    const int64_t rows = std::min(kBlk, n - r0);
    c.K->gemm(rows, c.ldk / kLanes, r0 + kBlk, b.Bm + r0 * kC, kC, 1, b.K, c.ldk,
              dq + r0 * c.ldk, c.ldk, true);
  }
  for (int64_t i = 0; i < n; ++i)
    store_row(dq + i * c.ldk, c.dk, c.dq.dt, c.dq.row(u.b, u.t0 + t + i, u.hq));
  if (ch + 1 < u.chunks()) {
    state_update_T(c, n, b, r.XT, zero);
    if (c.normalize) state_update(c, n, b, r.X, zero);
    zero = false;
  }
  r.swap_decay(b);
}

// Reverse sweep, chunk ch (>= c0; chunks run last to first): dk, dv (and the dg terms);
// dH carries the adjoint of the state at the current chunk's end.
//
// With dg and dS_final both wanted ("split"), dH excludes dS_final, whose
// decayed contribution E dS_final (E = decay from the chunk's end to T) is added
// to dk and dv explicitly: then k.dk's inter part never contains it, and the
// final state's part of dg is summed on its own (see compute_dg) -- otherwise
// a rounding residual of size <dS_final, S_final> would reach every token.
void backward_reverse_chunk(const Ctx& c, Cursor& r, int64_t ch, int64_t c0, Bufs& b, BwdWork& w) {
  const Unit& u = *r.u;
  const Decays& dec = r.dec;
  float* const dH = r.X;
  bool& zero = r.zero;
  float& E = r.E;
  const int64_t ui = r.ui;
  const bool split = w.want_dg && c.dfin.data;
  const float* F = split ? w.dfin_pad.get() + ui * c.ldk * c.ldv : nullptr;
  float* dv = b.Vd;   // [kC][ldv]
  float* XF = b.O;    // [kC][ldv] K dS_final
  float* XT = b.T1;   // [ldk][kC] dk^T
  float* dHt = b.ST;  // [ldk][ldv] dH + E dS_final (split)
  r.swap_decay(b);
  const int64_t t = ch * kC, n = std::min(kC, u.T - t);
  if (ch > c0) prefetch_chunk(c, u, t - kC, kC);
  dec.chunk(c, u, t, n, b, true);
  pack_rows(c.q, u, u.hq, t, n, c.dk, c.ldk, b.Q);
  pack_k(c, u, t, n, b, false, true);
  pack_v(c, u, t, n, b, false, true);
  load_doa(c, u, t, n, b, w);
  scores_lower(c, n, c.dve, b.dO, c.ldv, b.VT, b.D, b.Bm);
  scores_lower_raw(c, n, c.dk, b.Q, c.ldk, b.KT, b.P);
  if (w.want_dg) intra_dg(c, n, b, w.ri.get() + w.idx(c, u, t));
  decay_lower(c, n, b.D, b.P);
  // dv_j = ekB_j k_j (dH + E dS_final) + sum_{i>=j} P_ij dOa_i
  if (!zero)
    c.K->gemm(n, c.ldv / kLanes, c.dk, b.KT, 1, kC, dH, c.ldv, dv, c.ldv, false);
  else
    std::fill(dv, dv + n * c.ldv, 0.f);
  if (split) c.K->gemm(n, c.ldv / kLanes, c.dk, b.KT, 1, kC, F, c.ldv, XF, c.ldv, false);
  for (int64_t j = 0; j < n; ++j) {
    float* x = dv + j * c.ldv;
    if (w.want_dg) {  // k_j . dk_j, inter-chunk part = ekB_j (k_j dH) . v_j; and f_j
      float s = 0.f, sf = 0.f;
      for (int64_t e = 0; e < c.dve; ++e) s += x[e] * b.VT[e * kC + j];
      w.rk.get()[w.idx(c, u, t + j)] = s * b.ekB[j];
      if (split) {
        for (int64_t e = 0; e < c.dv; ++e) sf += XF[j * c.ldv + e] * b.VT[e * kC + j];
        w.rf.get()[w.idx(c, u, t + j)] = sf * b.ekB[j] * E;
      }
    }
    const float a = b.ekB[j];
    if (split)
      for (int64_t e = 0; e < c.ldv; ++e) x[e] = a * (x[e] + E * XF[j * c.ldv + e]);
    else
      for (int64_t e = 0; e < c.ldv; ++e) x[e] *= a;
  }
  for (int64_t r0 = 0; r0 < n; r0 += kBlk) {
    const int64_t rows = std::min(kBlk, n - r0);
    c.K->gemm(rows, c.ldv / kLanes, n - r0, b.P + r0 * kC + r0, 1, kC, b.dO + r0 * c.ldv, c.ldv,
              dv + r0 * c.ldv, c.ldv, true);
  }
  store_R(c, u, t, n, dv, c.ldv, c.dv, c.dv_, w.gqa ? w.pdv.get() : nullptr);
  // dk^T[d][j] = ekB_j ((dH + E dS_final) V^T)[d][j] + sum_{i>=j} Q[i][d] Bm[i][j]
  const float* H = dH;
  if (split) {
    for (int64_t i = 0; i < c.ldk * c.ldv; ++i) dHt[i] = (zero ? 0.f : dH[i]) + E * F[i];
    H = dHt;
  }
  if (!zero || split) {
    c.K->gemm(c.dk, kC / kLanes, c.dve, H, c.ldv, 1, b.VT, kC, XT, kC, false);
    scale_cols(XT, c.dk, kC, b.ekB, n);
  } else {
    std::fill(XT, XT + c.dk * kC, 0.f);
  }
  for (int64_t r0 = 0; r0 < n; r0 += kBlk) {
    const int64_t rows = std::min(kBlk, n - r0);
    c.K->gemm(c.dk, r0 / kLanes + 1, rows, b.Q + r0 * c.ldk, 1, c.ldk, b.Bm + r0 * kC, kC, XT,
              kC, true);
  }
  store_T(c, u, t, n, XT, c.dk, c.dk_, w.gqa ? w.pdk.get() : nullptr, c.ldk, b.K);  // b.K: free here
  adjoint_update(c, n, b, dH, zero);
  zero = false;
  E *= b.eB;
  r.swap_decay(b);
}

// The two sweeps over chunks [c0, c1) of units[0..nu) (ids ui0..) in lockstep;
// S, ST / dH, zero and E per unit as for the bf16 sweeps (linear_impl.hpp). D:
// nu * kC * kC floats of scratch.
void fp32_backward_forward_lockstep(const Ctx& c, const Unit* units, int nu, int64_t c0, int64_t c1,
                                    Bufs& b, float* const* S, float* const* ST, const bool* zero,
                                    BwdWork& w, float* D) {
  Cursor cur[kMaxLockstep];
  start_cursors(c, cur, units, 0, nu, S, zero, D);
  for (int i = 0; i < nu; ++i) cur[i].XT = ST[i];
  lockstep_chunks(cur, nu, c0, c1, false, [&](Cursor& r, int64_t ch) { backward_forward_chunk(c, r, ch, c1, b, w); });
}

void fp32_backward_reverse_lockstep(const Ctx& c, const Unit* units, int64_t ui0, int nu,
                                    const Segment& sg, Bufs& b, float* const* dH, const bool* zero,
                                    const float* E, BwdWork& w, float* D) {
  Cursor cur[kMaxLockstep];
  start_cursors(c, cur, units, ui0, nu, dH, zero, D);
  for (int i = 0; i < nu; ++i) cur[i].E = E[i];
  lockstep_chunks(cur, nu, sg.c0, sg.c1, true, [&](Cursor& r, int64_t ch) { backward_reverse_chunk(c, r, ch, sg.c0, b, w); });
  if (w.want_dg && c.dfin.data && sg.s == 0)
    for (int i = 0; i < nu; ++i) finish_split_adjoint(c, units[i], cur[i].ui, cur[i].X, cur[i].zero, cur[i].E, w);
}

// Local adjoint of a segment (zero at its end): sum over its chunks of the
// decayed scale q^T dOa terms, propagated to the segment start.
void reverse_local(const Ctx& c, const Unit& u, const Segment& sg, Bufs& b, float* L,
                   const BwdWork& w) {
  Decays dec;
  dec.init(c, u);
  bool zero = true;
  for (int64_t ch = sg.c1 - 1; ch >= sg.c0; --ch) {
    const int64_t t = ch * kC, n = std::min(kC, u.T - t);
    dec.chunk(c, u, t, n, b, false);
    pack_rows(c.q, u, u.hq, t, n, c.dk, c.ldk, b.Q);
    load_doa(c, u, t, n, b, w);
    adjoint_update(c, n, b, L, zero);
    zero = false;
  }
}

void reduce_gqa(const Ctx& c, const std::vector<Unit>& units, const BwdWork& w, int threads) {
  // One item per (sequence, kv head, 64-token block); query heads of a group are
  // summed in head order.
  struct Item {
    int64_t ui, t0, t1;
  };
  std::vector<Item> items;
  for (size_t ui = 0; ui < units.size(); ++ui) {
    const Unit& u = units[ui];
    if (u.hq % c.group) continue;
    for (int64_t t = 0; t < u.T; t += kC) items.push_back({static_cast<int64_t>(ui), t, std::min(u.T, t + kC)});
  }
  const int64_t m = c.ldmax();
  parallel_for(static_cast<int64_t>(items.size()), threads, [&](int64_t it) {
    const Unit& u = units[items[it].ui];
    std::vector<float> row(m);
    for (int which = 0; which < 2; ++which) {
      const float* part = which ? w.pdv.get() : w.pdk.get();
      const int64_t ld = which ? c.ldv : c.ldk, dim = which ? c.dv : c.dk;
      const Rows& dst = which ? c.dv_ : c.dk_;
      for (int64_t t = items[it].t0; t < items[it].t1; ++t) {
        std::fill(row.begin(), row.end(), 0.f);
        for (int64_t gi = 0; gi < c.group; ++gi) {
          const float* src = part + ((u.hq + gi) * c.total + u.off + t) * ld;
          for (int64_t d = 0; d < dim; ++d) row[d] += src[d];
        }
        store_row(row.data(), dim, dst.dt, dst.row(u.b, u.t0 + t, u.hkv));
      }
    }
  });
}

void compute_dg(const Ctx& c, const std::vector<Unit>& units, const BwdWork& w, int threads) {
  const int64_t U = static_cast<int64_t>(units.size());
  std::vector<double> head_total(U, 0.0);
  parallel_for(U, threads, [&](int64_t ui) {
    const Unit& u = units[ui];
    double acc = 0, sum = 0;
    const float* rq = w.rq.get() + w.idx(c, u, 0);
    const float* rk = w.rk.get() + w.idx(c, u, 0);
    const float* ri = w.ri.get() + w.idx(c, u, 0);
    // dg_s = sum_{i>=s} (q_i.dq_i - k_i.dk_i) + <dS_final, S_final>, regrouped so
    // that no large sums cancel: the intra-chunk pairs come from ri (they cancel
    // exactly in the inter-chunk sums), and the final state's part is the
    // prefix sum fin0 + sum_{j<s} f_j instead of <dS_final, S_final> minus a
    // suffix sum (rk excludes f).
    std::vector<double> fpre;
    if (c.dfin.data) {
      const float* rf = w.rf.get() + w.idx(c, u, 0);
      fpre.resize(u.T);
      double p = w.fin0[ui];
      for (int64_t t = 0; t < u.T; ++t) {
        fpre[t] = p;
        p += rf[t];
      }
    }
    for (int64_t t = u.T - 1; t >= 0; --t) {
      acc += static_cast<double>(rq[t]) - static_cast<double>(rk[t]);
      const double dg = acc + ri[t] + (fpre.empty() ? 0.0 : fpre[t]);
      if (c.dg.kind == GateKind::PerToken)
        store_scalar(static_cast<float>(dg), c.dg.dt, c.dg.at(u.b, u.t0 + t, u.hq));
      else
        sum += dg;
    }
    head_total[ui] = sum;
  });
  if (c.dg.kind == GateKind::PerHead)
    for (int64_t h = 0; h < c.heads_q; ++h) {
      double s = 0;
      for (int64_t ui = 0; ui < U; ++ui)  // units are sequence-major: fixed order
        if (units[ui].hq == h) s += head_total[ui];
      store_scalar(static_cast<float>(s), c.dg.dt, c.dg.at(0, 0, h));
    }
}

void noncausal_backward(const Ctx& c, const std::vector<Unit>& units, const Plan& pl,
                        Scratch& scratch, int threads, BwdWork& w) {
  FloatBuffer states;  // S per unit [ldk][ldv]
  noncausal_state(c, units, pl, scratch, threads, states);
  const int64_t sz = c.ldk * c.ldv;
  FloatBuffer statesT(static_cast<int64_t>(units.size()) * sz);
  parallel_for(static_cast<int64_t>(units.size()), threads, [&](int64_t ui) {
    transpose(states.get() + ui * sz, c.dk, c.dve, c.ldv, statesT.get() + ui * sz, c.ldk, c.ldv);
  });
  // dq = scale dOa S^T; per segment partial dS = scale sum q^T dOa
  // (bf16: on AMX tiles, bf16 operands and fp32 sums).
  FloatBuffer parts(static_cast<int64_t>(pl.segs.size()) * sz);
  TokenSum acc(c, threads);
  for_segments(pl, threads, false, [&](int64_t si) {
    const Segment& sg = pl.segs[si];
    const Unit& u = units[sg.u];
    Bufs& b = scratch.mine();
    const float* S = states.get() + sg.u * sz;
    const float* ST = statesT.get() + sg.u * sz;
    float* L = parts.get() + si * sz;
    std::fill(L, L + sz, 0.f);
    if (c.amx) {
      c.K->bf16->begin();
      bf16_noncausal_dq(c, u, sg.c0, sg.c1, b, S, ST, L, w);
      c.K->bf16->end();
      return;
    }
    std::fill(b.ed, b.ed + kC, 1.f);
    b.eB = 1.f;
    for (int64_t ch = sg.c0; ch < sg.c1; ++ch) {
      const int64_t t = ch * kC, n = std::min(kC, u.T - t);
      if (ch + 1 < sg.c1) {
        const int64_t nn = std::min(kC, u.T - t - kC);
        prefetch_rows(c.q, u, u.hq, t + kC, nn, c.dk);
        if (c.has_dout) prefetch_rows(c.dout, u, u.hq, t + kC, nn, c.dv);
        prefetch_rows(c.dq, u, u.hq, t + kC, nn, c.dk, true);
      }
      pack_rows(c.q, u, u.hq, t, n, c.dk, c.ldk, b.Q);
      pack_dout(c, u, t, n, b.dO);
      if (c.normalize) {
        c.K->gemm(n, c.ldv / kLanes, c.dk, b.Q, c.ldk, 1, S, c.ldv, b.O, c.ldv, false);
        scale_all(b.O, n * c.ldv, c.scale);
        normalize_dout(c, n, b);
        std::memcpy(w.doa.get() + w.idx(c, u, t) * c.ldv, b.dO, sizeof(float) * n * c.ldv);
      }
      float* dq = b.T1;
      c.K->gemm(n, c.ldk / kLanes, c.dve, b.dO, c.ldv, 1, ST, c.ldk, dq, c.ldk, false);
      scale_all(dq, n * c.ldk, c.scale);
      for (int64_t i = 0; i < n; ++i)
        store_row(dq + i * c.ldk, c.dk, c.dq.dt, c.dq.row(u.b, u.t0 + t + i, u.hq));
      // buffer q rows and scale dOa rows for dS; a block is summed every kNB tokens
      for (int64_t i = 0; i < n; ++i) {
        const int64_t m = (t - sg.c0 * kC + i) % kNB;
        std::memcpy(acc.a(m), b.Q + i * c.ldk, sizeof(float) * c.ldk);
        float* y = acc.b(m);
        const float* x = b.dO + i * c.ldv;
        for (int64_t e = 0; e < c.ldv; ++e) y[e] = x[e] * c.scale;
        if (m + 1 == kNB || t + i + 1 == std::min(u.T, sg.c1 * kC)) acc.flush(m + 1, L);
      }
    }
  });
  FloatBuffer dS(static_cast<int64_t>(units.size()) * sz);
  parallel_for(static_cast<int64_t>(units.size()), threads, [&](int64_t ui) {
    float* X = dS.get() + ui * sz;
    load_state(c, c.dfin, units[ui], X);
    for (int64_t s = 0; s < pl.count[ui]; ++s) {
      const float* L = parts.get() + (pl.first[ui] + s) * sz;
      for (int64_t i = 0; i < sz; ++i) X[i] += L[i];
    }
    if (c.dinit.data) save_state(c, X, c.dinit, units[ui]);
  });
  // dk^T = dS V^T, dv^T = dS^T K^T
  for_segments(pl, threads, false, [&](int64_t si) {
    const Segment& sg = pl.segs[si];
    const Unit& u = units[sg.u];
    Bufs& b = scratch.mine();
    const float* X = dS.get() + sg.u * sz;
    if (c.amx) {
      c.K->bf16->begin();
      bf16_noncausal_dkdv(c, u, sg.c0, sg.c1, b, X, w);
      c.K->bf16->end();
      return;
    }
    // Token rows on the left, so that nothing is transposed per chunk: dv = K dS
    // (dS [ldk][ldv] as it is) and dk = Va dS^T (Va = V with the normaliser's
    // column of ones), dS^T once per segment. The transposed form (dv^T = dS^T
    // K^T) needed K^T and V^T per chunk and transposed stores, all scalar.
    float* XT = b.ST;  // [ldv][ldk]
    transpose(X, c.dk, c.dve, c.ldv, XT, c.ldk, c.ldv);
    float* dv = b.Vd;  // [kC][ldv]
    float* dk = b.T1;  // [kC][ldk]
    for (int64_t ch = sg.c0; ch < sg.c1; ++ch) {
      const int64_t t = ch * kC, n = std::min(kC, u.T - t);
      if (ch + 1 < sg.c1) {
        const int64_t nn = std::min(kC, u.T - t - kC);
        prefetch_rows(c.k, u, u.hkv, t + kC, nn, c.dk);
        prefetch_rows(c.v, u, u.hkv, t + kC, nn, c.dv);
        if (!w.gqa) {
          prefetch_rows(c.dk_, u, u.hkv, t + kC, nn, c.dk, true);
          prefetch_rows(c.dv_, u, u.hkv, t + kC, nn, c.dv, true);
        }
      }
      pack_k(c, u, t, n, b, true, false);
      pack_v(c, u, t, n, b, true, false);
      c.K->gemm(n, c.ldv / kLanes, c.dk, b.K, c.ldk, 1, X, c.ldv, dv, c.ldv, false);
      store_rows(c, u, t, n, dv, c.ldv, c.dv, c.dv_, u.hkv, w.gqa ? w.pdv.get() : nullptr);
      c.K->gemm(n, c.ldk / kLanes, c.dve, b.V, c.ldv, 1, XT, c.ldk, dk, c.ldk, false);
      store_rows(c, u, t, n, dk, c.ldk, c.dk, c.dk_, u.hkv, w.gqa ? w.pdk.get() : nullptr);
    }
  });
}

}  // namespace

void linear_backward(const LinearBackwardProblem& bp, int threads_req) {
  const LinearProblem& p = bp.fwd;
  Ctx c = make_ctx(p);
  c.has_dout = bp.has_dout;
  c.dout = Rows::of(bp.dout, p.dtype);
  c.dq = Rows::of(bp.dq, p.dtype);
  c.dk_ = Rows::of(bp.dk, p.dtype);
  c.dv_ = Rows::of(bp.dv, p.dtype);
  c.dg = Gate::of(bp.dg);
  c.dfin = bp.dfinal_state;
  c.dinit = bp.dinitial_state;
  c.hp = c.amx && c.dg.kind == GateKind::PerHead;
  c.fin = StateOperand{};
  int64_t total = 0;
  const std::vector<Unit> units = make_units(p, &total);
  c.total = total;
  if (units.empty()) return;
  const int threads = resolve_threads(threads_req);
  const Plan pl = make_plan(units, threads);
  Scratch scratch(c, threads);
  const int64_t U = static_cast<int64_t>(units.size());

  BwdWork w;
  w.want_dg = c.dg.kind != GateKind::None;
  w.gqa = c.group > 1;
  w.fin0.assign(U, 0.0);
  const int64_t rows_all = c.heads_q * total;
  if (w.want_dg) {
    w.rq.reset(rows_all);
    w.rk.reset(rows_all);
    w.ri.reset(rows_all);
    if (c.dfin.data) {
      w.rf.reset(rows_all);
      w.dfin_pad.reset(U * c.ldk * c.ldv);
      for (int64_t ui = 0; ui < U; ++ui)
        load_state(c, c.dfin, units[ui], w.dfin_pad.get() + ui * c.ldk * c.ldv);
    }
  }
  if (c.normalize) w.doa.reset(rows_all * c.ldv);
  if (w.gqa) {
    w.pdk.reset(rows_all * c.ldk);
    w.pdv.reset(rows_all * c.ldv);
  }

  if (!c.causal) {
    noncausal_backward(c, units, pl, scratch, threads, w);
    if (w.gqa) reduce_gqa(c, units, w, threads);
    return;
  }

  // ---- forward sweep: states entering each segment, then dq
  SegStates ss;
  if (pl.segmented) {
    init_seg_states(c, pl, ss);
    forward_scan(c, units, pl, ss, scratch, threads);
  }
  // Both sweeps run the heads of a sequence in lockstep groups, as the forward.
  const int64_t state = c.state_floats();
  const auto groups = lockstep_groups(units, pl, threads);
  parallel_for(static_cast<int64_t>(groups.size()), threads, [&](int64_t gi) {
    const std::vector<int64_t>& grp = groups[gi];
    const int nu = static_cast<int>(grp.size());
    const Segment& s0 = pl.segs[grp[0]];
    const int64_t st = c.amx ? 0 : state;  // the fp32 sweep also carries S^T
    FloatBuffer buf(nu * (state + st + kC * kC));
    float *S[kMaxLockstep], *ST[kMaxLockstep];
    bool zero[kMaxLockstep];
    for (int i = 0; i < nu; ++i) {
      S[i] = buf.get() + i * state;
      ST[i] = buf.get() + nu * state + i * st;
      zero[i] = load_entering_state(c, pl, ss, grp[i], units[pl.segs[grp[i]].u], c.init, S[i]);
      if (c.amx)
        pad_state_rows(c, S[i]);
      else if (!zero[i])
        transpose(S[i], c.dk, c.dve, c.ldv, ST[i], c.ldk, c.ldv);
    }
    float* D = buf.get() + nu * (state + st);
    if (c.amx) {
      c.K->bf16->begin();
      bf16_backward_forward_lockstep(c, &units[s0.u], nu, s0.c0, s0.c1, scratch.mine(), S, zero, w, D);
      c.K->bf16->end();
    } else {
      fp32_backward_forward_lockstep(c, &units[s0.u], nu, s0.c0, s0.c1, scratch.mine(), S, ST, zero, w, D);
    }
  });

  // ---- reverse sweep: adjoint states leaving each segment, then dk, dv
  const bool split = w.want_dg && c.dfin.data;  // see backward_reverse_chunk
  SegStates hs;
  if (pl.segmented) {
    init_seg_states(c, pl, hs);
    for_segments(pl, threads, true, [&](int64_t si) {
      const Segment& sg = pl.segs[si];
      if (sg.s == 0) return;
      if (c.amx) {
        c.K->bf16->begin();
        bf16_reverse_local(c, units[sg.u], sg.c0, sg.c1, scratch.mine(), hs.at(si - 1), w);
        c.K->bf16->end();
        return;
      }
      reverse_local(c, units[sg.u], sg, scratch.mine(), hs.at(si - 1), w);
    });
    parallel_for(U, threads, [&](int64_t ui) {
      if (pl.count[ui] <= 1) return;
      const int64_t f0 = pl.first[ui], ns = pl.count[ui];
      load_state(c, split ? StateOperand{} : c.dfin, units[ui], hs.at(f0 + ns - 1));
      for (int64_t s = ns - 2; s >= 0; --s) {
        const float a = ss.decay[f0 + s + 1];
        const float* next = hs.at(f0 + s + 1);
        float* cur = hs.at(f0 + s);
        for (int64_t i = 0; i < hs.size; ++i) cur[i] += a * next[i];
      }
    });
  }
  // The adjoint entering segment si (from its end) and the decay from there to the unit's end.
  const auto entering_adjoint = [&](int64_t si, float* dH, float* E) {
    const Segment& sg = pl.segs[si];
    *E = 1.f;
    for (int64_t s2 = sg.s + 1; s2 < pl.count[sg.u]; ++s2) *E *= ss.decay[pl.first[sg.u] + s2];
    return load_entering_state(c, pl, hs, si, units[sg.u], split ? StateOperand{} : c.dfin, dH);
  };
  // After the first segment's chunks dH is the adjoint of S_0 (a unit without
  // tokens passes dS_final straight through: S_final = S_0).
  const auto save_adjoint = [&](int64_t si, const float* dH) {
    const Segment& sg = pl.segs[si];
    if (sg.s == 0 && c.dinit.data) save_state(c, dH, c.dinit, units[sg.u]);
  };
  parallel_for(static_cast<int64_t>(groups.size()), threads, [&](int64_t gi) {
    const std::vector<int64_t>& grp = groups[gi];
    const int nu = static_cast<int>(grp.size());
    const Segment& s0 = pl.segs[grp[0]];
    const int64_t fv = c.amx && split ? (nu * c.lk32 * c.ldv + 1) / 2 : 0;  // floats holding the bf16 Fv
    FloatBuffer buf(nu * (state + kC * kC) + fv);
    float* dH[kMaxLockstep];
    bool zero[kMaxLockstep];
    float E[kMaxLockstep];
    for (int i = 0; i < nu; ++i) {
      dH[i] = buf.get() + i * state;
      zero[i] = entering_adjoint(grp[i], dH[i], &E[i]);
      if (c.amx) pad_state_rows(c, dH[i]);
    }
    float* D = buf.get() + nu * state;
    if (c.amx) {
      c.K->bf16->begin();
      bf16_backward_reverse_lockstep(c, &units[s0.u], s0.u, nu, s0, scratch.mine(), dH, zero, E, w, D,
                                     reinterpret_cast<uint16_t*>(buf.get() + nu * (state + kC * kC)));
      c.K->bf16->end();
    } else {
      fp32_backward_reverse_lockstep(c, &units[s0.u], s0.u, nu, s0, scratch.mine(), dH, zero, E, w, D);
    }
    for (int i = 0; i < nu; ++i) save_adjoint(grp[i], dH[i]);
  });

  if (w.gqa) reduce_gqa(c, units, w, threads);
  if (w.want_dg) compute_dg(c, units, w, threads);
}

}  // namespace attnkit::cpu
