// attnkit CUDA backend: the 1-D sequence tile schedule (dense, causal, sliding
// window, varlen) shared by the forward and backward kernels of every arch.
//
// It is the GPU twin of the CPU engine's SeqSchedule (cpp/src/cpu/schedule_seq.hpp):
// query i of a sequence sees keys [lo(i), hi(i)) with bottom-right alignment
// (DESIGN §2.1). Both derive from the same two functions lo/hi, so the CPU and the
// GPU visit exactly the same (query tile, key tile) pairs and mask exactly the same
// elements; the kernels' mainloops take a schedule object and never look at the
// mask kind themselves. Later schedules (neighborhood, block-sparse) provide the
// same four members:
//
//   kv_tiles(q0, q1)          -> [n_begin, n_end) KV tiles a query tile visits
//   q_tiles(k0, k1)           -> [m_begin, m_end) query tiles visiting a KV tile (backward)
//   tile_is_full(q0,q1,k0,k1) -> no element of the pair is masked (fast path)
//   visible(i, j)             -> the element mask of boundary tiles
//
// Plain C++ (host + device): tests/test_cuda_host.py compiles it for the CPU and
// checks it against brute force and the CPU schedule's rules.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define AK_HD __host__ __device__ __forceinline__
#else
#define AK_HD inline
#endif

namespace attnkit::cuda {

struct Range {
  int begin = 0, end = 0;  // half-open
  AK_HD bool empty() const { return end <= begin; }
};

// One sequence's view of the problem: lengths and the (left, right) window
// (-1 = unbounded; causal is right = 0).
struct SeqSchedule {
  int sq = 0, sk = 0;
  int left = -1, right = -1;

  AK_HD static int clampi(int64_t x, int lo, int hi) {
    return static_cast<int>(x < lo ? lo : (x > hi ? hi : x));
  }
  // First key row i sees, and one past its last (both clamped to [0, sk]).
  AK_HD int lo(int i) const {
    if (left < 0) return 0;
    return clampi(int64_t(i) + (sk - sq) - left, 0, sk);
  }
  AK_HD int hi(int i) const {
    if (right < 0) return sk;
    return clampi(int64_t(i) + (sk - sq) + right + 1, 0, sk);
  }
  AK_HD bool visible(int i, int j) const { return j >= lo(i) && j < hi(i); }

  // KV tiles of size bn that query rows [q0, q1) visit (q1 clamped to sq).
  AK_HD Range kv_tiles(int q0, int q1, int bn) const {
    Range r;
    if (q1 > sq) q1 = sq;
    if (q0 >= q1) return r;
    const int a = lo(q0), e = hi(q1 - 1);
    if (a >= e) return r;
    r.begin = a / bn;
    r.end = (e + bn - 1) / bn;
    return r;
  }

  // Query tiles of size bm whose rows see any key of [k0, k1) (k1 clamped to sk).
  // lo and hi are non-decreasing in i, so these form one contiguous range.
  AK_HD Range q_tiles(int k0, int k1, int bm) const {
    Range r;
    if (k1 > sk) k1 = sk;
    if (k0 >= k1 || sq <= 0) return r;
    // first row with hi(i) > k0, last row with lo(i) < k1
    int i_first = 0;
    if (right >= 0) {
      const int64_t t = int64_t(k0) - (sk - sq) - right;  // hi(i) > k0  <=>  i >= t
      i_first = t < 0 ? 0 : static_cast<int>(t);
    }
    int i_last = sq - 1;
    if (left >= 0) {
      const int64_t t = int64_t(k1) - (sk - sq) + left - 1;  // lo(i) < k1  <=>  i <= t
      i_last = t > sq - 1 ? sq - 1 : static_cast<int>(t);
    }
    if (i_first > i_last) return r;
    r.begin = i_first / bm;
    r.end = i_last / bm + 1;
    return r;
  }

  // True when every (query < sq, key) pair of the tile pair is visible and every
  // key of [k0, k1) exists: the kernel may skip the element mask. Rows >= sq of a
  // partial query tile are never stored (forward) or carry P = 0 (backward), so
  // they do not force the mask.
  AK_HD bool tile_is_full(int q0, int q1, int k0, int k1) const {
    if (k1 > sk) return false;
    if (q1 > sq) q1 = sq;
    if (q0 >= q1) return true;
    return lo(q1 - 1) <= k0 && hi(q0) >= k1;
  }
};

// Varlen grids run over the packed tokens: sequence b's tiles of size `tile`
// start at tile index base(b) = (cu[b] + b * tile) / tile, which leaves every
// sequence ceil(len_b / tile) tiles of its own (base(b+1) - base(b) >=
// ceil(len_b / tile)); at most (total + (B + 1) * tile) / tile tiles in all.
AK_HD int varlen_tile_base(const int32_t* cu, int b, int tile) {
  return static_cast<int>((int64_t(cu[b]) + int64_t(b) * tile) / tile);
}
AK_HD int varlen_num_tiles(int64_t total, int batch, int tile) {
  return static_cast<int>((total + int64_t(batch + 1) * tile) / tile + 1);
}
// The sequence whose tile range holds tile index x (binary search on cu, which
// is non-decreasing); -1 when x is past the last sequence's tiles.
AK_HD int varlen_find_sequence(const int32_t* cu, int batch, int x, int tile) {
  int lo = 0, hi = batch - 1;
  if (batch <= 0 || x < 0) return -1;
  while (lo < hi) {  // last b with base(b) <= x
    const int mid = (lo + hi + 1) / 2;
    if (varlen_tile_base(cu, mid, tile) <= x) lo = mid; else hi = mid - 1;
  }
  return lo;
}

}  // namespace attnkit::cuda
