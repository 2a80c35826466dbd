// attnkit CPU backend: linear attention chunk math on AMX-bf16 tiles (bf16
// inputs on CPUs with AMX). Same algorithm as the fp32 chunk math in
// linear.cpp; the products run as bf16 tile GEMMs with fp32 accumulation,
// through the kernel table (Bf16Kernels::tile_gemm), three per chunk:
//
//   P = Q K^T                          A = q rows [64][Dk32]   B = K^T, VNNI (32-bit transpose of k rows)
//   O = [Q diag(scale ed) | P o D scale] . [S_in ; V]
//                                      one product of depth Dk32 + 64: inter and intra together
//   S = eB S + (K diag(ekB))^T V       A = decayed K^T rows    B = V, VNNI (token pairs)
//
// The state S stays fp32 (the tile GEMM accumulates into it in place); its
// per-chunk operand copy, the decayed scores and the decayed keys are rounded
// to bf16 -- the usual precision of bf16 attention kernels. Decay factors,
// masks and the normaliser are computed in fp32 exactly as in the fp32 path.
//
// This translation unit runs only when the kernel table has the AMX bf16 path
// (an AMX CPU, which has AVX512-BF16). Its conversion loops use AVX512-BF16
// through per-function target attributes, so nothing compiled here with wider
// ISA flags can leak into shared inline code.
#include "linear_impl.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define AK_LIN_X86 1
#define AK_TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#endif

namespace attnkit::cpu::lin {

#ifdef AK_LIN_X86
namespace {

constexpr uint16_t kBf16One = 0x3F80;
constexpr float kLazyMin = 0x1p-40f, kLazyMax = 0x1p40f;  // lazy state scale range

inline int64_t r16(int64_t x) { return rup(x, 16); }
inline int64_t r32(int64_t x) { return rup(x, 32); }

AK_TGT inline __mmask16 first(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n > 0 ? n : 0)) - 1);
}
AK_TGT inline __m512 widen(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
AK_TGT inline __m256i narrow(__m512 x) { return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x)); }

// dst[i] = bf16(src[i] * a), i < n.
AK_TGT void cvt_scaled(const float* src, float a, int64_t n, uint16_t* dst) {
  const __m512 va = _mm512_set1_ps(a);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 x0 = _mm512_mul_ps(_mm512_loadu_ps(src + i), va);
    const __m512 x1 = _mm512_mul_ps(_mm512_loadu_ps(src + i + 16), va);
    _mm512_storeu_si512(dst + i, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(x1, x0)));
  }
  for (; i < n; i += 16) {
    const __mmask16 m = first(n - i);
    _mm256_mask_storeu_epi16(dst + i, m, narrow(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, src + i), va)));
  }
}

// dst[i] = bf16(src[i] * a) for i < n, 0 for n <= i < ld (ld a multiple of 16).
AK_TGT void bf16_scaled(const uint16_t* src, float a, int64_t n, int64_t ld, uint16_t* dst) {
  const __m512 va = _mm512_set1_ps(a);
  for (int64_t i = 0; i < ld; i += 16) {
    const __mmask16 m = first(n - i);
    const __m512 x = widen(_mm256_maskz_loadu_epi16(m, src + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), narrow(_mm512_mul_ps(x, va)));
  }
}

// One VNNI row from two fp32 rows: out[2e] = bf16(r0[e]), out[2e+1] = bf16(r1[e]),
// e < n (a multiple of 16); then r0, r1 *= a in place (the state's decay, fused
// into the same pass).
AK_TGT void vnni_rows_and_scale(float* r0, float* r1, int64_t n, float a, uint16_t* out) {
  alignas(64) static const uint16_t kIdx[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(kIdx);
  const __m512 va = _mm512_set1_ps(a);
  for (int64_t e = 0; e < n; e += 16) {
    const __m512 x0 = _mm512_loadu_ps(r0 + e), x1 = _mm512_loadu_ps(r1 + e);
    const __m512i w = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(x1, x0));  // [x0 | x1]
    _mm512_storeu_si512(out + 2 * e, _mm512_permutexvar_epi16(idx, w));
    _mm512_storeu_ps(r0 + e, _mm512_mul_ps(x0, va));
    _mm512_storeu_ps(r1 + e, _mm512_mul_ps(x1, va));
  }
}

AK_TGT void scale_inplace(float* x, int64_t n, float a) {
  const __m512 va = _mm512_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), va));
  for (; i < n; ++i) x[i] *= a;
}

// Decayed scores as bf16: dst[j] = bf16(P[j] * D[j] * s), j < kC.
AK_TGT void decay_row(const float* P, const float* D, float s, uint16_t* dst) {
  const __m512 vs = _mm512_set1_ps(s);
  for (int64_t j = 0; j < kC; j += 32) {
    const __m512 x0 = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(P + j), _mm512_loadu_ps(D + j)), vs);
    const __m512 x1 =
        _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(P + j + 16), _mm512_loadu_ps(D + j + 16)), vs);
    _mm512_storeu_si512(dst + j, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(x1, x0)));
  }
}

// Decayed K^T rows from VNNI K^T: for dims (2p, 2p+1) and tokens j < nt (a
// multiple of 16), KdT[2p][j] = k_j[2p] ekB_j, KdT[2p+1][j] = k_j[2p+1] ekB_j.
// bf16 of x, and (lo non-null) bf16 of the remainder x - float(bf16(x)).
AK_TGT inline void store_split(uint16_t* hi, uint16_t* lo, __m512 x) {
  const __m256i h = narrow(x);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi), h);
  if (lo) _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo), narrow(_mm512_sub_ps(x, widen(h))));
}

AK_TGT void decayed_kt(const uint16_t* KTv, int64_t pairs, const float* ekB, int64_t nt, uint16_t* KdT,
                       uint16_t* KdTlo = nullptr) {
  const __m512i hi_mask = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t p = 0; p < pairs; ++p) {
    const uint32_t* row = reinterpret_cast<const uint32_t*>(KTv) + p * kC;
    for (int64_t j = 0; j < nt; j += 16) {
      const __m512i x = _mm512_loadu_si512(row + j);
      const __m512 e = _mm512_loadu_ps(ekB + j);
      const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
      const __m512 hi = _mm512_castsi512_ps(_mm512_and_si512(x, hi_mask));
      const int64_t o0 = 2 * p * kC + j, o1 = (2 * p + 1) * kC + j;
      store_split(KdT + o0, KdTlo ? KdTlo + o0 : nullptr, _mm512_mul_ps(lo, e));
      store_split(KdT + o1, KdTlo ? KdTlo + o1 : nullptr, _mm512_mul_ps(hi, e));
    }
  }
}

// bf16 rows [kC][ld] copied from a bf16 operand, zero-padded past `dim` and
// for rows [n, rows_out).
void copy_rows_bf16(const Rows& src, const Unit& u, int64_t hd, int64_t t, int64_t n, int64_t dim,
                    int64_t ld, int64_t rows_out, uint16_t* dst) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t* d = dst + i * ld;
    std::memcpy(d, src.row(u.b, u.t0 + t + i, hd), 2 * dim);
    std::fill(d + dim, d + ld, uint16_t(0));
  }
  if (rows_out > n) std::fill(dst + n * ld, dst + rows_out * ld, uint16_t(0));
}

// K rows and K^T in VNNI: a bf16 pair (k_j[2p], k_j[2p+1]) is one 32-bit
// element, so VNNI K^T is the 32-bit transpose of the rows.
void pack_k_bf16(const Ctx& c, const Unit& u, int64_t t, int64_t n, Bufs& b) {
  copy_rows_bf16(c.k, u, u.hkv, t, n, c.dk, c.lk32, kC, b.Kb);
  c.K->transpose32(b.Kb, c.lk32 / 2, kC, c.lk32 / 2, b.KTv, kC);
}

// K^T in VNNI only (the forward never needs K rows): straight from the input
// rows when they need no padding and hold whole 32-bit pairs.
void pack_kt_bf16(const Ctx& c, const Unit& u, int64_t t, int64_t n, Bufs& b) {
  const void* k0 = c.k.row(u.b, u.t0 + t, u.hkv);
  if (n == kC && c.dk == c.lk32 && c.k.ts % 2 == 0 && (reinterpret_cast<uintptr_t>(k0) & 3) == 0)
    c.K->transpose32(k0, c.k.ts / 2, kC, c.lk32 / 2, b.KTv, kC);
  else
    pack_k_bf16(c, u, t, n, b);
}

// V in VNNI (pairs of tokens interleaved; the normaliser's column of ones;
// zero past n) straight from the input rows, into the V half of SVv.
void pack_v_bf16(const Ctx& c, const Unit& u, int64_t t, int64_t n, Bufs& b) {
  uint16_t* Vv = b.SVv + (c.lk32 / 2) * 2 * c.ldv;
  for (int64_t p = 0; p < kC / 2; ++p) {
    uint16_t* out = Vv + p * 2 * c.ldv;
    const int64_t i0 = 2 * p, i1 = 2 * p + 1;
    if (i0 >= n) {
      std::fill(out, out + 2 * c.ldv, uint16_t(0));
      continue;
    }
    const uint16_t* a = static_cast<const uint16_t*>(c.v.row(u.b, u.t0 + t + i0, u.hkv));
    const uint16_t* bb = i1 < n ? static_cast<const uint16_t*>(c.v.row(u.b, u.t0 + t + i1, u.hkv)) : nullptr;
    c.K->interleave16(a, bb, c.dv, out);
    std::fill(out + 2 * c.dv, out + 2 * c.ldv, uint16_t(0));
    if (c.normalize) {
      out[2 * c.dv] = kBf16One;
      if (bb) out[2 * c.dv + 1] = kBf16One;
    }
  }
}

// S = eB S (already applied when `scaled`) + (K diag(ekB))^T V.
void state_update_bf16(const Ctx& c, int64_t n, Bufs& b, float* S, bool zero_in, bool scaled,
                       const float* mul = nullptr) {
  const int64_t nt = r32(n);
  const uint16_t* Vv = b.SVv + (c.lk32 / 2) * 2 * c.ldv;
  decayed_kt(b.KTv, c.ldk / 2, mul ? mul : b.ekB, nt, b.KdTb, c.hp ? b.KdTlo : nullptr);
  if (!zero_in && !scaled) scale_inplace(S, c.ldk * c.ldv, b.eB);
  c.K->bf16->tile_gemm(c.ldk, c.ldv, nt, b.KdTb, kC, Vv, 2 * c.ldv, S, c.ldv, !zero_in);
  if (c.hp) c.K->bf16->tile_gemm(c.ldk, c.ldv, nt, b.KdTlo, kC, Vv, 2 * c.ldv, S, c.ldv, true);
}

// ---- backward helpers

// bf16 rows [kC][ld] of a chunk of an operand: the input rows themselves when a
// full chunk needs no padding (dim == ld, 32-bit aligned pairs), else a padded
// copy in `buf`. Returns the row pointer; *ldo receives the row stride.
const uint16_t* chunk_rows(const Rows& src, const Unit& u, int64_t hd, int64_t t, int64_t n,
                           int64_t dim, int64_t ld, uint16_t* buf, int64_t* ldo) {
  const void* r0 = src.row(u.b, u.t0 + t, hd);
  if (n == kC && dim == ld && src.ts % 2 == 0 && (reinterpret_cast<uintptr_t>(r0) & 3) == 0) {
    *ldo = src.ts;
    return static_cast<const uint16_t*>(r0);
  }
  copy_rows_bf16(src, u, hd, t, n, dim, ld, kC, buf);
  *ldo = ld;
  return buf;
}

// r[i] = x[i] - float(bf16(x[i])): the part a bf16 copy of x loses (n % 16 == 0).
AK_TGT void split_rows(const float* x, int64_t n, float* r) {
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    _mm512_storeu_ps(r + i, _mm512_sub_ps(v, widen(narrow(v))));
  }
}

AK_TGT float dot_bf16(const uint16_t* a, const float* x, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = first(n - i);
    acc = _mm512_fmadd_ps(widen(_mm256_maskz_loadu_epi16(m, a + i)), _mm512_maskz_loadu_ps(m, x + i), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// VNNI rows from pairs of fp32 rows (no scaling): out[2e] = bf16(r0[e]), out[2e+1] = bf16(r1[e]).
AK_TGT void vnni_rows(const float* r0, const float* r1, int64_t n, uint16_t* out) {
  alignas(64) static const uint16_t kIdx[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(kIdx);
  for (int64_t e = 0; e < n; e += 16) {
    const __m512i w = reinterpret_cast<__m512i>(
        _mm512_cvtne2ps_pbh(_mm512_loadu_ps(r1 + e), _mm512_loadu_ps(r0 + e)));
    _mm512_storeu_si512(out + 2 * e, _mm512_permutexvar_epi16(idx, w));
  }
}

// X [lk32][ldv] fp32 -> VNNI by pairs of rows [lk32/2][2 ldv] (the B operand of K X);
// with lo, the remainder X - bf16(X) too (in `tmp`, [lk32][ldv] floats of scratch).
void rows_vnni(const Ctx& c, const float* X, uint16_t* out, uint16_t* lo = nullptr, float* tmp = nullptr) {
  for (int64_t p = 0; p < c.lk32 / 2; ++p)
    vnni_rows(X + 2 * p * c.ldv, X + (2 * p + 1) * c.ldv, c.ldv, out + p * 2 * c.ldv);
  if (!lo) return;
  for (int64_t p = 0; p < c.lk32 / 2; ++p) {
    split_rows(X + 2 * p * c.ldv, c.ldv, tmp + 2 * p * c.ldv);
    split_rows(X + (2 * p + 1) * c.ldv, c.ldv, tmp + (2 * p + 1) * c.ldv);
    vnni_rows(tmp + 2 * p * c.ldv, tmp + (2 * p + 1) * c.ldv, c.ldv, lo + p * 2 * c.ldv);
  }
}

// X [lk32][ldv] fp32 -> X^T in VNNI [lv32/2][2 lk32] (the B operand of A X^T): bf16
// rows padded to lv32, whose 32-bit transpose pairs consecutive columns. With lo,
// the remainder's too.
void transposed_vnni(const Ctx& c, const float* X, Bufs& b, uint16_t* out, uint16_t* lo = nullptr) {
  for (int64_t d = 0; d < c.lk32; ++d) {
    uint16_t* r = b.Xb + d * c.lv32;
    cvt_scaled(X + d * c.ldv, 1.f, c.ldv, r);
    std::fill(r + c.ldv, r + c.lv32, uint16_t(0));
  }
  c.K->transpose32(b.Xb, c.lv32 / 2, c.lk32, c.lv32 / 2, out, c.lk32);
  if (!lo) return;
  for (int64_t d = 0; d < c.lk32; ++d) {
    float* tmp = b.row;  // ldv floats
    split_rows(X + d * c.ldv, c.ldv, tmp);
    cvt_scaled(tmp, 1.f, c.ldv, b.Xb + d * c.lv32);
  }
  c.K->transpose32(b.Xb, c.lv32 / 2, c.lk32, c.lv32 / 2, lo, c.lk32);
}

// Pairs of bf16 rows [kC][ld] interleaved: VNNI by token pairs, rows of n elements.
void token_pairs(const Ctx& c, const uint16_t* rows, int64_t ld, int64_t n, uint16_t* out) {
  for (int64_t p = 0; p < kC / 2; ++p)
    c.K->interleave16(rows + 2 * p * ld, rows + (2 * p + 1) * ld, n, out + p * 2 * n);
}

// fp32 rows [n][lds] -> bf16 rows [kC][ldd] (times a per-row factor; zero-padded
// past `dim` and for rows [n, kC)).
void f32_rows_bf16(const float* src, int64_t lds, int64_t n, int64_t dim, const float* mul, float s,
                   int64_t ldd, uint16_t* dst) {
  for (int64_t i = 0; i < n; ++i) {
    cvt_scaled(src + i * lds, (mul ? mul[i] : 1.f) * s, dim, dst + i * ldd);
    std::fill(dst + i * ldd + dim, dst + (i + 1) * ldd, uint16_t(0));
  }
  std::fill(dst + n * ldd, dst + kC * ldd, uint16_t(0));
}

// P fp32 [kC][kC] (rows past `rows` zeroed first) -> P^T as bf16 rows.
void transpose_bf16(const Ctx& c, float* P, int64_t rows, Bufs& b, uint16_t* out) {
  std::fill(P + rows * kC, P + kC * kC, 0.f);
  c.K->transpose32(P, kC, kC, kC, b.T1, kC);
  c.K->store_row(b.T1, kC * kC, DType::BFloat16, out);
}

// In-place P *= scale D over full rows [0, rows).
void decay_full(const Ctx& c, int64_t rows, const float* D, float* P) {
  for (int64_t i = 0; i < rows; ++i) {
    float* p = P + i * kC;
    const float* d = D + i * kC;
    for (int64_t j = 0; j < kC; ++j) p[j] *= c.scale * d[j];
  }
}

// dOa rows as bf16 [kC][lv32] into b.Db (from the input, or from the normalize workspace).
void load_doa_bf16(const Ctx& c, const Unit& u, int64_t t, int64_t n, Bufs& b, const BwdWork& w) {
  if (c.normalize) {
    load_doa(c, u, t, n, b, w);  // fp32 into b.dO
    f32_rows_bf16(b.dO, c.ldv, n, c.dve, nullptr, 1.f, c.lv32, b.Db);
  } else if (c.has_dout) {
    copy_rows_bf16(c.dout, u, u.hq, t, n, c.dv, c.lv32, kC, b.Db);
  } else {
    std::fill(b.Db, b.Db + kC * c.lv32, uint16_t(0));
  }
}

// v rows as bf16 [kC][lv32] (with the normaliser's column of ones: always a copy then).
const uint16_t* v_rows(const Ctx& c, const Unit& u, int64_t t, int64_t n, Bufs& b, int64_t* ldo) {
  if (!c.normalize) return chunk_rows(c.v, u, u.hkv, t, n, c.dv, c.lv32, b.Vb, ldo);
  copy_rows_bf16(c.v, u, u.hkv, t, n, c.dv, c.lv32, kC, b.Vb);
  for (int64_t i = 0; i < n; ++i) b.Vb[i * c.lv32 + c.dv] = kBf16One;
  *ldo = c.lv32;
  return b.Vb;
}

void store_rows_any(const Ctx& c, const Unit& u, int64_t t, int64_t n, const float* X, int64_t ld,
                    int64_t dim, const Rows& dst, int64_t head, float* partial) {
  if (partial || dst.dt != DType::BFloat16) {
    store_rows(c, u, t, n, X, ld, dim, dst, head, partial);
    return;
  }
  for (int64_t i = 0; i < n; ++i)
    cvt_scaled(X + i * ld, 1.f, dim, static_cast<uint16_t*>(dst.row(u.b, u.t0 + t + i, head)));
}

void store_out_bf16(const Ctx& c, const Unit& u, int64_t t, int64_t n, const float* O, float* row) {
  if (c.normalize || c.out.dt != DType::BFloat16) {
    store_out(c, u, t, n, O, row);
    return;
  }
  for (int64_t i = 0; i < n; ++i)
    cvt_scaled(O + i * c.ldv, 1.f, c.dv, static_cast<uint16_t*>(c.out.row(u.b, u.t0 + t + i, u.hq)));
}

// Raw chunk output into b.O: P = Q K^T (all 64 keys: the part above the
// diagonal is zeroed by D), then O = [Q diag(scale ed) | P o D scale] . [S_in ; V]
// in one product. S_in's operand copy is written in the same pass that applies
// this chunk's decay eB to S (so a state update that follows passes scaled=true).
// Needs b.KTv, the V half of b.SVv, the chunk decays; q rows at Qa (stride ldq).
//
// q_mul multiplies the inter term (the forward's lazy state scale sigma: the true
// state is sigma * S); s_scale is the factor applied to S in that pass (eB, or 1
// for none -- then S is only read).
void chunk_output_bf16(const Ctx& c, int64_t n, Bufs& b, const uint16_t* Qa, int64_t ldq, float* S,
                       bool zero, float q_mul, float s_scale) {
  const Bf16Kernels& T = *c.K->bf16;
  const int64_t lda = c.lk32 + kC, rows = r16(n);
  T.tile_gemm(rows, kC, c.lk32, Qa, ldq, b.KTv, 2 * kC, b.P, kC, false);
  for (int64_t i = 0; i < rows; ++i) {
    uint16_t* a = b.Ab + i * lda;
    decay_row(b.P + i * kC, b.D + i * kC, c.scale, a + c.lk32);
    if (zero) continue;
    if (i < n)
      bf16_scaled(Qa + i * ldq, c.scale * b.ed[i] * q_mul, c.dk, c.lk32, a);
    else
      std::fill(a, a + c.lk32, uint16_t(0));
  }
  if (!zero) {
    for (int64_t p = 0; p < c.lk32 / 2; ++p) {
      float* r0 = S + 2 * p * c.ldv;
      float* r1 = S + (2 * p + 1) * c.ldv;
      if (s_scale == 1.f)
        vnni_rows(r0, r1, c.ldv, b.SVv + p * 2 * c.ldv);
      else
        vnni_rows_and_scale(r0, r1, c.ldv, s_scale, b.SVv + p * 2 * c.ldv);
    }
    T.tile_gemm(rows, c.ldv, c.lk32 + kC, b.Ab, lda, b.SVv, 2 * c.ldv, b.O, c.ldv, false);
  } else {
    T.tile_gemm(rows, c.ldv, kC, b.Ab + c.lk32, lda, b.SVv + (c.lk32 / 2) * 2 * c.ldv, 2 * c.ldv,
                b.O, c.ldv, false);
  }
}

// Chunk ch (< c1) of cursor r: output rows, then the state update.
void forward_chunk(const Ctx& c, Cursor& r, int64_t ch, int64_t c1, Bufs& b, bool keep_state) {
  const Unit& u = *r.u;
  float* const S = r.X;
  const int64_t t = ch * kC, n = std::min(kC, u.T - t);
  const int64_t rows = r16(n);  // query rows computed (16-row tiles)
  if (ch + 1 < c1) prefetch_chunk(c, u, t + kC, std::min(kC, u.T - t - kC));
  r.swap_decay(b);
  r.dec.chunk(c, u, t, n, b, true);
  // q rows: read in place when they need no padding, else copied.
  const uint16_t* Qa = b.Qb;
  int64_t ldq = c.lk32;
  if (n == kC && c.dk == c.lk32) {
    Qa = static_cast<const uint16_t*>(c.q.row(u.b, u.t0 + t, u.hq));
    ldq = c.q.ts;
  } else {
    copy_rows_bf16(c.q, u, u.hq, t, n, c.dk, c.lk32, rows, b.Qb);
  }
  pack_kt_bf16(c, u, t, n, b);
  pack_v_bf16(c, u, t, n, b);
  // Lazy decay: when the next scale sigma' = sigma eB and every key factor
  // ekB_j / sigma' stay in [2^-40, 2^40], the state is not rescaled (sigma'
  // absorbs the decay); otherwise (strong or -inf decay, long growth) S is
  // rescaled to the true state now.
  const float sp = r.sigma * b.eB;
  float emax = 0.f;
  for (int64_t j = 0; j < n; ++j) emax = std::max(emax, b.ekB[j]);
  const bool lazy = !r.zero && sp >= kLazyMin && sp <= kLazyMax && emax <= sp * kLazyMax;
  chunk_output_bf16(c, n, b, Qa, ldq, S, r.zero, r.sigma, lazy ? 1.f : sp);
  store_out_bf16(c, u, t, n, b.O, b.row);
  if (ch + 1 < u.chunks() || keep_state) {
    if (lazy)
      for (int64_t j = 0; j < kC; ++j) b.f[j] = b.ekB[j] / sp;  // tokens past n: ekB = 0
    state_update_bf16(c, n, b, S, r.zero, true, lazy ? b.f : nullptr);
    r.zero = false;
    r.sigma = lazy ? sp : 1.f;
  }
  r.swap_decay(b);
}

}  // namespace

void bf16_forward_lockstep(const Ctx& c, const Unit* units, int nu, int64_t c0, int64_t c1, Bufs& b,
                           float* const* S, const bool* zero, bool keep_state, float* D) {
  Cursor cur[kMaxLockstep];
  start_cursors(c, cur, units, 0, nu, S, zero, D);
  lockstep_chunks(cur, nu, c0, c1, false, [&](Cursor& r, int64_t ch) { forward_chunk(c, r, ch, c1, b, keep_state); });
  for (int i = 0; i < nu; ++i)
    if (keep_state && cur[i].sigma != 1.f) scale_inplace(cur[i].X, c.ldk * c.ldv, cur[i].sigma);  // the true state
}

void bf16_local_state(const Ctx& c, const Unit& u, int64_t c0, int64_t c1, Bufs& b, float* S,
                      float* decay) {
  Decays dec;
  dec.init(c, u);
  float prod = 1.f;
  bool zero = true;
  for (int64_t ch = c0; ch < c1; ++ch) {
    const int64_t t = ch * kC, n = std::min(kC, u.T - t);
    dec.chunk(c, u, t, n, b, false);
    pack_kt_bf16(c, u, t, n, b);
    pack_v_bf16(c, u, t, n, b);
    state_update_bf16(c, n, b, S, zero, false);
    zero = false;
    prod *= b.eB;
  }
  *decay = prod;
}

namespace {

// dH = eB dH + (Q diag(scale ed))^T dOa over nt tokens (a multiple of 32), from
// the chunk's Q^T (b.QTv) and dOa by token pairs (b.Dv).
void adjoint_update_bf16(const Ctx& c, int64_t nt, Bufs& b, float* dH, bool zero) {
  const Bf16Kernels& T = *c.K->bf16;
  float* sed = b.f;  // scale * ed per token
  for (int64_t i = 0; i < kC; ++i) sed[i] = c.scale * b.ed[i];
  decayed_kt(b.QTv, c.ldk / 2, sed, nt, b.QdT, c.hp ? b.QdTlo : nullptr);
  if (!zero) scale_inplace(dH, c.ldk * c.ldv, b.eB);
  T.tile_gemm(c.ldk, c.ldv, nt, b.QdT, kC, b.Dv, 2 * c.ldv, dH, c.ldv, !zero);
  if (c.hp) T.tile_gemm(c.ldk, c.ldv, nt, b.QdTlo, kC, b.Dv, 2 * c.ldv, dH, c.ldv, true);
}

// Chunk ch (< c1) of the forward sweep: dq (and q.dq, dOa), then the state update.
void backward_forward_chunk(const Ctx& c, Cursor& r, int64_t ch, int64_t c1, Bufs& b, BwdWork& w) {
  const Bf16Kernels& T = *c.K->bf16;
  const Unit& u = *r.u;
  const Decays& dec = r.dec;
  float* const S = r.X;
  bool& zero = r.zero;
  float* dq = b.T1;  // [kC][ldk]
  r.swap_decay(b);
  const int64_t t = ch * kC, n = std::min(kC, u.T - t), rows = r16(n);
  if (ch + 1 < c1) prefetch_chunk(c, u, t + kC, std::min(kC, u.T - t - kC));
  dec.chunk(c, u, t, n, b, true);
  int64_t ldq, ldk, ldv;
  const uint16_t* Qr = chunk_rows(c.q, u, u.hq, t, n, c.dk, c.lk32, b.Qb, &ldq);
  const uint16_t* Kr = chunk_rows(c.k, u, u.hkv, t, n, c.dk, c.lk32, b.Kb, &ldk);
  c.K->transpose32(Kr, ldk / 2, kC, c.lk32 / 2, b.KTv, kC);
  token_pairs(c, Kr, ldk, c.lk32, b.Kv);
  const uint16_t* Vr = v_rows(c, u, t, n, b, &ldv);
  c.K->transpose32(Vr, ldv / 2, kC, c.lv32 / 2, b.VTv, kC);
  pack_v_bf16(c, u, t, n, b);
  if (!zero) transposed_vnni(c, S, b, b.XTv, c.hp ? b.XTvlo : nullptr);  // before S is scaled
  bool scaled = false;
  if (c.normalize) {
    chunk_output_bf16(c, n, b, Qr, ldq, S, zero, 1.f, b.eB);
    scaled = !zero;
    pack_dout(c, u, t, n, b.dO);
    normalize_dout(c, n, b);
    std::memcpy(w.doa.get() + w.idx(c, u, t) * c.ldv, b.dO, sizeof(float) * n * c.ldv);
    f32_rows_bf16(b.dO, c.ldv, n, c.dve, nullptr, 1.f, c.lv32, b.Db);
  } else {
    load_doa_bf16(c, u, t, n, b, w);
  }
  // Bm = scale D o (dOa V^T); dq = diag(scale ed) dOa S_in^T + Bm K
  T.tile_gemm(rows, kC, c.lv32, b.Db, c.lv32, b.VTv, 2 * kC, b.Bm, kC, false);
  for (int64_t i = 0; i < rows; ++i) decay_row(b.Bm + i * kC, b.D + i * kC, c.scale, b.Bmb + i * kC);
  if (!zero) {  // dOa S^T, its rows then scaled by scale ed in fp32
    T.tile_gemm(rows, c.ldk, c.lv32, b.Db, c.lv32, b.XTv, 2 * c.lk32, dq, c.ldk, false);
    if (c.hp) T.tile_gemm(rows, c.ldk, c.lv32, b.Db, c.lv32, b.XTvlo, 2 * c.lk32, dq, c.ldk, true);
    scale_rows(dq, n, c.ldk, b.ed, c.scale);
  } else {
    std::fill(dq, dq + rows * c.ldk, 0.f);
  }
  if (w.want_dg)  // q . dq, inter-chunk part
    for (int64_t i = 0; i < n; ++i) w.rq.get()[w.idx(c, u, t + i)] = dot_bf16(Qr + i * ldq, dq + i * c.ldk, c.dk);
  T.tile_gemm(rows, c.ldk, kC, b.Bmb, kC, b.Kv, 2 * c.lk32, dq, c.ldk, true);
  store_rows_any(c, u, t, n, dq, c.ldk, c.dk, c.dq, u.hq, nullptr);
  if (ch + 1 < u.chunks()) {
    state_update_bf16(c, n, b, S, zero, scaled);
    zero = false;
  }
  r.swap_decay(b);
}

// Chunk ch (>= c0) of the reverse sweep: dk, dv (and the dg terms), then dH.
void backward_reverse_chunk(const Ctx& c, Cursor& r, int64_t ch, int64_t c0, Bufs& b, BwdWork& w) {
  const Bf16Kernels& T = *c.K->bf16;
  const Unit& u = *r.u;
  const Decays& dec = r.dec;
  float* const dH = r.X;
  bool& zero = r.zero;
  float& E = r.E;
  const bool split = w.want_dg && c.dfin.data;
  const float* F = split ? w.dfin_pad.get() + r.ui * c.ldk * c.ldv : nullptr;
  float* dv = b.Vd;   // [kC][ldv]
  float* XF = b.O;    // [kC][ldv]
  float* dk = b.T1;   // [kC][ldk]
  float* dHt = b.ST;  // [lk32][ldv], rows past dk zero
  r.swap_decay(b);
  const int64_t t = ch * kC, n = std::min(kC, u.T - t), rows = r16(n), nt = r32(n);
  if (ch > c0) prefetch_chunk(c, u, t - kC, kC);
  dec.chunk(c, u, t, n, b, true);
  int64_t ldq, ldk, ldv, ldo;
  const uint16_t* Qr = chunk_rows(c.q, u, u.hq, t, n, c.dk, c.lk32, b.Qb, &ldq);
  c.K->transpose32(Qr, ldq / 2, kC, c.lk32 / 2, b.QTv, kC);
  token_pairs(c, Qr, ldq, c.lk32, b.Qv);
  const uint16_t* Kr = chunk_rows(c.k, u, u.hkv, t, n, c.dk, c.lk32, b.Kb, &ldk);
  c.K->transpose32(Kr, ldk / 2, kC, c.lk32 / 2, b.KTv, kC);
  const uint16_t* Vr = v_rows(c, u, t, n, b, &ldv);
  c.K->transpose32(Vr, ldv / 2, kC, c.lv32 / 2, b.VTv, kC);
  const uint16_t* Dr = b.Db;
  ldo = c.lv32;
  if (!c.normalize && c.has_dout)
    Dr = chunk_rows(c.dout, u, u.hq, t, n, c.dv, c.lv32, b.Db, &ldo);
  else
    load_doa_bf16(c, u, t, n, b, w);
  token_pairs(c, Dr, ldo, c.ldv, b.Dv);
  // Bm = scale D o (dOa V^T), P = q.k raw (for dg), then scale D o P
  T.tile_gemm(rows, kC, c.lv32, Dr, ldo, b.VTv, 2 * kC, b.Bm, kC, false);
  decay_full(c, rows, b.D, b.Bm);
  T.tile_gemm(rows, kC, c.lk32, Qr, ldq, b.KTv, 2 * kC, b.P, kC, false);
  if (w.want_dg) intra_dg(c, n, b, w.ri.get() + w.idx(c, u, t));
  decay_full(c, rows, b.D, b.P);
  transpose_bf16(c, b.P, rows, b, b.PTb);
  transpose_bf16(c, b.Bm, rows, b, b.BmTb);
  // dv_j = ekB_j k_j (dH + E dS_final) + sum_{i>=j} P_ij dOa_i
  if (!zero) {
    rows_vnni(c, dH, b.Xv, c.hp ? b.Xvlo : nullptr, b.S);
    T.tile_gemm(rows, c.ldv, c.lk32, Kr, ldk, b.Xv, 2 * c.ldv, dv, c.ldv, false);
    if (c.hp) T.tile_gemm(rows, c.ldv, c.lk32, Kr, ldk, b.Xvlo, 2 * c.ldv, dv, c.ldv, true);
  } else {
    std::fill(dv, dv + rows * c.ldv, 0.f);
  }
  if (split) T.tile_gemm(rows, c.ldv, c.lk32, Kr, ldk, r.Fv, 2 * c.ldv, XF, c.ldv, false);
  for (int64_t j = 0; j < n; ++j) {
    float* x = dv + j * c.ldv;
    const float a = b.ekB[j];
    if (w.want_dg) {
      w.rk.get()[w.idx(c, u, t + j)] = a * dot_bf16(Vr + j * ldv, x, c.dve);
      if (split) w.rf.get()[w.idx(c, u, t + j)] = a * E * dot_bf16(Vr + j * ldv, XF + j * c.ldv, c.dv);
    }
    if (split)
      for (int64_t e = 0; e < c.ldv; ++e) x[e] = a * (x[e] + E * XF[j * c.ldv + e]);
    else
      for (int64_t e = 0; e < c.ldv; ++e) x[e] *= a;
  }
  T.tile_gemm(rows, c.ldv, kC, b.PTb, kC, b.Dv, 2 * c.ldv, dv, c.ldv, true);
  store_rows_any(c, u, t, n, dv, c.ldv, c.dv, c.dv_, u.hkv, w.gqa ? w.pdv.get() : nullptr);
  // dk_j = ekB_j (dH + E dS_final) v_j + sum_{i>=j} Bm_ij q_i
  if (!zero || split) {
    const float* H = dH;
    if (split) {
      for (int64_t i = 0; i < c.ldk * c.ldv; ++i) dHt[i] = (zero ? 0.f : dH[i]) + E * F[i];
      H = dHt;
    }
    transposed_vnni(c, H, b, b.XTv);
    for (int64_t j = 0; j < n; ++j) bf16_scaled(Vr + j * ldv, b.ekB[j], c.dve, c.lv32, b.Vdb + j * c.lv32);
    std::fill(b.Vdb + n * c.lv32, b.Vdb + kC * c.lv32, uint16_t(0));
    T.tile_gemm(rows, c.ldk, c.lv32, b.Vdb, c.lv32, b.XTv, 2 * c.lk32, dk, c.ldk, false);
  } else {
    std::fill(dk, dk + rows * c.ldk, 0.f);
  }
  T.tile_gemm(rows, c.ldk, kC, b.BmTb, kC, b.Qv, 2 * c.lk32, dk, c.ldk, true);
  store_rows_any(c, u, t, n, dk, c.ldk, c.dk, c.dk_, u.hkv, w.gqa ? w.pdk.get() : nullptr);
  adjoint_update_bf16(c, nt, b, dH, zero);
  zero = false;
  E *= b.eB;
  r.swap_decay(b);
}

}  // namespace

void bf16_backward_forward_lockstep(const Ctx& c, const Unit* units, int nu, int64_t c0, int64_t c1,
                                    Bufs& b, float* const* S, const bool* zero, BwdWork& w, float* D) {
  Cursor cur[kMaxLockstep];
  start_cursors(c, cur, units, 0, nu, S, zero, D);
  lockstep_chunks(cur, nu, c0, c1, false, [&](Cursor& r, int64_t ch) { backward_forward_chunk(c, r, ch, c1, b, w); });
}

void bf16_backward_reverse_lockstep(const Ctx& c, const Unit* units, int64_t ui0, int nu,
                                    const Segment& sg, Bufs& b, float* const* dH, const bool* zero,
                                    const float* E, BwdWork& w, float* D, uint16_t* Fv) {
  const bool split = w.want_dg && c.dfin.data;
  Cursor cur[kMaxLockstep];
  start_cursors(c, cur, units, ui0, nu, dH, zero, D);
  if (split) pad_state_rows(c, b.ST);  // dHt's rows past dk stay zero
  for (int i = 0; i < nu; ++i) {
    Cursor& r = cur[i];
    r.E = E[i];
    if (split) {  // dS_final in VNNI, from a padded copy
      r.Fv = nu > 1 ? Fv + i * c.lk32 * c.ldv : b.Fv;
      std::memcpy(b.ST, w.dfin_pad.get() + r.ui * c.ldk * c.ldv, sizeof(float) * c.ldk * c.ldv);
      rows_vnni(c, b.ST, r.Fv);
    }
  }
  lockstep_chunks(cur, nu, sg.c0, sg.c1, true, [&](Cursor& r, int64_t ch) { backward_reverse_chunk(c, r, ch, sg.c0, b, w); });
  if (!(split && sg.s == 0)) return;
  for (int i = 0; i < nu; ++i) finish_split_adjoint(c, units[i], cur[i].ui, cur[i].X, cur[i].zero, cur[i].E, w);
}

void bf16_reverse_local(const Ctx& c, const Unit& u, int64_t c0, int64_t c1, Bufs& b, float* dH,
                        const BwdWork& w) {
  Decays dec;
  dec.init(c, u);
  bool zero = true;
  for (int64_t ch = c1 - 1; ch >= c0; --ch) {
    const int64_t t = ch * kC, n = std::min(kC, u.T - t), nt = r32(n);
    dec.chunk(c, u, t, n, b, false);
    int64_t ldq, ldo = c.lv32;
    const uint16_t* Qr = chunk_rows(c.q, u, u.hq, t, n, c.dk, c.lk32, b.Qb, &ldq);
    c.K->transpose32(Qr, ldq / 2, kC, c.lk32 / 2, b.QTv, kC);
    const uint16_t* Dr = b.Db;
    if (!c.normalize && c.has_dout)
      Dr = chunk_rows(c.dout, u, u.hq, t, n, c.dv, c.lv32, b.Db, &ldo);
    else
      load_doa_bf16(c, u, t, n, b, w);
    token_pairs(c, Dr, ldo, c.ldv, b.Dv);
    adjoint_update_bf16(c, nt, b, dH, zero);
    zero = false;
  }
}

namespace {

// A [ldk][ldv] state (or dS) copied into b.S with its rows padded to lk32, as the
// VNNI converters read them; returns b.S.
const float* padded_state(const Ctx& c, const float* S, Bufs& b) {
  std::copy(S, S + c.ldk * c.ldv, b.S);
  pad_state_rows(c, b.S);
  return b.S;
}

}  // namespace

void bf16_noncausal_output(const Ctx& c, const Unit& u, int64_t c0, int64_t c1, Bufs& b, const float* S) {
  // S ([ldk][ldv] fp32) once per segment as the VNNI B operand.
  rows_vnni(c, padded_state(c, S, b), b.SVv);
  const Bf16Kernels& T = *c.K->bf16;
  for (int64_t ch = c0; ch < c1; ++ch) {
    const int64_t t = ch * kC, n = std::min(kC, u.T - t);
    const int64_t rows = r16(n);
    if (ch + 1 < c1) prefetch_chunk(c, u, t + kC, std::min(kC, u.T - t - kC));
    int64_t ldq = 0;  // q rows in place when they need no padding, else a zero-padded copy
    const uint16_t* Qa = chunk_rows(c.q, u, u.hq, t, n, c.dk, c.lk32, b.Qb, &ldq);
    T.tile_gemm(rows, c.ldv, c.lk32, Qa, ldq, b.SVv, 2 * c.ldv, b.O, c.ldv, false);
    scale_inplace(b.O, n * c.ldv, c.scale);
    store_out_bf16(c, u, t, n, b.O, b.row);
  }
}

// Non-causal backward, pass 1 over chunks [c0, c1) of unit u: dq = scale dOa S^T
// per chunk, and dH = sum scale q^T dOa over the chunks (from 0). dOa is dO, or
// with normalize the gradient of the raw output (from o = scale q S, fp32).
void bf16_noncausal_dq(const Ctx& c, const Unit& u, int64_t c0, int64_t c1, Bufs& b, const float* S,
                       const float* ST, float* dH, BwdWork& w) {
  const Bf16Kernels& T = *c.K->bf16;
  const float* Sp = padded_state(c, S, b);
  if (c.normalize)
    rows_vnni(c, Sp, b.SVv);  // for the raw output q S
  else
    transposed_vnni(c, Sp, b, b.XTv);
  Decays dec;
  dec.init(c, u);
  float* dq = b.T1;  // [kC][ldk]
  bool zero = true;
  for (int64_t ch = c0; ch < c1; ++ch) {
    const int64_t t = ch * kC, n = std::min(kC, u.T - t), rows = r16(n), nt = r32(n);
    if (ch + 1 < c1) prefetch_chunk(c, u, t + kC, std::min(kC, u.T - t - kC));
    dec.chunk(c, u, t, n, b, false);
    int64_t ldq, ldo = c.lv32;
    const uint16_t* Qr = chunk_rows(c.q, u, u.hq, t, n, c.dk, c.lk32, b.Qb, &ldq);
    const uint16_t* Dr = b.Db;
    if (c.normalize) {
      T.tile_gemm(rows, c.ldv, c.lk32, Qr, ldq, b.SVv, 2 * c.ldv, b.O, c.ldv, false);
      scale_inplace(b.O, n * c.ldv, c.scale);
      pack_dout(c, u, t, n, b.dO);
      normalize_dout(c, n, b);
      f32_rows_bf16(b.dO, c.ldv, n, c.dve, nullptr, 1.f, c.lv32, b.Db);
    } else if (c.has_dout) {
      Dr = chunk_rows(c.dout, u, u.hq, t, n, c.dv, c.lv32, b.Db, &ldo);
    } else {
      load_doa_bf16(c, u, t, n, b, w);
    }
    if (c.normalize)  // fp32: dOa's two parts (dO / den and the den column) nearly cancel in dq;
      // with bf16 dOa and S its error was 9e-3 instead of 2-3e-3
      c.K->gemm(n, c.ldk / kLanes, c.dve, b.dO, c.ldv, 1, ST, c.ldk, dq, c.ldk, false);
    else
      T.tile_gemm(rows, c.ldk, c.lv32, Dr, ldo, b.XTv, 2 * c.lk32, dq, c.ldk, false);
    scale_inplace(dq, n * c.ldk, c.scale);
    store_rows_any(c, u, t, n, dq, c.ldk, c.dk, c.dq, u.hq, nullptr);
    // dH += Q^T dO (ed: 1 for the chunk's tokens, 0 past them); the scale is
    // applied once in fp32 below, not folded into the bf16 Q^T (which would round
    // q * scale: d(initial_state) lost 3 decimal digits for scales not a power of 2).
    c.K->transpose32(Qr, ldq / 2, kC, c.lk32 / 2, b.QTv, kC);
    token_pairs(c, Dr, ldo, c.ldv, b.Dv);
    decayed_kt(b.QTv, c.ldk / 2, b.ed, nt, b.QdT, nullptr);
    T.tile_gemm(c.ldk, c.ldv, nt, b.QdT, kC, b.Dv, 2 * c.ldv, dH, c.ldv, !zero);
    zero = false;
  }
  scale_inplace(dH, c.ldk * c.ldv, c.scale);
}

// Pass 2 (after the dS sums): dv = K dS and dk = V dS^T per chunk.
void bf16_noncausal_dkdv(const Ctx& c, const Unit& u, int64_t c0, int64_t c1, Bufs& b, const float* dS,
                         BwdWork& w) {
  const Bf16Kernels& T = *c.K->bf16;
  const float* X = padded_state(c, dS, b);
  rows_vnni(c, X, b.Xv);
  transposed_vnni(c, X, b, b.XTv);
  float* dv = b.Vd;  // [kC][ldv]
  float* dk = b.T1;  // [kC][ldk]
  for (int64_t ch = c0; ch < c1; ++ch) {
    const int64_t t = ch * kC, n = std::min(kC, u.T - t), rows = r16(n);
    if (ch + 1 < c1) prefetch_chunk(c, u, t + kC, std::min(kC, u.T - t - kC));
    int64_t ldk, ldv;
    const uint16_t* Kr = chunk_rows(c.k, u, u.hkv, t, n, c.dk, c.lk32, b.Kb, &ldk);
    const uint16_t* Vr = v_rows(c, u, t, n, b, &ldv);
    T.tile_gemm(rows, c.ldv, c.lk32, Kr, ldk, b.Xv, 2 * c.ldv, dv, c.ldv, false);
    store_rows_any(c, u, t, n, dv, c.ldv, c.dv, c.dv_, u.hkv, w.gqa ? w.pdv.get() : nullptr);
    T.tile_gemm(rows, c.ldk, c.lv32, Vr, ldv, b.XTv, 2 * c.lk32, dk, c.ldk, false);
    store_rows_any(c, u, t, n, dk, c.ldk, c.dk, c.dk_, u.hkv, w.gqa ? w.pdk.get() : nullptr);
  }
}

#else  // no x86 AMX build: never called (Ctx::amx is false without a bf16 kernel table)

void bf16_forward_lockstep(const Ctx&, const Unit*, int, int64_t, int64_t, Bufs&, float* const*, const bool*,
                           bool, float*) {}
void bf16_local_state(const Ctx&, const Unit&, int64_t, int64_t, Bufs&, float*, float*) {}
void bf16_backward_forward_lockstep(const Ctx&, const Unit*, int, int64_t, int64_t, Bufs&, float* const*,
                                    const bool*, BwdWork&, float*) {}
void bf16_backward_reverse_lockstep(const Ctx&, const Unit*, int64_t, int, const Segment&, Bufs&,
                                    float* const*, const bool*, const float*, BwdWork&, float*, uint16_t*) {}
void bf16_reverse_local(const Ctx&, const Unit&, int64_t, int64_t, Bufs&, float*, const BwdWork&) {}
void bf16_noncausal_output(const Ctx&, const Unit&, int64_t, int64_t, Bufs&, const float*) {}
void bf16_noncausal_dq(const Ctx&, const Unit&, int64_t, int64_t, Bufs&, const float*, const float*, float*,
                       BwdWork&) {}
void bf16_noncausal_dkdv(const Ctx&, const Unit&, int64_t, int64_t, Bufs&, const float*, BwdWork&) {}

#endif

}  // namespace attnkit::cpu::lin
