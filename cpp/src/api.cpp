// attnkit: public C++ entry points -- validate once, then dispatch by device.
#include <algorithm>
#include <cmath>
#include <vector>

#include "attnkit/attnkit.hpp"
#include "cpu/backend.hpp"
#include "cpu/kernels.hpp"
#include "cpu/parallel.hpp"
#include "cuda_backend.hpp"
#include "validate.hpp"

namespace attnkit {

void attention(const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& out, const TensorView* lse, const AttentionOptions& opts,
               const ExecConfig& exec) {
  const FmhaProblem p = make_fmha_problem("attention", q, k, v, out, lse, opts);
  if (p.batch == 0 || (p.varlen() ? p.total_q : p.seqlen_q) == 0) return;
  if (p.device.kind == DeviceKind::CPU)
    cpu::fmha_forward(p, exec.num_threads);
  else
    cuda::fmha_forward(p, exec.stream);
}

void attention_backward(const TensorView& dout, const TensorView& q, const TensorView& k,
                        const TensorView& v, const TensorView& out, const TensorView& lse,
                        const TensorView& dq, const TensorView& dk, const TensorView& dv,
                        const AttentionOptions& opts, const ExecConfig& exec,
                        const TensorView* dlse) {
  const char* fn = "attention_backward";
  FmhaBackwardProblem bp;
  bp.fwd = make_fmha_problem(fn, q, k, v, out, &lse, opts);
  const bool varlen = bp.fwd.varlen();
  check::like(fn, "dout", dout, "out", out);
  check::like(fn, "dq", dq, "q", q);
  check::like(fn, "dk", dk, "k", k);
  check::like(fn, "dv", dv, "v", v);
  bp.dout = operand_of(dout, varlen);
  bp.dq = operand_of(dq, varlen);
  bp.dk = operand_of(dk, varlen);
  bp.dv = operand_of(dv, varlen);
  if (dlse) {
    check::dlse_like(fn, *dlse, lse);
    bp.dlse = static_cast<const float*>(dlse->data);
  }
  if (bp.fwd.batch == 0) return;
  if (bp.fwd.device.kind == DeviceKind::CPU)
    cpu::fmha_backward(bp, exec.num_threads);
  else
    cuda::fmha_backward(bp, exec.stream);
}

namespace {

// Calls f(offset) for the element offset of every index of `t` over its first
// `ndim` axes (row-major order).
template <class F>
void for_each_index(const TensorView& t, int ndim, F&& f) {
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= t.shape[d];
  for (int64_t i = 0; i < n; ++i) {
    int64_t rem = i, off = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      off += (rem % t.shape[d]) * t.stride[d];
      rem /= t.shape[d];
    }
    f(i, off);
  }
}

}  // namespace

void merge_attentions(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses,
                      const TensorView& out, const TensorView* lse, const ExecConfig& exec) {
  const char* fn = "merge_attentions";
  AK_CHECK(!outs.empty(), InvalidArgument, fn, ": needs at least one partial result");
  AK_CHECK(outs.size() == lses.size(), InvalidArgument, fn, ": got ", outs.size(),
           " outputs but ", lses.size(), " lses");
  const TensorView& o0 = outs[0];
  AK_CHECK(o0.ndim >= 2, InvalidArgument, fn, ": outputs must be [..., heads, head_dim], got shape ",
           o0.shape_str());
  AK_CHECK(o0.device.kind == DeviceKind::CPU, Unsupported, fn,
           ": the C++ merge runs on CPU tensors (attnkit.torch merges CUDA tensors with torch ops)");
  for (size_t i = 0; i < outs.size(); ++i) {
    const std::string on = "outs[" + std::to_string(i) + "]", ln = "lses[" + std::to_string(i) + "]";
    check::float_dtype(fn, on.c_str(), outs[i]);
    check::same_device(fn, on.c_str(), outs[i], "outs[0]", o0);
    check::same_device(fn, ln.c_str(), lses[i], "outs[0]", o0);
    check::unit_inner_stride(fn, on.c_str(), outs[i]);
    bool ok = outs[i].ndim == o0.ndim && std::equal(o0.shape, o0.shape + o0.ndim, outs[i].shape);
    AK_CHECK(ok, InvalidArgument, fn, ": ", on, " has shape ", outs[i].shape_str(),
             " but outs[0] has ", o0.shape_str());
    AK_CHECK(lses[i].dtype == DType::Float32, InvalidType, fn, ": ", ln, " must be float32, got ",
             dtype_name(lses[i].dtype));
    ok = lses[i].ndim == o0.ndim - 1 && std::equal(o0.shape, o0.shape + o0.ndim - 1, lses[i].shape);
    AK_CHECK(ok, InvalidArgument, fn, ": ", ln, " must have shape ", o0.shape_str(),
             " without its last axis, got ", lses[i].shape_str());
    check::has_data(fn, on.c_str(), outs[i]);
    check::has_data(fn, ln.c_str(), lses[i]);
  }
  std::vector<int64_t> oshape(o0.shape, o0.shape + o0.ndim);
  AK_CHECK(out.ndim == o0.ndim && std::equal(oshape.begin(), oshape.end(), out.shape),
           InvalidArgument, fn, ": out must have shape ", o0.shape_str(), ", got ", out.shape_str());
  check::float_dtype(fn, "out", out);
  check::unit_inner_stride(fn, "out", out);
  if (lse) {
    AK_CHECK(lse->dtype == DType::Float32 && lse->ndim == o0.ndim - 1 &&
                 std::equal(o0.shape, o0.shape + o0.ndim - 1, lse->shape),
             InvalidArgument, fn, ": lse out must be float32 with shape ", o0.shape_str(),
             " without its last axis");
  }
  const int64_t D = o0.shape[o0.ndim - 1];
  const int nparts = static_cast<int>(outs.size());
  std::vector<int64_t> rows_off;  // row offsets per part, gathered once
  int64_t nrows = 1;
  for (int d = 0; d < o0.ndim - 1; ++d) nrows *= o0.shape[d];
  // Offsets of each row in each operand.
  std::vector<std::vector<int64_t>> ooff(nparts, std::vector<int64_t>(nrows)),
      loff(nparts, std::vector<int64_t>(nrows));
  std::vector<int64_t> out_off(nrows), lse_off(lse ? nrows : 0);
  for (int i = 0; i < nparts; ++i) {
    for_each_index(outs[i], o0.ndim - 1, [&](int64_t r, int64_t off) { ooff[i][r] = off; });
    for_each_index(lses[i], o0.ndim - 1, [&](int64_t r, int64_t off) { loff[i][r] = off; });
  }
  for_each_index(out, o0.ndim - 1, [&](int64_t r, int64_t off) { out_off[r] = off; });
  if (lse) for_each_index(*lse, o0.ndim - 1, [&](int64_t r, int64_t off) { lse_off[r] = off; });

  const int threads = cpu::resolve_threads(exec.num_threads);
  const int64_t blocks = (nrows + 255) / 256;
  cpu::parallel_for(blocks, threads, [&](int64_t blk) {
    std::vector<float> acc(D), row(D);
    for (int64_t r = blk * 256; r < std::min(nrows, (blk + 1) * 256); ++r) {
      float mx = -INFINITY;
      for (int i = 0; i < nparts; ++i)
        mx = std::max(mx, static_cast<const float*>(lses[i].data)[loff[i][r]]);
      std::fill(acc.begin(), acc.end(), 0.f);
      float total = 0.f;
      if (mx != -INFINITY) {
        for (int i = 0; i < nparts; ++i) {
          const float w = std::exp(static_cast<const float*>(lses[i].data)[loff[i][r]] - mx);
          if (w == 0.f) continue;
          total += w;
          const char* src = static_cast<const char*>(outs[i].data) +
                            ooff[i][r] * dtype_size(outs[i].dtype);
          cpu::load_row(src, outs[i].dtype, D, row.data());
          for (int64_t d = 0; d < D; ++d) acc[d] += w * row[d];
        }
        for (int64_t d = 0; d < D; ++d) acc[d] /= total;
      }
      cpu::store_row(acc.data(), D, out.dtype,
                     static_cast<char*>(out.data) + out_off[r] * dtype_size(out.dtype));
      if (lse)
        static_cast<float*>(lse->data)[lse_off[r]] =
            mx == -INFINITY ? -INFINITY : mx + std::log(total);
    }
  });
}

BuildInfo build_info() {
  BuildInfo b;
  b.version = ATTNKIT_VERSION;
  b.cpu_isa = cpu::kernels().name;
  for (const char* const* n = cpu::available_isas(); *n; ++n) b.cpu_isas.push_back(*n);
  const cpu::CpuFeatures f = cpu::cpu_features();
  auto add = [&](bool on, const char* name) {
    if (on) b.cpu_features.push_back(name);
  };
  add(f.avx2, "avx2");
  add(f.fma, "fma");
  add(f.f16c, "f16c");
  add(f.avx512f, "avx512f");
  add(f.avx512bw, "avx512bw");
  add(f.avx512vl, "avx512vl");
  add(f.avx512dq, "avx512dq");
  add(f.avx512bf16, "avx512_bf16");
  add(f.avx512fp16, "avx512_fp16");
  add(f.amx_bf16, "amx_bf16");
  b.max_threads = cpu::resolve_threads(0);
#ifdef _OPENMP
  b.openmp = true;
#endif
  b.cuda = cuda::compiled();
  b.cuda_archs = cuda::compiled_archs();
  b.cuda_kernels = cuda::compiled_kernels();
  return b;
}

void set_cpu_isa(const std::string& name) { cpu::set_isa(name.c_str()); }

}  // namespace attnkit
