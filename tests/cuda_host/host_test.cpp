// CPU checks of the CUDA backend's plain-C++ parts (no GPU, no CUDA headers):
//  * cuda/common/schedule.hpp against brute force and against the CPU engine's
//    SeqSchedule (same tiles visited, same elements masked);
//  * the varlen tile map;
//  * cuda/common/registry.cpp: kernel selection and its error messages, and the
//    checks of what the kernels cover.
// Built and run by tests/test_cuda_host.py; prints "N passed, M failed".
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "attnkit/error.hpp"
#include "cpu/schedule_seq.hpp"
#include "registry.hpp"
#include "schedule.hpp"

using namespace attnkit;
using attnkit::cuda::Range;
using attnkit::cuda::SeqSchedule;

static int g_pass = 0, g_fail = 0;
#define CHECK(cond, ...)                                  \
  do {                                                    \
    if (cond) {                                           \
      ++g_pass;                                           \
    } else {                                              \
      ++g_fail;                                           \
      if (g_fail < 30) {                                  \
        std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
        std::printf(__VA_ARGS__);                         \
        std::printf("\n");                                \
      }                                                   \
    }                                                     \
  } while (0)

// DESIGN §2.1 written out independently of schedule.hpp.
static bool design_visible(int64_t i, int64_t j, int64_t sq, int64_t sk, int64_t left, int64_t right) {
  const int64_t d = i + (sk - sq);
  if (left >= 0 && j < d - left) return false;
  if (right >= 0 && j > d + right) return false;
  return j >= 0 && j < sk;
}

static void check_schedule(int sq, int sk, int left, int right, int bm, int bn) {
  const SeqSchedule s{sq, sk, left, right};
  for (int i = 0; i < sq; ++i)
    for (int j = 0; j < sk; ++j)
      CHECK(s.visible(i, j) == design_visible(i, j, sq, sk, left, right), "sq=%d sk=%d w=(%d,%d) i=%d j=%d",
            sq, sk, left, right, i, j);
  auto any_visible = [&](int q0, int q1, int k0, int k1) {
    for (int i = q0; i < std::min(q1, sq); ++i)
      for (int j = k0; j < std::min(k1, sk); ++j)
        if (s.visible(i, j)) return true;
    return false;
  };
  const int nq = (sq + bm - 1) / bm, nk = (sk + bn - 1) / bn;
  for (int m = 0; m < nq; ++m) {
    const Range r = s.kv_tiles(m * bm, m * bm + bm, bn);
    for (int n = 0; n < nk; ++n) {
      const bool vis = any_visible(m * bm, m * bm + bm, n * bn, n * bn + bn);
      const bool in = n >= r.begin && n < r.end;
      CHECK(!vis || in, "kv_tiles misses a visible tile: sq=%d sk=%d w=(%d,%d) m=%d n=%d [%d,%d)", sq, sk,
            left, right, m, n, r.begin, r.end);
      // full <=> every existing pair visible and every key exists
      bool all = n * bn + bn <= sk;
      for (int i = m * bm; all && i < std::min(sq, m * bm + bm); ++i)
        for (int j = n * bn; all && j < n * bn + bn; ++j) all = s.visible(i, j);
      CHECK(s.tile_is_full(m * bm, m * bm + bm, n * bn, n * bn + bn) == all,
            "tile_is_full: sq=%d sk=%d w=(%d,%d) m=%d n=%d", sq, sk, left, right, m, n);
    }
    if (!r.empty()) {  // the range's end tiles are really visited (no wasted loads)
      CHECK(any_visible(m * bm, m * bm + bm, r.begin * bn, r.begin * bn + bn), "kv_tiles begin not tight");
      CHECK(any_visible(m * bm, m * bm + bm, (r.end - 1) * bn, r.end * bn), "kv_tiles end not tight");
    }
  }
  for (int n = 0; n < nk; ++n) {
    const Range r = s.q_tiles(n * bn, n * bn + bn, bm);
    for (int m = 0; m < nq; ++m) {
      const bool vis = any_visible(m * bm, m * bm + bm, n * bn, n * bn + bn);
      const bool in = m >= r.begin && m < r.end;
      CHECK(!vis || in, "q_tiles misses: sq=%d sk=%d w=(%d,%d) n=%d m=%d [%d,%d)", sq, sk, left, right, n, m,
            r.begin, r.end);
    }
    if (!r.empty()) {
      CHECK(any_visible(r.begin * bm, r.begin * bm + bm, n * bn, n * bn + bn), "q_tiles begin not tight");
      CHECK(any_visible((r.end - 1) * bm, r.end * bm, n * bn, n * bn + bn), "q_tiles end not tight");
    }
  }
}

// The CPU engine's schedule on the same problem: for each of its 64-row query
// tiles, the KV tiles (of 128) its ranges fall in are exactly the GPU schedule's range
// and its mask marks exactly the elements the GPU masks.
static void check_against_cpu(int sq, int sk, int left, int right) {
  FmhaProblem p;
  p.batch = 1;
  p.seqlen_q = sq;
  p.seqlen_k = sk;
  p.heads_q = p.heads_kv = 1;
  p.window.left = left;
  p.window.right = right;
  const int kv_tile = 128;
  const cpu::SeqSchedule cs(p, kv_tile);
  const SeqSchedule gs{sq, sk, left, right};
  const cpu::ProblemRef P = cs.problem(0);
  for (int64_t t = 0; t < P.n_q_tiles; ++t) {
    const int q0 = int(t * cpu::kQ);
    std::vector<int> cpu_tiles;
    std::vector<float> S;
    cs.for_each_kv_tile(P, t, [&](int64_t k0, int64_t k1, bool full) {
      // The CPU schedule may split a KV tile into several ranges (only the
      // diagonal bands need the mask): compare the tiles visited.
      if (cpu_tiles.empty() || cpu_tiles.back() != int(k0 / kv_tile)) cpu_tiles.push_back(int(k0 / kv_tile));
      S.assign(size_t((k1 - k0) * cpu::kQ), 0.f);
      cs.mask(P, t, k0, k1 - k0, S.data());
      for (int64_t j = 0; j < k1 - k0; ++j)
        for (int i = 0; i < cpu::kQ && q0 + i < sq; ++i) {
          const bool cpu_vis = S[size_t(j * cpu::kQ + i)] == 0.f;
          CHECK(cpu_vis == gs.visible(q0 + i, int(k0 + j)), "mask differs from CPU: i=%d j=%d", q0 + i,
                int(k0 + j));
        }
      (void)full;
    });
    const Range r = gs.kv_tiles(q0, q0 + int(cpu::kQ), kv_tile);
    std::vector<int> gpu_tiles;
    for (int n = r.begin; n < r.end; ++n) gpu_tiles.push_back(n);
    CHECK(cpu_tiles == gpu_tiles, "visited tiles differ from the CPU engine: sq=%d sk=%d w=(%d,%d) tile %d", sq,
          sk, left, right, int(t));
  }
}

static void check_varlen_map(const std::vector<int32_t>& cu, int tile) {
  const int B = int(cu.size()) - 1;
  const int n = cuda::varlen_num_tiles(cu.back(), B, tile);
  std::set<std::pair<int, int>> seen;
  for (int x = 0; x < n; ++x) {
    const int b = cuda::varlen_find_sequence(cu.data(), B, x, tile);
    CHECK(b >= 0 && b < B, "varlen_find_sequence out of range");
    const int m = x - cuda::varlen_tile_base(cu.data(), b, tile);
    CHECK(m >= 0, "negative tile in sequence");
    if (int64_t(m) * tile < cu[b + 1] - cu[b]) CHECK(seen.insert({b, m}).second, "tile mapped twice");
  }
  for (int b = 0; b < B; ++b)
    for (int m = 0; int64_t(m) * tile < cu[b + 1] - cu[b]; ++m)
      CHECK(seen.count({b, m}) == 1, "sequence %d tile %d has no CTA (tile %d)", b, m, tile);
}

// ---------------------------------------------------------------- registry
static void fake_fwd(const FmhaProblem&, void*) {}
static void fake_bwd(const FmhaBackwardProblem&, void*, void*) {}
static size_t fake_ws(const FmhaBackwardProblem&) { return 0; }

static std::string error_of(const std::function<void()>& f, ErrorCode* code = nullptr) {
  try {
    f();
  } catch (const Error& e) {
    if (code) *code = e.code();
    return e.what();
  }
  return "";
}
static bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

static void check_registry() {
  using cuda::Direction;
  const cuda::KernelEntry entries[] = {
      {90, Direction::Forward, DType::BFloat16, 64, "ws", &fake_fwd, nullptr, nullptr},
      {90, Direction::Forward, DType::BFloat16, 128, "ws", &fake_fwd, nullptr, nullptr},
      {90, Direction::Forward, DType::Float16, 128, "ws", &fake_fwd, nullptr, nullptr},
      {90, Direction::Backward, DType::BFloat16, 128, "ws", nullptr, &fake_bwd, &fake_ws},
  };
  const cuda::KernelTable t{entries, 4, "90a"};
  CHECK(&cuda::find_kernel(t, "attention", 9, 0, Direction::Forward, DType::BFloat16, 128) == &entries[1],
        "wrong entry");
  CHECK(&cuda::find_kernel(t, "attention", 9, 0, Direction::Backward, DType::BFloat16, 128) == &entries[3],
        "wrong entry");
  CHECK(cuda::kernel_name(entries[0]) == "sm90 fwd bf16 hd64 (ws)", "name: %s", cuda::kernel_name(entries[0]).c_str());
  CHECK(cuda::kernel_names(t).size() == 4, "names");
  ErrorCode code = ErrorCode::Internal;
  std::string e = error_of([&] { cuda::find_kernel(t, "attention", 9, 0, Direction::Forward, DType::BFloat16, 96); }, &code);
  CHECK(code == ErrorCode::Unsupported, "code");
  CHECK(has(e, "bf16 head_dim 96 fwd") && has(e, "bf16 head_dim {64, 128}") && has(e, "fp16 head_dim {128}"),
        "unsupported head_dim message: %s", e.c_str());
  e = error_of([&] { cuda::find_kernel(t, "attention_backward", 9, 0, Direction::Backward, DType::Float16, 128); });
  CHECK(has(e, "attention_backward") && has(e, "supported bwd on sm90: bf16 head_dim {128}"), "bwd message: %s",
        e.c_str());
  e = error_of([&] { cuda::find_kernel(t, "attention", 8, 0, Direction::Forward, DType::BFloat16, 128); }, &code);
  CHECK(code == ErrorCode::Unsupported && has(e, "compute capability 8.0") && has(e, "sm_90a"),
        "old GPU message: %s", e.c_str());
  e = error_of([&] { cuda::find_kernel(t, "attention", 10, 0, Direction::Forward, DType::BFloat16, 128); });
  CHECK(has(e, "no kernels for sm_100a") && has(e, "ATTNKIT_CUDA_ARCHS"), "unbuilt arch message: %s", e.c_str());
  // Variant preference (ATTNKIT_CUDA_VARIANT): the named one when it exists, else the first.
  const cuda::KernelEntry ventries[] = {
      {90, Direction::Forward, DType::BFloat16, 128, "tma-wgmma-ws", &fake_fwd, nullptr, nullptr},
      {90, Direction::Forward, DType::BFloat16, 128, "mma-sync", &fake_fwd, nullptr, nullptr},
      {90, Direction::Forward, DType::BFloat16, 64, "tma-wgmma-ws", &fake_fwd, nullptr, nullptr},
  };
  const cuda::KernelTable vt{ventries, 3, "90a"};
  CHECK(&cuda::find_kernel(vt, "attention", 9, 0, Direction::Forward, DType::BFloat16, 128) == &ventries[0], "default variant");
  CHECK(&cuda::find_kernel(vt, "attention", 9, 0, Direction::Forward, DType::BFloat16, 128, "mma-sync") == &ventries[1],
        "preferred variant");
  CHECK(&cuda::find_kernel(vt, "attention", 9, 0, Direction::Forward, DType::BFloat16, 64, "mma-sync") == &ventries[2],
        "fallback when the preferred variant is missing");
  CHECK(&cuda::find_kernel(vt, "attention", 9, 0, Direction::Forward, DType::BFloat16, 128, "") == &ventries[0], "empty");
  CHECK(cuda::arch_of_compute_capability(9, 0) == 90 && cuda::arch_of_compute_capability(10, 0) == 100 &&
            cuda::arch_of_compute_capability(10, 3) == 0 && cuda::arch_of_compute_capability(8, 9) == 0,
        "arch map");

  // check_supported
  alignas(16) static char buf[1 << 16];
  FmhaProblem p;
  p.dtype = DType::BFloat16;
  p.batch = 2;
  p.seqlen_q = p.seqlen_k = 100;
  p.heads_q = 8;
  p.heads_kv = 2;
  p.head_dim_qk = p.head_dim_v = 128;
  for (Operand* o : {&p.q, &p.k, &p.v, &p.out}) {
    o->data = buf;
    o->head_stride = 128;
    o->token_stride = 128 * 8;
    o->batch_stride = 128 * 8 * 100;
  }
  CHECK(error_of([&] { cuda::check_supported("attention", p); }).empty(), "valid problem rejected");
  auto expect = [&](FmhaProblem bad, const char* part) {
    ErrorCode c = ErrorCode::Internal;
    const std::string m = error_of([&] { cuda::check_supported("attention", bad); }, &c);
    CHECK(c == ErrorCode::Unsupported && has(m, part), "expected '%s', got '%s'", part, m.c_str());
  };
  FmhaProblem f = p;
  f.dtype = DType::Float32;
  expect(f, "float16 or bfloat16, got float32");
  f = p;
  f.head_dim_v = 64;
  expect(f, "value head_dim");
  f = p;
  f.softcap = 5.f;
  expect(f, "softcap");
  f = p;
  f.k.data = buf + 2;
  expect(f, "k must start at a 16-byte aligned address");
  f = p;
  f.q.token_stride = 128 * 8 + 4;
  expect(f, "q strides must be multiples of 16 bytes");
}

int main() {
  std::mt19937 rng(7);
  const int sizes[] = {1, 7, 63, 64, 65, 127, 128, 129, 200, 257};
  const int windows[][2] = {{-1, -1}, {-1, 0}, {17, 4}, {-1, 8}, {31, -1}, {0, 0}, {200, 0}};
  for (int sq : sizes)
    for (int sk : sizes)
      for (auto& w : windows) {
        check_schedule(sq, sk, w[0], w[1], 128, 128);  // forward tiles
        check_schedule(sq, sk, w[0], w[1], 64, 128);   // backward tiles
        check_schedule(sq, sk, w[0], w[1], 128, 96);
        check_against_cpu(sq, sk, w[0], w[1]);
      }
  check_against_cpu(1000, 1000, -1, 0);
  check_against_cpu(700, 3000, 100, 50);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<int32_t> cu{0};
    const int B = 1 + int(rng() % 6);
    for (int b = 0; b < B; ++b) cu.push_back(cu.back() + int(rng() % 400) * (rng() % 4 != 0));
    check_varlen_map(cu, 64);
    check_varlen_map(cu, 128);
  }
  check_registry();
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}
