"""Neighborhood attention in attnkit.torch (custom ops, autograd, torch.compile)
and against NATTEN, the reference library, when it is installed."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GRAD_TOL, TOL, rel_err

torch = pytest.importorskip("torch")
import attnkit  # noqa: E402
import attnkit.torch as at  # noqa: E402
from attnkit import reference as ref  # noqa: E402

try:
    import natten  # noqa: F401

    HAVE_NATTEN = True
except Exception:  # pragma: no cover - depends on the environment
    HAVE_NATTEN = False
needs_natten = pytest.mark.skipif(not HAVE_NATTEN, reason="NATTEN is not installed (pip install natten)")


def _inputs(spatial, Hq, Hkv, D, Dv, dtype=torch.float32, n_extra=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype).requires_grad_()  # noqa: E731
    q, k, v = mk(2, *spatial, Hq, D), mk(2, *spatial, Hkv, D), mk(2, *spatial, Hkv, Dv)
    extra = {}
    if n_extra:
        extra = dict(additional_keys=mk(2, n_extra, Hkv, D), additional_values=mk(2, n_extra, Hkv, Dv))
    return q, k, v, extra


CASES = [
    ((33,), 7, dict(stride=2, is_causal=True)),
    ((9, 11), (3, 4), dict(dilation=(2, 1), is_causal=(False, True))),
    ((5, 6, 7), (2, 3, 3), dict(stride=(1, 2, 3))),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("n_extra", [0, 6], ids=["plain", "extra"])
def test_autograd_matches_reference(dtype, case, n_extra):
    spatial, ks, kw = case
    q, k, v, extra = _inputs(spatial, 4, 2, 16, 24, dtype, n_extra)
    out, lse = at.neighborhood_attention(q, k, v, ks, return_lse=True, **kw, **extra)
    assert out.dtype == dtype and lse.dtype == torch.float32
    name = str(dtype).replace("torch.", "")
    ro, rl = ref.neighborhood_attention(q, k, v, ks, **kw, **extra)
    assert rel_err(out, ro) < TOL[name]
    dout = torch.randn_like(out)
    (out * dout).sum().backward()
    want = ref.neighborhood_attention_grad(dout, q, k, v, ks, **kw, **extra)
    leaves = [q, k, v] + ([extra["additional_keys"], extra["additional_values"]] if extra else [])
    for leaf, exp in zip(leaves, want):
        assert rel_err(leaf.grad, exp) < GRAD_TOL[name]


def test_gradient_through_lse_matches_float64_autograd():
    q, k, v, extra = _inputs((8, 9), 2, 1, 16, 8, n_extra=3)
    kw = dict(kernel_size=(3, 4), stride=(2, 1), dilation=(1, 2), is_causal=(True, False))
    out, lse = at.neighborhood_attention(q, k, v, **kw, return_lse=True, **extra)
    (out.square().sum() + lse.sin().sum()).backward()
    # float64 torch autograd through the explicit mask
    leaves = [q, k, v, extra["additional_keys"], extra["additional_values"]]
    qd, kd, vd, ekd, evd = (x.detach().double().requires_grad_() for x in leaves)
    mask = torch.from_numpy(ref.neighborhood_mask((8, 9), **kw))
    mask = torch.cat([mask, torch.ones(72, 3, dtype=torch.bool)], 1)
    K = torch.cat([kd.reshape(2, 72, 1, 16), ekd], 1).expand(-1, -1, 2, -1)
    V = torch.cat([vd.reshape(2, 72, 1, 8), evd], 1).expand(-1, -1, 2, -1)
    s = torch.einsum("bihd,bjhd->bhij", qd.reshape(2, 72, 2, 16), K) * 16 ** -0.5
    s = s.masked_fill(~mask, -float("inf"))
    ro = torch.einsum("bhij,bjhd->bihd", s.softmax(-1), V)
    rl = s.logsumexp(-1).transpose(1, 2)
    (ro.square().sum() + rl.sin().sum()).backward()
    for a, b in zip(leaves, (qd, kd, vd, ekd, evd)):
        assert rel_err(a.grad, b.grad) < 1e-5


def test_na1d_na2d_na3d_wrappers():
    for spatial, fn in (((20,), at.na1d), ((6, 7), at.na2d), ((4, 5, 6), at.na3d)):
        q, k, v, _ = _inputs(spatial, 2, 2, 8, 8)
        out = fn(q, k, v, 3, 1, 1, False)  # NATTEN's positional order
        assert torch.equal(out, at.neighborhood_attention(q, k, v, 3))
    with pytest.raises(ValueError, match="na2d: q must have 5 dimensions"):
        at.na2d(q, k, v, 3)


def test_opcheck():
    from torch.library import opcheck

    q, k, v, extra = _inputs((7, 6), 2, 1, 8, 8, n_extra=2)
    q, k, v = q.detach(), k.detach(), v.detach()
    ek, ev = extra["additional_keys"].detach(), extra["additional_values"].detach()
    args = ([3, 3], [1, 2], [2, 1], [True, False], float("nan"))
    opcheck(torch.ops.attnkit.na_fwd.default, (q, k, v, *args, None, None))
    opcheck(torch.ops.attnkit.na_fwd.default, (q, k, v, *args, ek, ev))
    out, lse = torch.ops.attnkit.na_fwd(q, k, v, *args, ek, ev)
    opcheck(torch.ops.attnkit.na_bwd.default,
            (torch.randn_like(out), q, k, v, out, lse, None, *args, ek, ev))
    opcheck(torch.ops.attnkit.na_bwd.default,
            (torch.randn_like(out), q, k, v, out, lse, torch.randn_like(lse), *args, None, None))


def test_torch_compile_fullgraph_trains():
    q, k, v, extra = _inputs((9, 10), 2, 2, 16, 16, n_extra=4)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss_fn(q, k, v, ek, ev):
        out = at.na2d(q, k, v, (3, 5), dilation=(2, 1), is_causal=(False, True),
                      additional_keys=ek, additional_values=ev)
        return (out ** 2).sum()

    loss = loss_fn(q, k, v, extra["additional_keys"], extra["additional_values"])
    loss.backward()
    dout = 2 * at.na2d(q, k, v, (3, 5), dilation=(2, 1), is_causal=(False, True), **extra).detach()
    want = ref.neighborhood_attention_grad(dout, q, k, v, (3, 5), dilation=(2, 1),
                                           is_causal=(False, True), **extra)
    assert rel_err(q.grad, want[0]) < 1e-4 and rel_err(extra["additional_keys"].grad, want[3]) < 1e-4


# ------------------------------------------------------------------ NATTEN as a peer
NATTEN_CASES = [
    ((40,), 7, {}),
    ((40,), 8, dict(stride=3, dilation=2, is_causal=True)),
    ((12, 14), (5, 3), {}),
    ((12, 14), (4, 5), dict(stride=(2, 3), dilation=(2, 1), is_causal=(True, False))),
    ((6, 8, 9), (3, 3, 4), dict(stride=(1, 2, 1), dilation=(2, 1, 1), is_causal=(False, True, False))),
]


def _natten_fn(nd):
    import natten

    return {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[nd]


@needs_natten
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("case", NATTEN_CASES, ids=["1d", "1d-mix", "2d", "2d-mix", "3d-mix"])
def test_matches_natten(case):
    spatial, ks, kw = case
    # NATTEN's CPU path (flex) has no backward: forward outputs and LSE only.
    q, k, v, extra = (x.detach() if isinstance(x, torch.Tensor) else x
                      for x in _inputs(spatial, 4, 2, 32, 32, n_extra=5))
    nat = _natten_fn(len(spatial))
    o_ref, l_ref = nat(q, k, v, ks, backend="flex-fna", return_lse=True, **kw)
    o, l = at.neighborhood_attention(q, k, v, ks, return_lse=True, **kw)
    assert (o - o_ref).abs().max() < 2e-5 and (l - l_ref).abs().max() < 2e-5
    # With additional tokens NATTEN merges a separate attention, as we do.
    ek, ev = (x.detach() for x in extra.values())
    o_ref = nat(q.detach(), k.detach(), v.detach(), ks, backend="flex-fna", additional_keys=ek,
                additional_values=ev, **kw)
    o = at.neighborhood_attention(q.detach(), k.detach(), v.detach(), ks, additional_keys=ek,
                                  additional_values=ev, **kw)
    assert (o - o_ref).abs().max() < 2e-5
