"""Linear attention benchmark cases: attnkit next to a plain PyTorch chunked
formulation (``linear_peer.py``, the peer) and attnkit's own causal FMHA at
the same shape, on the same inputs.

FLOPs (effective, the same count for every implementation of a case):
  causal, chunk C = 64, per (batch, head):
      sum over chunks of n (n + 1) / 2 intra-chunk pairs * 2 * (Dk + Dv)   (causal "left product")
    + tokens * 4 * Dk * Dv                                                  (q_t S and k_t^T v_t)
  i.e. about (C + 1) (Dk + Dv) + 4 Dk Dv per token; non-causal: 4 Dk Dv per
  token; backward: 2.5x the forward (DESIGN §6). The FMHA rows use their own
  count (2 * pairs * (D + Dv), pairs = S (S + 1) / 2); their "time" is what
  matters for the crossover.

Default CPU cases (DESIGN §6 / issue 5): B1 S16384 H8 D128, per-head decay
(RetNet's g_h = log(1 - 2^(-5-h))), forward and backward, float32 and
bfloat16; a causal forward sweep S = 64 .. 16384 against attnkit's causal
FMHA, from which ``summarize`` reports the crossover length; a per-token gate
case; and the non-causal form against torch's ``q (k^T v)``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional

from . import Case, Options

CHUNK = 64
CPU_SHAPE = dict(B=1, S=16384, H=8, D=128)
CPU_QUICK = dict(B=1, S=1024, H=2, D=64)
SWEEP = [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
SWEEP_QUICK = [64, 128, 256, 512, 1024]
# FMHA backward gets slow fast (quadratic); it joins the backward cases up to here.
FMHA_BWD_MAX_S = 8192


def linear_flops(B: int, H: int, S: int, Dk: int, Dv: int, causal: bool = True,
                 chunk: int = CHUNK) -> float:
    """Effective forward FLOPs of linear attention (see the module docstring)."""
    per_head = 4.0 * S * Dk * Dv
    if causal:
        full, tail = divmod(S, chunk)
        pairs = full * chunk * (chunk + 1) / 2 + tail * (tail + 1) / 2
        per_head += 2.0 * pairs * (Dk + Dv)
    return B * H * per_head


def retnet_decay(H: int) -> List[float]:
    return [math.log(1.0 - 2.0 ** (-5 - h)) for h in range(H)]


def _fmha_flops(B, H, S, D, Dv):
    from .fmha import fmha_flops

    return fmha_flops(B, H, S, S, D, Dv, True)


def cases(opts: Options) -> Iterable[Case]:
    if opts.device.startswith("cuda"):
        return []  # linear attention runs on the CPU only in this build
    try:
        import torch
    except ImportError:
        torch = None
    out: List[Case] = []
    base = {**(CPU_QUICK if opts.quick else CPU_SHAPE), **opts.shape}
    B, S, H, D = base["B"], base["S"], base["H"], base["D"]
    Dv = base.get("Dv", D)
    sweep = sorted(set([s for s in (SWEEP_QUICK if opts.quick else SWEEP) if s < S] + [S]))
    causal_values = opts.causal_values()
    for dtype in opts.dtypes:
        for direction in opts.directions:
            if True in causal_values:
                if direction == "fwd":
                    for s in sweep:  # the crossover sweep; its last point is the headline case
                        out.append(_case(torch, B, s, H, D, Dv, dtype, "fwd", "head", True, opts,
                                         sweep=True))
                    out.append(_case(torch, B, S, H, D, Dv, dtype, "fwd", "token", True, opts))
                else:
                    out.append(_case(torch, B, S, H, D, Dv, dtype, "bwd", "head", True, opts))
            if False in causal_values:
                out.append(_case(torch, B, S, H, D, Dv, dtype, direction, None, False, opts))
    return [c for c in out if c is not None]


def _inputs(torch, B, S, H, D, Dv, dtype, gate, seed=0):
    g = torch.Generator().manual_seed(seed)
    tdt = getattr(torch, dtype)
    # Unit-variance inputs; keys scaled like a feature map's output so that the
    # undecayed states stay in a sensible range.
    q = torch.randn(B, S, H, D, generator=g).to(tdt)
    k = (torch.randn(B, S, H, D, generator=g) * D ** -0.5).to(tdt)
    v = torch.randn(B, S, H, Dv, generator=g).to(tdt)
    if gate == "head":
        gt = torch.tensor(retnet_decay(H), dtype=torch.float32)
    elif gate == "token":
        gt = torch.nn.functional.logsigmoid(torch.randn(B, S, H, generator=g) + 4.0)
    else:
        gt = None
    return q, k, v, gt


def _case(torch, B, S, H, D, Dv, dtype, direction, gate, causal, opts, sweep=False) -> Optional[Case]:
    import attnkit

    flops = linear_flops(B, H, S, D, Dv, causal) * (2.5 if direction == "bwd" else 1.0)
    gname = {"head": "per-head decay", "token": "per-token gate", None: "no gate"}[gate]
    name = f"B{B} S{S} H{H} D{D}" + (f" Dv{Dv}" if Dv != D else "") + (
        " causal" if causal else " non-causal") + f" {gname}"
    extra: Dict[str, Any] = {"S": S, "gate": gate or "none", "causal": causal}
    if sweep:
        extra["sweep"] = "crossover"
    if torch is None:
        return _numpy_case(B, S, H, D, Dv, dtype, direction, gate, causal, name, flops, extra)
    q, k, v, g = _inputs(torch, B, S, H, D, Dv, dtype, gate)
    from .linear_peer import chunk_linear_attention, linear_attention_noncausal

    impls: Dict[str, Any] = {}
    peers: List[str] = []
    flops_per_impl: Dict[str, float] = {}
    dense = None
    if direction == "fwd":
        impls["attnkit"] = lambda: attnkit.linear_attention(q, k, v, is_causal=causal, g=g)
        if opts.peers:
            if causal:
                impls["torch-chunked"] = lambda: chunk_linear_attention(q, k, v, g)
            else:
                impls["torch-q(kTv)"] = lambda: linear_attention_noncausal(q, k, v)
            peers.append(next(iter(k_ for k_ in impls if k_ != "attnkit")))
        if causal and gate == "head":
            impls["attnkit-fmha"] = lambda: attnkit.attention(q, k, v, is_causal=True)
            flops_per_impl["attnkit-fmha"] = _fmha_flops(B, H, S, D, Dv)
            dense = "attnkit-fmha"
    else:
        do = torch.randn(B, S, H, Dv, generator=torch.Generator().manual_seed(1)).to(q.dtype)
        impls["attnkit"] = lambda: attnkit.linear_attention_backward(do, q, k, v, is_causal=causal, g=g)
        if opts.peers:
            leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
            if g is not None:
                leaves.append(g.detach().clone().requires_grad_())
            if causal:
                o_peer, _ = chunk_linear_attention(*leaves[:3], leaves[3] if g is not None else None)
                label = "torch-chunked"
            else:
                o_peer = linear_attention_noncausal(*leaves)
                label = "torch-q(kTv)"
            impls[label] = lambda: torch.autograd.grad(o_peer, leaves, do, retain_graph=True)
            peers.append(label)
        if causal and S <= FMHA_BWD_MAX_S:
            o, lse = attnkit.attention(q, k, v, is_causal=True, return_lse=True)
            impls["attnkit-fmha"] = lambda: attnkit.attention_backward(do, q, k, v, o, lse, is_causal=True)
            flops_per_impl["attnkit-fmha"] = 2.5 * _fmha_flops(B, H, S, D, Dv)
            dense = "attnkit-fmha"
    return Case("linear", name, dtype, direction, flops, impls, baseline=peers[0] if peers else None,
                dense=dense, flops_per_impl=flops_per_impl, peers=peers, extra=extra)


def _numpy_case(B, S, H, D, Dv, dtype, direction, gate, causal, name, flops, extra):
    import numpy as np

    import attnkit

    try:
        import ml_dtypes

        npdt = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dtype]
    except ImportError:
        if dtype != "float32":
            return None
        npdt = np.float32
    rng = np.random.default_rng(0)
    q = rng.standard_normal((B, S, H, D)).astype(npdt)
    k = (rng.standard_normal((B, S, H, D)) * D ** -0.5).astype(npdt)
    v = rng.standard_normal((B, S, H, Dv)).astype(npdt)
    g = None
    if gate == "head":
        g = np.array(retnet_decay(H), np.float32)
    elif gate == "token":
        g = -np.logaddexp(0, -(rng.standard_normal((B, S, H)) + 4.0)).astype(np.float32)
    if direction == "fwd":
        impls = {"attnkit": lambda: attnkit.linear_attention(q, k, v, is_causal=causal, g=g)}
    else:
        do = rng.standard_normal((B, S, H, Dv)).astype(npdt)
        impls = {"attnkit": lambda: attnkit.linear_attention_backward(do, q, k, v, is_causal=causal, g=g)}
    return Case("linear", name, dtype, direction, flops, impls, extra=extra)


def crossover(points: List[tuple]) -> Optional[float]:
    """points: (S, t_linear, t_fmha) sorted by S. The length from which linear
    attention stays faster: log-log interpolation of the time ratio between the
    last S where FMHA wins and the next; the first S if linear always wins; None
    if it never does."""
    if not points:
        return None
    ratio = [(s, tf / tl) for s, tl, tf in points]  # > 1: linear wins
    if ratio[-1][1] <= 1:
        return None
    last_loss = max((i for i, (_, r) in enumerate(ratio) if r <= 1), default=-1)
    if last_loss < 0:
        return float(ratio[0][0])
    (s0, r0), (s1, r1) = ratio[last_loss], ratio[last_loss + 1]
    x0, x1, y0, y1 = math.log(s0), math.log(s1), math.log(r0), math.log(r1)
    return math.exp(x0 + (0 - y0) * (x1 - x0) / (y1 - y0)) if y1 != y0 else float(s1)


def summarize(rows: List[Dict[str, Any]]) -> List[str]:
    """The crossover length per dtype, from the sweep rows of one run."""
    lines: List[str] = []
    for dtype in sorted({r["dtype"] for r in rows}):
        t: Dict[int, Dict[str, float]] = {}
        for r in rows:
            if r.get("sweep") == "crossover" and r["dtype"] == dtype and "time_ms" in r:
                t.setdefault(r["S"], {})[r["impl"]] = r["time_ms"]
        pts = sorted((s, d["attnkit"], d["attnkit-fmha"]) for s, d in t.items()
                     if "attnkit" in d and "attnkit-fmha" in d)
        if not pts:
            continue
        x = crossover(pts)
        where = ", ".join(f"S{s}: {tf / tl:.2f}x" for s, tl, tf in pts)
        if x is None:
            lines.append(f"linear {dtype}: attnkit causal FMHA stays faster over the sweep ({where})")
        elif all(tf > tl for _, tl, tf in pts):
            lines.append(f"linear {dtype}: linear attention is faster than attnkit causal FMHA at every "
                         f"swept length, from S{pts[0][0]} (crossover <= {pts[0][0]}; per-head decay, "
                         f"speedup by S: {where})")
        else:
            lines.append(f"linear {dtype}: linear attention beats attnkit causal FMHA from S ~ {x:.0f} "
                         f"(per-head decay, speedup by S: {where})")
    return lines
