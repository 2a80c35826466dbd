// attnkit._core: dense attention (FMHA) and merge_attentions.
#include "common.hpp"

namespace attnkit_py {

namespace {

attnkit::AttentionOptions fmha_options(bool is_causal, int64_t wl, int64_t wr, float softcap,
                                       float scale, const TensorView* cu_q,
                                       const TensorView* cu_k) {
  attnkit::AttentionOptions o;
  o.is_causal = is_causal;
  o.window_left = wl;
  o.window_right = wr;
  o.softcap = softcap;
  o.scale = scale;
  o.cu_seqlens_q = cu_q;
  o.cu_seqlens_k = cu_k;
  return o;
}

}  // namespace

void bind_fmha(nb::module_& m) {
  m.def(
      "attention_fwd",
      [](const AnyArray& q, const AnyArray& k, const AnyArray& v, const AnyArray& out,
         std::optional<AnyArray> lse, bool is_causal, int64_t window_left, int64_t window_right,
         float softcap, float scale, std::optional<AnyArray> cu_q, std::optional<AnyArray> cu_k,
         uintptr_t stream, int threads) {
        TensorView tq = view_of(q, "q"), tk = view_of(k, "k"), tv = view_of(v, "v"),
                   to = view_of(out, "out");
        OptView tl(lse, "lse"), cq(cu_q, "cu_seqlens_q"), ck(cu_k, "cu_seqlens_k");
        auto opts = fmha_options(is_causal, window_left, window_right, softcap, scale, cq.get(),
                                 ck.get());
        attnkit::ExecConfig exec{reinterpret_cast<void*>(stream), threads};
        nb::gil_scoped_release release;
        attnkit::attention(tq, tk, tv, to, tl.get(), opts, exec);
      },
      "q"_a, "k"_a, "v"_a, "out"_a, "lse"_a.none(), "is_causal"_a, "window_left"_a,
      "window_right"_a, "softcap"_a, "scale"_a, "cu_seqlens_q"_a.none(), "cu_seqlens_k"_a.none(),
      "stream"_a = 0, "threads"_a = 0, "Dense attention forward into preallocated out/lse.");

  m.def(
      "attention_bwd",
      [](const AnyArray& dout, const AnyArray& q, const AnyArray& k, const AnyArray& v,
         const AnyArray& out, const AnyArray& lse, const AnyArray& dq, const AnyArray& dk,
         const AnyArray& dv, bool is_causal, int64_t window_left, int64_t window_right,
         float softcap, float scale, std::optional<AnyArray> cu_q, std::optional<AnyArray> cu_k,
         std::optional<AnyArray> dlse, uintptr_t stream, int threads) {
        TensorView tdo = view_of(dout, "dout"), tq = view_of(q, "q"), tk = view_of(k, "k"),
                   tv = view_of(v, "v"), to = view_of(out, "out"), tl = view_of(lse, "lse"),
                   tdq = view_of(dq, "dq"), tdk = view_of(dk, "dk"), tdv = view_of(dv, "dv");
        OptView cq(cu_q, "cu_seqlens_q"), ck(cu_k, "cu_seqlens_k"), tdl(dlse, "dlse");
        auto opts = fmha_options(is_causal, window_left, window_right, softcap, scale, cq.get(),
                                 ck.get());
        attnkit::ExecConfig exec{reinterpret_cast<void*>(stream), threads};
        nb::gil_scoped_release release;
        attnkit::attention_backward(tdo, tq, tk, tv, to, tl, tdq, tdk, tdv, opts, exec, tdl.get());
      },
      "dout"_a, "q"_a, "k"_a, "v"_a, "out"_a, "lse"_a, "dq"_a, "dk"_a, "dv"_a, "is_causal"_a,
      "window_left"_a, "window_right"_a, "softcap"_a, "scale"_a, "cu_seqlens_q"_a.none(),
      "cu_seqlens_k"_a.none(), "dlse"_a.none(), "stream"_a = 0, "threads"_a = 0,
      "Dense attention backward into preallocated dq/dk/dv.");

  m.def(
      "merge_attentions",
      [](std::vector<AnyArray> outs, std::vector<AnyArray> lses, const AnyArray& out,
         std::optional<AnyArray> lse, int threads) {
        std::vector<TensorView> vo, vl;
        for (size_t i = 0; i < outs.size(); ++i) vo.push_back(view_of(outs[i], "outs[i]"));
        for (size_t i = 0; i < lses.size(); ++i) vl.push_back(view_of(lses[i], "lses[i]"));
        TensorView to = view_of(out, "out");
        OptView tl(lse, "lse");
        attnkit::ExecConfig exec{nullptr, threads};
        nb::gil_scoped_release release;
        attnkit::merge_attentions(vo, vl, to, tl.get(), exec);
      },
      "outs"_a, "lses"_a, "out"_a, "lse"_a.none(), "threads"_a = 0);
}

}  // namespace attnkit_py
