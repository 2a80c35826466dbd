"""``attnkit check``: a quick self-test of every family against the float64
references in :mod:`attnkit.reference`. Each family module here exposes
``checks() -> Iterable[(name, fn)]`` where ``fn()`` returns the worst relative
error it saw and the tolerance it was held to."""

from __future__ import annotations

import importlib
import time
from typing import Callable, Iterable, List, Tuple

FAMILIES = ["fmha", "gna", "block_sparse", "linear"]
Check = Tuple[str, Callable[[], Tuple[float, float]]]


def rel_err(a, b) -> float:
    import numpy as np

    from ..reference import to_f64

    a, b = to_f64(a), to_f64(b)
    if a.shape != b.shape:
        return float("inf")
    fin = np.isfinite(b)
    if not np.array_equal(np.isfinite(a), fin):
        return float("inf")
    if not fin.any():
        return 0.0
    return float(np.abs(a[fin] - b[fin]).max() / max(np.abs(b[fin]).max(), 1e-30))


TOL = {"float32": 2e-5, "float16": 5e-3, "bfloat16": 3e-2}


def collect() -> List[Check]:
    out: List[Check] = []
    for fam in FAMILIES:
        try:
            mod = importlib.import_module(f"{__name__}.{fam}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{fam}":
                continue
            raise
        out.extend(mod.checks())
    return out


def run(verbose: bool = True) -> bool:
    ok = True
    checks = collect()
    width = max(len(n) for n, _ in checks)
    for name, fn in checks:
        t0 = time.perf_counter()
        try:
            err, tol = fn()
            passed = err <= tol
            msg = f"max rel err {err:.2e} (tol {tol:.0e})"
        except Exception as e:  # report and continue
            passed, msg = False, f"{type(e).__name__}: {e}"
        ok &= passed
        if verbose:
            print(f"{'PASS' if passed else 'FAIL'}  {name:<{width}}  {msg}  "
                  f"[{time.perf_counter() - t0:.2f}s]")
    if verbose:
        print(f"{'all checks passed' if ok else 'SOME CHECKS FAILED'} ({len(checks)} checks)")
    return ok
