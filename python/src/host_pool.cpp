// attnkit._core: a caching pool for the large host (CPU) outputs attnkit
// allocates for the caller.
//
// Why: a large output is a fresh mmap in every framework's CPU allocator
// (glibc serves blocks of 32 MiB and more by mmap, and PyTorch keeps no CPU
// cache), so every call pays the kernel's page faults and zero-filling on the
// first writes -- 4 ms of a 34 ms bf16 linear-attention forward at S=16384
// (32 MiB output), even with huge pages. The pool keeps freed blocks (up to a
// cap) and hands them out again, like the CUDA caching allocators do for
// device memory. Blocks are returned through the DLPack owner of the tensor
// made from them, so a block is reused only once the framework has dropped
// every view of it.
//
// Knobs (Python side, attnkit._tensors): ATTNKIT_HOST_POOL=0 turns the pool
// off; attnkit.empty_cache() unmaps the cached blocks; the test suite sends
// every output through the pool with poison on, so a kernel that leaves an
// element unwritten reads as NaN there.
#include <cstring>
#include <map>
#include <mutex>
#include <new>

#include "common.hpp"

#if defined(__linux__) || defined(__APPLE__)
#include <sys/mman.h>
#define AK_POOL_MMAP 1
#else
#include <cstdlib>
#endif

namespace attnkit_py {
namespace {

constexpr size_t kPage = size_t(4) << 10, kHuge = size_t(2) << 20;

}  // namespace

bool advise_huge_pages(uintptr_t ptr, size_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t a = (ptr + kHuge - 1) & ~(kHuge - 1), e = (ptr + nbytes) & ~(kHuge - 1);
  return e > a && madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE) == 0;
#else
  (void)ptr;
  (void)nbytes;
  return false;
#endif
}

namespace {

void* map_block(size_t bytes, bool huge) {
#ifdef AK_POOL_MMAP
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  if (huge) advise_huge_pages(reinterpret_cast<uintptr_t>(p), bytes);  // the first writes fault once per 2 MiB
  return p;
#else
  (void)huge;
  void* p = std::malloc(bytes);
  if (!p) throw std::bad_alloc();
  return p;
#endif
}

void unmap_block(void* p, size_t bytes) {
#ifdef AK_POOL_MMAP
  munmap(p, bytes);
#else
  (void)bytes;
  std::free(p);
#endif
}

class HostPool {
 public:
  struct Config {
    size_t min_bytes = size_t(4) << 20;  // smaller outputs go to the framework's allocator
    size_t max_cached = size_t(1) << 30;  // freed bytes kept for reuse
    bool poison = false;                  // fill blocks with 0xff bytes (NaN) when handed out
    bool huge_pages = true;
  };

  // Block size for a request: whole 4 KiB pages; whole 2 MiB pages from 2 MiB on
  // (so huge pages cover all of it).
  static size_t block_size(size_t bytes) {
    const size_t unit = bytes >= kHuge ? kHuge : kPage;
    return (std::max<size_t>(bytes, 1) + unit - 1) / unit * unit;
  }

  void* acquire(size_t bytes, size_t* got) {
    const size_t want = block_size(bytes);
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      // The smallest cached block that fits without wasting more than a quarter.
      auto it = free_.lower_bound(want);
      if (it != free_.end() && it->first <= want + want / 4) {
        p = it->second;
        *got = it->first;
        cached_ -= it->first;
        free_.erase(it);
        ++hits_;
      } else {
        ++misses_;
      }
      in_use_ += p ? *got : want;
    }
    if (!p) {
      try {
        p = map_block(want, cfg_.huge_pages);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        in_use_ -= want;
        throw;
      }
      *got = want;
    }
    if (cfg_.poison) std::memset(p, 0xff, *got);
    return p;
  }

  void release(void* p, size_t bytes) {
    std::unique_lock<std::mutex> lock(mu_);
    in_use_ -= bytes;
    if (bytes > cfg_.max_cached) {
      lock.unlock();
      unmap_block(p, bytes);
      return;
    }
    // Make room: drop the largest cached blocks first (the rarest sizes to reuse
    // are the big one-offs).
    std::multimap<size_t, void*> drop;
    while (cached_ + bytes > cfg_.max_cached && !free_.empty()) {
      auto last = std::prev(free_.end());
      cached_ -= last->first;
      drop.insert(*last);
      free_.erase(last);
    }
    free_.emplace(bytes, p);
    cached_ += bytes;
    lock.unlock();
    for (auto& [n, q] : drop) unmap_block(q, n);
  }

  size_t trim() {
    std::multimap<size_t, void*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      drop.swap(free_);
      cached_ = 0;
    }
    size_t n = 0;
    for (auto& [b, q] : drop) {
      unmap_block(q, b);
      n += b;
    }
    return n;
  }

  void configure(const Config& c) {
    std::lock_guard<std::mutex> lock(mu_);
    cfg_ = c;
  }
  Config config() {
    std::lock_guard<std::mutex> lock(mu_);
    return cfg_;
  }

  nb::dict stats() {
    std::lock_guard<std::mutex> lock(mu_);
    nb::dict d;
    d["cached_bytes"] = cached_;
    d["cached_blocks"] = free_.size();
    d["in_use_bytes"] = in_use_;
    d["hits"] = hits_;
    d["misses"] = misses_;
    d["min_bytes"] = cfg_.min_bytes;
    d["max_cached_bytes"] = cfg_.max_cached;
    d["poison"] = cfg_.poison;
    return d;
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;  // cached blocks by size
  size_t cached_ = 0, in_use_ = 0, hits_ = 0, misses_ = 0;
  Config cfg_;
};

// Never destroyed: tensors made from its blocks may outlive module teardown.
HostPool& pool() {
  static HostPool* p = new HostPool();
  return *p;
}

struct Block {
  void* ptr;
  size_t bytes;
};

nb::dlpack::dtype dlpack_dtype(const std::string& name) {
  using nb::dlpack::dtype_code;
  auto make = [](dtype_code c, int bits) {
    nb::dlpack::dtype d;
    d.code = static_cast<uint8_t>(c);
    d.bits = static_cast<uint8_t>(bits);
    d.lanes = 1;
    return d;
  };
  if (name == "float32") return make(dtype_code::Float, 32);
  if (name == "float16") return make(dtype_code::Float, 16);
  if (name == "bfloat16") return make(dtype_code::Bfloat, 16);
  if (name == "uint16") return make(dtype_code::UInt, 16);
  if (name == "int32") return make(dtype_code::Int, 32);
  throw attnkit::Error(attnkit::ErrorCode::InvalidType,
                       "_host_empty: dtype must be float32, float16, bfloat16, uint16 or int32, got " + name);
}

// A C-contiguous host array of `shape` from the pool, as Framework's ndarray.
template <class Framework>
nb::ndarray<Framework> host_empty(const std::vector<int64_t>& shape, const std::string& dtype) {
  const nb::dlpack::dtype dt = dlpack_dtype(dtype);
  AK_CHECK(shape.size() <= static_cast<size_t>(attnkit::kMaxDims), InvalidArgument,
           "_host_empty: at most ", attnkit::kMaxDims, " dimensions, got ", shape.size());
  std::vector<size_t> sz(shape.size());
  size_t bytes = dt.bits / 8;
  for (size_t i = 0; i < shape.size(); ++i) {
    AK_CHECK(shape[i] >= 0, InvalidArgument, "_host_empty: negative extent ", shape[i]);
    sz[i] = static_cast<size_t>(shape[i]);
    bytes *= sz[i];
  }
  size_t got = 0;
  void* p = pool().acquire(bytes, &got);
  Block* blk = new Block{p, got};
  nb::capsule owner(blk, [](void* b) noexcept {
    Block* k = static_cast<Block*>(b);
    pool().release(k->ptr, k->bytes);
    delete k;
  });
  return nb::ndarray<Framework>(p, sz.size(), sz.data(), owner, nullptr, dt, nb::device::cpu::value);
}

}  // namespace

void bind_host_pool(nb::module_& m) {
  m.def("_host_empty_torch", &host_empty<nb::pytorch>, "shape"_a, "dtype"_a);
  m.def("_host_empty_numpy", &host_empty<nb::numpy>, "shape"_a, "dtype"_a);
  m.def(
      "_host_pool_configure",
      [](std::optional<size_t> min_bytes, std::optional<size_t> max_cached, std::optional<bool> poison,
         std::optional<bool> huge_pages) {
        HostPool::Config c = pool().config();
        if (min_bytes) c.min_bytes = *min_bytes;
        if (max_cached) c.max_cached = *max_cached;
        if (poison) c.poison = *poison;
        if (huge_pages) c.huge_pages = *huge_pages;
        pool().configure(c);
        return c.min_bytes;
      },
      "min_bytes"_a = nb::none(), "max_cached_bytes"_a = nb::none(), "poison"_a = nb::none(),
      "huge_pages"_a = nb::none());
  m.def("_host_pool_stats", []() { return pool().stats(); });
  m.def("_host_pool_trim", []() { return pool().trim(); });
}

}  // namespace attnkit_py
