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
AK_TGT void decayed_kt(const uint16_t* KTv, int64_t pairs, const float* ekB, int64_t nt, uint16_t* KdT) {
  const __m512i hi_mask = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t p = 0; p < pairs; ++p) {
    const uint32_t* row = reinterpret_cast<const uint32_t*>(KTv) + p * kC;
    for (int64_t j = 0; j < nt; j += 16) {
      const __m512i x = _mm512_loadu_si512(row + j);
      const __m512 e = _mm512_loadu_ps(ekB + j);
      const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
      const __m512 hi = _mm512_castsi512_ps(_mm512_and_si512(x, hi_mask));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(KdT + 2 * p * kC + j), narrow(_mm512_mul_ps(lo, e)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(KdT + (2 * p + 1) * kC + j), narrow(_mm512_mul_ps(hi, e)));
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
void state_update_bf16(const Ctx& c, int64_t n, Bufs& b, float* S, bool zero_in, bool scaled) {
  const int64_t nt = r32(n);
  decayed_kt(b.KTv, c.ldk / 2, b.ekB, nt, b.KdTb);
  if (!zero_in && !scaled) scale_inplace(S, c.ldk * c.ldv, b.eB);
  c.K->bf16->tile_gemm(c.ldk, c.ldv, nt, b.KdTb, kC, b.SVv + (c.lk32 / 2) * 2 * c.ldv, 2 * c.ldv, S,
                       c.ldv, !zero_in);
}

void store_out_bf16(const Ctx& c, const Unit& u, int64_t t, int64_t n, const float* O, float* row) {
  if (c.normalize || c.out.dt != DType::BFloat16) {
    store_out(c, u, t, n, O, row);
    return;
  }
  for (int64_t i = 0; i < n; ++i)
    cvt_scaled(O + i * c.ldv, 1.f, c.dv, static_cast<uint16_t*>(c.out.row(u.b, u.t0 + t + i, u.hq)));
}

}  // namespace

void bf16_forward_chunks(const Ctx& c, const Unit& u, int64_t c0, int64_t c1, Bufs& b, float* S,
                         bool zero, bool keep_state) {
  const Bf16Kernels& T = *c.K->bf16;
  const int64_t lda = c.lk32 + kC;
  Decays dec;
  dec.init(c, u);
  for (int64_t ch = c0; ch < c1; ++ch) {
    const int64_t t = ch * kC, n = std::min(kC, u.T - t);
    const int64_t rows = r16(n);  // query rows computed (16-row tiles)
    if (ch + 1 < c1) prefetch_chunk(c, u, t + kC, std::min(kC, u.T - t - kC));
    dec.chunk(c, u, t, n, b, true);
    // q rows: read in place when they need no padding, else copied.
    const uint16_t* Qa = b.Qb;
    int64_t ldq = c.lk32;
    if (n == kC && c.dk == c.lk32) {
      Qa = static_cast<const uint16_t*>(c.q.row(u.b, u.t0 + t, u.hq));
      ldq = c.q.ts;
    } else {
      copy_rows_bf16(c.q, u, u.hq, t, n, c.dk, c.lk32, rows, b.Qb);
    }
    pack_k_bf16(c, u, t, n, b);
    pack_v_bf16(c, u, t, n, b);
    // P = Q K^T (all 64 keys: the part above the diagonal is zeroed by D), then
    // the A operand [q * scale * ed | P o D * scale].
    T.tile_gemm(rows, kC, c.lk32, Qa, ldq, b.KTv, 2 * kC, b.P, kC, false);
    for (int64_t i = 0; i < rows; ++i) {
      uint16_t* a = b.Ab + i * lda;
      decay_row(b.P + i * kC, b.D + i * kC, c.scale, a + c.lk32);
      if (zero) continue;
      if (i < n)
        bf16_scaled(Qa + i * ldq, c.scale * b.ed[i], c.dk, c.lk32, a);
      else
        std::fill(a, a + c.lk32, uint16_t(0));
    }
    // O = [Q diag(scale ed) | P o D scale] . [S_in ; V]; S_in's operand copy is
    // written in the same pass that applies this chunk's decay to S.
    if (!zero) {
      for (int64_t p = 0; p < c.lk32 / 2; ++p)
        vnni_rows_and_scale(S + 2 * p * c.ldv, S + (2 * p + 1) * c.ldv, c.ldv, b.eB,
                            b.SVv + p * 2 * c.ldv);
      T.tile_gemm(rows, c.ldv, c.lk32 + kC, b.Ab, lda, b.SVv, 2 * c.ldv, b.O, c.ldv, false);
    } else {
      T.tile_gemm(rows, c.ldv, kC, b.Ab + c.lk32, lda, b.SVv + (c.lk32 / 2) * 2 * c.ldv, 2 * c.ldv,
                  b.O, c.ldv, false);
    }
    store_out_bf16(c, u, t, n, b.O, b.row);
    if (ch + 1 < u.chunks() || keep_state) {
      state_update_bf16(c, n, b, S, zero, true);
      zero = false;
    }
  }
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
    pack_k_bf16(c, u, t, n, b);
    pack_v_bf16(c, u, t, n, b);
    state_update_bf16(c, n, b, S, zero, false);
    zero = false;
    prod *= b.eB;
  }
  *decay = prod;
}

#else  // no x86 AMX build: never called (Ctx::amx is false without a bf16 kernel table)

void bf16_forward_chunks(const Ctx&, const Unit&, int64_t, int64_t, Bufs&, float*, bool, bool) {}
void bf16_local_state(const Ctx&, const Unit&, int64_t, int64_t, Bufs&, float*, float*) {}

#endif

}  // namespace attnkit::cpu::lin
