// Host-side checks of the register and shared-memory layouts the sm_90a kernels
// rely on, computed with CuTe on the CPU (no GPU needed; nvcc compiles it):
//  * WGMMA accumulator rows/cols views (acc_rowcol): a thread's row is constant
//    along its columns, the 4 threads of a quad share rows and together cover
//    every column once (what quad_max / quad_sum assume), and columns come in
//    adjacent pairs (the epilogues' 4-byte stores);
//  * acc_as_a_operand: the S / P^T / dS^T accumulator reinterpreted as the
//    register A operand of the next WGMMA addresses exactly the same (row, k)
//    element in every thread and value slot;
//  * transposed_view: the MN-major views of K-major tiles address the same bytes.
// Built and run by tests/test_cuda_host.py; prints "N passed, M failed".
#include <cstdio>
#include <set>
#include <utility>

#include "sm100/fmha_fwd_mma.cuh"
#include "sm90/fmha_bwd.cuh"
#include "sm90/fmha_fwd.cuh"

using namespace cute;
namespace sm90 = attnkit::cuda::sm90;
namespace mma = attnkit::cuda::mma;

// The fragment views of each kernel family.
struct Sm90Views {
  template <class L> static constexpr auto rowcol(L const& l) { return sm90::acc_rowcol(l); }
  template <class L> static constexpr auto as_a(L const& l) { return sm90::acc_as_a_operand(l); }
};
struct MmaViews {
  template <class L> static constexpr auto rowcol(L const& l) { return mma::acc_rowcol(l); }
  template <class L> static constexpr auto as_a(L const& l) { return mma::acc_as_a_operand(l); }
};

static int g_pass = 0, g_fail = 0;
#define CHECK(cond, ...)                                              \
  do {                                                                \
    if (cond) ++g_pass;                                               \
    else {                                                            \
      if (++g_fail < 20) {                                            \
        std::printf("FAIL %s:%d %s: ", __FILE__, __LINE__, #cond);    \
        std::printf(__VA_ARGS__);                                     \
        std::printf("\n");                                            \
      }                                                               \
    }                                                                 \
  } while (0)

// Rows/cols view of a (64 x N) accumulator of TiledMma, per thread.
template <class TiledMma, int M, int N, class V = Sm90Views>
void check_accumulator(const char* what) {
  TiledMma mma;
  std::set<std::pair<int, int>> all;
  for (int quad = 0; quad < 32; ++quad) {
    std::set<int> rows_of_quad[2];
    std::set<int> cols_of_row[2];
    for (int lane4 = 0; lane4 < 4; ++lane4) {
      const int t = quad * 4 + lane4;
      Tensor c = mma.get_thread_slice(t).partition_C(make_identity_tensor(Shape<Int<M>, Int<N>>{}));
      Tensor rc = make_tensor(c.data(), V::rowcol(c.layout()));
      CHECK(size<0>(rc) == 2, "%s: %d rows per thread", what, int(size<0>(rc)));
      for (int r = 0; r < size<0>(rc); ++r) {
        const int row = get<0>(rc(r, 0));
        rows_of_quad[r].insert(row);
        for (int cc = 0; cc < size<1>(rc); ++cc) {
          CHECK(get<0>(rc(r, cc)) == row, "%s: row varies along a thread's row", what);
          const int col = get<1>(rc(r, cc));
          CHECK(cols_of_row[r].insert(col).second, "%s: column %d twice in a quad row", what, col);
          all.insert({get<0>(rc(r, cc)), col});
          if (cc % 2 == 1) CHECK(col == get<1>(rc(r, cc - 1)) + 1, "%s: columns not in adjacent pairs", what);
        }
      }
    }
    for (int r = 0; r < 2; ++r) {
      CHECK(rows_of_quad[r].size() == 1, "%s: quad %d does not share row %d", what, quad, r);
      CHECK(int(cols_of_row[r].size()) == N, "%s: quad row covers %d of %d columns", what,
            int(cols_of_row[r].size()), N);
    }
  }
  CHECK(int(all.size()) == M * N, "%s: accumulator covers %d of %d elements", what, int(all.size()), M * N);
}

// The accumulator of MmaC (64 x K) reused as the register A operand of MmaA.
template <class MmaC, class MmaA, int M, int K, class V = Sm90Views>
void check_acc_as_a(const char* what) {
  MmaC mc;
  MmaA ma;
  for (int t = 0; t < 128; ++t) {
    Tensor c = mc.get_thread_slice(t).partition_C(make_identity_tensor(Shape<Int<M>, Int<K>>{}));
    Tensor as_a = make_tensor(c.data(), V::as_a(c.layout()));
    Tensor a = ma.get_thread_slice(t).partition_A(make_identity_tensor(Shape<Int<M>, Int<K>>{}));
    CHECK(size(as_a) == size(a), "%s: %d vs %d values", what, int(size(as_a)), int(size(a)));
    CHECK(size<0>(as_a) == size<0>(a) && size<2>(as_a) == size<2>(a), "%s: fragment shapes differ", what);
    for (int v = 0; v < size<0>(a); ++v)
      for (int k = 0; k < size<2>(a); ++k)
        CHECK(as_a(v, 0, k) == a(v, 0, k), "%s: t=%d v=%d k=%d: C(%d,%d) vs A(%d,%d)", what, t, v, k,
              int(get<0>(as_a(v, 0, k))), int(get<1>(as_a(v, 0, k))), int(get<0>(a(v, 0, k))),
              int(get<1>(a(v, 0, k))));
  }
}

template <class L, class Lt>
void check_transposed(const char* what) {
  L l;
  Lt lt;
  constexpr int R = decltype(rank(l))::value;
  const int m = size<0>(l), n = size<1>(l);
  int s = 1;
  if constexpr (R == 3) s = int(size<2>(l));
  bool ok = true;
  for (int k = 0; k < s && ok; ++k)
    for (int i = 0; i < m && ok; ++i)
      for (int j = 0; j < n && ok; ++j) {
        if constexpr (R == 3) ok = l(i, j, k) == lt(j, i, k);
        else ok = l(i, j) == lt(j, i);
      }
  CHECK(ok, "%s: transposed view addresses other elements", what);
}

template <class E, int D, int BN, int S>
void check_fwd(const char* name) {
  using K = sm90::FwdKernel<E, D, BN, S>;
  check_accumulator<typename K::TiledMmaQK, 64, BN>(name);
  check_accumulator<typename K::TiledMmaPV, 64, D>(name);
  check_acc_as_a<typename K::TiledMmaQK, typename K::TiledMmaPV, 64, BN>(name);
  check_transposed<typename K::SmemLayoutKV, typename K::SmemLayoutVt>(name);
  CHECK(K::kSmemBytes <= 227 * 1024, "%s smem", name);
}

template <class E, int D>
void check_bwd(const char* name) {
  using K = sm90::BwdKernel<E, D, 2>;
  check_accumulator<typename K::TiledMmaSdP, 64, 64>(name);
  check_accumulator<typename K::TiledMmadKV, 64, D>(name);
  check_accumulator<typename K::TiledMmadQ, 64, K::kDqCols>(name);
  check_acc_as_a<typename K::TiledMmaSdP, typename K::TiledMmadKV, 64, 64>(name);
  check_transposed<typename K::SmemLayoutKV, typename K::SmemLayoutKt>(name);
  check_transposed<typename K::SmemLayoutQ, typename K::SmemLayoutQt>(name);
  check_transposed<typename K::SmemLayoutdS, typename K::SmemLayoutdSt>(name);
}

template <class E, int D>
void check_mma_fwd(const char* name) {
  using K = mma::FwdKernel<E, D>;
  check_accumulator<typename K::TiledMma, 64, 64, MmaViews>(name);
  check_accumulator<typename K::TiledMma, 64, D, MmaViews>(name);
  check_acc_as_a<typename K::TiledMma, typename K::TiledMma, 64, 64, MmaViews>(name);
  check_transposed<typename K::SmemLayoutKV, typename K::SmemLayoutVt>(name);
}

int main() {
  check_mma_fwd<cutlass::bfloat16_t, 128>("mma fwd bf16 hd128");
  check_mma_fwd<cutlass::half_t, 64>("mma fwd fp16 hd64");
  check_mma_fwd<cutlass::bfloat16_t, 32>("mma fwd bf16 hd32");
  check_mma_fwd<cutlass::bfloat16_t, 96>("mma fwd bf16 hd96");
  check_mma_fwd<cutlass::bfloat16_t, 256>("mma fwd bf16 hd256");
  check_fwd<cutlass::bfloat16_t, 128, 128, 2>("fwd bf16 hd128");
  check_fwd<cutlass::half_t, 64, 128, 2>("fwd fp16 hd64");
  check_fwd<cutlass::bfloat16_t, 32, 128, 2>("fwd bf16 hd32");
  check_fwd<cutlass::bfloat16_t, 96, 128, 2>("fwd bf16 hd96");
  check_fwd<cutlass::bfloat16_t, 192, 96, 2>("fwd bf16 hd192");
  check_fwd<cutlass::bfloat16_t, 256, 64, 2>("fwd bf16 hd256");
  check_bwd<cutlass::bfloat16_t, 128>("bwd bf16 hd128");
  check_bwd<cutlass::half_t, 64>("bwd fp16 hd64");
  check_bwd<cutlass::bfloat16_t, 32>("bwd bf16 hd32");
  check_bwd<cutlass::bfloat16_t, 96>("bwd bf16 hd96");
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}
