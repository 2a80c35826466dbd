// attnkit._core: neighborhood attention (GNA).
#include "common.hpp"

namespace attnkit_py {

namespace {

attnkit::NeighborhoodOptions na_options(const std::vector<int64_t>& kernel_size,
                                        const std::vector<int64_t>& stride,
                                        const std::vector<int64_t>& dilation,
                                        const std::vector<int>& is_causal, float scale,
                                        const TensorView* ak, const TensorView* av) {
  attnkit::NeighborhoodOptions o;
  o.kernel_size = kernel_size;
  o.stride = stride;
  o.dilation = dilation;
  o.is_causal.assign(is_causal.begin(), is_causal.end());
  o.scale = scale;
  o.additional_keys = ak;
  o.additional_values = av;
  return o;
}

}  // namespace

void bind_gna(nb::module_& m) {
  m.def(
      "na_fwd",
      [](const AnyArray& q, const AnyArray& k, const AnyArray& v, const AnyArray& out,
         std::optional<AnyArray> lse, const std::vector<int64_t>& kernel_size,
         const std::vector<int64_t>& stride, const std::vector<int64_t>& dilation,
         const std::vector<int>& is_causal, float scale, std::optional<AnyArray> ak,
         std::optional<AnyArray> av, int threads) {
        TensorView tq = view_of(q, "q"), tk = view_of(k, "k"), tv = view_of(v, "v"),
                   to = view_of(out, "out");
        OptView tl(lse, "lse"), tak(ak, "additional_keys"), tav(av, "additional_values");
        auto opts = na_options(kernel_size, stride, dilation, is_causal, scale, tak.get(), tav.get());
        attnkit::ExecConfig exec{nullptr, threads};
        nb::gil_scoped_release release;
        attnkit::neighborhood_attention(tq, tk, tv, to, tl.get(), opts, exec);
      },
      "q"_a, "k"_a, "v"_a, "out"_a, "lse"_a.none(), "kernel_size"_a, "stride"_a, "dilation"_a,
      "is_causal"_a, "scale"_a, "additional_keys"_a.none(), "additional_values"_a.none(),
      "threads"_a = 0, "Neighborhood attention forward into preallocated out/lse.");

  m.def(
      "na_bwd",
      [](const AnyArray& dout, const AnyArray& q, const AnyArray& k, const AnyArray& v,
         const AnyArray& out, const AnyArray& lse, const AnyArray& dq, const AnyArray& dk,
         const AnyArray& dv, const std::vector<int64_t>& kernel_size,
         const std::vector<int64_t>& stride, const std::vector<int64_t>& dilation,
         const std::vector<int>& is_causal, float scale, std::optional<AnyArray> ak,
         std::optional<AnyArray> av, std::optional<AnyArray> dak, std::optional<AnyArray> dav,
         std::optional<AnyArray> dlse, int threads) {
        TensorView tdo = view_of(dout, "dout"), tq = view_of(q, "q"), tk = view_of(k, "k"),
                   tv = view_of(v, "v"), to = view_of(out, "out"), tl = view_of(lse, "lse"),
                   tdq = view_of(dq, "dq"), tdk = view_of(dk, "dk"), tdv = view_of(dv, "dv");
        OptView tak(ak, "additional_keys"), tav(av, "additional_values"),
            tdak(dak, "d_additional_keys"), tdav(dav, "d_additional_values"), tdl(dlse, "dlse");
        auto opts = na_options(kernel_size, stride, dilation, is_causal, scale, tak.get(), tav.get());
        attnkit::ExecConfig exec{nullptr, threads};
        nb::gil_scoped_release release;
        attnkit::neighborhood_attention_backward(tdo, tq, tk, tv, to, tl, tdq, tdk, tdv, opts, exec,
                                                 tdl.get(), tdak.get(), tdav.get());
      },
      "dout"_a, "q"_a, "k"_a, "v"_a, "out"_a, "lse"_a, "dq"_a, "dk"_a, "dv"_a, "kernel_size"_a,
      "stride"_a, "dilation"_a, "is_causal"_a, "scale"_a, "additional_keys"_a.none(),
      "additional_values"_a.none(), "d_additional_keys"_a.none(), "d_additional_values"_a.none(),
      "dlse"_a.none(), "threads"_a = 0,
      "Neighborhood attention backward into preallocated dq/dk/dv (and d_additional_*).");
}

}  // namespace attnkit_py
