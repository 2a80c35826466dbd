"""The CUDA backend against the float64 reference (and the CPU backend as an
oracle at sizes the reference is slow for): forward, LSE and gradients over odd
lengths, Sq != Sk causal, sliding windows, GQA/MQA, varlen, every head dim the
build has, fp16 and bf16; errors for what the kernels do not cover; the caller's
stream; attnkit.torch autograd and torch.compile on CUDA tensors.

Needs a CUDA GPU the build has kernels for (sm_90a: H100/H200) and a CUDA build
of attnkit; everything skips with the reason otherwise. scripts/gpu_check.sh runs
it on a GPU machine.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import attnkit
from attnkit import reference as ref

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

_INFO = attnkit.build_info()


def _device_arch():
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return {(9, 0): "90", (10, 0): "100"}.get((major, minor), f"{major}{minor}")


ARCH = _device_arch()


def _built(direction: str):
    """{(dtype, head_dim)} compiled for this GPU's arch and direction."""
    out = set()
    for line in _INFO.get("cuda_kernels", []):
        m = re.match(r"sm(\d+) (fwd|bwd) (bf16|fp16) hd(\d+)", line)
        if m and m.group(1) == ARCH and m.group(2) == direction:
            out.add(({"bf16": "bfloat16", "fp16": "float16"}[m.group(3)], int(m.group(4))))
    return out


FWD = _built("fwd")
BWD = _built("bwd")
# Forward variants this build has for this GPU beyond the default (the first
# listed): "tma-wgmma-pp" (overlap + ping-pong) and "mma-sync" (the portable
# kernel attnkit ships for sm_100a). Each is verified here through ATTNKIT_CUDA_VARIANT.
def _variants(direction: str):
    out = {}
    for line in _INFO.get("cuda_kernels", []):
        m = re.match(r"sm(\d+) (fwd|bwd) (bf16|fp16) hd(\d+) \(([\w-]+)\)", line)
        if m and m.group(1) == ARCH and m.group(2) == direction:
            dt = {"bf16": "bfloat16", "fp16": "float16"}[m.group(3)]
            out.setdefault(m.group(5), set()).add((dt, int(m.group(4))))
    return out


FWD_VARIANTS = _variants("fwd")

if not _INFO["cuda"]:
    pytest.skip("attnkit was built without CUDA (rebuild with ATTNKIT_CUDA=ON)", allow_module_level=True)
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU visible to torch", allow_module_level=True)
if not FWD:
    pytest.skip(f"this build has no kernels for the GPU's arch sm_{ARCH} (built: {_INFO['cuda_archs']})",
                allow_module_level=True)

# max |gpu - ref| / max |ref|. The kernels round P (and dS) to the input dtype
# before the second GEMM, as FlashAttention does; the CPU backend keeps them in
# fp32, so these are a little looser than tests/conftest.py's.
TOL = {"float16": 6e-3, "bfloat16": 3e-2}
GRAD_TOL = {"float16": 2e-2, "bfloat16": 8e-2}


def _head_dims(built, dtype):
    return sorted(d for dt, d in built if dt == dtype)


def _rand(g, shape, dtype, scale=1.0):
    return (torch.randn(shape, generator=g, dtype=torch.float32) * scale).to(getattr(torch, dtype)).cuda()


def _np(x):
    return x.detach().float().cpu().numpy().astype(np.float64)


def rel_err(a, b) -> float:
    a, b = _np(a) if torch.is_tensor(a) else np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    fb = np.isfinite(b)
    if not np.array_equal(np.isfinite(a), fb) or not np.array_equal(a[~fb], b[~fb]):
        return float("inf")
    if not fb.any():
        return 0.0
    return float(np.abs(a[fb] - b[fb]).max() / max(np.abs(b[fb]).max(), 1e-30))


def _reference(q, k, v, **kw):
    return ref.attention(_np(q), _np(k), _np(v), **kw)


# (B, Sq, Sk, Hq, Hkv): odd sizes, Sq != Sk both ways, GQA and MQA.
SHAPES = [
    (2, 1, 1, 4, 2),
    (1, 7, 7, 2, 2),
    (2, 129, 129, 4, 1),
    (1, 65, 200, 4, 4),
    (1, 200, 65, 6, 3),
    (1, 257, 1000, 8, 2),
    (2, 300, 300, 2, 1),
]
OPTIONS = [dict(), dict(is_causal=True), dict(window_size=(17, 4)), dict(window_size=(-1, 8)),
           dict(is_causal=True, window_size=(100, -1)), dict(scale=-0.2)]


def _opt_id(o):
    return ",".join(f"{k}={v}" for k, v in o.items()) or "dense"


def _shape_id(s):
    return "B{}_Sq{}_Sk{}_H{}-{}".format(*s)


def _fwd_params():
    out = []
    for dtype, d in sorted(FWD):
        main = d in (64, 128)
        for s in SHAPES if main else SHAPES[:4]:
            for o in OPTIONS if main else OPTIONS[:2]:
                out.append(pytest.param(dtype, d, s, o, id=f"{dtype}-hd{d}-{_shape_id(s)}-{_opt_id(o)}"))
    return out


@pytest.mark.parametrize("dtype,D,shape,opt", _fwd_params())
def test_forward(dtype, D, shape, opt):
    B, Sq, Sk, Hq, Hkv = shape
    g = torch.Generator().manual_seed(1000 * D + Sq + Sk)
    q, k, v = _rand(g, (B, Sq, Hq, D), dtype), _rand(g, (B, Sk, Hkv, D), dtype), _rand(g, (B, Sk, Hkv, D), dtype)
    out, lse = attnkit.attention(q, k, v, return_lse=True, **opt)
    assert out.is_cuda and out.dtype == q.dtype and out.shape == (B, Sq, Hq, D)
    assert lse.is_cuda and lse.dtype == torch.float32 and lse.shape == (B, Sq, Hq)
    ro, rl = _reference(q, k, v, **opt)
    eo, el = rel_err(out, ro), rel_err(lse, rl)
    assert eo < TOL[dtype], f"out rel err {eo:.2e}"
    assert el < TOL[dtype], f"lse rel err {el:.2e}"


def _bwd_params():
    out = []
    for dtype, d in sorted(BWD):
        main = d in (64, 128)
        for s in (SHAPES[1:6] if main else SHAPES[1:3]):
            for o in (OPTIONS[:4] if main else OPTIONS[:2]):
                out.append(pytest.param(dtype, d, s, o, id=f"{dtype}-hd{d}-{_shape_id(s)}-{_opt_id(o)}"))
    return out


@pytest.mark.parametrize("dtype,D,shape,opt", _bwd_params())
def test_backward(dtype, D, shape, opt):
    B, Sq, Sk, Hq, Hkv = shape
    g = torch.Generator().manual_seed(7 * D + Sq + 3 * Sk)
    q, k, v = _rand(g, (B, Sq, Hq, D), dtype), _rand(g, (B, Sk, Hkv, D), dtype), _rand(g, (B, Sk, Hkv, D), dtype)
    do = _rand(g, (B, Sq, Hq, D), dtype)
    out, lse = attnkit.attention(q, k, v, return_lse=True, **opt)
    dq, dk, dv = attnkit.attention_backward(do, q, k, v, out, lse, **opt)
    rq, rk, rv = ref.attention_grad(_np(do), _np(q), _np(k), _np(v), **opt)
    for name, got, want in (("dq", dq, rq), ("dk", dk, rk), ("dv", dv, rv)):
        assert got.is_cuda and got.dtype == q.dtype
        e = rel_err(got, want)
        assert e < GRAD_TOL[dtype], f"{name} rel err {e:.2e}"


@pytest.mark.parametrize("causal", [False, True])
def test_varlen(causal):
    dtype, D = _pick()
    lens_q, lens_k = [5, 0, 130, 64, 300], [9, 3, 130, 1, 257]
    cq = torch.tensor(np.cumsum([0] + lens_q), dtype=torch.int32).cuda()
    ck = torch.tensor(np.cumsum([0] + lens_k), dtype=torch.int32).cuda()
    g = torch.Generator().manual_seed(5)
    q = _rand(g, (sum(lens_q), 4, D), dtype)
    k, v = _rand(g, (sum(lens_k), 2, D), dtype), _rand(g, (sum(lens_k), 2, D), dtype)
    kw = dict(is_causal=causal, cu_seqlens_q=cq, cu_seqlens_k=ck)
    out, lse = attnkit.attention(q, k, v, return_lse=True, **kw)
    rkw = dict(is_causal=causal, cu_seqlens_q=cq.cpu().numpy(), cu_seqlens_k=ck.cpu().numpy())
    ro, rl = _reference(q, k, v, **rkw)
    assert rel_err(out, ro) < TOL[dtype] and rel_err(lse, rl) < TOL[dtype]
    if (dtype, D) in BWD:
        do = _rand(g, out.shape, dtype)
        grads = attnkit.attention_backward(do, q, k, v, out, lse, **kw)
        want = ref.attention_grad(_np(do), _np(q), _np(k), _np(v), **rkw)
        for got, w in zip(grads, want):
            assert rel_err(got, w) < GRAD_TOL[dtype]


def _pick():
    for pref in (("bfloat16", 128), ("float16", 128), ("bfloat16", 64), ("float16", 64)):
        if pref in FWD:
            return pref
    return sorted(FWD)[0]


def test_rows_that_see_nothing():
    # Causal with Sq > Sk: the first Sq - Sk queries see no key (bottom-right).
    dtype, D = _pick()
    g = torch.Generator().manual_seed(3)
    q, k, v = _rand(g, (1, 100, 2, D), dtype), _rand(g, (1, 30, 2, D), dtype), _rand(g, (1, 30, 2, D), dtype)
    out, lse = attnkit.attention(q, k, v, is_causal=True, return_lse=True)
    assert torch.isfinite(out).all()
    assert (out[:, :70] == 0).all() and torch.isneginf(lse[:, :70]).all()
    assert torch.isfinite(lse[:, 70:]).all()
    if (dtype, D) in BWD:
        do = _rand(g, out.shape, dtype)
        dq, dk, dv = attnkit.attention_backward(do, q, k, v, out, lse, is_causal=True)
        assert all(torch.isfinite(t).all() for t in (dq, dk, dv))
        assert (dq[:, :70] == 0).all()


def test_empty_key_or_query_sets():
    dtype, D = _pick()
    g = torch.Generator().manual_seed(8)
    q, k, v = _rand(g, (2, 5, 2, D), dtype), _rand(g, (2, 0, 2, D), dtype), _rand(g, (2, 0, 2, D), dtype)
    out, lse = attnkit.attention(q, k, v, return_lse=True)
    assert (out == 0).all() and torch.isneginf(lse).all()
    if (dtype, D) in BWD:
        dq, dk, dv = attnkit.attention_backward(torch.ones_like(out), q, k, v, out, lse)
        assert (dq == 0).all() and dk.shape == k.shape and dv.shape == v.shape
        # no queries: dk = dv = 0
        q0 = _rand(g, (2, 0, 2, D), dtype)
        k5, v5 = _rand(g, (2, 5, 2, D), dtype), _rand(g, (2, 5, 2, D), dtype)
        o0, l0 = attnkit.attention(q0, k5, v5, return_lse=True)
        dq0, dk0, dv0 = attnkit.attention_backward(o0, q0, k5, v5, o0, l0)
        assert dq0.shape == q0.shape and (dk0 == 0).all() and (dv0 == 0).all()


def test_against_cpu_oracle():
    """A size the float64 reference is slow for: the CPU backend on the same inputs."""
    dtype, D = _pick()
    g = torch.Generator().manual_seed(11)
    B, S, H, Hkv = 2, 1024, 4, 2
    q, k, v = _rand(g, (B, S, H, D), dtype), _rand(g, (B, S, Hkv, D), dtype), _rand(g, (B, S, Hkv, D), dtype)
    for causal in (False, True):
        out, lse = attnkit.attention(q, k, v, is_causal=causal, return_lse=True)
        co, cl = attnkit.attention(q.cpu(), k.cpu(), v.cpu(), is_causal=causal, return_lse=True)
        assert rel_err(out, _np(co)) < TOL[dtype] and rel_err(lse, _np(cl)) < TOL[dtype]
        if (dtype, D) in BWD:
            do = _rand(g, out.shape, dtype)
            got = attnkit.attention_backward(do, q, k, v, out, lse, is_causal=causal)
            want = attnkit.attention_backward(do.cpu(), q.cpu(), k.cpu(), v.cpu(), co, cl, is_causal=causal)
            for a, b in zip(got, want):
                assert rel_err(a, _np(b)) < GRAD_TOL[dtype]


def test_non_contiguous_layouts():
    # [B, H, S, D] storage seen as [B, S, H, D] (strides 16-byte multiples) runs as is.
    dtype, D = _pick()
    g = torch.Generator().manual_seed(2)
    q = _rand(g, (2, 4, 77, D), dtype).transpose(1, 2)
    k = _rand(g, (2, 2, 50, D), dtype).transpose(1, 2)
    v = _rand(g, (2, 2, 50, D), dtype).transpose(1, 2)
    out, lse = attnkit.attention(q, k, v, is_causal=True, return_lse=True)
    ro, rl = _reference(q, k, v, is_causal=True)
    assert rel_err(out, ro) < TOL[dtype] and rel_err(lse, rl) < TOL[dtype]


def test_runs_on_the_callers_stream():
    dtype, D = _pick()
    g = torch.Generator().manual_seed(4)
    q, k, v = (_rand(g, (2, 300, 4, D), dtype) for _ in range(3))
    expected = attnkit.attention(q, k, v, is_causal=True)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        outs = [attnkit.attention(q, k, v, is_causal=True) for _ in range(3)]
    torch.cuda.current_stream().wait_stream(side)
    for o in outs:
        assert torch.equal(o, expected)


def test_unsupported_combinations_raise():
    dtype, D = _pick()
    q = torch.randn(1, 16, 2, D, device="cuda")
    with pytest.raises(attnkit.UnsupportedError, match="float16 or bfloat16"):
        attnkit.attention(q, q, q)
    q = q.to(getattr(torch, dtype))
    with pytest.raises(attnkit.UnsupportedError, match="softcap"):
        attnkit.attention(q, q, q, softcap=5.0)
    odd = torch.randn(1, 16, 2, 80, device="cuda", dtype=q.dtype)
    with pytest.raises(attnkit.UnsupportedError, match=r"head_dim \{"):
        attnkit.attention(odd, odd, odd)
    v2 = torch.randn(1, 16, 2, D // 2, device="cuda", dtype=q.dtype)
    with pytest.raises(attnkit.UnsupportedError, match="value head_dim"):
        attnkit.attention(q, q, v2)
    with pytest.raises(ValueError, match="unit stride"):
        big = torch.randn(1, 16, 2, 2 * D, device="cuda", dtype=q.dtype)
        attnkit.attention(big[..., ::2], q, q)


def test_torch_ops_autograd_and_compile():
    import attnkit.torch as akt

    dtype, D = _pick()
    if (dtype, D) not in BWD:
        pytest.skip(f"no backward kernel for {dtype} hd{D}")
    g = torch.Generator().manual_seed(9)
    q, k, v = (_rand(g, (1, 130, 2, D), dtype).requires_grad_() for _ in range(3))
    out = akt.attention(q, k, v, is_causal=True)
    out.float().square().sum().backward()
    rq, rk, rv = ref.attention_grad(_np(2 * out.float()), _np(q), _np(k), _np(v), is_causal=True)
    for t, w in ((q, rq), (k, rk), (v, rv)):
        assert rel_err(t.grad, w) < GRAD_TOL[dtype]
    f = torch.compile(lambda a, b, c: akt.attention(a, b, c, is_causal=True), fullgraph=True)
    assert torch.equal(f(q, k, v), akt.attention(q, k, v, is_causal=True))


def test_merge_attentions_on_cuda():
    dtype, D = _pick()
    g = torch.Generator().manual_seed(6)
    q, k, v = _rand(g, (1, 64, 2, D), dtype), _rand(g, (1, 200, 2, D), dtype), _rand(g, (1, 200, 2, D), dtype)
    o1, l1 = attnkit.attention(q, k[:, :90], v[:, :90], return_lse=True)
    o2, l2 = attnkit.attention(q, k[:, 90:], v[:, 90:], return_lse=True)
    out, lse = attnkit.merge_attentions([o1, o2], [l1, l2])
    assert out.is_cuda
    ro, rl = _reference(q, k, v)
    assert rel_err(out, ro) < TOL[dtype] and rel_err(lse, rl) < TOL[dtype]


def _variant_params():
    out = []
    names = list(FWD_VARIANTS)
    for variant in names[1:]:  # the default one is what every other test runs
        for dtype, d in sorted(FWD_VARIANTS[variant]):
            main = d in (64, 128)
            for s in (SHAPES[1:6] if main else SHAPES[1:3]):
                for o in (OPTIONS[:5] if main else OPTIONS[:2]):
                    out.append(pytest.param(variant, dtype, d, s, o,
                                            id=f"{variant}-{dtype}-hd{d}-{_shape_id(s)}-{_opt_id(o)}"))
    return out


@pytest.mark.skipif(len(FWD_VARIANTS) < 2, reason="this build has one forward variant for this GPU's arch")
@pytest.mark.parametrize("variant,dtype,D,shape,opt", _variant_params())
def test_forward_variant(monkeypatch, variant, dtype, D, shape, opt):
    monkeypatch.setenv("ATTNKIT_CUDA_VARIANT", variant)
    test_forward(dtype, D, shape, opt)


@pytest.mark.parametrize("variant", list(FWD_VARIANTS)[1:])
def test_forward_variant_varlen_and_empty_rows(monkeypatch, variant):
    monkeypatch.setenv("ATTNKIT_CUDA_VARIANT", variant)
    test_varlen(True)
    test_rows_that_see_nothing()
