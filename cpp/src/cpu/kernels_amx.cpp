// Compiles the "amx" ISA: the avx512 fp32 micro-kernels (kernels_impl.hpp) plus
// the bf16 matrix path on AMX tiles. Flags come from CMake (AVX-512 + AMX-TILE,
// AMX-BF16, AVX512-BF16).
//
// Why AMX: one TDPBF16PS does a 16x16x32 bf16 product (16K FLOPs) per 16
// cycles, ~8x the fp32 FMA rate of a core, so bf16 attention becomes bound by
// its softmax (vector) work instead of its GEMMs. The scores, statistics and
// accumulators stay fp32; only the GEMM operands (q, k, v, P, dS, dO) are bf16,
// as in FlashAttention on GPUs.
#define AK_ISA_NAME "amx"
#define AK_TABLE_FN kernel_table_amx_fp32
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include "kernels.hpp"
namespace attnkit::cpu {
const KernelTable* kernel_table_amx();
}
namespace attnkit::cpu::isa_amx {
#include "kernels_impl.hpp"

namespace {

// Tile configuration: all eight tile registers are 16 rows x 64 bytes. Tiles
// 0-3 hold a 32x32 block of C (fp32), 4-5 two 16x32 slices of A (bf16), 6-7
// two 32x16 slices of B (bf16 VNNI: 16 rows of 16 column-pairs).
struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

void tiles_begin() {
  static const TileConfig cfg = [] {
    TileConfig c;
    for (int i = 0; i < 8; ++i) {
      c.colsb[i] = 64;
      c.rows[i] = 16;
    }
    return c;
  }();
  _tile_loadconfig(&cfg);
}

void tiles_end() { _tile_release(); }

// One MB x NB block of 16x16 C tiles (MB, NB in {1, 2}) over the whole K.
// A's 32-wide k slices start a_ks elements apart (32 for a row-major A).
template <int MB, int NB>
inline void tile_block(int64_t K, const uint16_t* A, int64_t lda, int64_t a_ks, const uint16_t* B,
                       int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  const int64_t sa = lda * 2, sb = ldb * 2, sc = ldc * 4;  // byte strides
  if (accumulate) {
    _tile_loadd(0, C, sc);
    if constexpr (NB == 2) _tile_loadd(1, C + 16, sc);
    if constexpr (MB == 2) _tile_loadd(2, C + 16 * ldc, sc);
    if constexpr (MB == 2 && NB == 2) _tile_loadd(3, C + 16 * ldc + 16, sc);
  } else {
    _tile_zero(0);
    if constexpr (NB == 2) _tile_zero(1);
    if constexpr (MB == 2) _tile_zero(2);
    if constexpr (MB == 2 && NB == 2) _tile_zero(3);
  }
  for (int64_t k0 = 0; k0 < K; k0 += 32) {
    const uint16_t* a = A + (k0 / 32) * a_ks;
    const uint16_t* b = B + (k0 / 2) * ldb;
    _tile_loadd(4, a, sa);
    _tile_loadd(6, b, sb);
    if constexpr (NB == 2) _tile_loadd(7, b + 32, sb);
    if constexpr (MB == 2) _tile_loadd(5, a + 16 * lda, sa);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (NB == 2) _tile_dpbf16ps(1, 4, 7);
    if constexpr (MB == 2) _tile_dpbf16ps(2, 5, 6);
    if constexpr (MB == 2 && NB == 2) _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, C, sc);
  if constexpr (NB == 2) _tile_stored(1, C + 16, sc);
  if constexpr (MB == 2) _tile_stored(2, C + 16 * ldc, sc);
  if constexpr (MB == 2 && NB == 2) _tile_stored(3, C + 16 * ldc + 16, sc);
}

void tile_gemm_ks(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda, int64_t a_ks,
                  const uint16_t* B, int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  for (int64_t m0 = 0; m0 < M; m0 += 32) {
    const bool m2 = M - m0 >= 32;
    for (int64_t n0 = 0; n0 < N; n0 += 32) {
      const bool n2 = N - n0 >= 32;
      const uint16_t* a = A + m0 * lda;
      const uint16_t* b = B + 2 * n0;
      float* c = C + m0 * ldc + n0;
      if (m2 && n2) tile_block<2, 2>(K, a, lda, a_ks, b, ldb, c, ldc, accumulate);
      else if (m2) tile_block<2, 1>(K, a, lda, a_ks, b, ldb, c, ldc, accumulate);
      else if (n2) tile_block<1, 2>(K, a, lda, a_ks, b, ldb, c, ldc, accumulate);
      else tile_block<1, 1>(K, a, lda, a_ks, b, ldb, c, ldc, accumulate);
    }
  }
}

void tile_gemm(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda, const uint16_t* B,
               int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  tile_gemm_ks(M, N, K, A, lda, 32, B, ldb, C, ldc, accumulate);
}

// 2^x for the bf16 path, where probabilities are rounded to 8 bits anyway:
// degree-4 polynomial on the rounded split x = n + f (relative error 2.6e-6,
// fitted here for |f| <= 1/2) and VSCALEFPS for the 2^n. x < -125 (masked -inf
// included) gives exactly 0 through a zeroing mask rather than an underflowing
// scalef: a result below FLT_MIN costs a microcode assist per element (no FTZ),
// which made score tiles that are mostly masked (neighborhood attention) ~10x
// slower. NaN stays NaN (the unordered compare keeps it).
inline vf exp2_bf16(vf xv) {
  __m512 x = reinterpret_cast<__m512>(xv);
  const __m512 lo = _mm512_set1_ps(-125.f);
  const __mmask16 live = _mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ);
  x = _mm512_mask_mov_ps(x, static_cast<__mmask16>(~live), lo);
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(9.571164590e-03f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.591795666e-02f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402471869e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931217968e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.999992692e-01f));
  return reinterpret_cast<vf>(_mm512_maskz_scalef_ps(live, p, n));
}

// Two fp32 vectors of 16 lanes -> 32 bf16 (round to nearest even).
inline __m512i to_bf16(vf lo, vf hi) {
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(reinterpret_cast<__m512>(hi),
                                                       reinterpret_cast<__m512>(lo)));
}

// Index that interleaves the halves of a 32 x bf16 vector: out[2i] = in[i],
// out[2i+1] = in[16+i] -- rows j and j+1 of P^T become one VNNI row.
inline __m512i interleave_index() {
  alignas(64) static const uint16_t idx[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,
                                               21, 6, 22, 7, 23, 8,  24, 9,  25, 10, 26,
                                               11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  return _mm512_load_si512(idx);
}

// Scores may exceed the running max by up to 2^kSlack before the reference max
// must move: probabilities stay <= 256, far from fp32/bf16 overflow, and most
// chunks then need neither a separate max pass nor a rescale of O.
constexpr float kSlack = 8.f;

bool softmax_step_vnni(const float* S, int64_t nk, float c, float* m, float* l, float* alpha,
                       uint16_t* P) {
  const __m512i ilv = interleave_index();
  vf ref[kQV], sum[kQV];
  bool all_finite = true;
  for (int v = 0; v < kQV; ++v) {
    ref[v] = loadu(m + 16 * v);
    vi fin = ref[v] != splat(-INFINITY);
    for (int i = 0; i < 16; ++i) all_finite &= fin[i] != 0;
  }
  if (all_finite) {
    // One pass against the current reference max, watching the chunk's max.
    vf mx[kQV];
    for (int v = 0; v < kQV; ++v) mx[v] = splat(-INFINITY), sum[v] = splat(0.f);
    for (int64_t j = 0; j < nk; j += 2) {
      uint16_t* row = P + (j / 2) * 2 * kQ;
      for (int v = 0; v < kQV; ++v) {
        const vf s0 = loadu(S + j * kQ + 16 * v) * c, s1 = loadu(S + (j + 1) * kQ + 16 * v) * c;
        mx[v] = vmax(mx[v], vmax(s0, s1));
        const vf p0 = exp2_bf16(s0 - ref[v]), p1 = exp2_bf16(s1 - ref[v]);
        sum[v] += p0 + p1;
        _mm512_storeu_si512(row + 32 * v, _mm512_permutexvar_epi16(ilv, to_bf16(p0, p1)));
      }
    }
    bool ok = true;
    for (int v = 0; v < kQV; ++v) {
      vi big = mx[v] > ref[v] + kSlack;
      for (int i = 0; i < 16; ++i) ok &= big[i] == 0;
    }
    if (ok) {
      for (int v = 0; v < kQV; ++v) {
        storeu(l + 16 * v, loadu(l + 16 * v) + sum[v]);
        storeu(alpha + 16 * v, splat(1.f));
      }
      return false;
    }
  }
  // Two passes: the chunk's max first, then the probabilities against it.
  vf mx[kQV];
  for (int v = 0; v < kQV; ++v) mx[v] = splat(-INFINITY);
  for (int64_t j = 0; j < nk; ++j)
    for (int v = 0; v < kQV; ++v) mx[v] = vmax(mx[v], loadu(S + j * kQ + 16 * v));
  vf use[kQV];
  bool rescale = false;
  for (int v = 0; v < kQV; ++v) {
    const vf old = loadu(m + 16 * v);
    const vf mnew = vmax(old, mx[v] * c);
    // A row that has seen only masked keys keeps max -inf; subtract 0 instead.
    use[v] = mnew == splat(-INFINITY) ? splat(0.f) : mnew;
    const vf a = exp2v(old - use[v]);
    storeu(alpha + 16 * v, a);
    storeu(m + 16 * v, mnew);
    vi ne = a != splat(1.f);
    for (int i = 0; i < 16; ++i) rescale |= ne[i] != 0;
    sum[v] = splat(0.f);
  }
  for (int64_t j = 0; j < nk; j += 2) {
    uint16_t* row = P + (j / 2) * 2 * kQ;
    for (int v = 0; v < kQV; ++v) {
      const vf p0 = exp2_bf16(loadu(S + j * kQ + 16 * v) * c - use[v]);
      const vf p1 = exp2_bf16(loadu(S + (j + 1) * kQ + 16 * v) * c - use[v]);
      sum[v] += p0 + p1;
      _mm512_storeu_si512(row + 32 * v, _mm512_permutexvar_epi16(ilv, to_bf16(p0, p1)));
    }
  }
  for (int v = 0; v < kQV; ++v)
    storeu(l + 16 * v, loadu(l + 16 * v) * loadu(alpha + 16 * v) + sum[v]);
  return rescale;
}

void softmax_grad_bf16(const float* S, const float* dP, int64_t nk, float c, const float* lse2,
                       const float* delta, float ds_scale, const float* cap_grad, uint16_t* P,
                       uint16_t* dS, uint16_t* dS_vnni) {
  vf L[kQV], D[kQV];
  for (int v = 0; v < kQV; ++v) {
    L[v] = loadu(lse2 + 16 * v);
    D[v] = loadu(delta + 16 * v);
  }
  const __m512i ilv = interleave_index();
  for (int64_t j = 0; j < nk; j += 2) {
    vf p[2][kQV], ds[2][kQV];
    for (int r = 0; r < 2; ++r)
      for (int v = 0; v < kQV; ++v) {
        const int64_t o = (j + r) * kQ + 16 * v;
        p[r][v] = exp2_bf16(loadu(S + o) * c - L[v]);
        ds[r][v] = p[r][v] * (loadu(dP + o) - D[v]) * ds_scale;
        if (cap_grad) ds[r][v] *= loadu(cap_grad + o);
      }
    for (int r = 0; r < 2; ++r)
      for (int v = 0; v < kQV; v += 2) {
        const int64_t o = (j + r) * kQ + 16 * v;
        _mm512_storeu_si512(P + o, to_bf16(p[r][v], p[r][v + 1]));
        _mm512_storeu_si512(dS + o, to_bf16(ds[r][v], ds[r][v + 1]));
      }
    uint16_t* row = dS_vnni + (j / 2) * 2 * kQ;
    for (int v = 0; v < kQV; ++v)
      _mm512_storeu_si512(row + 32 * v,
                          _mm512_permutexvar_epi16(ilv, to_bf16(ds[0][v], ds[1][v])));
  }
}

const Bf16Kernels kBf16{tiles_begin,       tiles_end,        tile_gemm, tile_gemm_ks,
                        softmax_step_vnni, softmax_grad_bf16};

}  // namespace
}  // namespace attnkit::cpu::isa_amx

namespace attnkit::cpu {
const KernelTable* kernel_table_amx() {
  static const KernelTable table = [] {
    KernelTable t = *isa_amx::kernel_table_amx_fp32();
    t.bf16 = &isa_amx::kBf16;
    return t;
  }();
  return &table;
}
}  // namespace attnkit::cpu
