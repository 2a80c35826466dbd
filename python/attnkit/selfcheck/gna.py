"""Self-checks for neighborhood attention (1-3 D, stride/dilation/causal, extra KV)."""

from __future__ import annotations

import numpy as np

from .. import reference as ref
from . import TOL, rel_err
from .fmha import _inputs


def _case(dtype, spatial, Hq, Hkv, D, Dv, ks, n_extra=0, **kw):
    def fn():
        import attnkit

        rng = np.random.default_rng(4)
        q, k, v = _inputs(rng, (1, *spatial, Hq, D), (1, *spatial, Hkv, D), Dv, dtype)
        extra = {}
        if n_extra:
            ek, ev = _inputs(rng, (1, n_extra, Hkv, D), (1, n_extra, Hkv, D), Dv, dtype)[1:]
            extra = dict(additional_keys=ek, additional_values=ev)
        out, lse = attnkit.neighborhood_attention(q, k, v, ks, return_lse=True, **kw, **extra)
        ro, rl = ref.neighborhood_attention(q, k, v, ks, **kw, **extra)
        do = rng.standard_normal(out.shape).astype(out.dtype)
        grads = attnkit.neighborhood_attention_backward(do, q, k, v, out, lse, ks, **kw, **extra)
        want = ref.neighborhood_attention_grad(do, q, k, v, ks, **kw, **extra)
        errs = [rel_err(out, ro), rel_err(lse, rl)] + [rel_err(a, b) for a, b in zip(grads, want)]
        return max(errs), TOL[dtype] * (4 if dtype != "float32" else 1)

    return fn


def checks():
    return [
        ("gna 1d k9 causal stride 3 dilation 2 float32",
         _case("float32", (61,), 2, 1, 32, 32, 9, stride=3, dilation=2, is_causal=True)),
        ("gna 2d 13x13 k(5,4) mixed + extra KV float32",
         _case("float32", (13, 13), 4, 2, 24, 16, (5, 4), n_extra=7, stride=(2, 1), dilation=(1, 2),
               is_causal=(False, True))),
        ("gna 2d 13x13 k5 bfloat16", _case("bfloat16", (13, 13), 2, 2, 32, 32, 5)),
        ("gna 3d 5x6x7 k(3,2,3) dilation float32",
         _case("float32", (5, 6, 7), 2, 1, 16, 16, (3, 2, 3), dilation=(1, 2, 1))),
    ]
