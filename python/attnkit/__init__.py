"""attnkit: attention kernels -- dense, neighborhood, block-sparse and linear --
for CPUs and NVIDIA GPUs, over any DLPack framework (NumPy, PyTorch, JAX, CuPy).

Functions take ``[batch, *tokens, heads, head_dim]`` tensors and return results
in the caller's framework. ``attnkit.torch`` mirrors every function as a
differentiable ``torch.library`` custom op.
"""

from __future__ import annotations

from typing import Any, Dict

from . import _core
from ._core import UnsupportedError
from ._block_sparse import (
    BlockMask,
    block_sparse_attention,
    block_sparse_attention_backward,
)
from ._block_sparse_select import (
    pooled_block_scores,
    sliding_window_block_mask,
    streaming_block_mask,
    threshold_block_mask,
    topk_block_mask,
)
from ._fmha import (
    attention,
    attention_backward,
    get_num_threads,
    merge_attentions,
    set_num_threads,
)
from ._gna import na1d, na2d, na3d, neighborhood_attention, neighborhood_attention_backward
from ._linear import feature_map, linear_attention, linear_attention_backward, linear_attention_step
from ._tensors import empty_cache, memory_stats

__version__ = _core.build_info()["version"]

__all__ = [
    "UnsupportedError",
    "attention",
    "attention_backward",
    "merge_attentions",
    "neighborhood_attention",
    "neighborhood_attention_backward",
    "na1d",
    "na2d",
    "na3d",
    "BlockMask",
    "block_sparse_attention",
    "block_sparse_attention_backward",
    "sliding_window_block_mask",
    "streaming_block_mask",
    "topk_block_mask",
    "threshold_block_mask",
    "pooled_block_scores",
    "linear_attention",
    "linear_attention_step",
    "linear_attention_backward",
    "feature_map",
    "set_num_threads",
    "get_num_threads",
    "empty_cache",
    "memory_stats",
    "set_cpu_isa",
    "build_info",
    "cmake_prefix_path",
    "__version__",
]


def build_info() -> Dict[str, Any]:
    """Version, CPU ISA in use, CPU features, threads, CUDA archs and kernels compiled."""
    return dict(_core.build_info())


def set_cpu_isa(name: str = "") -> None:
    """Force the CPU micro-kernels ("avx512", "avx2", "generic"); "" = automatic.
    The environment variable ATTNKIT_ISA does the same at start-up."""
    _core.set_cpu_isa(name)


def cmake_prefix_path() -> str:
    """Directory to add to CMAKE_PREFIX_PATH so that ``find_package(attnkit)``
    finds the C++ library shipped inside this package."""
    import os

    return os.path.dirname(os.path.abspath(__file__))
