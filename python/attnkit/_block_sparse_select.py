"""Block selection helpers that return a :class:`~attnkit.BlockMask`.

Static patterns -- sliding window and sink + local ("streaming") blocks -- and
content-based selection from mean-pooled q/k block scores, as MoBA (top-k),
XAttention / FlexPrefill (cumulative threshold) and VMoBA do. All work on the
block grid (O(blocks) memory), in float64 NumPy, deterministically.

Block geometry, shared by every helper: q block ``i`` holds rows
``[i*q_block, min(Sq, (i+1)*q_block))``; with the bottom-right alignment of
``is_causal`` (DESIGN §2.1) row ``r`` sits at key position ``r + Sk - Sq``. The
*diagonal* kv blocks of q block ``i`` are those holding the aligned positions of
its rows, ``lo_i = floor((i*q_block + Sk - Sq) / kv_block)`` through
``hi_i = floor((last_row_i + Sk - Sq) / kv_block)``. Under causal, kv blocks after
``hi_i`` hold no key any row of the block may see, and are never listed.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from ._block_sparse import BlockMask, _cdiv, _is_torch


def _sizes(q_block: Any, kv_block: Any, fn: str) -> Tuple[int, int]:
    from ._block_sparse import _block_size

    qb = _block_size(q_block, "q_block")
    return qb, qb if kv_block is None else _block_size(kv_block, "kv_block")


def _lengths(seqlen_q: Any, seqlen_k: Any, fn: str) -> Tuple[int, int]:
    sq = int(seqlen_q)
    sk = sq if seqlen_k is None else int(seqlen_k)
    if sq < 0 or sk < 0 or sq != seqlen_q or (seqlen_k is not None and sk != seqlen_k):
        raise ValueError(f"{fn}: sequence lengths must be integers >= 0, got {(seqlen_q, seqlen_k)}")
    return sq, sk


def _count(x: Any, name: str, fn: str) -> int:
    try:
        v = int(x)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: {name} must be an int, got {x!r}") from None
    if v != x or v < 0:
        raise ValueError(f"{fn}: {name} must be an integer >= 0, got {x!r}")
    return v


def diagonal_blocks(seqlen_q: int, seqlen_k: int, q_block: int, kv_block: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` int64 ``[nQ]``: the first and last diagonal kv block of each
    q block (see the module docstring; may lie outside ``[0, nK)``)."""
    nq = _cdiv(seqlen_q, q_block)
    first = np.arange(nq, dtype=np.int64) * q_block
    last = np.minimum(first + q_block, seqlen_q) - 1
    off = seqlen_k - seqlen_q
    return np.floor_divide(first + off, kv_block), np.floor_divide(last + off, kv_block)


def _from_intervals(a1, e1, a2, e2, q_block, kv_block, sq, sk) -> BlockMask:
    """Mask whose row i lists [a1, e1) then [a2, e2) (disjoint, e1 <= a2)."""
    c1 = np.maximum(e1 - a1, 0)
    c2 = np.maximum(e2 - a2, 0)
    cnt = (c1 + c2).astype(np.int32)
    width = int(cnt.max()) if cnt.size else 0
    n = np.arange(width)
    idx = np.where(n < c1[:, None], a1[:, None] + n, a2[:, None] + n - c1[:, None])
    idx = np.where(n < cnt[:, None], idx, 0).astype(np.int32)
    return BlockMask(cnt[None, None], idx[None, None], q_block=q_block, kv_block=kv_block,
                     seq_lengths=(sq, sk))


def sliding_window_block_mask(
    seqlen_q: int,
    seqlen_k: Optional[int] = None,
    *,
    window_blocks: int,
    q_block: int = 128,
    kv_block: Optional[int] = None,
    is_causal: bool = True,
) -> BlockMask:
    """Each q block attends its diagonal kv blocks and the ``window_blocks`` kv
    blocks before them (and, when not causal, the ``window_blocks`` after them).
    Blocks are attended fully: pass ``is_causal=True`` to
    :func:`block_sparse_attention` for the causal element mask inside the
    diagonal blocks. Returns a NumPy-backed mask with head and batch axes of 1."""
    fn = "sliding_window_block_mask"
    sq, sk = _lengths(seqlen_q, seqlen_k, fn)
    qb, kvb = _sizes(q_block, kv_block, fn)
    w = _count(window_blocks, "window_blocks", fn)
    nk = _cdiv(sk, kvb)
    lo, hi = diagonal_blocks(sq, sk, qb, kvb)
    a = np.maximum(lo - w, 0)
    e = np.minimum(hi if is_causal else hi + w, nk - 1) + 1
    none = np.zeros_like(a)
    return _from_intervals(a, e, none, none, qb, kvb, sq, sk)


def streaming_block_mask(
    seqlen_q: int,
    seqlen_k: Optional[int] = None,
    *,
    sink_blocks: int = 1,
    window_blocks: int,
    q_block: int = 128,
    kv_block: Optional[int] = None,
) -> BlockMask:
    """StreamingLLM / MInference "A-shape": each q block attends the first
    ``sink_blocks`` kv blocks (the attention sinks) plus the causal sliding
    window of :func:`sliding_window_block_mask`. Causal: nothing after the
    diagonal blocks is listed; use ``is_causal=True`` when attending."""
    fn = "streaming_block_mask"
    sq, sk = _lengths(seqlen_q, seqlen_k, fn)
    qb, kvb = _sizes(q_block, kv_block, fn)
    s = _count(sink_blocks, "sink_blocks", fn)
    w = _count(window_blocks, "window_blocks", fn)
    lo, hi = diagonal_blocks(sq, sk, qb, kvb)
    win_a = np.maximum(lo - w, 0)
    win_e = hi + 1  # hi <= nK - 1 always
    sink_e = np.minimum(s, win_e)  # sinks hold only keys some row may see
    sink_e = np.maximum(sink_e, 0)
    # Overlapping sink and window merge into one interval.
    win_a = np.maximum(win_a, sink_e)
    return _from_intervals(np.zeros_like(sink_e), sink_e, win_a, win_e, qb, kvb, sq, sk)


# ----------------------------------------------------------------------------- pooled scores
def _f64(x: Any) -> np.ndarray:
    if _is_torch(x):
        return x.detach().to("cpu").double().numpy()
    return np.asarray(x).astype(np.float64)


def _block_means(x: np.ndarray, block: int) -> Tuple[np.ndarray, np.ndarray]:
    """[B, S, H, D] -> per-block means [B, n, H, D] and the block sizes [n]."""
    B, S, H, D = x.shape
    n = _cdiv(S, block)
    pad = np.zeros((B, n * block, H, D))
    pad[:, :S] = x
    sizes = np.minimum(block, S - np.arange(n) * block)
    sums = pad.reshape(B, n, block, H, D).sum(axis=2)
    return sums / np.maximum(sizes, 1)[None, :, None, None], sizes


def _check_qk(q: Any, k: Any, fn: str) -> Tuple[np.ndarray, np.ndarray]:
    qs, ks = tuple(q.shape), tuple(k.shape)
    if len(qs) != 4 or len(ks) != 4:
        raise ValueError(f"{fn}: q and k must be [batch, seqlen, heads, head_dim], got shapes "
                         f"{list(qs)} and {list(ks)}")
    if qs[0] != ks[0] or qs[3] != ks[3]:
        raise ValueError(f"{fn}: q and k must agree in batch and head_dim, got shapes {list(qs)} "
                         f"and {list(ks)}")
    if ks[2] == 0 or qs[2] % ks[2]:
        raise ValueError(f"{fn}: the number of query heads ({qs[2]}) must be a multiple of the "
                         f"number of key heads ({ks[2]})")
    return _f64(q), _f64(k)


def pooled_block_scores(
    q: Any,
    k: Any,
    *,
    q_block: int = 128,
    kv_block: Optional[int] = None,
    scale: Optional[float] = None,
) -> np.ndarray:
    """``scale * mean(q block i) . mean(k block j)`` per query head: float64
    NumPy ``[B, Hq, nQ, nK]`` (GQA: query head h uses key head h // (Hq // Hkv)).
    Partial last blocks are averaged over the rows they hold."""
    fn = "pooled_block_scores"
    qb, kvb = _sizes(q_block, kv_block, fn)
    qf, kf = _check_qk(q, k, fn)
    scale = qf.shape[3] ** -0.5 if scale is None else float(scale)
    qm, _ = _block_means(qf, qb)
    km, _ = _block_means(kf, kvb)
    km = np.repeat(km, qf.shape[2] // kf.shape[2], axis=2)
    return np.einsum("bihd,bjhd->bhij", qm, km) * scale


def _importance(q, k, q_block, kv_block, is_causal, scale, head_axis, fn):
    """Per-row block importance (softmax over candidate blocks of the pooled score
    plus log(keys in block), i.e. the estimated attention mass of each block),
    the candidate and forced (causal diagonal) blocks, and the mask's lengths."""
    if head_axis not in ("q", "kv"):
        raise ValueError(f"{fn}: head_axis must be 'q' or 'kv', got {head_axis!r}")
    qb, kvb = _sizes(q_block, kv_block, fn)
    scores = pooled_block_scores(q, k, q_block=qb, kv_block=kvb, scale=scale)
    B, Hq, nq, nk = scores.shape
    sq, sk = int(q.shape[1]), int(k.shape[1])
    hkv = int(k.shape[2])
    sizes = np.minimum(kvb, sk - np.arange(nk) * kvb)
    j = np.arange(nk)[None, :]
    if is_causal:
        lo, hi = diagonal_blocks(sq, sk, qb, kvb)
        cand = j <= hi[:, None]
        forced = cand & (j >= lo[:, None])
    else:
        cand = np.ones((nq, nk), dtype=bool)
        forced = np.zeros((nq, nk), dtype=bool)
    logits = np.where(cand, scores + np.log(np.maximum(sizes, 1)), -np.inf)
    mx = logits.max(axis=-1, keepdims=True, initial=-np.inf)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    p = np.exp(logits - mx)
    tot = p.sum(axis=-1, keepdims=True)
    imp = np.divide(p, tot, out=np.zeros_like(p), where=tot > 0)
    if head_axis == "kv":
        imp = imp.reshape(B, hkv, Hq // hkv, nq, nk).mean(axis=2)
    return imp, cand, forced, qb, kvb, sq, sk


def _select(imp, cand, forced, n_keep_fn, q, qb, kvb, sq, sk) -> BlockMask:
    """Keep, per row, the first n of (forced blocks, then by importance, ties to the
    lower block id); lists come out ascending."""
    nk = imp.shape[-1]
    key = np.where(forced, 2.0, np.where(cand, imp, -1.0))  # importances lie in [0, 1]
    order = np.argsort(-key, axis=-1, kind="stable")
    n_forced = np.broadcast_to(forced.sum(-1), imp.shape[:-1])
    n_cand = np.broadcast_to(cand.sum(-1), imp.shape[:-1])
    sorted_imp = np.take_along_axis(np.where(cand, imp, 0.0), order, axis=-1)
    keep = np.minimum(np.maximum(n_keep_fn(sorted_imp), n_forced), n_cand).astype(np.int32)
    width = int(keep.max()) if keep.size else 0
    rank = np.arange(width)
    sel = np.where(rank < keep[..., None], order[..., :width], nk)
    sel = np.sort(sel, axis=-1)
    idx = np.where(sel < nk, sel, 0).astype(np.int32)
    mask = BlockMask(keep, np.ascontiguousarray(idx), q_block=qb, kv_block=kvb,
                     seq_lengths=(sq, sk))
    return mask.torch(q.device) if _is_torch(q) else mask


def topk_block_mask(
    q: Any,
    k: Any,
    *,
    topk: int,
    q_block: int = 128,
    kv_block: Optional[int] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    head_axis: str = "q",
) -> BlockMask:
    """MoBA / VMoBA-style gating: each q block attends the ``topk`` kv blocks with
    the highest pooled score ``mean(q block) . mean(k block)``.

    Under ``is_causal`` only blocks some row may see are candidates, and the
    diagonal blocks are always kept (they count toward ``topk``; a row keeps
    all of them even when ``topk`` is smaller). ``head_axis="q"`` selects per
    query head; ``"kv"`` selects per key/value head from the group-mean of the
    heads' block importances. Ties go to the lower block id. Returns a mask in
    q's framework (torch in, torch-backed mask out)."""
    fn = "topk_block_mask"
    n = _count(topk, "topk", fn)
    imp, cand, forced, qb, kvb, sq, sk = _importance(q, k, q_block, kv_block, is_causal, scale,
                                                     head_axis, fn)
    return _select(imp, cand, forced, lambda s: np.full(s.shape[:-1], n), q, qb, kvb, sq, sk)


def threshold_block_mask(
    q: Any,
    k: Any,
    *,
    threshold: float,
    q_block: int = 128,
    kv_block: Optional[int] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    head_axis: str = "q",
) -> BlockMask:
    """XAttention / FlexPrefill-style cumulative selection: each q block keeps its
    most important kv blocks until their estimated attention mass reaches
    ``threshold`` (in (0, 1]).

    A block's importance is the softmax, over the row's candidate blocks, of the
    pooled score plus ``log(keys in the block)`` -- the share of the q block's
    attention the block would get if its keys were all equal to their mean. Blocks
    are taken by decreasing importance (causal: the diagonal blocks first, always
    kept) while the mass taken before them is below ``threshold``. ``head_axis``
    as in :func:`topk_block_mask`."""
    fn = "threshold_block_mask"
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: threshold must be a number, got {threshold!r}") from None
    if not (0.0 < t <= 1.0):
        raise ValueError(f"{fn}: threshold must be in (0, 1], got {threshold!r}")
    imp, cand, forced, qb, kvb, sq, sk = _importance(q, k, q_block, kv_block, is_causal, scale,
                                                     head_axis, fn)

    def n_keep(sorted_imp):
        before = np.cumsum(sorted_imp, axis=-1) - sorted_imp
        return (before < t).sum(axis=-1)

    return _select(imp, cand, forced, n_keep, q, qb, kvb, sq, sk)
