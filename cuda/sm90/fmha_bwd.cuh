// attnkit CUDA backend, sm_90a: the FMHA backward kernels (FlashAttention-2/3
// style), three launches on the caller's stream:
//
//   1. preprocess: delta = rowsum(dO * O) (minus dlse), lse2 = lse * log2(e) (+inf
//      for rows that saw nothing, so their P is 0), per 64-row query tile, into
//      the workspace; dq_accum zeroed (cudaMemsetAsync).
//   2. main: one CTA per (128-key tile, KV head, sequence); a producer warpgroup
//      TMA-loads K and V once, then Q (+ lse2) and dO (+ delta) tiles of every
//      query head of the GQA group and every query tile the schedule lists for
//      this key tile (SeqSchedule::q_tiles, the transpose of the forward's
//      kv_tiles) through 2-stage pipelines. Two consumer warpgroups own 64 keys
//      each and compute, in registers:
//        S^T = K Q^T, dP^T = V dO^T            (WGMMA, operands in smem)
//        P^T = exp2(S^T * scale * log2e - lse2), element mask on boundary tiles
//        dS^T = P^T * (dP^T - delta)
//        dV += P^T dO, dK += dS^T Q           (WGMMA, P^T / dS^T from registers)
//        dQ_partial = dS K                    (WGMMA, dS^T via smem)
//      dK and dV stay in registers for the whole group (GQA without atomics) and
//      are written once; dQ partials go to shared memory and are added to the
//      fp32 dq_accum with bulk asynchronous reductions (cp.reduce.async.bulk).
//   3. convert: dq = scale * dq_accum in the caller's dtype and strides.
// Not deterministic (dQ additions race in order); the CPU backend is.
#pragma once

#include "sm90_common.cuh"
#include "problem.hpp"

namespace attnkit::cuda::sm90 {

template <class Element_, int kHeadDim_, int kStages_>
struct BwdKernel {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 64;   // queries per tile
  static constexpr int kBlockN = 128;  // keys per CTA, 64 per consumer warpgroup
  static constexpr int kStages = kStages_;
  static constexpr int kThreads = 384;
  // dQ = dS K is split between the two warpgroups along head_dim when each half
  // is a whole 128-byte swizzle atom wide, else along keys (each warpgroup adds
  // its own partial).
  static constexpr bool kSplitD = kHeadDim % 128 == 0;
  static constexpr int kDqCols = kSplitD ? kHeadDim / 2 : kHeadDim;  // per warpgroup
  static constexpr int kDqKeys = kSplitD ? kBlockN : kBlockN / 2;    // contraction per warpgroup

  using D = Int<kHeadDim>;
  using TiledMmaSdP = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, _64, D>>()));
  using TiledMmadKV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, Shape<_64, D, _64>, GMMA::Major::K,
                           GMMA::Major::MN>()));
  using TiledMmadQ = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kDqCols>, Int<kDqKeys>>,
                           GMMA::Major::MN, GMMA::Major::MN>()));

  using SmemLayoutKV = decltype(tile_to_shape(smem_atom_k<Element, kHeadDim>(), Shape<Int<kBlockN>, D>{}));
  using SmemLayoutKt = decltype(transposed_view(SmemLayoutKV{}));  // (D, keys)
  using SmemLayoutQ = decltype(tile_to_shape(smem_atom_k<Element, kHeadDim>(),
                                             Shape<Int<kBlockM>, D, Int<kStages>>{}));
  using SmemLayoutQt = decltype(transposed_view(SmemLayoutQ{}));   // (D, queries, stages)
  // dS stored query-contiguous: the dQ WGMMA reads it as an MN-major A operand.
  using SmemLayoutdS = decltype(tile_to_shape(smem_atom_mn<Element, kBlockM>(),
                                              Shape<Int<kBlockM>, Int<kBlockN>>{}));
  using SmemLayoutdSt = decltype(transposed_view(SmemLayoutdS{}));  // (keys, queries)
  static constexpr int kDqStage = kBlockM * kDqCols;                // floats per warpgroup

  using Pipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename Pipeline::PipelineState;

  struct SharedStorage {
    cute::array_aligned<Element, cosize_v<SmemLayoutKV>, 1024> k;
    cute::array_aligned<Element, cosize_v<SmemLayoutKV>, 1024> v;
    cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> q;
    cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> dout;
    cute::array_aligned<Element, cosize_v<SmemLayoutdS>, 1024> ds;
    cute::array_aligned<float, 2 * kDqStage, 128> dq;
    cute::array_aligned<float, kStages * kBlockM, 16> lse2;
    cute::array_aligned<float, kStages * kBlockM, 16> delta;
    typename Pipeline::SharedStorage pipe_q;
    typename Pipeline::SharedStorage pipe_do;
    alignas(8) uint64_t bar_kv;
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 227 * 1024, "tile configuration exceeds the 227 KiB of shared memory per CTA");

  using GShape = Shape<int, int, int, int>;
  using GStride = Stride<int64_t, _1, int64_t, int64_t>;
  using GTensor = decltype(make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)),
                                       make_layout(GShape{}, GStride{})));
  using TmaKV = decltype(make_tma_copy(SM90_TMA_LOAD{}, GTensor{}, SmemLayoutKV{}));
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, GTensor{}, take<0, 2>(SmemLayoutQ{})));

  // Workspace (floats): lse2 and delta [q tiles][Hq][64], dq_accum [q tiles][Hq][64 * D]
  // (each 64 x D tile in the dQ WGMMA's fragment order, see convert kernel).
  struct Workspace {
    float* lse2;
    float* delta;
    float* dq_accum;
  };

  struct Params {
    TmaKV tma_k, tma_v;
    TmaQ tma_q, tma_do;
    GShape shape_q, shape_k;
    Element* dk;
    Element* dv;
    int64_t dk_bs, dk_ts, dk_hs, dv_bs, dv_ts, dv_hs;
    Workspace ws;
    const int32_t* cu_q;
    const int32_t* cu_k;
    int batch, sq, sk, heads_q, group, q_tiles_per_seq;
    int left, right;
    float scale, scale_log2;
  };

  // Query tiles of the whole problem (rows of the lse2 / delta / dq_accum arrays).
  static int64_t num_q_tiles(const FmhaProblem& p) {
    if (p.varlen()) return varlen_num_tiles(p.total_q, int(p.batch), kBlockM);
    return p.batch * ((p.seqlen_q + kBlockM - 1) / kBlockM);
  }
  static size_t workspace_bytes(const FmhaBackwardProblem& bp) {
    const int64_t rows = num_q_tiles(bp.fwd) * bp.fwd.heads_q * kBlockM;
    return size_t(rows) * (2 + kHeadDim) * sizeof(float);
  }
  static Workspace workspace(const FmhaBackwardProblem& bp, void* base) {
    const int64_t rows = num_q_tiles(bp.fwd) * bp.fwd.heads_q * kBlockM;
    float* f = static_cast<float*>(base);
    return Workspace{f, f + rows, f + 2 * rows};
  }

  static GTensor global_tensor(const void* data, const Operand& o, int tokens, int heads, int batch) {
    return make_tensor(make_gmem_ptr(static_cast<Element const*>(data)),
                       make_layout(make_shape(tokens, kHeadDim, heads, batch),
                                   make_stride(o.token_stride, _1{}, o.head_stride,
                                               batch > 1 ? o.batch_stride : unused_batch_stride(o, tokens, heads))));
  }

  static Params make_params(const FmhaBackwardProblem& bp, void* ws) {
    const FmhaProblem& p = bp.fwd;
    Params k{};
    const bool varlen = p.varlen();
    const int tq = int(varlen ? p.total_q : p.seqlen_q), tk = int(varlen ? p.total_k : p.seqlen_k);
    const int nb = varlen ? 1 : int(p.batch);
    k.shape_q = make_shape(tq, kHeadDim, int(p.heads_q), nb);
    k.shape_k = make_shape(tk, kHeadDim, int(p.heads_kv), nb);
    // An empty operand cannot be described by a TMA descriptor; where one side is
    // empty no CTA reads it, and the other side's memory stands in.
    const bool no_keys = tk == 0;
    k.tma_k = make_tma_copy(SM90_TMA_LOAD{}, no_keys ? global_tensor(p.q.data, p.q, tq, int(p.heads_q), nb)
                                                     : global_tensor(p.k.data, p.k, tk, int(p.heads_kv), nb),
                            SmemLayoutKV{});
    k.tma_v = make_tma_copy(SM90_TMA_LOAD{}, no_keys ? global_tensor(p.q.data, p.q, tq, int(p.heads_q), nb)
                                                     : global_tensor(p.v.data, p.v, tk, int(p.heads_kv), nb),
                            SmemLayoutKV{});
    const bool no_queries = tq == 0;
    k.tma_q = make_tma_copy(SM90_TMA_LOAD{}, no_queries ? global_tensor(p.k.data, p.k, tk, int(p.heads_kv), nb)
                                                        : global_tensor(p.q.data, p.q, tq, int(p.heads_q), nb),
                            take<0, 2>(SmemLayoutQ{}));
    k.tma_do = make_tma_copy(SM90_TMA_LOAD{}, no_queries ? global_tensor(p.k.data, p.k, tk, int(p.heads_kv), nb)
                                                         : global_tensor(bp.dout.data, bp.dout, tq, int(p.heads_q), nb),
                             take<0, 2>(SmemLayoutQ{}));
    k.dk = static_cast<Element*>(bp.dk.data);
    k.dv = static_cast<Element*>(bp.dv.data);
    k.dk_bs = bp.dk.batch_stride; k.dk_ts = bp.dk.token_stride; k.dk_hs = bp.dk.head_stride;
    k.dv_bs = bp.dv.batch_stride; k.dv_ts = bp.dv.token_stride; k.dv_hs = bp.dv.head_stride;
    k.ws = workspace(bp, ws);
    k.cu_q = p.cu_seqlens_q;
    k.cu_k = p.cu_seqlens_k;
    k.batch = int(p.batch);
    k.sq = int(p.seqlen_q);
    k.sk = int(p.seqlen_k);
    k.heads_q = int(p.heads_q);
    k.group = int(p.heads_q / p.heads_kv);
    k.q_tiles_per_seq = int((p.seqlen_q + kBlockM - 1) / kBlockM);
    k.left = int(p.window.left);
    k.right = int(p.window.right);
    k.scale = p.scale;
    k.scale_log2 = p.scale * 1.4426950408889634f;
    return k;
  }

  static dim3 grid(const FmhaProblem& p) {
    if (p.varlen())
      return dim3(varlen_num_tiles(p.total_k, int(p.batch), kBlockN), unsigned(p.heads_kv), 1);
    return dim3(unsigned((p.seqlen_k + kBlockN - 1) / kBlockN), unsigned(p.heads_kv), unsigned(p.batch));
  }

  CUTE_DEVICE static void run(Params const& p, char* smem_raw);
};

template <class K>
__global__ void __launch_bounds__(K::kThreads, 1) fmha_bwd_kernel(CUTE_GRID_CONSTANT typename K::Params const p) {
  extern __shared__ __align__(1024) char smem[];
  K::run(p, smem);
}

template <class Element, int kHeadDim, int kStages>
CUTE_DEVICE void BwdKernel<Element, kHeadDim, kStages>::run(Params const& p, char* smem_raw) {
#if defined(AK_SM90_ENABLED)
  SharedStorage& smem = *reinterpret_cast<SharedStorage*>(smem_raw);

  // ---- which key tile, and the sequence's bounds
  int b, n, q_base = 0, k_base = 0, sq = p.sq, sk = p.sk, b_idx, qtile_base;
  if (p.cu_q != nullptr) {
    b = varlen_find_sequence(p.cu_k, p.batch, int(blockIdx.x), kBlockN);
    n = int(blockIdx.x) - varlen_tile_base(p.cu_k, b, kBlockN);
    q_base = p.cu_q[b];
    sq = p.cu_q[b + 1] - q_base;
    k_base = p.cu_k[b];
    sk = p.cu_k[b + 1] - k_base;
    b_idx = 0;
    qtile_base = varlen_tile_base(p.cu_q, b, kBlockM);
  } else {
    b = int(blockIdx.z);
    n = int(blockIdx.x);
    b_idx = b;
    qtile_base = b * p.q_tiles_per_seq;
  }
  if (n * kBlockN >= sk) return;  // uniform over the CTA
  const int hkv = int(blockIdx.y);
  const SeqSchedule sched{sq, sk, p.left, p.right};
  const Range qr = sched.q_tiles(n * kBlockN, n * kBlockN + kBlockN, kBlockM);
  const int m_count = qr.empty() ? 0 : qr.end - qr.begin;
  const int warp_group = int(threadIdx.x) / 128;

  typename Pipeline::Params pp;
  pp.transaction_bytes = kBlockM * kHeadDim * int(sizeof(Element)) + kBlockM * int(sizeof(float));
  pp.role = warp_group == 0 ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  pp.is_leader = threadIdx.x == 0;
  pp.num_consumers = 256;
  Pipeline pipe_q(smem.pipe_q, pp, Shape<_1, _1, _1>{});
  Pipeline pipe_do(smem.pipe_do, pp, Shape<_1, _1, _1>{});
  using Barrier = cutlass::arch::ClusterTransactionBarrier;
  if (threadIdx.x == 0) Barrier::init(&smem.bar_kv, 1);
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  Tensor sK = make_tensor(make_smem_ptr(smem.k.data()), SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(smem.v.data()), SmemLayoutKV{});
  Tensor sKt = make_tensor(make_smem_ptr(smem.k.data()), SmemLayoutKt{});
  Tensor sQ = make_tensor(make_smem_ptr(smem.q.data()), SmemLayoutQ{});
  Tensor sQt = make_tensor(make_smem_ptr(smem.q.data()), SmemLayoutQt{});
  Tensor sdO = make_tensor(make_smem_ptr(smem.dout.data()), SmemLayoutQ{});
  Tensor sdOt = make_tensor(make_smem_ptr(smem.dout.data()), SmemLayoutQt{});
  Tensor sdS = make_tensor(make_smem_ptr(smem.ds.data()), SmemLayoutdS{});
  Tensor sdSt = make_tensor(make_smem_ptr(smem.ds.data()), SmemLayoutdSt{});

  if (warp_group == 0) {
    // ------------------------------------------------------------ producer
    cutlass::arch::warpgroup_reg_dealloc<24>();
    if (threadIdx.x == 0) {
      cute::prefetch_tma_descriptor(p.tma_k.get_tma_descriptor());
      cute::prefetch_tma_descriptor(p.tma_v.get_tma_descriptor());
      cute::prefetch_tma_descriptor(p.tma_q.get_tma_descriptor());
      cute::prefetch_tma_descriptor(p.tma_do.get_tma_descriptor());
      Tensor mK = domain_offset(make_coord(k_base, _0{}), p.tma_k.get_tma_tensor(p.shape_k)(_, _, hkv, b_idx));
      Tensor mV = domain_offset(make_coord(k_base, _0{}), p.tma_v.get_tma_tensor(p.shape_k)(_, _, hkv, b_idx));
      Tensor gK = local_tile(mK, Shape<Int<kBlockN>, D>{}, make_coord(n, _0{}));
      Tensor gV = local_tile(mV, Shape<Int<kBlockN>, D>{}, make_coord(n, _0{}));
      auto [tKg, tKs] = tma_partition(p.tma_k, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
      auto [tVg, tVs] = tma_partition(p.tma_v, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));
      Barrier::arrive_and_expect_tx(&smem.bar_kv, 2 * kBlockN * kHeadDim * int(sizeof(Element)));
      copy(p.tma_k.with(smem.bar_kv), tKg, tKs);
      copy(p.tma_v.with(smem.bar_kv), tVg, tVs);

      auto mQall = p.tma_q.get_tma_tensor(p.shape_q);
      auto mdOall = p.tma_do.get_tma_tensor(p.shape_q);
      PipelineState wq = cutlass::make_producer_start_state<Pipeline>();
      PipelineState wd = cutlass::make_producer_start_state<Pipeline>();
      for (int g = 0; g < p.group; ++g) {
        const int hq = hkv * p.group + g;
        Tensor gQ = local_tile(domain_offset(make_coord(q_base, _0{}), mQall(_, _, hq, b_idx)),
                               Shape<Int<kBlockM>, D>{}, make_coord(_, _0{}));
        Tensor gdO = local_tile(domain_offset(make_coord(q_base, _0{}), mdOall(_, _, hq, b_idx)),
                                Shape<Int<kBlockM>, D>{}, make_coord(_, _0{}));
        auto [tQg, tQs] = tma_partition(p.tma_q, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
        auto [tdOg, tdOs] = tma_partition(p.tma_do, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sdO), group_modes<0, 2>(gdO));
        for (int i = 0; i < m_count; ++i) {
          const int m = qr.begin + i;
          const int64_t row = (int64_t(qtile_base + m) * p.heads_q + hq) * kBlockM;
          pipe_q.producer_acquire(wq);
          copy(p.tma_q.with(*pipe_q.producer_get_barrier(wq)), tQg(_, m), tQs(_, wq.index()));
          SM90_BULK_COPY_G2S::copy(p.ws.lse2 + row, pipe_q.producer_get_barrier(wq),
                                   smem.lse2.data() + wq.index() * kBlockM, kBlockM * int(sizeof(float)));
          ++wq;
          pipe_do.producer_acquire(wd);
          copy(p.tma_do.with(*pipe_do.producer_get_barrier(wd)), tdOg(_, m), tdOs(_, wd.index()));
          SM90_BULK_COPY_G2S::copy(p.ws.delta + row, pipe_do.producer_get_barrier(wd),
                                   smem.delta.data() + wd.index() * kBlockM, kBlockM * int(sizeof(float)));
          ++wd;
        }
      }
    }
    return;
  }

  // -------------------------------------------------------------- consumers
  cutlass::arch::warpgroup_reg_alloc<240>();
  const int cw = warp_group - 1;
  const int t = int(threadIdx.x) % 128;
  const int k0w = n * kBlockN + cw * 64;  // first key of this warpgroup (in the sequence)

  TiledMmaSdP mma_sdp;
  TiledMmadKV mma_dkv;
  TiledMmadQ mma_dq;
  auto thr_sdp = mma_sdp.get_thread_slice(t);
  auto thr_dkv = mma_dkv.get_thread_slice(t);
  auto thr_dq = mma_dq.get_thread_slice(t);

  Tensor tSrK = thr_sdp.make_fragment_A(thr_sdp.partition_A(local_tile(sK, Shape<_64, D>{}, make_coord(cw, _0{}))));
  Tensor tSrV = thr_sdp.make_fragment_A(thr_sdp.partition_A(local_tile(sV, Shape<_64, D>{}, make_coord(cw, _0{}))));
  Tensor tSrQ = thr_sdp.make_fragment_B(thr_sdp.partition_B(sQ));    // (MMA, N, K, stages)
  Tensor tSrdO = thr_sdp.make_fragment_B(thr_sdp.partition_B(sdO));
  Tensor tKVrdOt = thr_dkv.make_fragment_B(thr_dkv.partition_B(sdOt));  // (MMA, N=D, K=q, stages)
  Tensor tKVrQt = thr_dkv.make_fragment_B(thr_dkv.partition_B(sQt));
  Tensor tdSsdS = thr_sdp.partition_C(local_tile(sdSt, Shape<_64, _64>{}, make_coord(cw, _0{})));
  auto dq_a = [&] {
    if constexpr (kSplitD) return sdS;
    else return local_tile(sdS, Shape<_64, _64>{}, make_coord(_0{}, cw));
  }();
  auto dq_b = [&] {
    if constexpr (kSplitD) return local_tile(sKt, Shape<Int<kDqCols>, Int<kBlockN>>{}, make_coord(cw, _0{}));
    else return local_tile(sKt, Shape<D, _64>{}, make_coord(_0{}, cw));
  }();
  Tensor tQrdS = thr_dq.make_fragment_A(thr_dq.partition_A(dq_a));
  Tensor tQrKt = thr_dq.make_fragment_B(thr_dq.partition_B(dq_b));

  Tensor acc_dk = partition_fragment_C(mma_dkv, Shape<_64, D>{});
  Tensor acc_dv = partition_fragment_C(mma_dkv, Shape<_64, D>{});
  clear(acc_dk);
  clear(acc_dv);
  Tensor cS = thr_sdp.partition_C(make_identity_tensor(Shape<_64, _64>{}));  // (key, query)
  Tensor cS_rc = make_tensor(cS.data(), acc_rowcol(cS.layout()));
  const float sl2 = p.scale_log2;
  float* sdq = smem.dq.data() + cw * kDqStage;
  const int dq_part = kSplitD ? cw * kDqStage : 0;
  const int bar_all = 1, bar_wg = 2 + cw;

  cutlass::arch::ClusterTransactionBarrier::wait(&smem.bar_kv, 0);

  PipelineState rq, rd;
  for (int g = 0; g < p.group; ++g) {
    const int hq = hkv * p.group + g;
    for (int i = 0; i < m_count; ++i) {
      const int m = qr.begin + i;
      const int q0 = m * kBlockM;
      Tensor acc_s = partition_fragment_C(mma_sdp, Shape<_64, _64>{});
      Tensor acc_dp = partition_fragment_C(mma_sdp, Shape<_64, _64>{});
      pipe_q.consumer_wait(rq);
      wgmma(mma_sdp, tSrK, tSrQ(_, _, _, rq.index()), acc_s, true);
      pipe_do.consumer_wait(rd);
      wgmma(mma_sdp, tSrV, tSrdO(_, _, _, rd.index()), acc_dp, true);
      warpgroup_wait<1>();  // S^T is ready
      fence_operands(acc_s);

      const float* lse2 = smem.lse2.data() + rq.index() * kBlockM;
      const float* delta = smem.delta.data() + rd.index() * kBlockM;
      Tensor s = make_tensor(acc_s.data(), acc_rowcol(acc_s.layout()));  // (keys, queries)
      const bool full = sched.tile_is_full(q0, q0 + kBlockM, k0w, k0w + 64);
      CUTE_UNROLL
      for (int c = 0; c < size<1>(s); ++c) {
        const int qc = get<1>(cS_rc(0, c));
        const float l2 = lse2[qc];
        CUTE_UNROLL
        for (int r = 0; r < size<0>(s); ++r) {
          float pv = fast_exp2(fmaf(s(r, c), sl2, -l2));
          if (!full && !sched.visible(q0 + qc, k0w + get<0>(cS_rc(r, 0)))) pv = 0.f;
          s(r, c) = pv;
        }
      }
      warpgroup_wait<0>();  // dP^T is ready
      fence_operands(acc_s, acc_dp);
      Tensor dp = make_tensor(acc_dp.data(), acc_rowcol(acc_dp.layout()));
      CUTE_UNROLL
      for (int c = 0; c < size<1>(dp); ++c) {
        const float dl = delta[get<1>(cS_rc(0, c))];
        CUTE_UNROLL
        for (int r = 0; r < size<0>(dp); ++r) dp(r, c) = s(r, c) * (dp(r, c) - dl);
      }
      // dV += P^T dO, dK += dS^T Q (A operands straight from registers)
      Tensor p_regs = convert_fragment<Element>(acc_s);
      Tensor p_a = make_tensor(p_regs.data(), acc_as_a_operand(p_regs.layout()));
      warpgroup_fence_operand(p_a);
      wgmma(mma_dkv, p_a, tKVrdOt(_, _, _, rd.index()), acc_dv, false);
      Tensor ds_regs = convert_fragment<Element>(acc_dp);
      Tensor ds_a = make_tensor(ds_regs.data(), acc_as_a_operand(ds_regs.layout()));
      warpgroup_fence_operand(ds_a);
      wgmma(mma_dkv, ds_a, tKVrQt(_, _, _, rq.index()), acc_dk, false);
      // dS^T -> shared memory (query-contiguous), for dQ = dS K
      copy(ds_regs, tdSsdS);
      fence_smem_for_async();
      if constexpr (kSplitD) named_sync(bar_all, 256); else named_sync(bar_wg, 128);
      Tensor acc_dq = partition_fragment_C(mma_dq, Shape<_64, Int<kDqCols>>{});
      wgmma(mma_dq, tQrdS, tQrKt, acc_dq, true);
      warpgroup_wait<0>();
      fence_operands(acc_dv, acc_dk, acc_dq, p_a, ds_a);
      pipe_q.consumer_release(rq);
      ++rq;
      pipe_do.consumer_release(rd);
      ++rd;

      // dQ partial -> smem (fragment order: conflict-free) -> bulk add to dq_accum
      if (t == 0) bulk_wait_read();
      named_sync(bar_wg, 128);
      CUTE_UNROLL
      for (int v = 0; v < size(acc_dq); ++v) sdq[v * 128 + t] = acc_dq(v);
      fence_smem_for_async();
      named_sync(bar_wg, 128);
      if (t == 0) {
        float* dst = p.ws.dq_accum + (int64_t(qtile_base + m) * p.heads_q + hq) * (kBlockM * kHeadDim) + dq_part;
        bulk_reduce_add_f32(dst, sdq, kDqStage * int(sizeof(float)));
        bulk_commit();
      }
      // Both warpgroups read all of dS (split-D): neither overwrites it before
      // the other's dQ WGMMA is done.
      if constexpr (kSplitD) named_sync(bar_all, 256);
    }
  }
  if (t == 0) bulk_wait_all();

  // ---- epilogue: dK (scaled) and dV of this warpgroup's 64 keys
  Tensor cO = thr_dkv.partition_C(make_identity_tensor(Shape<_64, D>{}));
  Tensor cO_rc = make_tensor(cO.data(), acc_rowcol(cO.layout()));
  Tensor dk_rc = make_tensor(acc_dk.data(), acc_rowcol(acc_dk.layout()));
  Tensor dv_rc = make_tensor(acc_dv.data(), acc_rowcol(acc_dv.layout()));
  Element* dk = p.dk + int64_t(b_idx) * p.dk_bs + int64_t(hkv) * p.dk_hs;
  Element* dv = p.dv + int64_t(b_idx) * p.dv_bs + int64_t(hkv) * p.dv_hs;
  CUTE_UNROLL
  for (int r = 0; r < size<0>(dk_rc); ++r) {
    const int kj = k0w + get<0>(cO_rc(r, 0));
    if (kj >= sk) continue;
    Element* dk_row = dk + int64_t(k_base + kj) * p.dk_ts;
    Element* dv_row = dv + int64_t(k_base + kj) * p.dv_ts;
    CUTE_UNROLL
    for (int c = 0; c < size<1>(dk_rc); c += 2) {
      const int col = get<1>(cO_rc(r, c));
      cutlass::Array<Element, 2> a, v;
      a[0] = Element(dk_rc(r, c) * p.scale);
      a[1] = Element(dk_rc(r, c + 1) * p.scale);
      v[0] = Element(dv_rc(r, c));
      v[1] = Element(dv_rc(r, c + 1));
      *reinterpret_cast<cutlass::Array<Element, 2>*>(dk_row + col) = a;
      *reinterpret_cast<cutlass::Array<Element, 2>*>(dv_row + col) = v;
    }
  }
#endif
}

// ---------------------------------------------------------------- preprocess
struct BwdPreParams {
  const void* out;
  const void* dout;
  const float* lse;
  const float* dlse;
  int64_t o_bs, o_ts, o_hs, do_bs, do_ts, do_hs, l_bs, l_ts, l_hs;
  float* lse2;
  float* delta;
  const int32_t* cu_q;
  int batch, sq, heads_q, q_tiles_per_seq, head_dim;
};

// Resolves a 64-row query tile index of the workspace into (sequence, tile in it,
// first packed token, rows); false when the tile index holds no rows.
CUTE_HOST_DEVICE bool resolve_q_tile(const int32_t* cu_q, int batch, int sq, int q_tiles_per_seq,
                                     int tile, int* b, int* m, int* q_base, int* len) {
  if (cu_q != nullptr) {
    *b = varlen_find_sequence(cu_q, batch, tile, 64);
    if (*b < 0) return false;
    *m = tile - varlen_tile_base(cu_q, *b, 64);
    *q_base = cu_q[*b];
    *len = cu_q[*b + 1] - *q_base;
  } else {
    *b = tile / q_tiles_per_seq;
    *m = tile % q_tiles_per_seq;
    *q_base = 0;
    *len = sq;
  }
  return *m * 64 < *len;
}

// grid (q tiles, Hq), 256 threads: 4 threads per row, 8-element vectors.
template <class Element>
__global__ void __launch_bounds__(256) fmha_bwd_preprocess_kernel(BwdPreParams p) {
  const int tile = int(blockIdx.x), h = int(blockIdx.y);
  const int r = int(threadIdx.x) / 4, part = int(threadIdx.x) % 4;
  int b = 0, m = 0, q_base = 0, len = 0;
  const bool any = resolve_q_tile(p.cu_q, p.batch, p.sq, p.q_tiles_per_seq, tile, &b, &m, &q_base, &len);
  const int i = m * 64 + r;  // row in the sequence
  const bool valid = any && i < len;
  float acc = 0.f;
  const int64_t bi = p.cu_q != nullptr ? 0 : b;
  if (valid) {
    const int64_t tok = q_base + i;
    const Element* o = static_cast<const Element*>(p.out) + bi * p.o_bs + tok * p.o_ts + int64_t(h) * p.o_hs;
    const Element* d = static_cast<const Element*>(p.dout) + bi * p.do_bs + tok * p.do_ts + int64_t(h) * p.do_hs;
    for (int c = part * 8; c < p.head_dim; c += 32) {
      cutlass::Array<Element, 8> ov = *reinterpret_cast<const cutlass::Array<Element, 8>*>(o + c);
      cutlass::Array<Element, 8> dv = *reinterpret_cast<const cutlass::Array<Element, 8>*>(d + c);
      CUTE_UNROLL
      for (int e = 0; e < 8; ++e) acc += float(ov[e]) * float(dv[e]);
    }
  }
  acc += __shfl_xor_sync(0xffffffffu, acc, 1);
  acc += __shfl_xor_sync(0xffffffffu, acc, 2);
  if (part == 0) {
    const int64_t row = (int64_t(tile) * p.heads_q + h) * 64 + r;
    float l2 = INFINITY, dl = 0.f;
    if (valid) {
      const int64_t li = bi * p.l_bs + int64_t(q_base + i) * p.l_ts + int64_t(h) * p.l_hs;
      const float lse = p.lse[li];
      l2 = lse == -INFINITY ? INFINITY : lse * 1.4426950408889634f;
      dl = acc - (p.dlse != nullptr ? p.dlse[li] : 0.f);
    }
    p.lse2[row] = l2;
    p.delta[row] = dl;
  }
}

// ---------------------------------------------------------------- dq convert
struct BwdConvertParams {
  const float* dq_accum;
  void* dq;
  int64_t dq_bs, dq_ts, dq_hs;
  const int32_t* cu_q;
  int batch, sq, heads_q, q_tiles_per_seq;
  float scale;
};

// grid (q tiles, Hq), 128 threads: thread t reads the values it wrote as thread t
// of a dQ warpgroup (fragment order) and stores them at their coordinates.
template <class K>
__global__ void __launch_bounds__(128) fmha_bwd_convert_kernel(BwdConvertParams p) {
  using Element = typename K::Element;
  const int tile = int(blockIdx.x), h = int(blockIdx.y), t = int(threadIdx.x);
  int b = 0, m = 0, q_base = 0, len = 0;
  if (!resolve_q_tile(p.cu_q, p.batch, p.sq, p.q_tiles_per_seq, tile, &b, &m, &q_base, &len)) return;
  const int64_t bi = p.cu_q != nullptr ? 0 : b;
  typename K::TiledMmadQ mma;
  Tensor c = mma.get_thread_slice(t).partition_C(make_identity_tensor(Shape<_64, Int<K::kDqCols>>{}));
  const float* src = p.dq_accum + (int64_t(tile) * p.heads_q + h) * (64 * K::kHeadDim);
  Element* dq = static_cast<Element*>(p.dq) + bi * p.dq_bs + int64_t(h) * p.dq_hs;
  constexpr int kParts = K::kSplitD ? 2 : 1;
  CUTE_UNROLL
  for (int part = 0; part < kParts; ++part) {
    CUTE_UNROLL
    for (int v = 0; v < size(c); v += 2) {  // values v, v + 1 are adjacent columns
      const int row = get<0>(c(v)), col = part * K::kDqCols + get<1>(c(v));
      const int i = m * 64 + row;
      if (i >= len) continue;
      cutlass::Array<Element, 2> pair;
      pair[0] = Element(src[part * K::kDqStage + v * 128 + t] * p.scale);
      pair[1] = Element(src[part * K::kDqStage + (v + 1) * 128 + t] * p.scale);
      *reinterpret_cast<cutlass::Array<Element, 2>*>(dq + int64_t(q_base + i) * p.dq_ts + col) = pair;
    }
  }
}

template <class K>
size_t bwd_workspace_bytes(const FmhaBackwardProblem& bp) {
  return K::workspace_bytes(bp);
}

template <class K>
void launch_bwd(const FmhaBackwardProblem& bp, void* ws, void* stream_) {
  using Element = typename K::Element;
  const FmhaProblem& p = bp.fwd;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_);
  static std::atomic<unsigned long long> configured{0};  // one bit per device
  set_smem_limit_once(fmha_bwd_kernel<K>, K::kSmemBytes, configured, "attention_backward");
  const bool has_keys = (p.varlen() ? p.total_k : p.seqlen_k) > 0;
  const int64_t q_tiles = (p.varlen() ? p.total_q : p.seqlen_q) > 0 ? K::num_q_tiles(p) : 0;
  if (!has_keys && q_tiles == 0) return;  // every gradient is empty
  // No keys: dq = 0 from the zeroed accumulator (dk, dv are empty); no queries:
  // the main kernel writes dk = dv = 0.
  const typename K::Params params = K::make_params(bp, ws);
  const int64_t rows = q_tiles * p.heads_q * K::kBlockM;
  if (q_tiles > 0 &&
      cudaMemsetAsync(params.ws.dq_accum, 0, size_t(rows) * K::kHeadDim * sizeof(float), stream) != cudaSuccess)
    check_launch("attention_backward (dq_accum reset)");

  BwdPreParams pre{};
  pre.out = p.out.data;
  pre.dout = bp.dout.data;
  pre.lse = p.lse;
  pre.dlse = bp.dlse;
  pre.o_bs = p.out.batch_stride; pre.o_ts = p.out.token_stride; pre.o_hs = p.out.head_stride;
  pre.do_bs = bp.dout.batch_stride; pre.do_ts = bp.dout.token_stride; pre.do_hs = bp.dout.head_stride;
  pre.l_bs = p.lse_batch_stride; pre.l_ts = p.lse_token_stride; pre.l_hs = p.lse_head_stride;
  pre.lse2 = params.ws.lse2;
  pre.delta = params.ws.delta;
  pre.cu_q = p.cu_seqlens_q;
  pre.batch = int(p.batch);
  pre.sq = int(p.seqlen_q);
  pre.heads_q = int(p.heads_q);
  pre.q_tiles_per_seq = params.q_tiles_per_seq;
  pre.head_dim = K::kHeadDim;
  const dim3 tiles_grid(unsigned(q_tiles), unsigned(p.heads_q));
  if (q_tiles > 0) {
    fmha_bwd_preprocess_kernel<Element><<<tiles_grid, 256, 0, stream>>>(pre);
    check_launch("attention_backward (sm90 preprocess)");
  }
  if (has_keys) {  // a grid of zero CTAs is a launch error
    fmha_bwd_kernel<K><<<K::grid(p), K::kThreads, K::kSmemBytes, stream>>>(params);
    check_launch("attention_backward (sm90 main)");
  }

  BwdConvertParams cv{};
  cv.dq_accum = params.ws.dq_accum;
  cv.dq = bp.dq.data;
  cv.dq_bs = bp.dq.batch_stride; cv.dq_ts = bp.dq.token_stride; cv.dq_hs = bp.dq.head_stride;
  cv.cu_q = p.cu_seqlens_q;
  cv.batch = int(p.batch);
  cv.sq = int(p.seqlen_q);
  cv.heads_q = int(p.heads_q);
  cv.q_tiles_per_seq = params.q_tiles_per_seq;
  cv.scale = p.scale;
  if (q_tiles > 0) {
    fmha_bwd_convert_kernel<K><<<tiles_grid, 128, 0, stream>>>(cv);
    check_launch("attention_backward (sm90 dq convert)");
  }
}

}  // namespace attnkit::cuda::sm90
