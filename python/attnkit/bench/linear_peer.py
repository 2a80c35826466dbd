"""The peer for ``attnkit bench --family linear``: a plain PyTorch chunked
formulation of gated linear attention (DESIGN §2.4), written the way
flash-linear-attention's torch reference of ``chunk_simple_gla`` is: fp32
compute, chunk 64, batched matmuls for every intra-chunk product and for the
inter-chunk outputs, a short Python loop over chunks for the state recurrence.

It is differentiable through torch autograd, which is how the bench times the
peer's backward. It is a fair, decent implementation (no per-token Python
loop, no dense token x token matrix, no [N, Dk, Dv] tensor of all chunk
states), not a strawman: the intra-chunk products are batched over all
chunks, and each step of the chunk loop is one batched matmul.
"""

from __future__ import annotations

from typing import Optional, Tuple


def chunk_linear_attention(
    q,
    k,
    v,
    g=None,
    scale: Optional[float] = None,
    initial_state=None,
    chunk: int = 64,
) -> Tuple["object", "object"]:
    """q, k [B, S, H, Dk], v [B, S, H, Dv] (any float dtype; computed in fp32);
    g None, per head [H] or per token [B, S, H] (log space). Returns
    (out [B, S, H, Dv] in q's dtype, final state [B, H, Dk, Dv] fp32)."""
    import torch

    B, S, H, Dk = q.shape
    Dv = v.shape[-1]
    scale = Dk ** -0.5 if scale is None else scale
    C = chunk
    N = (S + C - 1) // C
    pad = N * C - S

    def prep(x):  # [B, S, H, D] -> contiguous fp32 [B, H, N, C, D], in one converting copy
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
        x = x.transpose(1, 2).to(torch.float32, memory_format=torch.contiguous_format)
        return x.view(B, H, N, C, x.shape[-1])

    qc, kc, vc = prep(q), prep(k), prep(v)
    dev = q.device
    mask = torch.ones(C, C, dtype=torch.bool, device=dev).tril()
    if g is not None and g.dim() == 1 and pad:
        # a padded tail must not decay: the per-token form, padded with g = 0
        g = g.float().reshape(1, 1, H).expand(B, S, H)
    if g is not None and g.dim() == 1:
        # Per-head decay: b = (t + 1) * g inside every chunk; the decay matrix
        # exp(b_i - b_j) is the same for all chunks (broadcast, not expanded).
        steps = torch.arange(1, C + 1, dtype=torch.float32, device=dev)
        b = (g.float()[:, None] * steps).reshape(1, H, 1, C)
    elif g is not None:
        gt = g.float()
        if pad:
            gt = torch.nn.functional.pad(gt, (0, 0, 0, pad))
        b = gt.transpose(1, 2).reshape(B, H, N, C).cumsum(-1)
    else:
        b = torch.zeros(1, 1, 1, C, dtype=torch.float32, device=dev)
    last = b[..., -1:]  # total log decay of each chunk
    # Intra-chunk: (q k^T) * exp(b_i - b_j) on and below the diagonal (the
    # difference is taken before exp, so strong decay cannot overflow).
    diff = (b[..., :, None] - b[..., None, :]).masked_fill(~mask, -float("inf"))
    attn = (qc @ kc.transpose(-1, -2)) * (diff.exp() * scale)
    o = attn @ vc
    # The recurrence over chunks: each step is one batched [C, Dk] x [Dk, Dv]
    # product for the chunk's inter-chunk output and one [Dk, C] x [C, Dv]
    # product for its state update (autograd-friendly without in-place ops).
    kdec = (kc * (last - b).exp()[..., None]).transpose(-1, -2)
    decay = last.exp()[..., 0].expand(B, H, N).contiguous()[..., None, None]  # [B, H, N, 1, 1]
    qdec = qc * (b.exp()[..., None] * scale)  # q_i * exp(b_i) * scale
    state = (torch.zeros(B, H, Dk, Dv, dtype=torch.float32, device=dev)
             if initial_state is None else initial_state.float())
    inter = []
    # Without autograd the state is updated in place (no allocation per step).
    in_place = not (torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (q, k, v, g, initial_state)))
    if in_place:
        state = state.clone()
    # unbind, not indexing in the loop: under autograd, each x[:, :, n] would
    # zero-fill a full-size gradient in the backward (one per step).
    # The chunk's state contribution k^T v is formed inside the loop: an
    # [N, Dk, Dv] tensor of all of them (134 MB at S=16K, H=8, D=128) made the
    # peer memory-bound and ~25% slower.
    for qd, dec, kd, vn in zip(qdec.unbind(2), decay.unbind(2), kdec.unbind(2), vc.unbind(2)):
        inter.append(qd @ state)
        if in_place:
            state.mul_(dec).add_(kd @ vn)
        else:
            state = state * dec + kd @ vn
    o = o + torch.stack(inter, dim=2)
    o = o.reshape(B, H, N * C, Dv)[:, :, :S].transpose(1, 2)
    return o.to(q.dtype), state


def linear_attention_noncausal(q, k, v, scale: Optional[float] = None):
    """o = scale * q (k^T v), batched matmuls in fp32."""
    Dk = q.shape[-1]
    scale = Dk ** -0.5 if scale is None else scale
    qf, kf, vf = (x.float().transpose(1, 2) for x in (q, k, v))
    kv = kf.transpose(-1, -2) @ vf  # [B, H, Dk, Dv]
    return ((qf @ kv) * scale).transpose(1, 2).to(q.dtype)
