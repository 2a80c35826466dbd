// attnkit CPU backend: run-time ISA selection and dtype conversions.
#include "kernels.hpp"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "attnkit/error.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define AK_X86 1
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace attnkit::cpu {

#ifdef AK_HAVE_AMX
const KernelTable* kernel_table_amx();
#endif
#ifdef AK_HAVE_AVX512
const KernelTable* kernel_table_avx512();
#endif
#ifdef AK_HAVE_AVX2
const KernelTable* kernel_table_avx2();
#endif
const KernelTable* kernel_table_generic();

CpuFeatures cpu_features() {
  CpuFeatures f;
#ifdef AK_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1;
  f.fma = (c >> 12) & 1;
  f.f16c = (c >> 29) & 1;
  unsigned long long xcr0 = 0;
  if (osxsave) {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (static_cast<unsigned long long>(hi) << 32) | lo;
  }
  const bool ymm_os = (xcr0 & 0x6) == 0x6;
  const bool zmm_os = (xcr0 & 0xe6) == 0xe6;
  const bool tile_os = (xcr0 & 0x60000) == 0x60000;  // XTILECFG + XTILEDATA
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.avx2 = ymm_os && ((b >> 5) & 1);
    f.avx512f = zmm_os && ((b >> 16) & 1);
    f.avx512dq = zmm_os && ((b >> 17) & 1);
    f.avx512bw = zmm_os && ((b >> 30) & 1);
    f.avx512vl = zmm_os && ((b >> 31) & 1);
    f.avx512fp16 = zmm_os && ((d >> 23) & 1);
    f.amx_bf16 = tile_os && ((d >> 22) & 1) && ((d >> 24) & 1);
    unsigned a1, b1, c1, d1;
    if (__get_cpuid_count(7, 1, &a1, &b1, &c1, &d1)) f.avx512bf16 = zmm_os && ((a1 >> 5) & 1);
  }
  f.fma = f.fma && ymm_os;
#endif
  return f;
}

namespace {

struct IsaEntry {
  const char* name;
  const KernelTable* (*table)();
  bool (*supported)(const CpuFeatures&);
};

// Linux hands out the 8 KiB AMX tile state only on request (once per process).
bool amx_permitted() {
#if defined(__linux__) && defined(AK_X86)
  static const bool ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                                 18 /* XFEATURE_XTILEDATA */) == 0;
  return ok;
#else
  return false;
#endif
}

const IsaEntry kIsas[] = {
#ifdef AK_HAVE_AMX
    {"amx", kernel_table_amx,
     [](const CpuFeatures& f) {
       return f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.fma && f.avx512bf16 &&
              f.amx_bf16 && amx_permitted();
     }},
#endif
#ifdef AK_HAVE_AVX512
    {"avx512", kernel_table_avx512,
     [](const CpuFeatures& f) { return f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.fma; }},
#endif
#ifdef AK_HAVE_AVX2
    {"avx2", kernel_table_avx2, [](const CpuFeatures& f) { return f.avx2 && f.fma && f.f16c; }},
#endif
    {"generic", kernel_table_generic, [](const CpuFeatures&) { return true; }},
};

const KernelTable* select_auto() {
  const CpuFeatures f = cpu_features();
  for (const auto& e : kIsas)
    if (e.supported(f)) return e.table();
  return kernel_table_generic();
}

const KernelTable* find_table(const char* name) {
  const CpuFeatures f = cpu_features();
  for (const auto& e : kIsas)
    if (std::strcmp(e.name, name) == 0) {
      AK_CHECK(e.supported(f), Unsupported, "CPU ISA '", name, "' is compiled in but this CPU lacks it");
      return e.table();
    }
  std::string names;
  for (const auto& e : kIsas) names += std::string(names.empty() ? "" : ", ") + e.name;
  throw Error(ErrorCode::InvalidArgument,
              "unknown CPU ISA '" + std::string(name) + "'; this build has: " + names);
}

std::atomic<const KernelTable*> g_table{nullptr};

}  // namespace

const KernelTable& kernels() {
  const KernelTable* t = g_table.load(std::memory_order_acquire);
  if (!t) {
    const char* env = std::getenv("ATTNKIT_ISA");
    t = (env && *env) ? find_table(env) : select_auto();
    g_table.store(t, std::memory_order_release);
  }
  return *t;
}

void set_isa(const char* name) {
  g_table.store(name && *name ? find_table(name) : select_auto(), std::memory_order_release);
}

const char* const* available_isas() {
  static const char* names[sizeof(kIsas) / sizeof(kIsas[0]) + 1] = {};
  static bool init = [] {
    const CpuFeatures f = cpu_features();
    int n = 0;
    for (const auto& e : kIsas)
      if (e.supported(f)) names[n++] = e.name;
    return true;
  }();
  (void)init;
  return names;
}

bool amx_available() { return kernels().bf16 != nullptr; }

void gemm_bf16(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda, const uint16_t* B,
               int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  const KernelTable& kt = kernels();
  const int64_t Mp = (M + 15) / 16 * 16, Np = (N + 15) / 16 * 16, Kp = (K + 31) / 32 * 32;
  if (kt.bf16) {
    // Fast path in place; otherwise copy into zero-padded operands (the copies
    // are O(MK + KN + MN) against the product's O(MNK)).
    const bool aligned = M == Mp && N == Np && K == Kp;
    std::vector<uint16_t> Ap, Bp;
    std::vector<float> Cp;
    const uint16_t* a = A;
    const uint16_t* b = B;
    float* c = C;
    int64_t la = lda, lb = ldb, lc = ldc;
    if (!aligned) {
      Ap.assign(Mp * Kp, 0);
      Bp.assign(Kp / 2 * 2 * Np, 0);
      Cp.assign(Mp * Np, 0.f);
      for (int64_t m = 0; m < M; ++m) std::memcpy(&Ap[m * Kp], A + m * lda, K * 2);
      for (int64_t kk = 0; kk < K / 2; ++kk) std::memcpy(&Bp[kk * 2 * Np], B + kk * ldb, N * 4);
      if (accumulate)
        for (int64_t m = 0; m < M; ++m) std::memcpy(&Cp[m * Np], C + m * ldc, N * 4);
      a = Ap.data(), b = Bp.data(), c = Cp.data();
      la = Kp, lb = 2 * Np, lc = Np;
    }
    kt.bf16->begin();
    kt.bf16->tile_gemm(Mp, Np, Kp, a, la, b, lb, c, lc, accumulate);
    kt.bf16->end();
    if (!aligned)
      for (int64_t m = 0; m < M; ++m) std::memcpy(C + m * ldc, &Cp[m * Np], N * 4);
    return;
  }
  // No bf16 matrix unit: widen to fp32 (B un-interleaved) and use the fp32 micro-GEMM.
  std::vector<float> Af(M * K), Bf(K * Np, 0.f), Cf(M * Np, 0.f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t kk = 0; kk < K; ++kk) Af[m * K + kk] = bf16_to_float(A[m * lda + kk]);
  for (int64_t kk = 0; kk < K; ++kk)
    for (int64_t n = 0; n < N; ++n) Bf[kk * Np + n] = bf16_to_float(B[(kk / 2) * ldb + 2 * n + kk % 2]);
  if (accumulate)
    for (int64_t m = 0; m < M; ++m) std::memcpy(&Cf[m * Np], C + m * ldc, N * 4);
  kt.gemm(M, Np / 16, K, Af.data(), K, 1, Bf.data(), Np, Cf.data(), Np, accumulate);
  for (int64_t m = 0; m < M; ++m) std::memcpy(C + m * ldc, &Cf[m * Np], N * 4);
}

// IEEE half <-> float, bit exact, round-to-nearest-even.
float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ffu, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while (!(man & 0x400u)) {
        man <<= 1;
        --exp;
      }
      u = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t float_to_half(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t au = u & 0x7fffffffu;
  if (au >= 0x7f800000u) return sign | (au > 0x7f800000u ? 0x7e00 : 0x7c00);  // NaN / Inf
  if (au >= 0x477ff000u) return sign | 0x7c00;                              // overflow
  if (au < 0x38800000u) {                                                   // subnormal / 0
    if (au < 0x33000000u) return sign;
    const uint32_t e = au >> 23;
    const uint32_t m = (au & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1))) ++r;
    return sign | static_cast<uint16_t>(r);
  }
  uint32_t r = au - 0x38000000u;  // rebias exponent
  r += 0xfffu + ((r >> 13) & 1u);
  return sign | static_cast<uint16_t>(r >> 13);
}

}  // namespace attnkit::cpu
