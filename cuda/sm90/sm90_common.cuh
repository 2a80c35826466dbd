// attnkit CUDA backend, sm_90a: small CuTe helpers shared by the forward and
// backward kernels (layouts of WGMMA fragments, register conversions, fast
// exp2, quad reductions, bulk async reductions).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <string>

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/cutlass.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/numeric_types.h>
#include <cutlass/pipeline/pipeline.hpp>

#include "attnkit/error.hpp"
#include "../common/schedule.hpp"
#include "problem.hpp"

// WGMMA and setmaxnreg exist only in the arch-specific sm_90a target; kernels
// compiled for anything else become empty stubs (the host never launches them).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define AK_SM90_ENABLED 1
#endif

namespace attnkit::cuda::sm90 {

using namespace cute;

// K-major shared-memory atom for a tile whose contiguous extent is `kExtent`
// elements: the widest swizzle whose row fits (128 B rows when kExtent % 64 == 0
// for 16-bit types), so TMA writes and WGMMA reads are bank-conflict free.
template <class Element, int kExtent>
CUTE_HOST_DEVICE constexpr auto smem_atom_k() {
  if constexpr (kExtent % 64 == 0) return GMMA::Layout_K_SW128_Atom<Element>{};
  else if constexpr (kExtent % 32 == 0) return GMMA::Layout_K_SW64_Atom<Element>{};
  else {
    static_assert(kExtent % 16 == 0, "head_dim must be a multiple of 16");
    return GMMA::Layout_K_SW32_Atom<Element>{};
  }
}
template <class Element, int kExtent>
CUTE_HOST_DEVICE constexpr auto smem_atom_mn() {
  if constexpr (kExtent % 64 == 0) return GMMA::Layout_MN_SW128_Atom<Element>{};
  else if constexpr (kExtent % 32 == 0) return GMMA::Layout_MN_SW64_Atom<Element>{};
  else return GMMA::Layout_MN_SW32_Atom<Element>{};
}

// The same shared memory seen with its first two modes swapped (rows <-> cols),
// extra modes (stages) kept: WGMMA reads a K-major stored tile as an MN-major
// operand through this view, so no tile is ever transposed in memory.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto transposed_view(Layout const& l) {
  constexpr int R = decltype(rank(l))::value;
  auto m = size<0>(l);
  auto n = size<1>(l);
  if constexpr (R == 2) {
    return composition(l, make_layout(make_shape(n, m), make_stride(m, _1{})));
  } else {
    static_assert(R == 3);
    return composition(l, make_layout(make_shape(n, m, size<2>(l)), make_stride(m, _1{}, m * n)));
  }
}

// A WGMMA accumulator fragment ((2, 2, N/8), MMA_M, MMA_N) seen as (rows, cols):
// rows ((2), MMA_M) -- the thread's two rows r and r + 8 -- and cols
// ((2, N/8), MMA_N) -- column pairs of each 8-column group.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_rowcol(Layout const& l) {
  static_assert(decltype(rank<0>(l))::value == 3, "expected a WGMMA accumulator layout");
  static_assert(decltype(size<0, 0>(l))::value == 2 && decltype(size<0, 1>(l))::value == 2);
  return make_layout(make_layout(get<0, 1>(l), get<1>(l)),
                     make_layout(get<0, 0>(l), get<0, 2>(l), get<2>(l)));
}

// The accumulator of S = Q K^T (64 x N, fp32) reused as the register A operand
// of the next WGMMA (64 x K=N): a k16 A fragment holds (col pair, row half,
// k half) = two consecutive 8-column groups of the accumulator, so the layout is
// the accumulator's with its N/8 mode split into (2, N/16).
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_as_a_operand(Layout const& l) {
  static_assert(decltype(size<1>(l))::value == 1 && decltype(size<2>(l))::value == 1);
  constexpr int NG = decltype(size<0, 2>(l))::value;
  static_assert(NG % 2 == 0, "the accumulator's N must be a multiple of 16");
  return make_layout(
      make_shape(make_shape(_2{}, _2{}, _2{}), _1{}, Int<NG / 2>{}),
      make_stride(make_stride(stride<0, 0>(l), stride<0, 1>(l), stride<0, 2>(l)), _0{},
                  stride<0, 2>(l) * _2{}));
}

// fp32 fragment -> Element fragment of the same layout (paired conversions).
template <class To, class Tensor>
CUTE_DEVICE auto convert_fragment(Tensor const& t) {
  using From = typename Tensor::value_type;
  constexpr int N = decltype(size(t))::value;
  auto out = make_tensor<To>(t.layout());
  cutlass::NumericArrayConverter<To, From, N, cutlass::FloatRoundStyle::round_to_nearest> conv;
  *reinterpret_cast<cutlass::Array<To, N>*>(out.data()) =
      conv(*reinterpret_cast<const cutlass::Array<From, N>*>(t.data()));
  return out;
}

// fp32 fragment -> an existing Element fragment of the same size.
template <class From, class To>
CUTE_DEVICE void convert_into(From const& src, To& dst) {
  using S = typename From::value_type;
  using T = typename To::value_type;
  constexpr int N = decltype(size(src))::value;
  static_assert(N == decltype(size(dst))::value);
  cutlass::NumericArrayConverter<T, S, N, cutlass::FloatRoundStyle::round_to_nearest> conv;
  *reinterpret_cast<cutlass::Array<T, N>*>(dst.data()) =
      conv(*reinterpret_cast<const cutlass::Array<S, N>*>(src.data()));
}

CUTE_DEVICE float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Reductions over the 4 threads of a quad, which share the rows of a WGMMA
// accumulator.
CUTE_DEVICE float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
CUTE_DEVICE float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// One WGMMA over all k-blocks: C = A B (zero_init) or C += A B.
template <class TiledMma, class TA, class TB, class TC>
CUTE_DEVICE void wgmma(TiledMma& mma, TA const& a, TB const& b, TC& c, bool zero_init) {
  constexpr int kBlocks = decltype(size<2>(a))::value;
  static_assert(kBlocks == decltype(size<2>(b))::value);
  warpgroup_fence_operand(c);
  warpgroup_arrive();
  mma.accumulate_ = zero_init ? GMMA::ScaleOut::Zero : GMMA::ScaleOut::One;
  CUTE_UNROLL
  for (int k = 0; k < kBlocks; ++k) {
    cute::gemm(mma, a(_, _, k), b(_, _, k), c);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_fence_operand(c);
}

// After warpgroup_wait: the registers WGMMA wrote (accumulators) or read
// asynchronously (register A operands) are pinned here, so the compiler neither
// reads an accumulator before the wait nor reuses an operand's registers early.
template <class... Ts>
CUTE_DEVICE void fence_operands(Ts&... ts) {
  (warpgroup_fence_operand(ts), ...);
}

// Named barriers: id 0 is __syncthreads; ids from 1 are ours.
CUTE_DEVICE void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

CUTE_DEVICE void named_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// Shared memory written by ordinary stores, read next by WGMMA or the bulk copy
// engine, needs this proxy fence in every writing thread before the barrier.
CUTE_DEVICE void fence_smem_for_async() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

// gmem[0..bytes) += smem[0..bytes) (fp32, element-wise atomic), asynchronous in
// a bulk group of the issuing thread.
CUTE_DEVICE void bulk_reduce_add_f32(float* gmem, const float* smem, int bytes) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile(
      "cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;" ::"l"(gmem),
      "r"(s), "r"(bytes)
      : "memory");
}
CUTE_DEVICE void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
// Waits until the issuing thread's bulk groups have read their shared memory.
CUTE_DEVICE void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory"); }
CUTE_DEVICE void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }

// The batch stride TMA is given for a batch of one (varlen's packed tensors
// have none): any non-zero multiple of 16 bytes does, as the coordinate is
// always 0; a runtime 0 would reach cuTensorMapEncodeTiled as a zero stride.
inline int64_t unused_batch_stride(const Operand& o, int64_t tokens, int64_t heads) {
  const int64_t s = tokens * o.token_stride + heads * o.head_stride;
  return s > 0 ? s : 8;
}

// Host side: a launch error becomes attnkit::Error (launches never synchronise).
inline void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw Error(ErrorCode::DeviceError,
                std::string(what) + ": kernel launch failed: " + cudaGetErrorString(e));
}

template <class Kernel>
inline void set_smem_limit(Kernel kernel, int bytes, const char* what) {
  // Once per kernel and process; not a synchronisation.
  const cudaError_t e =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e != cudaSuccess)
    throw Error(ErrorCode::DeviceError, std::string(what) + ": cudaFuncSetAttribute(" +
                                            std::to_string(bytes) + " B smem) failed: " +
                                            cudaGetErrorString(e));
}

// The dynamic shared-memory limit is a per-device attribute of the function:
// set it the first time a device launches the kernel.
template <class Kernel>
inline void set_smem_limit_once(Kernel kernel, int bytes, std::atomic<unsigned long long>& done,
                                const char* what) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) check_launch(what);
  const unsigned long long bit = 1ull << (dev & 63);
  if (done.load(std::memory_order_acquire) & bit) return;
  set_smem_limit(kernel, bytes, what);
  done.fetch_or(bit, std::memory_order_acq_rel);
}

}  // namespace attnkit::cuda::sm90
