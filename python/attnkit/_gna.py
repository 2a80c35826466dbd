"""Neighborhood attention / GNA (DESIGN §2.2), framework-agnostic API.

Argument names and conventions mirror NATTEN (``na1d/na2d/na3d``,
``kernel_size``/``stride``/``dilation``/``is_causal`` as a scalar or one value
per spatial dim, ``additional_keys``/``additional_values``, ``return_lse``).
"""

from __future__ import annotations

import numbers
from typing import Any, List, Optional, Sequence, Tuple, Union

from . import _core, _fmha
from ._tensors import check_floats, framework_of, nan_float

IntOrTuple = Union[int, Sequence[int]]
BoolOrTuple = Union[bool, Sequence[bool]]


def _ints(fn: str, name: str, value: Any) -> List[int]:
    """An int or a sequence of ints as a list (its length is checked by the core)."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for x in items:
        if isinstance(x, bool) or not isinstance(x, numbers.Integral):
            raise TypeError(
                f"{fn}: {name} must be an int or a tuple of ints (one per spatial dim), "
                f"got {value!r}"
            )
    if not items:
        raise ValueError(f"{fn}: {name} must not be empty")
    return [int(x) for x in items]


def _bools(fn: str, name: str, value: Any) -> List[int]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for x in items:
        if not (isinstance(x, bool) or type(x).__name__ in ("bool_", "bool")):
            raise TypeError(
                f"{fn}: {name} must be a bool or a tuple of bools (one per spatial dim), "
                f"got {value!r}"
            )
    if not items:
        raise ValueError(f"{fn}: {name} must not be empty")
    return [int(bool(x)) for x in items]


def _args(fn, kernel_size, stride, dilation, is_causal):
    return (
        _ints(fn, "kernel_size", kernel_size),
        _ints(fn, "stride", stride),
        _ints(fn, "dilation", dilation),
        _bools(fn, "is_causal", is_causal),
    )


def _extra(fn, additional_keys, additional_values):
    if (additional_keys is None) != (additional_values is None):
        raise ValueError(f"{fn}: additional_keys and additional_values must be given together")
    if additional_keys is None:
        return None, None
    return (
        framework_of(additional_keys, "additional_keys").to_core(additional_keys),
        framework_of(additional_values, "additional_values").to_core(additional_values),
    )


def neighborhood_attention(
    q: Any,
    k: Any,
    v: Any,
    kernel_size: IntOrTuple,
    *,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    scale: Optional[float] = None,
    additional_keys: Any = None,
    additional_values: Any = None,
    return_lse: bool = False,
) -> Union[Any, Tuple[Any, Any]]:
    """Neighborhood attention over 1-3 spatial dims (generalized: window, stride,
    dilation and causality per dim), exactly as DESIGN §2.2 / NATTEN define it.

    q: ``[batch, *spatial, heads, head_dim]`` (spatial = ``X``, ``X, Y`` or ``X, Y, Z``);
    k, v: the same spatial shape, ``heads_kv`` dividing ``heads`` (GQA/MQA, never
    repeated); v may have its own head dim. Each of ``kernel_size``, ``stride``,
    ``dilation``, ``is_causal`` is a scalar or one value per spatial dim.

    additional_keys / additional_values: ``[batch, n_extra, heads_kv, head_dim]``
    tokens every query also attends to (unmasked), merged exactly through the LSE.
    Returns ``out`` or ``(out, lse)`` (lse float32 ``[batch, *spatial, heads]``).
    """
    fn = "neighborhood_attention"
    fw = framework_of(q, "q")
    dtype = check_floats(fn, q=q, k=k, v=v, additional_keys=additional_keys,
                         additional_values=additional_values)
    ks, st, dl, ca = _args(fn, kernel_size, stride, dilation, is_causal)
    ak, av = _extra(fn, additional_keys, additional_values)
    qs, vs = fw.shape(q), framework_of(v, "v").shape(v)
    if len(qs) < 2 or len(vs) < 1:
        raise ValueError(
            f"{fn}: q must have 4, 5 or 6 dimensions [batch, *spatial (1 to 3 dims), heads, "
            f"head_dim], got shape {list(qs)}"
        )
    out = fw.empty(q, (*qs[:-1], vs[-1]), dtype)
    lse = fw.empty(q, qs[:-1], "float32") if return_lse else None
    _core.na_fwd(
        fw.to_core(q),
        framework_of(k, "k").to_core(k),
        framework_of(v, "v").to_core(v),
        fw.to_core(out),
        None if lse is None else fw.to_core(lse),
        ks,
        st,
        dl,
        ca,
        nan_float(scale),
        ak,
        av,
        _fmha._threads,
    )
    out = fw.from_core(out, q)
    if return_lse:
        return out, fw.from_core(lse, q)
    return out


def neighborhood_attention_backward(
    dout: Any,
    q: Any,
    k: Any,
    v: Any,
    out: Any,
    lse: Any,
    kernel_size: IntOrTuple,
    *,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    scale: Optional[float] = None,
    additional_keys: Any = None,
    additional_values: Any = None,
    dlse: Any = None,
) -> Tuple[Any, ...]:
    """Gradients of :func:`neighborhood_attention` given ``dout`` and the forward's
    ``out`` and ``lse`` (``return_lse=True``; with additional tokens, the merged ones).
    Returns ``(dq, dk, dv)``, or ``(dq, dk, dv, d_additional_keys, d_additional_values)``
    when additional tokens are given. ``dlse`` (optional, the shape and strides of
    ``lse``) is the gradient reaching ``lse``. Deterministic on the CPU."""
    fn = "neighborhood_attention_backward"
    fw = framework_of(q, "q")
    dtype = check_floats(fn, q=q, dout=dout, k=k, v=v, out=out, additional_keys=additional_keys,
                         additional_values=additional_values)
    ks, st, dl, ca = _args(fn, kernel_size, stride, dilation, is_causal)
    ak, av = _extra(fn, additional_keys, additional_values)
    kfw, vfw = framework_of(k, "k"), framework_of(v, "v")
    dq = fw.empty(q, fw.shape(q), dtype)
    dk = kfw.empty(k, kfw.shape(k), kfw.dtype_name(k))
    dv = vfw.empty(v, vfw.shape(v), vfw.dtype_name(v))
    dak = dav = None
    if ak is not None:
        akfw = framework_of(additional_keys, "additional_keys")
        avfw = framework_of(additional_values, "additional_values")
        dak = akfw.empty(additional_keys, akfw.shape(additional_keys), akfw.dtype_name(additional_keys))
        dav = avfw.empty(additional_values, avfw.shape(additional_values),
                         avfw.dtype_name(additional_values))
    to = lambda x, n: framework_of(x, n).to_core(x)  # noqa: E731
    _core.na_bwd(
        to(dout, "dout"),
        fw.to_core(q),
        kfw.to_core(k),
        vfw.to_core(v),
        to(out, "out"),
        to(lse, "lse"),
        fw.to_core(dq),
        kfw.to_core(dk),
        vfw.to_core(dv),
        ks,
        st,
        dl,
        ca,
        nan_float(scale),
        ak,
        av,
        None if dak is None else to(dak, "d_additional_keys"),
        None if dav is None else to(dav, "d_additional_values"),
        None if dlse is None else to(dlse, "dlse"),
        _fmha._threads,
    )
    grads = (fw.from_core(dq, q), kfw.from_core(dk, k), vfw.from_core(dv, v))
    if dak is not None:
        grads += (
            framework_of(additional_keys, "additional_keys").from_core(dak, additional_keys),
            framework_of(additional_values, "additional_values").from_core(dav, additional_values),
        )
    return grads


def _check_rank(fn: str, q: Any, nd: int) -> None:
    shape = framework_of(q, "q").shape(q)
    if len(shape) != nd + 3:
        names = {1: "X", 2: "X, Y", 3: "X, Y, Z"}[nd]
        raise ValueError(
            f"{fn}: q must have {nd + 3} dimensions [batch, {names}, heads, head_dim], "
            f"got {len(shape)} (shape {list(shape)})"
        )


def _nad(nd: int):
    name = f"na{nd}d"

    def na(
        q: Any,
        k: Any,
        v: Any,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        dilation: IntOrTuple = 1,
        is_causal: BoolOrTuple = False,
        scale: Optional[float] = None,
        additional_keys: Any = None,
        additional_values: Any = None,
        return_lse: bool = False,
    ) -> Union[Any, Tuple[Any, Any]]:
        _check_rank(name, q, nd)
        return neighborhood_attention(
            q, k, v, kernel_size, stride=stride, dilation=dilation, is_causal=is_causal,
            scale=scale, additional_keys=additional_keys, additional_values=additional_values,
            return_lse=return_lse,
        )

    na.__name__ = na.__qualname__ = name
    na.__doc__ = (
        f"{nd}-D neighborhood attention (NATTEN's ``{name}``): "
        f":func:`neighborhood_attention` for q of shape "
        f"``[batch, {({1: 'X', 2: 'X, Y', 3: 'X, Y, Z'})[nd]}, heads, head_dim]``."
    )
    return na


na1d = _nad(1)
na2d = _nad(2)
na3d = _nad(3)
