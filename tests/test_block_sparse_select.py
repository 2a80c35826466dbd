"""Block selection helpers against brute-force, row-by-row implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import TOL, randn, rel_err

import attnkit
from attnkit import reference as ref


def cdiv(a, b):
    return -(-a // b)


def listed(bm, b=0, h=0):
    """Per q block, the set of listed kv blocks."""
    cnt, idx = np.asarray(bm.numpy().kv_num_blocks), np.asarray(bm.numpy().kv_indices)
    bb = b if cnt.shape[0] > 1 else 0
    hh = h if cnt.shape[1] > 1 else 0
    return [set(idx[bb, hh, i, : cnt[bb, hh, i]].tolist()) for i in range(cnt.shape[2])]


def diag_of(i, sq, sk, qb, kvb):
    """Brute force: the kv blocks holding the aligned positions of q block i's rows."""
    rows = range(i * qb, min(sq, (i + 1) * qb))
    blocks = [math.floor((r + sk - sq) / kvb) for r in rows]
    return min(blocks), max(blocks)


GEOMETRY = [(200, 200, 32, 32), (130, 300, 16, 64), (300, 130, 64, 16), (257, 257, 48, 20),
            (64, 64, 128, 128), (100, 37, 7, 5)]


@pytest.mark.parametrize("sq,sk,qb,kvb", GEOMETRY)
@pytest.mark.parametrize("w", [0, 1, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_sliding_window(sq, sk, qb, kvb, w, causal):
    bm = attnkit.sliding_window_block_mask(sq, sk, window_blocks=w, q_block=qb, kv_block=kvb,
                                           is_causal=causal)
    assert bm.seq_lengths == (sq, sk) and bm.shape == (1, 1, cdiv(sq, qb), cdiv(sk, kvb))
    nk = cdiv(sk, kvb)
    for i, got in enumerate(listed(bm)):
        lo, hi = diag_of(i, sq, sk, qb, kvb)
        want = {j for j in range(nk) if lo - w <= j <= (hi if causal else hi + w)}
        assert got == want, (i, got, want)


@pytest.mark.parametrize("sq,sk,qb,kvb", GEOMETRY)
@pytest.mark.parametrize("sinks,w", [(1, 0), (1, 2), (3, 1), (0, 2), (10, 10)])
def test_streaming(sq, sk, qb, kvb, sinks, w):
    bm = attnkit.streaming_block_mask(sq, sk, sink_blocks=sinks, window_blocks=w, q_block=qb,
                                      kv_block=kvb)
    for i, got in enumerate(listed(bm)):
        lo, hi = diag_of(i, sq, sk, qb, kvb)
        want = {j for j in range(cdiv(sk, kvb)) if j <= hi and (j < sinks or j >= lo - w)}
        assert got == want, (i, got, want)


def test_window_defaults_and_errors():
    bm = attnkit.sliding_window_block_mask(256, window_blocks=1, q_block=64)
    assert bm.kv_block == 64 and listed(bm) == [{0}, {0, 1}, {1, 2}, {2, 3}]
    with pytest.raises(ValueError, match="window_blocks must be an integer >= 0"):
        attnkit.sliding_window_block_mask(256, window_blocks=-1)
    with pytest.raises(ValueError, match="sequence lengths must be integers >= 0"):
        attnkit.streaming_block_mask(-3, window_blocks=1)


# ----------------------------------------------------------------------------- content-based
def brute_importance(q, k, qb, kvb, causal, scale, head_axis):
    """[B, Hm, nQ] lists of (importance per kv block) computed loop by loop, plus
    candidate / forced sets per q block."""
    q, k = ref.to_f64(q), ref.to_f64(k)
    B, sq, hq, D = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    g = hq // hkv
    scale = D ** -0.5 if scale is None else scale
    nq, nk = cdiv(sq, qb), cdiv(sk, kvb)
    cands, forced = [], []
    for i in range(nq):
        lo, hi = diag_of(i, sq, sk, qb, kvb)
        c = [j for j in range(nk) if (not causal or j <= hi)]
        cands.append(c)
        forced.append({j for j in c if causal and j >= lo})
    imp = np.zeros((B, hq, nq, nk))
    for b in range(B):
        for h in range(hq):
            for i in range(nq):
                qm = q[b, i * qb:(i + 1) * qb, h].mean(0)
                logits = {}
                for j in cands[i]:
                    keys = k[b, j * kvb:(j + 1) * kvb, h // g]
                    logits[j] = scale * float(qm @ keys.mean(0)) + math.log(len(keys))
                if logits:
                    mx = max(logits.values())
                    tot = sum(math.exp(x - mx) for x in logits.values())
                    for j, x in logits.items():
                        imp[b, h, i, j] = math.exp(x - mx) / tot
    if head_axis == "kv":
        imp = imp.reshape(B, hkv, g, nq, nk).mean(2)
    return imp, cands, forced


def ranked(imp_row, cand, forced):
    return sorted(cand, key=lambda j: (j not in forced, -imp_row[j], j))


SEL_CASES = [  # B, Sq, Sk, Hq, Hkv, D, qb, kvb
    (1, 256, 256, 2, 2, 16, 32, 32),
    (2, 150, 230, 4, 2, 24, 16, 32),
    (1, 230, 150, 4, 1, 8, 64, 16),
    (1, 100, 100, 2, 2, 16, 48, 20),
]


@pytest.mark.parametrize("case", SEL_CASES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_axis", ["q", "kv"])
@pytest.mark.parametrize("topk", [0, 1, 3, 100])
def test_topk(rng, case, causal, head_axis, topk):
    B, sq, sk, hq, hkv, D, qb, kvb = case
    q, k = randn(rng, (B, sq, hq, D), "float32"), randn(rng, (B, sk, hkv, D), "float32")
    bm = attnkit.topk_block_mask(q, k, topk=topk, q_block=qb, kv_block=kvb, is_causal=causal,
                                 head_axis=head_axis)
    hm = hq if head_axis == "q" else hkv
    assert bm.shape == (B, hm, cdiv(sq, qb), cdiv(sk, kvb)) and bm.seq_lengths == (sq, sk)
    imp, cands, forced = brute_importance(q, k, qb, kvb, causal, None, head_axis)
    for b in range(B):
        for h in range(hm):
            for i, got in enumerate(listed(bm, b, h)):
                order = ranked(imp[b, h, i], cands[i], forced[i])
                want = set(order[: max(topk, len(forced[i]))])
                assert got == want, (b, h, i, got, want)
                assert forced[i] <= got  # the diagonal is always kept under causal


@pytest.mark.parametrize("case", SEL_CASES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_axis", ["q", "kv"])
@pytest.mark.parametrize("threshold", [0.05, 0.5, 0.9, 1.0])
def test_threshold(rng, case, causal, head_axis, threshold):
    B, sq, sk, hq, hkv, D, qb, kvb = case
    # Larger scores spread the importances so that the threshold matters.
    q, k = randn(rng, (B, sq, hq, D), "float32", 3.0), randn(rng, (B, sk, hkv, D), "float32", 3.0)
    bm = attnkit.threshold_block_mask(q, k, threshold=threshold, q_block=qb, kv_block=kvb,
                                      is_causal=causal, head_axis=head_axis, scale=0.5)
    hm = hq if head_axis == "q" else hkv
    imp, cands, forced = brute_importance(q, k, qb, kvb, causal, 0.5, head_axis)
    for b in range(B):
        for h in range(hm):
            for i, got in enumerate(listed(bm, b, h)):
                want, mass = set(), 0.0
                for j in ranked(imp[b, h, i], cands[i], forced[i]):
                    if j in forced[i] or mass < threshold:
                        want.add(j)
                        mass += imp[b, h, i, j]
                assert got == want, (b, h, i, got, want)


def test_pooled_scores(rng):
    q, k = randn(rng, (2, 70, 4, 8), "float32"), randn(rng, (2, 45, 2, 8), "float32")
    s = attnkit.pooled_block_scores(q, k, q_block=32, kv_block=16, scale=0.7)
    assert s.shape == (2, 4, 3, 3)
    qd, kd = ref.to_f64(q), ref.to_f64(k)
    for b, h, i, j in np.ndindex(*s.shape):
        want = 0.7 * qd[b, i * 32:(i + 1) * 32, h].mean(0) @ kd[b, j * 16:(j + 1) * 16, h // 2].mean(0)
        assert s[b, h, i, j] == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_selected_masks_drive_attention(rng):
    torch = pytest.importorskip("torch")
    q = torch.from_numpy(randn(rng, (1, 300, 4, 32), "float32"))
    k = torch.from_numpy(randn(rng, (1, 300, 2, 32), "float32"))
    v = torch.from_numpy(randn(rng, (1, 300, 2, 32), "float32"))
    for bm in (attnkit.topk_block_mask(q, k, topk=3, q_block=64, is_causal=True, head_axis="kv"),
               attnkit.threshold_block_mask(q, k, threshold=0.8, q_block=32, kv_block=64, is_causal=True),
               attnkit.streaming_block_mask(300, sink_blocks=1, window_blocks=1, q_block=64)):
        out, lse = attnkit.block_sparse_attention(q, k, v, bm, is_causal=True, return_lse=True)
        ro, rl = ref.block_sparse_attention(q, k, v, bm, is_causal=True)
        assert rel_err(out, ro) < TOL["float32"] and rel_err(lse, rl) < TOL["float32"]
    # Masks from torch inputs are torch-backed.
    assert isinstance(attnkit.topk_block_mask(q, k, topk=1, q_block=64).kv_indices, torch.Tensor)


def test_selection_errors(rng):
    q, k = randn(rng, (1, 64, 2, 8), "float32"), randn(rng, (1, 64, 2, 8), "float32")
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\], got 0"):
        attnkit.threshold_block_mask(q, k, threshold=0, q_block=16)
    with pytest.raises(ValueError, match="topk must be an integer >= 0, got -1"):
        attnkit.topk_block_mask(q, k, topk=-1, q_block=16)
    with pytest.raises(ValueError, match="head_axis must be 'q' or 'kv'"):
        attnkit.topk_block_mask(q, k, topk=1, q_block=16, head_axis="both")
    with pytest.raises(ValueError, match=r"must be a multiple of the number of key heads \(3\)"):
        attnkit.topk_block_mask(q, randn(rng, (1, 64, 3, 8), "float32"), topk=1, q_block=16)
    with pytest.raises(ValueError, match=r"q and k must be \[batch, seqlen, heads, head_dim\]"):
        attnkit.pooled_block_scores(q[0], k, q_block=16)
