"""The CPU micro-kernel layer: the bf16 GEMM primitive every family may use, and
agreement of the bf16 paths (AMX tiles vs fp32 micro-kernels)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BF16, GRAD_TOL, TOL, randn, rel_err

import attnkit
from attnkit import _core
from attnkit import reference as ref


def _bf16_bits(x):
    return np.ascontiguousarray(x.astype(BF16)).view(np.uint16)


@pytest.mark.parametrize("isa", ["", "avx512", "generic"])
@pytest.mark.parametrize("M,N,K", [(16, 16, 32), (64, 64, 128), (7, 5, 2), (33, 48, 70), (128, 17, 256)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_gemm_bf16_against_float64(rng, isa, M, N, K, accumulate):
    if isa and isa not in attnkit.build_info()["cpu_isas"]:
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    a = rng.standard_normal((M, K)).astype(BF16)
    b = rng.standard_normal((K, N)).astype(BF16)
    # VNNI: pairs of consecutive k interleaved, element (k, n) at [k // 2, 2 n + k % 2]
    bv = b.reshape(K // 2, 2, N).transpose(0, 2, 1).reshape(K // 2, 2 * N)
    c0 = rng.standard_normal((M, N)).astype(np.float32)
    c = c0.copy()
    try:
        attnkit.set_cpu_isa(isa)
        _core._gemm_bf16(_bf16_bits(a), _bf16_bits(bv), c, accumulate)
    finally:
        attnkit.set_cpu_isa("")
    want = a.astype(np.float64) @ b.astype(np.float64) + (c0 if accumulate else 0)
    assert np.abs(c - want).max() <= 1e-5 * np.abs(want).max() * np.sqrt(K)


@pytest.mark.parametrize("opt", [dict(), dict(is_causal=True, window_size=(40, -1)), dict(softcap=5.0),
                                 dict(scale=-0.2), dict(scale=0.0)],
                         ids=["dense", "causal+window", "softcap", "negative-scale", "zero-scale"])
def test_bf16_paths_agree(rng, opt):
    """bf16 runs on AMX tiles where the CPU has them; the fp32 micro-kernels
    ('avx512') must give the same answer within bf16 rounding, and both must
    match the float64 reference."""
    if "amx" not in attnkit.build_info()["cpu_isas"]:
        pytest.skip("this CPU has no AMX tiles: only one bf16 path exists here")
    q, k = randn(rng, (2, 150, 4, 72), "bfloat16"), randn(rng, (2, 131, 2, 72), "bfloat16")
    v = randn(rng, (2, 131, 2, 40), "bfloat16")
    do = randn(rng, (2, 150, 4, 40), "bfloat16")
    want = ref.attention(q, k, v, **opt)
    want_g = ref.attention_grad(do, q, k, v, **opt)
    for isa in ("amx", "avx512"):
        try:
            attnkit.set_cpu_isa(isa)
            out, lse = attnkit.attention(q, k, v, return_lse=True, **opt)
            grads = attnkit.attention_backward(do, q, k, v, out, lse, **opt)
        finally:
            attnkit.set_cpu_isa("")
        assert rel_err(out, want[0]) < TOL["bfloat16"], isa
        assert rel_err(lse, want[1]) < 1e-3, isa
        for got, exp in zip(grads, want_g):
            assert rel_err(got, exp) < GRAD_TOL["bfloat16"], isa
