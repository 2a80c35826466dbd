// attnkit._core: block-sparse attention.
#include "common.hpp"

namespace attnkit_py {

namespace {

attnkit::BlockMaskView mask_view(const AnyArray& kv_num_blocks, const AnyArray& kv_indices,
                                 int64_t q_block, int64_t kv_block) {
  attnkit::BlockMaskView m;
  m.q_block = q_block;
  m.kv_block = kv_block;
  m.kv_num_blocks = view_of(kv_num_blocks, "block_mask.kv_num_blocks");
  m.kv_indices = view_of(kv_indices, "block_mask.kv_indices");
  return m;
}

attnkit::BlockSparseOptions bs_options(bool is_causal, float scale) {
  attnkit::BlockSparseOptions o;
  o.is_causal = is_causal;
  o.scale = scale;
  return o;
}

}  // namespace

void bind_block_sparse(nb::module_& m) {
  m.def(
      "block_sparse_fwd",
      [](const AnyArray& q, const AnyArray& k, const AnyArray& v, const AnyArray& kv_num_blocks,
         const AnyArray& kv_indices, int64_t q_block, int64_t kv_block, const AnyArray& out,
         std::optional<AnyArray> lse, bool is_causal, float scale, int threads) {
        TensorView tq = view_of(q, "q"), tk = view_of(k, "k"), tv = view_of(v, "v"),
                   to = view_of(out, "out");
        OptView tl(lse, "lse");
        const attnkit::BlockMaskView mv = mask_view(kv_num_blocks, kv_indices, q_block, kv_block);
        attnkit::ExecConfig exec{nullptr, threads};
        nb::gil_scoped_release release;
        attnkit::block_sparse_attention(tq, tk, tv, mv, to, tl.get(), bs_options(is_causal, scale),
                                        exec);
      },
      "q"_a, "k"_a, "v"_a, "kv_num_blocks"_a, "kv_indices"_a, "q_block"_a, "kv_block"_a, "out"_a,
      "lse"_a.none(), "is_causal"_a, "scale"_a, "threads"_a = 0,
      "Block-sparse attention forward into preallocated out/lse.");

  m.def(
      "block_sparse_bwd",
      [](const AnyArray& dout, const AnyArray& q, const AnyArray& k, const AnyArray& v,
         const AnyArray& out, const AnyArray& lse, const AnyArray& kv_num_blocks,
         const AnyArray& kv_indices, int64_t q_block, int64_t kv_block, const AnyArray& dq,
         const AnyArray& dk, const AnyArray& dv, bool is_causal, float scale,
         std::optional<AnyArray> dlse, int threads) {
        TensorView tdo = view_of(dout, "dout"), tq = view_of(q, "q"), tk = view_of(k, "k"),
                   tv = view_of(v, "v"), to = view_of(out, "out"), tl = view_of(lse, "lse"),
                   tdq = view_of(dq, "dq"), tdk = view_of(dk, "dk"), tdv = view_of(dv, "dv");
        OptView tdl(dlse, "dlse");
        const attnkit::BlockMaskView mv = mask_view(kv_num_blocks, kv_indices, q_block, kv_block);
        attnkit::ExecConfig exec{nullptr, threads};
        nb::gil_scoped_release release;
        attnkit::block_sparse_attention_backward(tdo, tq, tk, tv, to, tl, mv, tdq, tdk, tdv,
                                                 bs_options(is_causal, scale), exec, tdl.get());
      },
      "dout"_a, "q"_a, "k"_a, "v"_a, "out"_a, "lse"_a, "kv_num_blocks"_a, "kv_indices"_a,
      "q_block"_a, "kv_block"_a, "dq"_a, "dk"_a, "dv"_a, "is_causal"_a, "scale"_a,
      "dlse"_a.none(), "threads"_a = 0, "Block-sparse attention backward into preallocated dq/dk/dv.");
}

}  // namespace attnkit_py
