"""SVG charts of ``attnkit bench`` results, with no plotting dependency.

``charts(result)`` turns the JSON that ``attnkit bench --json`` writes into SVG
documents (file name -> text):

- ``speedup-<family>-<dtype>-<dir>.svg``: per case, how many times faster attnkit
  is than each other implementation timed in the same run (log scale; a bar
  left of the 1x line means attnkit was slower). Cases that report a FLOP bound
  (sparse families against attnkit's own dense kernel) also show the realised
  speedup over dense as a share of that bound.
- ``density-<case>-<dtype>-<dir>.svg`` (block-sparse): time against density for
  every implementation, next to the ideal (density x dense time) and the 80%
  target line (ideal / 0.8).

``attnkit plot RESULTS.json --out DIR`` and ``attnkit bench --plot DIR`` write
them. Medians are plotted, as in the tables.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple
from xml.sax.saxutils import escape

# Colour-blind-safe palette (Okabe-Ito); attnkit's own rows come first.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


class Svg:
    """A minimal SVG builder: shapes and text in user units (pixels)."""

    def __init__(self, width: int, height: int, title: str):
        self.w, self.h = width, height
        self.items: List[str] = []
        self.title = title

    def rect(self, x, y, w, h, fill, title: Optional[str] = None) -> None:
        tip = f"<title>{escape(title)}</title>" if title else ""
        self.items.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{h:.1f}" '
                          f'fill="{fill}">{tip}</rect>')

    def line(self, x1, y1, x2, y2, stroke="#888", width=1.0, dash: Optional[str] = None) -> None:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.items.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                          f'stroke="{stroke}" stroke-width="{width}"{d}/>')

    def polyline(self, pts: Sequence[Tuple[float, float]], stroke, width=2.0, dash=None,
                 label: Optional[str] = None) -> None:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        lab = f' data-series="{escape(label, {chr(34): "&quot;"})}"' if label else ""
        p = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        self.items.append(f'<polyline points="{p}" fill="none" stroke="{stroke}" '
                          f'stroke-width="{width}"{d}{lab}/>')
        for x, y in pts:
            self.items.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{stroke}"/>')

    def text(self, x, y, s: str, size=12, anchor="start", weight="normal", fill="#222") -> None:
        self.items.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                          f'font-weight="{weight}" fill="{fill}">{escape(s)}</text>')

    def render(self) -> str:
        body = "\n".join(self.items)
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.w}" height="{self.h}" '
                f'viewBox="0 0 {self.w} {self.h}" font-family="sans-serif">\n'
                f"<title>{escape(self.title)}</title>\n"
                f'<rect width="{self.w}" height="{self.h}" fill="white"/>\n{body}\n</svg>\n')


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", s).strip("-").lower()


def _groups(rows: Iterable[Dict[str, Any]], key) -> "OrderedDict[Any, List[Dict[str, Any]]]":
    out: "OrderedDict[Any, List[Dict[str, Any]]]" = OrderedDict()
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def _legend(svg: Svg, x: float, y: float, names: Sequence[str], colors: Dict[str, str],
            dashed: Sequence[str] = ()) -> None:
    for i, n in enumerate(names):
        yy = y + 16 * i
        if n in dashed:
            svg.line(x, yy - 4, x + 18, yy - 4, stroke=colors[n], width=2, dash="5,3")
        else:
            svg.rect(x, yy - 10, 18, 10, colors[n])
        svg.text(x + 24, yy, n, size=11)


def speedup_chart(rows: List[Dict[str, Any]], title: str) -> str:
    """Horizontal bars: for each case, attnkit's speedup over each other impl."""
    cases = _groups(rows, lambda r: r["case"])
    others: List[str] = []
    for rs in cases.values():
        for r in rs:
            if r["impl"] != "attnkit" and r["impl"] not in others:
                others.append(r["impl"])
    colors = {n: PALETTE[(i + 1) % len(PALETTE)] for i, n in enumerate(others)}
    bars: List[Tuple[str, List[Tuple[str, Optional[float], str]], str]] = []
    for name, rs in cases.items():
        own = next((r for r in rs if r["impl"] == "attnkit" and "time_ms" in r), None)
        entries: List[Tuple[str, Optional[float], str]] = []
        for impl in others:
            r = next((x for x in rs if x["impl"] == impl), None)
            if r is None:
                continue
            if own is None or "time_ms" not in r:
                entries.append((impl, None, r.get("error", "n/a")))
            else:
                entries.append((impl, r["time_ms"] / own["time_ms"],
                                f"{r['time_ms']:.2f} ms vs attnkit {own['time_ms']:.2f} ms"))
        note = ""
        if own is not None and "fraction_of_bound" in own:
            note = (f"{own['speedup_vs_dense']:.1f}x over dense = "
                    f"{100 * own['fraction_of_bound']:.0f}% of the {own['bound']:.1f}x bound")
        bars.append((name, entries, note))

    vals = [v for _, es, _ in bars for _, v, _ in es if v]
    lo = 10.0 ** math.floor(math.log10(min(vals + [1.0])))
    hi = 10.0 ** math.ceil(math.log10(max(vals + [1.0])))
    if hi <= lo:
        hi = lo * 10
    # Room for the longest case name (bold 11 px text: ~7 px a character).
    left = max(250, 20 + 7 * max((len(n) for n in cases), default=0))
    plot_w, bar_h = 520, 14
    legend_w = 170
    height = 70 + sum(len(es) * bar_h + 34 for _, es, _ in bars) + 30
    svg = Svg(left + plot_w + legend_w + 20, int(height), title)
    svg.text(10, 22, title, size=15, weight="bold")
    svg.text(10, 40, "times faster attnkit is (log scale; median times of one run)", size=11, fill="#555")

    def xpos(v: float) -> float:
        return left + plot_w * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    top = 60
    y = top
    for name, entries, note in bars:
        svg.text(left - 8, y + 11, name, size=11, anchor="end", weight="bold")
        y += 4
        for impl, v, tip in entries:
            if v is None:
                svg.text(left + 4, y + bar_h - 3, f"{impl}: n/a", size=10, fill="#777")
            else:
                # Bars grow from the 1x line: right when attnkit is faster, left when slower.
                x0, x1 = sorted((xpos(1.0), xpos(v)))
                svg.rect(x0, y, x1 - x0, bar_h - 2, colors[impl], title=f"{impl}: {v:.2f}x ({tip})")
                svg.text(max(x1, xpos(1.0)) + 4, y + bar_h - 3, f"{v:.2f}x", size=10)
            y += bar_h
        if note:
            svg.text(left - 8, y + 10, note, size=10, anchor="end", fill="#555")
        y += 30
    # axis: decades, and the 1x line
    d = lo
    while d <= hi * 1.0001:
        svg.line(xpos(d), top - 4, xpos(d), y - 20, stroke="#ddd")
        svg.text(xpos(d), y - 6, f"{d:g}x", size=10, anchor="middle", fill="#555")
        d *= 10
    if lo < 1 < hi:
        svg.line(xpos(1), top - 4, xpos(1), y - 20, stroke="#444", width=1.5)
    _legend(svg, left + plot_w + 30, top + 10, others, colors)
    return svg.render()


def density_chart(rows: List[Dict[str, Any]], title: str) -> str:
    """Block-sparse: time against density per impl, with the ideal and 80% lines."""
    by_impl = _groups([r for r in rows if "time_ms" in r and "density" in r], lambda r: r["impl"])
    dense = {r["density"]: r["time_ms"] for r in by_impl.get("attnkit-dense", [])}
    impls = [n for n in by_impl if n != "attnkit-dense"]
    names = impls + ["attnkit-dense"] * bool(dense) + ["ideal (density x dense)", "80% of ideal"] * bool(dense)
    colors = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(impls)}
    colors["attnkit-dense"] = "#999999"
    colors["ideal (density x dense)"] = "#000000"
    colors["80% of ideal"] = "#D55E00"
    dens = sorted({r["density"] for rs in by_impl.values() for r in rs})
    series: Dict[str, List[Tuple[float, float]]] = {}
    for n in impls:
        series[n] = sorted((r["density"], r["time_ms"]) for r in by_impl[n])
    if dense:
        series["attnkit-dense"] = sorted(dense.items())
        series["ideal (density x dense)"] = sorted((d, d * t) for d, t in dense.items())
        series["80% of ideal"] = sorted((d, d * t / 0.8) for d, t in dense.items())
    ymax = max(t for pts in series.values() for _, t in pts)
    # Peers far slower than attnkit would squash it; cap the axis at 1.5x dense.
    cap = 1.5 * max(dense.values()) if dense else ymax
    ytop = min(ymax, cap) * 1.08
    left, top, pw, ph = 70, 50, 520, 330
    svg = Svg(left + pw + 230, top + ph + 60, title)
    svg.text(10, 22, title, size=15, weight="bold")
    svg.text(10, 40, "median time (ms) against density; lower is better", size=11, fill="#555")
    x0, x1 = 0.0, max(dens + [1e-9]) * 1.05

    def X(d: float) -> float:
        return left + pw * (d - x0) / (x1 - x0)

    def Y(t: float) -> float:
        return top + ph * (1 - min(t, ytop) / ytop)

    for i in range(6):
        t = ytop * i / 5
        svg.line(left, Y(t), left + pw, Y(t), stroke="#eee")
        svg.text(left - 6, Y(t) + 4, f"{t:.0f}", size=10, anchor="end", fill="#555")
    for d in dens:
        svg.line(X(d), top + ph, X(d), top + ph + 4, stroke="#555")
        svg.text(X(d), top + ph + 16, f"{d:g}", size=10, anchor="middle", fill="#555")
    svg.line(left, top + ph, left + pw, top + ph, stroke="#555")
    svg.line(left, top, left, top + ph, stroke="#555")
    svg.text(left + pw / 2, top + ph + 34, "density (attended pairs / dense pairs)", size=11, anchor="middle")
    dashed = ["ideal (density x dense)", "80% of ideal", "attnkit-dense"]
    notes = 0
    for n in names:
        pts = [(X(d), Y(t)) for d, t in series[n]]
        svg.polyline(pts, colors[n], width=2.5 if n == "attnkit" else 1.5,
                     dash="5,3" if n in dashed else None, label=n)
        off = [t for _, t in series[n] if t > ytop]
        if off:  # drawn at the top edge; say where it really is
            svg.text(left + 8, top + 14 + 13 * notes, f"{n}: above the axis (up to {max(off):.0f} ms)",
                     size=10, fill=colors[n])
            notes += 1
    _legend(svg, left + pw + 20, top + 10, names, colors, dashed=dashed)
    return svg.render()


def charts(result: Dict[str, Any]) -> Dict[str, str]:
    """SVG documents for a bench result: file name -> text."""
    rows = [r for r in result.get("results", []) if "impl" in r]
    out: Dict[str, str] = {}
    for (fam, dtype, direction), rs in _groups(rows, lambda r: (r["family"], r["dtype"], r["direction"])).items():
        # A chart needs attnkit's time and something to compare it with.
        if not any(r["impl"] == "attnkit" and "time_ms" in r for r in rs):
            continue
        if not any(r["impl"] != "attnkit" for r in rs):
            continue
        name = f"speedup-{_slug(fam)}-{dtype}-{direction}.svg"
        out[name] = speedup_chart(rs, f"{fam} {direction} {dtype}: attnkit against the peers")
        if fam == "block_sparse":
            base = _groups(rs, lambda r: re.sub(r"\s*density [0-9.e-]+", "", r["case"]))
            for case, crs in base.items():
                if len({r.get("density") for r in crs}) < 2:
                    continue
                out[f"density-{_slug(case)}-{dtype}-{direction}.svg"] = density_chart(
                    crs, f"block-sparse {direction} {dtype}, {case}")
    return out


def write(result: Dict[str, Any], out_dir: str) -> List[str]:
    """Writes charts(result) into out_dir (created if needed); returns the paths."""
    import os

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, text in charts(result).items():
        p = os.path.join(out_dir, name)
        with open(p, "w") as f:
            f.write(text)
        paths.append(p)
    return paths
