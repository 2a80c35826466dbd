"""Pieces the attnkit.torch custom ops share (fmha, neighborhood, block-sparse,
linear attention)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch as _torch
from torch import Tensor

from ._tensors import TorchFramework, torch_host_empty


def plain(t: Optional[Tensor]) -> Optional[Tensor]:
    """t without autograd history (DLPack refuses tensors that require grad)."""
    return None if t is None else t.detach()


_dtype = TorchFramework().dtype_name  # "float32", "bfloat16", ...


def _new(q: Tensor, shape, dtype: str, real: bool) -> Tensor:
    """An uninitialised contiguous tensor on q's device: from attnkit's host pool
    for (large) real CPU outputs. ``real`` is False in fake (meta) implementations."""
    if real and q.device.type == "cpu":
        return torch_host_empty(shape, dtype)
    return q.new_empty(shape, dtype=getattr(_torch, dtype))


def new_out(q: Tensor, v: Tensor, real: bool = True) -> Tensor:
    """A forward op's output ``[..., Dv]`` in q's dtype."""
    return _new(q, (*q.shape[:-1], v.shape[-1]), _dtype(q), real)


def new_out_lse(q: Tensor, v: Tensor, real: bool = True) -> Tuple[Tensor, Tensor]:
    """A forward op's output and its float32 LSE ``q.shape[:-1]``."""
    return new_out(q, v, real), _new(q, q.shape[:-1], "float32", real)


def grad_like(t: Tensor) -> Tensor:
    """A backward op's gradient buffer for t: like ``torch.empty_like(t)`` (the ops'
    fake implementations use that), from the host pool when t is a large
    contiguous CPU tensor."""
    if t.is_contiguous():
        return _new(t, t.shape, _dtype(t), True)
    return _torch.empty_like(t)
