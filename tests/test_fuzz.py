"""Random edge cases and bad input through the public API of every family.

Each case draws shapes (0, 1, odd sizes), dtypes (also mixed and float64),
strides (non-unit head_dim stride, reversed tokens, transposed storage) and
arguments (invalid windows, scales, masks, cu_seqlens) and calls attnkit. A
case passes when the call returns results without NaN, or raises one of the
documented exception types with a message that says something. A crash, an
unexpected exception type or a NaN fails. The test runs a fixed number of cases
from fixed seeds; as a script it runs for a time budget, which is how it is run
under the sanitizers:

    python tests/test_fuzz.py --seconds 300 --seed 7   # after scripts/sanitize.sh's build
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import ml_dtypes  # a test requirement (pyproject's "test" extra)
import numpy as np
import pytest

import attnkit

OK_EXC = (ValueError, TypeError, NotImplementedError, MemoryError, OverflowError)
DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16]


class Draw:
    """The random choices of one case."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)
        self.np = np.random.default_rng(seed)

    def size(self, small: bool = False) -> int:
        return self.r.choice([0, 1, 1, 2, 3, 7, 16, 17, 33] + ([] if small else [64, 65, 129]))

    def tensor(self, shape, dt, weird: bool = True):
        x = self.np.standard_normal(shape).astype(np.float32)
        u = self.r.random() if weird else 1.0
        if u < 0.1 and len(shape) >= 2:  # head_dim stride 2
            big = np.zeros(shape[:-1] + (2 * shape[-1],), np.float32)
            big[..., ::2] = x
            return big.astype(dt)[..., ::2]
        if u < 0.2 and len(shape) >= 3:  # tokens reversed (negative stride)
            return x.astype(dt)[:, ::-1]
        if u < 0.25:
            return x.astype(np.float64)
        if u < 0.3 and len(shape) >= 2:  # a head_dim one short of the others
            return x.astype(dt)[..., : max(shape[-1] - 1, 0)]
        return x.astype(dt)


def _finite(out, what: str) -> None:
    for o in out if isinstance(out, (tuple, list)) else (out,):
        if o is not None and np.isnan(np.asarray(o, dtype=np.float32)).any():
            raise AssertionError(f"{what}: NaN in an output of shape {np.shape(o)}")


def case_attention(d: Draw) -> None:
    B, Sq, Sk, H = d.size(True), d.size(), d.size(), d.r.choice([1, 2, 4])
    Hkv = d.r.choice([h for h in (1, 2, 4) if H % h == 0] + [3])
    D, Dv = d.r.choice([1, 8, 13, 33, 64, 72]), d.r.choice([1, 8, 13, 64])
    dt = d.r.choice(DTYPES)
    q, k, v = d.tensor((B, Sq, H, D), dt), d.tensor((B, Sk, Hkv, D), dt), d.tensor((B, Sk, Hkv, Dv), dt)
    kw = {}
    if d.r.random() < 0.3:
        kw["is_causal"] = True
    if d.r.random() < 0.2:
        kw["window_size"] = (d.r.randint(-2, 9), d.r.randint(-2, 9))
    if d.r.random() < 0.15:
        kw["softcap"] = d.r.choice([0.0, -1.0, 5.0, float("nan")])
    if d.r.random() < 0.15:
        kw["scale"] = d.r.choice([0.0, -1.0, float("inf"), float("nan"), 0.3])
    out, lse = attnkit.attention(q, k, v, return_lse=True, **kw)
    _finite(out, "attention")
    if d.r.random() < 0.4:
        _finite(attnkit.attention_backward(d.tensor(out.shape, dt, weird=d.r.random() < 0.2), q, k, v,
                                           out, lse, **kw), "attention_backward")


def case_varlen(d: Draw) -> None:
    n = d.r.choice([1, 2, 3])
    cq = np.concatenate([[0], np.cumsum([d.size() for _ in range(n)])]).astype(np.int32)
    ck = np.concatenate([[0], np.cumsum([d.size() for _ in range(n)])]).astype(np.int32)
    u = d.r.random()
    if u < 0.1:
        cq = cq[::-1].copy()
    elif u < 0.2:
        ck = ck + 1
    elif u < 0.3:
        cq = cq.astype(np.int64)
    dt, D = d.r.choice(DTYPES), d.r.choice([8, 64])
    q = d.tensor((int(max(cq.max(), 0)), 2, D), dt)
    k, v = d.tensor((int(ck.max()), 2, D), dt), d.tensor((int(ck.max()), 2, D), dt)
    _finite(attnkit.attention(q, k, v, cu_seqlens_q=cq, cu_seqlens_k=ck, is_causal=d.r.random() < 0.5),
            "varlen attention")


def case_neighborhood(d: Draw) -> None:
    nd = d.r.choice([1, 2, 3])
    sp = tuple(d.r.choice([1, 2, 3, 5, 8, 9, 16]) for _ in range(nd))
    H, D = d.r.choice([1, 2, 4]), d.r.choice([8, 13, 32, 33, 64])
    dt = d.r.choice(DTYPES)
    q = d.tensor((d.size(True) or 1,) + sp + (H, D), dt)
    k, v = d.tensor(q.shape, dt), d.tensor(q.shape[:-1] + (d.r.choice([D, 8]),), dt)
    ks = tuple(d.r.choice([0, 1, 2, 3, 4, 5, 7, 9]) for _ in range(d.r.choice([nd, nd, nd + 1])))
    ks = ks[0] if len(ks) == 1 and d.r.random() < 0.5 else ks
    kw = {}
    if d.r.random() < 0.4:
        kw["stride"] = tuple(d.r.choice([1, 2, 3, 0]) for _ in range(nd))
    if d.r.random() < 0.4:
        kw["dilation"] = tuple(d.r.choice([1, 2, 3, 0]) for _ in range(nd))
    if d.r.random() < 0.4:
        kw["is_causal"] = tuple(d.r.random() < 0.5 for _ in range(nd))
    if d.r.random() < 0.2:
        ne = d.size(True)
        kw["additional_keys"] = d.tensor((q.shape[0], ne, H, D), dt)
        kw["additional_values"] = d.tensor((q.shape[0], ne, H, v.shape[-1]), dt)
    out, lse = attnkit.neighborhood_attention(q, k, v, ks, return_lse=True, **kw)
    _finite(out, "neighborhood_attention")
    if d.r.random() < 0.4:
        _finite(attnkit.neighborhood_attention_backward(d.tensor(out.shape, dt, weird=False), q, k, v,
                                                        out, lse, ks, **kw), "neighborhood backward")


def case_block_sparse(d: Draw) -> None:
    B, S, Sk, H = d.size(True) or 1, d.size(), d.size(), d.r.choice([1, 2, 4])
    qb, kb = d.r.choice([1, 16, 17, 64, 128]), d.r.choice([1, 16, 32, 64, 100])
    nq, nk = -(-S // qb), -(-Sk // kb)
    dt = d.r.choice(DTYPES)
    q, k = d.tensor((B, S, H, 16), dt), d.tensor((B, Sk, H, 16), dt)
    v = d.tensor((B, Sk, H, d.r.choice([16, 9, 33])), dt)
    dense = d.np.random((d.r.choice([1, B]), d.r.choice([1, H, H + 1]), nq + d.r.choice([0, 0, 1]), nk))
    bm = attnkit.BlockMask.from_dense(dense < d.r.random(), q_block=qb, kv_block=kb)
    if d.r.random() < 0.2:  # corrupt the lists
        cnt, idx = np.array(bm.kv_num_blocks), np.array(bm.kv_indices)
        if idx.size:
            idx.flat[d.r.randrange(idx.size)] = d.r.choice([-1, nk, 10**6])
        if cnt.size:
            cnt.flat[d.r.randrange(cnt.size)] = d.r.choice([-1, idx.shape[-1] + 1])
        bm = attnkit.BlockMask.from_kv_blocks(cnt, idx, q_block=qb, kv_block=kb)
    causal = d.r.random() < 0.3
    out, lse = attnkit.block_sparse_attention(q, k, v, bm, is_causal=causal, return_lse=True)
    _finite(out, "block_sparse_attention")
    if d.r.random() < 0.4:
        _finite(attnkit.block_sparse_attention_backward(d.tensor(out.shape, dt, weird=False), q, k, v,
                                                        out, lse, bm, is_causal=causal),
                "block_sparse backward")


def case_linear(d: Draw) -> None:
    B, S, H = d.size(True) or 1, d.size(), d.r.choice([1, 2, 4])
    Dk, Dv = d.r.choice([1, 8, 13, 33, 64, 136]), d.r.choice([1, 8, 13, 64])
    dt = d.r.choice(DTYPES)
    q, k, v = d.tensor((B, S, H, Dk), dt), d.tensor((B, S, H, Dk), dt), d.tensor((B, S, H, Dv), dt)
    kw = {"is_causal": d.r.random() < 0.7}
    u = d.r.random()
    if u < 0.3:
        kw["g"] = -d.np.random(H).astype(np.float32)
    elif u < 0.5:
        kw["g"] = -np.abs(d.tensor((B, S, H), np.float32, weird=d.r.random() < 0.3))
    if d.r.random() < 0.3:
        kw["normalize"] = True
    if d.r.random() < 0.3:
        kw["initial_state"] = d.tensor((B, H, Dk, Dv), np.float32, weird=d.r.random() < 0.2)
    if d.r.random() < 0.3:
        kw["return_final_state"] = True
    if d.r.random() < 0.1:
        kw["scale"] = d.r.choice([0.0, -2.0, 0.5])
    _finite(attnkit.linear_attention(q, k, v, **kw), "linear_attention")
    if d.r.random() < 0.3:
        kw.pop("return_final_state", None)
        _finite(attnkit.linear_attention_backward(d.tensor((B, S, H, Dv), dt, weird=False), q, k, v, **kw),
                "linear backward")
    if d.r.random() < 0.2:
        st = d.tensor((B, H, Dk, Dv), np.float32, weird=False)
        _finite(attnkit.linear_attention_step(q[:, :1], k[:, :1], v[:, :1], st), "linear_attention_step")


def case_merge(d: Draw) -> None:
    n = d.r.choice([0, 1, 2, 3])
    shape = (d.size(True) or 1, d.size(True), 2, 8)
    outs = [d.tensor(shape, d.r.choice([np.float32, np.float32, np.float64]), weird=False) for _ in range(n)]
    lses = [np.where(d.np.random(shape[:-1]) < 0.3, -np.inf, 0.5).astype(np.float32) for _ in range(n)]
    if n and d.r.random() < 0.2:
        lses[0] = lses[0][..., :1]
    _finite(attnkit.merge_attentions(outs, lses), "merge_attentions")


def case_torch_autograd(d: Draw) -> None:
    """attnkit.torch ops with autograd on strided half/float tensors."""
    import torch

    import attnkit.torch as at

    dt = d.r.choice([torch.float32, torch.float16, torch.bfloat16])

    def ten(shape):
        u = d.r.random()
        if u < 0.15 and len(shape) >= 4:  # tokens and heads swapped in storage
            x = torch.from_numpy(d.np.standard_normal((shape[0], shape[2], shape[1], *shape[3:]),
                                                      dtype=np.float32)).transpose(1, 2)
        else:
            x = torch.from_numpy(d.np.standard_normal((*shape[:-1], shape[-1] + 3), dtype=np.float32))
            x = x[..., : shape[-1]] if u < 0.3 else x[..., 3:]
        return x.to(dt).requires_grad_(d.r.random() < 0.8)

    fam = d.r.choice(["attention", "neighborhood", "block_sparse", "linear"])
    S, D = d.size(), d.r.choice([8, 13, 33, 64])
    if fam == "attention":
        q, k = ten((1, S, 4, D)), ten((1, d.size(), 2, D))
        v = ten((1, k.shape[1], 2, d.r.choice([D, 8])))
        f = lambda: at.attention(q, k, v, is_causal=d.r.random() < 0.5,  # noqa: E731
                                 softcap=d.r.choice([None, 3.0]))
    elif fam == "neighborhood":
        nd = d.r.choice([1, 2, 3])
        sp = tuple(d.r.choice([2, 3, 5, 8]) for _ in range(nd))
        q, k, v = ten((1, *sp, 2, D)), ten((1, *sp, 2, D)), ten((1, *sp, 2, D))
        ks = tuple(d.r.choice([2, 3]) for _ in range(nd))
        causal = tuple(d.r.random() < 0.5 for _ in range(nd))
        f = lambda: at.neighborhood_attention(q, k, v, ks, is_causal=causal)  # noqa: E731
    elif fam == "block_sparse":
        Sk, qb, kb = d.size(), d.r.choice([16, 64]), d.r.choice([16, 32, 64])
        q, k, v = ten((1, S, 2, D)), ten((1, Sk, 2, D)), ten((1, Sk, 2, D))
        bm = attnkit.BlockMask.from_dense(d.np.random((1, 1, -(-S // qb), -(-Sk // kb))) < d.r.random(),
                                          q_block=qb, kv_block=kb)
        f = lambda: at.block_sparse_attention(q, k, v, bm, is_causal=d.r.random() < 0.3)  # noqa: E731
    else:
        q, k, v = ten((1, S, 2, D)), ten((1, S, 2, D)), ten((1, S, 2, d.r.choice([8, 64])))
        causal = d.r.random() < 0.7
        g = -torch.rand(1, S, 2, generator=torch.Generator().manual_seed(d.r.randrange(99))) if causal else None
        f = lambda: at.linear_attention(q, k, v, is_causal=causal, g=g)  # noqa: E731
    out = f()
    out = out[0] if isinstance(out, tuple) else out
    if torch.isnan(out.float()).any():
        raise AssertionError(f"torch {fam}: NaN in the output")
    if out.requires_grad:
        w = torch.from_numpy(d.np.standard_normal(out.shape, dtype=np.float32))
        (out.float() * w).sum().backward()
        for x in (q, k, v):
            if x.grad is not None and torch.isnan(x.grad.float()).any():
                raise AssertionError(f"torch {fam}: NaN in a gradient")


CASES = [case_attention, case_varlen, case_neighborhood, case_block_sparse, case_linear, case_merge,
         case_torch_autograd]


def run_case(case, seed: int) -> str:
    """'ok' or the exception type's name; raises on a failure."""
    try:
        case(Draw(seed))
        return "ok"
    except OK_EXC as e:
        if len(str(e)) < 20:
            raise AssertionError(f"{case.__name__} seed {seed}: terse message {e!r}") from e
        return type(e).__name__
    except Exception as e:
        raise AssertionError(f"{case.__name__} seed {seed}: {type(e).__name__}: {e}") from e


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_fuzz(case):
    seen = {}
    for seed in range(300):
        kind = run_case(case, 1000 * CASES.index(case) + seed)
        seen[kind] = seen.get(kind, 0) + 1
    # The draws must exercise both sides: calls that run and calls that are refused.
    assert seen.get("ok", 0) >= 10, seen
    if case not in (case_merge, case_torch_autograd):
        assert sum(v for k, v in seen.items() if k != "ok") >= 10, seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    master, t0, n, stats = random.Random(args.seed), time.time(), 0, {}
    while time.time() - t0 < args.seconds:
        case, seed = master.choice(CASES), master.randrange(1 << 30)
        kind = run_case(case, seed)
        stats[case.__name__, kind] = stats.get((case.__name__, kind), 0) + 1
        n += 1
    print(f"{n} cases, no failure")
    for key in sorted(stats):
        print(" ", *key, stats[key])
    return 0


if __name__ == "__main__":
    sys.exit(main())
