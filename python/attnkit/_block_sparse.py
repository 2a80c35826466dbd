"""Block-sparse attention (DESIGN §2.3): the FlexAttention-compatible
:class:`BlockMask` and :func:`block_sparse_attention`."""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import numpy as np

from . import _core, _fmha
from ._tensors import check_floats, framework_of, nan_float


def _cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _host_numpy(x: Any) -> np.ndarray:
    """A NumPy view (or, for device tensors, a host copy) of an integer/bool array."""
    if _is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _int32(x: Any, name: str) -> Any:
    """x as int32 in its own framework (NumPy or torch); TypeError for non-integers."""
    if _is_torch(x):
        import torch

        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"BlockMask: {name} must be an integer tensor, got {x.dtype}")
        return x if x.dtype == torch.int32 else x.to(torch.int32)
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise TypeError(f"BlockMask: {name} must be an integer array, got {a.dtype}")
    return a if a.dtype == np.int32 else a.astype(np.int32)


def _pos(idx) -> str:
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


class BlockMask:
    """Which kv blocks each query block attends, in FlexAttention's format.

    ``kv_num_blocks``: int32 ``[B|1, H|1, nQ]`` and ``kv_indices``: int32
    ``[B|1, H|1, nQ, maxK]``; row ``(b, h, i)`` lists the kv blocks
    ``kv_indices[b, h, i, :kv_num_blocks[b, h, i]]`` (entries past the count are
    ignored; order does not matter; no block twice). Queries are cut into
    blocks of ``q_block`` rows and keys into blocks of ``kv_block`` keys; the
    last block of each may be partial, so ``nQ = ceil(Sq / q_block)`` and kv
    block ids lie in ``[0, ceil(Sk / kv_block))``. A batch or head axis of size 1
    broadcasts; the head axis may also have the number of key/value heads, in
    which case it applies to every query head of the group.

    Listed blocks are attended fully; ``is_causal=True`` in
    :func:`block_sparse_attention` adds the element-wise causal mask. Rows whose
    q block lists nothing give output 0 and LSE ``-inf``.

    The arrays stay in the framework they were given in (NumPy or torch); build
    masks with :meth:`from_dense`, :meth:`from_kv_blocks`, :meth:`from_flex` or
    the selection helpers (``attnkit.topk_block_mask`` ...).
    """

    __slots__ = ("q_block", "kv_block", "kv_num_blocks", "kv_indices", "num_kv_blocks",
                 "seq_lengths")

    def __init__(
        self,
        kv_num_blocks: Any,
        kv_indices: Any,
        *,
        q_block: int,
        kv_block: Optional[int] = None,
        num_kv_blocks: Optional[int] = None,
        seq_lengths: Optional[Tuple[int, int]] = None,
    ):
        q_block = _block_size(q_block, "q_block")
        kv_block = q_block if kv_block is None else _block_size(kv_block, "kv_block")
        cnt = _int32(kv_num_blocks, "kv_num_blocks")
        idx = _int32(kv_indices, "kv_indices")
        if seq_lengths is not None:
            try:
                sq, sk = (int(s) for s in seq_lengths)
            except (TypeError, ValueError):
                raise ValueError(
                    f"BlockMask: seq_lengths must be a pair (seqlen_q, seqlen_k), got {seq_lengths!r}"
                ) from None
            if sq < 0 or sk < 0:
                raise ValueError(f"BlockMask: seq_lengths must be >= 0, got {(sq, sk)}")
            seq_lengths = (sq, sk)
            nk = _cdiv(sk, kv_block)
            if num_kv_blocks is not None and int(num_kv_blocks) != nk:
                raise ValueError(
                    f"BlockMask: num_kv_blocks = {num_kv_blocks} does not match seq_lengths "
                    f"{seq_lengths}: ceil({sk} / kv_block {kv_block}) = {nk}"
                )
            num_kv_blocks = nk
        if num_kv_blocks is not None:
            num_kv_blocks = int(num_kv_blocks)
            if num_kv_blocks < 0:
                raise ValueError(f"BlockMask: num_kv_blocks must be >= 0, got {num_kv_blocks}")
        _validate(_host_numpy(cnt), _host_numpy(idx), num_kv_blocks)
        if seq_lengths is not None and cnt.shape[2] != _cdiv(seq_lengths[0], q_block):
            raise ValueError(
                f"BlockMask: kv_num_blocks has {cnt.shape[2]} query blocks but seq_lengths "
                f"{seq_lengths} needs ceil({seq_lengths[0]} / q_block {q_block}) = "
                f"{_cdiv(seq_lengths[0], q_block)}"
            )
        self.q_block = q_block
        self.kv_block = kv_block
        self.kv_num_blocks = cnt
        self.kv_indices = idx
        self.num_kv_blocks = num_kv_blocks
        self.seq_lengths = seq_lengths

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_kv_blocks(
        cls,
        kv_num_blocks: Any,
        kv_indices: Any,
        *,
        q_block: int = 128,
        kv_block: Optional[int] = None,
        num_kv_blocks: Optional[int] = None,
        seq_lengths: Optional[Tuple[int, int]] = None,
    ) -> "BlockMask":
        """From FlexAttention-style lists (NumPy or torch integers; converted to
        int32). ``num_kv_blocks`` or ``seq_lengths`` (optional) pin the kv block
        count, and then the lengths of q/k are checked against them at call time."""
        return cls(kv_num_blocks, kv_indices, q_block=q_block, kv_block=kv_block,
                   num_kv_blocks=num_kv_blocks, seq_lengths=seq_lengths)

    @classmethod
    def from_dense(
        cls,
        mask: Any,
        *,
        q_block: int = 128,
        kv_block: Optional[int] = None,
        seq_lengths: Optional[Tuple[int, int]] = None,
    ) -> "BlockMask":
        """From a boolean block-level mask ``[B|1, H|1, nQ, nK]`` (or ``[nQ, nK]``):
        ``mask[b, h, i, j]`` = q block i attends kv block j. The lists come out
        sorted and as wide as the longest row."""
        torch_in = _is_torch(mask)
        m = _host_numpy(mask)
        if m.dtype != np.bool_:
            raise TypeError(f"BlockMask.from_dense: mask must be boolean, got {m.dtype}")
        if m.ndim == 2:
            m = m[None, None]
        if m.ndim != 4:
            raise ValueError(
                f"BlockMask.from_dense: mask must be [batch | 1, heads | 1, num_q_blocks, "
                f"num_kv_blocks] (or [num_q_blocks, num_kv_blocks]), got shape {list(m.shape)}"
            )
        cnt, idx = _lists_from_dense(m)
        if torch_in:
            import torch

            cnt, idx = (torch.from_numpy(x).to(mask.device) for x in (cnt, idx))
        return cls(cnt, idx, q_block=q_block, kv_block=kv_block, num_kv_blocks=m.shape[3],
                   seq_lengths=seq_lengths)

    @classmethod
    def from_flex(cls, flex_mask: Any, *, partial: str = "error") -> "BlockMask":
        """From a ``torch.nn.attention.flex_attention.BlockMask``.

        Its full blocks and, when its ``mask_mod`` is the no-op mask, its
        (nominally partial) blocks are attended fully. Partial blocks under a
        real ``mask_mod`` cannot be evaluated here: ``partial="error"``
        (default) raises, ``"full"`` attends them fully (e.g. a causal
        ``mask_mod`` together with ``is_causal=True``), ``"drop"`` skips them.
        """
        if partial not in ("error", "full", "drop"):
            raise ValueError(f"BlockMask.from_flex: partial must be 'error', 'full' or 'drop', "
                             f"got {partial!r}")
        try:
            from torch.nn.attention.flex_attention import noop_mask
        except ImportError:  # pragma: no cover - depends on torch
            raise TypeError("BlockMask.from_flex needs torch with torch.nn.attention.flex_attention")
        for attr in ("kv_num_blocks", "kv_indices", "BLOCK_SIZE", "seq_lengths"):
            if not hasattr(flex_mask, attr):
                raise TypeError(
                    f"BlockMask.from_flex: expected a torch.nn.attention.flex_attention.BlockMask, "
                    f"got {type(flex_mask).__name__}"
                )
        q_block, kv_block = (int(b) for b in flex_mask.BLOCK_SIZE)
        sq, sk = (int(s) for s in flex_mask.seq_lengths)
        nq, nk = _cdiv(sq, q_block), _cdiv(sk, kv_block)
        cnt = _host_numpy(flex_mask.kv_num_blocks)
        idx = _host_numpy(flex_mask.kv_indices)
        dense = None
        partial_listed = int(cnt.sum()) > 0
        if flex_mask.mask_mod is noop_mask or not partial_listed or partial == "full":
            dense = _dense_from_lists(cnt, idx, nk)
        elif partial == "error":
            raise ValueError(
                f"BlockMask.from_flex: the FlexAttention mask has {int(cnt.sum())} partial blocks "
                f"under mask_mod {getattr(flex_mask.mask_mod, '__name__', flex_mask.mask_mod)!r}, "
                f"which attnkit cannot evaluate element-wise; pass partial='full' to attend them "
                f"fully (with is_causal=True for a causal mask_mod) or partial='drop' to skip them"
            )
        if flex_mask.full_kv_num_blocks is not None:
            full = _dense_from_lists(_host_numpy(flex_mask.full_kv_num_blocks),
                                     _host_numpy(flex_mask.full_kv_indices), nk)
            dense = full if dense is None else dense | full
        if dense is None:
            dense = np.zeros((*cnt.shape, nk), dtype=bool)
        dense = dense[:, :, :nq, :nk]
        out = cls.from_dense(dense, q_block=q_block, kv_block=kv_block, seq_lengths=(sq, sk))
        if _is_torch(flex_mask.kv_num_blocks):
            return out.torch(flex_mask.kv_num_blocks.device)
        return out

    # ------------------------------------------------------------------ views
    @property
    def shape(self) -> Tuple[int, int, int, Optional[int]]:
        """``(B|1, H|1, nQ, nK)``; nK is None when the mask was given without it."""
        b, h, nq = (int(s) for s in self.kv_num_blocks.shape)
        return b, h, nq, self.num_kv_blocks

    def _width(self) -> int:
        """Number of kv block columns: the known count, else the largest listed id + 1."""
        if self.num_kv_blocks is not None:
            return self.num_kv_blocks
        cnt, idx = _host_numpy(self.kv_num_blocks), _host_numpy(self.kv_indices)
        used = np.arange(idx.shape[3]) < cnt[..., None]
        return int(idx[used].max()) + 1 if used.any() else 0

    def to_dense(self) -> Any:
        """Boolean ``[B|1, H|1, nQ, nK]`` block mask, in the arrays' framework."""
        dense = _dense_from_lists(_host_numpy(self.kv_num_blocks), _host_numpy(self.kv_indices),
                                  self._width())
        if _is_torch(self.kv_num_blocks):
            import torch

            return torch.from_numpy(dense).to(self.kv_num_blocks.device)
        return dense

    @property
    def density(self) -> float:
        """Fraction of (q block, kv block) pairs listed (needs the kv block count)."""
        b, h, nq, _ = self.shape
        total = b * h * nq * self._width()
        return float(_host_numpy(self.kv_num_blocks).sum()) / total if total else 0.0

    def q_major(self) -> Tuple[Any, Any]:
        """The transposed (q-major) lists ``(q_num_blocks [B|1, H|1, nK], q_indices
        [B|1, H|1, nK, maxQ])``: for each kv block, the q blocks that attend it,
        ascending. A kv-major backward (FlexAttention's, or a GPU kernel's) needs
        them; the CPU engine is query-major in both directions and does not."""
        dense = _dense_from_lists(_host_numpy(self.kv_num_blocks), _host_numpy(self.kv_indices),
                                  self._width())
        cnt, idx = _lists_from_dense(np.swapaxes(dense, 2, 3))
        if _is_torch(self.kv_num_blocks):
            import torch

            dev = self.kv_num_blocks.device
            return torch.from_numpy(cnt).to(dev), torch.from_numpy(idx).to(dev)
        return cnt, idx

    def numpy(self) -> "BlockMask":
        """The same mask with NumPy arrays."""
        return self._with(_host_numpy(self.kv_num_blocks), _host_numpy(self.kv_indices))

    def torch(self, device: Any = None) -> "BlockMask":
        """The same mask with torch tensors (on ``device``, default: where they are, or CPU)."""
        import torch

        def conv(x):
            t = x if _is_torch(x) else torch.from_numpy(np.ascontiguousarray(x))
            return t if device is None else t.to(device)

        return self._with(conv(self.kv_num_blocks), conv(self.kv_indices))

    def to_flex(self, mask_mod: Any = None, *, num_heads: Optional[int] = None) -> Any:
        """As a ``torch.nn.attention.flex_attention.BlockMask`` (same block sizes,
        ``seq_lengths`` from this mask, or the whole blocks). Without ``mask_mod``
        the listed blocks become FlexAttention *full* blocks; with one (e.g. a
        causal mask_mod, to match ``is_causal=True``) they are partial blocks
        that FlexAttention masks element-wise. FlexAttention knows no kv-head masks: give
        ``num_heads`` (the number of query heads) to expand a mask whose head
        axis counts key/value heads."""
        import torch
        from torch.nn.attention.flex_attention import BlockMask as FlexBlockMask

        dense = _dense_from_lists(_host_numpy(self.kv_num_blocks), _host_numpy(self.kv_indices),
                                  self._width())
        if num_heads is not None and dense.shape[1] not in (1, num_heads):
            if num_heads % dense.shape[1]:
                raise ValueError(f"BlockMask.to_flex: num_heads {num_heads} is not a multiple of "
                                 f"the mask's {dense.shape[1]} heads")
            dense = np.repeat(dense, num_heads // dense.shape[1], axis=1)
        cnt = dense.sum(-1).astype(np.int32)
        # FlexAttention's lists are as wide as the kv block count: listed ids first.
        idx = np.argsort(~dense, axis=-1, kind="stable").astype(np.int32)
        dev = self.kv_num_blocks.device if _is_torch(self.kv_num_blocks) else "cpu"
        sq, sk = self.seq_lengths or (dense.shape[2] * self.q_block, dense.shape[3] * self.kv_block)
        cnt_t, idx_t = torch.from_numpy(cnt).to(dev), torch.from_numpy(idx).to(dev)
        kw = dict(BLOCK_SIZE=(self.q_block, self.kv_block), seq_lengths=(sq, sk))
        if mask_mod is None:
            # Without a mask_mod every listed block is a *full* block: FlexAttention's
            # kernels then skip the element mask entirely, as attnkit's do.
            # (Distinct tensors: torch 2.13's CPU template fails to compile when the
            # partial and full lists alias.)
            return FlexBlockMask.from_kv_blocks(torch.zeros_like(cnt_t), idx_t.clone(), cnt_t,
                                                idx_t, **kw)
        return FlexBlockMask.from_kv_blocks(cnt_t, idx_t, mask_mod=mask_mod, **kw)

    def _with(self, cnt: Any, idx: Any) -> "BlockMask":
        out = object.__new__(BlockMask)
        out.q_block, out.kv_block = self.q_block, self.kv_block
        out.kv_num_blocks, out.kv_indices = cnt, idx
        out.num_kv_blocks, out.seq_lengths = self.num_kv_blocks, self.seq_lengths
        return out

    def _check_against(self, fn: str, sq: int, sk: int) -> None:
        """The lengths this mask pins (if any) must be q's and k's."""
        if self.seq_lengths is not None and tuple(self.seq_lengths) != (sq, sk):
            raise ValueError(
                f"{fn}: block_mask was built for seq_lengths {tuple(self.seq_lengths)} but q and k "
                f"have {sq} and {sk} tokens"
            )
        if self.num_kv_blocks is not None and self.num_kv_blocks != _cdiv(sk, self.kv_block):
            raise ValueError(
                f"{fn}: block_mask has {self.num_kv_blocks} kv blocks but k has {sk} keys, i.e. "
                f"{_cdiv(sk, self.kv_block)} blocks of kv_block = {self.kv_block}"
            )

    def _host_arrays(self) -> Tuple[Any, Any]:
        """int32 host arrays for the core (device tensors are copied; the lists are small)."""
        cnt, idx = self.kv_num_blocks, self.kv_indices
        if _is_torch(cnt) and cnt.device.type != "cpu":
            cnt, idx = cnt.cpu(), idx.cpu()
        return cnt, idx

    def __repr__(self) -> str:
        b, h, nq, nk = self.shape
        dens = f", density={self.density:.3f}" if nk is not None else ""
        return (f"BlockMask(shape=({b}, {h}, {nq}, {nk}), q_block={self.q_block}, "
                f"kv_block={self.kv_block}, max_kv_blocks={int(self.kv_indices.shape[3])}"
                f"{dens}, seq_lengths={self.seq_lengths})")


def _block_size(x: Any, name: str) -> int:
    try:
        v = int(x)
    except (TypeError, ValueError):
        raise TypeError(f"BlockMask: {name} must be an int, got {x!r}") from None
    if v != x or v < 1:
        raise ValueError(f"BlockMask: {name} must be an integer >= 1, got {x!r}")
    return v


def _validate(cnt: np.ndarray, idx: np.ndarray, nk: Optional[int]) -> None:
    """The checks of DESIGN §2.3 with errors naming the first offending entry."""
    if cnt.ndim != 3:
        raise ValueError(f"BlockMask: kv_num_blocks must be [batch | 1, heads | 1, num_q_blocks], "
                         f"got shape {list(cnt.shape)}")
    if idx.ndim != 4 or tuple(idx.shape[:3]) != tuple(cnt.shape):
        raise ValueError(f"BlockMask: kv_indices must be [*kv_num_blocks.shape, max_kv_blocks] = "
                         f"{[*cnt.shape, 'max_kv_blocks']}, got shape {list(idx.shape)}")
    maxk = idx.shape[3]
    bad = (cnt < 0) | (cnt > maxk)
    if bad.any():
        at = np.argwhere(bad)[0]
        raise ValueError(f"BlockMask: kv_num_blocks{_pos(at)} = {int(cnt[tuple(at)])} must be in "
                         f"[0, max_kv_blocks = kv_indices.shape[3] = {maxk}]")
    used = np.arange(maxk) < cnt[..., None]
    lo_bad = used & (idx < 0)
    hi_bad = used & (idx >= nk) if nk is not None else np.zeros_like(used)
    if lo_bad.any() or hi_bad.any():
        at = np.argwhere(lo_bad | hi_bad)[0]
        rng = f"[0, {nk})" if nk is not None else ">= 0"
        raise ValueError(f"BlockMask: kv_indices{_pos(at)} = {int(idx[tuple(at)])} is out of "
                         f"range: kv block ids must be {rng}")
    # Duplicates: unused entries become distinct negatives, then sort each row.
    keyed = np.where(used, idx.astype(np.int64), -1 - np.arange(maxk, dtype=np.int64))
    srt = np.sort(keyed, axis=-1)
    dup = (srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)
    if dup.any():
        at = np.argwhere(dup)[0]
        row, val = tuple(at[:3]), int(srt[tuple(at)])
        raise ValueError(f"BlockMask: kv_indices{_pos(row)} lists kv block {val} more than once")


def _dense_from_lists(cnt: np.ndarray, idx: np.ndarray, nk: int) -> np.ndarray:
    """Boolean [.., nQ, nK] from (validated) lists."""
    used = np.arange(idx.shape[3]) < cnt[..., None]
    dense = np.zeros((*cnt.shape, max(nk, 0)), dtype=bool)
    rows = np.nonzero(used)
    ids = idx[used].astype(np.int64)
    keep = ids < nk
    dense[rows[0][keep], rows[1][keep], rows[2][keep], ids[keep]] = True
    return dense


def _lists_from_dense(dense: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Sorted lists as wide as the longest row (at least 0 wide)."""
    cnt = dense.sum(-1).astype(np.int32)
    width = int(cnt.max()) if cnt.size else 0
    order = np.argsort(~dense, axis=-1, kind="stable")[..., :width]
    idx = np.where(np.arange(width) < cnt[..., None], order, 0).astype(np.int32)
    return cnt, np.ascontiguousarray(idx)


def as_block_mask(block_mask: Any, fn: str) -> BlockMask:
    """An attnkit BlockMask, converting FlexAttention's (whose partial blocks must be
    no-op masked; see BlockMask.from_flex)."""
    if isinstance(block_mask, BlockMask):
        return block_mask
    if type(block_mask).__name__ == "BlockMask" and hasattr(block_mask, "BLOCK_SIZE"):
        return BlockMask.from_flex(block_mask)
    raise TypeError(f"{fn}: block_mask must be an attnkit.BlockMask (or a FlexAttention "
                    f"BlockMask), got {type(block_mask).__name__}")


def block_sparse_attention(
    q: Any,
    k: Any,
    v: Any,
    block_mask: Any,
    *,
    is_causal: bool = False,
    scale: Optional[float] = None,
    return_lse: bool = False,
) -> Union[Any, Tuple[Any, Any]]:
    """Attention restricted to the blocks listed in ``block_mask`` (DESIGN §2.3).

    q ``[B, Sq, Hq, D]``, k ``[B, Sk, Hkv, D]``, v ``[B, Sk, Hkv, Dv]`` (GQA
    without repeat; Dv may differ). Listed blocks are attended fully;
    ``is_causal`` adds the bottom-right aligned causal mask (query i sees key j
    iff ``j <= i + Sk - Sq``). Returns ``out`` or ``(out, lse)``; rows that see
    nothing give 0 and lse ``-inf``.
    """
    fn = "block_sparse_attention"
    fw = framework_of(q, "q")
    dtype = check_floats(fn, q=q, k=k, v=v)
    bm = as_block_mask(block_mask, fn)
    qs, ks, vs = fw.shape(q), framework_of(k, "k").shape(k), framework_of(v, "v").shape(v)
    if len(qs) != 4 or len(ks) != 4 or len(vs) != 4:
        raise ValueError(f"{fn}: q, k and v must be [batch, seqlen, heads, head_dim], got shapes "
                         f"{list(qs)}, {list(ks)} and {list(vs)}")
    bm._check_against(fn, qs[1], ks[1])
    cnt, idx = bm._host_arrays()
    out = fw.empty(q, (*qs[:-1], vs[-1]), dtype)
    lse = fw.empty(q, qs[:-1], "float32") if return_lse else None
    _core.block_sparse_fwd(
        fw.to_core(q), framework_of(k, "k").to_core(k), framework_of(v, "v").to_core(v),
        cnt, idx, bm.q_block, bm.kv_block, fw.to_core(out),
        None if lse is None else fw.to_core(lse), bool(is_causal), nan_float(scale), _fmha._threads,
    )
    out = fw.from_core(out, q)
    return (out, fw.from_core(lse, q)) if return_lse else out


def block_sparse_attention_backward(
    dout: Any,
    q: Any,
    k: Any,
    v: Any,
    out: Any,
    lse: Any,
    block_mask: Any,
    *,
    is_causal: bool = False,
    scale: Optional[float] = None,
    dlse: Any = None,
) -> Tuple[Any, Any, Any]:
    """Gradients ``(dq, dk, dv)`` of :func:`block_sparse_attention` from ``dout``
    and the forward's ``out`` and ``lse`` (``return_lse=True``); ``dlse``
    (optional, lse's shape and strides) is the gradient reaching ``lse``.
    Deterministic on the CPU."""
    fn = "block_sparse_attention_backward"
    fw = framework_of(q, "q")
    dtype = check_floats(fn, q=q, dout=dout, k=k, v=v, out=out)
    bm = as_block_mask(block_mask, fn)
    kfw, vfw = framework_of(k, "k"), framework_of(v, "v")
    qs, ks = fw.shape(q), kfw.shape(k)
    if len(qs) != 4 or len(ks) != 4:
        raise ValueError(f"{fn}: q, k and v must be [batch, seqlen, heads, head_dim], got shapes "
                         f"{list(qs)} and {list(ks)}")
    bm._check_against(fn, qs[1], ks[1])
    cnt, idx = bm._host_arrays()
    dq = fw.empty(q, qs, dtype)
    dk = kfw.empty(k, ks, kfw.dtype_name(k))
    dv = vfw.empty(v, vfw.shape(v), vfw.dtype_name(v))
    to = lambda x, n: framework_of(x, n).to_core(x)  # noqa: E731
    _core.block_sparse_bwd(
        to(dout, "dout"), fw.to_core(q), kfw.to_core(k), vfw.to_core(v), to(out, "out"),
        to(lse, "lse"), cnt, idx, bm.q_block, bm.kv_block, fw.to_core(dq), kfw.to_core(dk),
        vfw.to_core(dv), bool(is_causal), nan_float(scale),
        None if dlse is None else to(dlse, "dlse"), _fmha._threads,
    )
    return fw.from_core(dq, q), kfw.from_core(dk, k), vfw.from_core(dv, v)
