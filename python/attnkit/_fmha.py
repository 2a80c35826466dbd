"""Dense fused multi-head attention (DESIGN §2.1), framework-agnostic API."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

from . import _core
from ._tensors import as_cu_seqlens, check_floats, framework_of, nan_float

_threads = 0


def set_num_threads(n: int) -> None:
    """Worker threads for CPU kernels (0 = OpenMP's default)."""
    global _threads
    if n < 0:
        raise ValueError(f"set_num_threads: n must be >= 0, got {n}")
    _threads = int(n)


def get_num_threads() -> int:
    return _threads or int(_core.build_info()["max_threads"])


def _window(window_size: Optional[Sequence[int]]) -> Tuple[int, int]:
    if window_size is None:
        return -1, -1
    try:
        left, right = (int(w) for w in window_size)
    except (TypeError, ValueError):
        raise ValueError(
            f"attention: window_size must be a pair (left, right) of ints (-1 = unbounded), "
            f"got {window_size!r}"
        ) from None
    return left, right


def _softcap(softcap: Optional[float]) -> float:
    return 0.0 if softcap is None else float(softcap)


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
    return_lse: bool = False,
) -> Union[Any, Tuple[Any, Any]]:
    """Scaled dot-product attention, ``softmax(scale * q k^T + mask) v``.

    Layout is ``[batch, seqlen, heads, head_dim]`` (varlen: ``[total, heads,
    head_dim]`` with int32 ``cu_seqlens_q/k`` of length ``batch + 1``). K/V may
    have fewer heads than Q (GQA/MQA) and V its own head dim.

    is_causal: bottom-right aligned (query i sees key j iff j <= i + Sk - Sq).
    window_size: (left, right) keys around the aligned diagonal, -1 = unbounded.
    softcap: scores become ``softcap * tanh(score / softcap)``.
    Returns ``out`` or ``(out, lse)`` (lse float32 ``[batch, seqlen, heads]``,
    natural log; rows that see no key give out 0 and lse -inf).
    """
    fn = "attention"
    fw = framework_of(q, "q")
    dtype = check_floats(fn, q=q, k=k, v=v)
    wl, wr = _window(window_size)
    cq = as_cu_seqlens(cu_seqlens_q, fw, "cu_seqlens_q", fn)
    ck = as_cu_seqlens(cu_seqlens_k, fw, "cu_seqlens_k", fn)
    qs, vs = fw.shape(q), framework_of(v, "v").shape(v)
    if len(qs) < 2 or len(vs) < 1:
        raise ValueError(
            f"attention: q must be [batch, seqlen, heads, head_dim] (or [total, heads, head_dim] "
            f"for varlen), got shape {list(qs)}"
        )
    out_shape = (*qs[:-1], vs[-1])
    out = fw.empty(q, out_shape, dtype)
    lse = fw.empty(q, qs[:-1], "float32") if return_lse else None
    _core.attention_fwd(
        fw.to_core(q),
        framework_of(k, "k").to_core(k),
        framework_of(v, "v").to_core(v),
        fw.to_core(out),
        None if lse is None else fw.to_core(lse),
        bool(is_causal),
        wl,
        wr,
        _softcap(softcap),
        nan_float(scale),
        cq,
        ck,
        fw.stream(q),
        _threads,
    )
    out = fw.from_core(out, q)
    if return_lse:
        return out, fw.from_core(lse, q)
    return out


def attention_backward(
    dout: Any,
    q: Any,
    k: Any,
    v: Any,
    out: Any,
    lse: Any,
    *,
    is_causal: bool = False,
    window_size: Optional[Sequence[int]] = None,
    softcap: Optional[float] = None,
    scale: Optional[float] = None,
    cu_seqlens_q: Any = None,
    cu_seqlens_k: Any = None,
    dlse: Any = None,
) -> Tuple[Any, Any, Any]:
    """Gradients ``(dq, dk, dv)`` of :func:`attention` given ``dout`` and the
    forward's ``out`` and ``lse`` (``return_lse=True``). ``dlse`` (optional, the
    shape and strides of ``lse``) is the gradient reaching ``lse`` when it was
    used downstream, e.g. by :func:`merge_attentions`. Deterministic on the CPU."""
    fn = "attention_backward"
    fw = framework_of(q, "q")
    dtype = check_floats(fn, q=q, dout=dout, k=k, v=v, out=out)
    wl, wr = _window(window_size)
    cq = as_cu_seqlens(cu_seqlens_q, fw, "cu_seqlens_q", fn)
    ck = as_cu_seqlens(cu_seqlens_k, fw, "cu_seqlens_k", fn)
    kfw, vfw = framework_of(k, "k"), framework_of(v, "v")
    dq = fw.empty(q, fw.shape(q), dtype)
    dk = kfw.empty(k, kfw.shape(k), kfw.dtype_name(k))
    dv = vfw.empty(v, vfw.shape(v), vfw.dtype_name(v))
    to = lambda x, n: framework_of(x, n).to_core(x)  # noqa: E731
    _core.attention_bwd(
        to(dout, "dout"),
        fw.to_core(q),
        kfw.to_core(k),
        vfw.to_core(v),
        to(out, "out"),
        to(lse, "lse"),
        fw.to_core(dq),
        kfw.to_core(dk),
        vfw.to_core(dv),
        bool(is_causal),
        wl,
        wr,
        _softcap(softcap),
        nan_float(scale),
        cq,
        ck,
        None if dlse is None else to(dlse, "dlse"),
        fw.stream(q),
        _threads,
    )
    return fw.from_core(dq, q), kfw.from_core(dk, k), vfw.from_core(dv, v)


def merge_attentions(outs: Sequence[Any], lses: Sequence[Any]) -> Tuple[Any, Any]:
    """Combine attention results over disjoint key sets exactly through their
    LSEs: returns ``(out, lse)``. ``outs[i]``: ``[..., heads, head_dim]``,
    ``lses[i]``: ``[..., heads]`` float32."""
    if len(outs) == 0 or len(outs) != len(lses):
        raise ValueError(
            f"merge_attentions: needs as many lses as outs (at least one), got {len(outs)} outs "
            f"and {len(lses)} lses"
        )
    fw = framework_of(outs[0], "outs[0]")
    dtype = check_floats("merge_attentions", **{f"outs[{i}]": o for i, o in enumerate(outs)})
    if fw.name == "torch" and fw.device_str(outs[0]) != "cpu":
        from .torch import _merge_torch

        return _merge_torch(list(outs), list(lses))
    out = fw.empty(outs[0], fw.shape(outs[0]), dtype)
    lse = fw.empty(outs[0], fw.shape(outs[0])[:-1], "float32")
    _core.merge_attentions(
        [framework_of(o, "outs[i]").to_core(o) for o in outs],
        [framework_of(x, "lses[i]").to_core(x) for x in lses],
        fw.to_core(out),
        fw.to_core(lse),
        _threads,
    )
    return fw.from_core(out, outs[0]), fw.from_core(lse, outs[0])
