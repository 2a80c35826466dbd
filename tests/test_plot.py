"""SVG charts of bench results: `attnkit plot` and `attnkit bench --plot`."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from attnkit.bench import plot

NS = {"s": "http://www.w3.org/2000/svg"}


def _row(family, case, impl, ms, dtype="bfloat16", direction="fwd", **extra):
    r = {"family": family, "case": case, "dtype": dtype, "direction": direction, "device": "cpu",
         "impl": impl}
    if ms is None:
        r["error"] = "NotImplementedError: no CPU backward"
    else:
        r.update(time_ms=ms, min_ms=ms, tflops=1.0)
    r.update(extra)
    return r


def _result():
    rows = []
    dense = {0.5: 160.0, 0.25: 150.0, 0.1: 155.0}
    own = {0.5: 90.0, 0.25: 50.0, 0.1: 22.0}
    flex = {0.5: 270.0, 0.25: 170.0, 0.1: 55.0}
    for d in (0.5, 0.25, 0.1):
        case = f"B1 S8192 H8 D64 64x64 density {d:g}"
        rows.append(_row("block_sparse", case, "attnkit", own[d], density=d, block=64,
                         speedup_vs_dense=dense[d] / own[d], bound=1 / d,
                         fraction_of_bound=dense[d] / own[d] * d))
        rows.append(_row("block_sparse", case, "attnkit-dense", dense[d], density=d, block=64))
        rows.append(_row("block_sparse", case, "flex-compiled", flex[d], density=d, block=64))
        rows.append(_row("block_sparse", case, "sdpa-boolmask", 900.0, density=d, block=64))
    rows.append(_row("block_sparse", "B1 S8192 H8 D64 64x64 density 0.1", "attnkit", 66.0,
                     direction="bwd", density=0.1))
    rows.append(_row("block_sparse", "B1 S8192 H8 D64 64x64 density 0.1", "flex-compiled", None,
                     direction="bwd", density=0.1))
    # a peer faster than attnkit: its bar must grow left of the 1x line
    rows.append(_row("fmha", "B1 S4096 H8 D128", "attnkit", 80.0, dtype="float32"))
    rows.append(_row("fmha", "B1 S4096 H8 D128", "torch-sdpa", 40.0, dtype="float32"))
    return {"environment": {"threads": 2}, "results": rows}


def _bars(svg_text):
    root = ET.fromstring(svg_text)
    out = {}
    for r in root.iter("{http://www.w3.org/2000/svg}rect"):
        t = r.find("s:title", NS)
        if t is not None:
            impl, val = re.match(r"(.+): ([0-9.]+)x", t.text).groups()
            out.setdefault(impl, []).append((float(r.get("x")), float(r.get("width")), float(val)))
    return root, out


def test_chart_files():
    ch = plot.charts(_result())
    assert set(ch) == {
        "speedup-block-sparse-bfloat16-fwd.svg",
        "speedup-block-sparse-bfloat16-bwd.svg",
        "density-b1-s8192-h8-d64-64x64-bfloat16-fwd.svg",
        "speedup-fmha-float32-fwd.svg",
    }
    for text in ch.values():
        ET.fromstring(text)  # well-formed XML


def test_speedup_bars_are_log_scaled_ratios():
    root, bars = _bars(plot.charts(_result())["speedup-block-sparse-bfloat16-fwd.svg"])
    # one bar per (case, other impl), valued other / attnkit
    assert sorted(v for _, _, v in bars["flex-compiled"]) == pytest.approx(
        sorted(round(x, 2) for x in (270 / 90, 170 / 50, 55 / 22)), abs=0.006)
    assert len(bars["sdpa-boolmask"]) == 3 and len(bars["attnkit-dense"]) == 3
    # widths grow with log(value), from a common origin (the 1x line)
    pts = sorted((v, w) for b in bars.values() for x, w, v in b)
    x0 = {round(x, 1) for b in bars.values() for x, _, _ in b}
    assert len(x0) == 1
    ratios = [w / math.log10(v) for v, w in pts]
    assert max(ratios) == pytest.approx(min(ratios), rel=0.02)
    text = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert "70% of the 10.0x bound" in text  # 155 / 22 * 0.1 = 0.70


def test_slower_than_a_peer_grows_left_and_errors_say_na():
    _, bars = _bars(plot.charts(_result())["speedup-fmha-float32-fwd.svg"])
    (x, w, v), = bars["torch-sdpa"]
    assert v == pytest.approx(0.5) and w > 0
    root = ET.fromstring(plot.charts(_result())["speedup-block-sparse-bfloat16-bwd.svg"])
    text = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "flex-compiled: n/a" in text


def test_density_chart_series():
    root = ET.fromstring(plot.charts(_result())["density-b1-s8192-h8-d64-64x64-bfloat16-fwd.svg"])
    lines = {p.get("data-series"): [tuple(map(float, xy.split(","))) for xy in p.get("points").split()]
             for p in root.iter("{http://www.w3.org/2000/svg}polyline")}
    assert {"attnkit", "flex-compiled", "attnkit-dense", "ideal (density x dense)", "80% of ideal",
            "sdpa-boolmask"} <= set(lines)
    own, ideal, target = lines["attnkit"], lines["ideal (density x dense)"], lines["80% of ideal"]
    assert [p[0] for p in own] == sorted(p[0] for p in own)  # by density
    # SVG y grows downwards: at every density the target (ideal / 0.8) sits above the ideal
    assert all(t[1] < i[1] for t, i in zip(target, ideal))
    # density 0.1 (leftmost): 22 ms is slower than the 80% line (155 * 0.1 / 0.8 = 19.4 ms), so
    # drawn higher; 0.5 (rightmost): 90 ms is faster than 160 * 0.5 / 0.8 = 100 ms, so drawn lower
    assert own[0][1] < target[0][1] and own[-1][1] > target[-1][1]
    text = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert "sdpa-boolmask: above the axis (up to 900 ms)" in text


def test_cli_plot(tmp_path):
    src = tmp_path / "r.json"
    src.write_text(json.dumps(_result()))
    out = tmp_path / "plots"
    r = subprocess.run([sys.executable, "-m", "attnkit", "plot", str(src), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(plot.charts(_result()))
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    r = subprocess.run([sys.executable, "-m", "attnkit", "plot", str(bad)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "expected an object with a 'results' list" in r.stderr


def test_bench_writes_plots(tmp_path):
    out = tmp_path / "plots"
    r = subprocess.run([sys.executable, "-m", "attnkit", "bench", "--family", "block_sparse",
                        "--shape", "S=256,H=2,block=64", "--dtype", "float32", "--repeat", "1",
                        "--no-peers", "--direction", "fwd", "--plot", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["density-b1-s256-h2-d64-64x64-float32-fwd.svg",
                     "speedup-block-sparse-float32-fwd.svg"]
    for p in out.iterdir():
        ET.parse(p)
