#include "validate.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace attnkit::check {

namespace {
std::string shape_of(std::initializer_list<int64_t> s) {
  std::string r = "[";
  bool first = true;
  for (int64_t x : s) {
    r += (first ? "" : ", ") + std::to_string(x);
    first = false;
  }
  return r + "]";
}
const char* device_name(const Device& d) { return d.kind == DeviceKind::CPU ? "cpu" : "cuda"; }
}  // namespace

void float_dtype(const char* fn, const char* name, const TensorView& t) {
  AK_CHECK(t.dtype == DType::Float32 || t.dtype == DType::Float16 || t.dtype == DType::BFloat16,
           InvalidType, fn, ": ", name, " must be float32, float16 or bfloat16, got ",
           dtype_name(t.dtype));
}

void same_dtype(const char* fn, const char* name, const TensorView& t, const char* ref_name,
                const TensorView& ref) {
  AK_CHECK(t.dtype == ref.dtype, InvalidType, fn, ": ", name, " has dtype ", dtype_name(t.dtype),
           " but ", ref_name, " has ", dtype_name(ref.dtype), "; they must match");
}

void same_device(const char* fn, const char* name, const TensorView& t, const char* ref_name,
                 const TensorView& ref) {
  AK_CHECK(t.device.kind == ref.device.kind && t.device.index == ref.device.index,
           InvalidArgument, fn, ": ", name, " is on ", device_name(t.device), ":", t.device.index,
           " but ", ref_name, " is on ", device_name(ref.device), ":", ref.device.index);
}

void rank(const char* fn, const char* name, const TensorView& t, int expected, const char* layout) {
  AK_CHECK(t.ndim == expected, InvalidArgument, fn, ": ", name, " must have ", expected,
           " dimensions ", layout, ", got ", t.ndim, " (shape ", t.shape_str(), ")");
}

void unit_inner_stride(const char* fn, const char* name, const TensorView& t) {
  if (t.ndim == 0 || t.shape[t.ndim - 1] <= 1 || t.numel() == 0) return;  // nothing to read
  AK_CHECK(t.stride[t.ndim - 1] == 1, InvalidArgument, fn, ": ", name,
           " must have unit stride in its last (head_dim) dimension, got stride ",
           t.stride[t.ndim - 1], "; make it contiguous first");
}

void dim(const char* fn, const char* name, const TensorView& t, int axis, int64_t expected,
         const char* what) {
  AK_CHECK(t.shape[axis] == expected, InvalidArgument, fn, ": ", name, ".shape[", axis, "] (",
           what, ") must be ", expected, ", got ", t.shape[axis], " (shape ", t.shape_str(), ")");
}

void has_data(const char* fn, const char* name, const TensorView& t) {
  AK_CHECK(t.numel() == 0 || t.data != nullptr, InvalidArgument, fn, ": ", name,
           " has no data pointer");
}

void like(const char* fn, const char* name, const TensorView& t, const char* ref_name,
          const TensorView& ref) {
  const bool ok = t.ndim == ref.ndim && std::equal(ref.shape, ref.shape + ref.ndim, t.shape);
  AK_CHECK(ok, InvalidArgument, fn, ": ", name, " must have the shape of ", ref_name, " ",
           ref.shape_str(), ", got ", t.shape_str());
  same_dtype(fn, name, t, ref_name, ref);
  same_device(fn, name, t, ref_name, ref);
  unit_inner_stride(fn, name, t);
  has_data(fn, name, t);
}

void dlse_like(const char* fn, const TensorView& dlse, const TensorView& lse) {
  like(fn, "dlse", dlse, "lse", lse);
  AK_CHECK(std::equal(lse.stride, lse.stride + lse.ndim, dlse.stride), InvalidArgument, fn,
           ": dlse must have the strides of lse");
}

void qkv(const char* fn, const TensorView& q, const TensorView& k, const TensorView& v) {
  float_dtype(fn, "q", q);
  same_dtype(fn, "k", k, "q", q);
  same_dtype(fn, "v", v, "q", q);
  same_device(fn, "k", k, "q", q);
  same_device(fn, "v", v, "q", q);
  for (auto [name, t] : {std::pair<const char*, const TensorView*>{"q", &q}, {"k", &k}, {"v", &v}}) {
    unit_inner_stride(fn, name, *t);
    has_data(fn, name, *t);
  }
}

void positive(const char* fn, const char* what, int64_t value) {
  AK_CHECK(value >= 1, InvalidArgument, fn, ": ", what, " must be at least 1, got ", value);
}

void output(const char* fn, const char* name, const TensorView& t, DType dtype,
            const TensorView& ref, std::initializer_list<int64_t> shape) {
  AK_CHECK(t.dtype == dtype, InvalidType, fn, ": ", name, " must have dtype ", dtype_name(dtype),
           ", got ", dtype_name(t.dtype));
  same_device(fn, name, t, "q", ref);
  bool ok = t.ndim == static_cast<int>(shape.size());
  int i = 0;
  for (int64_t s : shape) ok = ok && t.shape[i++] == s;
  AK_CHECK(ok, InvalidArgument, fn, ": ", name, " must have shape ", shape_of(shape), ", got ",
           t.shape_str());
  unit_inner_stride(fn, name, t);
  has_data(fn, name, t);
}

}  // namespace attnkit::check

namespace attnkit {

Operand operand_of(const TensorView& t, bool packed) {
  Operand o;
  o.data = t.data;
  if (packed) {  // [total, H, D]
    o.batch_stride = 0;
    o.token_stride = t.stride[0];
    o.head_stride = t.stride[1];
  } else {  // [B, S, H, D]
    o.batch_stride = t.stride[0];
    o.token_stride = t.stride[1];
    o.head_stride = t.stride[2];
  }
  return o;
}

namespace {

// Reads and checks cu_seqlens on the host; returns the longest sequence.
int64_t check_cu_seqlens(const char* fn, const char* name, const TensorView& cu, int64_t batch,
                         int64_t total) {
  const int32_t* c = static_cast<const int32_t*>(cu.data);
  AK_CHECK(c[0] == 0, InvalidArgument, fn, ": ", name, "[0] must be 0, got ", c[0]);
  int64_t longest = 0;
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t a = c[i * cu.stride[0]], b = c[(i + 1) * cu.stride[0]];
    AK_CHECK(b >= a, InvalidArgument, fn, ": ", name, " must be non-decreasing, but ", name, "[",
             i + 1, "] = ", b, " < ", name, "[", i, "] = ", a);
    longest = std::max(longest, b - a);
  }
  const int64_t last = c[batch * cu.stride[0]];
  AK_CHECK(last == total, InvalidArgument, fn, ": ", name, "[-1] must equal the packed token count ",
           total, ", got ", last);
  return longest;
}

}  // namespace

FmhaProblem make_fmha_problem(const char* fn, const TensorView& q, const TensorView& k,
                              const TensorView& v, const TensorView& out, const TensorView* lse,
                              const AttentionOptions& opts) {
  const bool varlen = opts.cu_seqlens_q || opts.cu_seqlens_k;
  AK_CHECK(!varlen || (opts.cu_seqlens_q && opts.cu_seqlens_k), InvalidArgument, fn,
           ": cu_seqlens_q and cu_seqlens_k must be given together");
  const int r = varlen ? 3 : 4;
  const char* layout = varlen ? "[total_tokens, heads, head_dim] (varlen)"
                              : "[batch, seqlen, heads, head_dim]";
  check::rank(fn, "q", q, r, layout);
  check::rank(fn, "k", k, r, layout);
  check::rank(fn, "v", v, r, layout);
  check::qkv(fn, q, k, v);

  FmhaProblem p;
  p.dtype = q.dtype;
  p.device = q.device;
  const int o = varlen ? 1 : 0;  // axis shift for the packed layout
  p.heads_q = q.shape[2 - o];
  p.head_dim_qk = q.shape[3 - o];
  p.heads_kv = k.shape[2 - o];
  p.head_dim_v = v.shape[3 - o];
  check::positive(fn, "the number of query heads (q.shape[-2])", p.heads_q);
  check::positive(fn, "the number of key/value heads (k.shape[-2])", p.heads_kv);
  check::positive(fn, "head_dim (q.shape[-1])", p.head_dim_qk);
  check::positive(fn, "the value head_dim (v.shape[-1])", p.head_dim_v);
  check::dim(fn, "k", k, 3 - o, p.head_dim_qk, "head_dim, must match q");
  check::dim(fn, "v", v, 2 - o, p.heads_kv, "heads, must match k");
  check::dim(fn, "v", v, 1 - o, k.shape[1 - o], "seqlen, must match k");
  AK_CHECK(p.heads_q % p.heads_kv == 0, InvalidArgument, fn,
           ": the number of query heads must be a multiple of the number of key/value heads "
           "(GQA/MQA), got ", p.heads_q, " query heads and ", p.heads_kv, " key/value heads");

  if (varlen) {
    for (auto [name, cu] : {std::pair<const char*, const TensorView*>{"cu_seqlens_q", opts.cu_seqlens_q},
                            {"cu_seqlens_k", opts.cu_seqlens_k}}) {
      AK_CHECK(cu->dtype == DType::Int32, InvalidType, fn, ": ", name, " must be int32, got ",
               dtype_name(cu->dtype));
      check::rank(fn, name, *cu, 1, "[batch + 1]");
      check::same_device(fn, name, *cu, "q", q);
      AK_CHECK(cu->shape[0] >= 2, InvalidArgument, fn, ": ", name,
               " must hold batch + 1 >= 2 offsets, got ", cu->shape[0]);
      check::has_data(fn, name, *cu);
    }
    AK_CHECK(opts.cu_seqlens_q->shape[0] == opts.cu_seqlens_k->shape[0], InvalidArgument, fn,
             ": cu_seqlens_q and cu_seqlens_k must have the same length, got ",
             opts.cu_seqlens_q->shape[0], " and ", opts.cu_seqlens_k->shape[0]);
    p.batch = opts.cu_seqlens_q->shape[0] - 1;
    p.total_q = q.shape[0];
    p.total_k = k.shape[0];
    p.cu_seqlens_q = static_cast<const int32_t*>(opts.cu_seqlens_q->data);
    p.cu_seqlens_k = static_cast<const int32_t*>(opts.cu_seqlens_k->data);
    AK_CHECK(opts.cu_seqlens_q->stride[0] == 1 && opts.cu_seqlens_k->stride[0] == 1,
             InvalidArgument, fn, ": cu_seqlens_q and cu_seqlens_k must be contiguous");
    if (q.device.kind == DeviceKind::CPU) {
      p.seqlen_q = check_cu_seqlens(fn, "cu_seqlens_q", *opts.cu_seqlens_q, p.batch, p.total_q);
      p.seqlen_k = check_cu_seqlens(fn, "cu_seqlens_k", *opts.cu_seqlens_k, p.batch, p.total_k);
    } else {
      // Device offsets are not read back (that would synchronise); the totals bound
      // every sequence, and kernels exit early past each sequence's end.
      p.seqlen_q = p.total_q;
      p.seqlen_k = p.total_k;
    }
    check::output(fn, "out", out, q.dtype, q, {p.total_q, p.heads_q, p.head_dim_v});
    if (lse) check::output(fn, "lse", *lse, DType::Float32, q, {p.total_q, p.heads_q});
  } else {
    p.batch = q.shape[0];
    p.seqlen_q = q.shape[1];
    p.seqlen_k = k.shape[1];
    check::dim(fn, "k", k, 0, p.batch, "batch, must match q");
    check::dim(fn, "v", v, 0, p.batch, "batch, must match q");
    check::output(fn, "out", out, q.dtype, q, {p.batch, p.seqlen_q, p.heads_q, p.head_dim_v});
    if (lse) check::output(fn, "lse", *lse, DType::Float32, q, {p.batch, p.seqlen_q, p.heads_q});
  }
  p.q = operand_of(q, varlen);
  p.k = operand_of(k, varlen);
  p.v = operand_of(v, varlen);
  p.out = operand_of(out, varlen);
  if (lse) {
    p.lse = static_cast<float*>(lse->data);
    p.lse_batch_stride = varlen ? 0 : lse->stride[0];
    p.lse_token_stride = lse->stride[varlen ? 0 : 1];
    p.lse_head_stride = lse->stride[varlen ? 1 : 2];
  }

  AK_CHECK(opts.window_left >= -1 && opts.window_right >= -1, InvalidArgument, fn,
           ": window_size entries must be >= 0, or -1 for unbounded, got (", opts.window_left, ", ",
           opts.window_right, ")");
  p.is_causal = opts.is_causal;
  p.window.left = opts.window_left;
  p.window.right = opts.is_causal ? 0 : opts.window_right;
  if (opts.is_causal && opts.window_right > 0) p.window.right = 0;
  AK_CHECK(std::isfinite(opts.softcap) && opts.softcap >= 0.f, InvalidArgument, fn,
           ": softcap must be a finite number >= 0 (0 = off), got ", opts.softcap);
  p.softcap = opts.softcap;
  if (std::isnan(opts.scale)) {
    p.scale = 1.f / std::sqrt(static_cast<float>(p.head_dim_qk));
  } else {
    AK_CHECK(std::isfinite(opts.scale), InvalidArgument, fn, ": scale must be finite, got ",
             opts.scale);
    p.scale = opts.scale;
  }
  return p;
}

}  // namespace attnkit
