"""attnkit for PyTorch: every attnkit function as a differentiable
``torch.library`` custom op with a fake (meta) implementation, so it trains
and compiles under ``torch.compile`` without graph breaks.

Signatures mirror the framework-agnostic functions in :mod:`attnkit`.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch as _torch  # absolute import: the real PyTorch, not this module
from torch import Tensor

from . import _core
from . import _fmha
from ._torch_util import grad_like, new_out_lse, plain
from ._torch_block_sparse import block_sparse_attention
from ._torch_linear import linear_attention, linear_attention_step  # linear attention ops

__all__ = ["attention", "merge_attentions", "neighborhood_attention", "na1d", "na2d", "na3d",
           "block_sparse_attention", "linear_attention", "linear_attention_step"]


def _stream(t: Tensor) -> int:
    return int(_torch.cuda.current_stream(t.device).cuda_stream) if t.device.type == "cuda" else 0



# ----------------------------------------------------------------------------- FMHA
@_torch.library.custom_op("attnkit::fmha_fwd", mutates_args=())
def _fmha_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    is_causal: bool,
    window_left: int,
    window_right: int,
    softcap: float,
    scale: float,
    cu_seqlens_q: Optional[Tensor],
    cu_seqlens_k: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:
    out, lse = new_out_lse(q, v)
    _core.attention_fwd(
        q.detach(), k.detach(), v.detach(), out, lse, is_causal, window_left, window_right,
        softcap, scale, plain(cu_seqlens_q), plain(cu_seqlens_k), _stream(q), _fmha._threads,
    )
    return out, lse


@_fmha_fwd.register_fake
def _(q, k, v, is_causal, window_left, window_right, softcap, scale, cu_seqlens_q, cu_seqlens_k):
    return new_out_lse(q, v, real=False)


@_torch.library.custom_op("attnkit::fmha_bwd", mutates_args=())
def _fmha_bwd(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    dlse: Optional[Tensor],
    is_causal: bool,
    window_left: int,
    window_right: int,
    softcap: float,
    scale: float,
    cu_seqlens_q: Optional[Tensor],
    cu_seqlens_k: Optional[Tensor],
) -> Tuple[Tensor, Tensor, Tensor]:
    dq, dk, dv = grad_like(q), grad_like(k), grad_like(v)
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    if dlse is not None and dlse.stride() != lse.stride():
        dlse = dlse.contiguous() if lse.is_contiguous() else dlse.new_empty_strided(
            lse.shape, lse.stride()).copy_(dlse)
    _core.attention_bwd(
        dout.detach(), q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), dq, dk, dv,
        is_causal, window_left, window_right, softcap, scale, plain(cu_seqlens_q),
        plain(cu_seqlens_k), plain(dlse), _stream(q), _fmha._threads,
    )
    return dq, dk, dv


@_fmha_bwd.register_fake
def _(dout, q, k, v, out, lse, dlse, is_causal, window_left, window_right, softcap, scale,
      cu_seqlens_q, cu_seqlens_k):
    return _torch.empty_like(q), _torch.empty_like(k), _torch.empty_like(v)


def _fmha_setup(ctx, inputs, output):
    q, k, v, is_causal, wl, wr, softcap, scale, cu_q, cu_k = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
    ctx.opts = (is_causal, wl, wr, softcap, scale)


def _fmha_backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
    if dout is None:
        dout = _torch.zeros_like(out)
    dq, dk, dv = _fmha_bwd(dout, q, k, v, out, lse, dlse, *ctx.opts, cu_q, cu_k)
    return dq, dk, dv, None, None, None, None, None, None, None


_fmha_fwd.register_autograd(_fmha_backward, setup_context=_fmha_setup)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    is_causal: bool = False,
    window_size: Optional[Sequence[int]] = None,
    softcap: Optional[float] = None,
    scale: Optional[float] = None,
    cu_seqlens_q: Optional[Tensor] = None,
    cu_seqlens_k: Optional[Tensor] = None,
    return_lse: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Differentiable :func:`attnkit.attention` for torch tensors (CPU or CUDA).
    Gradients flow into q, k, v, and through ``lse`` when it is returned and used."""
    wl, wr = _fmha._window(window_size)
    out, lse = _torch.ops.attnkit.fmha_fwd(
        q, k, v, bool(is_causal), wl, wr, _fmha._softcap(softcap),
        float("nan") if scale is None else float(scale), cu_seqlens_q, cu_seqlens_k,
    )
    return (out, lse) if return_lse else out


# ----------------------------------------------------------------------------- merge
def _merge_torch(outs: List[Tensor], lses: List[Tensor]) -> Tuple[Tensor, Tensor]:
    """Exact LSE merge written with torch ops: differentiable, any device."""
    if len(outs) == 0 or len(outs) != len(lses):
        raise ValueError(
            f"merge_attentions: needs as many lses as outs (at least one), got {len(outs)} outs "
            f"and {len(lses)} lses"
        )
    lse = _torch.stack([x.float() for x in lses])  # [n, ..., H]
    mx = lse.amax(0)
    # The result does not depend on the shift (it cancels), so it carries no gradient.
    safe = _torch.where(_torch.isfinite(mx), mx, _torch.zeros_like(mx)).detach()
    w = _torch.exp(lse - safe)  # -inf partials weigh 0
    total = w.sum(0)
    merged = sum(wi.unsqueeze(-1) * o.float() for wi, o in zip(w, outs))
    denom = _torch.where(total > 0, total, _torch.ones_like(total)).unsqueeze(-1)
    out = (merged / denom).to(outs[0].dtype)
    out_lse = _torch.where(total > 0, safe + _torch.log(total), _torch.full_like(total, -float("inf")))
    return out, out_lse


def merge_attentions(outs: Sequence[Tensor], lses: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
    """Differentiable :func:`attnkit.merge_attentions` for torch tensors."""
    return _merge_torch(list(outs), list(lses))


from ._torch_gna import na1d, na2d, na3d, neighborhood_attention  # noqa: E402
