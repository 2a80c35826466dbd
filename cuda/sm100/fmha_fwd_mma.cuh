// attnkit CUDA backend: the portable FMHA forward ("mma-sync" variant), the
// kernel attnkit builds for sm_100a today.
//
// What it is: a FlashAttention-2 style kernel on warp-level tensor-core MMA
// (mma.sync m16n8k16 through CuTe's SM80 atoms), cp.async loads into swizzled
// shared memory, ldmatrix to registers, online softmax in registers and P reused
// in registers as the A operand of O += P V. It runs on every NVIDIA GPU from
// sm_80 on -- Blackwell (sm_100a) included -- but it is NOT the Blackwell fast path:
// sm_100a's tensor-core instructions are tcgen05 (UMMA with accumulators in
// tensor memory), which this kernel does not use; WGMMA, which the sm_90a kernels
// use, does not exist on sm_100a. A tcgen05/TMEM kernel (the design of CUTLASS's
// 77_blackwell_fmha) is the next step and plugs into the same schedule seam.
//
// The same source is also compiled for sm_90a under the variant name
// "mma-sync", so its results can be verified on a Hopper GPU
// (ATTNKIT_CUDA_VARIANT=mma-sync selects it there; tests/test_cuda.py does).
//
// One CTA per (64-row query tile, query head, sequence), 4 warps x 16 rows.
#pragma once

#include <cuda_runtime.h>

#include <atomic>

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/numeric_types.h>

#include "attnkit/error.hpp"
#include "../common/schedule.hpp"
#include "problem.hpp"

namespace attnkit::cuda::mma {

using namespace cute;

template <class Element> struct MmaAtomOf;
template <> struct MmaAtomOf<cutlass::bfloat16_t> { using type = SM80_16x8x16_F32BF16BF16F32_TN; };
template <> struct MmaAtomOf<cutlass::half_t> { using type = SM80_16x8x16_F32F16F16F32_TN; };

// Row-major smem atom swizzled for conflict-free ldmatrix and 16-byte cp.async:
// 64-element rows (128 B) when head_dim allows, else 32 (64 B) or 16 (32 B).
template <class Element, int kExtent>
CUTE_HOST_DEVICE constexpr auto smem_atom() {
  if constexpr (kExtent % 64 == 0)
    return composition(Swizzle<3, 3, 3>{}, Layout<Shape<_8, _64>, Stride<_64, _1>>{});
  else if constexpr (kExtent % 32 == 0)
    return composition(Swizzle<2, 3, 3>{}, Layout<Shape<_8, _32>, Stride<_32, _1>>{});
  else
    return composition(Swizzle<1, 3, 3>{}, Layout<Shape<_8, _16>, Stride<_16, _1>>{});
}

// An mma.sync accumulator ((2, 2), MMA_M, MMA_N) as (rows, cols): rows
// ((2), MMA_M) -- r and r + 8 of each 16-row block -- and cols ((2), MMA_N).
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_rowcol(Layout const& l) {
  static_assert(decltype(rank<0>(l))::value == 2);
  return make_layout(make_layout(get<0, 1>(l), get<1>(l)), make_layout(get<0, 0>(l), get<2>(l)));
}

// The S accumulator ((2, 2), MMA_M, N/8) as the A operand of an m16n8k16 MMA
// ((2, 2, 2), MMA_M, N/16): a k16 block is two consecutive n8 blocks.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_as_a_operand(Layout const& l) {
  constexpr int NB = decltype(size<2>(l))::value;
  static_assert(NB % 2 == 0);
  return make_layout(make_shape(make_shape(_2{}, _2{}, _2{}), get<1>(shape(l)), Int<NB / 2>{}),
                     make_stride(make_stride(stride<0, 0>(l), stride<0, 1>(l), stride<2>(l)), stride<1>(l),
                                 stride<2>(l) * _2{}));
}

CUTE_DEVICE float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <class Element_, int kHeadDim_>
struct FwdKernel {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 64, kBlockN = 64, kWarps = 4, kThreads = 128;
  using D = Int<kHeadDim>;
  using BM = Int<kBlockM>;
  using BN = Int<kBlockN>;

  using TiledMma = TiledMMA<MMA_Atom<typename MmaAtomOf<Element>::type>, Layout<Shape<Int<kWarps>, _1, _1>>,
                            Tile<Int<16 * kWarps>, _16, _16>>;
  using SmemLayoutQ = decltype(tile_to_shape(smem_atom<Element, kHeadDim>(), Shape<BM, D>{}));
  using SmemLayoutKV = decltype(tile_to_shape(smem_atom<Element, kHeadDim>(), Shape<BN, D>{}));
  using SmemLayoutVt = decltype(composition(SmemLayoutKV{}, make_layout(Shape<D, BN>{}, GenRowMajor{})));

  // gmem -> smem: 16-byte cp.async per thread, rows of kThreadsPerRow threads.
  static constexpr int kChunk = 8;  // elements per 16 B
  static constexpr int kRowChunks = (kHeadDim % 64 == 0 ? 64 : (kHeadDim % 32 == 0 ? 32 : 16)) / kChunk;
  using GmemCopy = decltype(make_tiled_copy(
      Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>, Element>{},
      Layout<Shape<Int<kThreads / kRowChunks>, Int<kRowChunks>>, Stride<Int<kRowChunks>, _1>>{},
      Layout<Shape<_1, Int<kChunk>>>{}));
  using SmemCopyA = Copy_Atom<SM75_U32x4_LDSM_N, Element>;
  using SmemCopyVt = Copy_Atom<SM75_U16x8_LDSM_T, Element>;

  struct SharedStorage {
    cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 128> q;
    cute::array_aligned<Element, cosize_v<SmemLayoutKV>, 128> k;
    cute::array_aligned<Element, cosize_v<SmemLayoutKV>, 128> v;
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));

  struct Params {
    const Element* q;
    const Element* k;
    const Element* v;
    Element* out;
    int64_t q_bs, q_ts, q_hs, k_bs, k_ts, k_hs, v_bs, v_ts, v_hs, o_bs, o_ts, o_hs;
    float* lse;
    int64_t l_bs, l_ts, l_hs;
    const int32_t* cu_q;
    const int32_t* cu_k;
    int batch, sq, sk, group, left, right;
    float scale_log2;
  };

  static Params make_params(const FmhaProblem& p) {
    Params k{};
    k.q = static_cast<const Element*>(p.q.data);
    k.k = static_cast<const Element*>(p.k.data);
    k.v = static_cast<const Element*>(p.v.data);
    k.out = static_cast<Element*>(p.out.data);
    k.q_bs = p.q.batch_stride; k.q_ts = p.q.token_stride; k.q_hs = p.q.head_stride;
    k.k_bs = p.k.batch_stride; k.k_ts = p.k.token_stride; k.k_hs = p.k.head_stride;
    k.v_bs = p.v.batch_stride; k.v_ts = p.v.token_stride; k.v_hs = p.v.head_stride;
    k.o_bs = p.out.batch_stride; k.o_ts = p.out.token_stride; k.o_hs = p.out.head_stride;
    k.lse = p.lse;
    k.l_bs = p.lse_batch_stride; k.l_ts = p.lse_token_stride; k.l_hs = p.lse_head_stride;
    k.cu_q = p.cu_seqlens_q;
    k.cu_k = p.cu_seqlens_k;
    k.batch = int(p.batch);
    k.sq = int(p.seqlen_q);
    k.sk = int(p.seqlen_k);
    k.group = int(p.heads_q / p.heads_kv);
    k.left = int(p.window.left);
    k.right = int(p.window.right);
    k.scale_log2 = p.scale * 1.4426950408889634f;
    return k;
  }

  static dim3 grid(const FmhaProblem& p) {
    if (p.varlen())
      return dim3(varlen_num_tiles(p.total_q, int(p.batch), kBlockM), unsigned(p.heads_q), 1);
    return dim3(unsigned((p.seqlen_q + kBlockM - 1) / kBlockM), unsigned(p.heads_q), unsigned(p.batch));
  }

  // Rows [row0, row0 + rows) of a (tokens, D) operand -> smem tile; rows at or
  // past `valid` are zero-filled instead of read.
  template <class SrcTensor, class DstTensor>
  CUTE_DEVICE static void load_tile(SrcTensor const& g, DstTensor& s, int valid, int t) {
    GmemCopy copy_op;
    auto thr = copy_op.get_thread_slice(t);
    Tensor src = thr.partition_S(g);
    Tensor dst = thr.partition_D(s);
    Tensor coord = thr.partition_S(make_identity_tensor(make_shape(size<0>(s), size<1>(s))));
    CUTE_UNROLL
    for (int m = 0; m < size<1>(src); ++m) {
      if (get<0>(coord(0, m, 0)) < valid) {
        copy(copy_op, src(_, m, _), dst(_, m, _));
      } else {
        clear(dst(_, m, _));
      }
    }
  }

  CUTE_DEVICE static void run(Params const& p, char* smem_raw);
};

template <class K>
__global__ void __launch_bounds__(K::kThreads) fmha_fwd_mma_kernel(typename K::Params const p) {
  extern __shared__ __align__(128) char smem[];
  K::run(p, smem);
}

template <class Element, int kHeadDim>
CUTE_DEVICE void FwdKernel<Element, kHeadDim>::run(Params const& p, char* smem_raw) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  SharedStorage& smem = *reinterpret_cast<SharedStorage*>(smem_raw);
  int b, m, q_base = 0, k_base = 0, sq = p.sq, sk = p.sk;
  int64_t b_off_q = 0, b_off_k = 0, b_off_v = 0, b_off_o = 0, b_off_l = 0;
  if (p.cu_q != nullptr) {
    b = varlen_find_sequence(p.cu_q, p.batch, int(blockIdx.x), kBlockM);
    m = int(blockIdx.x) - varlen_tile_base(p.cu_q, b, kBlockM);
    q_base = p.cu_q[b];
    sq = p.cu_q[b + 1] - q_base;
    k_base = p.cu_k[b];
    sk = p.cu_k[b + 1] - k_base;
  } else {
    b = int(blockIdx.z);
    m = int(blockIdx.x);
    b_off_q = b * p.q_bs; b_off_k = b * p.k_bs; b_off_v = b * p.v_bs; b_off_o = b * p.o_bs; b_off_l = b * p.l_bs;
  }
  if (m * kBlockM >= sq) return;
  const int hq = int(blockIdx.y), hkv = hq / p.group;
  const int t = int(threadIdx.x);
  const SeqSchedule sched{sq, sk, p.left, p.right};
  const int q0 = m * kBlockM;
  const Range kv = sched.kv_tiles(q0, q0 + kBlockM, kBlockN);

  // This head's rows of the sequence, as (tokens, D) tensors.
  auto rows = [](const Element* base, int64_t ts, int n) {
    return make_tensor(make_gmem_ptr(base), make_layout(make_shape(n, D{}), make_stride(ts, _1{})));
  };
  Tensor mQ = rows(p.q + b_off_q + int64_t(q_base) * p.q_ts + int64_t(hq) * p.q_hs, p.q_ts, sq);
  Tensor mK = rows(p.k + b_off_k + int64_t(k_base) * p.k_ts + int64_t(hkv) * p.k_hs, p.k_ts, sk);
  Tensor mV = rows(p.v + b_off_v + int64_t(k_base) * p.v_ts + int64_t(hkv) * p.v_hs, p.v_ts, sk);
  Tensor gQ = local_tile(mQ, Shape<BM, D>{}, make_coord(m, _0{}));
  Tensor gK = local_tile(mK, Shape<BN, D>{}, make_coord(_, _0{}));  // (BN, D, n)
  Tensor gV = local_tile(mV, Shape<BN, D>{}, make_coord(_, _0{}));
  Tensor sQ = make_tensor(make_smem_ptr(smem.q.data()), SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(smem.k.data()), SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(smem.v.data()), SmemLayoutKV{});
  Tensor sVt = make_tensor(make_smem_ptr(smem.v.data()), SmemLayoutVt{});

  TiledMma mma;
  auto thr = mma.get_thread_slice(t);
  Tensor rQ = thr.partition_fragment_A(sQ);   // (MMA, MMA_M, MMA_K)
  Tensor rK = thr.partition_fragment_B(sK);   // (MMA, MMA_N, MMA_K)
  Tensor rVt = thr.partition_fragment_B(sVt); // (MMA, MMA_N = D, MMA_K = BN)
  auto copy_a = make_tiled_copy_A(SmemCopyA{}, mma);
  auto copy_b = make_tiled_copy_B(SmemCopyA{}, mma);
  auto copy_vt = make_tiled_copy_B(SmemCopyVt{}, mma);
  auto ldsm_a = copy_a.get_thread_slice(t);
  auto ldsm_b = copy_b.get_thread_slice(t);
  auto ldsm_vt = copy_vt.get_thread_slice(t);
  Tensor sQ_s = ldsm_a.partition_S(sQ);
  Tensor rQ_v = ldsm_a.retile_D(rQ);
  Tensor sK_s = ldsm_b.partition_S(sK);
  Tensor rK_v = ldsm_b.retile_D(rK);
  Tensor sVt_s = ldsm_vt.partition_S(sVt);
  Tensor rVt_v = ldsm_vt.retile_D(rVt);

  Tensor acc_o = partition_fragment_C(mma, Shape<BM, D>{});
  clear(acc_o);
  Tensor o_rc = make_tensor(acc_o.data(), acc_rowcol(acc_o.layout()));
  Tensor cS = thr.partition_C(make_identity_tensor(Shape<BM, BN>{}));
  Tensor cS_rc = make_tensor(cS.data(), acc_rowcol(cS.layout()));
  Tensor cO = thr.partition_C(make_identity_tensor(Shape<BM, D>{}));
  Tensor cO_rc = make_tensor(cO.data(), acc_rowcol(cO.layout()));
  constexpr int kRows = decltype(size<0>(o_rc))::value;
  float row_max[kRows], row_sum[kRows];
  CUTE_UNROLL
  for (int r = 0; r < kRows; ++r) {
    row_max[r] = -INFINITY;
    row_sum[r] = 0.f;
  }
  const float sl2 = p.scale_log2;

  load_tile(gQ, sQ, sq - q0, t);
  const int n_tiles = kv.empty() ? 0 : kv.end - kv.begin;
  if (n_tiles > 0) load_tile(gK(_, _, kv.end - 1), sK, sk - (kv.end - 1) * kBlockN, t);
  cp_async_fence();

  for (int i = 0; i < n_tiles; ++i) {
    const int n = kv.end - 1 - i;  // boundary tiles first, as on sm_90a
    const int k0 = n * kBlockN;
    cp_async_wait<0>();
    __syncthreads();  // Q/K landed; every warp is done with the previous V
    load_tile(gV(_, _, n), sV, sk - k0, t);
    cp_async_fence();

    Tensor acc_s = partition_fragment_C(mma, Shape<BM, BN>{});
    clear(acc_s);
    CUTE_UNROLL
    for (int kb = 0; kb < size<2>(rQ); ++kb) {
      copy(copy_a, sQ_s(_, _, kb), rQ_v(_, _, kb));
      copy(copy_b, sK_s(_, _, kb), rK_v(_, _, kb));
      gemm(mma, rQ(_, _, kb), rK(_, _, kb), acc_s);
    }
    Tensor s = make_tensor(acc_s.data(), acc_rowcol(acc_s.layout()));
    CUTE_UNROLL
    for (int j = 0; j < size(acc_s); ++j) acc_s(j) *= sl2;
    if (!sched.tile_is_full(q0, q0 + kBlockM, k0, k0 + kBlockN)) {
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
    CUTE_UNROLL
    for (int r = 0; r < size<0>(s); ++r) {
      float mx = row_max[r];
      CUTE_UNROLL
      for (int c = 0; c < size<1>(s); ++c) mx = fmaxf(mx, s(r, c));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float base = mx == -INFINITY ? 0.f : mx;
      const float alpha = fast_exp2(row_max[r] - base);
      row_max[r] = mx;
      float sum = 0.f;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(s); ++c) {
        const float e = fast_exp2(s(r, c) - base);
        s(r, c) = e;
        sum += e;
      }
      row_sum[r] = row_sum[r] * alpha + sum;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(o_rc); ++c) o_rc(r, c) *= alpha;
    }
    constexpr int N = decltype(size(acc_s))::value;
    Tensor p_regs = make_tensor<Element>(acc_s.layout());
    cutlass::NumericArrayConverter<Element, float, N> conv;
    *reinterpret_cast<cutlass::Array<Element, N>*>(p_regs.data()) =
        conv(*reinterpret_cast<const cutlass::Array<float, N>*>(acc_s.data()));
    Tensor p_a = make_tensor(p_regs.data(), acc_as_a_operand(p_regs.layout()));

    cp_async_wait<0>();
    __syncthreads();  // V landed; every warp is done with K
    if (i + 1 < n_tiles) {
      load_tile(gK(_, _, n - 1), sK, sk - (n - 1) * kBlockN, t);
      cp_async_fence();
    }
    CUTE_UNROLL
    for (int kb = 0; kb < size<2>(p_a); ++kb) {
      copy(copy_vt, sVt_s(_, _, kb), rVt_v(_, _, kb));
      gemm(mma, p_a(_, _, kb), rVt(_, _, kb), acc_o);
    }
  }

  cp_async_wait<0>();  // the Q load of a tile that visits no key tile

  Element* out = p.out + b_off_o + int64_t(hq) * p.o_hs;
  CUTE_UNROLL
  for (int r = 0; r < kRows; ++r) {
    float l = row_sum[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int qi = q0 + get<0>(cO_rc(r, 0));
    if (qi >= sq) continue;
    Element* row = out + int64_t(q_base + qi) * p.o_ts;
    CUTE_UNROLL
    for (int c = 0; c < size<1>(o_rc); c += 2) {
      cutlass::Array<Element, 2> pair;
      pair[0] = Element(o_rc(r, c) * inv);
      pair[1] = Element(o_rc(r, c + 1) * inv);
      *reinterpret_cast<cutlass::Array<Element, 2>*>(row + get<1>(cO_rc(r, c))) = pair;
    }
    if (p.lse != nullptr && (t % 4) == 0)
      p.lse[b_off_l + int64_t(q_base + qi) * p.l_ts + int64_t(hq) * p.l_hs] =
          l > 0.f ? (row_max[r] + log2f(l)) * 0.6931471805599453f : -INFINITY;
  }
#endif
}

template <class K>
void launch_fwd(const FmhaProblem& p, void* stream) {
  static std::atomic<unsigned long long> configured{0};
  int dev = 0;
  cudaGetDevice(&dev);
  const unsigned long long bit = 1ull << (dev & 63);
  if (!(configured.load() & bit)) {
    const cudaError_t e = cudaFuncSetAttribute(fmha_fwd_mma_kernel<K>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, K::kSmemBytes);
    if (e != cudaSuccess)
      throw Error(ErrorCode::DeviceError, std::string("attention: cudaFuncSetAttribute failed: ") +
                                              cudaGetErrorString(e));
    configured.fetch_or(bit);
  }
  fmha_fwd_mma_kernel<K><<<K::grid(p), K::kThreads, K::kSmemBytes, static_cast<cudaStream_t>(stream)>>>(
      K::make_params(p));
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw Error(ErrorCode::DeviceError, std::string("attention (mma-sync forward): kernel launch failed: ") +
                                            cudaGetErrorString(e));
}

}  // namespace attnkit::cuda::mma
