"""attnkit.torch: custom ops, autograd, torch.compile."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GRAD_TOL, TOL, rel_err

torch = pytest.importorskip("torch")
import attnkit  # noqa: E402
import attnkit.torch as at  # noqa: E402
from attnkit import reference as ref  # noqa: E402


def _inputs(B, Sq, Sk, Hq, Hkv, D, Dv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype).requires_grad_()  # noqa: E731
    return mk(B, Sq, Hq, D), mk(B, Sk, Hkv, D), mk(B, Sk, Hkv, Dv)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kw", [dict(), dict(is_causal=True), dict(window_size=(7, 2), softcap=5.0)],
                         ids=["dense", "causal", "window+softcap"])
def test_autograd_matches_reference(dtype, kw):
    q, k, v = _inputs(2, 37, 45, 4, 2, 24, 40, dtype)
    out, lse = at.attention(q, k, v, return_lse=True, **kw)
    assert out.dtype == dtype and lse.dtype == torch.float32
    name = str(dtype).replace("torch.", "")
    ro, rl = ref.attention(q, k, v, **kw)
    assert rel_err(out, ro) < TOL[name]
    dout = torch.randn_like(out)
    (out * dout).sum().backward()
    gq, gk, gv = ref.attention_grad(dout, q, k, v, **kw)
    assert rel_err(q.grad, gq) < GRAD_TOL[name]
    assert rel_err(k.grad, gk) < GRAD_TOL[name]
    assert rel_err(v.grad, gv) < GRAD_TOL[name]


def _dense_f64(q, k, v, causal):
    q, k, v = q.double(), k.double(), v.double()
    g = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(g, 2), v.repeat_interleave(g, 2)
    s = torch.einsum("bihd,bjhd->bhij", q, k) * q.shape[-1] ** -0.5
    if causal:
        sq, sk = q.shape[1], k.shape[1]
        m = torch.arange(sk)[None] <= torch.arange(sq)[:, None] + (sk - sq)
        s = s.masked_fill(~m, -float("inf"))
    return torch.einsum("bhij,bjhd->bihd", torch.softmax(s, -1), v), torch.logsumexp(s, -1).transpose(1, 2)


def test_gradient_through_lse():
    q, k, v = _inputs(1, 20, 30, 2, 1, 16, 16, torch.float32)
    out, lse = at.attention(q, k, v, is_causal=True, return_lse=True)
    (out.square().sum() + lse.sin().sum()).backward()
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    ro, rl = _dense_f64(qd, kd, vd, True)
    (ro.square().sum() + rl.sin().sum()).backward()
    for a, b in ((q.grad, qd.grad), (k.grad, kd.grad), (v.grad, vd.grad)):
        assert rel_err(a, b) < 1e-5


def test_merge_is_differentiable_and_exact():
    q, k, v = _inputs(1, 12, 40, 2, 2, 16, 16, torch.float32)
    o1, l1 = at.attention(q, k[:, :15], v[:, :15], return_lse=True)
    o2, l2 = at.attention(q, k[:, 15:], v[:, 15:], return_lse=True)
    o, l = at.merge_attentions([o1, o2], [l1, l2])
    o.sum().backward()
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    ro, rl = _dense_f64(qd, kd, vd, False)
    ro.sum().backward()
    assert rel_err(o, ro.detach()) < TOL["float32"] and rel_err(l, rl.detach()) < TOL["float32"]
    for a, b in ((q.grad, qd.grad), (k.grad, kd.grad), (v.grad, vd.grad)):
        assert rel_err(a, b) < 1e-5


def test_varlen_autograd():
    cu = torch.tensor([0, 5, 5, 40], dtype=torch.int32)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(40, 2, 16, generator=g).requires_grad_()
    k = torch.randn(40, 1, 16, generator=g).requires_grad_()
    v = torch.randn(40, 1, 8, generator=g).requires_grad_()
    out = at.attention(q, k, v, is_causal=True, cu_seqlens_q=cu, cu_seqlens_k=cu)
    out.sum().backward()
    dout = np.ones(out.shape)
    gq, gk, gv = ref.attention_grad(dout, q, k, v, is_causal=True, cu_seqlens_q=cu, cu_seqlens_k=cu)
    assert rel_err(q.grad, gq) < GRAD_TOL["float32"] and rel_err(k.grad, gk) < GRAD_TOL["float32"]
    assert rel_err(v.grad, gv) < GRAD_TOL["float32"]


def test_opcheck():
    from torch.library import opcheck

    q, k, v = (x.detach() for x in _inputs(1, 9, 11, 2, 1, 8, 8, torch.float32))
    opcheck(torch.ops.attnkit.fmha_fwd.default, (q, k, v, True, -1, -1, 0.0, float("nan"), None, None))
    out, lse = torch.ops.attnkit.fmha_fwd(q, k, v, True, -1, -1, 0.0, float("nan"), None, None)
    opcheck(torch.ops.attnkit.fmha_bwd.default,
            (torch.randn_like(out), q, k, v, out, lse, None, True, -1, -1, 0.0, float("nan"), None, None))


def test_torch_compile_fullgraph_trains():
    q, k, v = _inputs(1, 33, 33, 2, 2, 16, 16, torch.float32)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss_fn(q, k, v):
        return (at.attention(q, k, v, is_causal=True) ** 2).sum()

    loss = loss_fn(q, k, v)
    loss.backward()
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    (_dense_f64(qd, kd, vd, True)[0] ** 2).sum().backward()
    assert rel_err(q.grad, qd.grad) < 1e-4


def test_plain_api_accepts_tensors_requiring_grad():
    q, k, v = _inputs(1, 8, 8, 1, 1, 8, 8, torch.float32)
    out = attnkit.attention(q, k, v)  # not differentiable, but no error and no copy of q
    assert isinstance(out, torch.Tensor) and not out.requires_grad
