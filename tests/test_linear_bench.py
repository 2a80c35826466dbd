"""attnkit bench --family linear: FLOP count, crossover report, a quick run."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from attnkit.bench import linear as lb


def test_flop_formula():
    # per token (C + 1)(Dk + Dv) + 4 Dk Dv when S is a multiple of the chunk
    assert lb.linear_flops(1, 1, 64, 128, 128) == 64 * (65 * 256 + 4 * 128 * 128)
    # a tail chunk of 10 tokens: 10 * 11 / 2 pairs
    assert lb.linear_flops(1, 1, 74, 8, 8) == 64 * 65 / 2 * 2 * 16 + 10 * 11 / 2 * 2 * 16 + 74 * 4 * 64
    assert lb.linear_flops(2, 3, 100, 16, 8, causal=False) == 2 * 3 * 100 * 4 * 16 * 8


def test_crossover():
    # linear time grows linearly, FMHA quadratically: ratio 1 at S = 1000 exactly
    pts = [(s, 1.0 * s, s * s / 1000.0) for s in (250, 500, 2000, 4000)]
    assert math.isclose(lb.crossover(pts), 1000.0, rel_tol=1e-9)
    assert lb.crossover([(s, 1.0, 2.0) for s in (1, 2)]) == 1.0      # always faster
    assert lb.crossover([(s, 2.0, 1.0) for s in (1, 2)]) is None     # never faster
    # a loss after a win moves the crossover past it
    assert lb.crossover([(100, 1, 2), (200, 2, 1), (400, 1, 4)]) > 200


def test_summarize_reports_the_crossover():
    rows = []
    for s, tl, tf in ((128, 1.0, 0.5), (256, 2.0, 2.0), (512, 4.0, 8.0)):
        for impl, t in (("attnkit", tl), ("attnkit-fmha", tf)):
            rows.append(dict(family="linear", case=f"S{s}", dtype="bfloat16", direction="fwd",
                             impl=impl, time_ms=t, sweep="crossover", S=s))
    (line,) = lb.summarize(rows)
    assert "from S ~ 256" in line and "S512: 2.00x" in line
    faster = [dict(r, time_ms=r["time_ms"] * (0.1 if r["impl"] == "attnkit" else 1)) for r in rows]
    (line,) = lb.summarize(faster)
    assert "faster than attnkit causal FMHA at every swept length, from S128" in line


def test_bench_quick_run(tmp_path):
    path = tmp_path / "lin.json"
    r = subprocess.run([sys.executable, "-m", "attnkit", "bench", "--family", "linear", "--quick",
                        "--repeat", "1", "--dtype", "bfloat16", "--no-progress", "--json", str(path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    data = json.loads(path.read_text())
    rows = [x for x in data["results"] if x["impl"] == "attnkit"]
    assert rows and all(x["time_ms"] > 0 and x["tflops"] > 0 for x in rows)
    assert {x["direction"] for x in rows} == {"fwd", "bwd"}
    if any(x["impl"] == "torch-chunked" for x in data["results"]):
        assert all("speedup" in x for x in rows)
        assert any(line.startswith("linear bfloat16:") for line in data["summary"])
    assert "linear bfloat16:" in r.stdout


@pytest.mark.parametrize("gate", [None, "head", "token"])
def test_peer_matches_reference(gate):
    """The peer computes the same thing as attnkit (so the timing compares like with like)."""
    torch = pytest.importorskip("torch")
    import numpy as np
    from conftest import rel_err

    from attnkit import reference as ref
    from attnkit.bench.linear_peer import chunk_linear_attention, linear_attention_noncausal

    q, k, v, g = lb._inputs(torch, 2, 150, 3, 24, 16, "float32", gate, seed=1)
    s0 = torch.randn(2, 3, 24, 16)
    out, fin = chunk_linear_attention(q, k, v, g, initial_state=s0)
    ro, rf = ref.linear_attention(q, k, v, g=g, initial_state=s0)
    assert rel_err(out, ro) < 1e-5 and rel_err(fin, rf) < 1e-5
    assert rel_err(linear_attention_noncausal(q, k, v), ref.linear_attention(q, k, v, is_causal=False)[0]) < 1e-5
    # and its autograd backward (the bench's backward peer) is the reference gradient
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    o, _ = chunk_linear_attention(*leaves, g)
    do = torch.randn_like(o)
    o.backward(do)
    want = ref.linear_attention_grad(do, q, k, v, g=g)
    for x, w in zip(leaves, want):
        assert rel_err(x.grad, w) < 1e-5
    assert np.isfinite(out.numpy()).all()
