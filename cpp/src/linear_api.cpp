// attnkit: linear attention entry points -- validate once, then dispatch by device.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "attnkit/linear.hpp"
#include "cpu/linear.hpp"
#include "linear_problem.hpp"
#include "validate.hpp"

namespace attnkit {

namespace {

const char* kLayout = "[batch, seqlen, heads, head_dim]";
const char* kLayoutVarlen = "[total_tokens, heads, head_dim] (varlen)";

// Offsets must start at 0, not decrease and end at the packed token count.
// Returns the longest sequence.
int64_t read_cu_seqlens(const char* fn, const TensorView& cu, int64_t total) {
  AK_CHECK(cu.dtype == DType::Int32, InvalidType, fn, ": cu_seqlens must be int32, got ",
           dtype_name(cu.dtype));
  check::rank(fn, "cu_seqlens", cu, 1, "[num_sequences + 1]");
  AK_CHECK(cu.shape[0] >= 2, InvalidArgument, fn,
           ": cu_seqlens must hold num_sequences + 1 >= 2 offsets, got ", cu.shape[0]);
  AK_CHECK(cu.stride[0] == 1, InvalidArgument, fn, ": cu_seqlens must be contiguous");
  check::has_data(fn, "cu_seqlens", cu);
  const int32_t* c = static_cast<const int32_t*>(cu.data);
  const int64_t n = cu.shape[0] - 1;
  AK_CHECK(c[0] == 0, InvalidArgument, fn, ": cu_seqlens[0] must be 0, got ", c[0]);
  int64_t longest = 0;
  for (int64_t i = 0; i < n; ++i) {
    AK_CHECK(c[i + 1] >= c[i], InvalidArgument, fn, ": cu_seqlens must be non-decreasing, but cu_seqlens[",
             i + 1, "] = ", c[i + 1], " < cu_seqlens[", i, "] = ", c[i]);
    longest = std::max<int64_t>(longest, c[i + 1] - c[i]);
  }
  AK_CHECK(c[n] == total, InvalidArgument, fn,
           ": cu_seqlens[-1] must equal the packed token count ", total, ", got ", c[n]);
  return longest;
}

// A float32 state [N, H, Dk, Dv] with unit inner stride (input or output).
StateOperand state_of(const char* fn, const char* name, const TensorView& t, const TensorView& q,
                      int64_t n, int64_t h, int64_t dk, int64_t dv) {
  AK_CHECK(t.dtype == DType::Float32, InvalidType, fn, ": ", name,
           " must be float32 (states are float32 [N, H, Dk, Dv]), got ", dtype_name(t.dtype));
  check::same_device(fn, name, t, "q", q);
  const bool ok = t.ndim == 4 && t.shape[0] == n && t.shape[1] == h && t.shape[2] == dk &&
                  t.shape[3] == dv;
  AK_CHECK(ok, InvalidArgument, fn, ": ", name, " must have shape [", n, ", ", h, ", ", dk, ", ",
           dv, "] ([num_sequences, heads_q, head_dim_k, head_dim_v]), got ", t.shape_str());
  check::unit_inner_stride(fn, name, t);
  check::has_data(fn, name, t);
  StateOperand s;
  s.data = static_cast<float*>(t.data);
  s.seq_stride = t.stride[0];
  s.head_stride = t.stride[1];
  s.row_stride = t.stride[2];
  return s;
}

GateOperand gate_of(const char* fn, const char* name, const TensorView& g, const TensorView& q,
                    bool varlen, int64_t batch, int64_t seqlen, int64_t total, int64_t heads) {
  check::float_dtype(fn, name, g);
  check::same_device(fn, name, g, "q", q);
  check::has_data(fn, name, g);
  GateOperand o;
  o.data = g.data;
  o.dtype = g.dtype;
  if (g.ndim == 1) {
    AK_CHECK(g.shape[0] == heads, InvalidArgument, fn, ": ", name, " per head must have shape [",
             heads, "] (heads_q), got ", g.shape_str());
    o.kind = GateKind::PerHead;
    o.head_stride = g.stride[0];
    return o;
  }
  const std::string per_head = "[" + std::to_string(heads) + "]";
  if (varlen) {
    AK_CHECK(g.ndim == 2 && g.shape[0] == total && g.shape[1] == heads, InvalidArgument, fn, ": ",
             name, " must be per head ", per_head, " or per token [", total, ", ", heads,
             "] ([total_tokens, heads_q], varlen), got ", g.shape_str());
    o.token_stride = g.stride[0];
    o.head_stride = g.stride[1];
  } else {
    AK_CHECK(g.ndim == 3 && g.shape[0] == batch && g.shape[1] == seqlen && g.shape[2] == heads,
             InvalidArgument, fn, ": ", name, " must be per head ", per_head, " or per token [",
             batch, ", ", seqlen, ", ", heads, "] ([batch, seqlen, heads_q]), got ", g.shape_str());
    o.batch_stride = g.stride[0];
    o.token_stride = g.stride[1];
    o.head_stride = g.stride[2];
  }
  o.kind = GateKind::PerToken;
  return o;
}

// Validates q, k, v and the options; fills everything but the outputs.
LinearProblem make_problem(const char* fn, const TensorView& q, const TensorView& k,
                           const TensorView& v, const LinearAttentionOptions& opts) {
  const bool varlen = opts.cu_seqlens != nullptr;
  const int r = varlen ? 3 : 4;
  const char* layout = varlen ? kLayoutVarlen : kLayout;
  check::rank(fn, "q", q, r, layout);
  check::rank(fn, "k", k, r, layout);
  check::rank(fn, "v", v, r, layout);
  check::qkv(fn, q, k, v);
  LinearProblem p;
  p.dtype = q.dtype;
  p.device = q.device;
  const int o = varlen ? 1 : 0;
  p.heads_q = q.shape[2 - o];
  p.heads_kv = k.shape[2 - o];
  p.head_dim_k = q.shape[3 - o];
  p.head_dim_v = v.shape[3 - o];
  check::positive(fn, "the number of query heads (q.shape[-2])", p.heads_q);
  check::positive(fn, "the number of key/value heads (k.shape[-2])", p.heads_kv);
  check::positive(fn, "head_dim (q.shape[-1])", p.head_dim_k);
  check::positive(fn, "the value head_dim (v.shape[-1])", p.head_dim_v);
  check::dim(fn, "k", k, 3 - o, p.head_dim_k, "head_dim, must match q");
  check::dim(fn, "v", v, 2 - o, p.heads_kv, "heads, must match k");
  AK_CHECK(p.heads_q % p.heads_kv == 0, InvalidArgument, fn,
           ": the number of query heads must be a multiple of the number of key/value heads "
           "(GQA/MQA), got ", p.heads_q, " query heads and ", p.heads_kv, " key/value heads");
  check::dim(fn, "k", k, 1 - o, q.shape[1 - o],
             varlen ? "total_tokens, must match q" : "seqlen, must match q (linear attention pairs "
                                                     "every query with its own prefix)");
  check::dim(fn, "v", v, 1 - o, q.shape[1 - o], varlen ? "total_tokens, must match q" : "seqlen, must match q");

  if (varlen) {
    check::same_device(fn, "cu_seqlens", *opts.cu_seqlens, "q", q);
    AK_CHECK(q.device.kind == DeviceKind::CPU, Unsupported, fn,
             ": linear attention runs on the CPU in this build (no CUDA kernel yet); pass CPU tensors");
    p.total = q.shape[0];
    p.batch = opts.cu_seqlens->shape[0] - 1;
    p.seqlen = read_cu_seqlens(fn, *opts.cu_seqlens, p.total);
    p.cu_seqlens = static_cast<const int32_t*>(opts.cu_seqlens->data);
  } else {
    p.batch = q.shape[0];
    p.seqlen = q.shape[1];
    check::dim(fn, "k", k, 0, p.batch, "batch, must match q");
    check::dim(fn, "v", v, 0, p.batch, "batch, must match q");
  }
  p.q = operand_of(q, varlen);
  p.k = operand_of(k, varlen);
  p.v = operand_of(v, varlen);

  p.is_causal = opts.is_causal;
  p.normalize = opts.normalize;
  if (std::isnan(opts.scale)) {
    p.scale = 1.f / std::sqrt(static_cast<float>(p.head_dim_k));
  } else {
    AK_CHECK(std::isfinite(opts.scale), InvalidArgument, fn, ": scale must be finite, got ",
             opts.scale);
    p.scale = opts.scale;
  }
  if (opts.g) {
    AK_CHECK(opts.is_causal, InvalidArgument, fn,
             ": g (a decay gate) needs is_causal=True; non-causal linear attention "
             "o = scale * q (k^T v) has no order for a gate to act along");
    p.g = gate_of(fn, "g", *opts.g, q, varlen, p.batch, p.seqlen, p.total, p.heads_q);
  }
  if (opts.initial_state) {
    AK_CHECK(!opts.normalize, InvalidArgument, fn,
             ": normalize=True cannot take an initial_state: the normaliser's running key sum z is "
             "not part of the [N, H, Dk, Dv] state (append a column of ones to v instead and "
             "divide by that output column)");
    p.initial_state = state_of(fn, "initial_state", *opts.initial_state, q, p.batch, p.heads_q,
                               p.head_dim_k, p.head_dim_v);
  }
  return p;
}

void require_cpu(const char* fn, const LinearProblem& p) {
  AK_CHECK(p.device.kind == DeviceKind::CPU, Unsupported, fn,
           ": linear attention runs on the CPU in this build (no CUDA kernel yet); pass CPU tensors");
}

bool same_shape(const TensorView& a, const TensorView& b) {
  return a.ndim == b.ndim && std::equal(a.shape, a.shape + a.ndim, b.shape);
}

}  // namespace

void linear_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                      const TensorView& out, const TensorView* final_state,
                      const LinearAttentionOptions& opts, const ExecConfig& exec) {
  const char* fn = "linear_attention";
  LinearProblem p = make_problem(fn, q, k, v, opts);
  const bool varlen = p.varlen();
  if (varlen)
    check::output(fn, "out", out, q.dtype, q, {p.total, p.heads_q, p.head_dim_v});
  else
    check::output(fn, "out", out, q.dtype, q, {p.batch, p.seqlen, p.heads_q, p.head_dim_v});
  p.out = operand_of(out, varlen);
  if (final_state) {
    AK_CHECK(!opts.normalize, InvalidArgument, fn,
             ": normalize=True cannot return a final state: the normaliser's running key sum z is "
             "not part of the [N, H, Dk, Dv] state (append a column of ones to v instead and "
             "divide by that output column)");
    p.final_state = state_of(fn, "final_state", *final_state, q, p.batch, p.heads_q, p.head_dim_k,
                             p.head_dim_v);
  }
  require_cpu(fn, p);
  cpu::linear_forward(p, exec.num_threads);
}

void linear_attention_backward(const TensorView* dout, const TensorView& q, const TensorView& k,
                               const TensorView& v, const TensorView* dfinal_state,
                               const TensorView& dq, const TensorView& dk, const TensorView& dv,
                               const TensorView* dg, const TensorView* dinitial_state,
                               const LinearAttentionOptions& opts, const ExecConfig& exec) {
  const char* fn = "linear_attention_backward";
  LinearBackwardProblem bp;
  bp.fwd = make_problem(fn, q, k, v, opts);
  const LinearProblem& p = bp.fwd;
  const bool varlen = p.varlen();
  if (dout) {
    check::rank(fn, "dout", *dout, varlen ? 3 : 4, varlen ? kLayoutVarlen : kLayout);
    if (varlen)
      check::output(fn, "dout", *dout, q.dtype, q, {p.total, p.heads_q, p.head_dim_v});
    else
      check::output(fn, "dout", *dout, q.dtype, q, {p.batch, p.seqlen, p.heads_q, p.head_dim_v});
    bp.has_dout = true;
    bp.dout = operand_of(*dout, varlen);
  }
  check::like(fn, "dq", dq, "q", q);
  check::like(fn, "dk", dk, "k", k);
  check::like(fn, "dv", dv, "v", v);
  bp.dq = operand_of(dq, varlen);
  bp.dk = operand_of(dk, varlen);
  bp.dv = operand_of(dv, varlen);
  if (dg) {
    AK_CHECK(opts.g != nullptr, InvalidArgument, fn, ": dg was given but g was not");
    AK_CHECK(same_shape(*dg, *opts.g), InvalidArgument, fn, ": dg must have the shape of g ",
             opts.g->shape_str(), ", got ", dg->shape_str());
    check::same_dtype(fn, "dg", *dg, "g", *opts.g);
    bp.dg = gate_of(fn, "dg", *dg, q, varlen, p.batch, p.seqlen, p.total, p.heads_q);
  }
  for (auto [name, t] : {std::pair<const char*, const TensorView*>{"dfinal_state", dfinal_state},
                         {"dinitial_state", dinitial_state}}) {
    if (!t) continue;
    AK_CHECK(!opts.normalize, InvalidArgument, fn, ": normalize=True has no states, so ", name,
             " cannot be given");
    StateOperand s = state_of(fn, name, *t, q, p.batch, p.heads_q, p.head_dim_k, p.head_dim_v);
    (t == dfinal_state ? bp.dfinal_state : bp.dinitial_state) = s;
  }
  require_cpu(fn, p);
  cpu::linear_backward(bp, exec.num_threads);
}

}  // namespace attnkit
