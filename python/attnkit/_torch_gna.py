"""Neighborhood attention for PyTorch: custom ops with fake kernels and
registered autograd (re-exported by :mod:`attnkit.torch`)."""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch as _torch
from torch import Tensor

from . import _core, _fmha, _gna
from ._torch_util import grad_like, new_out_lse, plain



@_torch.library.custom_op("attnkit::na_fwd", mutates_args=())
def _na_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: List[int],
    stride: List[int],
    dilation: List[int],
    is_causal: List[bool],
    scale: float,
    additional_keys: Optional[Tensor],
    additional_values: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:
    out, lse = new_out_lse(q, v)
    _core.na_fwd(
        q.detach(), k.detach(), v.detach(), out, lse, list(kernel_size), list(stride),
        list(dilation), [int(c) for c in is_causal], scale, plain(additional_keys),
        plain(additional_values), _fmha._threads,
    )
    return out, lse


@_na_fwd.register_fake
def _(q, k, v, kernel_size, stride, dilation, is_causal, scale, additional_keys, additional_values):
    return new_out_lse(q, v, real=False)


@_torch.library.custom_op("attnkit::na_bwd", mutates_args=())
def _na_bwd(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    dlse: Optional[Tensor],
    kernel_size: List[int],
    stride: List[int],
    dilation: List[int],
    is_causal: List[bool],
    scale: float,
    additional_keys: Optional[Tensor],
    additional_values: Optional[Tensor],
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, d_additional_keys, d_additional_values); the last two are empty
    tensors when there are no additional tokens."""
    dq, dk, dv = grad_like(q), grad_like(k), grad_like(v)
    if additional_keys is not None:
        dak, dav = grad_like(additional_keys), grad_like(additional_values)
    else:
        dak, dav = q.new_empty(0), q.new_empty(0)
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    if dlse is not None and dlse.stride() != lse.stride():
        dlse = dlse.contiguous() if lse.is_contiguous() else dlse.new_empty_strided(
            lse.shape, lse.stride()).copy_(dlse)
    has_extra = additional_keys is not None
    _core.na_bwd(
        dout.detach(), q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), dq, dk, dv,
        list(kernel_size), list(stride), list(dilation), [int(c) for c in is_causal], scale,
        plain(additional_keys), plain(additional_values), dak if has_extra else None,
        dav if has_extra else None, plain(dlse), _fmha._threads,
    )
    return dq, dk, dv, dak, dav


@_na_bwd.register_fake
def _(dout, q, k, v, out, lse, dlse, kernel_size, stride, dilation, is_causal, scale,
      additional_keys, additional_values):
    if additional_keys is not None:
        dak, dav = _torch.empty_like(additional_keys), _torch.empty_like(additional_values)
    else:
        dak, dav = q.new_empty(0), q.new_empty(0)
    return _torch.empty_like(q), _torch.empty_like(k), _torch.empty_like(v), dak, dav


def _na_setup(ctx, inputs, output):
    q, k, v, kernel_size, stride, dilation, is_causal, scale, ak, av = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, ak, av)
    ctx.opts = (kernel_size, stride, dilation, is_causal, scale)


def _na_backward(ctx, dout, dlse):
    q, k, v, out, lse, ak, av = ctx.saved_tensors
    if dout is None:
        dout = _torch.zeros_like(out)
    kernel_size, stride, dilation, is_causal, scale = ctx.opts
    dq, dk, dv, dak, dav = _na_bwd(dout, q, k, v, out, lse, dlse, kernel_size, stride, dilation,
                                   is_causal, scale, ak, av)
    if ak is None:
        dak = dav = None
    return dq, dk, dv, None, None, None, None, None, dak, dav


_na_fwd.register_autograd(_na_backward, setup_context=_na_setup)


def neighborhood_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: _gna.IntOrTuple,
    *,
    stride: _gna.IntOrTuple = 1,
    dilation: _gna.IntOrTuple = 1,
    is_causal: _gna.BoolOrTuple = False,
    scale: Optional[float] = None,
    additional_keys: Optional[Tensor] = None,
    additional_values: Optional[Tensor] = None,
    return_lse: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Differentiable :func:`attnkit.neighborhood_attention` for torch tensors.
    Gradients flow into q, k, v, the additional keys/values, and through ``lse``
    when it is returned and used."""
    fn = "neighborhood_attention"
    ks, st, dl, ca = _gna._args(fn, kernel_size, stride, dilation, is_causal)
    if (additional_keys is None) != (additional_values is None):
        raise ValueError(f"{fn}: additional_keys and additional_values must be given together")
    out, lse = _torch.ops.attnkit.na_fwd(
        q, k, v, ks, st, dl, [bool(c) for c in ca], float("nan") if scale is None else float(scale),
        additional_keys, additional_values,
    )
    return (out, lse) if return_lse else out


def _nad(nd: int):
    name = f"na{nd}d"

    def na(q: Tensor, k: Tensor, v: Tensor, kernel_size: _gna.IntOrTuple,
           stride: _gna.IntOrTuple = 1, dilation: _gna.IntOrTuple = 1,
           is_causal: _gna.BoolOrTuple = False, scale: Optional[float] = None,
           additional_keys: Optional[Tensor] = None, additional_values: Optional[Tensor] = None,
           return_lse: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        _gna._check_rank(name, q, nd)
        return neighborhood_attention(
            q, k, v, kernel_size, stride=stride, dilation=dilation, is_causal=is_causal,
            scale=scale, additional_keys=additional_keys, additional_values=additional_values,
            return_lse=return_lse,
        )

    na.__name__ = na.__qualname__ = name
    na.__doc__ = f"Differentiable :func:`attnkit.{name}` for torch tensors."
    return na


na1d = _nad(1)
na2d = _nad(2)
na3d = _nad(3)
