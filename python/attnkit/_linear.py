"""Linear attention (DESIGN §2.4), framework-agnostic API.

One recurrence covers plain linear attention, RetNet, Lightning Attention and
simple-GLA / Mamba2-style scalar gating::

    S_t = exp(g_t) * S_{t-1} + k_t^T v_t        o_t = scale * q_t S_t

Layout ``[batch, seqlen, heads, head_dim]`` (varlen: packed ``[total, heads,
head_dim]`` with int32 ``cu_seqlens``); states are float32 ``[N, heads_q, Dk,
Dv]``. See docs/linear.md for the exact semantics.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

from . import _core
from . import _fmha
from ._tensors import as_cu_seqlens, check_float, check_floats, framework_of, nan_float


def _shapes(fn: str, q: Any, v: Any, cu: Any):
    fw = framework_of(q, "q")
    qs, vs = fw.shape(q), framework_of(v, "v").shape(v)
    want = 3 if cu is not None else 4
    if len(qs) != want or len(vs) != want:
        layout = ("[total_tokens, heads, head_dim] (varlen)" if cu is not None
                  else "[batch, seqlen, heads, head_dim]")
        bad, shape = ("q", qs) if len(qs) != want else ("v", vs)
        raise ValueError(f"{fn}: {bad} must have {want} dimensions {layout}, got {len(shape)} "
                         f"(shape {list(shape)})")
    return fw, qs, vs


def _num_sequences(qs, cu) -> int:
    """N of the state shape: the batch, or len(cu_seqlens) - 1."""
    if cu is None:
        return int(qs[0])
    return int(framework_of(cu, "cu_seqlens").shape(cu)[0]) - 1


def _opt(x: Any, name: str) -> Any:
    return None if x is None else framework_of(x, name).to_core(x)


def linear_attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    is_causal: bool = True,
    g: Any = None,
    scale: Optional[float] = None,
    normalize: bool = False,
    initial_state: Any = None,
    return_final_state: bool = False,
    cu_seqlens: Any = None,
) -> Union[Any, Tuple[Any, Any]]:
    """Linear attention ``o_t = scale * q_t S_t`` with ``S_t = exp(g_t) S_{t-1} + k_t^T v_t``.

    q ``[B, S, Hq, Dk]``, k ``[B, S, Hkv, Dk]``, v ``[B, S, Hkv, Dv]`` (GQA: query
    head h reads kv head ``h // (Hq // Hkv)``; varlen: ``[total, H, D]`` with int32
    ``cu_seqlens`` of length N+1).

    g: None (no decay), per head ``[Hq]`` (a constant decay, RetNet / Lightning)
    or per token ``[B, S, Hq]`` (``[total, Hq]`` varlen; simple-GLA / Mamba2), in
    log space (usually <= 0; -inf resets the state; any float dtype).
    is_causal=False: ``o = scale * q (S_0 + sum_j k_j^T v_j)``, no gate.
    normalize: divide by ``scale * q_t z_t`` with z_t the gated running sum of k;
    rows where that is exactly 0 give 0. Not combinable with states.
    initial_state: float32 ``[N, Hq, Dk, Dv]`` (zeros when absent).
    Returns ``out`` (q's dtype), or ``(out, final_state)`` with
    ``return_final_state=True`` (float32 ``[N, Hq, Dk, Dv]``).
    """
    fn = "linear_attention"
    cu = as_cu_seqlens(cu_seqlens, framework_of(q, "q"), "cu_seqlens", fn)
    fw, qs, vs = _shapes(fn, q, v, cu)
    dtype = check_floats(fn, q=q, k=k, v=v)
    out = fw.empty(q, (*qs[:-1], vs[-1]), dtype)
    fs = None
    if return_final_state:
        fs = fw.empty(q, (_num_sequences(qs, cu), qs[-2], qs[-1], vs[-1]), "float32")
    _core.linear_fwd(
        fw.to_core(q), framework_of(k, "k").to_core(k), framework_of(v, "v").to_core(v),
        fw.to_core(out), None if fs is None else fw.to_core(fs), _opt(g, "g"),
        _opt(initial_state, "initial_state"), cu, bool(is_causal), nan_float(scale),
        bool(normalize), _fmha._threads,
    )
    out = fw.from_core(out, q)
    if return_final_state:
        return out, fw.from_core(fs, q)
    return out


def _one_token(q: Any) -> bool:
    return len(framework_of(q, "q").shape(q)) == 3


def linear_attention_step(
    q: Any,
    k: Any,
    v: Any,
    state: Any,
    *,
    g: Any = None,
    scale: Optional[float] = None,
) -> Tuple[Any, Any]:
    """One decode step (or a few tokens) from ``state``: returns ``(out, new_state)``.

    q ``[B, n, Hq, Dk]`` (or ``[B, Hq, Dk]`` for a single token, giving out
    ``[B, Hq, Dv]``), k/v likewise, state float32 ``[B, Hq, Dk, Dv]``; g None,
    ``[Hq]`` or per token ``[B, n, Hq]`` (``[B, Hq]`` for a single token).
    A prefix call with ``return_final_state=True`` followed by steps equals the
    full :func:`linear_attention` call. ``state`` is not modified.
    """
    single = _one_token(q)
    if single:
        q, k, v = q[:, None], k[:, None], v[:, None]
        if g is not None and len(framework_of(g, "g").shape(g)) == 2:
            g = g[:, None]
    out, new_state = linear_attention(q, k, v, is_causal=True, g=g, scale=scale,
                                      initial_state=state, return_final_state=True)
    return (out[:, 0] if single else out), new_state


def linear_attention_backward(
    dout: Any,
    q: Any,
    k: Any,
    v: Any,
    *,
    is_causal: bool = True,
    g: Any = None,
    scale: Optional[float] = None,
    normalize: bool = False,
    initial_state: Any = None,
    dfinal_state: Any = None,
    cu_seqlens: Any = None,
) -> Tuple[Any, Any, Any, Any, Any]:
    """Gradients ``(dq, dk, dv, dg, d_initial_state)`` of :func:`linear_attention`
    given ``dout`` (None = 0) and ``dfinal_state`` (the gradient reaching the
    final state; None = 0). ``dg`` (g's shape and dtype) is None when g is None;
    ``d_initial_state`` is None when initial_state is None. Deterministic."""
    fn = "linear_attention_backward"
    cu = as_cu_seqlens(cu_seqlens, framework_of(q, "q"), "cu_seqlens", fn)
    fw, qs, vs = _shapes(fn, q, v, cu)
    dtype = check_floats(fn, q=q, dout=dout, k=k, v=v)
    kfw, vfw = framework_of(k, "k"), framework_of(v, "v")
    dq = fw.empty(q, qs, dtype)
    dk = kfw.empty(k, kfw.shape(k), kfw.dtype_name(k))
    dv = vfw.empty(v, vs, vfw.dtype_name(v))
    dg = None
    if g is not None:
        gfw = framework_of(g, "g")
        dg = gfw.empty(g, gfw.shape(g), check_float(gfw, g, "g", fn))
    dinit = None
    if initial_state is not None:
        sfw = framework_of(initial_state, "initial_state")
        dinit = sfw.empty(initial_state, sfw.shape(initial_state), "float32")
    _core.linear_bwd(
        _opt(dout, "dout"), fw.to_core(q), kfw.to_core(k), vfw.to_core(v),
        _opt(dfinal_state, "dfinal_state"), fw.to_core(dq), kfw.to_core(dk), vfw.to_core(dv),
        None if dg is None else framework_of(g, "g").to_core(dg),
        None if dinit is None else framework_of(initial_state, "initial_state").to_core(dinit),
        _opt(g, "g"), _opt(initial_state, "initial_state"), cu, bool(is_causal),
        nan_float(scale), bool(normalize), _fmha._threads,
    )
    res_dg = None if dg is None else framework_of(g, "g").from_core(dg, g)
    res_di = None if dinit is None else framework_of(initial_state, "initial_state").from_core(
        dinit, initial_state)
    return fw.from_core(dq, q), kfw.from_core(dk, k), vfw.from_core(dv, v), res_dg, res_di


# ----------------------------------------------------------------------------- feature maps
FEATURE_MAPS = ("identity", "relu", "elu+1", "relu2", "softplus")


def feature_map(x: Any, name: str = "elu+1") -> Any:
    """Applies a linear-attention feature map to q or k, in the caller's framework
    (torch: differentiable torch ops; NumPy: computed in float32, returned in x's
    dtype). Kept outside the kernels (DESIGN §2.4):

    - ``identity``: x
    - ``relu``: max(x, 0)
    - ``elu+1``: elu(x) + 1 = x + 1 for x > 0, exp(x) otherwise (Katharopoulos et al.)
    - ``relu2``: max(x, 0) ** 2
    - ``softplus``: log(1 + exp(x))

    The positive maps (elu+1, softplus) keep ``q . z`` > 0 for ``normalize=True``.
    """
    fns = _torch_maps() if type(x).__module__.split(".")[0] == "torch" else _numpy_maps()
    try:
        f = fns[name]
    except KeyError:
        raise ValueError(f"feature_map: unknown name {name!r}; choose from {list(FEATURE_MAPS)}") from None
    return f(x)


def _torch_maps():
    import torch
    import torch.nn.functional as F

    return {
        "identity": lambda x: x,
        "relu": F.relu,
        "elu+1": lambda x: F.elu(x) + 1,
        "relu2": lambda x: torch.square(F.relu(x)),
        "softplus": F.softplus,
    }


def _numpy_maps():
    import numpy as np

    def wrap(f: Callable) -> Callable:
        def g(x):
            a = np.asarray(x)
            return f(a.astype(np.float32)).astype(a.dtype)
        return g

    return {
        "identity": lambda x: x,
        "relu": wrap(lambda a: np.maximum(a, 0)),
        "elu+1": wrap(lambda a: np.where(a > 0, a + 1, np.exp(np.minimum(a, 0)))),
        "relu2": wrap(lambda a: np.square(np.maximum(a, 0))),
        "softplus": wrap(lambda a: np.logaddexp(a, 0)),
    }
