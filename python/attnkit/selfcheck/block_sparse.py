"""Self-checks for block-sparse attention (forward, backward, odd blocks, causal)."""

from __future__ import annotations

import numpy as np

from .. import reference as ref
from . import TOL, rel_err
from .fmha import _inputs


def _case(dtype, B, Sq, Sk, Hq, Hkv, D, Dv, q_block, kv_block, mask_heads, density, causal):
    def fn():
        import attnkit

        rng = np.random.default_rng(4)
        q, k, v = _inputs(rng, (B, Sq, Hq, D), (B, Sk, Hkv, D), Dv, dtype)
        nq, nk = -(-Sq // q_block), -(-Sk // kv_block)
        dense = rng.random((1, mask_heads, nq, nk)) < density
        dense[0, 0, 0] = False  # one q block that sees nothing
        bm = attnkit.BlockMask.from_dense(dense, q_block=q_block, kv_block=kv_block)
        out, lse = attnkit.block_sparse_attention(q, k, v, bm, is_causal=causal, return_lse=True)
        ro, rl = ref.block_sparse_attention(q, k, v, bm, is_causal=causal)
        do = rng.standard_normal(out.shape).astype(out.dtype)
        grads = attnkit.block_sparse_attention_backward(do, q, k, v, out, lse, bm, is_causal=causal)
        want = ref.block_sparse_attention_grad(do, q, k, v, bm, is_causal=causal)
        errs = [rel_err(out, ro), rel_err(lse, rl)] + [rel_err(a, b) for a, b in zip(grads, want)]
        return max(errs), TOL[dtype] * (4 if dtype != "float32" else 1)

    return fn


def _selection():
    import attnkit

    rng = np.random.default_rng(5)
    q = rng.standard_normal((1, 200, 2, 16)).astype(np.float32)
    k = rng.standard_normal((1, 200, 1, 16)).astype(np.float32)
    bm = attnkit.topk_block_mask(q, k, topk=2, q_block=32, is_causal=True)
    # Causal top-k keeps the diagonal block of every q block.
    cnt, idx = bm.kv_num_blocks, bm.kv_indices
    ok = all(i in idx[0, h, i, : cnt[0, h, i]] for h in range(2) for i in range(cnt.shape[2]))
    return (0.0 if ok else 1.0), 0.0


def checks():
    out = []
    for dtype in ("float32", "bfloat16", "float16"):
        out.append((f"block_sparse fwd+bwd {dtype} B2 S77/90 H4/2 blocks 16x32",
                    _case(dtype, 2, 77, 90, 4, 2, 40, 24, 16, 32, 2, 0.5, False)))
    out.append(("block_sparse causal blocks 48x20 float32",
                _case("float32", 1, 150, 130, 2, 1, 32, 32, 48, 20, 1, 0.6, True)))
    out.append(("block_sparse topk_block_mask keeps the diagonal", _selection))
    return out
