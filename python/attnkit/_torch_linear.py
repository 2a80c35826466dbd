"""attnkit.torch: linear attention as differentiable ``torch.library`` custom ops.

``attnkit::linear_fwd`` returns ``(out, final_state)`` (the final state is
always computed: it is free, and it keeps the op's outputs fixed for
torch.compile; with normalize=True it is an empty tensor since the normaliser
has no state). ``attnkit::linear_bwd`` returns ``(dq, dk, dv, dg,
d_initial_state)`` with empty tensors for gradients that were not asked for.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch as _torch
from torch import Tensor

from . import _core
from . import _fmha
from ._torch_util import grad_like, new_out


def _detach(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.detach()


def _num_seq(q: Tensor, cu_seqlens: Optional[Tensor]) -> int:
    return q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


def _state_shape(q: Tensor, v: Tensor, cu_seqlens: Optional[Tensor]):
    return (_num_seq(q, cu_seqlens), q.shape[-2], q.shape[-1], v.shape[-1])


def _unit_inner(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None or t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


@_torch.library.custom_op("attnkit::linear_fwd", mutates_args=())
def _linear_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Optional[Tensor],
    initial_state: Optional[Tensor],
    cu_seqlens: Optional[Tensor],
    is_causal: bool,
    scale: float,
    normalize: bool,
) -> Tuple[Tensor, Tensor]:
    out = new_out(q, v)
    fs = q.new_empty((0,) if normalize else _state_shape(q, v, cu_seqlens), dtype=_torch.float32)
    _core.linear_fwd(
        q.detach(), k.detach(), v.detach(), out, None if normalize else fs, _detach(g),
        _detach(initial_state), _detach(cu_seqlens), is_causal, scale, normalize, _fmha._threads,
    )
    return out, fs


@_linear_fwd.register_fake
def _(q, k, v, g, initial_state, cu_seqlens, is_causal, scale, normalize):
    return (
        new_out(q, v, real=False),
        q.new_empty((0,) if normalize else _state_shape(q, v, cu_seqlens), dtype=_torch.float32),
    )


@_torch.library.custom_op("attnkit::linear_bwd", mutates_args=())
def _linear_bwd(
    dout: Optional[Tensor],
    dfinal_state: Optional[Tensor],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Optional[Tensor],
    initial_state: Optional[Tensor],
    cu_seqlens: Optional[Tensor],
    is_causal: bool,
    scale: float,
    normalize: bool,
    want_dg: bool,
    want_dinit: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    dq, dk, dv = grad_like(q), grad_like(k), grad_like(v)
    dg = _torch.empty_like(g) if (want_dg and g is not None) else q.new_empty((0,))
    dinit = (q.new_empty(_state_shape(q, v, cu_seqlens), dtype=_torch.float32) if want_dinit
             else q.new_empty((0,), dtype=_torch.float32))
    # Gradients may arrive with any strides (expanded zeros, transposes): the
    # kernels need a unit innermost stride.
    dout = dout if _unit_inner(dout) is None else _unit_inner(dout)
    dfinal_state = dfinal_state if _unit_inner(dfinal_state) is None else _unit_inner(dfinal_state)
    _core.linear_bwd(
        _detach(dout), q.detach(), k.detach(), v.detach(), _detach(dfinal_state), dq, dk, dv,
        dg if (want_dg and g is not None) else None, dinit if want_dinit else None, _detach(g),
        _detach(initial_state), _detach(cu_seqlens), is_causal, scale, normalize, _fmha._threads,
    )
    return dq, dk, dv, dg, dinit


@_linear_bwd.register_fake
def _(dout, dfinal_state, q, k, v, g, initial_state, cu_seqlens, is_causal, scale, normalize,
      want_dg, want_dinit):
    dg = _torch.empty_like(g) if (want_dg and g is not None) else q.new_empty((0,))
    dinit = (q.new_empty(_state_shape(q, v, cu_seqlens), dtype=_torch.float32) if want_dinit
             else q.new_empty((0,), dtype=_torch.float32))
    return _torch.empty_like(q), _torch.empty_like(k), _torch.empty_like(v), dg, dinit


def _linear_setup(ctx, inputs, output):
    q, k, v, g, initial_state, cu_seqlens, is_causal, scale, normalize = inputs
    ctx.save_for_backward(q, k, v, g, initial_state, cu_seqlens)
    ctx.opts = (is_causal, scale, normalize)


def _linear_backward(ctx, dout, dfinal_state):
    q, k, v, g, initial_state, cu_seqlens = ctx.saved_tensors
    is_causal, scale, normalize = ctx.opts
    need = ctx.needs_input_grad
    want_dg = g is not None and need[3]
    want_dinit = initial_state is not None and need[4]
    if normalize:
        dfinal_state = None  # the empty placeholder output carries no gradient
    dq, dk, dv, dg, dinit = _linear_bwd(dout, dfinal_state, q, k, v, g, initial_state, cu_seqlens,
                                        is_causal, scale, normalize, want_dg, want_dinit)
    return (dq, dk, dv, dg if want_dg else None, dinit if want_dinit else None,
            None, None, None, None)


_linear_fwd.register_autograd(_linear_backward, setup_context=_linear_setup)


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    is_causal: bool = True,
    g: Optional[Tensor] = None,
    scale: Optional[float] = None,
    normalize: bool = False,
    initial_state: Optional[Tensor] = None,
    return_final_state: bool = False,
    cu_seqlens: Optional[Tensor] = None,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Differentiable :func:`attnkit.linear_attention` for torch CPU tensors:
    gradients flow into q, k, v, g and initial_state, and from out and the
    final state."""
    if return_final_state and normalize:
        raise ValueError(
            "linear_attention: normalize=True cannot return a final state: the normaliser's "
            "running key sum z is not part of the [N, H, Dk, Dv] state")
    out, fs = _torch.ops.attnkit.linear_fwd(
        q, k, v, g, initial_state, cu_seqlens, bool(is_causal),
        float("nan") if scale is None else float(scale), bool(normalize),
    )
    return (out, fs) if return_final_state else out


def linear_attention_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    state: Tensor,
    *,
    g: Optional[Tensor] = None,
    scale: Optional[float] = None,
) -> Tuple[Tensor, Tensor]:
    """Differentiable :func:`attnkit.linear_attention_step`: ``(out, new_state)``.
    q ``[B, n, Hq, Dk]`` or ``[B, Hq, Dk]`` (one token)."""
    single = q.dim() == 3
    if single:
        q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
        if g is not None and g.dim() == 2:
            g = g.unsqueeze(1)
    out, new_state = linear_attention(q, k, v, g=g, scale=scale, initial_state=state,
                                      return_final_state=True)
    return (out.squeeze(1) if single else out), new_state
