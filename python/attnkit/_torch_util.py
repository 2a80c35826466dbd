"""Pieces the attnkit.torch custom ops share (fmha, neighborhood, block-sparse,
linear attention)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch as _torch
from torch import Tensor

from ._tensors import advise_torch_output


def plain(t: Optional[Tensor]) -> Optional[Tensor]:
    """t without autograd history (DLPack refuses tensors that require grad)."""
    return None if t is None else t.detach()


def new_out(q: Tensor, v: Tensor, real: bool = True) -> Tensor:
    """A forward op's output ``[..., Dv]`` in q's dtype. ``real`` is False in fake
    (meta) implementations, whose tensors have no memory to advise."""
    out = q.new_empty((*q.shape[:-1], v.shape[-1]))
    if real:
        advise_torch_output(out)
    return out


def new_out_lse(q: Tensor, v: Tensor, real: bool = True) -> Tuple[Tensor, Tensor]:
    """A forward op's output and its float32 LSE ``q.shape[:-1]``."""
    return new_out(q, v, real), q.new_empty(q.shape[:-1], dtype=_torch.float32)
