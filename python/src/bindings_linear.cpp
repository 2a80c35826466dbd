// attnkit._core: linear attention (DESIGN §2.4).
#include "common.hpp"

namespace attnkit_py {

namespace {

attnkit::LinearAttentionOptions linear_options(bool is_causal, float scale, bool normalize,
                                               const TensorView* g, const TensorView* init,
                                               const TensorView* cu) {
  attnkit::LinearAttentionOptions o;
  o.is_causal = is_causal;
  o.scale = scale;
  o.normalize = normalize;
  o.g = g;
  o.initial_state = init;
  o.cu_seqlens = cu;
  return o;
}

}  // namespace

void bind_linear(nb::module_& m) {
  m.def(
      "linear_fwd",
      [](const AnyArray& q, const AnyArray& k, const AnyArray& v, const AnyArray& out,
         std::optional<AnyArray> final_state, std::optional<AnyArray> g,
         std::optional<AnyArray> initial_state, std::optional<AnyArray> cu_seqlens, bool is_causal,
         float scale, bool normalize, int threads) {
        TensorView tq = view_of(q, "q"), tk = view_of(k, "k"), tv = view_of(v, "v"),
                   to = view_of(out, "out");
        OptView tf(final_state, "final_state"), tg(g, "g"), ti(initial_state, "initial_state"),
            tc(cu_seqlens, "cu_seqlens");
        auto opts = linear_options(is_causal, scale, normalize, tg.get(), ti.get(), tc.get());
        attnkit::ExecConfig exec{nullptr, threads};
        nb::gil_scoped_release release;
        attnkit::linear_attention(tq, tk, tv, to, tf.get(), opts, exec);
      },
      "q"_a, "k"_a, "v"_a, "out"_a, "final_state"_a.none(), "g"_a.none(),
      "initial_state"_a.none(), "cu_seqlens"_a.none(), "is_causal"_a, "scale"_a, "normalize"_a,
      "threads"_a = 0, "Linear attention forward into preallocated out/final_state.");

  m.def(
      "linear_bwd",
      [](std::optional<AnyArray> dout, const AnyArray& q, const AnyArray& k, const AnyArray& v,
         std::optional<AnyArray> dfinal_state, const AnyArray& dq, const AnyArray& dk,
         const AnyArray& dv, std::optional<AnyArray> dg, std::optional<AnyArray> dinitial_state,
         std::optional<AnyArray> g, std::optional<AnyArray> initial_state,
         std::optional<AnyArray> cu_seqlens, bool is_causal, float scale, bool normalize,
         int threads) {
        TensorView tq = view_of(q, "q"), tk = view_of(k, "k"), tv = view_of(v, "v"),
                   tdq = view_of(dq, "dq"), tdk = view_of(dk, "dk"), tdv = view_of(dv, "dv");
        OptView tdo(dout, "dout"), tdf(dfinal_state, "dfinal_state"), tdg(dg, "dg"),
            tdi(dinitial_state, "dinitial_state"), tg(g, "g"), ti(initial_state, "initial_state"),
            tc(cu_seqlens, "cu_seqlens");
        auto opts = linear_options(is_causal, scale, normalize, tg.get(), ti.get(), tc.get());
        attnkit::ExecConfig exec{nullptr, threads};
        nb::gil_scoped_release release;
        attnkit::linear_attention_backward(tdo.get(), tq, tk, tv, tdf.get(), tdq, tdk, tdv,
                                           tdg.get(), tdi.get(), opts, exec);
      },
      "dout"_a.none(), "q"_a, "k"_a, "v"_a, "dfinal_state"_a.none(), "dq"_a, "dk"_a, "dv"_a,
      "dg"_a.none(), "dinitial_state"_a.none(), "g"_a.none(), "initial_state"_a.none(),
      "cu_seqlens"_a.none(), "is_causal"_a, "scale"_a, "normalize"_a, "threads"_a = 0,
      "Linear attention backward into preallocated dq/dk/dv (and dg, dinitial_state).");
}

}  // namespace attnkit_py
