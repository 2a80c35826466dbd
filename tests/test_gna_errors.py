"""Neighborhood attention: bad input gets a clear exception naming the argument."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import randn

import attnkit


@pytest.fixture
def qkv(rng):
    return (randn(rng, (2, 8, 9, 4, 16), "float32"), randn(rng, (2, 8, 9, 2, 16), "float32"),
            randn(rng, (2, 8, 9, 2, 16), "float32"))


def test_rank(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match=r"q must have 4, 5 or 6 dimensions \[batch, \*spatial"):
        attnkit.neighborhood_attention(q[0, 0], k[0, 0], v[0, 0], 3)
    with pytest.raises(ValueError, match=r"q must have 4, 5 or 6 dimensions"):
        attnkit.neighborhood_attention(q[None, None], k[None, None], v[None, None], 3)
    with pytest.raises(ValueError, match=r"k must have 5 dimensions \[batch, X, Y, heads, head_dim\]"):
        attnkit.neighborhood_attention(q, k[:, 0], v, 3)
    with pytest.raises(ValueError, match=r"na1d: q must have 4 dimensions \[batch, X, heads, head_dim\], got 5"):
        attnkit.na1d(q, k, v, 3)
    with pytest.raises(ValueError, match=r"na3d: q must have 6 dimensions"):
        attnkit.na3d(q, k, v, 3)


def test_per_dim_tuples_must_match_the_rank(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match=r"kernel_size must be one value or one per spatial dimension; "
                                         r"q of shape \[2, 8, 9, 4, 16\] has 2 spatial dimensions, "
                                         r"but kernel_size has 3 values"):
        attnkit.neighborhood_attention(q, k, v, (3, 3, 3))
    for name in ("stride", "dilation"):
        with pytest.raises(ValueError, match=f"{name} must be one value or one per spatial dimension"):
            attnkit.neighborhood_attention(q, k, v, 3, **{name: (1, 1, 1)})
    with pytest.raises(ValueError, match="is_causal must be one value or one per spatial dimension"):
        attnkit.neighborhood_attention(q, k, v, 3, is_causal=(True, False, True))


def test_invalid_window_arguments(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match=r"kernel_size\[1\] must be at least 2, got 1"):
        attnkit.neighborhood_attention(q, k, v, (3, 1))
    with pytest.raises(ValueError, match=r"kernel_size\[0\] \* dilation\[0\] = 9 \* 1 must not exceed "
                                         r"the spatial size 8 \(q.shape\[1\]\)"):
        attnkit.neighborhood_attention(q, k, v, 9)
    with pytest.raises(ValueError, match=r"kernel_size\[1\] \* dilation\[1\] = 4 \* 3 must not exceed "
                                         r"the spatial size 9"):
        attnkit.neighborhood_attention(q, k, v, 4, dilation=(1, 3))
    with pytest.raises(ValueError, match=r"stride\[0\] = 4 must not exceed kernel_size\[0\] = 3"):
        attnkit.neighborhood_attention(q, k, v, 3, stride=(4, 1))
    with pytest.raises(ValueError, match=r"stride\[1\] must be at least 1, got 0"):
        attnkit.neighborhood_attention(q, k, v, 3, stride=(1, 0))
    with pytest.raises(ValueError, match=r"dilation\[0\] must be at least 1, got 0"):
        attnkit.neighborhood_attention(q, k, v, 3, dilation=0)
    with pytest.raises(ValueError, match="scale must be finite"):
        attnkit.neighborhood_attention(q, k, v, 3, scale=float("inf"))


def test_argument_types(qkv):
    q, k, v = qkv
    with pytest.raises(TypeError, match="kernel_size must be an int or a tuple of ints"):
        attnkit.neighborhood_attention(q, k, v, 3.0)
    with pytest.raises(TypeError, match="kernel_size must be an int or a tuple of ints"):
        attnkit.neighborhood_attention(q, k, v, (3, True))
    with pytest.raises(TypeError, match="stride must be an int or a tuple of ints"):
        attnkit.neighborhood_attention(q, k, v, 3, stride="2")
    with pytest.raises(TypeError, match="is_causal must be a bool or a tuple of bools"):
        attnkit.neighborhood_attention(q, k, v, 3, is_causal=1)
    with pytest.raises(ValueError, match="kernel_size must not be empty"):
        attnkit.neighborhood_attention(q, k, v, ())


def test_shapes_must_agree(rng, qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match=r"k.shape\[2\] \(spatial size, must match q\) must be 9, got 8"):
        attnkit.neighborhood_attention(q, k[:, :, :8], v, 3)
    with pytest.raises(ValueError, match=r"v.shape\[1\] \(spatial size, must match q\) must be 8, got 7"):
        attnkit.neighborhood_attention(q, k, v[:, :7], 3)
    with pytest.raises(ValueError, match=r"k.shape\[0\] \(batch, must match q\) must be 2, got 1"):
        attnkit.neighborhood_attention(q, k[:1], v[:1], 3)
    with pytest.raises(ValueError, match=r"k.shape\[4\] \(head_dim, must match q\) must be 16, got 8"):
        attnkit.neighborhood_attention(q, k[..., :8], v, 3)
    with pytest.raises(ValueError, match=r"v.shape\[3\] \(heads, must match k\) must be 2, got 1"):
        attnkit.neighborhood_attention(q, k, v[:, :, :, :1], 3)
    k3 = randn(rng, (2, 8, 9, 3, 16), "float32")
    with pytest.raises(ValueError, match="multiple of the number of key/value heads"):
        attnkit.neighborhood_attention(q, k3, k3, 3)


def test_dtypes(qkv):
    q, k, v = qkv
    with pytest.raises(TypeError, match="k has dtype float16 but q has float32"):
        attnkit.neighborhood_attention(q, k.astype(np.float16), v, 3)
    with pytest.raises(TypeError, match="q must be float32, float16 or bfloat16, got float64"):
        attnkit.neighborhood_attention(q.astype(np.float64), k, v, 3)
    with pytest.raises(TypeError, match="must be a tensor"):
        attnkit.neighborhood_attention(q.tolist(), k, v, 3)


def test_non_unit_inner_stride(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="q must have unit stride in its last"):
        attnkit.neighborhood_attention(q[..., ::2], k[..., ::2], v, 3)


def test_additional_kv_errors(rng, qkv):
    q, k, v = qkv
    ek, ev = randn(rng, (2, 5, 2, 16), "float32"), randn(rng, (2, 5, 2, 16), "float32")
    with pytest.raises(ValueError, match="additional_keys and additional_values must be given together"):
        attnkit.neighborhood_attention(q, k, v, 3, additional_keys=ek)
    with pytest.raises(ValueError, match=r"additional_keys must have 4 dimensions \[batch, n_extra, kv_heads, head_dim\]"):
        attnkit.neighborhood_attention(q, k, v, 3, additional_keys=ek[0], additional_values=ev[0])
    with pytest.raises(ValueError, match=r"additional_values.shape\[1\] \(n_extra, must match additional_keys\)"):
        attnkit.neighborhood_attention(q, k, v, 3, additional_keys=ek, additional_values=ev[:, :4])
    with pytest.raises(ValueError, match=r"additional_keys.shape\[2\] \(heads, must match k\) must be 2, got 1"):
        attnkit.neighborhood_attention(q, k, v, 3, additional_keys=ek[:, :, :1], additional_values=ev)
    with pytest.raises(ValueError, match=r"additional_keys.shape\[3\] \(head_dim, must match q\)"):
        attnkit.neighborhood_attention(q, k, v, 3, additional_keys=ek[..., :8], additional_values=ev)
    with pytest.raises(ValueError, match=r"additional_keys.shape\[0\] \(batch, must match q\)"):
        attnkit.neighborhood_attention(q, k, v, 3, additional_keys=ek[:1], additional_values=ev[:1])
    with pytest.raises(TypeError, match="additional_keys has dtype float16 but q has float32"):
        attnkit.neighborhood_attention(q, k, v, 3, additional_keys=ek.astype(np.float16),
                                       additional_values=ev)


def test_backward_errors(rng, qkv):
    q, k, v = qkv
    out, lse = attnkit.neighborhood_attention(q, k, v, 3, return_lse=True)
    with pytest.raises(ValueError, match=r"dout must have the shape of out \[2, 8, 9, 4, 16\]"):
        attnkit.neighborhood_attention_backward(out[:1], q, k, v, out, lse, 3)
    with pytest.raises(ValueError, match=r"lse must have shape \[2, 8, 9, 4\]"):
        attnkit.neighborhood_attention_backward(out, q, k, v, out, lse[:, :, :, :2], 3)
    with pytest.raises(TypeError, match="lse must have dtype float32"):
        attnkit.neighborhood_attention_backward(out, q, k, v, out, lse.astype(np.float16), 3)
    with pytest.raises(ValueError, match=r"kernel_size\[0\] \* dilation\[0\]"):
        attnkit.neighborhood_attention_backward(out, q, k, v, out, lse, 3, dilation=3)


def test_plan_knob_is_validated(monkeypatch, qkv):
    q, k, v = qkv
    monkeypatch.setenv("ATTNKIT_GNA_PLAN", "vb=1x8x8")
    with pytest.raises(ValueError, match="ATTNKIT_GNA_PLAN must look like"):
        attnkit.neighborhood_attention(q, k, v, 3)
