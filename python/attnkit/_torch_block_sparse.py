"""attnkit.torch: block-sparse attention as differentiable custom ops."""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import torch as _torch
from torch import Tensor

from . import _core, _fmha
from ._block_sparse import BlockMask, as_block_mask
from ._torch_util import grad_like, new_out_lse

__all__ = ["block_sparse_attention"]


@_torch.library.custom_op("attnkit::block_sparse_fwd", mutates_args=())
def _bs_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kv_num_blocks: Tensor,
    kv_indices: Tensor,
    q_block: int,
    kv_block: int,
    is_causal: bool,
    scale: float,
) -> Tuple[Tensor, Tensor]:
    out, lse = new_out_lse(q, v)
    _core.block_sparse_fwd(
        q.detach(), k.detach(), v.detach(), kv_num_blocks.detach().cpu(),
        kv_indices.detach().cpu(), q_block, kv_block, out, lse, is_causal, scale, _fmha._threads,
    )
    return out, lse


@_bs_fwd.register_fake
def _(q, k, v, kv_num_blocks, kv_indices, q_block, kv_block, is_causal, scale):
    return new_out_lse(q, v, real=False)


@_torch.library.custom_op("attnkit::block_sparse_bwd", mutates_args=())
def _bs_bwd(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    dlse: Optional[Tensor],
    kv_num_blocks: Tensor,
    kv_indices: Tensor,
    q_block: int,
    kv_block: int,
    is_causal: bool,
    scale: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    dq, dk, dv = grad_like(q), grad_like(k), grad_like(v)
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    if dlse is not None and dlse.stride() != lse.stride():
        dlse = dlse.contiguous() if lse.is_contiguous() else dlse.new_empty_strided(
            lse.shape, lse.stride()).copy_(dlse)
    _core.block_sparse_bwd(
        dout.detach(), q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(),
        kv_num_blocks.detach().cpu(), kv_indices.detach().cpu(), q_block, kv_block, dq, dk, dv,
        is_causal, scale, None if dlse is None else dlse.detach(), _fmha._threads,
    )
    return dq, dk, dv


@_bs_bwd.register_fake
def _(dout, q, k, v, out, lse, dlse, kv_num_blocks, kv_indices, q_block, kv_block, is_causal,
      scale):
    return _torch.empty_like(q), _torch.empty_like(k), _torch.empty_like(v)


def _bs_setup(ctx, inputs, output):
    q, k, v, cnt, idx, q_block, kv_block, is_causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cnt, idx)
    ctx.opts = (q_block, kv_block, is_causal, scale)


def _bs_backward(ctx, dout, dlse):
    q, k, v, out, lse, cnt, idx = ctx.saved_tensors
    if dout is None:
        dout = _torch.zeros_like(out)
    dq, dk, dv = _bs_bwd(dout, q, k, v, out, lse, dlse, cnt, idx, *ctx.opts)
    return dq, dk, dv, None, None, None, None, None, None


_bs_fwd.register_autograd(_bs_backward, setup_context=_bs_setup)


def _mask_tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else _torch.from_numpy(x)


def block_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block_mask: Union[BlockMask, Any],
    *,
    is_causal: bool = False,
    scale: Optional[float] = None,
    return_lse: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Differentiable :func:`attnkit.block_sparse_attention` for torch tensors.
    Gradients flow into q, k, v (and through ``lse`` when returned). Under
    ``torch.compile`` pass a torch-backed mask (``block_mask.torch()``)."""
    fn = "block_sparse_attention"
    bm = as_block_mask(block_mask, fn)
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"{fn}: q, k and v must be [batch, seqlen, heads, head_dim], got shapes "
                         f"{list(q.shape)} and {list(k.shape)}")
    bm._check_against(fn, q.shape[1], k.shape[1])
    out, lse = _torch.ops.attnkit.block_sparse_fwd(
        q, k, v, _mask_tensor(bm.kv_num_blocks), _mask_tensor(bm.kv_indices), bm.q_block,
        bm.kv_block, bool(is_causal), float("nan") if scale is None else float(scale),
    )
    return (out, lse) if return_lse else out
