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
  // Only the query vectors [v0, v1) are read and written (as softmax_step),
  // and the return value says whether O must be rescaled.
  bool (*softmax_step_vnni)(const float* S, int64_t nk, float c, float* m, float* l,
                            float* alpha, uint16_t* P, int v0, int v1);
  // Backward element-wise step like KernelTable::softmax_grad on raw scores
  // (log2 domain S * c): P = exp2(S*c - lse2), dS = P * (dP - delta) * ds_scale
  // (* cap_grad). Writes P^T and dS^T as bf16 rows [nk][kQ], and dS^T as bf16
  // VNNI [nk/2][2*kQ]. nk is even. Lanes of query vectors outside `bits` get
  // P = dS = 0 without their inputs being read.
  void (*softmax_grad_bf16)(const float* S, const float* dP, int64_t nk, float c,
                            const float* lse2, const float* delta, float ds_scale,
                            const float* cap_grad, uint16_t* P, uint16_t* dS, uint16_t* dS_vnni,
                            uint32_t bits);

  // Gather GEMMs for one 16-column block (a query vector), A from several places.
  // tile_gemm_gather_m: C rows [r, r + M_i) = A_i[M_i x K] x B[K x 16] for pieces
  // i = 0 .. np-1, r = M_0 + .. + M_{i-1}; M_i multiples of 16, K of 32, A_i rows
  // lda apart, B VNNI.
  void (*tile_gemm_gather_m)(int np, const uint16_t* const* A, const int64_t* M, int64_t lda,
                             int64_t K, const uint16_t* B, int64_t ldb, float* C, int64_t ldc);
  // tile_gemm_gather_k: C[M x 16] (+)= sum_i A_i[M x K_i] x B_i, A_i in 32-wide k
  // slices a_ks apart (as tile_gemm_ks), B_i = the next K_i / 2 VNNI rows of B;
  // M a multiple of 16, K_i of 32. C stays in tile registers over the pieces.
  void (*tile_gemm_gather_k)(int64_t M, int np, const uint16_t* const* A, const int64_t* K,
                             int64_t lda, int64_t a_ks, const uint16_t* B, int64_t ldb, float* C,
                             int64_t ldc, bool accumulate);

  // A chunk of rows shared by the query vectors (engine.hpp: tile chunks).
  // softmax_step_vnni_rows: softmax_step_vnni for query vector v alone over the
  // row pieces [r0[i], r0[i] + n[i]) of S and P (one reference max for all).
  bool (*softmax_step_vnni_rows)(const float* S, int np, const int64_t* r0, const int64_t* n,
                                 float c, float* m, float* l, float* alpha, uint16_t* P, int v);
  // tile_gemm_vectors: for each vector v, C[M x 16 at column 16 v] += sum over the
  // pieces i whose bits[i] hold v of A_i[M x K_i] x B rows [row[i], row[i] + K_i)
  // at column 16 v; A_i in 32-key blocks (lda 32, k slices a_ks apart), B VNNI
  // (rows 2 * ldb halves per key pair), M a multiple of 16, K_i and row[i] of 32.
  // O^T stays in tile registers over the pieces, and each A block serves every
  // vector of the piece.
  void (*tile_gemm_vectors)(int64_t M, int np, const uint16_t* const* A, const int64_t* K,
                            const int64_t* row, const uint32_t* bits, int64_t a_ks,
                            const uint16_t* B, int64_t ldb, float* C, int64_t ldc);
};

struct KernelTable {
  const char* name;
  // C[M x 16*NV] (+)= A[M x K] * B[K x 16*NV].
  // A is read element-wise (broadcast) at A[m*sm + k*sk]; B row k starts at
  // B + k*ldb and is read as NV vectors of 16 floats; C row m at C + m*ldc.
  void (*gemm)(int64_t M, int64_t NV, int64_t K, const float* A, int64_t sm, int64_t sk,
               const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate);

  // Forward online-softmax step on a score tile S^T[nk][kQ] (log2 domain, masked
  // entries -inf), on the query vectors [v0, v1) (lanes [16 v0, 16 v1); the
  // others are neither read nor written). Updates the running (reference) max
  // m[kQ] -- it may trail the true max by up to 8 -- and sum l[kQ], overwrites S
  // with P^T, writes the rescale factors alpha[kQ]; returns true if O must be
  // rescaled: some lane that had seen a key before (finite m) has alpha != 1.
  bool (*softmax_step)(float* S, int64_t nk, float* m, float* l, float* alpha, int v0, int v1);

  // Backward element-wise step: P = exp2(S - lse2) into S, and
  // dS = P * (dP - delta) * ds_scale into dP, on the query vectors [v0, v1).
  // Tiles are [nk][kQ]. cap_grad (nullable) holds (1 - tanh^2) from softcap()
  // and multiplies dS.
  void (*softmax_grad)(float* S, float* dP, int64_t nk, const float* lse2, const float* delta,
                       float ds_scale, const float* cap_grad, int v0, int v1);

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

  // X[r][16 v0 .. 16 v1) *= alpha[16 v0 .. 16 v1) for rows kQ floats apart: the
  // rescale of the O^T lanes of some query vectors.
  void (*scale_lanes)(float* X, int64_t rows, const float* alpha, int v0, int v1);

  // Row i of dst (dst_bytes apart) = the `bytes` bytes at src[i], zero-filled up
  // to dst_bytes (null src[i]: a zero row): packing rows gathered in a schedule's
  // key order.
  void (*gather_rows)(const void* const* src, int64_t n, int64_t bytes, void* dst, int64_t dst_bytes);

  // transpose32 of rows gathered from src[r] (r < rows; null rows and bytes past
  // src_bytes read as zero): dst[c * ldd + r] = unit c of src[r]; rows and cols
  // (32-bit units) multiples of 16. Packs a query tile straight from the input.
  void (*gather_transpose32)(const void* const* src, int64_t rows, int64_t src_bytes, int64_t cols,
                             void* dst, int64_t ldd);
  // dst[r][c] = X[c * kQ + r] * scale[r] as `dtype`, for rows r < n (<= kQ) and
  // c < cols: a tile's O^T normalised, transposed and stored in one pass.
  void (*store_transposed)(const float* X, int64_t cols, const float* scale, int64_t n,
                           void* const* dst, DType dtype);
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
