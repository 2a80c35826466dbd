// attnkit CPU backend: micro-kernels, written once with GCC/Clang vector
// extensions and compiled once per ISA (kernels_<isa>.cpp sets the flags and
// AK_ISA). With -mavx512f a `vf` is one zmm register; with -mavx2 two ymm; with
// no flags the compiler uses whatever the target's baseline offers.
//
// Included only by kernels_<isa>.cpp, each inside its own namespace, after
// <immintrin.h>, <cmath>, <cstdint>, <cstring> and kernels.hpp.

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
// Unaligned, alias-safe view for loads/stores of panel rows.
typedef float vfu __attribute__((vector_size(64), aligned(4), may_alias));
// 64 bytes at any address: row copies of bf16/fp16 data (rows of an odd head dim
// such as 33 are only 2-byte aligned) must not claim float alignment.
typedef char vbu __attribute__((vector_size(64), aligned(1), may_alias));

namespace {

using attnkit::cpu::kQ;
constexpr int kQV = kQ / 16;  // vectors per query tile row

inline vf splat(float x) { return vf{} + x; }
inline vf loadu(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void storeu(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }

// 2^x for x <= 128; x <= -127 (and -inf) gives exactly 0, NaN stays NaN.
// Round-to-nearest split x = n + f, |f| <= 1/2, then a degree-6 polynomial for
// 2^f (Cephes exp2f coefficients, relative error ~2e-7) scaled by 2^n through
// the exponent bits.
inline vf exp2v(vf x) {
  x = x < splat(-127.f) ? splat(-127.f) : x;
  x = x > splat(127.f) ? splat(127.f) : x;
  const vf magic = splat(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer
  vf t = x + magic;
  vf n = t - magic;
  vf f = x - n;
  vi ni = reinterpret_cast<vi&>(t) - 0x4B400000;
  vf p = splat(1.535336188319500e-4f);
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.f;
  vi e = (ni + 127) << 23;
  return p * reinterpret_cast<vf&>(e);
}

// The register-blocked core: MR rows of A (broadcast) times NV vectors of B.
// MR*NV <= 24 accumulators stay in registers on AVX-512.
template <int MR, int NV>
inline void micro(int64_t K, const float* A, int64_t sm, int64_t sk, const float* B, int64_t ldb,
                  float* C, int64_t ldc, bool accumulate) {
  vf c[MR][NV];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[m][v] = accumulate ? loadu(C + m * ldc + 16 * v) : splat(0.f);
  const float* a = A;
  const float* b = B;
  for (int64_t k = 0; k < K; ++k) {
    vf bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = loadu(b + 16 * v);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const float am = a[m * sm];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[m][v] += am * bv[v];
    }
    a += sk;
    b += ldb;
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) storeu(C + m * ldc + 16 * v, c[m][v]);
}

template <int NV>
inline void micro_rows(int64_t mr, int64_t K, const float* A, int64_t sm, int64_t sk,
                       const float* B, int64_t ldb, float* C, int64_t ldc, bool acc) {
  switch (mr) {
    case 8: micro<8, NV>(K, A, sm, sk, B, ldb, C, ldc, acc); break;
    case 7: micro<7, NV>(K, A, sm, sk, B, ldb, C, ldc, acc); break;
    case 6: micro<6, NV>(K, A, sm, sk, B, ldb, C, ldc, acc); break;
    case 5: micro<5, NV>(K, A, sm, sk, B, ldb, C, ldc, acc); break;
    case 4: micro<4, NV>(K, A, sm, sk, B, ldb, C, ldc, acc); break;
    case 3: micro<3, NV>(K, A, sm, sk, B, ldb, C, ldc, acc); break;
    case 2: micro<2, NV>(K, A, sm, sk, B, ldb, C, ldc, acc); break;
    default: micro<1, NV>(K, A, sm, sk, B, ldb, C, ldc, acc); break;
  }
}

void gemm(int64_t M, int64_t NV, int64_t K, const float* A, int64_t sm, int64_t sk, const float* B,
          int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  if (K == 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m) std::memset(C + m * ldc, 0, sizeof(float) * 16 * NV);
    return;
  }
  // Column blocks of 4 vectors: the B panel slice (K x 64 floats) stays in L1
  // while every row block of A streams past it.
  for (int64_t n0 = 0; n0 < NV; n0 += 4) {
    const int64_t nv = NV - n0 < 4 ? NV - n0 : 4;
    const float* Bn = B + 16 * n0;
    float* Cn = C + 16 * n0;
    // Row blocks keep MR * nv accumulators in registers: 6 x 4 or 6 x 3 (24 / 18
    // of 32 registers), and 8 rows for one or two vectors, where six rows would be
    // too few independent FMA chains to cover the FMA latency.
    const int64_t MR = nv <= 2 ? 8 : 6;
    for (int64_t m0 = 0; m0 < M; m0 += MR) {
      const int64_t mr = M - m0 < MR ? M - m0 : MR;
      const float* Am = A + m0 * sm;
      float* Cm = Cn + m0 * ldc;
      switch (nv) {
        case 4: micro_rows<4>(mr, K, Am, sm, sk, Bn, ldb, Cm, ldc, accumulate); break;
        case 3: micro_rows<3>(mr, K, Am, sm, sk, Bn, ldb, Cm, ldc, accumulate); break;
        case 2: micro_rows<2>(mr, K, Am, sm, sk, Bn, ldb, Cm, ldc, accumulate); break;
        default: micro_rows<1>(mr, K, Am, sm, sk, Bn, ldb, Cm, ldc, accumulate); break;
      }
    }
  }
}

// The online-softmax step on the lanes [0, 16 * NV) of rows kQ floats apart
// (callers offset the pointers to their first vector).
template <int NV>
bool softmax_step_n(float* S, int64_t nk, float* m, float* l, float* alpha) {
  vf mx[NV];
  for (int v = 0; v < NV; ++v) mx[v] = splat(-INFINITY);
  for (int64_t j = 0; j < nk; ++j)
    for (int v = 0; v < NV; ++v) mx[v] = vmax(mx[v], loadu(S + j * kQ + 16 * v));
  vf use[NV], sum[NV];
  bool rescale = false;
  // Keep the reference max while the chunk's scores exceed it by at most 2^8
  // (probabilities <= 256): then O needs no rescale.
  bool keep = true;
  for (int v = 0; v < NV; ++v) {
    vi ok = loadu(m + 16 * v) != splat(-INFINITY) & mx[v] <= loadu(m + 16 * v) + 8.f;
    for (int i = 0; i < 16; ++i) keep &= ok[i] != 0;
  }
  for (int v = 0; v < NV; ++v) {
    vf old = loadu(m + 16 * v);
    vf mnew = keep ? old : vmax(old, mx[v]);
    // A row that has seen only masked keys keeps max -inf; subtract 0 instead
    // so that exp2(-inf - 0) = 0 rather than NaN.
    use[v] = mnew == splat(-INFINITY) ? splat(0.f) : mnew;
    vf a = exp2v(old - use[v]);
    // Rows never touched before have old = -inf: alpha 0, and l, O are 0 anyway,
    // so they ask for no rescale.
    storeu(alpha + 16 * v, a);
    storeu(m + 16 * v, mnew);
    vi ne = (a != splat(1.f)) & (old != splat(-INFINITY));
    for (int i = 0; i < 16; ++i) rescale |= ne[i] != 0;
    sum[v] = splat(0.f);
  }
  for (int64_t j = 0; j < nk; ++j)
    for (int v = 0; v < NV; ++v) {
      vf p = exp2v(loadu(S + j * kQ + 16 * v) - use[v]);
      sum[v] += p;
      storeu(S + j * kQ + 16 * v, p);
    }
  for (int v = 0; v < NV; ++v)
    storeu(l + 16 * v, loadu(l + 16 * v) * loadu(alpha + 16 * v) + sum[v]);
  return rescale;
}

bool softmax_step(float* S, int64_t nk, float* m, float* l, float* alpha, int v0, int v1) {
  const int o = 16 * v0;
  switch (v1 - v0) {
    case 4: return softmax_step_n<4>(S + o, nk, m + o, l + o, alpha + o);
    case 3: return softmax_step_n<3>(S + o, nk, m + o, l + o, alpha + o);
    case 2: return softmax_step_n<2>(S + o, nk, m + o, l + o, alpha + o);
    case 1: return softmax_step_n<1>(S + o, nk, m + o, l + o, alpha + o);
    default: return false;
  }
}

template <int NV>
void softmax_grad_n(float* S, float* dP, int64_t nk, const float* lse2, const float* delta,
                    float ds_scale, const float* cap_grad) {
  vf L[NV], D[NV];
  for (int v = 0; v < NV; ++v) {
    L[v] = loadu(lse2 + 16 * v);
    D[v] = loadu(delta + 16 * v);
  }
  for (int64_t j = 0; j < nk; ++j)
    for (int v = 0; v < NV; ++v) {
      const int64_t o = j * kQ + 16 * v;
      vf p = exp2v(loadu(S + o) - L[v]);
      vf ds = p * (loadu(dP + o) - D[v]) * ds_scale;
      if (cap_grad) ds *= loadu(cap_grad + o);
      storeu(S + o, p);
      storeu(dP + o, ds);
    }
}

void softmax_grad(float* S, float* dP, int64_t nk, const float* lse2, const float* delta,
                  float ds_scale, const float* cap_grad, int v0, int v1) {
  const int o = 16 * v0;
  const float* cg = cap_grad ? cap_grad + o : nullptr;
  switch (v1 - v0) {
    case 4: return softmax_grad_n<4>(S + o, dP + o, nk, lse2 + o, delta + o, ds_scale, cg);
    case 3: return softmax_grad_n<3>(S + o, dP + o, nk, lse2 + o, delta + o, ds_scale, cg);
    case 2: return softmax_grad_n<2>(S + o, dP + o, nk, lse2 + o, delta + o, ds_scale, cg);
    case 1: return softmax_grad_n<1>(S + o, dP + o, nk, lse2 + o, delta + o, ds_scale, cg);
    default: return;
  }
}

void softcap(float* S, int64_t nk, float cap, float* grad) {
  const float inv = 1.f / cap;
  const float two_log2e = 2.f * 1.4426950408889634f;
  const float out_scale = cap * 1.4426950408889634f;
  for (int64_t j = 0; j < nk; ++j)
    for (int v = 0; v < kQV; ++v) {
      const int64_t o = j * kQ + 16 * v;
      vf y = loadu(S + o) * inv;
      // tanh(y) = 1 - 2 / (exp(2y) + 1); exp2v saturates at 2^127, which keeps
      // the quotient finite for large |y|.
      vf t = splat(1.f) - splat(2.f) / (exp2v(y * two_log2e) + 1.f);
      storeu(S + o, t * out_scale);
      if (grad) storeu(grad + o, splat(1.f) - t * t);
    }
}

void scale_rows(float* X, int64_t rows, const float* alpha) {
  vf a[kQV];
  for (int v = 0; v < kQV; ++v) a[v] = loadu(alpha + 16 * v);
  for (int64_t r = 0; r < rows; ++r)
    for (int v = 0; v < kQV; ++v) storeu(X + r * kQ + 16 * v, loadu(X + r * kQ + 16 * v) * a[v]);
}

// X[r][16 v0 .. 16 v1) *= alpha[16 v0 .. 16 v1), rows kQ floats apart.
void scale_lanes(float* X, int64_t rows, const float* alpha, int v0, int v1) {
  for (int64_t r = 0; r < rows; ++r)
    for (int v = v0; v < v1; ++v) storeu(X + r * kQ + 16 * v, loadu(X + r * kQ + 16 * v) * loadu(alpha + 16 * v));
}

// ---------------------------------------------------------------- data movement
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint32_t vuu __attribute__((vector_size(64), aligned(4), may_alias));
// 32-bit units (bf16/fp16 pairs) of an input row: 2-byte aligned for odd head dims.
typedef uint32_t vuu2 __attribute__((vector_size(64), aligned(2), may_alias));
typedef uint16_t vh __attribute__((vector_size(64)));
typedef uint16_t vhu __attribute__((vector_size(64), aligned(2), may_alias));

// One butterfly stage of a 16x16 transpose: swaps the off-diagonal h x h blocks
// of every 2h x 2h block (rows i and i + h exchange their halves).
template <unsigned h, unsigned... J>
constexpr vu butterfly_lo(std::integer_sequence<unsigned, J...>) {
  return vu{((J & h) == 0 ? J : 16 + J - h)...};
}
template <unsigned h, unsigned... J>
constexpr vu butterfly_hi(std::integer_sequence<unsigned, J...>) {
  return vu{((J & h) == 0 ? J + h : 16 + J)...};
}
template <unsigned h>
inline void butterfly(vu* r) {
  constexpr vu lo = butterfly_lo<h>(std::make_integer_sequence<unsigned, 16>{});
  constexpr vu hi = butterfly_hi<h>(std::make_integer_sequence<unsigned, 16>{});
  for (unsigned i = 0; i < 16; ++i)
    if ((i & h) == 0) {
      const vu a = r[i], b = r[i + h];
      r[i] = __builtin_shuffle(a, b, lo);
      r[i + h] = __builtin_shuffle(a, b, hi);
    }
}

// dst[c * ldd + r] = src[r * lds + c] for 32-bit elements, rows x cols.
void transpose32(const void* src_, int64_t lds, int64_t rows, int64_t cols, void* dst_, int64_t ldd) {
  const uint32_t* src = static_cast<const uint32_t*>(src_);
  uint32_t* dst = static_cast<uint32_t*>(dst_);
  const int64_t R = rows / 16 * 16, C = cols / 16 * 16;
  for (int64_t r0 = 0; r0 < R; r0 += 16)
    for (int64_t c0 = 0; c0 < C; c0 += 16) {
      vu v[16];
      for (int i = 0; i < 16; ++i) v[i] = *reinterpret_cast<const vuu*>(src + (r0 + i) * lds + c0);
      butterfly<8>(v);
      butterfly<4>(v);
      butterfly<2>(v);
      butterfly<1>(v);
      for (int i = 0; i < 16; ++i) *reinterpret_cast<vuu*>(dst + (c0 + i) * ldd + r0) = v[i];
    }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = r < R ? C : 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}

void store_row(const float* src, int64_t n, attnkit::DType dtype, void* dst);

// dst[c * ldd + r] = unit c of row src[r] (32-bit units) for r < rows, c < cols,
// both multiples of 16; a row holds src_bytes valid bytes, the rest (and null
// rows) read as zero. The transposition of a tile's rows straight from the input.
void gather_transpose32(const void* const* src, int64_t rows, int64_t src_bytes, int64_t cols,
                        void* dst_, int64_t ldd) {
  uint32_t* dst = static_cast<uint32_t*>(dst_);
  for (int64_t r0 = 0; r0 < rows; r0 += 16)
    for (int64_t c0 = 0; c0 < cols; c0 += 16) {
      const int64_t off = 4 * c0, valid = src_bytes - off;  // bytes of this block in a row
      vu v[16];
      for (int i = 0; i < 16; ++i) {
        const char* row = static_cast<const char*>(src[r0 + i]);
        if (row && valid >= 64) {
          v[i] = *reinterpret_cast<const vuu2*>(row + off);
        } else {
          v[i] = vu{};
          if (row && valid > 0) std::memcpy(&v[i], row + off, static_cast<size_t>(valid));
        }
      }
      butterfly<8>(v);
      butterfly<4>(v);
      butterfly<2>(v);
      butterfly<1>(v);
      for (int i = 0; i < 16; ++i) *reinterpret_cast<vuu*>(dst + (c0 + i) * ldd + r0) = v[i];
    }
}

// Row r < n of the output, dst[r][c] = X[c][r] * scale[r] for c < cols, converted
// to `dtype`: the unnormalised O^T of a tile ([cols][kQ], rows kQ floats apart)
// normalised, transposed and stored in one pass.
void store_transposed(const float* X, int64_t cols, const float* scale, int64_t n, void* const* dst,
                      attnkit::DType dtype) {
  using attnkit::DType;
  const int64_t es = dtype == DType::Float32 ? 4 : 2;
  for (int64_t r0 = 0; r0 < n; r0 += 16) {
    const vf sc = loadu(scale + r0);
    for (int64_t c0 = 0; c0 < cols; c0 += 16) {
      const int64_t nc = cols - c0 < 16 ? cols - c0 : 16;
      vu v[16];
      for (int i = 0; i < 16; ++i) {
        const vf x = i < nc ? loadu(X + (c0 + i) * kQ + r0) * sc : vf{};
        v[i] = reinterpret_cast<const vu&>(x);
      }
      butterfly<8>(v);
      butterfly<4>(v);
      butterfly<2>(v);
      butterfly<1>(v);
      for (int i = 0; i < 16 && r0 + i < n; ++i) {
        char* d = static_cast<char*>(dst[r0 + i]) + c0 * es;
        if (dtype == DType::Float32) {
          if (nc == 16) *reinterpret_cast<vuu*>(d) = v[i];
          else std::memcpy(d, &v[i], static_cast<size_t>(4 * nc));
        } else if (dtype == DType::BFloat16) {
          // round to nearest even; NaN stays (quiet) NaN
          const vu u = v[i];
          const vu r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
          const vu h = ((u & 0x7fffffffu) > 0x7f800000u) ? ((u >> 16) | 0x40u) : r;
          typedef uint16_t vh16 __attribute__((vector_size(32)));
          typedef uint16_t vh16u __attribute__((vector_size(32), aligned(2), may_alias));
          const vh16 out = __builtin_convertvector(h, vh16);
          if (nc == 16) *reinterpret_cast<vh16u*>(d) = out;
          else std::memcpy(d, &out, static_cast<size_t>(2 * nc));
        } else {
          alignas(64) float tmp[16];
          std::memcpy(tmp, &v[i], sizeof(tmp));
          store_row(tmp, nc, dtype, d);
        }
      }
    }
  }
}

// out[2i] = a[i], out[2i+1] = b[i] for 16-bit elements (b null: zeros).
void interleave16(const uint16_t* a, const uint16_t* b, int64_t n, uint16_t* out) {
  // lo[2i] = i, lo[2i+1] = 32 + i; hi the same for i + 16.
  constexpr vh lo = {0, 32, 1, 33, 2,  34, 3,  35, 4,  36, 5,  37, 6,  38, 7,  39,
                     8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  constexpr vh hi = lo + 16;
  int64_t i = 0;
  for (; b && i + 32 <= n; i += 32) {
    const vh x = *reinterpret_cast<const vhu*>(a + i), y = *reinterpret_cast<const vhu*>(b + i);
    *reinterpret_cast<vhu*>(out + 2 * i) = __builtin_shuffle(x, y, lo);
    *reinterpret_cast<vhu*>(out + 2 * i + 32) = __builtin_shuffle(x, y, hi);
  }
  for (; i < n; ++i) {
    out[2 * i] = a[i];
    out[2 * i + 1] = b ? b[i] : 0;
  }
}

// dst row i (dst_bytes apart) = the `bytes` bytes at src[i], zero up to dst_bytes
// (a null src[i]: all zero). Source rows are prefetched a few rows ahead: they
// are gathered in an order the hardware prefetchers do not follow.
void gather_rows(const void* const* src, int64_t n, int64_t bytes, void* dst_, int64_t dst_bytes) {
  constexpr int64_t kAhead = 6;
  char* dst = static_cast<char*>(dst_);
  for (int64_t i = 0; i < n; ++i) {
    if (i + kAhead < n && src[i + kAhead])
      for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(static_cast<const char*>(src[i + kAhead]) + o, 0, 3);
    const char* s = static_cast<const char*>(src[i]);
    char* d = dst + i * dst_bytes;
    if (!s) {
      std::memset(d, 0, static_cast<size_t>(dst_bytes));
      continue;
    }
    int64_t o = 0;
    for (; o + 64 <= bytes; o += 64) *reinterpret_cast<vbu*>(d + o) = *reinterpret_cast<const vbu*>(s + o);
    if (o < bytes) std::memcpy(d + o, s + o, bytes - o);
    if (dst_bytes > bytes) std::memset(d + bytes, 0, dst_bytes - bytes);
  }
}

// Row conversions, written as plain loops the compiler vectorises per ISA.
void load_row(const void* src, attnkit::DType dtype, int64_t n, float* dst) {
  using attnkit::DType;
  if (dtype == DType::Float32) {
    std::memcpy(dst, src, sizeof(float) * n);
  } else if (dtype == DType::BFloat16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    uint32_t* d = reinterpret_cast<uint32_t*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = static_cast<uint32_t>(s[i]) << 16;
  } else if (dtype == DType::Float16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    int64_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i))));
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
#endif
    for (; i < n; ++i) dst[i] = attnkit::cpu::half_to_float(s[i]);
  }
}

void store_row(const float* src, int64_t n, attnkit::DType dtype, void* dst) {
  using attnkit::DType;
  if (dtype == DType::Float32) {
    std::memcpy(dst, src, sizeof(float) * n);
  } else if (dtype == DType::BFloat16) {
    const uint32_t* s = reinterpret_cast<const uint32_t*>(src);
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) {  // round to nearest even; NaN stays (quiet) NaN
      const uint32_t u = s[i];
      const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
      d[i] = static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : r);
    }
  } else if (dtype == DType::Float16) {
    uint16_t* d = static_cast<uint16_t*>(dst);
    int64_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i),
                          _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i),
                       _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; ++i) d[i] = attnkit::cpu::float_to_half(src[i]);
  }
}

}  // namespace

const attnkit::cpu::KernelTable* AK_TABLE_FN() {
  static const attnkit::cpu::KernelTable table{AK_ISA_NAME, gemm,        softmax_step, softmax_grad,
                                               softcap,     scale_rows,  transpose32,  interleave16,
                                               load_row,    store_row,   nullptr,      scale_lanes,
                                               gather_rows, gather_transpose32, store_transposed};
  return &table;
}
