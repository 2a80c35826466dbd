// attnkit CPU backend: the micro-kernel table.
//
// The engine (engine.hpp) is plain C++ and calls the hot loops through this
// table. Each ISA (AVX-512, AVX2, portable) compiles the same source
// (kernels_impl.hpp) with its own flags; the table is chosen once at run time
// from the CPU's features. All arithmetic is fp32: on the CPUs we target, fp32
// FMA has twice the throughput of AVX512-BF16 dot products, so bf16/fp16 inputs
// are widened while packing and never slow the inner loops.
#pragma once

#include <cstdint>

#include "attnkit/tensor.hpp"

namespace attnkit::cpu {

// Query tiles are kQ rows wide: the engine keeps scores transposed, S^T[key][query],
// so that the query index runs along SIMD lanes and all softmax statistics are
// vertical (lane-wise) operations.
constexpr int kQ = 64;
constexpr int kLanes = 16;  // panel widths are multiples of 16 floats

struct KernelTable {
  const char* name;
  // C[M x 16*NV] (+)= A[M x K] * B[K x 16*NV].
  // A is read element-wise (broadcast) at A[m*sm + k*sk]; B row k starts at
  // B + k*ldb and is read as NV vectors of 16 floats; C row m at C + m*ldc.
  void (*gemm)(int64_t M, int64_t NV, int64_t K, const float* A, int64_t sm, int64_t sk,
               const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate);

  // Forward online-softmax step on a score tile S^T[nk][kQ] (log2 domain, masked
  // entries -inf). Updates running max m[kQ] and sum l[kQ], overwrites S with P^T,
  // writes the rescale factors alpha[kQ]; returns true if any alpha != 1.
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
};

// The table for this CPU (or the one forced by set_isa / ATTNKIT_ISA).
const KernelTable& kernels();
// Names of the ISAs compiled into this build that this CPU can run, best first.
const char* const* available_isas();
// Force an ISA by name ("avx512", "avx2", "generic"); empty string = automatic.
// Throws InvalidArgument for unknown or unsupported names.
void set_isa(const char* name);
// Features of the running CPU (for `attnkit info`).
struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false, avx512f = false, avx512bw = false,
       avx512vl = false, avx512dq = false, avx512bf16 = false, avx512fp16 = false, amx_bf16 = false;
};
CpuFeatures cpu_features();

// ---- dtype conversion helpers shared by packing code (scalar; not hot) ----
inline float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
inline uint16_t float_to_bf16(float f) {  // round to nearest even, NaN stays NaN
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);

// Row converters: widen n elements of `dtype` at src to fp32, and narrow back.
void load_row(const void* src, DType dtype, int64_t n, float* dst);
void store_row(const float* src, int64_t n, DType dtype, void* dst);

}  // namespace attnkit::cpu
