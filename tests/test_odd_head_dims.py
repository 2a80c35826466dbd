"""Odd head dims (33, 65) in half precision, every family, forward and backward.

A bf16/fp16 row of an odd head dim is only 2-byte aligned, and rows of 64 bytes
or more take the vector copy paths of packing and gathering: those must not
assume float alignment (scripts/sanitize.sh runs this file under UBSan, which
caught such a copy). The results are checked against the float64 references.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GRAD_TOL, TOL, randn, rel_err

import attnkit
from attnkit import reference as ref

HALF = ["float16", "bfloat16"]
DIMS = [(33, 33), (65, 33), (33, 65)]
_ids = ["d{}v{}".format(*d) for d in DIMS]


def _qkv(rng, spatial, hq, hkv, d, dv, dtype):
    return (randn(rng, (1, *spatial, hq, d), dtype), randn(rng, (1, *spatial, hkv, d), dtype),
            randn(rng, (1, *spatial, hkv, dv), dtype))


def _close(got, exp, dtype, grad=False):
    assert str(got.dtype) == dtype
    assert rel_err(got, exp) < (GRAD_TOL if grad else TOL)[dtype]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("dims", DIMS, ids=_ids)
def test_dense(rng, dims, dtype):
    q, k, v = _qkv(rng, (77,), 4, 2, *dims, dtype)
    out, lse = attnkit.attention(q, k, v, is_causal=True, return_lse=True)
    ro, _ = ref.attention(q, k, v, is_causal=True)
    _close(out, ro, dtype)
    do = randn(rng, out.shape, dtype)
    for got, exp in zip(attnkit.attention_backward(do, q, k, v, out, lse, is_causal=True),
                        ref.attention_grad(do, q, k, v, is_causal=True)):
        _close(got, exp, dtype, grad=True)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("dims", DIMS, ids=_ids)
def test_neighborhood(rng, dims, dtype):
    q, k, v = _qkv(rng, (9, 11), 2, 1, *dims, dtype)
    out, lse = attnkit.neighborhood_attention(q, k, v, (3, 5), return_lse=True)
    ro, _ = ref.neighborhood_attention(q, k, v, (3, 5))
    _close(out, ro, dtype)
    do = randn(rng, out.shape, dtype)
    for got, exp in zip(attnkit.neighborhood_attention_backward(do, q, k, v, out, lse, (3, 5)),
                        ref.neighborhood_attention_grad(do, q, k, v, (3, 5))):
        _close(got, exp, dtype, grad=True)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("dims", DIMS, ids=_ids)
def test_block_sparse(rng, dims, dtype):
    q, k, v = _qkv(rng, (150,), 2, 2, *dims, dtype)
    dense = np.random.default_rng(3).random((1, 1, 5, 5)) < 0.5
    dense[..., 0] = True
    bm = attnkit.BlockMask.from_dense(dense, q_block=32, kv_block=32)
    out, lse = attnkit.block_sparse_attention(q, k, v, bm, return_lse=True)
    ro, _ = ref.block_sparse_attention(q, k, v, bm)
    _close(out, ro, dtype)
    do = randn(rng, out.shape, dtype)
    for got, exp in zip(attnkit.block_sparse_attention_backward(do, q, k, v, out, lse, bm),
                        ref.block_sparse_attention_grad(do, q, k, v, bm)):
        _close(got, exp, dtype, grad=True)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
@pytest.mark.parametrize("dims", DIMS, ids=_ids)
def test_linear(rng, dims, causal, dtype):
    q, k, v = _qkv(rng, (100,), 2, 2, *dims, dtype)
    out = attnkit.linear_attention(q, k, v, is_causal=causal)
    ro, _ = ref.linear_attention(q, k, v, is_causal=causal)
    _close(out, ro, dtype)
    do = randn(rng, out.shape, dtype)
    got = attnkit.linear_attention_backward(do, q, k, v, is_causal=causal)
    exp = ref.linear_attention_grad(do, q, k, v, is_causal=causal)
    for g, e in zip(got[:3], exp[:3]):
        _close(g, e, dtype, grad=True)
