"""Self-checks for linear attention (forward, backward, gates, states, varlen,
normalize, non-causal) against the float64 recurrence in attnkit.reference."""

from __future__ import annotations

import numpy as np

from .. import reference as ref
from . import TOL, rel_err


def _np_dtype(dtype):
    import attnkit._tensors as T

    return {"float32": np.float32, "float16": np.float16, "bfloat16": T._np_bfloat16()}[dtype]


def _fwd_bwd(dtype, gate, **kw):
    def fn():
        import attnkit

        rng = np.random.default_rng(5)
        dt = _np_dtype(dtype)
        B, S, Hq, Hkv, Dk, Dv = 2, 130, 4, 2, 40, 24
        q = rng.standard_normal((B, S, Hq, Dk)).astype(dt)
        k = rng.standard_normal((B, S, Hkv, Dk)).astype(dt)
        v = rng.standard_normal((B, S, Hkv, Dv)).astype(dt)
        g = {None: None, "head": -rng.uniform(0.01, 1, Hq).astype(np.float32),
             "token": -rng.uniform(0, 1, (B, S, Hq)).astype(np.float32)}[gate]
        s0 = rng.standard_normal((B, Hq, Dk, Dv)).astype(np.float32)
        out, fin = attnkit.linear_attention(q, k, v, g=g, initial_state=s0, return_final_state=True, **kw)
        ro, rf = ref.linear_attention(q, k, v, g=g, initial_state=s0, **kw)
        do = rng.standard_normal(out.shape).astype(dt)
        dfin = rng.standard_normal(fin.shape).astype(np.float32)
        got = attnkit.linear_attention_backward(do, q, k, v, g=g, initial_state=s0, dfinal_state=dfin, **kw)
        want = ref.linear_attention_grad(do, q, k, v, g=g, initial_state=s0, dfinal_state=dfin, **kw)
        errs = [rel_err(out, ro), rel_err(fin, rf)] + [rel_err(a, b) for a, b in zip(got, want) if a is not None]
        return max(errs), TOL[dtype] * 4

    return fn


def _strong_decay():
    import attnkit

    rng = np.random.default_rng(6)
    q, k, v = (rng.standard_normal((1, 5000, 1, 16)).astype(np.float32) * 1e3 for _ in range(3))
    g = -rng.uniform(0, 30, (1, 5000, 1)).astype(np.float32)
    out = attnkit.linear_attention(q, k, v, g=g)
    if not np.isfinite(out).all():
        return float("inf"), TOL["float32"]
    return rel_err(out, ref.linear_attention(q, k, v, g=g)[0]), TOL["float32"]


def _normalize_varlen():
    import attnkit

    rng = np.random.default_rng(7)
    cu = np.array([0, 3, 3, 90], np.int32)
    q, k = (attnkit.feature_map(rng.standard_normal((90, 2, 16)).astype(np.float32), "elu+1") for _ in range(2))
    v = rng.standard_normal((90, 2, 8)).astype(np.float32)
    errs = []
    for causal in (True, False):
        out = attnkit.linear_attention(q, k, v, normalize=True, is_causal=causal, cu_seqlens=cu)
        errs.append(rel_err(out, ref.linear_attention(q, k, v, normalize=True, is_causal=causal,
                                                       cu_seqlens=cu)[0]))
    return max(errs), TOL["float32"]


def checks():
    out = []
    for dtype in ("float32", "bfloat16", "float16"):
        out.append((f"linear fwd+bwd {dtype} per-token gate, states, GQA, Dk40 Dv24",
                    _fwd_bwd(dtype, "token")))
    out.append(("linear fwd+bwd float32 per-head decay", _fwd_bwd("float32", "head")))
    out.append(("linear fwd+bwd float32 non-causal", _fwd_bwd("float32", None, is_causal=False)))
    out.append(("linear 5000 tokens, strong decay, |x|~1e3: finite", _strong_decay))
    out.append(("linear normalize + varlen, causal and not", _normalize_varlen))
    return out
