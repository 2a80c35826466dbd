"""CPU checks of the CUDA backend's host-side C++ (no GPU needed): the tile
schedule seam shared by the GPU kernels (against brute force and against the CPU
engine's schedule), the varlen tile map, kernel selection and its error messages,
and the checks of what the CUDA kernels cover. Compiles tests/cuda_host/host_test.cpp
with the system C++ compiler."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cuda_host_logic(tmp_path):
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler on PATH (set CXX)")
    if not os.path.isfile(os.path.join(ROOT, "cuda", "common", "schedule.hpp")):
        pytest.skip("the CUDA backend sources are not next to this test (installed tests only)")
    exe = tmp_path / "host_test"
    build = subprocess.run(
        [cxx, "-std=c++17", "-O1", "-Wall", "-Wextra",
         "-I", os.path.join(ROOT, "cpp", "include"), "-I", os.path.join(ROOT, "cpp", "src"),
         "-I", os.path.join(ROOT, "cuda", "common"),
         os.path.join(ROOT, "tests", "cuda_host", "host_test.cpp"),
         os.path.join(ROOT, "cuda", "common", "registry.cpp"), "-o", str(exe)],
        capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert " 0 failed" in run.stdout, run.stdout


def _cutlass_include():
    root = os.environ.get("CUTLASS_DIR")
    if not root:
        import importlib.util

        spec = importlib.util.find_spec("cutlass_library")
        if spec is None or not spec.origin:
            return None
        root = os.path.join(os.path.dirname(spec.origin), "source")
    inc = os.path.join(root, "include")
    return inc if os.path.isfile(os.path.join(inc, "cutlass", "cutlass.h")) else None


def test_sm90_kernel_layouts(tmp_path):
    """The WGMMA fragment and shared-memory layouts the sm_90a kernels rely on,
    computed by CuTe on the host (needs nvcc and the nvidia-cutlass headers; no GPU)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    inc = _cutlass_include()
    if inc is None:
        pytest.skip("CUTLASS headers not found (pip install nvidia-cutlass, or set CUTLASS_DIR)")
    exe = tmp_path / "layout_test"
    build = subprocess.run(
        [nvcc, "-std=c++17", "-O1", "--expt-relaxed-constexpr", "-gencode=arch=compute_90a,code=sm_90a",
         "-I", os.path.join(ROOT, "cuda"), "-I", os.path.join(ROOT, "cpp", "src"),
         "-I", os.path.join(ROOT, "cpp", "include"), "-isystem", inc,
         os.path.join(ROOT, "tests", "cuda_host", "layout_test.cu"), "-o", str(exe)],
        capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout[-5000:] + build.stderr[-5000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert " 0 failed" in run.stdout, run.stdout
