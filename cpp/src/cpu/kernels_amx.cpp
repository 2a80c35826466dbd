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

#include <algorithm>
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

// ---- gather GEMMs for one 16-column block of B and C (a query vector) ----
// Operand tiles alternate between two registers: a tile load into a register
// that an earlier TDPBF16PS still reads waits for it (no renaming), measured
// ~2x slower than alternating.

// The tile intrinsics take register numbers as literals (they are pasted into
// the instruction), so the register variants below are spelled out by macros.

// One 16 x 16 block of C = A[16 x K] x B[K x 16] in C register CT. With B
// resident (K <= 64) it sits in registers 6 and 7; else it is loaded per step.
#define AK_GATHER_M_BLOCK(CT)                              \
  _tile_zero(CT);                                          \
  for (int64_t k0 = 0; k0 < K; k0 += 64) {                 \
    _tile_loadd(4, a + k0, sa);                            \
    if (!resident) _tile_loadd(6, B + (k0 / 2) * ldb, sb); \
    _tile_dpbf16ps(CT, 4, 6);                              \
    if (k0 + 32 < K) {                                     \
      _tile_loadd(5, a + k0 + 32, sa);                     \
      if (!resident) _tile_loadd(7, B + (k0 / 2 + 16) * ldb, sb); \
      _tile_dpbf16ps(CT, 5, 7);                            \
    }                                                      \
  }                                                        \
  _tile_stored(CT, c, sc);

// For each piece i and each 16-row block t of it: C rows [r, r + 16) =
// A_i rows [16 t, 16 t + 16) (lda apart) x B[K x 16], r counting on over the
// pieces. C blocks alternate between two registers, so that the next block's
// products need not wait for the store of the previous one.
void tile_gemm_gather_m(int np, const uint16_t* const* A, const int64_t* M, int64_t lda, int64_t K,
                        const uint16_t* B, int64_t ldb, float* C, int64_t ldc) {
  const int64_t sa = lda * 2, sb = ldb * 2, sc = ldc * 4;
  const bool resident = K <= 64;
  if (resident) {
    _tile_loadd(6, B, sb);
    if (K > 32) _tile_loadd(7, B + 16 * ldb, sb);
  }
  int64_t row = 0;
  for (int i = 0; i < np; ++i)
    for (int64_t t = 0; t < M[i]; t += 16, row += 16) {
      const uint16_t* a = A[i] + t * lda;
      float* c = C + row * ldc;
      if ((row / 16) % 2 == 0) {
        AK_GATHER_M_BLOCK(0)
      } else {
        AK_GATHER_M_BLOCK(1)
      }
    }
}
#undef AK_GATHER_M_BLOCK

// One 32-deep step of up to four 16 x 16 blocks of C (registers 0-3): B in
// register BT, the A blocks alternating between registers 4 and 5.
#define AK_GATHER_K_STEP(BT)            \
  _tile_loadd(BT, b, sb);               \
  _tile_loadd(4, a, sa);                \
  _tile_dpbf16ps(0, 4, BT);             \
  if (mt > 1) {                         \
    _tile_loadd(5, a + 16 * lda, sa);   \
    _tile_dpbf16ps(1, 5, BT);           \
  }                                     \
  if (mt > 2) {                         \
    _tile_loadd(4, a + 32 * lda, sa);   \
    _tile_dpbf16ps(2, 4, BT);           \
  }                                     \
  if (mt > 3) {                         \
    _tile_loadd(5, a + 48 * lda, sa);   \
    _tile_dpbf16ps(3, 5, BT);           \
  }

// C[M x 16] (+)= sum over pieces i of A_i[M x K_i] x B_i, A_i stored in 32-wide k
// slices a_ks apart (like tile_gemm_ks), B_i the next K_i / 2 VNNI rows of B.
// Up to four 16-row blocks of C stay in tile registers over all pieces.
void tile_gemm_gather_k(int64_t M, int np, const uint16_t* const* A, const int64_t* K, int64_t lda,
                        int64_t a_ks, const uint16_t* B, int64_t ldb, float* C, int64_t ldc,
                        bool accumulate) {
  const int64_t sa = lda * 2, sb = ldb * 2, sc = ldc * 4;
  for (int64_t m0 = 0; m0 < M; m0 += 64) {
    const int mt = static_cast<int>(std::min<int64_t>(4, (M - m0) / 16));
    float* c = C + m0 * ldc;
    if (accumulate) {
      _tile_loadd(0, c, sc);
      if (mt > 1) _tile_loadd(1, c + 16 * ldc, sc);
      if (mt > 2) _tile_loadd(2, c + 32 * ldc, sc);
      if (mt > 3) _tile_loadd(3, c + 48 * ldc, sc);
    } else {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
    }
    const uint16_t* b = B;
    int step = 0;
    for (int i = 0; i < np; ++i)
      for (int64_t k0 = 0; k0 < K[i]; k0 += 32, b += 16 * ldb, ++step) {
        const uint16_t* a = A[i] + (k0 / 32) * a_ks + m0 * lda;
        if (step % 2 == 0) {
          AK_GATHER_K_STEP(6)
        } else {
          AK_GATHER_K_STEP(7)
        }
      }
    _tile_stored(0, c, sc);
    if (mt > 1) _tile_stored(1, c + 16 * ldc, sc);
    if (mt > 2) _tile_stored(2, c + 32 * ldc, sc);
    if (mt > 3) _tile_stored(3, c + 48 * ldc, sc);
  }
}
#undef AK_GATHER_K_STEP

// C_v[M x 16] (+)= sum over the pieces i whose bits hold v of A_i[M x K_i] x the
// P^T rows of piece i, lanes of v (see Bf16Kernels::tile_gemm_vectors). Per
// 16-row block of C, the blocks of all vectors stay in registers 0-3 (register
// v for vector v) over all pieces; each A block is loaded once for every vector
// that uses it. A alternates between registers 4 and 5, B between 6 and 7.
#define AK_TDP_V(V, AR, BR)            \
  switch (V) {                         \
    case 0: _tile_dpbf16ps(0, AR, BR); break; \
    case 1: _tile_dpbf16ps(1, AR, BR); break; \
    case 2: _tile_dpbf16ps(2, AR, BR); break; \
    default: _tile_dpbf16ps(3, AR, BR); break; \
  }
void tile_gemm_vectors(int64_t M, int np, const uint16_t* const* A, const int64_t* K,
                       const int64_t* row, const uint32_t* bits, int64_t a_ks, const uint16_t* B,
                       int64_t ldb, float* C, int64_t ldc) {
  constexpr int64_t lda = 32;
  const int64_t sa = lda * 2, sb = ldb * 2, sc = ldc * 4;
  uint32_t any = 0;
  for (int i = 0; i < np; ++i) any |= bits[i];
  for (int64_t m0 = 0; m0 < M; m0 += 16) {
    float* c = C + m0 * ldc;
    if (any & 1u) _tile_loadd(0, c, sc);
    if (any & 2u) _tile_loadd(1, c + 16, sc);
    if (any & 4u) _tile_loadd(2, c + 32, sc);
    if (any & 8u) _tile_loadd(3, c + 48, sc);
    int ab = 0, bb = 0;
    for (int i = 0; i < np; ++i)
      for (int64_t k0 = 0; k0 < K[i]; k0 += 32, ab ^= 1) {
        const uint16_t* a = A[i] + (k0 / 32) * a_ks + m0 * lda;
        const uint16_t* b = B + ((row[i] + k0) / 2) * ldb;
        if (ab) _tile_loadd(5, a, sa);
        else _tile_loadd(4, a, sa);
        for (uint32_t w = bits[i]; w; w &= w - 1, bb ^= 1) {
          const int v = __builtin_ctz(w);
          if (bb) {
            _tile_loadd(7, b + 32 * v, sb);
            if (ab) { AK_TDP_V(v, 5, 7) } else { AK_TDP_V(v, 4, 7) }
          } else {
            _tile_loadd(6, b + 32 * v, sb);
            if (ab) { AK_TDP_V(v, 5, 6) } else { AK_TDP_V(v, 4, 6) }
          }
        }
      }
    if (any & 1u) _tile_stored(0, c, sc);
    if (any & 2u) _tile_stored(1, c + 16, sc);
    if (any & 4u) _tile_stored(2, c + 32, sc);
    if (any & 8u) _tile_stored(3, c + 48, sc);
  }
}
#undef AK_TDP_V

// 2^x for the bf16 path, where probabilities are rounded to 8 bits anyway:
// degree-3 polynomial on the rounded split x = n + f (relative error 7.5e-5,
// fitted here for |f| <= 1/2; bf16 rounding is 2^-9) and VSCALEFPS for the 2^n.
// x < -125 (masked -inf included) gives exactly 0 through a zeroing mask rather
// than an underflowing scalef: a result below FLT_MIN costs a microcode assist
// per element (no FTZ), which made score tiles that are mostly masked
// (neighborhood attention) ~10x slower. The masked lanes' f may be NaN (-inf -
// -inf); the mask drops it. NaN stays NaN (the unordered compare keeps it).
inline vf exp2_bf16(vf xv) {
  const __m512 x = reinterpret_cast<__m512>(xv);
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-125.f), _CMP_NLT_UQ);
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(5.5171605e-02f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4261111e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9326097e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.9992806e-01f));
  return reinterpret_cast<vf>(_mm512_maskz_scalef_ps(live, p, n));
}

// c * s - ref in one rounding.
inline vf fms(vf s, vf c, vf ref) {
  return reinterpret_cast<vf>(_mm512_fmsub_ps(reinterpret_cast<__m512>(s), reinterpret_cast<__m512>(c),
                                              reinterpret_cast<__m512>(ref)));
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

// The step on the lanes [0, 16 * NV) (pointers offset by the caller; rows of S
// are kQ floats apart, rows of P 2 * kQ halves), over the row pieces
// [r0[i], r0[i] + n[i]) of S and P (even starts and counts).
template <int NV>
bool softmax_vnni_rows(const float* S, int np, const int64_t* r0, const int64_t* n, float c, float* m,
                       float* l, float* alpha, uint16_t* P) {
  const __m512i ilv = interleave_index();
  vf ref[NV], sum[NV];
  bool all_finite = true;
  for (int v = 0; v < NV; ++v) {
    ref[v] = loadu(m + 16 * v);
    vi fin = ref[v] != splat(-INFINITY);
    for (int i = 0; i < 16; ++i) all_finite &= fin[i] != 0;
  }
  if (!all_finite && np > 0) {
    // Rows without a max yet (their first chunk) take the max of the chunk's first
    // 64 rows (in L1) as their reference instead of a max pass over the whole
    // chunk; the one pass below keeps it if no score exceeds it by the slack.
    // Short key lists (block-sparse, neighborhood) meet a first chunk every few
    // chunks: measured 2-5% of a 10%-dense block-sparse and 4-6% of a 2-D
    // neighborhood bf16 forward. Rows that had a max keep it, and those of the new
    // rows have l = 0 and O = 0: nothing needs a rescale.
    vf pm[NV];
    for (int v = 0; v < NV; ++v) pm[v] = splat(-INFINITY);
    const int64_t e = r0[0] + std::min<int64_t>(n[0], 64);
    for (int64_t j = r0[0]; j < e; ++j)
      for (int v = 0; v < NV; ++v) pm[v] = vmax(pm[v], loadu(S + j * kQ + 16 * v));
    all_finite = true;
    for (int v = 0; v < NV; ++v) {
      ref[v] = ref[v] == splat(-INFINITY) ? pm[v] * c : ref[v];
      vi fin = ref[v] != splat(-INFINITY);
      for (int i = 0; i < 16; ++i) all_finite &= fin[i] != 0;
    }
  }
  if (all_finite) {
    // One pass against the reference max, watching the chunk's (raw) max;
    // c > 0, so max(c s) = c max(s).
    const vf cv = splat(c);
    vf mx[NV];
    for (int v = 0; v < NV; ++v) mx[v] = splat(-INFINITY), sum[v] = splat(0.f);
    for (int q = 0; q < np; ++q)
      for (int64_t j = r0[q]; j < r0[q] + n[q]; j += 2) {
        uint16_t* row = P + (j / 2) * 2 * kQ;
        for (int v = 0; v < NV; ++v) {
          const vf s0 = loadu(S + j * kQ + 16 * v), s1 = loadu(S + (j + 1) * kQ + 16 * v);
          mx[v] = vmax(mx[v], vmax(s0, s1));
          const vf p0 = exp2_bf16(fms(s0, cv, ref[v])), p1 = exp2_bf16(fms(s1, cv, ref[v]));
          sum[v] += p0 + p1;
          _mm512_storeu_si512(row + 32 * v, _mm512_permutexvar_epi16(ilv, to_bf16(p0, p1)));
        }
      }
    bool ok = true;
    for (int v = 0; v < NV; ++v) {
      vi big = mx[v] * c > ref[v] + kSlack;
      for (int i = 0; i < 16; ++i) ok &= big[i] == 0;
    }
    if (ok) {
      for (int v = 0; v < NV; ++v) {
        storeu(m + 16 * v, ref[v]);
        storeu(l + 16 * v, loadu(l + 16 * v) + sum[v]);
        storeu(alpha + 16 * v, splat(1.f));
      }
      return false;
    }
  }
  // Two passes: the chunk's max first, then the probabilities against it.
  vf mx[NV];
  for (int v = 0; v < NV; ++v) mx[v] = splat(-INFINITY);
  for (int q = 0; q < np; ++q)
    for (int64_t j = r0[q]; j < r0[q] + n[q]; ++j)
      for (int v = 0; v < NV; ++v) mx[v] = vmax(mx[v], loadu(S + j * kQ + 16 * v));
  vf use[NV];
  bool rescale = false;
  for (int v = 0; v < NV; ++v) {
    const vf old = loadu(m + 16 * v);
    const vf mnew = vmax(old, mx[v] * c);
    // A row that has seen only masked keys keeps max -inf; subtract 0 instead.
    use[v] = mnew == splat(-INFINITY) ? splat(0.f) : mnew;
    const vf a = exp2v(old - use[v]);
    storeu(alpha + 16 * v, a);
    storeu(m + 16 * v, mnew);
    // Rows that had seen no key (old max -inf) have l = 0 and O = 0: no rescale.
    vi ne = (a != splat(1.f)) & (old != splat(-INFINITY));
    for (int i = 0; i < 16; ++i) rescale |= ne[i] != 0;
    sum[v] = splat(0.f);
  }
  const vf cv = splat(c);
  for (int q = 0; q < np; ++q)
    for (int64_t j = r0[q]; j < r0[q] + n[q]; j += 2) {
      uint16_t* row = P + (j / 2) * 2 * kQ;
      for (int v = 0; v < NV; ++v) {
        const vf p0 = exp2_bf16(fms(loadu(S + j * kQ + 16 * v), cv, use[v]));
        const vf p1 = exp2_bf16(fms(loadu(S + (j + 1) * kQ + 16 * v), cv, use[v]));
        sum[v] += p0 + p1;
        _mm512_storeu_si512(row + 32 * v, _mm512_permutexvar_epi16(ilv, to_bf16(p0, p1)));
      }
    }
  for (int v = 0; v < NV; ++v)
    storeu(l + 16 * v, loadu(l + 16 * v) * loadu(alpha + 16 * v) + sum[v]);
  return rescale;
}

template <int NV>
bool softmax_step_vnni_n(const float* S, int64_t nk, float c, float* m, float* l, float* alpha,
                         uint16_t* P) {
  const int64_t r0 = 0;
  return softmax_vnni_rows<NV>(S, 1, &r0, &nk, c, m, l, alpha, P);
}

// Query vector v over the row pieces of a chunk (see Bf16Kernels).
bool softmax_step_vnni_rows(const float* S, int np, const int64_t* r0, const int64_t* n, float c,
                            float* m, float* l, float* alpha, uint16_t* P, int v) {
  const int o = 16 * v;
  return softmax_vnni_rows<1>(S + o, np, r0, n, c, m + o, l + o, alpha + o, P + 2 * o);
}

bool softmax_step_vnni(const float* S, int64_t nk, float c, float* m, float* l, float* alpha,
                       uint16_t* P, int v0, int v1) {
  const int o = 16 * v0;
  switch (v1 - v0) {
    case 4: return softmax_step_vnni_n<4>(S + o, nk, c, m + o, l + o, alpha + o, P + 2 * o);
    case 3: return softmax_step_vnni_n<3>(S + o, nk, c, m + o, l + o, alpha + o, P + 2 * o);
    case 2: return softmax_step_vnni_n<2>(S + o, nk, c, m + o, l + o, alpha + o, P + 2 * o);
    case 1: return softmax_step_vnni_n<1>(S + o, nk, c, m + o, l + o, alpha + o, P + 2 * o);
    default: return false;
  }
}

template <bool kAll>
void softmax_grad_bf16_t(const float* S, const float* dP, int64_t nk, float c, const float* lse2,
                         const float* delta, float ds_scale, const float* cap_grad, uint16_t* P,
                         uint16_t* dS, uint16_t* dS_vnni, uint32_t bits) {
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
        if (!kAll && !((bits >> v) & 1u)) {  // an inactive vector: P = dS = 0, inputs unread
          p[r][v] = ds[r][v] = splat(0.f);
          continue;
        }
        const int64_t o = (j + r) * kQ + 16 * v;
        p[r][v] = exp2_bf16(fms(loadu(S + o), splat(c), L[v]));
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

void softmax_grad_bf16(const float* S, const float* dP, int64_t nk, float c, const float* lse2,
                       const float* delta, float ds_scale, const float* cap_grad, uint16_t* P,
                       uint16_t* dS, uint16_t* dS_vnni, uint32_t bits) {
  if ((bits & 0xfu) == 0xfu)
    softmax_grad_bf16_t<true>(S, dP, nk, c, lse2, delta, ds_scale, cap_grad, P, dS, dS_vnni, bits);
  else
    softmax_grad_bf16_t<false>(S, dP, nk, c, lse2, delta, ds_scale, cap_grad, P, dS, dS_vnni, bits);
}

const Bf16Kernels kBf16{tiles_begin,        tiles_end,          tile_gemm,
                        tile_gemm_ks,       softmax_step_vnni,  softmax_grad_bf16,
                        tile_gemm_gather_m, tile_gemm_gather_k, softmax_step_vnni_rows,
                        tile_gemm_vectors};

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
