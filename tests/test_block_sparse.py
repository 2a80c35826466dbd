"""Block-sparse attention against the float64 reference (dense attention under
the expanded element mask), and the BlockMask type."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DTYPES, GRAD_TOL, TOL, randn, rel_err

import attnkit
from attnkit import reference as ref


def cdiv(a, b):
    return -(-a // b)


def random_lists(rng, shape, density, shuffle=True, pad=0):
    """(kv_num_blocks, kv_indices, dense) for Bernoulli(density) blocks, lists in
    random order with garbage past the counts (neither may matter)."""
    dense = rng.random(shape) < density
    cnt = dense.sum(-1).astype(np.int32)
    width = shape[-1] + pad
    idx = rng.integers(-5, 10 * shape[-1] + 5, size=(*shape[:-1], width)).astype(np.int32)
    for pos in np.ndindex(*shape[:-1]):
        ids = np.flatnonzero(dense[pos])
        if shuffle:
            ids = rng.permutation(ids)
        idx[pos][: len(ids)] = ids
    return cnt, idx, dense


def make_mask(rng, B, Hm, Sq, Sk, qb, kvb, density):
    shape = (B, Hm, cdiv(Sq, qb), cdiv(Sk, kvb))
    cnt, idx, dense = random_lists(rng, shape, density)
    return attnkit.BlockMask.from_kv_blocks(cnt, idx, q_block=qb, kv_block=kvb,
                                            seq_lengths=(Sq, Sk)), dense


def qkv(rng, B, Sq, Sk, Hq, Hkv, D, Dv, dtype="float32"):
    return (randn(rng, (B, Sq, Hq, D), dtype), randn(rng, (B, Sk, Hkv, D), dtype),
            randn(rng, (B, Sk, Hkv, Dv), dtype))


# (B, Sq, Sk, Hq, Hkv, D, Dv, q_block, kv_block, mask_batch, mask_heads):
# block sizes 16..128 and odd ones, q_block != kv_block, lengths that are not
# multiples of the blocks, Sq != Sk both ways, mask head axis Hq / Hkv / 1,
# mask batch B / 1, GQA, Dv != D, head dims that are not powers of two.
CASES = [
    (1, 1, 1, 1, 1, 8, 8, 16, 16, 1, 1),
    (2, 77, 77, 4, 2, 40, 24, 16, 16, 2, 4),
    (1, 129, 129, 3, 1, 72, 72, 64, 64, 1, 3),
    (2, 200, 135, 4, 4, 32, 48, 32, 128, 1, 1),
    (1, 135, 300, 6, 3, 24, 40, 128, 32, 1, 3),
    (1, 257, 257, 2, 1, 64, 64, 48, 20, 1, 1),
    (2, 100, 90, 4, 2, 16, 16, 100, 7, 2, 2),
    (1, 190, 190, 2, 2, 96, 96, 128, 128, 1, 2),
    (1, 70, 260, 8, 2, 24, 24, 7, 64, 1, 2),
]


def _ids(c):
    return "B{}_Sq{}_Sk{}_H{}-{}_D{}_Dv{}_qb{}_kvb{}_m{}x{}".format(*c)


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("causal", [False, True], ids=["full-blocks", "causal"])
def test_forward_float32(rng, case, density, causal):
    B, Sq, Sk, Hq, Hkv, D, Dv, qb, kvb, mb, mh = case
    bm, _ = make_mask(rng, mb, mh, Sq, Sk, qb, kvb, density)
    q, k, v = qkv(rng, B, Sq, Sk, Hq, Hkv, D, Dv)
    out, lse = attnkit.block_sparse_attention(q, k, v, bm, is_causal=causal, return_lse=True)
    assert out.shape == (B, Sq, Hq, Dv) and out.dtype == np.float32
    assert lse.shape == (B, Sq, Hq) and lse.dtype == np.float32
    ro, rl = ref.block_sparse_attention(q, k, v, bm, is_causal=causal)
    assert rel_err(out, ro) < TOL["float32"]
    assert rel_err(lse, rl) < TOL["float32"]


@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[4], CASES[5], CASES[6], CASES[8]],
                         ids=_ids)
@pytest.mark.parametrize("causal", [False, True], ids=["full-blocks", "causal"])
def test_backward_float32(rng, case, causal):
    B, Sq, Sk, Hq, Hkv, D, Dv, qb, kvb, mb, mh = case
    bm, _ = make_mask(rng, mb, mh, Sq, Sk, qb, kvb, 0.4)
    q, k, v = qkv(rng, B, Sq, Sk, Hq, Hkv, D, Dv)
    out, lse = attnkit.block_sparse_attention(q, k, v, bm, is_causal=causal, return_lse=True)
    do = randn(rng, out.shape, "float32")
    grads = attnkit.block_sparse_attention_backward(do, q, k, v, out, lse, bm, is_causal=causal)
    want = ref.block_sparse_attention_grad(do, q, k, v, bm, is_causal=causal)
    for got, exp, x in zip(grads, want, (q, k, v)):
        assert got.shape == x.shape and got.dtype == x.dtype
        assert rel_err(got, exp) < GRAD_TOL["float32"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[5]], ids=_ids)
@pytest.mark.parametrize("causal", [False, True], ids=["full-blocks", "causal"])
def test_forward_backward_dtypes(rng, dtype, case, causal):
    B, Sq, Sk, Hq, Hkv, D, Dv, qb, kvb, mb, mh = case
    bm, _ = make_mask(rng, mb, mh, Sq, Sk, qb, kvb, 0.5)
    q, k, v = qkv(rng, B, Sq, Sk, Hq, Hkv, D, Dv, dtype)
    out, lse = attnkit.block_sparse_attention(q, k, v, bm, is_causal=causal, return_lse=True)
    assert out.dtype == q.dtype and lse.dtype == np.float32
    ro, rl = ref.block_sparse_attention(q, k, v, bm, is_causal=causal)
    assert rel_err(out, ro) < TOL[dtype]
    assert rel_err(lse, rl) < TOL["float32"] * (1 if dtype == "float32" else 20)
    do = randn(rng, out.shape, dtype)
    grads = attnkit.block_sparse_attention_backward(do, q, k, v, out, lse, bm, is_causal=causal)
    for got, exp in zip(grads, ref.block_sparse_attention_grad(do, q, k, v, bm, is_causal=causal)):
        assert got.dtype == q.dtype
        assert rel_err(got, exp) < GRAD_TOL[dtype]


@pytest.mark.parametrize("qb,kvb", [(64, 64), (128, 128), (16, 32), (48, 20), (100, 64)])
@pytest.mark.parametrize("causal", [False, True], ids=["full-blocks", "causal"])
def test_full_mask_equals_dense(rng, qb, kvb, causal):
    B, Sq, Sk, Hq, Hkv, D = 2, 203, 181, 4, 2, 40
    q, k, v = qkv(rng, B, Sq, Sk, Hq, Hkv, D, D)
    full = np.ones((1, 1, cdiv(Sq, qb), cdiv(Sk, kvb)), dtype=bool)
    bm = attnkit.BlockMask.from_dense(full, q_block=qb, kv_block=kvb)
    out, lse = attnkit.block_sparse_attention(q, k, v, bm, is_causal=causal, return_lse=True)
    do_, dl = attnkit.attention(q, k, v, is_causal=causal, return_lse=True)
    do = randn(rng, out.shape, "float32")
    g = attnkit.block_sparse_attention_backward(do, q, k, v, out, lse, bm, is_causal=causal)
    gd = attnkit.attention_backward(do, q, k, v, do_, dl, is_causal=causal)
    # Same engine, same math: equal up to the summation order of the score tiles.
    assert rel_err(out, do_) < 1e-6 and rel_err(lse, dl) < 1e-6
    for a, b in zip(g, gd):
        assert rel_err(a, b) < 1e-5


def test_empty_rows_and_empty_mask(rng):
    B, S, H, D, qb = 1, 150, 2, 32, 32
    q, k, v = qkv(rng, B, S, S, H, H, D, D)
    dense = rng.random((1, H, cdiv(S, qb), cdiv(S, qb))) < 0.5
    dense[0, 0, 1] = False  # q block 1 of head 0 lists nothing
    dense[0, 1, -1] = False  # the partial last q block of head 1 too
    bm = attnkit.BlockMask.from_dense(dense, q_block=qb)
    out, lse = attnkit.block_sparse_attention(q, k, v, bm, return_lse=True)
    assert np.all(out[0, qb:2 * qb, 0] == 0) and np.all(np.isneginf(lse[0, qb:2 * qb, 0]))
    assert np.all(out[0, 4 * qb:, 1] == 0) and np.all(np.isneginf(lse[0, 4 * qb:, 1]))
    ro, rl = ref.block_sparse_attention(q, k, v, bm)
    assert rel_err(out, ro) < TOL["float32"] and rel_err(lse, rl) < TOL["float32"]
    do = randn(rng, out.shape, "float32")
    dq, dk, dv = attnkit.block_sparse_attention_backward(do, q, k, v, out, lse, bm)
    assert np.all(dq[0, qb:2 * qb, 0] == 0)
    for got, exp in zip((dq, dk, dv), ref.block_sparse_attention_grad(do, q, k, v, bm)):
        assert np.isfinite(got).all() and rel_err(got, exp) < GRAD_TOL["float32"]

    # Nothing listed at all, and a mask with zero-width lists.
    for none in (attnkit.BlockMask.from_dense(np.zeros((1, 1, 5, 5), bool), q_block=qb),
                 attnkit.BlockMask.from_kv_blocks(np.zeros((1, 1, 5), np.int32),
                                                  np.zeros((1, 1, 5, 0), np.int32), q_block=qb)):
        out, lse = attnkit.block_sparse_attention(q, k, v, none, return_lse=True)
        assert np.all(out == 0) and np.all(np.isneginf(lse))
        dq, dk, dv = attnkit.block_sparse_attention_backward(do, q, k, v, out, lse, none)
        assert np.all(dq == 0) and np.all(dk == 0) and np.all(dv == 0)


def test_causal_rows_that_see_nothing(rng):
    # Sq > Sk, bottom-right causal: the first Sq - Sk rows see no key even where listed.
    q, k, v = qkv(rng, 1, 100, 40, 2, 1, 16, 16)
    bm = attnkit.BlockMask.from_dense(np.ones((1, 1, 4, 2), bool), q_block=32, kv_block=32)
    out, lse = attnkit.block_sparse_attention(q, k, v, bm, is_causal=True, return_lse=True)
    assert np.all(out[:, :60] == 0) and np.all(np.isneginf(lse[:, :60]))
    ro, rl = ref.block_sparse_attention(q, k, v, bm, is_causal=True)
    assert rel_err(out, ro) < TOL["float32"] and rel_err(lse, rl) < TOL["float32"]
    do = randn(rng, out.shape, "float32")
    grads = attnkit.block_sparse_attention_backward(do, q, k, v, out, lse, bm, is_causal=True)
    for got, exp in zip(grads, ref.block_sparse_attention_grad(do, q, k, v, bm, is_causal=True)):
        assert np.isfinite(got).all() and rel_err(got, exp) < GRAD_TOL["float32"]


def test_zero_length_inputs(rng):
    q, k, v = qkv(rng, 1, 10, 0, 2, 2, 8, 8)
    bm = attnkit.BlockMask.from_kv_blocks(np.zeros((1, 1, 1), np.int32),
                                          np.zeros((1, 1, 1, 0), np.int32), q_block=16)
    out, lse = attnkit.block_sparse_attention(q, k, v, bm, return_lse=True)
    assert np.all(out == 0) and np.all(np.isneginf(lse))
    q0 = randn(rng, (1, 0, 2, 8), "float32")
    k0 = randn(rng, (1, 5, 2, 8), "float32")
    bm0 = attnkit.BlockMask.from_kv_blocks(np.zeros((1, 1, 0), np.int32),
                                           np.zeros((1, 1, 0, 1), np.int32), q_block=16)
    o, l = attnkit.block_sparse_attention(q0, k0, k0, bm0, return_lse=True)
    assert o.shape == (1, 0, 2, 8)
    dq, dk, dv = attnkit.block_sparse_attention_backward(o, q0, k0, k0, o, l, bm0)
    assert dq.shape == q0.shape and np.all(dk == 0) and np.all(dv == 0)


def test_order_and_padding_of_lists_do_not_matter(rng):
    B, S, H, D, qb = 1, 160, 2, 24, 32
    q, k, v = qkv(rng, B, S, S, H, H, D, D)
    shape = (1, H, cdiv(S, qb), cdiv(S, qb))
    cnt, idx, dense = random_lists(rng, shape, 0.5, shuffle=True, pad=3)
    shuffled = attnkit.BlockMask.from_kv_blocks(cnt, idx, q_block=qb)
    tidy = attnkit.BlockMask.from_dense(dense, q_block=qb)
    np.testing.assert_array_equal(shuffled.to_dense(), dense)
    a = attnkit.block_sparse_attention(q, k, v, shuffled)
    b = attnkit.block_sparse_attention(q, k, v, tidy)
    np.testing.assert_array_equal(a, b)  # kv blocks are visited in ascending order either way


def test_backward_is_deterministic(rng):
    q, k, v = qkv(rng, 1, 300, 300, 4, 2, 40, 40)
    bm, _ = make_mask(rng, 1, 4, 300, 300, 16, 32, 0.4)
    out, lse = attnkit.block_sparse_attention(q, k, v, bm, is_causal=True, return_lse=True)
    do = randn(rng, out.shape, "float32")
    a = attnkit.block_sparse_attention_backward(do, q, k, v, out, lse, bm, is_causal=True)
    try:
        for threads in (1, 2, 3):
            attnkit.set_num_threads(threads)
            b = attnkit.block_sparse_attention_backward(do, q, k, v, out, lse, bm, is_causal=True)
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
            np.testing.assert_array_equal(attnkit.block_sparse_attention(q, k, v, bm, is_causal=True), out)
    finally:
        attnkit.set_num_threads(0)


def test_strided_inputs_and_masks(rng):
    q = randn(rng, (2, 90, 6, 32), "float32")[:, :, ::2]
    k = randn(rng, (90, 2, 3, 32), "float32").transpose(1, 0, 2, 3)
    v = randn(rng, (2, 90, 3, 48), "float32")[..., :32]
    dense = rng.random((2, 3, 3, 3)) < 0.6
    base = attnkit.BlockMask.from_dense(dense, q_block=32)
    # Non-contiguous int32 views of the same lists.
    cnt = np.zeros((2, 3, 3, 2), np.int32)
    cnt[..., 0] = base.kv_num_blocks
    idx = np.zeros((2, 3, 3, base.kv_indices.shape[3] * 2), np.int32)
    idx[..., ::2] = base.kv_indices
    bm = attnkit.BlockMask.from_kv_blocks(cnt[..., 0], idx[..., ::2], q_block=32)
    assert not bm.kv_num_blocks.flags.c_contiguous
    out, lse = attnkit.block_sparse_attention(q, k, v, bm, return_lse=True)
    ro, rl = ref.block_sparse_attention(q, k, v, base)
    assert rel_err(out, ro) < TOL["float32"]
    do = randn(rng, (2, 90, 3, 64), "float32")[..., 16:48]
    grads = attnkit.block_sparse_attention_backward(do, q, k, v, out, lse, bm)
    for got, exp in zip(grads, ref.block_sparse_attention_grad(do, q, k, v, base)):
        assert rel_err(got, exp) < GRAD_TOL["float32"]


def test_head_axis_kv_equals_expanded_q_axis(rng):
    q, k, v = qkv(rng, 1, 130, 130, 6, 2, 32, 32)
    dense_kv = rng.random((1, 2, 5, 5)) < 0.5
    by_kv = attnkit.BlockMask.from_dense(dense_kv, q_block=32)
    by_q = attnkit.BlockMask.from_dense(np.repeat(dense_kv, 3, axis=1), q_block=32)
    np.testing.assert_array_equal(attnkit.block_sparse_attention(q, k, v, by_kv),
                                  attnkit.block_sparse_attention(q, k, v, by_q))


def test_merge_of_disjoint_masks_is_exact(rng):
    # The LSE makes partial results over complementary masks combine exactly.
    q, k, v = qkv(rng, 1, 128, 128, 2, 2, 32, 32)
    dense = rng.random((1, 2, 4, 4)) < 0.5
    a = attnkit.BlockMask.from_dense(dense, q_block=32)
    b = attnkit.BlockMask.from_dense(~dense, q_block=32)
    oa, la = attnkit.block_sparse_attention(q, k, v, a, return_lse=True)
    ob, lb = attnkit.block_sparse_attention(q, k, v, b, return_lse=True)
    o, l = attnkit.merge_attentions([oa, ob], [la, lb])
    ro, rl = ref.attention(q, k, v)
    assert rel_err(o, ro) < TOL["float32"] and rel_err(l, rl) < TOL["float32"]


# ----------------------------------------------------------------------------- BlockMask
def test_block_mask_dense_round_trip_and_views(rng):
    dense = rng.random((2, 3, 5, 7)) < 0.4
    bm = attnkit.BlockMask.from_dense(dense, q_block=16, kv_block=8)
    assert bm.shape == (2, 3, 5, 7) and bm.q_block == 16 and bm.kv_block == 8
    assert bm.kv_num_blocks.dtype == np.int32 and bm.kv_indices.dtype == np.int32
    assert bm.kv_indices.shape[3] == dense.sum(-1).max()
    np.testing.assert_array_equal(bm.to_dense(), dense)
    assert bm.density == pytest.approx(dense.mean())
    # Lists are sorted.
    for pos in np.ndindex(2, 3, 5):
        ids = bm.kv_indices[pos][: bm.kv_num_blocks[pos]]
        np.testing.assert_array_equal(ids, np.flatnonzero(dense[pos]))
    # 2-D masks broadcast over batch and heads.
    two = attnkit.BlockMask.from_dense(dense[0, 0], q_block=16, kv_block=8)
    assert two.shape == (1, 1, 5, 7)
    assert "BlockMask(shape=(2, 3, 5, 7)" in repr(bm)


def test_q_major_lists_are_the_transpose(rng):
    dense = rng.random((1, 2, 6, 4)) < 0.5
    bm = attnkit.BlockMask.from_dense(dense, q_block=16, kv_block=32)
    qn, qi = bm.q_major()
    assert qn.shape == (1, 2, 4) and qi.shape[:3] == (1, 2, 4)
    for b, h, j in np.ndindex(1, 2, 4):
        np.testing.assert_array_equal(qi[b, h, j, : qn[b, h, j]], np.flatnonzero(dense[b, h, :, j]))


def test_block_mask_numpy_torch_conversions(rng):
    torch = pytest.importorskip("torch")
    dense = rng.random((1, 2, 3, 3)) < 0.5
    bm = attnkit.BlockMask.from_dense(torch.from_numpy(dense), q_block=32)
    assert isinstance(bm.kv_num_blocks, torch.Tensor) and bm.kv_num_blocks.dtype == torch.int32
    assert isinstance(bm.to_dense(), torch.Tensor)
    np.testing.assert_array_equal(bm.numpy().to_dense(), dense)
    np.testing.assert_array_equal(bm.numpy().torch().to_dense().numpy(), dense)
    # int64 lists are accepted and stored as int32.
    bm64 = attnkit.BlockMask.from_kv_blocks(bm.kv_num_blocks.long(), bm.kv_indices.long(), q_block=32)
    assert bm64.kv_indices.dtype == torch.int32
    # A torch mask works with NumPy inputs and vice versa.
    q = randn(rng, (1, 96, 2, 16), "float32")
    a = attnkit.block_sparse_attention(q, q, q, bm)
    b = attnkit.block_sparse_attention(q, q, q, bm.numpy())
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("isa", ["amx", "avx512", "avx2", "generic"])
@pytest.mark.parametrize("qb,kvb", [(64, 64), (16, 20), (48, 100)])
def test_every_isa(rng, isa, qb, kvb):
    # The AMX path widens key ranges to 32-key multiples and masks the extra keys
    # itself; odd block sizes exercise that against the schedule's own masks.
    if isa not in attnkit.build_info()["cpu_isas"]:
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    dtype = "bfloat16"  # the AMX path takes bf16 inputs; the others widen to fp32
    B, Sq, Sk, Hq, Hkv, D = 1, 150, 170, 4, 2, 40
    bm, _ = make_mask(rng, 1, Hkv, Sq, Sk, qb, kvb, 0.5)
    q, k, v = qkv(rng, B, Sq, Sk, Hq, Hkv, D, D, dtype)
    do = randn(rng, (B, Sq, Hq, D), dtype)
    try:
        attnkit.set_cpu_isa(isa)
        for causal in (False, True):
            out, lse = attnkit.block_sparse_attention(q, k, v, bm, is_causal=causal, return_lse=True)
            grads = attnkit.block_sparse_attention_backward(do, q, k, v, out, lse, bm, is_causal=causal)
            ro, rl = ref.block_sparse_attention(q, k, v, bm, is_causal=causal)
            assert rel_err(out, ro) < TOL[dtype] and rel_err(lse, rl) < 20 * TOL["float32"]
            want = ref.block_sparse_attention_grad(do, q, k, v, bm, is_causal=causal)
            for got, exp in zip(grads, want):
                assert rel_err(got, exp) < GRAD_TOL[dtype]
    finally:
        attnkit.set_cpu_isa("")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("causal", [False, True])
def test_every_mask_of_a_small_grid(rng, dtype, causal):
    # All 2^8 masks of 4 q blocks (16 rows: one query vector each of a 64-row
    # tile) x 2 kv blocks of 20 keys. A vector that sees both blocks while the
    # others see one walks the two ranges as one merged segment, whose mask
    # crosses a full and a non-full range (a regression: it once read past the
    # row masks).
    q, k, v = qkv(rng, 1, 64, 40, 1, 1, 64, 64, dtype)
    do = randn(rng, (1, 64, 1, 64), dtype)
    for bits in range(256):
        dense = np.array([(bits >> i) & 1 for i in range(8)], bool).reshape(1, 1, 4, 2)
        bm = attnkit.BlockMask.from_dense(dense, q_block=16, kv_block=20)
        out, lse = attnkit.block_sparse_attention(q, k, v, bm, is_causal=causal, return_lse=True)
        ro, rl = ref.block_sparse_attention(q, k, v, bm, is_causal=causal)
        assert rel_err(out, ro) < TOL[dtype], bits
        if bits % 17 == 0:  # the backward on a sample of the masks
            grads = attnkit.block_sparse_attention_backward(do, q, k, v, out, lse, bm, is_causal=causal)
            for got, exp in zip(grads, ref.block_sparse_attention_grad(do, q, k, v, bm, is_causal=causal)):
                assert rel_err(got, exp) < GRAD_TOL[dtype], bits
