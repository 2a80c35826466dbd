// attnkit CPU backend: the micro-kernel table.
//
// The engine (engine.hpp) is plain C++ and calls the hot loops through this
// table. Each ISA (AVX-512, AVX2, portable) compiles the same source
// (kernels_impl.hpp) with its own flags; the table is chosen once at run time
// from the CPU's features. The fp32 kernels serve every dtype (fp16/bf16 are
// widened while packing: AVX512-BF16 dot products are no faster than fp32 FMA).
// The "amx" ISA adds a bf16 matrix path (Bf16Kernels) on AMX tiles, ~8x the
// fp32 FMA rate, which the engine uses for bf16 inputs.
#pragma once

#include <cstdint>

#include "attnkit/tensor.hpp"

namespace attnkit::cpu {

// Query tiles are kQ rows wide: the engine keeps scores transposed, S^T[key][query],
// so that the query index runs along SIMD lanes and all softmax statistics are
// vertical (lane-wise) operations.
constexpr int kQ = 64;
constexpr int kLanes = 16;  // panel widths are multiples of 16 floats

// The bf16 matrix path (AMX tiles). bf16 operands are uint16_t bit patterns.
// "VNNI" layout: a [K x N] operand stored with pairs of consecutive k
// interleaved, element (k, n) at B[(k/2)*ldb + 2*n + (k%2)] -- the form the
// tile dot-product instruction reads its second operand in.
struct Bf16Kernels {
  // Tile registers are per thread: begin() configures them (call once per work
  // item, before tile_gemm), end() releases them.
  void (*begin)();
  void (*end)();
  // C[M x N] (+)= A[M x K] * B[K x N] with A bf16 row-major (row m at A + m*lda),
  // B bf16 VNNI, C fp32 row-major. M, N multiples of 16, K a multiple of 32;
  // lda, ldb, ldc in elements. Between begin() and end() only.
  void (*tile_gemm)(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                    const uint16_t* B, int64_t ldb, float* C, int64_t ldc, bool accumulate);
  // The same with A stored in 32-wide k slices a_ks elements apart: element
  // (m, k) at A[(k/32)*a_ks + m*lda + k%32]. A k-blocked A (lda = 32) makes every
  // tile load one contiguous KiB, where a long row-major A (lda of thousands)
  // would put a tile's 16 rows in one L1 set.
  void (*tile_gemm_ks)(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                       int64_t a_ks, const uint16_t* B, int64_t ldb, float* C, int64_t ldc,
                       bool accumulate);
  // Forward online-softmax step like KernelTable::softmax_step, on raw scores:
  // the log2-domain score is S * c. nk is even. m is a reference max that may
  // trail the true running max by up to 8 (probabilities <= 256); it moves, and
  // alpha != 1 is returned, only when scores exceed it by more. Writes P^T as bf16 VNNI
  // (pairs of keys interleaved): P[(j/2)*2*kQ + 2*i + j%2] = p(key j, query i).
  bool (*softmax_step_vnni)(const float* S, int64_t nk, float c, float* m, float* l,
                            float* alpha, uint16_t* P);
  // Backward element-wise step like KernelTable::softmax_grad on raw scores
  // (log2 domain S * c): P = exp2(S*c - lse2), dS = P * (dP - delta) * ds_scale
  // (* cap_grad). Writes P^T and dS^T as bf16 rows [nk][kQ], and dS^T as bf16
  // VNNI [nk/2][2*kQ]. nk is even.
  void (*softmax_grad_bf16)(const float* S, const float* dP, int64_t nk, float c,
                            const float* lse2, const float* delta, float ds_scale,
                            const float* cap_grad, uint16_t* P, uint16_t* dS, uint16_t* dS_vnni);
};

struct KernelTable {
  const char* name;
  // C[M x 16*NV] (+)= A[M x K] * B[K x 16*NV].
  // A is read element-wise (broadcast) at A[m*sm + k*sk]; B row k starts at
  // B + k*ldb and is read as NV vectors of 16 floats; C row m at C + m*ldc.
  void (*gemm)(int64_t M, int64_t NV, int64_t K, const float* A, int64_t sm, int64_t sk,
               const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate);

  // Forward online-softmax step on a score tile S^T[nk][kQ] (log2 domain, masked
  // entries -inf). Updates the running (reference) max m[kQ] -- it may trail the
  // true max by up to 8 -- and sum l[kQ], overwrites S with P^T, writes the
  // rescale factors alpha[kQ]; returns true if any alpha != 1.
  bool (*softmax_step)(float* S, int64_t nk, float* m, float* l, float* alpha);

  // Backward element-wise step: P = exp2(S - lse2) into S, and
  // dS = P * (dP - delta) * ds_scale into dP. Tiles are [nk][kQ].
  // cap_grad (nullable) holds (1 - tanh^2) from softcap() and multiplies dS.
  void (*softmax_grad)(float* S, float* dP, int64_t nk, const float* lse2, const float* delta,
                       float ds_scale, const float* cap_grad);

  // Soft-capping on raw scores: S = log2(e) * cap * tanh(S / cap) in place (the
  // result is in the log2 domain like every other score tile); if grad is
  // non-null it receives (1 - tanh^2) for the backward. Tile [nk][kQ].
  void (*softcap)(float* S, int64_t nk, float cap, float* grad);

  // O^T[rows][kQ] *= alpha[kQ] lane-wise.
  void (*scale_rows)(float* X, int64_t rows, const float* alpha);

  // Data movement for packing and unpacking tiles.
  // dst[c*ldd + r] = src[r*lds + c] for 32-bit elements (fp32, or pairs of bf16).
  void (*transpose32)(const void* src, int64_t lds, int64_t rows, int64_t cols, void* dst,
                      int64_t ldd);
  // out[2i] = a[i], out[2i+1] = b[i] (b null: zeros) for 16-bit elements: two rows
  // become one VNNI row.
  void (*interleave16)(const uint16_t* a, const uint16_t* b, int64_t n, uint16_t* out);
  // Widen n elements of `dtype` to fp32 / narrow back (round to nearest even).
  void (*load_row)(const void* src, DType dtype, int64_t n, float* dst);
  void (*store_row)(const float* src, int64_t n, DType dtype, void* dst);

  // bf16 inputs run on these when the ISA has a bf16 matrix unit; else null.
  const Bf16Kernels* bf16 = nullptr;
};

// ---- bf16 GEMM primitive for every family (engine-independent) ----
// True when this CPU and OS allow AMX tiles and the "amx" kernels are in use.
bool amx_available();
// C[M x N] (+)= A[M x K] * B[K x N], fp32 accumulation. A bf16 row-major (element
// (m, k) at A[m*lda + k]); B bf16 VNNI (element (k, n) at B[(k/2)*ldb + 2*n + (k%2)],
// ldb >= 2*N); C fp32 row-major. K must be even (zero-pad); M, N any. Uses AMX
// tiles when available (fastest when M, N are multiples of 16 and K of 32), else
// widens to fp32 and runs the fp32 micro-GEMM. Thread-safe; single-threaded.
void gemm_bf16(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
               const uint16_t* B, int64_t ldb, float* C, int64_t ldc, bool accumulate);

// The table for this CPU (or the one forced by set_isa / ATTNKIT_ISA).
const KernelTable& kernels();
// Names of the ISAs compiled into this build that this CPU can run, best first.
const char* const* available_isas();
// Force an ISA by name ("amx", "avx512", "avx2", "generic"); empty string = automatic.
// "amx" is the avx512 fp32 kernels plus the AMX bf16 matrix path.
// Throws InvalidArgument for unknown or unsupported names.
void set_isa(const char* name);
// Features of the running CPU (for `attnkit info`).
struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false, avx512f = false, avx512bw = false,
       avx512vl = false, avx512dq = false, avx512bf16 = false, avx512fp16 = false, amx_bf16 = false;
};
CpuFeatures cpu_features();

// ---- dtype conversion helpers shared by packing code (scalar; not hot) ----
// These helpers have internal linkage on purpose: the per-ISA kernel TUs include
// this header with ISA flags, and a shared (COMDAT) inline copy built with
// -mavx512f could be the one the linker keeps for the baseline code.
static inline float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
static inline uint16_t float_to_bf16(float f) {  // round to nearest even, NaN stays NaN
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);

// Row converters: widen n elements of `dtype` at src to fp32, and narrow back
// (the kernel table's vectorised versions).
static inline void load_row(const void* src, DType dtype, int64_t n, float* dst) {
  kernels().load_row(src, dtype, n, dst);
}
static inline void store_row(const float* src, int64_t n, DType dtype, void* dst) {
  kernels().store_row(src, n, dtype, dst);
}

}  // namespace attnkit::cpu
