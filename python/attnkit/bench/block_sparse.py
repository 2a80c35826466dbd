"""Block-sparse benchmark cases: time vs density on random block masks.

Each case times, on the same inputs and interleaved: attnkit's block-sparse
attention, attnkit's dense FMHA (the reference for the realised speedup and the
FLOP bound, DESIGN §6), torch SDPA without a mask (dense), torch SDPA with the
expanded dense boolean mask (the same function as ours), and FlexAttention
compiled on the CPU (same block mask; forward only -- FlexAttention has no CPU
backward, which the table reports).

Default shape: the block-sparse issue's target, B=1 S=8192 H=8 D=64, 64x64 and
128x128 blocks, densities 0.5 / 0.25 / 0.1. ``--shape block=64`` picks one block
size; ``--causal on`` gives causal masks (random lower-triangular blocks with
the diagonal, ``is_causal=True``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy as np

from . import Case, Options
from .fmha import fmha_flops

CPU_SHAPE = dict(B=1, S=8192, H=8, D=64)
CPU_QUICK = dict(B=1, S=1024, H=4, D=64)
DENSITIES = (0.5, 0.25, 0.1)
BLOCKS = (64, 128)


class _CaseState:
    """Heavy per-case objects (the dense boolean mask, autograd graphs, the
    forward's out/lse) are built on a case's first call and dropped when the
    next case starts, so that only one case's worth is alive at a time."""

    key: Any = None
    items: Dict[str, Any] = {}

    @classmethod
    def get(cls, key: Any, name: str, build: Callable[[], Any]) -> Any:
        if cls.key != key:
            cls.items = {}
            cls.key = key
        if name not in cls.items:
            cls.items[name] = build()
        return cls.items[name]


def random_block_mask(rng, H: int, S: int, block: int, density: float, causal: bool):
    """Per (head, q block) exactly round(density * candidates) distinct kv blocks
    (at least one), drawn uniformly; causal: among blocks up to the diagonal,
    which is always kept."""
    import attnkit

    n = -(-S // block)
    dense = np.zeros((1, H, n, n), dtype=bool)
    for h in range(H):
        for i in range(n):
            cands = np.arange(i + 1) if causal else np.arange(n)
            m = max(1, int(round(density * len(cands))))
            if causal:
                pick = np.concatenate([[i], rng.choice(cands[:-1], m - 1, replace=False)]) \
                    if m > 1 else np.array([i])
            else:
                pick = rng.choice(cands, m, replace=False)
            dense[0, h, i, pick] = True
    return attnkit.BlockMask.from_dense(dense, q_block=block, kv_block=block, seq_lengths=(S, S))


def attended_pairs(dense: np.ndarray, S: int, block: int, causal: bool) -> int:
    """Exact (query, key) pairs attended under a block mask (+ causal), summed
    over the mask's batch and heads."""
    n = dense.shape[-1]
    starts = np.arange(n) * block
    sizes = np.minimum(block, S - starts)
    if not causal:
        per_block = sizes[:, None] * sizes[None, :]
    else:
        rows = np.arange(S)
        # keys of block j seen by row r: clip(r + 1 - start_j, 0, size_j)
        seen = np.clip(rows[:, None] + 1 - starts[None, :], 0, sizes[None, :])
        per_block = np.add.reduceat(seen, starts, axis=0)
    return int((dense * per_block).sum())


def _flex_compiled():
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    global _FLEX
    if _FLEX is None:
        # One compiled graph per (dtype, block size, mask_mod); keep them all.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


_FLEX = None
_FLEX_CPU_BACKWARD: Optional[str] = None  # why FlexAttention cannot run a CPU backward ("" = it can)


def _flex_cpu_backward_error() -> str:
    """Why FlexAttention has no CPU backward here ("" if it has one), asked once of the
    eager function on tiny inputs. The compiled function must never be the one that
    raises: after a compiled call fails, dynamo runs every later flex call eagerly
    (~200x slower), which made the bfloat16 forward peer of a default `attnkit bench`
    take 9 s instead of 55 ms."""
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    global _FLEX_CPU_BACKWARD
    if _FLEX_CPU_BACKWARD is None:
        x = torch.zeros(1, 1, 16, 16, requires_grad=True)
        try:
            flex_attention(x, x, x)
            _FLEX_CPU_BACKWARD = ""
        except NotImplementedError as e:
            _FLEX_CPU_BACKWARD = str(e) or "FlexAttention has no CPU backward"
    return _FLEX_CPU_BACKWARD


def cases(opts: Options) -> Iterable[Case]:
    if opts.device.startswith("cuda"):
        return []  # CPU kernels only in this version
    try:
        import torch
    except ImportError:
        torch = None
    import attnkit

    base = CPU_QUICK if opts.quick else CPU_SHAPE
    shp = {**base, **opts.shape}
    B, S, H, D = shp["B"], shp["S"], shp["H"], shp["D"]
    blocks = (shp["block"],) if "block" in shp else BLOCKS
    causal_values = [True] if opts.causal == "on" else [False]
    out: List[Case] = []
    rng = np.random.default_rng(0)
    masks = {(blk, d, c): random_block_mask(rng, H, S, blk, d, c)
             for blk in blocks for d in DENSITIES for c in causal_values}
    for dtype in opts.dtypes:
        if torch is None:
            continue  # the peers and the inputs need torch; attnkit alone is covered by fmha
        tdt = getattr(torch, dtype)
        g = torch.Generator().manual_seed(0)
        q = torch.randn(B, S, H, D, generator=g).to(tdt)
        k = torch.randn(B, S, H, D, generator=g).to(tdt)
        v = torch.randn(B, S, H, D, generator=g).to(tdt)
        do = torch.randn(B, S, H, D, generator=g).to(tdt)
        for direction in opts.directions:
            for (blk, dens, causal), bm in masks.items():
                out.append(_case(torch, attnkit, q, k, v, do, bm, B, S, H, D, blk, dens, causal,
                                 dtype, direction, opts))
    return out


def _case(torch, attnkit, q, k, v, do, bm, B, S, H, D, blk, dens, causal, dtype, direction, opts):
    F = torch.nn.functional
    dense_blocks = bm.to_dense()
    pairs = attended_pairs(dense_blocks, S, blk, causal)  # over the mask's H heads
    dense_pairs = H * (S * (S + 1) // 2 if causal else S * S)
    sparse_flops = 2.0 * B * pairs * (D + D) * (2.5 if direction == "bwd" else 1.0)
    dense_flops = fmha_flops(B, H, S, S, D, D, causal) * (2.5 if direction == "bwd" else 1.0)
    name = f"B{B} S{S} H{H} D{D} {blk}x{blk} density {dens:g}" + (" causal" if causal else "")
    key = (name, dtype, direction)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))

    def element_mask():
        em = torch.from_numpy(dense_blocks).repeat_interleave(blk, 2).repeat_interleave(blk, 3)
        em = em[:, :, :S, :S]
        if causal:
            em = em & torch.ones(S, S, dtype=torch.bool).tril()
        return em

    def flex_mask():
        mod = None
        if causal:
            def mod(b, h, qi, ki):
                return ki <= qi
        return bm.to_flex(mod)

    impls: Dict[str, Callable[[], Any]] = {}
    peers: List[str] = []
    extra: Dict[str, Any] = {"density": round(pairs / dense_pairs, 4), "block": blk}
    if direction == "fwd":
        impls["attnkit"] = lambda: attnkit.block_sparse_attention(q, k, v, bm, is_causal=causal)
        impls["attnkit-dense"] = lambda: attnkit.attention(q, k, v, is_causal=causal)
        if opts.peers:
            impls["sdpa-dense"] = lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
            impls["sdpa-boolmask"] = lambda: F.scaled_dot_product_attention(
                qt, kt, vt, attn_mask=_CaseState.get(key, "mask", element_mask))
            peers.append("sdpa-boolmask")
            try:
                fa = _flex_compiled()

                def flex_run():
                    fm = _CaseState.get(key, "flex_mask", flex_mask)
                    return fa(qt, kt, vt, block_mask=fm)

                impls["flex-compiled"] = flex_run
                peers.insert(0, "flex-compiled")
            except ImportError:
                pass
    else:
        def saved():
            return attnkit.block_sparse_attention(q, k, v, bm, is_causal=causal, return_lse=True)

        def saved_dense():
            return attnkit.attention(q, k, v, is_causal=causal, return_lse=True)

        def run_sparse():
            o, l = _CaseState.get(key, "fwd", saved)
            return attnkit.block_sparse_attention_backward(do, q, k, v, o, l, bm, is_causal=causal)

        def run_dense():
            o, l = _CaseState.get(key, "fwd_dense", saved_dense)
            return attnkit.attention_backward(do, q, k, v, o, l, is_causal=causal)

        impls["attnkit"] = run_sparse
        impls["attnkit-dense"] = run_dense
        if opts.peers:
            dot = do.transpose(1, 2)

            def graph(mask_fn):
                def build():
                    qg, kg, vg = (x.detach().clone().requires_grad_() for x in (qt, kt, vt))
                    kw = {"attn_mask": mask_fn()} if mask_fn else {"is_causal": causal}
                    return (qg, kg, vg), F.scaled_dot_product_attention(qg, kg, vg, **kw)
                return build

            def sdpa_bwd(label, mask_fn):
                def run():
                    ins, ot = _CaseState.get(key, label, graph(mask_fn))
                    return torch.autograd.grad(ot, ins, dot, retain_graph=True)
                return run

            impls["sdpa-dense"] = sdpa_bwd("sdpa-dense", None)
            impls["sdpa-boolmask"] = sdpa_bwd(
                "sdpa-boolmask", lambda: _CaseState.get(key, "mask", element_mask))
            peers.append("sdpa-boolmask")
            try:
                fa = _flex_compiled()

                def flex_bwd():
                    why = _flex_cpu_backward_error()
                    if why:
                        raise NotImplementedError(why)
                    ins = [x.detach().requires_grad_() for x in (qt, kt, vt)]
                    ot = fa(*ins, block_mask=_CaseState.get(key, "flex_mask", flex_mask))
                    return torch.autograd.grad(ot, ins, dot)

                impls["flex-compiled"] = flex_bwd  # reported as n/a: no CPU backward in torch
            except ImportError:
                pass
    return Case("block_sparse", name, dtype, direction, sparse_flops, impls,
                baseline=peers[0] if peers else None, dense="attnkit-dense",
                bound=dense_pairs / pairs,
                flops_per_impl={"attnkit-dense": dense_flops, "sdpa-dense": dense_flops},
                peers=peers, extra=extra)
