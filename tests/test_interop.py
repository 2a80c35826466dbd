"""Framework interop: results come back in the caller's framework and dtype."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TOL, randn, rel_err

import attnkit
from attnkit import reference as ref


def test_numpy_bfloat16_via_ml_dtypes(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    q, k, v = (randn(rng, (1, 19, 2, 16), "bfloat16") for _ in range(3))
    out, lse = attnkit.attention(q, k, v, return_lse=True)
    assert out.dtype == ml_dtypes.bfloat16 and lse.dtype == np.float32
    assert rel_err(out, ref.attention(q, k, v)[0]) < TOL["bfloat16"]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_torch_in_torch_out(dtype):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 17, 4, 24, generator=g).to(getattr(torch, dtype))
    k = torch.randn(2, 9, 2, 24, generator=g).to(getattr(torch, dtype))
    out, lse = attnkit.attention(q, k, k, is_causal=True, return_lse=True)
    assert isinstance(out, torch.Tensor) and out.dtype == q.dtype and out.device == q.device
    assert isinstance(lse, torch.Tensor) and lse.dtype == torch.float32
    assert rel_err(out, ref.attention(q, k, k, is_causal=True)[0]) < TOL[dtype]
    dq, dk, dv = attnkit.attention_backward(torch.ones_like(out), q, k, k, out, lse, is_causal=True)
    assert isinstance(dq, torch.Tensor) and dq.dtype == q.dtype


def test_torch_non_contiguous_views_are_read_in_place():
    torch = pytest.importorskip("torch")
    base = torch.randn(2, 8, 30, 32)  # [B, H, S, D] as many models store it
    q = base.transpose(1, 2)  # [B, S, H, D] view, no copy
    assert not q.is_contiguous()
    out = attnkit.attention(q, q, q)
    assert rel_err(out, ref.attention(q, q, q)[0]) < TOL["float32"]


def test_jax_in_jax_out(rng):
    jax = pytest.importorskip("jax", reason="JAX is optional; install jax to run this check")
    import jax.numpy as jnp

    q = jnp.asarray(randn(rng, (1, 11, 2, 16), "float32"))
    out, lse = attnkit.attention(q, q, q, return_lse=True)
    assert isinstance(out, jax.Array) and out.dtype == jnp.float32
    assert rel_err(np.asarray(out), ref.attention(np.asarray(q), np.asarray(q), np.asarray(q))[0]) < TOL["float32"]


def test_generic_dlpack_producer(rng):
    class Wrapped:
        """A minimal third-party DLPack producer."""

        def __init__(self, a):
            self.a = a
            self.shape = a.shape
            self.dtype = a.dtype

        def __dlpack__(self, **kw):
            return self.a.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()

    q = randn(rng, (1, 5, 1, 8), "float32")
    out = attnkit.attention(Wrapped(q), Wrapped(q), Wrapped(q))
    assert isinstance(out, np.ndarray)
    assert rel_err(out, ref.attention(q, q, q)[0]) < TOL["float32"]


def test_concurrent_calls_from_threads(rng):
    import concurrent.futures as cf

    inputs = [tuple(randn(rng, (1, 100, 2, 32), "float32") for _ in range(3)) for _ in range(6)]
    want = [attnkit.attention(*x) for x in inputs]
    with cf.ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda x: attnkit.attention(*x), inputs))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_concurrent_calls_of_every_family(rng):
    # Shared state under concurrent calls: the workspace cache, GNA's geometry cache
    # (six grids for its four entries, so entries are evicted while in use) and the
    # per-thread AMX tile state. Every result must equal the serial one bitwise.
    import concurrent.futures as cf

    bm = attnkit.BlockMask.from_dense(np.random.default_rng(1).random((1, 1, 3, 3)) < 0.6,
                                      q_block=32, kv_block=32)
    calls = []
    for i, dt in enumerate(["float32", "bfloat16"] * 3):
        g = randn(rng, (1, 5 + i, 7 + i, 2, 16), dt)
        s = randn(rng, (1, 90, 2, 16), dt)
        calls += [lambda g=g: attnkit.neighborhood_attention(g, g, g, (3, 5), return_lse=True),
                  lambda s=s: attnkit.block_sparse_attention(s, s, s, bm, return_lse=True),
                  lambda s=s: attnkit.linear_attention(s, s, s, return_final_state=True)]
    want = [c() for c in calls]
    with cf.ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda c: c(), calls + calls))
    for a, b in zip(got, want + want):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


@pytest.fixture
def default_pool():
    """The host pool with its default settings (the suite runs it poisoned, for
    every size; see conftest), restored afterwards."""
    from attnkit import _core, _tensors

    saved = _core._host_pool_stats()
    _tensors.configure_host_pool(min_bytes=4 << 20, poison=False)
    attnkit.empty_cache()
    yield _tensors
    _tensors.configure_host_pool(min_bytes=saved["min_bytes"], poison=saved["poison"])


def test_large_outputs_come_from_the_host_pool_and_are_reused(default_pool):
    # A large output's block returns to the pool when the last view of it is
    # dropped and is handed out again; small outputs use the framework's allocator.
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4096, 2, 256, generator=g)  # out: 8 MiB, over the 4 MiB threshold
    gate = torch.full((2,), -0.1)
    s0 = attnkit.memory_stats()
    out = attnkit.linear_attention(q, q, q, g=gate)
    s1 = attnkit.memory_stats()
    assert s1["in_use_bytes"] == s0["in_use_bytes"] + (8 << 20) and out.is_contiguous()
    want = out.clone()
    ptr = out.data_ptr()
    view = out[:, 100:200]
    del out
    assert attnkit.memory_stats()["in_use_bytes"] == s1["in_use_bytes"]  # the view holds it
    del view
    s2 = attnkit.memory_stats()
    assert s2["in_use_bytes"] == s0["in_use_bytes"] and s2["cached_bytes"] >= 8 << 20
    again = attnkit.linear_attention(q, q, q, g=gate)
    assert again.data_ptr() == ptr and attnkit.memory_stats()["hits"] == s2["hits"] + 1
    assert torch.equal(again, want)
    small = attnkit.linear_attention(q[:, :64], q[:, :64], q[:, :64])
    assert attnkit.memory_stats()["in_use_bytes"] == s0["in_use_bytes"] + (8 << 20)
    del small, again
    # The attnkit.torch custom ops and NumPy outputs use it too.
    import attnkit.torch as ak_torch

    op_out = ak_torch.linear_attention(q, q, q, g=gate)
    assert op_out.data_ptr() == ptr and torch.equal(op_out, want)
    del op_out
    qn = q.numpy()
    np_out = attnkit.linear_attention(qn, qn, qn, g=gate.numpy())
    assert np_out.ctypes.data == ptr and np.array_equal(np_out, want.numpy())
    del np_out
    assert attnkit.empty_cache() >= 8 << 20 and attnkit.memory_stats()["cached_bytes"] == 0


def test_host_pool_backward_and_poison(default_pool):
    # Backward gradients of the torch ops come from the pool; with poison every
    # element still comes out written (the whole suite runs poisoned).
    torch = pytest.importorskip("torch")
    import attnkit.torch as ak_torch

    default_pool.configure_host_pool(poison=True)
    blank = default_pool.torch_host_empty((1 << 20,), "float32")
    assert torch.isnan(blank).all()  # what a kernel leaves unwritten reads as NaN
    del blank
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2048, 4, 128, generator=g, requires_grad=True) for _ in range(3))
    out = ak_torch.attention(q, k, v, is_causal=True)
    before = attnkit.memory_stats()["misses"] + attnkit.memory_stats()["hits"]
    out.sum().backward()
    assert attnkit.memory_stats()["misses"] + attnkit.memory_stats()["hits"] == before + 3
    for t in (out, q.grad, k.grad, v.grad):
        assert torch.isfinite(t).all()
    ref = attnkit.attention(q.detach(), k.detach(), v.detach(), is_causal=True)
    assert torch.equal(out.detach(), ref)


def test_host_pool_off_gives_huge_page_advice(monkeypatch, default_pool):
    # With ATTNKIT_HOST_POOL=0 large torch outputs come from torch and are advised
    # to use huge pages; the advice covers only whole 2 MiB pages inside the
    # buffer, and results are the same with it turned off.
    torch = pytest.importorskip("torch")
    from attnkit import _core

    monkeypatch.setattr(default_pool, "_POOL", False)
    assert _core._advise_huge_pages(4096, 4096) is False  # no whole huge page inside
    seen = []
    monkeypatch.setattr(_core, "_advise_huge_pages", lambda p, n: seen.append((p, n)) or True)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4096, 2, 256, generator=g)
    in_use = attnkit.memory_stats()["in_use_bytes"]
    out = attnkit.linear_attention(q, q, q, g=torch.full((2,), -0.1))
    assert (out.data_ptr(), out.numel() * 4) in seen
    assert attnkit.memory_stats()["in_use_bytes"] == in_use
    small = attnkit.linear_attention(q[:, :64], q[:, :64], q[:, :64])
    assert all(p != small.data_ptr() for p, _ in seen)
    import attnkit.torch as ak_torch

    seen.clear()
    op_out = ak_torch.linear_attention(q, q, q, g=torch.full((2,), -0.1))
    assert (op_out.data_ptr(), op_out.numel() * 4) in seen and torch.equal(op_out, out)
    monkeypatch.setattr(default_pool, "_HUGE_PAGES", False)
    seen.clear()
    off = attnkit.linear_attention(q, q, q, g=torch.full((2,), -0.1))
    assert not seen and torch.equal(off, out)
