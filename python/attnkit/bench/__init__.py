"""Benchmark harness behind ``attnkit bench``.

Each family module in this package (fmha, gna, block_sparse, linear, ...)
exposes ``cases(opts) -> Iterable[Case]``. A case holds ready-to-run thunks for
attnkit and its peers on the same inputs; the harness warms each up, times
them interleaved (A B A B ...) so machine noise hits all alike, and reports the
median time, effective TFLOP/s (DESIGN §6) and ratios against the peer of the
same run. Sparse cases also give the fraction of the FLOP bound from the
fastest run of each side ("mins"), which a noisy machine disturbs less.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional

FAMILIES = ["fmha", "gna", "block_sparse", "linear"]


@dataclasses.dataclass
class Case:
    family: str
    name: str  # short description of the shape/options
    dtype: str
    direction: str  # "fwd" or "bwd"
    flops: float  # effective FLOPs of one call (DESIGN §6)
    impls: Dict[str, Callable[[], Any]]  # impl name -> thunk; the first is attnkit's
    baseline: Optional[str] = None  # impl the ratios compare against
    # Sparse families: "speedup over dense" is reported against this impl and the
    # FLOP bound (dense pairs / attended pairs).
    dense: Optional[str] = None
    bound: Optional[float] = None
    flops_per_impl: Dict[str, float] = dataclasses.field(default_factory=dict)
    peers: List[str] = dataclasses.field(default_factory=list)  # peer impls (ratio vs fastest)
    device: str = "cpu"
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Options:
    device: str = "cpu"
    dtypes: List[str] = dataclasses.field(default_factory=lambda: ["float32", "bfloat16"])
    directions: List[str] = dataclasses.field(default_factory=lambda: ["fwd", "bwd"])
    causal: str = "both"  # "on", "off", "both"
    shape: Dict[str, int] = dataclasses.field(default_factory=dict)
    repeat: int = 3
    quick: bool = False
    peers: bool = True
    families: List[str] = dataclasses.field(default_factory=lambda: list(FAMILIES))

    def causal_values(self) -> List[bool]:
        return {"on": [True], "off": [False], "both": [False, True]}[self.causal]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _time_once(fn: Callable[[], Any], device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


class Progress:
    """A one-line progress bar on stderr (only when it is a terminal)."""

    def __init__(self, total: int, enabled: Optional[bool] = None):
        self.total = max(total, 1)
        self.done = 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()

    def step(self, label: str) -> None:
        if not self.enabled:
            return
        width = 24
        filled = int(width * self.done / self.total)
        elapsed = time.perf_counter() - self.t0
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"{elapsed:5.0f}s  {label[:60]:<60}"
        )
        sys.stderr.flush()

    def advance(self) -> None:
        self.done += 1

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 110 + "\r")
            sys.stderr.flush()


def run_case(case: Case, repeat: int) -> List[Dict[str, Any]]:
    """Times every impl of a case; returns one record per impl."""
    times: Dict[str, List[float]] = {k: [] for k in case.impls}
    errors: Dict[str, str] = {}
    for name, fn in case.impls.items():  # warm-up (and first-call compilation)
        try:
            _time_once(fn, case.device)
        except Exception as e:  # a peer that cannot run this case is reported, not fatal
            errors[name] = f"{type(e).__name__}: {e}"
    for _ in range(max(repeat, 1)):
        for name, fn in case.impls.items():
            if name not in errors:
                times[name].append(_time_once(fn, case.device))
    med = {k: statistics.median(v) for k, v in times.items() if v}
    rows = []
    for name in case.impls:
        rec: Dict[str, Any] = {
            "family": case.family,
            "case": case.name,
            "dtype": case.dtype,
            "direction": case.direction,
            "device": case.device,
            "impl": name,
        }
        if name in errors:
            rec["error"] = errors[name]
            rows.append(rec)
            continue
        t = med[name]
        flops = case.flops_per_impl.get(name, case.flops)
        rec.update(
            time_ms=t * 1e3,
            min_ms=min(times[name]) * 1e3,
            tflops=flops / t / 1e12,
        )
        if case.baseline and case.baseline in med and name != case.baseline:
            rec["speedup_vs"] = case.baseline
            rec["speedup"] = med[case.baseline] / t
        peer_times = [med[p] for p in case.peers if p in med]
        if peer_times and name not in case.peers:
            rec["speedup_vs_best_peer"] = min(peer_times) / t
        if case.dense and case.dense in med and name != case.dense:
            rec["speedup_vs_dense"] = med[case.dense] / t
            if case.bound:
                rec["bound"] = case.bound
                rec["fraction_of_bound"] = med[case.dense] / t / case.bound
                # The same from the fastest runs: on a shared machine the medians of
                # a long dense run and a short sparse one meet different noise.
                rec["fraction_of_bound_min"] = min(times[case.dense]) / min(times[name]) / case.bound
        rec.update(case.extra)
        rows.append(rec)
    return rows


def collect_cases(opts: Options) -> List[Case]:
    cases: List[Case] = []
    for fam in opts.families:
        try:
            mod = importlib.import_module(f"{__name__}.{fam}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{fam}":
                continue  # family not built into this version
            raise
        cases.extend(mod.cases(opts))
    return cases


def environment(device: str) -> Dict[str, Any]:
    import attnkit

    env: Dict[str, Any] = {
        "attnkit": attnkit.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpu_isa": attnkit.build_info()["cpu_isa"],
        "threads": attnkit.get_num_threads(),
        "device": device,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": _git_commit(),
    }
    try:
        import torch

        env["torch"] = torch.__version__
        if device.startswith("cuda"):
            env["gpu"] = torch.cuda.get_device_name()
            env["driver"] = _nvidia_driver()
    except ImportError:
        env["torch"] = None
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git_commit() -> Optional[str]:
    import subprocess

    try:
        here = os.path.dirname(os.path.abspath(__file__))
        r = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None
    except Exception:
        return None


def _nvidia_driver() -> Optional[str]:
    import subprocess

    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or None
    except Exception:
        return None


def format_table(rows: List[Dict[str, Any]]) -> str:
    """Aligned text table: one line per (case, impl)."""
    head = ["family", "case", "dtype", "dir", "impl", "time ms", "TFLOP/s", "speedup", "vs dense/bound"]
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append([r["family"], r["case"], r["dtype"], r["direction"], r["impl"], "n/a", "", "",
                          r["error"][:40]])
            continue
        sp = f"{r['speedup']:.2f}x vs {r['speedup_vs']}" if "speedup" in r else ""
        dn = ""
        if "speedup_vs_dense" in r:
            dn = f"{r['speedup_vs_dense']:.1f}x"
            if "bound" in r:
                dn += f" / {r['bound']:.1f}x ({100 * r['fraction_of_bound']:.0f}%"
                if "fraction_of_bound_min" in r:
                    dn += f", mins {100 * r['fraction_of_bound_min']:.0f}%"
                dn += ")"
        lines.append([r["family"], r["case"], r["dtype"], r["direction"], r["impl"],
                      f"{r['time_ms']:.2f}", f"{r['tflops']:.3f}", sp, dn])
    widths = [max(len(str(l[i])) for l in lines) for i in range(len(head))]
    out = []
    for n, l in enumerate(lines):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(l, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def run(opts: Options, progress: Optional[bool] = None) -> Dict[str, Any]:
    cases = collect_cases(opts)
    bar = Progress(len(cases), progress)
    rows: List[Dict[str, Any]] = []
    for case in cases:
        bar.step(f"{case.family} {case.name} {case.dtype} {case.direction}")
        rows.extend(run_case(case, opts.repeat))
        bar.advance()
    bar.close()
    result: Dict[str, Any] = {"environment": environment(opts.device), "results": rows}
    summary = summaries(opts, rows)
    if summary:
        result["summary"] = summary
    return result


def summaries(opts: Options, rows: List[Dict[str, Any]]) -> List[str]:
    """Lines from family modules that define ``summarize(rows)`` (e.g. the
    crossover length of linear attention against dense attention)."""
    out: List[str] = []
    for fam in opts.families:
        try:
            mod = importlib.import_module(f"{__name__}.{fam}")
        except ModuleNotFoundError:
            continue
        fn = getattr(mod, "summarize", None)
        if fn is not None:
            out.extend(fn([r for r in rows if r["family"] == fam]))
    return out


def save_json(result: Dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def parse_shape(text: Optional[str]) -> Dict[str, int]:
    """'B=1,S=4096,H=8,D=128' -> dict."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise ValueError(f"--shape entries look like KEY=INT, got {part!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = int(v)
    return out


def iter_nonempty(it: Iterable[Case]) -> List[Case]:
    return [c for c in it if c.impls]
