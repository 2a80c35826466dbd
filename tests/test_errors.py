"""Bad input gets a clear Python exception naming the argument -- never a crash."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import randn

import attnkit


@pytest.fixture
def qkv(rng):
    return (randn(rng, (2, 16, 4, 32), "float32"), randn(rng, (2, 16, 2, 32), "float32"),
            randn(rng, (2, 16, 2, 32), "float32"))


def test_wrong_rank(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match=r"q must have 4 dimensions \[batch, seqlen, heads, head_dim\]"):
        attnkit.attention(q[0], k, v)
    with pytest.raises(ValueError, match="k must have 4 dimensions"):
        attnkit.attention(q, k[0], v)


def test_mismatched_batch(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match=r"k.shape\[0\] \(batch, must match q\) must be 2, got 1"):
        attnkit.attention(q, k[:1], v[:1])


def test_mismatched_heads(rng, qkv):
    q, _, _ = qkv
    k = randn(rng, (2, 16, 3, 32), "float32")
    with pytest.raises(ValueError, match="multiple of the number of key/value heads"):
        attnkit.attention(q, k, k)
    with pytest.raises(ValueError, match=r"v.shape\[2\] \(heads, must match k\)"):
        attnkit.attention(q, qkv[1], randn(rng, (2, 16, 4, 32), "float32"))


def test_mismatched_head_dim_and_lengths(rng, qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match=r"k.shape\[3\] \(head_dim, must match q\) must be 32, got 16"):
        attnkit.attention(q, k[..., :16], v)
    with pytest.raises(ValueError, match=r"v.shape\[1\] \(seqlen, must match k\) must be 16, got 15"):
        attnkit.attention(q, k, v[:, :15])


def test_dtypes(qkv):
    q, k, v = qkv
    with pytest.raises(TypeError, match="k has dtype float16 but q has float32"):
        attnkit.attention(q, k.astype(np.float16), v)
    with pytest.raises(TypeError, match="q must be float32, float16 or bfloat16, got int64"):
        attnkit.attention(q.astype(np.int64), k, v)
    with pytest.raises(TypeError, match="q must be float32, float16 or bfloat16, got float64"):
        attnkit.attention(q.astype(np.float64), k, v)
    with pytest.raises(TypeError, match="must be a tensor"):
        attnkit.attention(q.tolist(), k, v)


def test_inner_stride(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="q must have unit stride in its last .head_dim. dimension, got stride 2"):
        attnkit.attention(q[..., ::2], k[..., ::2].copy(), v)


def test_zero_sized_dims(rng):
    q = randn(rng, (1, 4, 2, 0), "float32")
    with pytest.raises(ValueError, match="head_dim .* must be at least 1, got 0"):
        attnkit.attention(q, q, q)
    q = randn(rng, (1, 4, 0, 8), "float32")
    with pytest.raises(ValueError, match="number of query heads .* must be at least 1"):
        attnkit.attention(q, q, q)


def test_options(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="window_size entries must be >= 0, or -1"):
        attnkit.attention(q, k, v, window_size=(-2, 0))
    with pytest.raises(ValueError, match="window_size must be a pair"):
        attnkit.attention(q, k, v, window_size=3)
    with pytest.raises(ValueError, match="softcap must be a finite number >= 0"):
        attnkit.attention(q, k, v, softcap=-1.0)
    with pytest.raises(ValueError, match="scale must be finite"):
        attnkit.attention(q, k, v, scale=float("inf"))


def test_cu_seqlens(rng):
    q = randn(rng, (10, 2, 16), "float32")
    good = np.array([0, 4, 10], np.int32)
    with pytest.raises(ValueError, match="cu_seqlens_q and cu_seqlens_k must be given together"):
        attnkit.attention(q, q, q, cu_seqlens_q=good)
    with pytest.raises(TypeError, match="cu_seqlens_q must be int32, got int64"):
        attnkit.attention(q, q, q, cu_seqlens_q=good.astype(np.int64), cu_seqlens_k=good)
    with pytest.raises(ValueError, match=r"cu_seqlens_q\[0\] must be 0, got 1"):
        attnkit.attention(q, q, q, cu_seqlens_q=np.array([1, 4, 10], np.int32), cu_seqlens_k=good)
    with pytest.raises(ValueError, match="cu_seqlens_k must be non-decreasing"):
        attnkit.attention(q, q, q, cu_seqlens_q=good, cu_seqlens_k=np.array([0, 6, 4], np.int32))
    with pytest.raises(ValueError, match=r"cu_seqlens_k\[-1\] must equal the packed token count 10, got 9"):
        attnkit.attention(q, q, q, cu_seqlens_q=good, cu_seqlens_k=np.array([0, 4, 9], np.int32))
    with pytest.raises(ValueError, match="must have the same length"):
        attnkit.attention(q, q, q, cu_seqlens_q=good, cu_seqlens_k=np.array([0, 10], np.int32))
    with pytest.raises(ValueError, match=r"q must have 3 dimensions \[total_tokens, heads, head_dim\] \(varlen\)"):
        attnkit.attention(q[None], q[None], q[None], cu_seqlens_q=good, cu_seqlens_k=good)


def test_backward_arguments(rng, qkv):
    q, k, v = qkv
    out, lse = attnkit.attention(q, k, v, return_lse=True)
    with pytest.raises(TypeError, match="lse must have dtype float32, got float16"):
        attnkit.attention_backward(out, q, k, v, out, lse.astype(np.float16))
    with pytest.raises(ValueError, match=r"dout must have the shape of out \[2, 16, 4, 32\], got \[2, 15, 4, 32\]"):
        attnkit.attention_backward(out[:, :15], q, k, v, out, lse)
    with pytest.raises(ValueError, match=r"lse must have shape \[2, 16, 4\], got \[2, 16\]"):
        attnkit.attention_backward(out, q, k, v, out, lse[..., 0])


def test_merge_arguments(rng):
    o = randn(rng, (3, 2, 8), "float32")
    l = randn(rng, (3, 2), "float32")
    with pytest.raises(ValueError, match="needs as many lses as outs"):
        attnkit.merge_attentions([o], [])
    with pytest.raises(ValueError, match=r"outs\[1\] has shape \[3, 2, 4\] but outs\[0\] has \[3, 2, 8\]"):
        attnkit.merge_attentions([o, o[..., :4].copy()], [l, l])
    with pytest.raises(ValueError, match=r"lses\[0\] must have shape"):
        attnkit.merge_attentions([o], [l[:, :1].copy()])
    with pytest.raises(TypeError, match=r"lses\[0\] must be float32"):
        attnkit.merge_attentions([o], [l.astype(np.float16)])


def test_every_family_names_a_non_float_operand_in_its_own_spelling(rng):
    # The core knows only its own dtypes (float64 would reach it as "unsupported"):
    # the Python layer names the operand, the function and the framework's dtype.
    q = randn(rng, (1, 8, 8, 2, 16), "float32")
    f64 = q.astype(np.float64)
    s = q.reshape(1, 64, 2, 16)
    s64 = s.astype(np.float64)
    bm = attnkit.BlockMask.from_dense(np.ones((1, 1, 1, 1), bool), q_block=64, kv_block=64)
    cases = [
        ("attention: k", lambda: attnkit.attention(s, s64, s)),
        ("attention: v", lambda: attnkit.attention(s, s, s64)),
        ("neighborhood_attention: v", lambda: attnkit.neighborhood_attention(q, q, f64, 3)),
        ("neighborhood_attention: additional_keys",
         lambda: attnkit.neighborhood_attention(q, q, q, 3, additional_keys=s64, additional_values=s)),
        ("block_sparse_attention: k", lambda: attnkit.block_sparse_attention(s, s64, s, bm)),
        ("linear_attention: v", lambda: attnkit.linear_attention(s, s, s64)),
        ("attention_backward: dout", lambda: attnkit.attention_backward(s64, s, s, s, s, s[..., 0])),
        ("merge_attentions: outs\\[1\\]", lambda: attnkit.merge_attentions([s, s64], [s[..., 0]] * 2)),
    ]
    for prefix, call in cases:
        with pytest.raises(TypeError, match=prefix + " must be float32, float16 or bfloat16, got float64"):
            call()
    cu = np.array([0, 64], np.int64)
    with pytest.raises(TypeError, match="attention: cu_seqlens_q must be int32, got int64"):
        attnkit.attention(s[0], s[0], s[0], cu_seqlens_q=cu, cu_seqlens_k=cu.astype(np.int32))


def test_the_library_prints_nothing(rng, capfd):
    # DESIGN §5: never a print, neither on success nor on error (checked at the file
    # descriptors, so output of the C++ core would show too).
    s = randn(rng, (1, 70, 2, 24), "bfloat16")
    g = randn(rng, (1, 6, 7, 2, 24), "bfloat16")
    bm = attnkit.BlockMask.from_dense(np.ones((1, 1, 2, 2), bool), q_block=64, kv_block=64)
    o, lse = attnkit.attention(s, s, s, is_causal=True, return_lse=True)
    attnkit.attention_backward(s, s, s, s, o, lse, is_causal=True)
    o, lse = attnkit.neighborhood_attention(g, g, g, 3, return_lse=True)
    attnkit.neighborhood_attention_backward(g, g, g, g, o, lse, 3)
    o, lse = attnkit.block_sparse_attention(s, s, s, bm, return_lse=True)
    attnkit.block_sparse_attention_backward(s, s, s, s, o, lse, bm)
    attnkit.linear_attention(s, s, s)
    attnkit.linear_attention_backward(s, s, s, s)
    for bad in (lambda: attnkit.attention(s, s[..., :8], s), lambda: attnkit.neighborhood_attention(g, g, g, 9),
                lambda: attnkit.block_sparse_attention(s[:, :3], s, s, bm), lambda: attnkit.linear_attention(s, s, s[:, :2])):
        with pytest.raises(ValueError):
            bad()
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_isa_names():
    with pytest.raises(ValueError, match="unknown CPU ISA 'sse9'"):
        attnkit.set_cpu_isa("sse9")
    attnkit.set_cpu_isa("")


def test_torch_meta_tensors_are_rejected():
    torch = pytest.importorskip("torch")
    q = torch.empty(1, 4, 2, 8, device="meta")
    with pytest.raises((TypeError, ValueError, NotImplementedError)):
        attnkit.attention(q, q, q)
