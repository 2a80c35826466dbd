"""Neighborhood attention benchmark cases: attnkit's GNA next to attnkit's own
dense FMHA on the same tokens (realised speedup vs the FLOP bound tokens /
window) and NATTEN's CPU path (its flex backend) when it is installed."""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from . import Case, Options

# name -> (spatial, kernel_size, stride, dilation): the cases of the GNA issue.
CPU_FWD = [
    ("2d", (64, 64), (13, 13), 1, 1),
    ("3d", (16, 32, 32), (7, 7, 7), 1, 1),
    ("1d", (16384,), (1023,), 1, 1),
    ("1d-stride", (16384,), (1023,), 256, 1),
]
CPU_BWD = [("2d", (64, 64), (13, 13), 1, 1)]
CPU_QUICK = [
    ("2d", (32, 32), (7, 7), 1, 1),
    ("3d", (8, 16, 16), (5, 5, 5), 1, 1),
    ("1d", (2048,), (255,), 1, 1),
    ("1d-stride", (2048,), (255,), 64, 1),
]
HEADS, HEAD_DIM = 4, 64
# NATTEN's CPU path (flex, uncompiled) materialises the tokens x tokens score matrix:
# 16384 tokens took 170 s and 14 GB here, so it is timed only up to this size.
NATTEN_MAX_TOKENS = 4096


def attended_pairs(spatial: Sequence[int], kernel_size: Sequence[int], stride, dilation,
                   causal) -> int:
    """Query-key pairs attended per (batch, head): windows are boxes, so the count is
    the product over axes of the per-axis window sizes summed over coordinates."""
    from ..reference import neighborhood_window

    nd = len(spatial)
    per = lambda a: tuple(a) if isinstance(a, (list, tuple)) else (a,) * nd  # noqa: E731
    ks, st, dl, ca = per(kernel_size), per(stride), per(dilation), per(causal)
    total = 1
    for n, k, s, d, c in zip(spatial, ks, st, dl, ca):
        total *= sum(hi - lo for lo, hi in (neighborhood_window(x, n, k, s, d, c) for x in range(n)))
    return total


def _shape_overrides(opts: Options) -> Tuple[int, int, int]:
    return opts.shape.get("B", 1), opts.shape.get("H", HEADS), opts.shape.get("D", HEAD_DIM)


def cases(opts: Options) -> Iterable[Case]:
    if opts.device.startswith("cuda"):
        return []  # GNA has no CUDA kernels yet
    try:
        import torch
    except ImportError:
        torch = None
    try:
        import natten  # noqa: F401

        have_natten = torch is not None and opts.peers
    except Exception:
        have_natten = False
    causal_variants = [True] if opts.causal == "on" else [False]
    out: List[Case] = []
    for direction in opts.directions:
        table = CPU_QUICK if opts.quick else (CPU_FWD if direction == "fwd" else CPU_BWD)
        for dtype in opts.dtypes:
            for name, spatial, ks, st, dl in table:
                for causal in causal_variants:
                    c = _make_case(torch, have_natten, opts, name, spatial, ks, st, dl, causal,
                                   dtype, direction)
                    if c is not None:
                        out.append(c)
    return out


def _make_case(torch, have_natten, opts, name, spatial, ks, st, dl, causal, dtype, direction
               ) -> Optional[Case]:
    import numpy as np

    import attnkit

    B, H, D = _shape_overrides(opts)
    T = math.prod(spatial)
    pairs = attended_pairs(spatial, ks, st, dl, causal)
    dense_pairs = T * (T + 1) // 2 if causal else T * T
    mult = 2.5 if direction == "bwd" else 1.0
    flops = mult * 2.0 * B * H * pairs * (D + D)
    dense_flops = mult * 2.0 * B * H * dense_pairs * (D + D)
    label = (f"{name} {'x'.join(map(str, spatial))} k{'x'.join(map(str, ks))}"
             + (f" s{st}" if st != 1 else "") + (f" d{dl}" if dl != 1 else "")
             + (" causal" if causal else "") + f" B{B} H{H} D{D}")
    kw = dict(stride=st, dilation=dl, is_causal=causal)

    if torch is not None:
        g = torch.Generator().manual_seed(0)
        mk = lambda: torch.randn(B, *spatial, H, D, generator=g).to(getattr(torch, dtype))  # noqa: E731
    else:
        from .._tensors import _np_bfloat16

        npdt = {"float32": np.float32, "float16": np.float16, "bfloat16": _np_bfloat16()}[dtype]
        if npdt is None:
            return None
        rng = np.random.default_rng(0)
        mk = lambda: rng.standard_normal((B, *spatial, H, D)).astype(npdt)  # noqa: E731
    q, k, v = mk(), mk(), mk()
    flat = lambda x: x.reshape(B, T, H, D)  # noqa: E731
    qf, kf, vf = flat(q), flat(k), flat(v)

    impls: Dict[str, object] = {}
    peers: List[str] = []
    extra = {"pairs": pairs, "dense_pairs": dense_pairs, "tokens": T}
    if direction == "fwd":
        impls["attnkit"] = lambda: attnkit.neighborhood_attention(q, k, v, ks, **kw)
        impls["attnkit-dense"] = lambda: attnkit.attention(qf, kf, vf, is_causal=causal)
        if have_natten and T <= NATTEN_MAX_TOKENS and not causal:
            import natten

            fn = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(spatial)]

            def run_natten():
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return fn(q, k, v, ks, stride=st, dilation=dl, is_causal=causal)

            impls["natten"] = run_natten
            peers.append("natten")
    else:
        o, l = attnkit.neighborhood_attention(q, k, v, ks, return_lse=True, **kw)
        do = mk()
        impls["attnkit"] = lambda: attnkit.neighborhood_attention_backward(do, q, k, v, o, l, ks, **kw)
        od, ld = attnkit.attention(qf, kf, vf, is_causal=causal, return_lse=True)
        dof = flat(do)
        impls["attnkit-dense"] = lambda: attnkit.attention_backward(dof, qf, kf, vf, od, ld,
                                                                    is_causal=causal)
        # NATTEN's CPU path has no backward (FlexAttention refuses it on the CPU).
    return Case("gna", label, dtype, direction, flops, impls, baseline=peers[0] if peers else None,
                dense="attnkit-dense", bound=dense_pairs / pairs,
                flops_per_impl={"attnkit-dense": dense_flops}, peers=peers, device="cpu",
                extra=extra)
