"""attnkit.torch.block_sparse_attention (custom ops, autograd, torch.compile) and
the FlexAttention BlockMask converters."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GRAD_TOL, TOL, rel_err

torch = pytest.importorskip("torch")
import attnkit  # noqa: E402
import attnkit.torch as at  # noqa: E402
from attnkit import reference as ref  # noqa: E402


def cdiv(a, b):
    return -(-a // b)


def inputs(B, Sq, Sk, Hq, Hkv, D, Dv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype).requires_grad_()  # noqa: E731
    return mk(B, Sq, Hq, D), mk(B, Sk, Hkv, D), mk(B, Sk, Hkv, Dv)


def torch_mask(shape, density, q_block, kv_block, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return attnkit.BlockMask.from_dense(torch.rand(shape, generator=g) < density,
                                        q_block=q_block, kv_block=kv_block, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True], ids=["full-blocks", "causal"])
def test_autograd_matches_reference(dtype, causal):
    B, Sq, Sk, Hq, Hkv, D, Dv, qb, kvb = 2, 75, 90, 4, 2, 24, 40, 16, 32
    q, k, v = inputs(B, Sq, Sk, Hq, Hkv, D, Dv, dtype)
    bm = torch_mask((B, Hkv, cdiv(Sq, qb), cdiv(Sk, kvb)), 0.5, qb, kvb)
    out, lse = at.block_sparse_attention(q, k, v, bm, is_causal=causal, return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32 and out.shape == (B, Sq, Hq, Dv)
    name = str(dtype).replace("torch.", "")
    ro, rl = ref.block_sparse_attention(q, k, v, bm, is_causal=causal)
    assert rel_err(out, ro) < TOL[name]
    dout = torch.randn_like(out)
    (out * dout).sum().backward()
    gq, gk, gv = ref.block_sparse_attention_grad(dout, q, k, v, bm, is_causal=causal)
    assert rel_err(q.grad, gq) < GRAD_TOL[name]
    assert rel_err(k.grad, gk) < GRAD_TOL[name]
    assert rel_err(v.grad, gv) < GRAD_TOL[name]


def _dense_f64(q, k, v, element_mask):
    q, k, v = q.double(), k.double(), v.double()
    g = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(g, 2), v.repeat_interleave(g, 2)
    s = torch.einsum("bihd,bjhd->bhij", q, k) * q.shape[-1] ** -0.5
    s = s.masked_fill(~element_mask, -float("inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return torch.einsum("bhij,bjhd->bihd", p, v), torch.logsumexp(s, -1).transpose(1, 2)


def test_gradient_through_lse():
    q, k, v = inputs(1, 40, 40, 2, 1, 16, 16, torch.float32)
    bm = torch_mask((1, 2, 5, 5), 0.6, 8, 8, seed=3)
    out, lse = at.block_sparse_attention(q, k, v, bm, return_lse=True)
    finite = torch.isfinite(lse)
    (out.square().sum() + lse[finite].sin().sum()).backward()
    em = torch.from_numpy(ref.block_sparse_element_mask(bm, 40, 40))
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    ro, rl = _dense_f64(qd, kd, vd, em)
    (ro.square().sum() + rl[finite].sin().sum()).backward()
    for a, b in ((q.grad, qd.grad), (k.grad, kd.grad), (v.grad, vd.grad)):
        assert rel_err(a, b) < 1e-5


def test_opcheck():
    from torch.library import opcheck

    q, k, v = (x.detach() for x in inputs(1, 19, 23, 2, 1, 8, 8, torch.float32))
    bm = torch_mask((1, 1, 3, 3), 0.7, 8, 8)
    args = (q, k, v, bm.kv_num_blocks, bm.kv_indices, 8, 8, True, float("nan"))
    opcheck(torch.ops.attnkit.block_sparse_fwd.default, args)
    out, lse = torch.ops.attnkit.block_sparse_fwd(*args)
    opcheck(torch.ops.attnkit.block_sparse_bwd.default,
            (torch.randn_like(out), q, k, v, out, lse, None, bm.kv_num_blocks, bm.kv_indices, 8, 8,
             True, float("nan")))


def test_torch_compile_fullgraph_trains():
    q, k, v = inputs(1, 48, 48, 2, 2, 16, 16, torch.float32)
    bm = torch_mask((1, 2, 3, 3), 0.6, 16, 16, seed=1)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss_fn(q, k, v, bm):
        return (at.block_sparse_attention(q, k, v, bm, is_causal=True) ** 2).sum()

    loss_fn(q, k, v, bm).backward()
    em = torch.from_numpy(ref.block_sparse_element_mask(bm, 48, 48))
    em = em & (torch.arange(48)[None] <= torch.arange(48)[:, None])
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    (_dense_f64(qd, kd, vd, em)[0] ** 2).sum().backward()
    assert rel_err(q.grad, qd.grad) < 1e-4 and rel_err(k.grad, kd.grad) < 1e-4


def test_numpy_backed_mask_works_with_torch_ops():
    q, k, v = inputs(1, 32, 32, 1, 1, 8, 8, torch.float32)
    bm = attnkit.BlockMask.from_dense(np.tril(np.ones((2, 2), bool)), q_block=16)
    out = at.block_sparse_attention(q, k, v, bm)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    with pytest.raises(ValueError, match="block_mask has 2 query blocks"):
        at.block_sparse_attention(q[:, :16], k, v, bm)


# ----------------------------------------------------------------------------- FlexAttention
flex = pytest.importorskip("torch.nn.attention.flex_attention")


def block_mask_mod(dense, q_block, kv_block):
    """FlexAttention's eager path evaluates mask_mod only (the BlockMask just lets
    compiled kernels skip blocks), so spell the block pattern out as a mask_mod."""
    d = torch.as_tensor(dense)

    def mod(b, h, qi, ki):
        return d[b % d.shape[0], h % d.shape[1], qi // q_block, ki // kv_block]

    return mod


def flex_eager(q, k, v, fmask, gqa=False):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "called without torch.compile"
        o = flex.flex_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                block_mask=fmask, enable_gqa=gqa)
    return o.transpose(1, 2)


@pytest.mark.parametrize("qb,kvb,S,Sk", [(32, 64, 200, 150), (128, 128, 256, 256), (64, 16, 100, 77)])
def test_flex_round_trip_and_same_result(qb, kvb, S, Sk):
    H, D = 2, 16
    q, k, v = (x.detach() for x in inputs(1, S, Sk, H, H, D, D, torch.float32))
    bm = torch_mask((1, H, cdiv(S, qb), cdiv(Sk, kvb)), 0.5, qb, kvb, seq_lengths=(S, Sk))
    fm = bm.to_flex()
    assert isinstance(fm, flex.BlockMask)
    assert tuple(fm.BLOCK_SIZE) == (qb, kvb) and tuple(fm.seq_lengths) == (S, Sk)
    # Without a mask_mod the listed blocks are FlexAttention full blocks.
    assert torch.equal(fm.full_kv_num_blocks, bm.kv_num_blocks) and int(fm.kv_num_blocks.sum()) == 0
    back = attnkit.BlockMask.from_flex(fm)
    assert back.q_block == qb and back.kv_block == kvb and back.seq_lengths == (S, Sk)
    assert torch.equal(back.to_dense(), bm.to_dense())
    dense = bm.to_dense()
    for causal in (False, True):
        mod = block_mask_mod(dense, qb, kvb)
        if causal:
            def mod(b, h, qi, ki, base=mod):  # bottom-right aligned like attnkit
                return base(b, h, qi, ki) & (ki <= qi + (Sk - S))
        fm_mod = bm.to_flex(mod)
        ours = attnkit.block_sparse_attention(q, k, v, bm, is_causal=causal)
        theirs = flex_eager(q, k, v, fm_mod)
        # FlexAttention gives NaN-free zeros for rows that see nothing too.
        assert rel_err(ours, theirs.nan_to_num(0.0)) < 1e-5
    # FlexAttention masks (noop mask_mod) are accepted directly.
    np.testing.assert_array_equal(attnkit.block_sparse_attention(q, k, v, fm).numpy(),
                                  attnkit.block_sparse_attention(q, k, v, bm).numpy())


def test_flex_gqa_heads_expand():
    q, k, v = (x.detach() for x in inputs(1, 64, 64, 4, 2, 16, 16, torch.float32))
    bm = torch_mask((1, 2, 4, 4), 0.5, 16, 16, seq_lengths=(64, 64))  # per kv head
    dense_q = bm.to_dense().repeat_interleave(2, dim=1)
    fm = bm.to_flex(block_mask_mod(dense_q, 16, 16), num_heads=4)
    assert fm.kv_num_blocks.shape == (1, 4, 4)
    ours = attnkit.block_sparse_attention(q, k, v, bm)
    assert rel_err(ours, flex_eager(q, k, v, fm, gqa=True)) < 1e-5


def test_from_flex_with_a_mask_mod():
    S = 200

    def causal(b, h, qi, ki):
        return ki <= qi

    fm = flex.create_block_mask(causal, None, None, S, S, device="cpu", BLOCK_SIZE=64)
    assert fm.full_kv_num_blocks is not None  # below-diagonal blocks are full, diagonal partial
    with pytest.raises(ValueError, match="partial blocks under mask_mod 'causal'"):
        attnkit.BlockMask.from_flex(fm)
    with pytest.raises(ValueError, match="partial blocks under mask_mod 'causal'"):
        attnkit.block_sparse_attention(torch.zeros(1, S, 1, 8), torch.zeros(1, S, 1, 8),
                                       torch.zeros(1, S, 1, 8), fm)
    full = attnkit.BlockMask.from_flex(fm, partial="full")
    assert torch.equal(full.to_dense()[0, 0], torch.tril(torch.ones(4, 4, dtype=torch.bool)))
    drop = attnkit.BlockMask.from_flex(fm, partial="drop")
    # FlexAttention counts the blocks crossing the sequence end as partial, too.
    want = torch.tril(torch.ones(4, 4, dtype=torch.bool), -1)
    want[3] = False
    assert torch.equal(drop.to_dense()[0, 0], want)
    q, k, v = (x.detach() for x in inputs(1, S, S, 2, 2, 16, 16, torch.float32))
    ours = attnkit.block_sparse_attention(q, k, v, full, is_causal=True)
    assert rel_err(ours, flex_eager(q, k, v, fm)) < 1e-5
    with pytest.raises(ValueError, match="partial must be 'error', 'full' or 'drop'"):
        attnkit.BlockMask.from_flex(fm, partial="maybe")
    with pytest.raises(TypeError, match="expected a torch.nn.attention.flex_attention.BlockMask"):
        attnkit.BlockMask.from_flex(object())


@pytest.mark.slow
@pytest.mark.parametrize("qb,kvb", [(64, 64), (32, 128)])
def test_flex_compiled_matches(qb, kvb):
    # The compiled kernels use the block lists (the eager path only the mask_mod).
    S, Sk, H, D = 320, 300, 2, 32
    q, k, v = (x.detach() for x in inputs(1, S, Sk, H, H, D, D, torch.float32))
    bm = torch_mask((1, H, cdiv(S, qb), cdiv(Sk, kvb)), 0.4, qb, kvb, seq_lengths=(S, Sk))
    fa = torch.compile(flex.flex_attention, dynamic=False)
    theirs = fa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                block_mask=bm.to_flex()).transpose(1, 2)
    assert rel_err(attnkit.block_sparse_attention(q, k, v, bm), theirs) < 1e-5
