// attnkit CPU backend: threading and scratch memory helpers.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

#include "attnkit/error.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace attnkit::cpu {

inline int resolve_threads(int requested) {
#ifdef _OPENMP
  return requested > 0 ? requested : omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
}

inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Runs body(i) for i in [0, n) over `threads` threads, dynamically scheduled
// (work items differ in cost: causal rows, varlen sequences, sparse tiles).
// The body must not throw: all validation happens before the engine runs.
template <class F>
void parallel_for(int64_t n, int threads, F&& body) {
#ifdef _OPENMP
  if (threads > 1 && n > 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#endif
  (void)threads;
  for (int64_t i = 0; i < n; ++i) body(i);
}

// 64-byte aligned float buffer. Memory comes from a process-wide cache of
// released blocks: large workspaces (packed K/V, partial gradients) are needed
// on every call, and fresh pages would cost a page fault per 4 KiB (~15% of a
// backward pass). Allocation failure raises OutOfMemory -- never inside a
// parallel region, since buffers are sized and allocated up front.
class FloatBuffer {
 public:
  FloatBuffer() = default;
  explicit FloatBuffer(int64_t n, bool zero = false) { reset(n, zero); }
  FloatBuffer(FloatBuffer&& o) noexcept { *this = std::move(o); }
  FloatBuffer& operator=(FloatBuffer&& o) noexcept {
    release();
    p_ = std::exchange(o.p_, nullptr);
    size_ = std::exchange(o.size_, 0);
    capacity_ = std::exchange(o.capacity_, 0);
    return *this;
  }
  FloatBuffer(const FloatBuffer&) = delete;
  FloatBuffer& operator=(const FloatBuffer&) = delete;
  ~FloatBuffer() { release(); }

  void reset(int64_t n, bool zero = false) {
    release();
    size_ = n;
    if (n <= 0) return;
    const size_t bytes = (static_cast<size_t>(n) * sizeof(float) + 63) / 64 * 64;
    std::tie(p_, capacity_) = cache().take(bytes);
    if (!p_) {
      p_ = std::aligned_alloc(64, bytes);
      capacity_ = bytes;
      AK_CHECK(p_ != nullptr, OutOfMemory, "attnkit: could not allocate ", bytes,
               " bytes of CPU workspace");
    }
    if (zero) std::memset(p_, 0, bytes);
  }
  float* get() const { return static_cast<float*>(p_); }
  int64_t size() const { return size_; }

 private:
  // Keeps up to kSlots released blocks for reuse; thread-safe.
  class Cache {
   public:
    std::pair<void*, size_t> take(size_t bytes) {
      std::lock_guard<std::mutex> lock(mu_);
      int best = -1;
      for (int i = 0; i < static_cast<int>(blocks_.size()); ++i)
        if (blocks_[i].second >= bytes && (best < 0 || blocks_[i].second < blocks_[best].second))
          best = i;
      if (best < 0) return {nullptr, 0};
      auto b = blocks_[best];
      blocks_.erase(blocks_.begin() + best);
      return b;
    }
    void give(void* p, size_t bytes) {
      std::lock_guard<std::mutex> lock(mu_);
      blocks_.push_back({p, bytes});
      if (blocks_.size() > kSlots) {  // drop the smallest block
        size_t smallest = 0;
        for (size_t i = 1; i < blocks_.size(); ++i)
          if (blocks_[i].second < blocks_[smallest].second) smallest = i;
        std::free(blocks_[smallest].first);
        blocks_.erase(blocks_.begin() + static_cast<std::ptrdiff_t>(smallest));
      }
    }

   private:
    static constexpr size_t kSlots = 8;
    std::mutex mu_;
    std::vector<std::pair<void*, size_t>> blocks_;
  };
  static Cache& cache() {
    static Cache* c = new Cache();  // never destroyed: buffers may be freed at exit
    return *c;
  }
  void release() {
    if (p_) cache().give(p_, capacity_);
    p_ = nullptr;
    size_ = 0;
    capacity_ = 0;
  }

  void* p_ = nullptr;
  int64_t size_ = 0;
  size_t capacity_ = 0;
};

}  // namespace attnkit::cpu
