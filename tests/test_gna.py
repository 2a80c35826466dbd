"""Neighborhood attention (GNA) against the float64 brute-force reference built
from DESIGN §2.2's formulas."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DTYPES, GRAD_TOL, TOL, randn, rel_err

import attnkit
from attnkit import reference as ref

# DESIGN §2.2's worked examples (n = 8): half-open windows per query.
WORKED = [
    (dict(kernel_size=3, stride=1, is_causal=False),
     [(0, 3), (0, 3), (1, 4), (2, 5), (3, 6), (4, 7), (5, 8), (5, 8)]),
    (dict(kernel_size=4, stride=2, is_causal=False),
     [(0, 4), (0, 4), (1, 5), (1, 5), (3, 7), (3, 7), (4, 8), (4, 8)]),
    (dict(kernel_size=3, stride=2, is_causal=True),
     [(0, 1), (0, 2), (1, 3), (1, 4), (3, 5), (3, 6), (5, 7), (5, 8)]),
]


def _windows_seen_by_kernel(n, kernel_size, stride, is_causal, dilation=1):
    """Recovers each query's key set from the kernel itself: with q = 0 every visible
    key gets the same weight, and one-hot values make out[i] the indicator / |window|."""
    q = np.zeros((1, n, 1, 8), np.float32)
    k = np.zeros((1, n, 1, 8), np.float32)
    v = np.eye(n, dtype=np.float32)[None, :, None, :]
    out = attnkit.na1d(q, k, v, kernel_size, stride, dilation, is_causal)
    seen = out[0, :, 0, :] > 0
    np.testing.assert_allclose(out[0, :, 0, :][seen], (1 / seen.sum(1)).repeat(seen.sum(1)), rtol=1e-6)
    return seen


@pytest.mark.parametrize("args,windows", WORKED, ids=["k3s1", "k4s2", "k3s2causal"])
def test_worked_examples_literally(args, windows):
    # The reference formulas ...
    got = [ref.neighborhood_window(i, 8, args["kernel_size"], args["stride"], 1, args["is_causal"])
           for i in range(8)]
    assert got == windows
    # ... and the kernel: query i attends exactly to keys [lo, hi).
    seen = _windows_seen_by_kernel(8, args["kernel_size"], args["stride"], args["is_causal"])
    want = np.zeros((8, 8), bool)
    for i, (lo, hi) in enumerate(windows):
        want[i, lo:hi] = True
    np.testing.assert_array_equal(seen, want)


def test_dilation_window_literally():
    # n = 10, k = 3, dilation = 3: groups {0,3,6,9} (n_g = 4), {1,4,7}, {2,5,8} (n_g = 3).
    seen = _windows_seen_by_kernel(10, 3, 1, False, dilation=3)
    want = {0: [0, 3, 6], 3: [0, 3, 6], 6: [3, 6, 9], 9: [3, 6, 9], 1: [1, 4, 7], 4: [1, 4, 7],
            7: [1, 4, 7], 2: [2, 5, 8], 5: [2, 5, 8], 8: [2, 5, 8]}
    for i, keys in want.items():
        assert sorted(np.nonzero(seen[i])[0].tolist()) == keys, i


def _inputs(rng, B, spatial, Hq, Hkv, D, Dv, dtype, n_extra=0):
    q = randn(rng, (B, *spatial, Hq, D), dtype)
    k = randn(rng, (B, *spatial, Hkv, D), dtype)
    v = randn(rng, (B, *spatial, Hkv, Dv), dtype)
    if not n_extra:
        return q, k, v, {}
    extra = dict(additional_keys=randn(rng, (B, n_extra, Hkv, D), dtype),
                 additional_values=randn(rng, (B, n_extra, Hkv, Dv), dtype))
    return q, k, v, extra


# (spatial, kernel_size, options): odd sizes, odd and even windows, stride /
# dilation / causal mixed per dim, grids that no tile shape divides.
CASES_1D = [
    ((1 * 7,), 2, {}),
    ((37,), 5, {}),
    ((37,), 6, dict(stride=4)),
    ((129,), 17, dict(dilation=3)),
    ((129,), 16, dict(stride=5, dilation=2)),
    ((100,), 9, dict(is_causal=True)),
    ((100,), 8, dict(is_causal=True, stride=3, dilation=4)),
    ((300,), 64, dict(stride=64)),
    ((257,), 255, {}),
]
CASES_2D = [
    ((7, 9), (3, 4), {}),
    ((13, 11), 5, dict(stride=(2, 1))),
    ((17, 23), (7, 6), dict(dilation=(2, 3))),
    ((15, 16), (4, 5), dict(is_causal=(True, False))),
    ((15, 16), 4, dict(is_causal=True, stride=(3, 2))),
    ((20, 19), (5, 3), dict(stride=(5, 2), dilation=(3, 2), is_causal=(False, True))),
    ((33, 2), (13, 2), {}),
    ((40, 40), 13, {}),
]
CASES_3D = [
    ((5, 6, 7), (2, 3, 4), {}),
    ((6, 7, 9), 3, dict(dilation=(2, 1, 3))),
    ((8, 9, 10), (3, 4, 5), dict(stride=(2, 3, 1), is_causal=(False, True, False))),
    ((7, 8, 8), 4, dict(is_causal=True, dilation=(1, 2, 1), stride=(1, 1, 4))),
    ((9, 9, 10), (7, 7, 7), {}),
]
ALL = CASES_1D + CASES_2D + CASES_3D


def _id(case):
    spatial, ks, kw = case
    s = "x".join(map(str, spatial)) + f"_k{ks}"
    return s + "".join(f"_{k[:3]}{v}" for k, v in kw.items())


@pytest.mark.parametrize("case", ALL, ids=[_id(c) for c in ALL])
def test_forward_float32(rng, case):
    spatial, ks, kw = case
    q, k, v, _ = _inputs(rng, 2, spatial, 4, 2, 24, 40, "float32")
    out, lse = attnkit.neighborhood_attention(q, k, v, ks, return_lse=True, **kw)
    ro, rl = ref.neighborhood_attention(q, k, v, ks, **kw)
    assert out.shape == (2, *spatial, 4, 40) and out.dtype == np.float32
    assert lse.shape == (2, *spatial, 4) and lse.dtype == np.float32
    assert rel_err(out, ro) < TOL["float32"]
    assert rel_err(lse, rl) < TOL["float32"]


@pytest.mark.parametrize("case", ALL[::2], ids=[_id(c) for c in ALL[::2]])
def test_backward_float32(rng, case):
    spatial, ks, kw = case
    q, k, v, _ = _inputs(rng, 1, spatial, 3, 1, 20, 12, "float32")
    out, lse = attnkit.neighborhood_attention(q, k, v, ks, return_lse=True, **kw)
    do = randn(rng, out.shape, "float32")
    grads = attnkit.neighborhood_attention_backward(do, q, k, v, out, lse, ks, **kw)
    want = ref.neighborhood_attention_grad(do, q, k, v, ks, **kw)
    for got, exp in zip(grads, want):
        assert got.shape == exp.shape
        assert rel_err(got, exp) < GRAD_TOL["float32"]


DTYPE_CASES = [CASES_1D[6], CASES_2D[5], CASES_3D[2]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DTYPE_CASES, ids=[_id(c) for c in DTYPE_CASES])
def test_forward_backward_dtypes(rng, dtype, case):
    spatial, ks, kw = case
    q, k, v, _ = _inputs(rng, 2, spatial, 4, 2, 32, 16, dtype)
    out, lse = attnkit.neighborhood_attention(q, k, v, ks, return_lse=True, **kw)
    assert out.dtype == q.dtype and lse.dtype == np.float32
    ro, rl = ref.neighborhood_attention(q, k, v, ks, **kw)
    assert rel_err(out, ro) < TOL[dtype]
    assert rel_err(lse, rl) < TOL["float32"] * (1 if dtype == "float32" else 20)
    do = randn(rng, out.shape, dtype)
    grads = attnkit.neighborhood_attention_backward(do, q, k, v, out, lse, ks, **kw)
    for got, exp in zip(grads, ref.neighborhood_attention_grad(do, q, k, v, ks, **kw)):
        assert got.dtype == q.dtype
        assert rel_err(got, exp) < GRAD_TOL[dtype]


@pytest.mark.parametrize("heads", [(4, 4), (6, 3), (8, 1)], ids=["mha", "gqa2", "mqa"])
@pytest.mark.parametrize("dims", [(16, 16), (72, 40), (40, 96)], ids=["d16", "d72v40", "d40v96"])
def test_gqa_and_head_dims(rng, heads, dims):
    q, k, v, _ = _inputs(rng, 1, (11, 13), heads[0], heads[1], dims[0], dims[1], "float32")
    kw = dict(stride=(1, 2), dilation=(2, 1))
    out, lse = attnkit.neighborhood_attention(q, k, v, (3, 5), return_lse=True, **kw)
    ro, rl = ref.neighborhood_attention(q, k, v, (3, 5), **kw)
    assert rel_err(out, ro) < TOL["float32"] and rel_err(lse, rl) < TOL["float32"]
    do = randn(rng, out.shape, "float32")
    grads = attnkit.neighborhood_attention_backward(do, q, k, v, out, lse, (3, 5), **kw)
    for got, exp in zip(grads, ref.neighborhood_attention_grad(do, q, k, v, (3, 5), **kw)):
        assert rel_err(got, exp) < GRAD_TOL["float32"]


EXTRA_CASES = [CASES_1D[5], CASES_2D[2], CASES_3D[1]]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("n_extra", [1, 77])
@pytest.mark.parametrize("case", EXTRA_CASES, ids=[_id(c) for c in EXTRA_CASES])
def test_additional_kv(rng, case, n_extra, dtype):
    spatial, ks, kw = case
    q, k, v, extra = _inputs(rng, 2, spatial, 4, 2, 24, 16, dtype, n_extra=n_extra)
    out, lse = attnkit.neighborhood_attention(q, k, v, ks, return_lse=True, **kw, **extra)
    ro, rl = ref.neighborhood_attention(q, k, v, ks, **kw, **extra)
    assert rel_err(out, ro) < TOL[dtype]
    assert rel_err(lse, rl) < TOL["float32"] * (1 if dtype == "float32" else 20)
    do = randn(rng, out.shape, dtype)
    grads = attnkit.neighborhood_attention_backward(do, q, k, v, out, lse, ks, **kw, **extra)
    want = ref.neighborhood_attention_grad(do, q, k, v, ks, **kw, **extra)
    assert len(grads) == 5
    for got, exp in zip(grads, want):
        assert got.shape == exp.shape and got.dtype == q.dtype
        assert rel_err(got, exp) < GRAD_TOL[dtype]


def test_additional_kv_is_the_lse_merge_of_both_parts(rng):
    q, k, v, extra = _inputs(rng, 1, (9, 10), 2, 2, 16, 16, "float32", n_extra=5)
    o1, l1 = attnkit.neighborhood_attention(q, k, v, 3, return_lse=True)
    qf = q.reshape(1, 90, 2, 16)
    o2, l2 = attnkit.attention(qf, extra["additional_keys"], extra["additional_values"], return_lse=True)
    om, lm = attnkit.merge_attentions([o1.reshape(1, 90, 2, 16), o2], [l1.reshape(1, 90, 2), l2])
    out, lse = attnkit.neighborhood_attention(q, k, v, 3, return_lse=True, **extra)
    np.testing.assert_allclose(out.reshape(om.shape), om, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lse.reshape(lm.shape), lm, rtol=1e-5, atol=1e-6)


def test_gradient_through_lse(rng):
    # dlse folds into the backward exactly (d lse_i / d s_ij = P_ij).
    q, k, v, extra = _inputs(rng, 1, (8, 9), 2, 1, 16, 8, "float32", n_extra=3)
    kw = dict(stride=(2, 1), is_causal=(False, True))
    out, lse = attnkit.neighborhood_attention(q, k, v, (3, 4), return_lse=True, **kw, **extra)
    do = randn(rng, out.shape, "float32")
    dl = randn(rng, lse.shape, "float32")
    g = attnkit.neighborhood_attention_backward(do, q, k, v, out, lse, (3, 4), dlse=dl, **kw, **extra)
    # Finite differences on <do, out> + <dl, lse> along a random direction of q.
    x = [a.astype(np.float64) for a in (q, k, v, extra["additional_keys"], extra["additional_values"])]

    def f(xs):
        o, l = ref.neighborhood_attention(xs[0], xs[1], xs[2], (3, 4), additional_keys=xs[3],
                                          additional_values=xs[4], **kw)
        return float((o * do).sum() + (l * dl).sum())

    for idx in range(5):
        d = rng.standard_normal(x[idx].shape)
        eps = 1e-5
        xp = list(x)
        xm = list(x)
        xp[idx] = x[idx] + eps * d
        xm[idx] = x[idx] - eps * d
        fd = (f(xp) - f(xm)) / (2 * eps)
        an = float((g[idx].astype(np.float64) * d).sum())
        assert abs(fd - an) <= 1e-3 * max(1.0, abs(fd)), (idx, fd, an)


@pytest.mark.parametrize("spatial", [(23,), (6, 9), (3, 4, 5)], ids=["1d", "2d", "3d"])
def test_full_window_equals_dense_attention(rng, spatial):
    q, k, v, _ = _inputs(rng, 2, spatial, 4, 2, 32, 24, "float32")
    T = int(np.prod(spatial))
    out, lse = attnkit.neighborhood_attention(q, k, v, spatial, return_lse=True)
    flat = lambda x: x.reshape(x.shape[0], T, *x.shape[-2:])  # noqa: E731
    do, dl = attnkit.attention(flat(q), flat(k), flat(v), return_lse=True)
    np.testing.assert_allclose(out.reshape(do.shape), do, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(lse.reshape(dl.shape), dl, rtol=2e-5, atol=2e-6)
    g = randn(rng, out.shape, "float32")
    gn = attnkit.neighborhood_attention_backward(g, q, k, v, out, lse, spatial)
    gd = attnkit.attention_backward(flat(g), flat(q), flat(k), flat(v), do, dl)
    for a, b in zip(gn, gd):
        np.testing.assert_allclose(flat(a), b, rtol=1e-4, atol=2e-6)


def test_full_causal_window_1d_equals_causal_attention(rng):
    q, k, v, _ = _inputs(rng, 1, (50,), 2, 2, 16, 16, "float32")
    out = attnkit.na1d(q, k, v, 50, is_causal=True)
    np.testing.assert_allclose(out, attnkit.attention(q, k, v, is_causal=True), rtol=2e-5, atol=2e-6)


def test_strided_inputs_without_copy(rng):
    q = randn(rng, (2, 10, 12, 6, 32), "float32")[:, :, :, ::2]
    k = randn(rng, (12, 2, 10, 3, 32), "float32").transpose(1, 2, 0, 3, 4)
    v = randn(rng, (2, 10, 12, 3, 48), "float32")[..., 8:40]
    assert not (q.flags.c_contiguous or k.flags.c_contiguous or v.flags.c_contiguous)
    kw = dict(dilation=(2, 1), is_causal=(False, True))
    out, lse = attnkit.na2d(q, k, v, (3, 5), return_lse=True, **kw)
    ro, rl = ref.neighborhood_attention(q, k, v, (3, 5), **kw)
    assert rel_err(out, ro) < TOL["float32"] and rel_err(lse, rl) < TOL["float32"]
    do = randn(rng, (2, 10, 12, 3, 64), "float32")[..., 16:48]
    grads = attnkit.neighborhood_attention_backward(do, q, k, v, out, lse, (3, 5), **kw)
    for got, exp in zip(grads, ref.neighborhood_attention_grad(do, q, k, v, (3, 5), **kw)):
        assert rel_err(got, exp) < GRAD_TOL["float32"]


def test_backward_is_deterministic(rng):
    q, k, v, extra = _inputs(rng, 1, (30, 31), 4, 2, 40, 40, "float32", n_extra=9)
    kw = dict(stride=(2, 1), is_causal=(True, False), **extra)
    out, lse = attnkit.neighborhood_attention(q, k, v, 7, return_lse=True, **kw)
    do = randn(rng, out.shape, "float32")
    a = attnkit.neighborhood_attention_backward(do, q, k, v, out, lse, 7, **kw)
    try:
        for threads in (1, 2, 0):
            attnkit.set_num_threads(threads)
            b = attnkit.neighborhood_attention_backward(do, q, k, v, out, lse, 7, **kw)
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
    finally:
        attnkit.set_num_threads(0)


# The tile plan is chosen per shape; the developer knob ATTNKIT_GNA_PLAN forces one.
# Every plan must give the same (correct) result: this exercises kv tiles that are
# offset and larger than the windows, partial query tiles and vectors that straddle
# vector blocks.
PLANS = [
    "vb=1x4x4,qa=1x2x2,kt=1x4x1,ko=0x2x0",
    "vb=1x2x8,qa=1x4x1,kt=1x8x1,ko=0x3x0",
    "vb=1x16x1,qa=1x1x4,kt=1x1x1,ko=0x0x0",
    "vb=1x3x5,qa=1x1x3,kt=1x2x3,ko=0x1x2",
    "vb=1x1x1,qa=1x1x1,kt=1x1x1,ko=0x0x0",
]


@pytest.mark.parametrize("plan", PLANS)
def test_every_tile_plan_is_exact(rng, monkeypatch, plan):
    monkeypatch.setenv("ATTNKIT_GNA_PLAN", plan)
    q, k, v, _ = _inputs(rng, 1, (19, 22), 2, 1, 16, 16, "float32")
    for ks, kw in [((5, 7), {}), ((4, 6), dict(stride=(2, 3), dilation=(2, 1), is_causal=(True, False)))]:
        out, lse = attnkit.na2d(q, k, v, ks, return_lse=True, **kw)
        ro, rl = ref.neighborhood_attention(q, k, v, ks, **kw)
        assert rel_err(out, ro) < TOL["float32"] and rel_err(lse, rl) < TOL["float32"]
        do = randn(rng, out.shape, "float32")
        grads = attnkit.neighborhood_attention_backward(do, q, k, v, out, lse, ks, **kw)
        for got, exp in zip(grads, ref.neighborhood_attention_grad(do, q, k, v, ks, **kw)):
            assert rel_err(got, exp) < GRAD_TOL["float32"]


def test_large_scores_stay_finite(rng):
    q = randn(rng, (1, 16, 16, 1, 32), "float32", scale=30.0)
    k = randn(rng, (1, 16, 16, 1, 32), "float32", scale=30.0)
    v = randn(rng, (1, 16, 16, 1, 32), "float32")
    out, lse = attnkit.na2d(q, k, v, 5, return_lse=True)
    ro, rl = ref.neighborhood_attention(q, k, v, 5)
    assert np.isfinite(out).all()
    assert rel_err(out, ro) < 1e-4 and rel_err(lse, rl) < 1e-5


def test_nan_propagates_only_to_queries_that_see_it(rng):
    q, k, v, _ = _inputs(rng, 1, (12, 12), 1, 1, 8, 8, "float32")
    k[0, 0, 0, 0, 0] = np.nan
    out = attnkit.na2d(q, k, v, 3)
    seen = ref.neighborhood_mask((12, 12), 3)[:, 0].reshape(12, 12)
    assert np.isnan(out[0, seen]).all()
    assert np.isfinite(out[0, ~seen]).all()


def test_empty_batch_and_torch_tensors(rng):
    q = randn(rng, (0, 5, 4, 2, 8), "float32")
    out, lse = attnkit.na2d(q, q, q, 3, return_lse=True)
    assert out.shape == (0, 5, 4, 2, 8) and lse.shape == (0, 5, 4, 2)
    torch = pytest.importorskip("torch")
    qt = torch.randn(1, 9, 2, 16)
    o = attnkit.na1d(qt, qt, qt, 4)
    assert isinstance(o, torch.Tensor)
    np.testing.assert_allclose(o.numpy(), ref.neighborhood_attention(qt, qt, qt, 4)[0], rtol=2e-5,
                               atol=1e-6)


def test_random_configurations():
    for seed in range(12):
        _random_case(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(12, 300))
def test_random_sweep(seed):
    _random_case(seed)


def _random_case(seed):
    rng = np.random.default_rng(seed)
    nd = 1 + seed % 3
    spatial = tuple(int(rng.integers(2, {1: 200, 2: 24, 3: 9}[nd])) for _ in range(nd))
    ks, st, dl, ca = [], [], [], []
    for n in spatial:
        d = int(rng.integers(1, max(2, n // 2 + 1)))
        d = min(d, n // 2)
        k = int(rng.integers(2, n // d + 1))
        ks.append(k)
        dl.append(d)
        st.append(int(rng.integers(1, k + 1)))
        ca.append(bool(rng.integers(0, 2)))
    kw = dict(stride=tuple(st), dilation=tuple(dl), is_causal=tuple(ca))
    n_extra = int(rng.integers(0, 3)) * 3
    q, k, v, extra = _inputs(rng, 1, spatial, 2, 1, 16, 8, "float32", n_extra=n_extra)
    out, lse = attnkit.neighborhood_attention(q, k, v, tuple(ks), return_lse=True, **kw, **extra)
    ro, rl = ref.neighborhood_attention(q, k, v, tuple(ks), **kw, **extra)
    assert rel_err(out, ro) < TOL["float32"] and rel_err(lse, rl) < TOL["float32"]
    do = randn(rng, out.shape, "float32")
    grads = attnkit.neighborhood_attention_backward(do, q, k, v, out, lse, tuple(ks), **kw, **extra)
    for got, exp in zip(grads, ref.neighborhood_attention_grad(do, q, k, v, tuple(ks), **kw, **extra)):
        assert rel_err(got, exp) < GRAD_TOL["float32"]


@pytest.mark.parametrize("isa", ["amx", "avx512", "avx2", "generic"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_isa_is_exact(rng, isa, dtype):
    # bfloat16 inputs take the AMX math policy where the CPU has AMX, fp32 FMA otherwise.
    if isa not in attnkit.build_info()["cpu_isas"]:
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    q, k, v, extra = _inputs(rng, 1, (13, 14), 4, 2, 40, 24, dtype, n_extra=5)
    kw = dict(stride=(2, 1), dilation=(1, 2), is_causal=(False, True), **extra)
    try:
        attnkit.set_cpu_isa(isa)
        out, lse = attnkit.na2d(q, k, v, (5, 4), return_lse=True, **kw)
        do = randn(rng, out.shape, dtype)
        grads = attnkit.neighborhood_attention_backward(do, q, k, v, out, lse, (5, 4), **kw)
    finally:
        attnkit.set_cpu_isa("")
    ro, rl = ref.neighborhood_attention(q, k, v, (5, 4), **kw)
    assert rel_err(out, ro) < TOL[dtype]
    assert rel_err(lse, rl) < TOL["float32"] * (1 if dtype == "float32" else 20)
    for got, exp in zip(grads, ref.neighborhood_attention_grad(do, q, k, v, (5, 4), **kw)):
        assert rel_err(got, exp) < GRAD_TOL[dtype]
