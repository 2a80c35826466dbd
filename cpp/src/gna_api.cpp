// attnkit: neighborhood attention entry points -- validate once, then dispatch.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "attnkit/attnkit.hpp"
#include "cpu/gna.hpp"
#include "gna_problem.hpp"
#include "validate.hpp"

namespace attnkit {

namespace {

NaOperand na_operand(const TensorView& t, int nd) {
  NaOperand o;
  o.data = t.data;
  o.batch_stride = t.stride[0];
  for (int i = 0; i < nd; ++i) o.token_stride[3 - nd + i] = t.stride[1 + i];
  o.head_stride = t.stride[nd + 1];
  return o;
}

// One value for every spatial dim, or one per dim.
template <class T>
std::vector<T> per_dim(const char* fn, const char* name, const std::vector<T>& vals, int nd,
                       const TensorView& q) {
  AK_CHECK(vals.size() == 1 || static_cast<int>(vals.size()) == nd, InvalidArgument, fn, ": ",
           name, " must be one value or one per spatial dimension; q of shape ", q.shape_str(),
           " has ", nd, " spatial dimension", nd == 1 ? "" : "s", ", but ", name, " has ",
           vals.size(), " values");
  return vals.size() == 1 ? std::vector<T>(nd, vals[0]) : vals;
}

std::string spatial_layout(int nd) {
  static const char* names[] = {"X", "X, Y", "X, Y, Z"};
  return std::string("[batch, ") + names[nd - 1] + ", heads, head_dim]";
}

NaProblem make_na_problem(const char* fn, const TensorView& q, const TensorView& k,
                          const TensorView& v, const TensorView& out, const TensorView* lse,
                          const NeighborhoodOptions& opts) {
  AK_CHECK(q.ndim >= 4 && q.ndim <= 6, InvalidArgument, fn,
           ": q must have 4, 5 or 6 dimensions [batch, *spatial (1 to 3 dims), heads, head_dim], "
           "got ", q.ndim, " (shape ", q.shape_str(), ")");
  const int nd = q.ndim - 3;
  const std::string layout = spatial_layout(nd);
  check::rank(fn, "k", k, q.ndim, layout.c_str());
  check::rank(fn, "v", v, q.ndim, layout.c_str());
  check::qkv(fn, q, k, v);

  NaProblem p;
  p.dtype = q.dtype;
  p.device = q.device;
  p.ndim = nd;
  p.batch = q.shape[0];
  p.heads_q = q.shape[nd + 1];
  p.head_dim_qk = q.shape[nd + 2];
  p.heads_kv = k.shape[nd + 1];
  p.head_dim_v = v.shape[nd + 2];
  check::positive(fn, "the number of query heads (q.shape[-2])", p.heads_q);
  check::positive(fn, "the number of key/value heads (k.shape[-2])", p.heads_kv);
  check::positive(fn, "head_dim (q.shape[-1])", p.head_dim_qk);
  check::positive(fn, "the value head_dim (v.shape[-1])", p.head_dim_v);
  check::dim(fn, "k", k, 0, p.batch, "batch, must match q");
  check::dim(fn, "v", v, 0, p.batch, "batch, must match q");
  for (int i = 0; i < nd; ++i) {
    check::dim(fn, "k", k, 1 + i, q.shape[1 + i], "spatial size, must match q");
    check::dim(fn, "v", v, 1 + i, q.shape[1 + i], "spatial size, must match q");
  }
  check::dim(fn, "k", k, nd + 2, p.head_dim_qk, "head_dim, must match q");
  check::dim(fn, "v", v, nd + 1, p.heads_kv, "heads, must match k");
  AK_CHECK(p.heads_q % p.heads_kv == 0, InvalidArgument, fn,
           ": the number of query heads must be a multiple of the number of key/value heads "
           "(GQA/MQA), got ", p.heads_q, " query heads and ", p.heads_kv, " key/value heads");

  AK_CHECK(!opts.kernel_size.empty(), InvalidArgument, fn, ": kernel_size is required");
  const auto ks = per_dim(fn, "kernel_size", opts.kernel_size, nd, q);
  const auto st = per_dim(fn, "stride", opts.stride, nd, q);
  const auto dl = per_dim(fn, "dilation", opts.dilation, nd, q);
  const auto ca = per_dim(fn, "is_causal", opts.is_causal, nd, q);
  for (int i = 0; i < nd; ++i) {
    const int64_t n = q.shape[1 + i];
    AK_CHECK(ks[i] >= 2, InvalidArgument, fn, ": kernel_size[", i, "] must be at least 2, got ",
             ks[i]);
    AK_CHECK(dl[i] >= 1, InvalidArgument, fn, ": dilation[", i, "] must be at least 1, got ", dl[i]);
    AK_CHECK(st[i] >= 1, InvalidArgument, fn, ": stride[", i, "] must be at least 1, got ", st[i]);
    AK_CHECK(st[i] <= ks[i], InvalidArgument, fn, ": stride[", i, "] = ", st[i],
             " must not exceed kernel_size[", i, "] = ", ks[i]);
    AK_CHECK(ks[i] <= n && dl[i] <= n / ks[i], InvalidArgument, fn, ": kernel_size[", i,
             "] * dilation[", i, "] = ", ks[i], " * ", dl[i], " must not exceed the spatial size ",
             n, " (q.shape[", 1 + i, "])");
    NaAxis& ax = p.axis[3 - nd + i];
    ax.size = n;
    ax.kernel = ks[i];
    ax.stride = st[i];
    ax.dilation = dl[i];
    ax.causal = ca[i];
  }

  std::vector<int64_t> oshape(q.shape, q.shape + q.ndim);
  oshape.back() = p.head_dim_v;
  auto expect = [&](const char* name, const TensorView& t, DType dt, const std::vector<int64_t>& s) {
    AK_CHECK(t.dtype == dt, InvalidType, fn, ": ", name, " must have dtype ", dtype_name(dt),
             ", got ", dtype_name(t.dtype));
    check::same_device(fn, name, t, "q", q);
    const bool ok = t.ndim == static_cast<int>(s.size()) && std::equal(s.begin(), s.end(), t.shape);
    TensorView want;
    want.ndim = static_cast<int>(s.size());
    std::copy(s.begin(), s.end(), want.shape);
    AK_CHECK(ok, InvalidArgument, fn, ": ", name, " must have shape ", want.shape_str(), ", got ",
             t.shape_str());
    check::unit_inner_stride(fn, name, t);
    check::has_data(fn, name, t);
  };
  expect("out", out, q.dtype, oshape);
  if (lse) expect("lse", *lse, DType::Float32, std::vector<int64_t>(q.shape, q.shape + q.ndim - 1));

  p.q = na_operand(q, nd);
  p.k = na_operand(k, nd);
  p.v = na_operand(v, nd);
  p.out = na_operand(out, nd);
  if (lse) {
    p.lse = static_cast<float*>(lse->data);
    TensorView l = *lse;  // [B, *S, H] -> addressed like an operand without head_dim
    l.stride[l.ndim] = 1;
    l.shape[l.ndim] = 1;
    ++l.ndim;
    p.lse_layout = na_operand(l, nd);
  }

  if (std::isnan(opts.scale)) {
    p.scale = 1.f / std::sqrt(static_cast<float>(p.head_dim_qk));
  } else {
    AK_CHECK(std::isfinite(opts.scale), InvalidArgument, fn, ": scale must be finite, got ",
             opts.scale);
    p.scale = opts.scale;
  }

  const TensorView* ak = opts.additional_keys;
  const TensorView* av = opts.additional_values;
  AK_CHECK((ak == nullptr) == (av == nullptr), InvalidArgument, fn,
           ": additional_keys and additional_values must be given together");
  if (ak) {
    const char* lay = "[batch, n_extra, kv_heads, head_dim]";
    check::rank(fn, "additional_keys", *ak, 4, lay);
    check::rank(fn, "additional_values", *av, 4, lay);
    check::same_dtype(fn, "additional_keys", *ak, "q", q);
    check::same_dtype(fn, "additional_values", *av, "q", q);
    check::same_device(fn, "additional_keys", *ak, "q", q);
    check::same_device(fn, "additional_values", *av, "q", q);
    check::unit_inner_stride(fn, "additional_keys", *ak);
    check::unit_inner_stride(fn, "additional_values", *av);
    check::has_data(fn, "additional_keys", *ak);
    check::has_data(fn, "additional_values", *av);
    check::dim(fn, "additional_keys", *ak, 0, p.batch, "batch, must match q");
    check::dim(fn, "additional_values", *av, 0, p.batch, "batch, must match q");
    check::dim(fn, "additional_keys", *ak, 2, p.heads_kv, "heads, must match k");
    check::dim(fn, "additional_values", *av, 2, p.heads_kv, "heads, must match k");
    check::dim(fn, "additional_keys", *ak, 3, p.head_dim_qk, "head_dim, must match q");
    check::dim(fn, "additional_values", *av, 3, p.head_dim_v, "head_dim, must match v");
    check::dim(fn, "additional_values", *av, 1, ak->shape[1],
               "n_extra, must match additional_keys");
    p.n_extra = ak->shape[1];
    if (p.n_extra > 0) {
      p.extra_k = operand_of(*ak, false);
      p.extra_v = operand_of(*av, false);
    }
  }
  return p;
}

[[noreturn]] void no_cuda(const char* fn) {
  throw Error(ErrorCode::Unsupported,
              std::string(fn) + ": neighborhood attention runs on CPU tensors in this build "
                                "(no CUDA kernels for it yet)");
}

}  // namespace

void neighborhood_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                            const TensorView& out, const TensorView* lse,
                            const NeighborhoodOptions& opts, const ExecConfig& exec) {
  const char* fn = "neighborhood_attention";
  const NaProblem p = make_na_problem(fn, q, k, v, out, lse, opts);
  if (p.device.kind != DeviceKind::CPU) no_cuda(fn);
  if (p.batch == 0) return;
  cpu::na_forward(p, exec.num_threads);
}

void neighborhood_attention_backward(const TensorView& dout, const TensorView& q,
                                     const TensorView& k, const TensorView& v,
                                     const TensorView& out, const TensorView& lse,
                                     const TensorView& dq, const TensorView& dk,
                                     const TensorView& dv, const NeighborhoodOptions& opts,
                                     const ExecConfig& exec, const TensorView* dlse,
                                     const TensorView* d_additional_keys,
                                     const TensorView* d_additional_values) {
  const char* fn = "neighborhood_attention_backward";
  NaBackwardProblem bp;
  bp.fwd = make_na_problem(fn, q, k, v, out, &lse, opts);
  const int nd = bp.fwd.ndim;
  check::like(fn, "dout", dout, "out", out);
  check::like(fn, "dq", dq, "q", q);
  check::like(fn, "dk", dk, "k", k);
  check::like(fn, "dv", dv, "v", v);
  bp.dout = na_operand(dout, nd);
  bp.dq = na_operand(dq, nd);
  bp.dk = na_operand(dk, nd);
  bp.dv = na_operand(dv, nd);
  if (dlse) {
    check::dlse_like(fn, *dlse, lse);
    bp.dlse = static_cast<const float*>(dlse->data);
  }
  if (opts.additional_keys) {
    AK_CHECK(d_additional_keys && d_additional_values, InvalidArgument, fn,
             ": with additional_keys/values, d_additional_keys and d_additional_values are required");
    check::like(fn, "d_additional_keys", *d_additional_keys, "additional_keys", *opts.additional_keys);
    check::like(fn, "d_additional_values", *d_additional_values, "additional_values",
                *opts.additional_values);
    if (bp.fwd.n_extra > 0) {
      bp.d_extra_k = operand_of(*d_additional_keys, false);
      bp.d_extra_v = operand_of(*d_additional_values, false);
    }
  }
  if (bp.fwd.device.kind != DeviceKind::CPU) no_cuda(fn);
  if (bp.fwd.batch == 0) return;
  cpu::na_backward(bp, exec.num_threads);
}

}  // namespace attnkit
