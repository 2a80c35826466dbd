// Uses attnkit from C++ as a downstream project would: causal attention on a
// small problem, checked against a direct computation, plus error handling.
#include <attnkit/attnkit.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  using namespace attnkit;
  const int B = 1, S = 37, H = 2, D = 16;
  std::vector<float> q(B * S * H * D), k(q.size()), v(q.size()), out(q.size()), lse(B * S * H);
  for (size_t i = 0; i < q.size(); ++i) {
    q[i] = std::sin(0.37f * i);
    k[i] = std::cos(0.11f * i);
    v[i] = std::sin(0.05f * i + 1.f);
  }
  auto view = [&](std::vector<float>& x) { return make_view(x.data(), DType::Float32, {B, S, H, D}); };
  TensorView tl = make_view(lse.data(), DType::Float32, {B, S, H});
  AttentionOptions opts;
  opts.is_causal = true;
  attention(view(q), view(k), view(v), view(out), &tl, opts);

  // Direct computation for query row 20, head 1.
  const int i = 20, h = 1;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  std::vector<double> s(i + 1);
  double mx = -1e300, sum = 0;
  for (int j = 0; j <= i; ++j) {
    double dot = 0;
    for (int d = 0; d < D; ++d) dot += q[(i * H + h) * D + d] * k[(j * H + h) * D + d];
    s[j] = dot * scale;
    mx = std::max(mx, s[j]);
  }
  for (int j = 0; j <= i; ++j) sum += std::exp(s[j] - mx);
  double worst = 0;
  for (int d = 0; d < D; ++d) {
    double o = 0;
    for (int j = 0; j <= i; ++j) o += std::exp(s[j] - mx) / sum * v[(j * H + h) * D + d];
    worst = std::max(worst, std::abs(o - out[(i * H + h) * D + d]));
  }
  const double lse_err = std::abs(mx + std::log(sum) - lse[i * H + h]);
  if (worst > 1e-5 || lse_err > 1e-5) {
    std::printf("mismatch: out %g lse %g\n", worst, lse_err);
    return 1;
  }
  // Bad input raises attnkit::Error with a message naming the argument.
  try {
    TensorView bad = make_view(k.data(), DType::Float32, {B, S, 3, D});
    attention(view(q), bad, view(v), view(out), nullptr);
    std::printf("expected an error\n");
    return 1;
  } catch (const Error& e) {
    if (e.code() != ErrorCode::InvalidArgument) return 1;
  }
  std::printf("consumer ok (attnkit %s, cpu isa %s)\n", ATTNKIT_VERSION, build_info().cpu_isa.c_str());
  return 0;
}
