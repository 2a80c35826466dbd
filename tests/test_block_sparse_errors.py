"""Bad block masks and bad block-sparse calls get clear errors naming the argument."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import randn

import attnkit


def lists(cnt, idx):
    return np.asarray(cnt, np.int32), np.asarray(idx, np.int32)


@pytest.fixture
def qkv(rng):
    return (randn(rng, (2, 100, 4, 16), "float32"), randn(rng, (2, 70, 2, 16), "float32"),
            randn(rng, (2, 70, 2, 16), "float32"))


def good(nq=4, nk=3, b=1, h=1, qb=32, kvb=32):
    dense = np.zeros((b, h, nq, nk), bool)
    dense[..., 0] = True
    return attnkit.BlockMask.from_dense(dense, q_block=qb, kv_block=kvb)


# ----------------------------------------------------------------------------- construction
def test_counts_out_of_range():
    with pytest.raises(ValueError, match=r"kv_num_blocks\[0, 0, 1\] = 3 must be in \[0, max_kv_blocks = kv_indices.shape\[3\] = 2\]"):
        attnkit.BlockMask.from_kv_blocks(*lists([[[1, 3]]], [[[[0, 1], [0, 1]]]]), q_block=16)
    with pytest.raises(ValueError, match=r"kv_num_blocks\[0, 0, 0\] = -1"):
        attnkit.BlockMask.from_kv_blocks(*lists([[[-1]]], [[[[0]]]]), q_block=16)


def test_indices_out_of_range():
    with pytest.raises(ValueError, match=r"kv_indices\[0, 0, 0, 1\] = 5 is out of range: kv block ids must be \[0, 4\)"):
        attnkit.BlockMask.from_kv_blocks(*lists([[[2]]], [[[[0, 5]]]]), q_block=16, num_kv_blocks=4)
    with pytest.raises(ValueError, match=r"kv_indices\[0, 0, 0, 0\] = -2 is out of range"):
        attnkit.BlockMask.from_kv_blocks(*lists([[[1]]], [[[[-2]]]]), q_block=16)
    # Entries past the count are not looked at.
    attnkit.BlockMask.from_kv_blocks(*lists([[[1]]], [[[[0, -7]]]]), q_block=16, num_kv_blocks=1)


def test_duplicate_indices():
    with pytest.raises(ValueError, match=r"kv_indices\[0, 0, 1\] lists kv block 2 more than once"):
        attnkit.BlockMask.from_kv_blocks(*lists([[[2, 3]]], [[[[0, 1, 9], [2, 0, 2]]]]), q_block=16)


def test_bad_shapes_and_types():
    with pytest.raises(ValueError, match=r"kv_num_blocks must be \[batch \| 1, heads \| 1, num_q_blocks\]"):
        attnkit.BlockMask.from_kv_blocks(*lists([1], [[[[0]]]]), q_block=16)
    with pytest.raises(ValueError, match=r"kv_indices must be \[\*kv_num_blocks.shape, max_kv_blocks\]"):
        attnkit.BlockMask.from_kv_blocks(*lists([[[1, 1]]], [[[[0]]]]), q_block=16)
    with pytest.raises(TypeError, match="kv_indices must be an integer array, got float32"):
        attnkit.BlockMask.from_kv_blocks(np.ones((1, 1, 1), np.int32), np.zeros((1, 1, 1, 1), np.float32), q_block=16)
    with pytest.raises(ValueError, match="q_block must be an integer >= 1, got 0"):
        attnkit.BlockMask.from_kv_blocks(*lists([[[0]]], [[[[0]]]]), q_block=0)
    with pytest.raises(TypeError, match="kv_block must be an int"):
        attnkit.BlockMask.from_kv_blocks(*lists([[[0]]], [[[[0]]]]), q_block=16, kv_block="big")
    with pytest.raises(TypeError, match="mask must be boolean, got int64"):
        attnkit.BlockMask.from_dense(np.ones((2, 2), np.int64), q_block=16)
    with pytest.raises(ValueError, match=r"mask must be \[batch \| 1, heads \| 1, num_q_blocks, num_kv_blocks\]"):
        attnkit.BlockMask.from_dense(np.ones((2, 2, 2), bool), q_block=16)
    with pytest.raises(ValueError, match=r"seq_lengths \(100, 64\) needs ceil\(100 / q_block 32\) = 4"):
        attnkit.BlockMask.from_dense(np.ones((3, 2), bool), q_block=32, seq_lengths=(100, 64))
    with pytest.raises(ValueError, match="num_kv_blocks = 5 does not match seq_lengths"):
        attnkit.BlockMask.from_kv_blocks(*lists([[[0]]], [[[[0]]]]), q_block=32, num_kv_blocks=5,
                                         seq_lengths=(20, 64))


# ----------------------------------------------------------------------------- calls
def test_mask_shape_must_match_q_and_k(qkv):
    q, k, v = qkv  # Sq = 100 -> 4 blocks of 32; Sk = 70 -> 3 blocks
    with pytest.raises(ValueError, match=r"block_mask has 3 query blocks \(kv_num_blocks.shape\[2\]\) but q has 100 queries, i.e. 4 blocks of q_block = 32"):
        attnkit.block_sparse_attention(q, k, v, good(nq=3))
    with pytest.raises(ValueError, match=r"block_mask has 4 kv blocks but k has 70 keys, i.e. 3 blocks of kv_block = 32"):
        attnkit.block_sparse_attention(q, k, v, good(nk=4))
    with pytest.raises(ValueError, match=r"block_mask was built for seq_lengths \(128, 70\) but q and k have 100 and 70 tokens"):
        attnkit.block_sparse_attention(q, k, v, attnkit.BlockMask.from_dense(
            np.ones((4, 3), bool), q_block=32, seq_lengths=(128, 70)))
    with pytest.raises(ValueError, match=r"block_mask head count \(kv_num_blocks.shape\[1\]\) must be 1, the number of query heads 4 or the number of key/value heads 2, got 3"):
        attnkit.block_sparse_attention(q, k, v, good(h=3))
    with pytest.raises(ValueError, match=r"block_mask batch size \(kv_num_blocks.shape\[0\]\) must be 1 or the batch size 2, got 3"):
        attnkit.block_sparse_attention(q, k, v, good(b=3))
    # Lists without a pinned kv block count: the C++ layer checks every id against k.
    loose = attnkit.BlockMask.from_kv_blocks(*lists([[[1, 1, 1, 1]]], [[[[3], [0], [0], [0]]]]), q_block=32)
    with pytest.raises(ValueError, match=r"block_mask.kv_indices\[0, 0, 0, 0\] = 3 is out of range: k has 70 keys, i.e. 3 blocks of kv_block = 32"):
        attnkit.block_sparse_attention(q, k, v, loose)


def test_core_rechecks_lists_changed_after_construction(qkv):
    # The C++ layer validates on every call: editing the arrays in place cannot crash it.
    q, k, v = qkv
    bm = good()
    bm.kv_indices[0, 0, 2, 0] = 7
    with pytest.raises(ValueError, match=r"kv_indices\[0, 0, 2, 0\] = 7 is out of range"):
        attnkit.block_sparse_attention(q, k, v, bm)
    bm = attnkit.BlockMask.from_dense(np.ones((4, 3), bool), q_block=32)
    bm.kv_indices[0, 0, 1, 2] = 0
    with pytest.raises(ValueError, match=r"kv_indices\[0, 0, 1\] lists kv block 0 twice \(entries 0 and 2\)"):
        attnkit.block_sparse_attention(q, k, v, bm)
    bm = good()
    bm.kv_num_blocks[0, 0, 3] = 9
    with pytest.raises(ValueError, match=r"kv_num_blocks\[0, 0, 3\] = 9 must be in \[0, max_kv_blocks"):
        attnkit.block_sparse_attention(q, k, v, bm)


def test_core_rejects_wrong_mask_dtypes(qkv):
    from attnkit import _core

    q, k, v = qkv
    bm = good()
    out = np.empty_like(q)
    with pytest.raises(TypeError, match="block_mask.kv_num_blocks must be int32, got int64"):
        _core.block_sparse_fwd(q, k, v, bm.kv_num_blocks.astype(np.int64), bm.kv_indices, 32, 32,
                               out, None, False, float("nan"))
    with pytest.raises(ValueError, match="block_mask.q_block must be >= 1, got 0"):
        _core.block_sparse_fwd(q, k, v, bm.kv_num_blocks, bm.kv_indices, 0, 32, out, None, False,
                               float("nan"))
    with pytest.raises(ValueError, match=r"block_mask.kv_indices must start with the shape of kv_num_blocks"):
        _core.block_sparse_fwd(q, k, v, bm.kv_num_blocks, bm.kv_indices[:, :, :2], 32, 32, out,
                               None, False, float("nan"))


def test_qkv_errors_name_the_function(qkv):
    q, k, v = qkv
    bm = good()
    with pytest.raises(ValueError, match=r"block_sparse_attention: k.shape\[0\] \(batch, must match q\)"):
        attnkit.block_sparse_attention(q, k[:1], v[:1], bm)
    with pytest.raises(TypeError, match="block_sparse_attention: k has dtype float16 but q has float32"):
        attnkit.block_sparse_attention(q, k.astype(np.float16), v, bm)
    with pytest.raises(ValueError, match="must be a multiple of the number of key/value heads"):
        attnkit.block_sparse_attention(q[:, :, :3], k, v, bm)
    with pytest.raises(ValueError, match=r"q, k and v must be \[batch, seqlen, heads, head_dim\]"):
        attnkit.block_sparse_attention(q[0], k, v, bm)
    with pytest.raises(TypeError, match="block_mask must be an attnkit.BlockMask"):
        attnkit.block_sparse_attention(q, k, v, np.ones((4, 3), bool))
    with pytest.raises(TypeError, match="q must be float32, float16 or bfloat16, got int32"):
        attnkit.block_sparse_attention(q.astype(np.int32), k, v, bm)


def test_backward_errors(qkv, rng):
    q, k, v = qkv
    bm = good()
    out, lse = attnkit.block_sparse_attention(q, k, v, bm, return_lse=True)
    with pytest.raises(ValueError, match="block_sparse_attention_backward: dout must have the shape of out"):
        attnkit.block_sparse_attention_backward(out[:, :5], q, k, v, out, lse, bm)
    with pytest.raises(ValueError, match="block_sparse_attention_backward: block_mask has 3 query blocks"):
        attnkit.block_sparse_attention_backward(out, q, k, v, out, lse, good(nq=3))
    with pytest.raises(ValueError, match="lse must have shape"):
        attnkit.block_sparse_attention_backward(out, q, k, v, out, lse[:, :4], bm)
