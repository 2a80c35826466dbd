// google-benchmark microbenchmarks of the C++ API (CPU), built when
// google-benchmark is found (Debian: libbenchmark-dev). Counters report
// effective TFLOP/s (DESIGN §6).
#include <benchmark/benchmark.h>

#include <attnkit/attnkit.hpp>

#include <cstdint>
#include <random>
#include <vector>

namespace {

using namespace attnkit;

struct Inputs {
  std::vector<uint16_t> q, k, v, out, dout, dq, dk, dv;  // bf16 storage
  std::vector<float> qf, kf, vf, outf, doutf, dqf, dkf, dvf, lse;
};

void fill(std::vector<float>& x, size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d;
  x.resize(n);
  for (auto& e : x) e = d(g);
}

double fwd_flops(int64_t B, int64_t H, int64_t S, int64_t D, bool causal) {
  const double pairs = causal ? 0.5 * S * (S + 1) : double(S) * S;
  return 2.0 * B * H * pairs * (2 * D);
}

void BM_attention_fp32(benchmark::State& st) {
  const int64_t B = 1, S = st.range(0), H = 8, D = st.range(1);
  const bool causal = st.range(2);
  Inputs in;
  const size_t n = B * S * H * D;
  fill(in.qf, n, 1);
  fill(in.kf, n, 2);
  fill(in.vf, n, 3);
  in.outf.resize(n);
  auto view = [&](std::vector<float>& x) { return make_view(x.data(), DType::Float32, {B, S, H, D}); };
  AttentionOptions o;
  o.is_causal = causal;
  for (auto _ : st) attention(view(in.qf), view(in.kf), view(in.vf), view(in.outf), nullptr, o);
  st.counters["TFLOP/s"] = benchmark::Counter(fwd_flops(B, H, S, D, causal) * 1e-12,
                                              benchmark::Counter::kIsIterationInvariantRate);
}

void BM_attention_backward_fp32(benchmark::State& st) {
  const int64_t B = 1, S = st.range(0), H = 8, D = st.range(1);
  Inputs in;
  const size_t n = B * S * H * D;
  fill(in.qf, n, 1);
  fill(in.kf, n, 2);
  fill(in.vf, n, 3);
  fill(in.doutf, n, 4);
  in.outf.resize(n);
  in.dqf.resize(n);
  in.dkf.resize(n);
  in.dvf.resize(n);
  in.lse.resize(B * S * H);
  auto view = [&](std::vector<float>& x) { return make_view(x.data(), DType::Float32, {B, S, H, D}); };
  TensorView lse = make_view(in.lse.data(), DType::Float32, {B, S, H});
  attention(view(in.qf), view(in.kf), view(in.vf), view(in.outf), &lse);
  for (auto _ : st)
    attention_backward(view(in.doutf), view(in.qf), view(in.kf), view(in.vf), view(in.outf), lse,
                       view(in.dqf), view(in.dkf), view(in.dvf));
  st.counters["TFLOP/s"] = benchmark::Counter(2.5 * fwd_flops(B, H, S, D, false) * 1e-12,
                                              benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_attention_fp32)
    ->ArgsProduct({{1024, 4096}, {64, 128}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_attention_backward_fp32)->Args({2048, 64})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_MAIN();
