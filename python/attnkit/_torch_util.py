"""Pieces the attnkit.torch custom ops share (fmha, neighborhood, block-sparse,
linear attention)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch as _torch
from torch import Tensor

from ._tensors import torch_host_empty


def plain(t: Optional[Tensor]) -> Optional[Tensor]:
    """t without autograd history (DLPack refuses tensors that require grad)."""
    return None if t is None else t.detach()


def new_out(q: Tensor, v: Tensor, real: bool = True) -> Tensor:
    """A forward op's output ``[..., Dv]`` in q's dtype (host outputs from attnkit's
    host pool when large). ``real`` is False in fake (meta) implementations."""
    shape = (*q.shape[:-1], v.shape[-1])
    if real and q.device.type == "cpu":
        return torch_host_empty(shape, str(q.dtype).replace("torch.", ""))
    return q.new_empty(shape)


def new_out_lse(q: Tensor, v: Tensor, real: bool = True) -> Tuple[Tensor, Tensor]:
    """A forward op's output and its float32 LSE ``q.shape[:-1]``."""
    if real and q.device.type == "cpu":
        return new_out(q, v, real), torch_host_empty(q.shape[:-1], "float32")
    return new_out(q, v, real), q.new_empty(q.shape[:-1], dtype=_torch.float32)


def grad_like(t: Tensor) -> Tensor:
    """A backward op's gradient buffer for t: like ``torch.empty_like(t)`` (the ops'
    fake implementations use that), from the host pool when t is a large
    contiguous CPU tensor."""
    if t.device.type == "cpu" and t.is_contiguous():
        return torch_host_empty(t.shape, str(t.dtype).replace("torch.", ""))
    return _torch.empty_like(t)
