// attnkit: block-sparse attention entry points -- validate once, then dispatch.
#include <algorithm>
#include <string>
#include <vector>

#include "attnkit/block_sparse.hpp"
#include "block_sparse_problem.hpp"
#include "cpu/block_sparse.hpp"
#include "validate.hpp"

namespace attnkit {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::string idx_str(std::initializer_list<int64_t> idx) {
  std::string s = "[";
  bool first = true;
  for (int64_t i : idx) {
    s += (first ? "" : ", ") + std::to_string(i);
    first = false;
  }
  return s + "]";
}

// Checks the mask's shapes against the attention problem and its contents
// (every count and counted id), and records it in `bp`.
void resolve_mask(const char* fn, const BlockMaskView& m, BlockSparseProblem& bp) {
  const FmhaProblem& p = bp.attn;
  AK_CHECK(m.q_block >= 1, InvalidArgument, fn, ": block_mask.q_block must be >= 1, got ",
           m.q_block);
  AK_CHECK(m.kv_block >= 1, InvalidArgument, fn, ": block_mask.kv_block must be >= 1, got ",
           m.kv_block);
  const TensorView& cnt = m.kv_num_blocks;
  const TensorView& idx = m.kv_indices;
  AK_CHECK(cnt.dtype == DType::Int32, InvalidType, fn,
           ": block_mask.kv_num_blocks must be int32, got ", dtype_name(cnt.dtype));
  AK_CHECK(idx.dtype == DType::Int32, InvalidType, fn,
           ": block_mask.kv_indices must be int32, got ", dtype_name(idx.dtype));
  check::rank(fn, "block_mask.kv_num_blocks", cnt, 3, "[batch | 1, heads | 1, num_q_blocks]");
  check::rank(fn, "block_mask.kv_indices", idx, 4,
              "[batch | 1, heads | 1, num_q_blocks, max_kv_blocks]");
  AK_CHECK(cnt.device.kind == DeviceKind::CPU && idx.device.kind == DeviceKind::CPU,
           InvalidArgument, fn, ": the block_mask tensors must be in host (CPU) memory");
  for (int d = 0; d < 3; ++d)
    AK_CHECK(idx.shape[d] == cnt.shape[d], InvalidArgument, fn,
             ": block_mask.kv_indices must start with the shape of kv_num_blocks ",
             cnt.shape_str(), ", got ", idx.shape_str());

  const int64_t B = p.batch, Hq = p.heads_q, Hkv = p.heads_kv;
  AK_CHECK(cnt.shape[0] == 1 || cnt.shape[0] == B, InvalidArgument, fn,
           ": block_mask batch size (kv_num_blocks.shape[0]) must be 1 or the batch size ", B,
           ", got ", cnt.shape[0]);
  const int64_t Hm = cnt.shape[1];
  AK_CHECK(Hm == 1 || Hm == Hq || Hm == Hkv, InvalidArgument, fn,
           ": block_mask head count (kv_num_blocks.shape[1]) must be 1, the number of query "
           "heads ", Hq, " or the number of key/value heads ", Hkv, ", got ", Hm);
  const int64_t nQ = ceil_div(p.seqlen_q, m.q_block);
  const int64_t nK = ceil_div(p.seqlen_k, m.kv_block);
  AK_CHECK(cnt.shape[2] == nQ, InvalidArgument, fn, ": block_mask has ", cnt.shape[2],
           " query blocks (kv_num_blocks.shape[2]) but q has ", p.seqlen_q, " queries, i.e. ",
           nQ, " blocks of q_block = ", m.q_block);
  check::has_data(fn, "block_mask.kv_num_blocks", cnt);
  check::has_data(fn, "block_mask.kv_indices", idx);

  bp.q_block = m.q_block;
  bp.kv_block = m.kv_block;
  bp.num_q_blocks = nQ;
  bp.num_kv_blocks = nK;
  bp.mask_batch = cnt.shape[0];
  bp.mask_heads = Hm;
  bp.mask_heads_are_kv = Hm == Hkv && Hm != Hq;
  bp.max_blocks = idx.shape[3];
  bp.kv_num_blocks = static_cast<const int32_t*>(cnt.data);
  bp.kv_indices = static_cast<const int32_t*>(idx.data);
  for (int d = 0; d < 3; ++d) bp.num_stride[d] = cnt.stride[d];
  for (int d = 0; d < 4; ++d) bp.idx_stride[d] = idx.stride[d];

  // Contents: O(listed blocks). `seen[id]` holds the (row, entry) that last listed id.
  std::vector<int64_t> seen_row(static_cast<size_t>(nK), -1);
  std::vector<int64_t> seen_at(static_cast<size_t>(nK), 0);
  int64_t row = 0;
  for (int64_t b = 0; b < bp.mask_batch; ++b)
    for (int64_t h = 0; h < Hm; ++h)
      for (int64_t qb = 0; qb < nQ; ++qb, ++row) {
        const int64_t c = bp.count(b, h, qb);
        AK_CHECK(c >= 0 && c <= bp.max_blocks, InvalidArgument, fn,
                 ": block_mask.kv_num_blocks", idx_str({b, h, qb}), " = ", c,
                 " must be in [0, max_kv_blocks = kv_indices.shape[3] = ", bp.max_blocks, "]");
        for (int64_t n = 0; n < c; ++n) {
          const int64_t id = bp.index(b, h, qb, n);
          AK_CHECK(id >= 0 && id < nK, InvalidArgument, fn, ": block_mask.kv_indices",
                   idx_str({b, h, qb, n}), " = ", id, " is out of range: k has ", p.seqlen_k,
                   " keys, i.e. ", nK, " blocks of kv_block = ", m.kv_block);
          AK_CHECK(seen_row[id] != row, InvalidArgument, fn, ": block_mask.kv_indices",
                   idx_str({b, h, qb}), " lists kv block ", id, " twice (entries ", seen_at[id],
                   " and ", n, ")");
          seen_row[id] = row;
          seen_at[id] = n;
        }
      }
}

[[noreturn]] void no_cuda_kernel(const char* fn) {
  throw Error(ErrorCode::Unsupported,
              std::string(fn) +
                  ": block-sparse attention has CPU kernels only in this version; pass CPU tensors");
}

BlockSparseProblem make_problem(const char* fn, const TensorView& q, const TensorView& k,
                                const TensorView& v, const BlockMaskView& mask,
                                const TensorView& out, const TensorView* lse,
                                const BlockSparseOptions& opts) {
  AttentionOptions ao;
  ao.is_causal = opts.is_causal;
  ao.scale = opts.scale;
  BlockSparseProblem bp;
  bp.attn = make_fmha_problem(fn, q, k, v, out, lse, ao);
  if (bp.attn.device.kind != DeviceKind::CPU) no_cuda_kernel(fn);
  resolve_mask(fn, mask, bp);
  return bp;
}

}  // namespace

void block_sparse_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                            const BlockMaskView& mask, const TensorView& out,
                            const TensorView* lse, const BlockSparseOptions& opts,
                            const ExecConfig& exec) {
  const char* fn = "block_sparse_attention";
  const BlockSparseProblem bp = make_problem(fn, q, k, v, mask, out, lse, opts);
  if (bp.attn.batch == 0 || bp.attn.seqlen_q == 0) return;
  cpu::block_sparse_forward(bp, exec.num_threads);
}

void block_sparse_attention_backward(const TensorView& dout, const TensorView& q,
                                     const TensorView& k, const TensorView& v,
                                     const TensorView& out, const TensorView& lse,
                                     const BlockMaskView& mask, const TensorView& dq,
                                     const TensorView& dk, const TensorView& dv,
                                     const BlockSparseOptions& opts, const ExecConfig& exec,
                                     const TensorView* dlse) {
  const char* fn = "block_sparse_attention_backward";
  BlockSparseBackwardProblem bp;
  bp.fwd = make_problem(fn, q, k, v, mask, out, &lse, opts);
  check::like(fn, "dout", dout, "out", out);
  check::like(fn, "dq", dq, "q", q);
  check::like(fn, "dk", dk, "k", k);
  check::like(fn, "dv", dv, "v", v);
  bp.dout = operand_of(dout, false);
  bp.dq = operand_of(dq, false);
  bp.dk = operand_of(dk, false);
  bp.dv = operand_of(dv, false);
  if (dlse) {
    check::dlse_like(fn, *dlse, lse);
    bp.dlse = static_cast<const float*>(dlse->data);
  }
  if (bp.fwd.attn.batch == 0) return;
  cpu::block_sparse_backward(bp, exec.num_threads);
}

}  // namespace attnkit
