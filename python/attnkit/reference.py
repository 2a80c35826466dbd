"""Brute-force float64 references: an explicit boolean mask and a dense softmax.

Slow and obviously correct; the tests and ``attnkit check`` compare every
kernel against these. All functions take any framework's CPU tensors and
return float64 NumPy arrays.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np


def to_f64(x: Any) -> np.ndarray:
    """Any CPU tensor (NumPy incl. ml_dtypes bfloat16, torch, JAX) as float64 NumPy."""
    if type(x).__module__.split(".")[0] == "torch":
        return x.detach().to("cpu").double().numpy()
    return np.asarray(x).astype(np.float64)


def fmha_mask(
    sq: int,
    sk: int,
    is_causal: bool = False,
    window_size: Optional[Sequence[int]] = None,
) -> np.ndarray:
    """Bool [sq, sk]: query i sees key j (bottom-right aligned, DESIGN §2.1)."""
    left, right = (-1, -1) if window_size is None else (int(window_size[0]), int(window_size[1]))
    if is_causal:
        right = 0
    i = np.arange(sq)[:, None] + (sk - sq)
    j = np.arange(sk)[None, :]
    m = np.ones((sq, sk), dtype=bool)
    if left >= 0:
        m &= j >= i - left
    if right >= 0:
        m &= j <= i + right
    return m


def masked_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, scale: float, softcap: float = 0.0
) -> Tuple[np.ndarray, np.ndarray]:
    """One sequence: q [Sq, Hq, D], k [Sk, Hkv, D], v [Sk, Hkv, Dv], mask
    [Sq, Sk] or [Hq, Sq, Sk] -> (out [Sq, Hq, Dv], lse [Sq, Hq])."""
    hq, hkv = q.shape[1], k.shape[1]
    kh = np.repeat(k, hq // hkv, axis=1)  # the reference may repeat; kernels never do
    vh = np.repeat(v, hq // hkv, axis=1)
    s = np.einsum("ihd,jhd->hij", q, kh) * scale
    if softcap:
        s = softcap * np.tanh(s / softcap)
    m = np.broadcast_to(mask, s.shape)
    s = np.where(m, s, -np.inf)
    mx = s.max(axis=-1, keepdims=True, initial=-np.inf)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    p = np.exp(s - mx)
    l = p.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        pn = np.where(l > 0, p / l, 0.0)
        lse = np.where(l[..., 0] > 0, np.log(l[..., 0]) + mx[..., 0], -np.inf)
    out = np.einsum("hij,jhd->ihd", pn, vh)
    return out, lse.T


def masked_attention_grad(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray,
    dout: np.ndarray,
    scale: float,
    softcap: float = 0.0,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of masked_attention's out w.r.t. q, k, v (one sequence)."""
    hq, hkv = q.shape[1], k.shape[1]
    g = hq // hkv
    kh = np.repeat(k, g, axis=1)
    vh = np.repeat(v, g, axis=1)
    raw = np.einsum("ihd,jhd->hij", q, kh) * scale
    s = softcap * np.tanh(raw / softcap) if softcap else raw
    m = np.broadcast_to(mask, s.shape)
    s = np.where(m, s, -np.inf)
    mx = s.max(axis=-1, keepdims=True, initial=-np.inf)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    p = np.exp(s - mx)
    l = p.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(l > 0, p / l, 0.0)
    do = np.transpose(dout, (1, 0, 2))  # [H, Sq, Dv]
    dv_h = np.einsum("hij,hid->jhd", p, do)
    dp = np.einsum("hid,jhd->hij", do, vh)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    if softcap:
        ds = ds * (1.0 - np.tanh(raw / softcap) ** 2)
    ds *= scale
    dq = np.einsum("hij,jhd->ihd", ds, kh)
    dk_h = np.einsum("hij,ihd->jhd", ds, q)
    sk = k.shape[0]
    dk = dk_h.reshape(sk, hkv, g, k.shape[-1]).sum(2)
    dv = dv_h.reshape(sk, hkv, g, v.shape[-1]).sum(2)
    return dq, dk, dv


def _sequences(q, k, cu_seqlens_q, cu_seqlens_k):
    """(q slice, k slice) per sequence for batched or varlen inputs."""
    if cu_seqlens_q is None:
        return [(b, slice(None), slice(None)) for b in range(q.shape[0])]
    cq = np.asarray(to_f64(cu_seqlens_q)).astype(np.int64)
    ck = np.asarray(to_f64(cu_seqlens_k)).astype(np.int64)
    return [(None, slice(cq[i], cq[i + 1]), slice(ck[i], ck[i + 1])) for i in range(len(cq) - 1)]


def attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    is_causal: bool = False,
    window_size: Optional[Sequence[int]] = None,
    softcap: Optional[float] = None,
    scale: Optional[float] = None,
    cu_seqlens_q: Any = None,
    cu_seqlens_k: Any = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """float64 (out, lse) of attnkit.attention with the same arguments."""
    q, k, v = to_f64(q), to_f64(k), to_f64(v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = np.zeros((*q.shape[:-1], v.shape[-1]))
    lse = np.full(q.shape[:-1], -np.inf)
    for b, sq_sl, sk_sl in _sequences(q, k, cu_seqlens_q, cu_seqlens_k):
        qb = q[b] if b is not None else q[sq_sl]
        kb = k[b] if b is not None else k[sk_sl]
        vb = v[b] if b is not None else v[sk_sl]
        mask = fmha_mask(qb.shape[0], kb.shape[0], is_causal, window_size)
        o, l = masked_attention(qb, kb, vb, mask, scale, softcap or 0.0)
        if b is not None:
            out[b], lse[b] = o, l
        else:
            out[sq_sl], lse[sq_sl] = o, l
    return out, lse


def attention_grad(
    dout: Any,
    q: Any,
    k: Any,
    v: Any,
    *,
    is_causal: bool = False,
    window_size: Optional[Sequence[int]] = None,
    softcap: Optional[float] = None,
    scale: Optional[float] = None,
    cu_seqlens_q: Any = None,
    cu_seqlens_k: Any = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 (dq, dk, dv) of attnkit.attention given dout."""
    q, k, v, dout = to_f64(q), to_f64(k), to_f64(v), to_f64(dout)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for b, sq_sl, sk_sl in _sequences(q, k, cu_seqlens_q, cu_seqlens_k):
        pick_q = (lambda x: x[b]) if b is not None else (lambda x: x[sq_sl])
        pick_k = (lambda x: x[b]) if b is not None else (lambda x: x[sk_sl])
        qb, kb, vb, dob = pick_q(q), pick_k(k), pick_k(v), pick_q(dout)
        mask = fmha_mask(qb.shape[0], kb.shape[0], is_causal, window_size)
        gq, gk, gv = masked_attention_grad(qb, kb, vb, mask, dob, scale, softcap or 0.0)
        if b is not None:
            dq[b], dk[b], dv[b] = gq, gk, gv
        else:
            dq[sq_sl], dk[sk_sl], dv[sk_sl] = gq, gk, gv
    return dq, dk, dv


# ---- gna ----
# Neighborhood attention (DESIGN §2.2), written straight from the formulas: per
# axis a boolean [n, n] "query x sees key y" matrix, their product over the axes,
# then the dense masked softmax above.


def _per_dim_arg(value: Any, nd: int) -> Tuple:
    vals = tuple(value) if isinstance(value, (list, tuple)) else (value,) * nd
    if len(vals) != nd:
        raise ValueError(f"expected 1 or {nd} values, got {vals!r}")
    return vals


def neighborhood_window(i: int, n: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                        is_causal: bool = False) -> Tuple[int, int]:
    """Window of coordinate i on an axis of length n, as a half-open range [lo, hi)
    of *in-group* indices (group i % dilation, in-group index i // dilation)."""
    k, s, d = kernel_size, stride, dilation
    g, ig = i % d, i // d
    ng = -(-(n - g) // d)  # ceil((n - g) / d)
    if is_causal:
        leader = min((ig // s) * s + s - 1, ng - 1)
        return max(leader - (k - 1), 0), min(ig, ng - 1) + 1
    wl, wr = k // 2, k // 2 + k % 2 - 1
    leader = min((ig // s) * s + s // 2, ng - 1)
    centre = min(max(leader, wl), ng - 1 - wr)
    return centre - wl, centre + wr + 1


def neighborhood_axis_mask(n: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                           is_causal: bool = False) -> np.ndarray:
    """Bool [n, n]: coordinate x sees coordinate y on one axis."""
    m = np.zeros((n, n), dtype=bool)
    for x in range(n):
        lo, hi = neighborhood_window(x, n, kernel_size, stride, dilation, is_causal)
        g = x % dilation
        for j in range(lo, hi):
            m[x, g + j * dilation] = True
    return m


def neighborhood_mask(spatial: Sequence[int], kernel_size: Any, stride: Any = 1, dilation: Any = 1,
                      is_causal: Any = False) -> np.ndarray:
    """Bool [T, T] over the flattened (row-major) tokens: a key is a neighbour iff it is
    one on every axis."""
    nd = len(spatial)
    ks, st, dl, ca = (_per_dim_arg(a, nd) for a in (kernel_size, stride, dilation, is_causal))
    m = np.ones((1, 1), dtype=bool)
    for ax in range(nd):
        a = neighborhood_axis_mask(spatial[ax], ks[ax], st[ax], dl[ax], bool(ca[ax]))
        m = (m[:, None, :, None] & a[None, :, None, :]).reshape(m.shape[0] * a.shape[0], -1)
    return m


def _na_flat(q, k, v, extra_k, extra_v, kernel_size, stride, dilation, is_causal):
    nd = q.ndim - 3
    spatial = q.shape[1:1 + nd]
    T = int(np.prod(spatial))
    qf = q.reshape(q.shape[0], T, *q.shape[-2:])
    kf = k.reshape(k.shape[0], T, *k.shape[-2:])
    vf = v.reshape(v.shape[0], T, *v.shape[-2:])
    mask = neighborhood_mask(spatial, kernel_size, stride, dilation, is_causal)
    if extra_k is not None:
        kf = np.concatenate([kf, extra_k], axis=1)
        vf = np.concatenate([vf, extra_v], axis=1)
        mask = np.concatenate([mask, np.ones((T, extra_k.shape[1]), dtype=bool)], axis=1)
    return qf, kf, vf, mask, spatial


def neighborhood_attention(q: Any, k: Any, v: Any, kernel_size: Any, *, stride: Any = 1,
                           dilation: Any = 1, is_causal: Any = False, scale: Optional[float] = None,
                           additional_keys: Any = None, additional_values: Any = None
                           ) -> Tuple[np.ndarray, np.ndarray]:
    """float64 (out, lse) of attnkit.neighborhood_attention with the same arguments."""
    q, k, v = to_f64(q), to_f64(k), to_f64(v)
    ek = None if additional_keys is None else to_f64(additional_keys)
    ev = None if additional_values is None else to_f64(additional_values)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qf, kf, vf, mask, spatial = _na_flat(q, k, v, ek, ev, kernel_size, stride, dilation, is_causal)
    B, H, Dv = q.shape[0], q.shape[-2], v.shape[-1]
    out = np.zeros((B, *spatial, H, Dv))
    lse = np.zeros((B, *spatial, H))
    for b in range(B):
        o, l = masked_attention(qf[b], kf[b], vf[b], mask, scale)
        out[b] = o.reshape(*spatial, H, Dv)
        lse[b] = l.reshape(*spatial, H)
    return out, lse


def neighborhood_attention_grad(dout: Any, q: Any, k: Any, v: Any, kernel_size: Any, *,
                                stride: Any = 1, dilation: Any = 1, is_causal: Any = False,
                                scale: Optional[float] = None, additional_keys: Any = None,
                                additional_values: Any = None) -> Tuple[np.ndarray, ...]:
    """float64 (dq, dk, dv) -- plus (d_additional_keys, d_additional_values) when given --
    of attnkit.neighborhood_attention's out given dout."""
    q, k, v, dout = to_f64(q), to_f64(k), to_f64(v), to_f64(dout)
    ek = None if additional_keys is None else to_f64(additional_keys)
    ev = None if additional_values is None else to_f64(additional_values)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qf, kf, vf, mask, spatial = _na_flat(q, k, v, ek, ev, kernel_size, stride, dilation, is_causal)
    T = qf.shape[1]
    dof = dout.reshape(dout.shape[0], T, *dout.shape[-2:])
    dq, dk, dv = np.zeros_like(qf), np.zeros_like(kf), np.zeros_like(vf)
    for b in range(q.shape[0]):
        dq[b], dk[b], dv[b] = masked_attention_grad(qf[b], kf[b], vf[b], mask, dof[b], scale)
    grads = (dq.reshape(q.shape), dk[:, :T].reshape(k.shape), dv[:, :T].reshape(v.shape))
    if ek is not None:
        grads += (dk[:, T:], dv[:, T:])
    return grads
# ---- block_sparse ----
def block_sparse_element_mask(block_mask: Any, seqlen_q: int, seqlen_k: int) -> np.ndarray:
    """Bool [Bm, Hm, Sq, Sk]: row i sees key j iff the q block of i lists the kv
    block of j. Read straight from kv_num_blocks / kv_indices, entry by entry."""
    cnt = np.asarray(to_f64(block_mask.kv_num_blocks)).astype(np.int64)
    idx = np.asarray(to_f64(block_mask.kv_indices)).astype(np.int64)
    qb, kvb = int(block_mask.q_block), int(block_mask.kv_block)
    bm, hm, nq = cnt.shape
    m = np.zeros((bm, hm, seqlen_q, seqlen_k), dtype=bool)
    for b in range(bm):
        for h in range(hm):
            for i in range(nq):
                for n in range(cnt[b, h, i]):
                    j = idx[b, h, i, n]
                    m[b, h, i * qb:(i + 1) * qb, j * kvb:(j + 1) * kvb] = True
    return m


def _block_sparse_masks(block_mask, b, hq, hkv, sq, sk, is_causal):
    """[Hq, Sq, Sk] element mask of batch b (head axis Hq, Hkv or 1 broadcast)."""
    m = block_sparse_element_mask(block_mask, sq, sk)
    m = m[b if m.shape[0] > 1 else 0]
    if m.shape[0] == hkv and hkv != hq:
        m = np.repeat(m, hq // hkv, axis=0)
    m = np.broadcast_to(m, (hq, sq, sk))
    if is_causal:
        m = m & fmha_mask(sq, sk, is_causal=True)[None]
    return m


def block_sparse_attention(
    q: Any, k: Any, v: Any, block_mask: Any, *, is_causal: bool = False,
    scale: Optional[float] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """float64 (out, lse) of attnkit.block_sparse_attention: dense attention
    under the expanded element mask."""
    q, k, v = to_f64(q), to_f64(k), to_f64(v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = np.zeros((*q.shape[:-1], v.shape[-1]))
    lse = np.full(q.shape[:-1], -np.inf)
    for b in range(q.shape[0]):
        m = _block_sparse_masks(block_mask, b, q.shape[2], k.shape[2], q.shape[1], k.shape[1],
                                is_causal)
        out[b], lse[b] = masked_attention(q[b], k[b], v[b], m, scale)
    return out, lse


def block_sparse_attention_grad(
    dout: Any, q: Any, k: Any, v: Any, block_mask: Any, *, is_causal: bool = False,
    scale: Optional[float] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 (dq, dk, dv) of attnkit.block_sparse_attention given dout."""
    q, k, v, dout = to_f64(q), to_f64(k), to_f64(v), to_f64(dout)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for b in range(q.shape[0]):
        m = _block_sparse_masks(block_mask, b, q.shape[2], k.shape[2], q.shape[1], k.shape[1],
                                is_causal)
        dq[b], dk[b], dv[b] = masked_attention_grad(q[b], k[b], v[b], m, dout[b], scale)
    return dq, dk, dv


# ---- linear ----
# The float64 token-by-token recurrence of DESIGN §2.4 (no chunking), and its
# gradient by the adjoint recurrence run backwards over tokens. Slow and
# obviously correct; the chunked kernels are compared against these.


def _linear_sequences(q, cu_seqlens):
    """(batch index or None, token slice) per sequence."""
    if cu_seqlens is None:
        return [(b, slice(None)) for b in range(q.shape[0])]
    cu = np.asarray(to_f64(cu_seqlens)).astype(np.int64)
    return [(None, slice(cu[i], cu[i + 1])) for i in range(len(cu) - 1)]


def _linear_pick(x, b, sl):
    return x[b] if b is not None else x[sl]


def _linear_gate(g, b, sl, n_tok, heads):
    """Per-token log gates [T, H] of one sequence (zeros without a gate)."""
    if g is None:
        return np.zeros((n_tok, heads))
    g = to_f64(g)
    if g.ndim == 1:
        return np.broadcast_to(g, (n_tok, heads))
    return _linear_pick(g, b, sl)


def linear_attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    is_causal: bool = True,
    g: Any = None,
    scale: Optional[float] = None,
    normalize: bool = False,
    initial_state: Any = None,
    cu_seqlens: Any = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """float64 (out, final_state) of attnkit.linear_attention: for each token,
    S = exp(g_t) S + k_t^T v_t, z = exp(g_t) z + k_t, o_t = scale q_t S (divided
    by scale q_t z when normalize, 0 where that is 0). Non-causal: S, z summed
    over the whole sequence first."""
    q, k, v = to_f64(q), to_f64(k), to_f64(v)
    hq, hkv, dk, dv = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    rep = hq // hkv
    scale = dk ** -0.5 if scale is None else scale
    seqs = _linear_sequences(q, cu_seqlens)
    out = np.zeros((*q.shape[:-1], dv))
    final = np.zeros((len(seqs), hq, dk, dv))
    s0 = None if initial_state is None else to_f64(initial_state)
    for n, (b, sl) in enumerate(seqs):
        qb = _linear_pick(q, b, sl)
        kb = np.repeat(_linear_pick(k, b, sl), rep, axis=1)  # the reference may repeat
        vb = np.repeat(_linear_pick(v, b, sl), rep, axis=1)
        T = qb.shape[0]
        gb = _linear_gate(g, b, sl, T, hq)
        S = np.zeros((hq, dk, dv)) if s0 is None else s0[n].copy()
        z = np.zeros((hq, dk))
        o = np.zeros((T, hq, dv))
        den = np.ones((T, hq))
        if is_causal:
            for t in range(T):
                a = np.exp(gb[t])[:, None]
                S = a[:, :, None] * S + kb[t][:, :, None] * vb[t][:, None, :]
                z = a * z + kb[t]
                o[t] = scale * np.einsum("hd,hde->he", qb[t], S)
                den[t] = scale * np.einsum("hd,hd->h", qb[t], z)
        else:
            S = S + np.einsum("thd,the->hde", kb, vb)
            z = kb.sum(0)
            o = scale * np.einsum("thd,hde->the", qb, S)
            den = scale * np.einsum("thd,hd->th", qb, z)
        if normalize:
            with np.errstate(divide="ignore", invalid="ignore"):
                o = np.where(den[..., None] != 0, o / den[..., None], 0.0)
        if b is not None:
            out[b] = o
        else:
            out[sl] = o
        final[n] = S
    return out, final


def linear_attention_grad(
    dout: Any,
    q: Any,
    k: Any,
    v: Any,
    *,
    is_causal: bool = True,
    g: Any = None,
    scale: Optional[float] = None,
    normalize: bool = False,
    initial_state: Any = None,
    dfinal_state: Any = None,
    cu_seqlens: Any = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray], np.ndarray]:
    """float64 (dq, dk, dv, dg, d_initial_state) of linear_attention, by the
    adjoint recurrence: with dS = dL/dS_t and a_t = exp(g_t),
    dq_t = scale dO_t S_t^T, dk_t = dS_t v_t, dv_t = k_t dS_t,
    dg_t = a_t <dS_t, S_{t-1}>, dS_{t-1} = a_t dS_t + scale q_{t-1}^T dO_{t-1}
    (plus the same for z with normalize). dg is None without g."""
    q, k, v = to_f64(q), to_f64(k), to_f64(v)
    dout = np.zeros((*q.shape[:-1], v.shape[-1])) if dout is None else to_f64(dout)
    hq, hkv, dk, dv = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    rep = hq // hkv
    scale = dk ** -0.5 if scale is None else scale
    seqs = _linear_sequences(q, cu_seqlens)
    s0 = None if initial_state is None else to_f64(initial_state)
    dfin = None if dfinal_state is None else to_f64(dfinal_state)
    gq = np.zeros_like(q)
    gk = np.zeros_like(k)
    gv = np.zeros_like(v)
    gg = None if g is None else np.zeros(to_f64(g).shape)
    ginit = np.zeros((len(seqs), hq, dk, dv))
    for n, (b, sl) in enumerate(seqs):
        qb, dob = _linear_pick(q, b, sl), _linear_pick(dout, b, sl)
        kb = np.repeat(_linear_pick(k, b, sl), rep, axis=1)
        vb = np.repeat(_linear_pick(v, b, sl), rep, axis=1)
        T = qb.shape[0]
        gb = _linear_gate(g, b, sl, T, hq)
        a = np.exp(gb)  # [T, H]
        S0 = np.zeros((hq, dk, dv)) if s0 is None else s0[n]
        dS = np.zeros((hq, dk, dv)) if dfin is None else dfin[n].copy()
        dq_b = np.zeros((T, hq, dk))
        dk_b = np.zeros((T, hq, dk))
        dv_b = np.zeros((T, hq, dv))
        dg_b = np.zeros((T, hq))
        if is_causal:
            S = np.zeros((T + 1, hq, dk, dv))  # S[t + 1] = state after token t
            Z = np.zeros((T + 1, hq, dk))
            S[0] = S0
            for t in range(T):
                S[t + 1] = a[t][:, None, None] * S[t] + kb[t][:, :, None] * vb[t][:, None, :]
                Z[t + 1] = a[t][:, None] * Z[t] + kb[t]
            dZ = np.zeros((hq, dk))
            for t in range(T - 1, -1, -1):
                St, Zt = S[t + 1], Z[t + 1]
                do = dob[t]
                if normalize:
                    num = scale * np.einsum("hd,hde->he", qb[t], St)
                    den = scale * np.einsum("hd,hd->h", qb[t], Zt)
                    ok = den != 0
                    safe = np.where(ok, den, 1.0)
                    dnum = np.where(ok[:, None], do / safe[:, None], 0.0)
                    dden = np.where(ok, -np.einsum("he,he->h", do, num) / safe ** 2, 0.0)
                else:
                    dnum, dden = do, np.zeros(hq)
                dS = dS + scale * qb[t][:, :, None] * dnum[:, None, :]
                dZ = dZ + scale * qb[t] * dden[:, None]
                dq_b[t] = scale * (np.einsum("he,hde->hd", dnum, St) + dden[:, None] * Zt)
                dk_b[t] = np.einsum("hde,he->hd", dS, vb[t]) + dZ
                dv_b[t] = np.einsum("hd,hde->he", kb[t], dS)
                dg_b[t] = a[t] * (np.einsum("hde,hde->h", dS, S[t]) + np.einsum("hd,hd->h", dZ, Z[t]))
                dS = a[t][:, None, None] * dS
                dZ = a[t][:, None] * dZ
            dinit = dS
        else:
            S = S0 + np.einsum("thd,the->hde", kb, vb)
            Z = kb.sum(0)
            num = scale * np.einsum("thd,hde->the", qb, S)
            den = scale * np.einsum("thd,hd->th", qb, Z)
            if normalize:
                ok = den != 0
                safe = np.where(ok, den, 1.0)
                dnum = np.where(ok[..., None], dob / safe[..., None], 0.0)
                dden = np.where(ok, -np.einsum("the,the->th", dob, num) / safe ** 2, 0.0)
            else:
                dnum, dden = dob, np.zeros((T, hq))
            dS = dS + scale * np.einsum("thd,the->hde", qb, dnum)
            dZ = scale * np.einsum("thd,th->hd", qb, dden)
            dq_b = scale * (np.einsum("the,hde->thd", dnum, S) + dden[..., None] * Z)
            dk_b = np.einsum("hde,the->thd", dS, vb) + dZ
            dv_b = np.einsum("thd,hde->the", kb, dS)
            dinit = dS
        # fold GQA groups back onto the kv heads
        dk_kv = dk_b.reshape(T, hkv, rep, dk).sum(2)
        dv_kv = dv_b.reshape(T, hkv, rep, dv).sum(2)
        if b is not None:
            gq[b], gk[b], gv[b] = dq_b, dk_kv, dv_kv
        else:
            gq[sl], gk[sl], gv[sl] = dq_b, dk_kv, dv_kv
        if gg is not None:
            if gg.ndim == 1:
                gg += dg_b.sum(0)
            elif b is not None:
                gg[b] = dg_b
            else:
                gg[sl] = dg_b
        ginit[n] = dinit
    return gq, gk, gv, gg, ginit
