"""Linear attention (DESIGN §2.4) against the float64 token-by-token recurrence.

Forward: every gate kind, initial/final states, GQA, Dk != Dv (not powers of
two), lengths around the chunk size (1, 7, 63, 64, 65, 129, 1000), every dtype,
varlen, normalize, non-causal; chunked == recurrent == prefix + decode steps;
20,000 tokens with strong decay and large inputs stay finite and exact.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DTYPES, TOL, np_dtype, randn, rel_err

import attnkit
from attnkit import reference as ref

# (B, S, Hq, Hkv, Dk, Dv)
SHAPES = [
    (1, 1, 1, 1, 8, 8),
    (2, 7, 4, 2, 16, 24),
    (1, 63, 3, 1, 24, 40),
    (2, 64, 2, 2, 33, 17),
    (1, 65, 2, 1, 72, 56),
    (1, 129, 4, 4, 40, 24),
    (1, 1000, 2, 1, 64, 48),
]
GATES = [None, "head", "token"]


def _ids(s):
    return "B{}_S{}_H{}-{}_Dk{}_Dv{}".format(*s)


def make(rng, shape, dtype="float32", gate=None, state=False, gate_range=(0.0, 1.0), positive=False):
    B, S, Hq, Hkv, Dk, Dv = shape
    q = randn(rng, (B, S, Hq, Dk), "float32")
    k = randn(rng, (B, S, Hkv, Dk), "float32")
    if positive:  # a positive feature map, as normalize expects
        q, k = attnkit.feature_map(q, "elu+1"), attnkit.feature_map(k, "elu+1")
    dt = np_dtype(dtype)
    q, k = q.astype(dt), k.astype(dt)
    v = randn(rng, (B, S, Hkv, Dv), dtype)
    g = None
    lo, hi = gate_range
    if gate == "head":
        g = -rng.uniform(lo + 0.01, hi, Hq).astype(np.float32)
    elif gate == "token":
        g = -rng.uniform(lo, hi, (B, S, Hq)).astype(np.float32)
    s0 = randn(rng, (B, Hq, Dk, Dv), "float32") if state else None
    return q, k, v, g, s0


@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
@pytest.mark.parametrize("gate", GATES, ids=lambda g: g or "nogate")
@pytest.mark.parametrize("state", [False, True], ids=["zero-state", "initial-state"])
def test_forward_float32(rng, shape, gate, state):
    q, k, v, g, s0 = make(rng, shape, gate=gate, state=state)
    out, fin = attnkit.linear_attention(q, k, v, g=g, initial_state=s0, return_final_state=True)
    ro, rf = ref.linear_attention(q, k, v, g=g, initial_state=s0)
    B, S, Hq, Hkv, Dk, Dv = shape
    assert out.shape == (B, S, Hq, Dv) and out.dtype == np.float32
    assert fin.shape == (B, Hq, Dk, Dv) and fin.dtype == np.float32
    assert rel_err(out, ro) < TOL["float32"]
    assert rel_err(fin, rf) < TOL["float32"]
    # without return_final_state: the output alone, identical
    out2 = attnkit.linear_attention(q, k, v, g=g, initial_state=s0)
    np.testing.assert_array_equal(out2, out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[3], SHAPES[4], (1, 300, 2, 2, 128, 128)], ids=_ids)
@pytest.mark.parametrize("gate", GATES, ids=lambda g: g or "nogate")
def test_forward_dtypes(rng, dtype, shape, gate):
    q, k, v, g, s0 = make(rng, shape, dtype, gate=gate, state=True)
    out, fin = attnkit.linear_attention(q, k, v, g=g, initial_state=s0, return_final_state=True)
    ro, rf = ref.linear_attention(q, k, v, g=g, initial_state=s0)
    assert out.dtype == q.dtype and fin.dtype == np.float32
    assert rel_err(out, ro) < TOL[dtype]
    assert rel_err(fin, rf) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_gate_dtypes(rng, dtype):
    """g may have its own float dtype; it is read as given."""
    q, k, v, g, _ = make(rng, (1, 70, 2, 2, 16, 16), gate="token")
    g = g.astype(np_dtype(dtype))
    out = attnkit.linear_attention(q, k, v, g=g)
    assert rel_err(out, ref.linear_attention(q, k, v, g=g)[0]) < TOL["float32"]


def test_scale_and_default_scale(rng):
    q, k, v, g, _ = make(rng, (1, 50, 2, 1, 20, 12), gate="head")
    for scale in (None, 0.37, -1.5):
        out = attnkit.linear_attention(q, k, v, g=g, scale=scale)
        assert rel_err(out, ref.linear_attention(q, k, v, g=g, scale=scale)[0]) < TOL["float32"]
    np.testing.assert_allclose(attnkit.linear_attention(q, k, v, scale=20 ** -0.5),
                               attnkit.linear_attention(q, k, v), rtol=0, atol=0)


@pytest.mark.parametrize("gate", GATES, ids=lambda g: g or "nogate")
@pytest.mark.parametrize("split", [1, 63, 64, 65, 200])
def test_prefix_plus_steps_equals_full(rng, gate, split):
    """chunked (full call) == prefix call + decode steps of 1 and 3 tokens, and
    both == the recurrence."""
    shape = (2, 260, 4, 2, 24, 40)
    q, k, v, g, s0 = make(rng, shape, gate=gate, state=True)
    full, full_fin = attnkit.linear_attention(q, k, v, g=g, initial_state=s0, return_final_state=True)
    gsl = (lambda a, b: g if g is None or g.ndim == 1 else g[:, a:b])
    out_p, state = attnkit.linear_attention(q[:, :split], k[:, :split], v[:, :split], g=gsl(0, split),
                                            initial_state=s0, return_final_state=True)
    outs = [out_p]
    t = split
    while t < shape[1]:
        n = 1 if (t - split) % 2 == 0 else 3
        n = min(n, shape[1] - t)
        if n == 1:  # the single-token form [B, H, D]
            gt = None if g is None else (g if g.ndim == 1 else g[:, t])
            o, state = attnkit.linear_attention_step(q[:, t], k[:, t], v[:, t], state, g=gt)
            outs.append(o[:, None])
        else:
            o, state = attnkit.linear_attention_step(q[:, t:t + n], k[:, t:t + n], v[:, t:t + n],
                                                     state, g=gsl(t, t + n))
            outs.append(o)
        t += n
    stepped = np.concatenate(outs, axis=1)
    assert rel_err(stepped, full) < TOL["float32"]
    assert rel_err(state, full_fin) < TOL["float32"]
    ro, rf = ref.linear_attention(q, k, v, g=g, initial_state=s0)
    assert rel_err(full, ro) < TOL["float32"] and rel_err(stepped, ro) < TOL["float32"]


def test_step_does_not_modify_state(rng):
    q, k, v, g, s0 = make(rng, (1, 1, 2, 2, 8, 8), gate="head", state=True)
    keep = s0.copy()
    attnkit.linear_attention_step(q, k, v, s0, g=g)
    np.testing.assert_array_equal(s0, keep)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", ["per-token", "per-head", "resets", "huge-gates"])
def test_long_strong_decay_stays_finite(rng, dtype, case):
    """20,000 tokens, strong decay, inputs of size ~1e3: no overflow/underflow to
    NaN anywhere (cumulative log decay reaches ~-1e5 and below), and the result
    is the recurrence's."""
    B, S, H, D = 1, 20_000, 2, 16
    q = (rng.standard_normal((B, S, H, D)) * 1e3).astype(np_dtype(dtype))
    k = (rng.standard_normal((B, S, H, D)) * 1e3).astype(np_dtype(dtype))
    v = (rng.standard_normal((B, S, H, D)) * 1e3).astype(np_dtype(dtype))
    if case == "per-token":
        g = -rng.uniform(0, 30, (B, S, H)).astype(np.float32)
    elif case == "per-head":
        g = np.array([-20.0, -5.0], np.float32)
    elif case == "resets":  # -inf resets the state exactly; the rest decays gently
        g = -rng.uniform(0, 0.05, (B, S, H)).astype(np.float32)
        g[:, rng.integers(0, S, 50)] = -np.inf
    else:  # gates far beyond exp's range, and exact zeros
        g = -rng.choice([0.0, 1e-3, 50.0, 1e4, 1e30], (B, S, H)).astype(np.float32)
    out, fin = attnkit.linear_attention(q, k, v, g=g, return_final_state=True)
    assert np.isfinite(np.asarray(out, np.float64)).all() and np.isfinite(fin).all()
    ro, rf = ref.linear_attention(q, k, v, g=g)
    assert rel_err(out, ro) < TOL[dtype]
    assert rel_err(fin, rf) < TOL[dtype]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_positive_and_mixed_gates_follow_the_recurrence(rng, dtype):
    """g > 0 is accepted and grows the state exactly like the recurrence; long
    stretches of growth and decay alternate (the AMX path's lazy state scale
    must stay in range both ways)."""
    q, k, v, _, s0 = make(rng, (1, 150, 2, 2, 16, 16), dtype, state=True)
    g = rng.uniform(0, 0.02, (1, 150, 2)).astype(np.float32)
    out, fin = attnkit.linear_attention(q, k, v, g=g, initial_state=s0, return_final_state=True)
    ro, rf = ref.linear_attention(q, k, v, g=g, initial_state=s0)
    assert rel_err(out, ro) < TOL[dtype] and rel_err(fin, rf) < TOL[dtype]
    q, k, v, _, s0 = make(rng, (1, 6000, 1, 1, 32, 32), dtype, state=True)
    sign = np.where((np.arange(6000) // 1000) % 2 == 0, 1.0, -1.0)  # e^(+-30) per stretch
    g = (sign * rng.uniform(0, 0.06, 6000)).astype(np.float32)[None, :, None]
    out, fin = attnkit.linear_attention(q, k, v, g=g, initial_state=s0, return_final_state=True)
    ro, rf = ref.linear_attention(q, k, v, g=g, initial_state=s0)
    assert np.isfinite(np.asarray(out, np.float64)).all()
    assert rel_err(out, ro) < TOL[dtype] and rel_err(fin, rf) < TOL[dtype]


# Gates exist for the causal form only (non-causal + g is an error, see test_linear_errors).
GATE_CAUSAL = [(None, True), ("head", True), ("token", True), (None, False)]
GC_IDS = ["nogate-causal", "head-causal", "token-causal", "noncausal"]


@pytest.mark.parametrize("gate,causal", GATE_CAUSAL, ids=GC_IDS)
def test_varlen(rng, gate, causal):
    lens = [5, 0, 64, 130, 1, 70]
    cu = np.cumsum([0] + lens).astype(np.int32)
    T, Hq, Hkv, Dk, Dv = int(cu[-1]), 4, 2, 24, 40
    q = randn(rng, (T, Hq, Dk), "float32")
    k = randn(rng, (T, Hkv, Dk), "float32")
    v = randn(rng, (T, Hkv, Dv), "float32")
    g = None
    if gate == "head":
        g = -rng.uniform(0.01, 1, Hq).astype(np.float32)
    elif gate == "token":
        g = -rng.uniform(0, 1, (T, Hq)).astype(np.float32)
    s0 = randn(rng, (len(lens), Hq, Dk, Dv), "float32")
    out, fin = attnkit.linear_attention(q, k, v, g=g, is_causal=causal, initial_state=s0,
                                        return_final_state=True, cu_seqlens=cu)
    ro, rf = ref.linear_attention(q, k, v, g=g, is_causal=causal, initial_state=s0, cu_seqlens=cu)
    assert out.shape == (T, Hq, Dv) and fin.shape == (len(lens), Hq, Dk, Dv)
    assert rel_err(out, ro) < TOL["float32"] and rel_err(fin, rf) < TOL["float32"]
    # an empty sequence passes its initial state through
    np.testing.assert_array_equal(fin[1], s0[1])
    # cu_seqlens as a Python list works too
    out2 = attnkit.linear_attention(q, k, v, g=g, is_causal=causal, initial_state=s0,
                                    cu_seqlens=[int(x) for x in cu])
    np.testing.assert_array_equal(out2, out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gate,causal", GATE_CAUSAL, ids=GC_IDS)
def test_normalize(rng, dtype, gate, causal):
    q, k, v, g, _ = make(rng, (2, 100, 4, 2, 24, 40), dtype, gate=gate, positive=True)
    out = attnkit.linear_attention(q, k, v, g=g, normalize=True, is_causal=causal)
    ro, _ = ref.linear_attention(q, k, v, g=g, normalize=True, is_causal=causal)
    assert rel_err(out, ro) < TOL[dtype]


def test_normalize_zero_denominator_gives_zero(rng):
    """q . z == 0 exactly (relu features that are all zero) gives 0, never NaN."""
    q, k, v, _, _ = make(rng, (1, 80, 2, 2, 16, 16))
    q = attnkit.feature_map(q, "relu")
    q[:, 10:20] = 0.0  # these rows see q . z = 0
    k = attnkit.feature_map(k, "relu")
    k[:, :5] = 0.0     # and the first rows have z = 0
    for causal in (True, False):
        out = attnkit.linear_attention(q, k, v, normalize=True, is_causal=causal)
        assert np.isfinite(out).all()
        assert (out[:, 10:20] == 0).all()
        if causal:
            assert (out[:, :5] == 0).all()
        ro, _ = ref.linear_attention(q, k, v, normalize=True, is_causal=causal)
        assert rel_err(out, ro) < TOL["float32"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_noncausal(rng, dtype):
    q, k, v, _, s0 = make(rng, (2, 200, 6, 3, 40, 72), dtype, state=True)
    out, fin = attnkit.linear_attention(q, k, v, is_causal=False, initial_state=s0, return_final_state=True)
    ro, rf = ref.linear_attention(q, k, v, is_causal=False, initial_state=s0)
    assert rel_err(out, ro) < TOL[dtype] and rel_err(fin, rf) < TOL[dtype]
    # o = scale q (S0 + k^T v), directly
    qf, kf, vf = (np.asarray(x, np.float64) for x in (q, k, v))
    S = s0.astype(np.float64) + np.einsum("bthd,bthe->bhde", np.repeat(kf, 2, 2), np.repeat(vf, 2, 2))
    assert rel_err(out, 40 ** -0.5 * np.einsum("bthd,bhde->bthe", qf, S)) < TOL[dtype]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("H", [1, 3])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_segmented_schedule(rng, threads, H, dtype):
    """Few (batch, head) units on several threads run in segments (local states,
    scan, outputs; the bf16 AMX path runs a segment of all heads in lockstep):
    same result as the recurrence."""
    q, k, v, g, s0 = make(rng, (1, 1100, H, H, 32, 24), dtype, gate="token", state=True)
    attnkit.set_num_threads(threads)
    try:
        out, fin = attnkit.linear_attention(q, k, v, g=g, initial_state=s0, return_final_state=True)
    finally:
        attnkit.set_num_threads(0)
    ro, rf = ref.linear_attention(q, k, v, g=g, initial_state=s0)
    assert rel_err(out, ro) < TOL[dtype] and rel_err(fin, rf) < TOL[dtype]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("gate", GATES, ids=lambda g: g or "nogate")
@pytest.mark.parametrize("Dk", [64, 40])
def test_heads_in_lockstep(rng, dtype, gate, Dk):
    """Many (batch, head) units run their chunks in lockstep groups of up to 8
    heads of one sequence (fp32, and bf16 on AMX CPUs), each with its own state, decays
    and decay matrix: every thread count gives the same bits, and the recurrence's
    values; also with varlen sequences, which a group never mixes."""
    q, k, v, g, s0 = make(rng, (2, 300, 8, 4, Dk, 48), dtype, gate=gate, state=True)
    got = []
    for threads in (1, 2, 3):
        attnkit.set_num_threads(threads)
        try:
            got.append(attnkit.linear_attention(q, k, v, g=g, initial_state=s0, return_final_state=True))
        finally:
            attnkit.set_num_threads(0)
    for out, fin in got[1:]:
        assert np.array_equal(np.asarray(out), np.asarray(got[0][0]))
        assert np.array_equal(fin, got[0][1])
    ro, rf = ref.linear_attention(q, k, v, g=g, initial_state=s0)
    assert rel_err(got[0][0], ro) < TOL[dtype] and rel_err(got[0][1], rf) < TOL[dtype]
    # varlen: three sequences packed (groups stop at sequence boundaries)
    cu = np.array([0, 130, 131, 300], np.int32)
    qp, kp, vp = q[0], k[0], v[0]
    gp = g if gate != "token" else g[0]
    sp = np.concatenate([s0, s0[:1]])
    out, fin = attnkit.linear_attention(qp, kp, vp, g=gp, initial_state=sp, return_final_state=True, cu_seqlens=cu)
    for n in range(3):
        a, e = cu[n], cu[n + 1]
        gn = gp if gate != "token" else gp[None, a:e]
        ro, rf = ref.linear_attention(qp[None, a:e], kp[None, a:e], vp[None, a:e], g=gn, initial_state=sp[n:n + 1])
        assert rel_err(out[None, a:e], ro) < TOL[dtype] and rel_err(fin[n:n + 1], rf) < TOL[dtype]


def test_strided_inputs(rng):
    """Any strides with a unit innermost one: head-major views, sliced batches."""
    base_q = randn(rng, (2, 3, 90, 32), "float32")  # [B, H, S, D] then transposed
    q = base_q.transpose(0, 2, 1, 3)
    kv = randn(rng, (2, 90, 6, 32), "float32")
    k, v = kv[:, :, :3], kv[:, :, 3:]
    g = -rng.uniform(0, 1, (2, 3, 90)).astype(np.float32).transpose(0, 2, 1)
    s0 = randn(rng, (2, 3, 32, 64), "float32")[..., ::2]  # inner stride 2: rejected
    with pytest.raises(ValueError, match="initial_state must have unit stride"):
        attnkit.linear_attention(q, k, v, g=g, initial_state=s0)
    s0 = np.ascontiguousarray(s0)
    out, fin = attnkit.linear_attention(q, k, v, g=g, initial_state=s0, return_final_state=True)
    ro, rf = ref.linear_attention(q, k, v, g=g, initial_state=s0)
    assert rel_err(out, ro) < TOL["float32"] and rel_err(fin, rf) < TOL["float32"]


def test_empty_batch_and_sequence(rng):
    q = np.zeros((0, 5, 2, 8), np.float32)
    assert attnkit.linear_attention(q, q, q).shape == (0, 5, 2, 8)
    q = np.zeros((2, 0, 2, 8), np.float32)
    s0 = randn(rng, (2, 2, 8, 8), "float32")
    out, fin = attnkit.linear_attention(q, q, q, initial_state=s0, return_final_state=True)
    assert out.shape == (2, 0, 2, 8)
    np.testing.assert_array_equal(fin, s0)


@pytest.mark.parametrize("isa", ["avx512", "generic"])
def test_isas_agree(rng, isa):
    """The fp32 chunk math on each ISA, and the AMX bf16 path, all match the reference."""
    avail = attnkit.build_info()["cpu_isas"]
    if isa not in avail:
        pytest.skip(f"ISA {isa} not runnable here (have {avail})")
    for dtype in ("float32", "bfloat16"):
        q, k, v, g, s0 = make(rng, (1, 150, 2, 2, 40, 24), dtype, gate="token", state=True)
        ro, rf = ref.linear_attention(q, k, v, g=g, initial_state=s0)
        attnkit.set_cpu_isa(isa)
        try:
            out, fin = attnkit.linear_attention(q, k, v, g=g, initial_state=s0, return_final_state=True)
        finally:
            attnkit.set_cpu_isa("")
        assert rel_err(out, ro) < TOL[dtype] and rel_err(fin, rf) < TOL[dtype]


@pytest.mark.parametrize("name", ["identity", "relu", "elu+1", "relu2", "softplus"])
def test_feature_maps(rng, name):
    x = randn(rng, (3, 5), "float32")
    want = {
        "identity": x,
        "relu": np.maximum(x, 0),
        "elu+1": np.where(x > 0, x + 1, np.exp(x)),
        "relu2": np.maximum(x, 0) ** 2,
        "softplus": np.log1p(np.exp(x)),
    }[name]
    np.testing.assert_allclose(attnkit.feature_map(x, name), want, rtol=1e-6)
    xb = x.astype(np_dtype("bfloat16"))
    assert attnkit.feature_map(xb, name).dtype == xb.dtype
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, requires_grad=True)
    yt = attnkit.feature_map(xt, name)
    np.testing.assert_allclose(yt.detach().numpy(), want, rtol=1e-6)
    yt.sum().backward()  # torch feature maps are differentiable
    with pytest.raises(ValueError, match="unknown name 'nope'"):
        attnkit.feature_map(x, "nope")
