"""Bad input to linear attention gets a clear exception naming the argument,
the expected and the given value -- never a crash."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import randn

import attnkit


@pytest.fixture
def qkv(rng):
    return (randn(rng, (2, 16, 4, 32), "float32"), randn(rng, (2, 16, 2, 32), "float32"),
            randn(rng, (2, 16, 2, 24), "float32"))


def test_ranks_and_shapes(qkv, rng):
    q, k, v = qkv
    with pytest.raises(ValueError, match=r"q must have 4 dimensions \[batch, seqlen, heads, head_dim\]"):
        attnkit.linear_attention(q[0], k, v)
    with pytest.raises(ValueError, match="k must have 4 dimensions"):
        attnkit.linear_attention(q, k[0], v)
    with pytest.raises(ValueError, match=r"k.shape\[0\] \(batch, must match q\) must be 2, got 1"):
        attnkit.linear_attention(q, k[:1], v[:1])
    with pytest.raises(ValueError, match=r"k.shape\[1\] \(seqlen, must match q .*\) must be 16, got 15"):
        attnkit.linear_attention(q, k[:, :15], v[:, :15])
    with pytest.raises(ValueError, match=r"v.shape\[1\] \(seqlen, must match q\) must be 16, got 15"):
        attnkit.linear_attention(q, k, v[:, :15])
    with pytest.raises(ValueError, match=r"k.shape\[3\] \(head_dim, must match q\) must be 32, got 16"):
        attnkit.linear_attention(q, k[..., :16], v)
    with pytest.raises(ValueError, match="multiple of the number of key/value heads"):
        attnkit.linear_attention(q, randn(rng, (2, 16, 3, 32), "float32"), randn(rng, (2, 16, 3, 8), "float32"))
    with pytest.raises(ValueError, match=r"v.shape\[2\] \(heads, must match k\)"):
        attnkit.linear_attention(q, k, randn(rng, (2, 16, 4, 24), "float32"))
    with pytest.raises(ValueError, match="head_dim .* must be at least 1, got 0"):
        attnkit.linear_attention(q[..., :0], k[..., :0], v)


def test_dtypes_and_strides(qkv):
    q, k, v = qkv
    with pytest.raises(TypeError, match="k has dtype float16 but q has float32"):
        attnkit.linear_attention(q, k.astype(np.float16), v)
    with pytest.raises(TypeError, match="q must be float32, float16 or bfloat16, got float64"):
        attnkit.linear_attention(q.astype(np.float64), k, v)
    with pytest.raises(TypeError, match="must be a tensor"):
        attnkit.linear_attention(q.tolist(), k, v)
    with pytest.raises(ValueError, match="q must have unit stride in its last .head_dim. dimension"):
        attnkit.linear_attention(q[..., ::2], k[..., ::2], v)


def test_gate_errors(qkv, rng):
    q, k, v = qkv
    with pytest.raises(ValueError, match=r"g per head must have shape \[4\] \(heads_q\), got \[2\]"):
        attnkit.linear_attention(q, k, v, g=np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"g must be per head \[4\] or per token \[2, 16, 4\].*got \[2, 16, 2\]"):
        attnkit.linear_attention(q, k, v, g=np.zeros((2, 16, 2), np.float32))
    with pytest.raises(TypeError, match="g must be float32, float16 or bfloat16, got int32"):
        attnkit.linear_attention(q, k, v, g=np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="g .a decay gate. needs is_causal=True"):
        attnkit.linear_attention(q, k, v, g=np.zeros(4, np.float32), is_causal=False)


def test_state_errors(qkv):
    q, k, v = qkv
    good = np.zeros((2, 4, 32, 24), np.float32)
    with pytest.raises(TypeError, match="initial_state must be float32 .states are float32"):
        attnkit.linear_attention(q, k, v, initial_state=good.astype(np.float16))
    with pytest.raises(ValueError, match=r"initial_state must have shape \[2, 4, 32, 24\] .*got \[2, 4, 24, 32\]"):
        attnkit.linear_attention(q, k, v, initial_state=np.zeros((2, 4, 24, 32), np.float32))
    with pytest.raises(ValueError, match="normalize=True cannot take an initial_state"):
        attnkit.linear_attention(q, k, v, initial_state=good, normalize=True)
    with pytest.raises(ValueError, match="normalize=True cannot return a final state"):
        attnkit.linear_attention(q, k, v, normalize=True, return_final_state=True)
    with pytest.raises(ValueError, match=r"state must have shape \[2, 4, 32, 24\]"):
        attnkit.linear_attention_step(q[:, :1], k[:, :1], v[:, :1], good[:1])


def test_scale_error(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="scale must be finite, got inf"):
        attnkit.linear_attention(q, k, v, scale=float("inf"))


def test_varlen_errors(rng):
    q = randn(rng, (10, 2, 16), "float32")
    good = np.array([0, 4, 10], np.int32)
    with pytest.raises(TypeError, match="cu_seqlens must be int32, got int64"):
        attnkit.linear_attention(q, q, q, cu_seqlens=good.astype(np.int64))
    with pytest.raises(ValueError, match=r"cu_seqlens\[0\] must be 0, got 1"):
        attnkit.linear_attention(q, q, q, cu_seqlens=np.array([1, 4, 10], np.int32))
    with pytest.raises(ValueError, match="cu_seqlens must be non-decreasing"):
        attnkit.linear_attention(q, q, q, cu_seqlens=np.array([0, 6, 4, 10], np.int32))
    with pytest.raises(ValueError, match=r"cu_seqlens\[-1\] must equal the packed token count 10, got 9"):
        attnkit.linear_attention(q, q, q, cu_seqlens=np.array([0, 4, 9], np.int32))
    with pytest.raises(ValueError, match=r"q must have 3 dimensions \[total_tokens, heads, head_dim\] \(varlen\)"):
        attnkit.linear_attention(q[None], q[None], q[None], cu_seqlens=good)
    with pytest.raises(ValueError, match=r"g must be per head \[2\] or per token \[10, 2\]"):
        attnkit.linear_attention(q, q, q, g=np.zeros((1, 10, 2), np.float32), cu_seqlens=good)
    with pytest.raises(ValueError, match=r"initial_state must have shape \[2, 2, 16, 16\]"):
        attnkit.linear_attention(q, q, q, initial_state=np.zeros((1, 2, 16, 16), np.float32),
                                 cu_seqlens=good)


def test_backward_errors(qkv):
    q, k, v = qkv
    do = np.zeros((2, 16, 4, 24), np.float32)
    with pytest.raises(ValueError, match=r"dout must have shape \[2, 16, 4, 24\], got \[2, 15, 4, 24\]"):
        attnkit.linear_attention_backward(do[:, :15], q, k, v)
    with pytest.raises(TypeError, match="dout must have dtype float32, got float16"):
        attnkit.linear_attention_backward(do.astype(np.float16), q, k, v)
    with pytest.raises(ValueError, match=r"dfinal_state must have shape \[2, 4, 32, 24\]"):
        attnkit.linear_attention_backward(do, q, k, v, dfinal_state=np.zeros((2, 4, 32, 23), np.float32))
    with pytest.raises(ValueError, match="normalize=True has no states, so dfinal_state cannot be given"):
        attnkit.linear_attention_backward(do, q, k, v, normalize=True,
                                          dfinal_state=np.zeros((2, 4, 32, 24), np.float32))


def test_cpp_rejects_dg_without_g(qkv):
    from attnkit import _core

    q, k, v = qkv
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    with pytest.raises(ValueError, match="dg was given but g was not"):
        _core.linear_bwd(None, q, k, v, None, dq, dk, dv, np.empty(4, np.float32), None, None, None,
                         None, True, float("nan"), False)
