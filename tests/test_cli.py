"""The attnkit command: info, check, bench."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "attnkit", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_info():
    r = _run("info")
    assert r.returncode == 0, r.stderr
    assert "attnkit" in r.stdout and "CPU kernels" in r.stdout
    j = json.loads(_run("info", "--json").stdout)
    assert {"version", "cpu_isa", "cuda", "cuda_archs", "max_threads"} <= set(j)


def test_check():
    r = _run("check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all checks passed" in r.stdout


def test_bench_quick_json(tmp_path):
    path = tmp_path / "bench.json"
    r = _run("bench", "--quick", "--family", "fmha", "--repeat", "1", "--json", str(path))
    assert r.returncode == 0, r.stderr
    data = json.loads(path.read_text())
    rows = [x for x in data["results"] if x["impl"] == "attnkit"]
    assert rows and all(x["time_ms"] > 0 and x["tflops"] > 0 for x in rows)
    assert "TFLOP/s" in r.stdout
    if any(x["impl"] == "torch-sdpa" for x in data["results"]):
        assert all("speedup" in x for x in rows)


def test_bench_rejects_unknown_family():
    r = _run("bench", "--family", "nope")
    assert r.returncode == 2 and "unknown family" in r.stderr


def test_help():
    r = _run("--help")
    assert r.returncode == 0 and "bench" in r.stdout
