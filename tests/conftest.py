"""Shared test helpers: inputs in every dtype, tolerances, the slow marker."""

from __future__ import annotations

import numpy as np
import pytest

from attnkit.reference import to_f64

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    BF16 = None

DTYPES = ["float32", "float16", "bfloat16"]
# Relative max-error tolerances against float64: fp32 accumulates in fp32; half
# types round inputs (already included in the reference, which sees the same
# rounded inputs) and outputs.
TOL = {"float32": 2e-5, "float16": 4e-3, "bfloat16": 2.5e-2}
GRAD_TOL = {"float32": 5e-5, "float16": 1e-2, "bfloat16": 6e-2}


def pytest_configure(config):
    # Every output goes through attnkit's host pool with poison on: a pooled block
    # is filled with 0xff bytes (NaN in every float dtype) when handed out, so a
    # kernel that leaves an output element unwritten fails the comparisons instead
    # of passing on a fresh mmap's zeros. ATTNKIT_TEST_POISON=0 runs with the
    # default pool settings.
    import os

    if os.environ.get("ATTNKIT_TEST_POISON", "1") != "0":
        from attnkit import _tensors

        _tensors.configure_host_pool(min_bytes=0, poison=True)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run long sweeps")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="long sweep: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def np_dtype(name: str):
    if name == "bfloat16":
        if BF16 is None:
            pytest.skip("bfloat16 NumPy arrays need ml_dtypes")
        return BF16
    return np.dtype(name)


def randn(rng, shape, dtype: str, scale: float = 1.0):
    return (rng.standard_normal(shape) * scale).astype(np_dtype(dtype))


def rel_err(a, b) -> float:
    """max |a - b| / max |b| over entries finite in b; inf if the non-finite
    patterns differ (a NaN where b is finite fails)."""
    a, b = to_f64(a), to_f64(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    fb, fa = np.isfinite(b), np.isfinite(a)
    # Non-finite reference entries (-inf lse of empty rows) must match exactly.
    if not np.array_equal(fa, fb) or not np.array_equal(a[~fb], b[~fb]):
        return float("inf")
    if not fb.any():
        return 0.0
    return float(np.abs(a[fb] - b[fb]).max() / max(np.abs(b[fb]).max(), 1e-30))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
