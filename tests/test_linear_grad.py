"""Linear attention backward: dq, dk, dv, dg and d(initial_state).

Three independent derivations agree: the kernels' chunked backward (dg through
the q.dq - k.dk identity), the float64 adjoint recurrence in
attnkit.reference, and torch float64 autograd through the plain token-by-token
recurrence; plus central finite differences of the kernels' own forward.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DTYPES, GRAD_TOL, TOL, np_dtype, randn, rel_err
from test_linear import GATE_CAUSAL, GC_IDS, make

import attnkit
from attnkit import reference as ref

torch = pytest.importorskip("torch")


def grad_err(got, want) -> float:
    """rel_err, but for gradients that are exactly 0 in exact arithmetic (e.g.
    normalize with one token) an absolute floor keeps round-off from failing."""
    w = np.asarray(want, np.float64)
    if np.abs(w).max() < 1e-9:
        return float(np.abs(np.asarray(got, np.float64)).max())
    return rel_err(got, want)


def torch_recurrence(q, k, v, g, s0, scale, normalize, causal):
    """float64 autograd reference: the recurrence written with torch ops."""
    B, S, Hq, Dk = q.shape
    rep = Hq // k.shape[2]
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    st = s0 if s0 is not None else torch.zeros(B, Hq, Dk, v.shape[-1], dtype=q.dtype)
    z = torch.zeros(B, Hq, Dk, dtype=q.dtype)
    if not causal:
        st = st + torch.einsum("bthd,bthe->bhde", k, v)
        o = scale * torch.einsum("bthd,bhde->bthe", q, st)
        if normalize:
            o = o / (scale * torch.einsum("bthd,bhd->bth", q, k.sum(1)))[..., None]
        return o, st
    outs = []
    for t in range(S):
        if g is None:
            a = torch.ones(B, Hq, dtype=q.dtype)
        elif g.dim() == 1:
            a = torch.exp(g)[None].expand(B, Hq)
        else:
            a = torch.exp(g[:, t])
        st = a[..., None, None] * st + k[:, t, :, :, None] * v[:, t, :, None, :]
        z = a[..., None] * z + k[:, t]
        o = scale * torch.einsum("bhd,bhde->bhe", q[:, t], st)
        if normalize:
            o = o / (scale * torch.einsum("bhd,bhd->bh", q[:, t], z))[..., None]
        outs.append(o)
    return torch.stack(outs, 1), st


def autograd_reference(q, k, v, g, s0, do, dfin, normalize, causal):
    T = lambda x: None if x is None else torch.tensor(np.asarray(x, np.float64), requires_grad=True)  # noqa: E731
    tq, tk, tv, tg, ts = T(q), T(k), T(v), T(g), T(s0)
    o, f = torch_recurrence(tq, tk, tv, tg, ts, q.shape[-1] ** -0.5, normalize, causal)
    loss = (o * torch.tensor(np.asarray(do, np.float64))).sum()
    if dfin is not None:
        loss = loss + (f * torch.tensor(dfin, dtype=torch.float64)).sum()
    loss.backward()
    return [None if x is None else x.grad.numpy() for x in (tq, tk, tv, tg, ts)]


CASES = [  # (shape, gate, causal, normalize, states)
    ((1, 1, 1, 1, 8, 8), "head", True, False, True),
    ((2, 63, 2, 1, 24, 40), None, True, False, True),
    ((1, 65, 3, 3, 17, 33), "token", True, False, True),
    ((2, 70, 4, 2, 24, 16), "head", True, True, False),
    ((1, 129, 2, 1, 40, 24), "token", True, True, False),
    ((2, 50, 4, 2, 16, 24), None, False, False, True),
    ((1, 66, 2, 2, 24, 40), None, False, True, False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "S{}_{}_{}{}{}".format(
    c[0][1], c[1] or "nogate", "causal" if c[2] else "noncausal", "_norm" if c[3] else "",
    "_states" if c[4] else ""))
def test_reference_grad_matches_torch_autograd(rng, case):
    shape, gate, causal, normalize, states = case
    q, k, v, g, s0 = make(rng, shape, gate=gate, state=states, positive=normalize)
    do = randn(rng, (*q.shape[:-1], v.shape[-1]), "float32")
    dfin = randn(rng, (shape[0], shape[2], shape[4], shape[5]), "float32") if states else None
    want = autograd_reference(q, k, v, g, s0, do, dfin, normalize, causal)
    got = ref.linear_attention_grad(do, q, k, v, g=g, normalize=normalize, initial_state=s0,
                                    dfinal_state=dfin, is_causal=causal)
    for a, b in zip(got, want):
        if b is not None:
            assert grad_err(a, b) < 1e-10


SHAPES = [
    (1, 1, 1, 1, 8, 8),
    (2, 7, 4, 2, 16, 24),
    (1, 63, 3, 1, 24, 40),
    (2, 64, 2, 2, 33, 17),
    (1, 65, 2, 1, 72, 56),
    (1, 129, 4, 4, 40, 24),
    (1, 1000, 2, 1, 64, 48),
]


def _check_backward(rng, shape, dtype, gate, states, normalize=False, causal=True, dout=True):
    q, k, v, g, s0 = make(rng, shape, dtype, gate=gate, state=states, positive=normalize)
    do = randn(rng, (*q.shape[:-1], v.shape[-1]), dtype) if dout else None
    dfin = randn(rng, (shape[0], shape[2], shape[4], shape[5]), "float32") if states else None
    got = attnkit.linear_attention_backward(do, q, k, v, g=g, normalize=normalize, initial_state=s0,
                                            dfinal_state=dfin, is_causal=causal)
    want = ref.linear_attention_grad(do, q, k, v, g=g, normalize=normalize, initial_state=s0,
                                     dfinal_state=dfin, is_causal=causal)
    names = ["dq", "dk", "dv", "dg", "dinit"]
    for name, a, b, x in zip(names, got, want, (q, k, v, g, s0)):
        if x is None:
            assert a is None, name
            continue
        assert a.shape == x.shape and a.dtype == x.dtype, name
        tol = GRAD_TOL[dtype] if name in ("dq", "dk", "dv") else GRAD_TOL[dtype] * 2
        assert grad_err(a, b) < tol, (name, grad_err(a, b))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_S{}_H{}-{}_Dk{}_Dv{}".format(*s))
@pytest.mark.parametrize("gate", [None, "head", "token"], ids=lambda g: g or "nogate")
@pytest.mark.parametrize("states", [False, True], ids=["nostate", "states"])
def test_backward_float32(rng, shape, gate, states):
    _check_backward(rng, shape, "float32", gate, states)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gate,causal", GATE_CAUSAL, ids=GC_IDS)
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "normalize"])
def test_backward_dtypes(rng, dtype, gate, causal, normalize):
    _check_backward(rng, (2, 130, 4, 2, 24, 40), dtype, gate, states=not normalize,
                    normalize=normalize, causal=causal)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("shape", [(1, 70, 2, 1, 8, 8), (2, 65, 2, 2, 8, 136), (1, 130, 1, 1, 136, 8)],
                         ids=["Dk8_Dv8", "Dk8_Dv136", "Dk136_Dv8"])
@pytest.mark.parametrize("gate", [None, "head", "token"], ids=lambda g: g or "nogate")
def test_backward_small_and_lopsided_head_dims(rng, dtype, shape, gate):
    """Head dims far below and above the 64-token chunk (the AMX path's tiles
    and scratch are sized by both)."""
    _check_backward(rng, shape, dtype, gate, states=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 70, 2, 1, 8, 8), (2, 65, 2, 2, 8, 136), (1, 130, 1, 1, 136, 8),
                                   (1, 1000, 6, 2, 64, 48)],
                         ids=["Dk8_Dv8", "Dk8_Dv136", "Dk136_Dv8", "S1000_gqa3"])
@pytest.mark.parametrize("mode", ["dout", "dfinal-only", "normalize"])
def test_noncausal_backward_shapes(rng, dtype, shape, mode):
    """The non-causal backward (bf16: on AMX tiles) over lopsided head dims, GQA,
    several chunks and segments, a gradient from the final state alone, and
    normalize (positive features, no states)."""
    # Other inputs per dtype: a workspace reused from the same shape in another
    # dtype must not hold this call's answer (a GQA partial left unwritten).
    rng.standard_normal(1 + DTYPES.index(dtype))
    _check_backward(rng, shape, dtype, None, states=mode != "normalize", causal=False,
                    dout=mode != "dfinal-only", normalize=mode == "normalize")


@pytest.mark.parametrize("dtype", DTYPES)
def test_noncausal_initial_state_gradient_keeps_fp32_accuracy(rng, dtype):
    """d(initial_state) = scale sum q^T dO + dfinal: products of the (rounded) inputs
    summed in fp32, so ~1e-6 in every dtype; the scale (1/sqrt(40) is not a power of
    two) must not be rounded into a bf16 operand (that gave ~2e-3)."""
    q, k, v, _, s0 = make(rng, (1, 300, 3, 1, 40, 72), dtype, state=True)
    do = randn(rng, (*q.shape[:-1], v.shape[-1]), dtype)
    dfin = randn(rng, (1, 3, 40, 72), "float32")
    got = attnkit.linear_attention_backward(do, q, k, v, initial_state=s0, dfinal_state=dfin, is_causal=False)
    want = ref.linear_attention_grad(do, q, k, v, initial_state=s0, dfinal_state=dfin, is_causal=False)
    assert grad_err(got[4], want[4]) < 1e-4


def test_noncausal_normalize_dq_keeps_its_precision(rng):
    """With normalize, dq's two terms (dO / den against S_v, and the denominator's
    gradient against z) nearly cancel: computed from bf16 copies of dOa and S its
    error was ~9e-3; the fp32 product keeps it at the output's ~3e-3."""
    q, k, v, _, _ = make(rng, (1, 300, 3, 1, 40, 72), "bfloat16", positive=True)
    do = randn(rng, (*q.shape[:-1], v.shape[-1]), "bfloat16")
    got = attnkit.linear_attention_backward(do, q, k, v, normalize=True, is_causal=False)
    want = ref.linear_attention_grad(do, q, k, v, normalize=True, is_causal=False)
    assert grad_err(got[0], want[0]) < 6e-3


def test_backward_only_final_state_gradient(rng):
    """dout absent (None): the gradient comes from the final state alone."""
    _check_backward(rng, (2, 100, 2, 2, 16, 24), "float32", "token", states=True, dout=False)


@pytest.mark.parametrize("gate,causal", GATE_CAUSAL, ids=GC_IDS)
def test_backward_varlen(rng, gate, causal):
    lens = [5, 0, 64, 130, 1, 70]
    cu = np.cumsum([0] + lens).astype(np.int32)
    T, Hq, Hkv, Dk, Dv = int(cu[-1]), 4, 2, 24, 40
    q, k = randn(rng, (T, Hq, Dk), "float32"), randn(rng, (T, Hkv, Dk), "float32")
    v, do = randn(rng, (T, Hkv, Dv), "float32"), randn(rng, (T, Hq, Dv), "float32")
    g = {None: None, "head": -rng.uniform(0.01, 1, Hq).astype(np.float32),
         "token": -rng.uniform(0, 1, (T, Hq)).astype(np.float32)}[gate]
    s0 = randn(rng, (len(lens), Hq, Dk, Dv), "float32")
    dfin = randn(rng, (len(lens), Hq, Dk, Dv), "float32")
    kw = dict(g=g, initial_state=s0, dfinal_state=dfin, is_causal=causal, cu_seqlens=cu)
    got = attnkit.linear_attention_backward(do, q, k, v, **kw)
    want = ref.linear_attention_grad(do, q, k, v, **kw)
    for a, b in zip(got, want):
        if a is not None:
            assert rel_err(a, b) < GRAD_TOL["float32"]
    # the empty sequence: S_final = S_0, so d S_0 = d S_final
    np.testing.assert_array_equal(got[4][1], dfin[1])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("H", [1, 3])
def test_backward_segmented(rng, dtype, threads, H):
    attnkit.set_num_threads(threads)
    try:
        _check_backward(rng, (1, 1100, H, H, 32, 24), dtype, "token", states=True)
        _check_backward(rng, (1, 700, H, H, 16, 16), dtype, "head", states=False,
                        normalize=True)
    finally:
        attnkit.set_num_threads(0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("gate", [None, "head", "token"], ids=lambda g: g or "nogate")
def test_backward_heads_in_lockstep(rng, dtype, gate):
    """Both backward sweeps run the heads of a sequence in lockstep groups (as the
    forward), each head with its own state, adjoint, decays, decay matrix and
    dS_final: 1, 2 and 3 threads (groups of 8, 8 and 5 heads) give the same bits,
    and the gradients match the float64 adjoint recurrence; with GQA, an initial
    and a final state (the split dS_final path when there is a gate), and varlen
    sequences, which a group never mixes."""
    B, S, Hq, Hkv, Dk, Dv = 2, 200, 8, 4, 32, 24
    q, k, v, g, s0 = make(rng, (B, S, Hq, Hkv, Dk, Dv), dtype, gate=gate, state=True)
    do = randn(rng, (B, S, Hq, Dv), dtype)
    dfin = randn(rng, (B, Hq, Dk, Dv), "float32")
    kw = dict(g=g, initial_state=s0, dfinal_state=dfin)
    got = []
    for threads in (1, 2, 3):
        attnkit.set_num_threads(threads)
        try:
            got.append(attnkit.linear_attention_backward(do, q, k, v, **kw))
        finally:
            attnkit.set_num_threads(0)
    for again in got[1:]:
        for a, b in zip(got[0], again):
            if a is not None:
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    want = ref.linear_attention_grad(do, q, k, v, **kw)
    for name, a, b in zip(["dq", "dk", "dv", "dg", "dinit"], got[0], want):
        if b is not None:
            tol = GRAD_TOL[dtype] if name in ("dq", "dk", "dv") else GRAD_TOL[dtype] * 2
            assert grad_err(a, b) < tol, (name, grad_err(a, b))
    # varlen: three sequences packed
    cu = np.array([0, 70, 71, 200], np.int32)
    gp = g if gate != "token" else g[0]
    sp, fp = np.concatenate([s0, s0[:1]]), np.concatenate([dfin, dfin[:1]])
    kw = dict(g=gp, initial_state=sp, dfinal_state=fp, cu_seqlens=cu)
    a_all = attnkit.linear_attention_backward(do[0], q[0], k[0], v[0], **kw)
    w_all = ref.linear_attention_grad(do[0], q[0], k[0], v[0], **kw)
    for name, a, b in zip(["dq", "dk", "dv", "dg", "dinit"], a_all, w_all):
        if b is not None:
            tol = GRAD_TOL[dtype] if name in ("dq", "dk", "dv") else GRAD_TOL[dtype] * 2
            assert grad_err(a, b) < tol, (name, grad_err(a, b))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_backward_is_deterministic(rng, dtype):
    q, k, v, g, s0 = make(rng, (2, 300, 4, 2, 32, 24), dtype, gate="token", state=True)
    do = randn(rng, (2, 300, 4, 24), dtype)
    first = attnkit.linear_attention_backward(do, q, k, v, g=g, initial_state=s0)
    for threads in (0, 0, 1, 2):  # 8 (batch, head) units: the same schedule for 1 or 2 threads
        attnkit.set_num_threads(threads)
        try:
            again = attnkit.linear_attention_backward(do, q, k, v, g=g, initial_state=s0)
        finally:
            attnkit.set_num_threads(0)
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("gate", ["head", "token"])
def test_dg_finite_differences(rng, gate):
    """dg and d(initial_state) against central differences of the kernels' own
    forward (float32, a smooth loss, a few coordinates)."""
    q, k, v, g, s0 = make(rng, (1, 90, 2, 2, 8, 8), gate=gate, state=True, gate_range=(0.0, 0.5))
    w = randn(rng, (1, 90, 2, 8), "float32")
    wf = randn(rng, (1, 2, 8, 8), "float32")

    def loss(gg, ss):
        o, f = attnkit.linear_attention(q, k, v, g=gg, initial_state=ss, return_final_state=True)
        return float((o.astype(np.float64) * w).sum() + (f.astype(np.float64) * wf).sum())

    _, _, _, dg, dinit = attnkit.linear_attention_backward(w, q, k, v, g=g, initial_state=s0,
                                                           dfinal_state=wf)
    eps = 1e-2
    for idx in ([(0,), (1,)] if gate == "head" else [(0, 0, 0), (0, 45, 1), (0, 89, 0)]):
        gp, gm = g.copy(), g.copy()
        gp[idx] += eps
        gm[idx] -= eps
        fd = (loss(gp, s0) - loss(gm, s0)) / (2 * eps)
        assert abs(fd - dg[idx]) <= 2e-3 * max(1.0, abs(fd)), (idx, fd, dg[idx])
    for idx in [(0, 0, 0, 0), (0, 1, 3, 5)]:
        sp, sm = s0.copy(), s0.copy()
        sp[idx] += eps
        sm[idx] -= eps
        fd = (loss(g, sp) - loss(g, sm)) / (2 * eps)
        assert abs(fd - dinit[idx]) <= 2e-3 * max(1.0, abs(fd)), (idx, fd, dinit[idx])


def test_long_strong_decay_gradients_finite(rng):
    """20,000 tokens, strong per-token decay and large inputs: finite gradients
    that match the float64 adjoint recurrence."""
    B, S, H, D = 1, 20_000, 1, 16
    q = (rng.standard_normal((B, S, H, D)) * 1e2).astype(np.float32)
    k = (rng.standard_normal((B, S, H, D)) * 1e2).astype(np.float32)
    v = (rng.standard_normal((B, S, H, D)) * 1e2).astype(np.float32)
    g = -rng.uniform(0, 30, (B, S, H)).astype(np.float32)
    g[:, ::997] = -np.inf
    do = randn(rng, (B, S, H, D), "float32")
    got = attnkit.linear_attention_backward(do, q, k, v, g=g)
    want = ref.linear_attention_grad(do, q, k, v, g=g)
    for a, b in zip(got[:4], want[:4]):
        assert np.isfinite(a).all()
        assert rel_err(a, b) < GRAD_TOL["float32"]
