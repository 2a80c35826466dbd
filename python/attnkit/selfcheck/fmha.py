"""Self-checks for dense attention (forward, backward, varlen, GQA, merge)."""

from __future__ import annotations

import numpy as np

from .. import reference as ref
from . import TOL, rel_err


def _inputs(rng, shape_q, shape_k, dv, dtype):
    import attnkit._tensors as T

    npdt = np.float32
    if dtype == "bfloat16":
        npdt = T._np_bfloat16()
    elif dtype == "float16":
        npdt = np.float16
    q = rng.standard_normal(shape_q).astype(npdt)
    k = rng.standard_normal(shape_k).astype(npdt)
    v = rng.standard_normal((*shape_k[:-1], dv)).astype(npdt)
    return q, k, v


def _fwd_bwd(dtype, B, Sq, Sk, Hq, Hkv, D, Dv, **kw):
    def fn():
        import attnkit

        rng = np.random.default_rng(1)
        q, k, v = _inputs(rng, (B, Sq, Hq, D), (B, Sk, Hkv, D), Dv, dtype)
        out, lse = attnkit.attention(q, k, v, return_lse=True, **kw)
        ro, rl = ref.attention(q, k, v, **kw)
        do = rng.standard_normal(out.shape).astype(out.dtype)
        dq, dk, dv = attnkit.attention_backward(do, q, k, v, out, lse, **kw)
        gq, gk, gv = ref.attention_grad(do, q, k, v, **kw)
        errs = [rel_err(out, ro), rel_err(lse, rl), rel_err(dq, gq), rel_err(dk, gk), rel_err(dv, gv)]
        return max(errs), TOL[dtype] * (4 if dtype != "float32" else 1)

    return fn


def _varlen():
    import attnkit

    rng = np.random.default_rng(2)
    lens_q, lens_k = [5, 0, 70], [9, 3, 65]
    cq = np.cumsum([0] + lens_q).astype(np.int32)
    ck = np.cumsum([0] + lens_k).astype(np.int32)
    q = rng.standard_normal((cq[-1], 4, 32)).astype(np.float32)
    k = rng.standard_normal((ck[-1], 2, 32)).astype(np.float32)
    v = rng.standard_normal((ck[-1], 2, 32)).astype(np.float32)
    kw = dict(is_causal=True, cu_seqlens_q=cq, cu_seqlens_k=ck)
    out, lse = attnkit.attention(q, k, v, return_lse=True, **kw)
    ro, rl = ref.attention(q, k, v, **kw)
    return max(rel_err(out, ro), rel_err(lse, rl)), TOL["float32"]


def _merge():
    import attnkit

    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 33, 2, 16)).astype(np.float32)
    k = rng.standard_normal((1, 50, 2, 16)).astype(np.float32)
    v = rng.standard_normal((1, 50, 2, 16)).astype(np.float32)
    o1, l1 = attnkit.attention(q, k[:, :20], v[:, :20], return_lse=True)
    o2, l2 = attnkit.attention(q, k[:, 20:], v[:, 20:], return_lse=True)
    o, l = attnkit.merge_attentions([o1, o2], [l1, l2])
    ro, rl = ref.attention(q, k, v)
    return max(rel_err(o, ro), rel_err(l, rl)), TOL["float32"]


def checks():
    out = []
    for dtype in ("float32", "bfloat16", "float16"):
        out.append((f"fmha fwd+bwd {dtype} B2 S77 H4/2 D40 Dv24",
                    _fwd_bwd(dtype, 2, 77, 77, 4, 2, 40, 24)))
    out.append(("fmha causal Sq>Sk (empty rows) float32", _fwd_bwd("float32", 1, 70, 30, 2, 1, 64, 64, is_causal=True)))
    out.append(("fmha window (16, 3) + softcap float32",
                _fwd_bwd("float32", 1, 129, 129, 2, 2, 64, 64, window_size=(16, 3), softcap=10.0)))
    out.append(("fmha varlen causal float32", _varlen))
    out.append(("merge_attentions float32", _merge))
    return out
