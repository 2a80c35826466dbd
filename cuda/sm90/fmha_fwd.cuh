// attnkit CUDA backend, sm_90a: the FMHA forward kernel.
//
// One CTA per (128-row query tile, query head, sequence); three warpgroups:
//   producer   (warpgroup 0, one thread): TMA loads of the Q tile (once) and of
//              the K and V tiles the schedule lists, through two kStages-deep
//              shared-memory pipelines (PipelineTmaAsync: mbarrier full/empty pairs);
//   consumers  (warpgroups 1, 2): 64 query rows each. Per KV tile:
//              S = Q K^T (WGMMA, both operands in smem), the element mask only on
//              the schedule's boundary tiles, online softmax in registers (fp32,
//              exp2 with the scale folded in), P converted to fp16/bf16 in
//              registers and used directly as the A operand of O += P V
//              (register-sourced WGMMA). The two consumer warpgroups run the same
//              tiles on their own rows, so one's softmax overlaps the other's WGMMA.
// Epilogue: O / l and the natural-log LSE (-inf, O = 0 for rows that see nothing).
//
// GQA reads KV head hq / (Hq / Hkv): K and V are never repeated. Varlen runs over
// packed tokens with per-sequence bounds from cu_seqlens (TMA coordinates are
// offset to the sequence start; keys past the sequence end are masked).
#pragma once

#include "sm90_common.cuh"
#include "problem.hpp"

namespace attnkit::cuda::sm90 {

template <class Element_, int kHeadDim_, int kBlockN_, int kStages_, bool kPingPong_ = false>
struct FwdKernel {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 128;  // two consumer warpgroups x 64 rows
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr int kThreads = 384;
  static constexpr int kRowsPerWg = 64;
  static constexpr bool kPingPong = kPingPong_;
  static constexpr int kBarTurn = 4;  // named barriers 4, 5: the warpgroups' turns

  using D = Int<kHeadDim>;
  using BN = Int<kBlockN>;

  // Per consumer warpgroup: S (64 x BN) = Q (64 x D) K^T, O (64 x D) += P (64 x BN) V.
  using TiledMmaQK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, BN, D>>()));
  using TiledMmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, Shape<_64, D, BN>, GMMA::Major::K,
                           GMMA::Major::MN>()));

  using SmemLayoutQ = decltype(tile_to_shape(smem_atom_k<Element, kHeadDim>(), Shape<Int<kBlockM>, D>{}));
  using SmemLayoutKV = decltype(tile_to_shape(smem_atom_k<Element, kHeadDim>(),
                                              Shape<BN, D, Int<kStages>>{}));
  using SmemLayoutVt = decltype(transposed_view(SmemLayoutKV{}));  // (D, BN, stages)

  using Pipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename Pipeline::PipelineState;

  struct SharedStorage {
    cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> q;
    cute::array_aligned<Element, cosize_v<SmemLayoutKV>, 1024> k;
    cute::array_aligned<Element, cosize_v<SmemLayoutKV>, 1024> v;
    typename Pipeline::SharedStorage pipe_k;
    typename Pipeline::SharedStorage pipe_v;
    alignas(8) uint64_t bar_q;
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 227 * 1024, "tile configuration exceeds the 227 KiB of shared memory per CTA");

  // Global tensors as TMA sees them: (tokens, head_dim, heads, batch).
  using GShape = Shape<int, int, int, int>;
  using GStride = Stride<int64_t, _1, int64_t, int64_t>;
  using GTensor = decltype(make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)),
                                       make_layout(GShape{}, GStride{})));
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, GTensor{}, SmemLayoutQ{}));
  using TmaKV = decltype(make_tma_copy(SM90_TMA_LOAD{}, GTensor{},
                                       take<0, 2>(SmemLayoutKV{})));

  struct Params {
    TmaQ tma_q;
    TmaKV tma_k, tma_v;
    GShape shape_q, shape_k;
    Element* out;
    int64_t o_bs, o_ts, o_hs;
    float* lse;
    int64_t l_bs, l_ts, l_hs;
    const int32_t* cu_q;
    const int32_t* cu_k;
    int batch, sq, sk, heads_q, group;
    int left, right;
    float scale, scale_log2;
  };

  static GTensor global_tensor(const Operand& o, int tokens, int heads, int batch) {
    return make_tensor(make_gmem_ptr(static_cast<Element const*>(o.data)),
                       make_layout(make_shape(tokens, kHeadDim, heads, batch),
                                   make_stride(o.token_stride, _1{}, o.head_stride,
                                               batch > 1 ? o.batch_stride : unused_batch_stride(o, tokens, heads))));
  }

  static Params make_params(const FmhaProblem& p) {
    Params k{};
    const bool varlen = p.varlen();
    const int tq = int(varlen ? p.total_q : p.seqlen_q), tk = int(varlen ? p.total_k : p.seqlen_k);
    const int nb = varlen ? 1 : int(p.batch);
    k.shape_q = make_shape(tq, kHeadDim, int(p.heads_q), nb);
    k.shape_k = make_shape(tk, kHeadDim, int(p.heads_kv), nb);
    k.tma_q = make_tma_copy(SM90_TMA_LOAD{}, global_tensor(p.q, tq, int(p.heads_q), nb), SmemLayoutQ{});
    // No keys at all: no CTA loads K or V, but TMA descriptors cannot describe an
    // empty tensor, so Q's memory stands in (never read through them).
    const bool no_keys = tk == 0;
    k.tma_k = make_tma_copy(SM90_TMA_LOAD{}, no_keys ? global_tensor(p.q, tq, int(p.heads_q), nb)
                                                     : global_tensor(p.k, tk, int(p.heads_kv), nb),
                            take<0, 2>(SmemLayoutKV{}));
    k.tma_v = make_tma_copy(SM90_TMA_LOAD{}, no_keys ? global_tensor(p.q, tq, int(p.heads_q), nb)
                                                     : global_tensor(p.v, tk, int(p.heads_kv), nb),
                            take<0, 2>(SmemLayoutKV{}));
    k.out = static_cast<Element*>(p.out.data);
    k.o_bs = p.out.batch_stride;
    k.o_ts = p.out.token_stride;
    k.o_hs = p.out.head_stride;
    k.lse = p.lse;
    k.l_bs = p.lse_batch_stride;
    k.l_ts = p.lse_token_stride;
    k.l_hs = p.lse_head_stride;
    k.cu_q = p.cu_seqlens_q;
    k.cu_k = p.cu_seqlens_k;
    k.batch = int(p.batch);
    k.sq = int(p.seqlen_q);
    k.sk = int(p.seqlen_k);
    k.heads_q = int(p.heads_q);
    k.group = int(p.heads_q / p.heads_kv);
    k.left = int(p.window.left);
    k.right = int(p.window.right);
    k.scale = p.scale;
    k.scale_log2 = p.scale * 1.4426950408889634f;
    return k;
  }

  static dim3 grid(const FmhaProblem& p) {
    if (p.varlen())
      return dim3(varlen_num_tiles(p.total_q, int(p.batch), kBlockM), unsigned(p.heads_q), 1);
    return dim3(unsigned((p.seqlen_q + kBlockM - 1) / kBlockM), unsigned(p.heads_q), unsigned(p.batch));
  }

  // Scores in log2 units (scale * log2(e) applied before the max, so any sign of
  // scale is handled), the element mask on the schedule's boundary tiles only,
  // then the online-softmax update: new running max, alpha = exp2(old - new)
  // per row, P = exp2(S - max) in place, row sums rescaled and accumulated. The
  // caller rescales O by alpha once no WGMMA writes it.
  template <class AccS, class Coords, int R>
  CUTE_DEVICE static void softmax_step(AccS& acc_s, Coords const& cS_rc, SeqSchedule const& sched, int q0,
                                       int k0, float sl2, float (&row_max)[R], float (&row_sum)[R],
                                       float (&alpha)[R]) {
    Tensor s = make_tensor(acc_s.data(), acc_rowcol(acc_s.layout()));
    CUTE_UNROLL
    for (int j = 0; j < size(acc_s); ++j) acc_s(j) *= sl2;
    if (!sched.tile_is_full(q0, q0 + kRowsPerWg, k0, k0 + kBlockN)) {
      CUTE_UNROLL
      for (int r = 0; r < size<0>(s); ++r) {
        const int qi = q0 + get<0>(cS_rc(r, 0));
        const int lo = sched.lo(qi), hi = sched.hi(qi);
        CUTE_UNROLL
        for (int c = 0; c < size<1>(s); ++c) {
          const int kj = k0 + get<1>(cS_rc(r, c));
          if (kj < lo || kj >= hi) s(r, c) = -INFINITY;
        }
      }
    }
    // Rows that have seen nothing keep max -inf and P = 0.
    CUTE_UNROLL
    for (int r = 0; r < R; ++r) {
      float mx = row_max[r];
      CUTE_UNROLL
      for (int c = 0; c < size<1>(s); ++c) mx = fmaxf(mx, s(r, c));
      mx = quad_max(mx);
      const float base = mx == -INFINITY ? 0.f : mx;
      alpha[r] = fast_exp2(row_max[r] - base);  // exp2(-inf) = 0 on the first hit
      row_max[r] = mx;
      float sum = 0.f;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(s); ++c) {
        const float e = fast_exp2(s(r, c) - base);
        s(r, c) = e;
        sum += e;
      }
      row_sum[r] = row_sum[r] * alpha[r] + sum;
    }
  }
  template <class AccORowCol, int R>
  CUTE_DEVICE static void rescale_o(AccORowCol& o, const float (&alpha)[R]) {
    CUTE_UNROLL
    for (int r = 0; r < R; ++r) {
      CUTE_UNROLL
      for (int c = 0; c < size<1>(o); ++c) o(r, c) *= alpha[r];
    }
  }

  CUTE_DEVICE static void run(Params const& p, char* smem_raw);
};

template <class K>
__global__ void __launch_bounds__(K::kThreads, 1) fmha_fwd_kernel(CUTE_GRID_CONSTANT typename K::Params const p) {
  extern __shared__ __align__(1024) char smem[];
  K::run(p, smem);
}

template <class Element, int kHeadDim, int kBlockN, int kStages, bool kPingPong_>
CUTE_DEVICE void FwdKernel<Element, kHeadDim, kBlockN, kStages, kPingPong_>::run(Params const& p, char* smem_raw) {
#if defined(AK_SM90_ENABLED)
  SharedStorage& smem = *reinterpret_cast<SharedStorage*>(smem_raw);

  // ---- which tile: sequence b, query tile m, and the sequence's bounds
  int b, m, q_base = 0, k_base = 0, sq = p.sq, sk = p.sk, b_idx;
  if (p.cu_q != nullptr) {
    b = varlen_find_sequence(p.cu_q, p.batch, int(blockIdx.x), kBlockM);
    m = int(blockIdx.x) - varlen_tile_base(p.cu_q, b, kBlockM);
    q_base = p.cu_q[b];
    sq = p.cu_q[b + 1] - q_base;
    k_base = p.cu_k[b];
    sk = p.cu_k[b + 1] - k_base;
    b_idx = 0;
  } else {
    b = int(blockIdx.z);
    m = int(blockIdx.x);
    b_idx = b;
  }
  if (m * kBlockM >= sq) return;  // uniform over the CTA, before any barrier
  const int hq = int(blockIdx.y), hkv = hq / p.group;
  const SeqSchedule sched{sq, sk, p.left, p.right};
  const Range kv = sched.kv_tiles(m * kBlockM, m * kBlockM + kBlockM, kBlockN);
  const int n_tiles = kv.empty() ? 0 : kv.end - kv.begin;

  const int warp_group = int(threadIdx.x) / 128;

  // ---- barriers and pipelines
  typename Pipeline::Params pp;
  pp.transaction_bytes = kBlockN * kHeadDim * int(sizeof(Element));
  pp.role = warp_group == 0 ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  pp.is_leader = threadIdx.x == 0;
  pp.num_consumers = 256;
  Pipeline pipe_k(smem.pipe_k, pp, Shape<_1, _1, _1>{});
  Pipeline pipe_v(smem.pipe_v, pp, Shape<_1, _1, _1>{});
  using Barrier = cutlass::arch::ClusterTransactionBarrier;
  if (threadIdx.x == 0) Barrier::init(&smem.bar_q, 1);
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  Tensor sQ = make_tensor(make_smem_ptr(smem.q.data()), SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(smem.k.data()), SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(smem.v.data()), SmemLayoutKV{});
  Tensor sVt = make_tensor(make_smem_ptr(smem.v.data()), SmemLayoutVt{});

  if (warp_group == 0) {
    // ------------------------------------------------------------ producer
    cutlass::arch::warpgroup_reg_dealloc<24>();
    if (threadIdx.x == 0) {
      cute::prefetch_tma_descriptor(p.tma_q.get_tma_descriptor());
      cute::prefetch_tma_descriptor(p.tma_k.get_tma_descriptor());
      cute::prefetch_tma_descriptor(p.tma_v.get_tma_descriptor());
      Tensor mQ = domain_offset(make_coord(q_base, _0{}), p.tma_q.get_tma_tensor(p.shape_q)(_, _, hq, b_idx));
      Tensor mK = domain_offset(make_coord(k_base, _0{}), p.tma_k.get_tma_tensor(p.shape_k)(_, _, hkv, b_idx));
      Tensor mV = domain_offset(make_coord(k_base, _0{}), p.tma_v.get_tma_tensor(p.shape_k)(_, _, hkv, b_idx));
      Tensor gQ = local_tile(mQ, Shape<Int<kBlockM>, D>{}, make_coord(m, _0{}));  // (BM, D)
      Tensor gK = local_tile(mK, Shape<BN, D>{}, make_coord(_, _0{}));           // (BN, D, n)
      Tensor gV = local_tile(mV, Shape<BN, D>{}, make_coord(_, _0{}));
      auto [tQg, tQs] = tma_partition(p.tma_q, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sQ),
                                      group_modes<0, 2>(gQ));
      auto [tKg, tKs] = tma_partition(p.tma_k, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sK),
                                      group_modes<0, 2>(gK));
      auto [tVg, tVs] = tma_partition(p.tma_v, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sV),
                                      group_modes<0, 2>(gV));
      Barrier::arrive_and_expect_tx(&smem.bar_q, kBlockM * kHeadDim * int(sizeof(Element)));
      copy(p.tma_q.with(smem.bar_q), tQg, tQs);
      PipelineState wk = cutlass::make_producer_start_state<Pipeline>();
      PipelineState wv = cutlass::make_producer_start_state<Pipeline>();
      for (int i = 0; i < n_tiles; ++i) {
        const int n = kv.end - 1 - i;  // boundary (masked) tiles first
        pipe_k.producer_acquire(wk);
        copy(p.tma_k.with(*pipe_k.producer_get_barrier(wk)), tKg(_, n), tKs(_, wk.index()));
        ++wk;
        pipe_v.producer_acquire(wv);
        copy(p.tma_v.with(*pipe_v.producer_get_barrier(wv)), tVg(_, n), tVs(_, wv.index()));
        ++wv;
      }
    }
    return;
  }

  // -------------------------------------------------------------- consumers
  cutlass::arch::warpgroup_reg_alloc<240>();
  const int cw = warp_group - 1;             // consumer warpgroup 0 / 1
  const int t = int(threadIdx.x) % 128;      // thread in the warpgroup
  const int q0 = m * kBlockM + cw * kRowsPerWg;  // first row of this warpgroup (in the sequence)

  TiledMmaQK mma_qk;
  TiledMmaPV mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(t);
  auto thr_pv = mma_pv.get_thread_slice(t);

  Tensor sQw = local_tile(sQ, Shape<_64, D>{}, make_coord(cw, _0{}));
  Tensor tSrQ = thr_qk.make_fragment_A(thr_qk.partition_A(sQw));  // (MMA, 1, K)
  Tensor tSrK = thr_qk.make_fragment_B(thr_qk.partition_B(sK));   // (MMA, N, K, stages)
  Tensor tOrV = thr_pv.make_fragment_B(thr_pv.partition_B(sVt));  // (MMA, N, K, stages)

  Tensor acc_o = partition_fragment_C(mma_pv, Shape<_64, D>{});
  clear(acc_o);
  Tensor acc_o_rc = make_tensor(acc_o.data(), acc_rowcol(acc_o.layout()));
  Tensor cS = thr_qk.partition_C(make_identity_tensor(Shape<_64, BN>{}));
  Tensor cS_rc = make_tensor(cS.data(), acc_rowcol(cS.layout()));
  Tensor cO = thr_pv.partition_C(make_identity_tensor(Shape<_64, D>{}));
  Tensor cO_rc = make_tensor(cO.data(), acc_rowcol(cO.layout()));
  constexpr int kRows = decltype(size<0>(acc_o_rc))::value;  // 2 rows per thread
  static_assert(kRows == decltype(size<0>(cS_rc))::value);

  float row_max[kRows], row_sum[kRows];
  CUTE_UNROLL
  for (int r = 0; r < kRows; ++r) {
    row_max[r] = -INFINITY;
    row_sum[r] = 0.f;
  }
  const float sl2 = p.scale_log2;

  uint32_t q_phase = 0;
  cutlass::arch::ClusterTransactionBarrier::wait(&smem.bar_q, q_phase);

  PipelineState rk, rv;
  float alpha[kRows];
  if constexpr (!kPingPong) {
    // One tile at a time: S = Q K^T, softmax, O += P V. The two consumer
    // warpgroups interleave freely on the tensor cores.
    for (int i = 0; i < n_tiles; ++i) {
      const int k0 = (kv.end - 1 - i) * kBlockN;
      Tensor acc_s = partition_fragment_C(mma_qk, Shape<_64, BN>{});
      pipe_k.consumer_wait(rk);
      wgmma(mma_qk, tSrQ, tSrK(_, _, _, rk.index()), acc_s, true);
      warpgroup_wait<0>();
      fence_operands(acc_s);
      pipe_k.consumer_release(rk);
      ++rk;
      softmax_step(acc_s, cS_rc, sched, q0, k0, sl2, row_max, row_sum, alpha);
      rescale_o(acc_o_rc, alpha);
      Tensor p_regs = convert_fragment<Element>(acc_s);
      Tensor p_a = make_tensor(p_regs.data(), acc_as_a_operand(p_regs.layout()));
      pipe_v.consumer_wait(rv);
      warpgroup_fence_operand(p_a);
      wgmma(mma_pv, p_a, tOrV(_, _, _, rv.index()), acc_o, false);
      warpgroup_wait<0>();
      fence_operands(acc_o, p_a);
      pipe_v.consumer_release(rv);
      ++rv;
    }
  } else if (n_tiles > 0) {
    // FlashAttention-3's schedule: within a warpgroup, the softmax of tile i runs
    // while O += P_{i-1} V_{i-1} is on the tensor cores (S_i and P_{i-1} live
    // at once); across the two warpgroups, named barriers hand the tensor cores
    // over in turn (ping-pong), so one's softmax overlaps the other's WGMMAs.
    // Each warpgroup waits for its turn (barrier kBarTurn + cw) once per tile
    // and passes the turn on (arrive at the other's) after issuing its WGMMAs;
    // warpgroup 1 grants warpgroup 0 the first turn and skips its last hand-over,
    // so arrivals and waits pair up exactly.
    if (cw == 1) named_arrive(kBarTurn, 256);
    Tensor acc_s = partition_fragment_C(mma_qk, Shape<_64, BN>{});
    Tensor p_regs = make_tensor<Element>(acc_s.layout());
    Tensor p_a = make_tensor(p_regs.data(), acc_as_a_operand(p_regs.layout()));
    pipe_k.consumer_wait(rk);
    named_sync(kBarTurn + cw, 256);  // my turn
    wgmma(mma_qk, tSrQ, tSrK(_, _, _, rk.index()), acc_s, true);
    if (!(cw == 1 && n_tiles == 1)) named_arrive(kBarTurn + 1 - cw, 256);  // pass the turn
    warpgroup_wait<0>();
    fence_operands(acc_s);
    pipe_k.consumer_release(rk);
    ++rk;
    softmax_step(acc_s, cS_rc, sched, q0, (kv.end - 1) * kBlockN, sl2, row_max, row_sum, alpha);  // O is still 0: no rescale
    convert_into(acc_s, p_regs);
    for (int i = 1; i < n_tiles; ++i) {
      const int k0 = (kv.end - 1 - i) * kBlockN;
      pipe_k.consumer_wait(rk);
      pipe_v.consumer_wait(rv);
      named_sync(kBarTurn + cw, 256);  // my turn
      wgmma(mma_qk, tSrQ, tSrK(_, _, _, rk.index()), acc_s, true);
      warpgroup_fence_operand(p_a);
      wgmma(mma_pv, p_a, tOrV(_, _, _, rv.index()), acc_o, false);
      if (!(cw == 1 && i == n_tiles - 1)) named_arrive(kBarTurn + 1 - cw, 256);  // pass the turn
      warpgroup_wait<1>();  // S_i is ready; O += P_{i-1} V_{i-1} may still run
      fence_operands(acc_s);
      pipe_k.consumer_release(rk);
      ++rk;
      softmax_step(acc_s, cS_rc, sched, q0, k0, sl2, row_max, row_sum, alpha);
      warpgroup_wait<0>();
      fence_operands(acc_o, p_a);
      pipe_v.consumer_release(rv);
      ++rv;
      rescale_o(acc_o_rc, alpha);
      convert_into(acc_s, p_regs);
    }
    pipe_v.consumer_wait(rv);
    warpgroup_fence_operand(p_a);
    wgmma(mma_pv, p_a, tOrV(_, _, _, rv.index()), acc_o, false);
    warpgroup_wait<0>();
    fence_operands(acc_o, p_a);
    pipe_v.consumer_release(rv);
    ++rv;
  }

  // ---- epilogue: O / l, LSE
  Element* out = p.out + int64_t(b_idx) * p.o_bs + int64_t(hq) * p.o_hs;
  CUTE_UNROLL
  for (int r = 0; r < kRows; ++r) {
    const float l = quad_sum(row_sum[r]);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int qi = q0 + get<0>(cO_rc(r, 0));
    if (qi < sq) {
      Element* row = out + int64_t(q_base + qi) * p.o_ts;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(acc_o_rc); c += 2) {
        cutlass::Array<Element, 2> pair;
        pair[0] = Element(acc_o_rc(r, c) * inv);
        pair[1] = Element(acc_o_rc(r, c + 1) * inv);
        *reinterpret_cast<cutlass::Array<Element, 2>*>(row + get<1>(cO_rc(r, c))) = pair;
      }
      if (p.lse != nullptr && (t % 4) == 0) {
        const float lse = l > 0.f ? (row_max[r] + log2f(l)) * 0.6931471805599453f : -INFINITY;
        p.lse[int64_t(b_idx) * p.l_bs + int64_t(q_base + qi) * p.l_ts + int64_t(hq) * p.l_hs] = lse;
      }
    }
  }
#endif
}

// Host launcher: builds the TMA descriptors and launches on `stream`.
template <class K>
void launch_fwd(const FmhaProblem& p, void* stream) {
  static std::atomic<unsigned long long> configured{0};  // one bit per device
  set_smem_limit_once(fmha_fwd_kernel<K>, K::kSmemBytes, configured, "attention");
  const typename K::Params params = K::make_params(p);
  fmha_fwd_kernel<K><<<K::grid(p), K::kThreads, K::kSmemBytes, static_cast<cudaStream_t>(stream)>>>(params);
  check_launch("attention (sm90 forward)");
}

}  // namespace attnkit::cuda::sm90
