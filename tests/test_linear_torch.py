"""attnkit.torch linear attention: custom ops, autograd into q, k, v, g and the
initial state, from the output and the final state; opcheck; torch.compile."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GRAD_TOL, TOL, rel_err

torch = pytest.importorskip("torch")
import attnkit  # noqa: E402
import attnkit.torch as at  # noqa: E402
from attnkit import reference as ref  # noqa: E402


def _inputs(B, S, Hq, Hkv, Dk, Dv, dtype, gate=None, state=False, seed=0, positive=False):
    gen = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    q, k, v = mk(B, S, Hq, Dk), mk(B, S, Hkv, Dk), mk(B, S, Hkv, Dv)
    if positive:
        q, k = attnkit.feature_map(q, "elu+1"), attnkit.feature_map(k, "elu+1")
    q, k, v = (x.to(dtype).requires_grad_() for x in (q, k, v))
    g = None
    if gate == "head":
        g = (-torch.rand(Hq, generator=gen) - 0.01).requires_grad_()
    elif gate == "token":
        g = (-torch.rand(B, S, Hq, generator=gen)).requires_grad_()
    s0 = mk(B, Hq, Dk, Dv).requires_grad_() if state else None
    return q, k, v, g, s0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gate", [None, "head", "token"], ids=lambda g: g or "nogate")
def test_autograd_matches_reference(dtype, gate):
    q, k, v, g, s0 = _inputs(2, 70, 4, 2, 24, 40, dtype, gate, state=True)
    out, fin = at.linear_attention(q, k, v, g=g, initial_state=s0, return_final_state=True)
    name = str(dtype).replace("torch.", "")
    assert out.dtype == dtype and fin.dtype == torch.float32
    ro, rf = ref.linear_attention(q, k, v, g=g, initial_state=s0)
    assert rel_err(out, ro) < TOL[name] and rel_err(fin, rf) < TOL[name]
    dout, dfin = torch.randn_like(out), torch.randn_like(fin)
    ((out * dout).sum() + (fin * dfin).sum()).backward()
    want = ref.linear_attention_grad(dout, q, k, v, g=g, initial_state=s0, dfinal_state=dfin)
    for x, w in zip((q, k, v, g, s0), want):
        if x is not None:
            assert x.grad is not None and x.grad.dtype == x.dtype
            assert rel_err(x.grad, w) < GRAD_TOL[name] * 2


def test_autograd_normalize_noncausal_and_varlen():
    q, k, v, _, _ = _inputs(1, 50, 2, 1, 16, 24, torch.float32, positive=True)
    out = at.linear_attention(q, k, v, normalize=True, is_causal=False)
    dout = torch.randn_like(out)
    (out * dout).sum().backward()
    want = ref.linear_attention_grad(dout, q, k, v, normalize=True, is_causal=False)
    for x, w in zip((q, k, v), want):
        assert rel_err(x.grad, w) < GRAD_TOL["float32"]

    cu = torch.tensor([0, 5, 5, 70], dtype=torch.int32)
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(70, 2, 16, generator=gen).requires_grad_()
    k = torch.randn(70, 1, 16, generator=gen).requires_grad_()
    v = torch.randn(70, 1, 8, generator=gen).requires_grad_()
    g = (-torch.rand(70, 2, generator=gen)).requires_grad_()
    s0 = torch.randn(3, 2, 16, 8, generator=gen).requires_grad_()
    out, fin = at.linear_attention(q, k, v, g=g, initial_state=s0, return_final_state=True, cu_seqlens=cu)
    (out.sum() + fin.square().sum()).backward()
    want = ref.linear_attention_grad(np.ones(out.shape), q, k, v, g=g, initial_state=s0,
                                     dfinal_state=2 * fin.detach().numpy(), cu_seqlens=cu)
    for x, w in zip((q, k, v, g, s0), want):
        assert rel_err(x.grad, w) < GRAD_TOL["float32"]


def test_gradient_only_through_final_state():
    q, k, v, g, s0 = _inputs(1, 40, 2, 2, 8, 8, torch.float32, "token", state=True)
    _, fin = at.linear_attention(q, k, v, g=g, initial_state=s0, return_final_state=True)
    fin.sum().backward()
    want = ref.linear_attention_grad(None, q, k, v, g=g, initial_state=s0,
                                     dfinal_state=np.ones(fin.shape))
    for x, w in zip((q, k, v, g, s0), want):
        assert rel_err(x.grad, w) < GRAD_TOL["float32"]


def test_step_is_differentiable_and_matches_full():
    q, k, v, g, s0 = _inputs(2, 9, 2, 2, 8, 8, torch.float32, "token", state=True)
    full, full_fin = at.linear_attention(q, k, v, g=g, initial_state=s0, return_final_state=True)
    o1, st = at.linear_attention(q[:, :5], k[:, :5], v[:, :5], g=g[:, :5], initial_state=s0,
                                 return_final_state=True)
    outs = [o1]
    for t in range(5, 9):  # single-token form [B, H, D]
        o, st = at.linear_attention_step(q[:, t], k[:, t], v[:, t], st, g=g[:, t])
        outs.append(o[:, None])
    stepped = torch.cat(outs, 1)
    assert rel_err(stepped, full.detach()) < TOL["float32"]
    assert rel_err(st, full_fin.detach()) < TOL["float32"]
    (stepped.sum() + st.sum()).backward()
    grads = [x.grad.clone() for x in (q, k, v, g, s0)]
    for x in (q, k, v, g, s0):
        x.grad = None
    (full.sum() + full_fin.sum()).backward()
    for a, x in zip(grads, (q, k, v, g, s0)):
        assert rel_err(a, x.grad) < GRAD_TOL["float32"]


def test_opcheck():
    from torch.library import opcheck

    q, k, v, g, s0 = (x.detach() for x in _inputs(1, 20, 2, 1, 8, 16, torch.float32, "token", True))
    nan = float("nan")
    opcheck(torch.ops.attnkit.linear_fwd.default, (q, k, v, g, s0, None, True, nan, False))
    opcheck(torch.ops.attnkit.linear_fwd.default, (q, k, v, None, None, None, False, 0.5, True))
    out, fin = torch.ops.attnkit.linear_fwd(q, k, v, g, s0, None, True, nan, False)
    opcheck(torch.ops.attnkit.linear_bwd.default,
            (torch.randn_like(out), torch.randn_like(fin), q, k, v, g, s0, None, True, nan, False,
             True, True))
    opcheck(torch.ops.attnkit.linear_bwd.default,
            (None, torch.randn_like(fin), q, k, v, None, None, None, True, nan, False, False, False))


def test_torch_compile_fullgraph_trains():
    q, k, v, g, s0 = _inputs(1, 33, 2, 2, 16, 16, torch.float32, "head", state=True)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss_fn(q, k, v, g, s0):
        out, fin = at.linear_attention(q, k, v, g=g, initial_state=s0, return_final_state=True)
        return (out ** 2).sum() + fin.sum()

    loss_fn(q, k, v, g, s0).backward()
    got = [x.grad.clone() for x in (q, k, v, g, s0)]
    for x in (q, k, v, g, s0):
        x.grad = None
    out, fin = at.linear_attention(q, k, v, g=g, initial_state=s0, return_final_state=True)
    ((out ** 2).sum() + fin.sum()).backward()
    for a, x in zip(got, (q, k, v, g, s0)):
        assert rel_err(a, x.grad) < 1e-5


def test_noncontiguous_gradients_and_inputs():
    q, k, v, g, _ = _inputs(1, 40, 2, 2, 16, 8, torch.float32, "token")
    out = at.linear_attention(q, k, v, g=g)
    # a gradient with a non-unit inner stride (from a transpose) is made contiguous
    out.transpose(-1, -2).sum(-2).pow(2).sum().backward()
    assert torch.isfinite(q.grad).all()


def test_plain_api_returns_torch_and_normalize_state_error():
    q, k, v, _, s0 = _inputs(1, 8, 1, 1, 8, 8, torch.float32, state=True)
    out, fin = attnkit.linear_attention(q, k, v, initial_state=s0, return_final_state=True)
    assert isinstance(out, torch.Tensor) and isinstance(fin, torch.Tensor)
    with pytest.raises(ValueError, match="normalize=True cannot return a final state"):
        at.linear_attention(q, k, v, normalize=True, return_final_state=True)
    with pytest.raises(ValueError, match="normalize=True cannot take an initial_state"):
        at.linear_attention(q, k, v, normalize=True, initial_state=s0)
