"""Framework adapter: hand any DLPack tensor to the core without a copy and
allocate results in the caller's framework (NumPy in -> NumPy out, torch in ->
torch out, ...)."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Optional, Sequence, Tuple

import numpy as np

# Canonical dtype names used across the package.
FLOAT_DTYPES = ("float32", "float16", "bfloat16")


# Large host outputs (4 MiB and more) come from attnkit's host pool
# (python/src/host_pool.cpp): freed blocks are kept and reused, so repeated calls
# do not pay the page faults and zero-filling of a fresh mmap on every call
# (4 ms of a 34 ms bf16 linear-attention forward at S=16384, 32 MiB output).
# The blocks use transparent huge pages (Linux, THP in "madvise" mode), as
# NumPy does for its large arrays. ATTNKIT_HOST_POOL=0 allocates with the
# framework instead (then only the huge-page advice applies);
# ATTNKIT_HUGE_PAGES=0 turns the advice off; attnkit.empty_cache() unmaps the
# cached blocks. Outputs are C-contiguous either way.
_HUGE_PAGES_MIN_BYTES = 4 << 20
_HUGE_PAGES = os.environ.get("ATTNKIT_HUGE_PAGES", "1") != "0"
_POOL = os.environ.get("ATTNKIT_HOST_POOL", "1") != "0"
_pool_min_bytes: Optional[int] = None  # the pool's threshold, read once from _core


def _advise_huge_pages(ptr: int, nbytes: int) -> None:
    if _HUGE_PAGES and nbytes >= _HUGE_PAGES_MIN_BYTES:
        from . import _core

        _core._advise_huge_pages(ptr, nbytes)


def advise_torch_output(t: Any) -> None:
    """Huge-page advice for a freshly allocated torch output (host memory only)."""
    if t.device.type == "cpu":
        _advise_huge_pages(t.data_ptr(), t.numel() * t.element_size())


_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int32": 4}


def configure_host_pool(**kw: Any) -> int:
    """Set the host pool's knobs (min_bytes, max_cached_bytes, poison,
    huge_pages; see _core._host_pool_configure); returns min_bytes."""
    global _pool_min_bytes
    from . import _core

    _pool_min_bytes = int(_core._host_pool_configure(**kw))
    return _pool_min_bytes


def _pooled(shape: Sequence[int], dtype: str) -> bool:
    if not _POOL:
        return False
    n = _ITEMSIZE.get(dtype)
    if n is None:
        return False
    for s in shape:
        n *= int(s)
    if _pool_min_bytes is None:
        configure_host_pool(huge_pages=_HUGE_PAGES)
    return n >= _pool_min_bytes


def torch_host_empty(shape: Sequence[int], dtype: str) -> Any:
    """A torch CPU tensor for an output: from the host pool when it is large,
    else torch.empty (with the huge-page advice)."""
    if _pooled(shape, dtype):
        from . import _core

        return _core._host_empty_torch([int(s) for s in shape], dtype)
    import torch

    out = torch.empty(tuple(shape), dtype=getattr(torch, dtype))
    advise_torch_output(out)
    return out


def empty_cache() -> int:
    """Unmap the host output blocks attnkit keeps for reuse (outputs still in use
    are not touched). Returns the bytes released."""
    from . import _core

    return int(_core._host_pool_trim())


def memory_stats() -> dict:
    """The host output pool's counters: cached_bytes, cached_blocks, in_use_bytes,
    hits, misses, and its settings."""
    from . import _core

    d = dict(_core._host_pool_stats())
    d["enabled"] = _POOL
    return d


@functools.lru_cache(maxsize=None)
def _np_bfloat16():
    # Cached: every NumPy operand asks (dtype_name, to_core), and the import plus
    # np.dtype() cost a few microseconds a time.
    try:
        import ml_dtypes  # type: ignore

        return np.dtype(ml_dtypes.bfloat16)
    except ImportError:  # pragma: no cover - depends on the environment
        return None


class Framework:
    """How to look at and allocate tensors of one framework."""

    name = "numpy"

    def dtype_name(self, x: Any) -> str:
        raise NotImplementedError

    def shape(self, x: Any) -> Tuple[int, ...]:
        return tuple(int(s) for s in x.shape)

    def to_core(self, x: Any) -> Any:
        return x

    def empty(self, like: Any, shape: Sequence[int], dtype: str) -> Any:
        raise NotImplementedError

    def from_core(self, x: Any, like: Any) -> Any:
        return x

    def device_str(self, x: Any) -> str:
        return "cpu"

    def stream(self, x: Any) -> int:
        return 0


_NP_DTYPE_NAMES: dict = {}


class NumpyFramework(Framework):
    name = "numpy"

    def dtype_name(self, x):
        dt = x.dtype
        name = _NP_DTYPE_NAMES.get(dt)
        if name is None:  # str(dtype) takes ~5 us: once per dtype
            bf = _np_bfloat16()
            name = "bfloat16" if bf is not None and dt == bf else str(dt)
            _NP_DTYPE_NAMES[dt] = name
        return name

    def to_core(self, x):
        bf = _np_bfloat16()
        if bf is not None and x.dtype == bf:
            # NumPy cannot export ml_dtypes' bfloat16 over DLPack; the core reads a
            # uint16 view of the same memory as bfloat16.
            return x.view(np.uint16)
        return x

    def empty(self, like, shape, dtype):
        bf = None
        if dtype == "bfloat16":
            bf = _np_bfloat16()
            if bf is None:  # pragma: no cover
                raise TypeError("bfloat16 NumPy arrays need the ml_dtypes package")
        if _pooled(shape, dtype):
            from . import _core

            a = _core._host_empty_numpy([int(s) for s in shape], "uint16" if bf is not None else dtype)
            return a.view(bf) if bf is not None else a
        # NumPy itself advises huge pages for large arrays (see _advise_huge_pages).
        return np.empty(shape, dtype=bf if bf is not None else dtype)


class TorchFramework(Framework):
    name = "torch"

    def dtype_name(self, x):
        return str(x.dtype).replace("torch.", "")

    def to_core(self, x):
        # DLPack refuses tensors that require grad; the plain API is not
        # differentiable (attnkit.torch is), so a detached view is exact.
        return x.detach() if x.requires_grad else x

    def empty(self, like, shape, dtype):
        import torch

        if like.device.type == "cpu":
            return torch_host_empty(shape, dtype)
        return torch.empty(tuple(shape), dtype=getattr(torch, dtype), device=like.device)

    def device_str(self, x):
        return str(x.device)

    def stream(self, x):
        if x.device.type == "cuda":
            import torch

            return int(torch.cuda.current_stream(x.device).cuda_stream)
        return 0


class JaxFramework(Framework):
    """JAX arrays are immutable: inputs are read in place through DLPack, outputs
    are written into NumPy buffers and handed to JAX through DLPack (no copy on
    the CPU)."""

    name = "jax"

    def dtype_name(self, x):
        return str(x.dtype)

    def device_str(self, x):
        try:
            dev = list(x.devices())[0]
            return "cpu" if dev.platform == "cpu" else f"{dev.platform}:{dev.id}"
        except Exception:  # pragma: no cover
            return "cpu"

    def empty(self, like, shape, dtype):
        if self.device_str(like) != "cpu":
            from . import UnsupportedError

            raise UnsupportedError(
                "attnkit: JAX arrays on accelerators are not supported yet (outputs cannot be "
                "allocated in place); pass torch or CuPy tensors, or JAX CPU arrays"
            )
        return NumpyFramework().empty(like, shape, dtype)

    def to_core(self, x):
        return x

    def from_core(self, x, like):
        import jax.numpy as jnp

        return jnp.from_dlpack(x) if x.dtype != _np_bfloat16() else jnp.asarray(x)


class CupyFramework(Framework):
    name = "cupy"

    def dtype_name(self, x):
        return str(x.dtype)

    def empty(self, like, shape, dtype):
        import cupy

        with cupy.cuda.Device(like.device.id):
            return cupy.empty(tuple(shape), dtype=dtype)

    def device_str(self, x):
        return f"cuda:{x.device.id}"

    def stream(self, x):
        import cupy

        return int(cupy.cuda.get_current_stream().ptr)


_FRAMEWORKS = {
    "numpy": NumpyFramework(),
    "torch": TorchFramework(),
    "jax": JaxFramework(),
    "jaxlib": JaxFramework(),
    "cupy": CupyFramework(),
}


def framework_of(x: Any, name: str = "input") -> Framework:
    """The framework a tensor belongs to; raises TypeError for non-tensors."""
    root = type(x).__module__.split(".")[0]
    fw = _FRAMEWORKS.get(root)
    if fw is not None:
        return fw
    if isinstance(x, np.ndarray):
        return _FRAMEWORKS["numpy"]
    if hasattr(x, "__dlpack__"):
        # Unknown DLPack producer: read it in place, return NumPy results.
        return _GenericDlpack()
    raise TypeError(
        f"{name} must be a tensor (NumPy, PyTorch, JAX, CuPy or any object with __dlpack__), "
        f"got {type(x).__name__}"
    )


class _GenericDlpack(NumpyFramework):
    name = "dlpack"

    def dtype_name(self, x):
        return str(getattr(x, "dtype", "unknown"))

    def empty(self, like, shape, dtype):
        return NumpyFramework().empty(like, shape, dtype)


def check_float(fw: Framework, x: Any, name: str, fn: str = "") -> str:
    """dtype name of x; TypeError unless float32/float16/bfloat16."""
    dt = fw.dtype_name(x)
    if dt not in FLOAT_DTYPES:
        where = f"{fn}: " if fn else ""
        raise TypeError(f"{where}{name} must be float32, float16 or bfloat16, got {dt}")
    return dt


def check_floats(fn: str, **tensors: Any) -> str:
    """The dtype name of the first tensor; TypeError naming the first one that is
    not float32/float16/bfloat16, in its framework's spelling (the core only knows
    its own dtypes: float64 would reach it as "unsupported"). None entries after
    the first are skipped; whether the dtypes match is the core's check."""
    names = [check_float(framework_of(x, name), x, name, fn) for name, x in tensors.items() if x is not None]
    return names[0]


def as_cu_seqlens(x: Optional[Any], fw: Framework, name: str, fn: str = "") -> Optional[Any]:
    """cu_seqlens may be given as a tensor of the inputs' framework or as a
    Python sequence (converted to int32 NumPy for CPU inputs)."""
    if x is None:
        return None
    if isinstance(x, (list, tuple)):
        return np.asarray(x, dtype=np.int32)
    xfw = framework_of(x, name)
    if xfw.dtype_name(x) != "int32":
        where = f"{fn}: " if fn else ""
        raise TypeError(f"{where}{name} must be int32, got {xfw.dtype_name(x)}")
    return xfw.to_core(x)


def nan_float(x: Optional[float]) -> float:
    return float("nan") if x is None else float(x)


def is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and "torch" in sys.modules
