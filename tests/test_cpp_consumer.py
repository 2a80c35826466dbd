"""A separate CMake project finds the installed C++ library with
find_package(attnkit) and runs attention through the C++ API."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import attnkit

HERE = os.path.dirname(os.path.abspath(__file__))


def test_find_package_consumer(tmp_path):
    prefix = attnkit.cmake_prefix_path()
    if not os.path.isdir(os.path.join(prefix, "lib", "cmake", "attnkit")):
        pytest.skip("the C++ package ships with the installed wheel; this attnkit runs from a source tree")
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not on PATH")
    build = tmp_path / "build"
    cfg = subprocess.run([cmake, "-S", os.path.join(HERE, "cpp_consumer"), "-B", str(build),
                          f"-DCMAKE_PREFIX_PATH={prefix}", "-DCMAKE_BUILD_TYPE=Release"],
                         capture_output=True, text=True, timeout=300)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    b = subprocess.run([cmake, "--build", str(build)], capture_output=True, text=True, timeout=600)
    assert b.returncode == 0, b.stdout + b.stderr
    exe = build / "consumer"
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "consumer ok" in r.stdout
